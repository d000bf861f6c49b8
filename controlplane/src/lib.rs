//! Shunt's control plane: the management API, keystore, credentials, licence,
//! partners and policy, and the secure peering between appliances.
#![forbid(unsafe_code)]

pub mod ca;
pub mod credentials;
pub mod licence;
pub mod peering;
