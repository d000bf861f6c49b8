//! Shunt's control plane: the management API, keystore, credentials, licence,
//! partners and policy, and the secure peering between appliances.
#![forbid(unsafe_code)]

pub mod agent;
pub mod appliance;
pub mod auth;
pub mod ca;
pub mod client;
pub mod credentials;
pub mod durable;
pub mod keystore;
pub mod licence;
/// Old name of the daemon side of [`licence`], kept so existing callers
/// (`shunt_control::licensing::NoVerifyingKey`) still build.
pub use licence as licensing;
pub mod metrics;
pub mod partner;
pub mod peering;
pub mod peering_daemon;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
