//! Shunt's test tooling: the network-namespace testbed and the WAN emulator.
//!
//! - [`netns`]: namespace guards ([`netns::Netns`]), veth helpers, leftover removal.
//! - [`testbed`]: the five-namespace topology
//!   `client — site A appliance — WAN — site B appliance — server` ([`testbed::Testbed`]).

pub mod netns;
mod sys;
pub mod testbed;
pub mod traffic;
