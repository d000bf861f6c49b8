//! Shunt's control plane: the management API, keystore, credentials, licence,
//! partners and policy, and the secure peering between appliances.
#![forbid(unsafe_code)]

pub mod appliance;
pub mod auth;
pub mod ca;
pub mod client;
pub mod credentials;
pub mod durable;
pub mod keystore;
pub mod licence;
pub mod licensing;
pub mod metrics;
pub mod partner;
pub mod peering;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
