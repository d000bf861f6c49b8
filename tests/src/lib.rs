//! Shunt's test tooling: the network-namespace testbed and the WAN emulator.
//!
//! - [`netns`]: namespace guards ([`netns::Netns`]), veth helpers, leftover removal.
//! - [`testbed`]: the five-namespace topology
//!   `client — site A appliance — WAN — site B appliance — server` ([`testbed::Testbed`]).
//! - [`wanem`]: the userspace WAN emulator bridging the `wan` namespace's two ports
//!   ([`wanem::Wanem`], also the `shunt-wanem` binary).
//! - [`traffic`]: ping and checked TCP transfers between namespaces.
//!
//! All `unsafe` (setns, signals, AF_PACKET sockets) lives in one private module.

pub mod netns;
pub mod signal;
mod sys;
pub mod testbed;
pub mod traffic;
pub mod wanem;
