//! Shunt's test tooling: the network-namespace testbed and the WAN emulator.
//!
//! - [`netns`]: namespace guards ([`netns::Netns`]), veth helpers, leftover removal.
//! - [`testbed`]: the five-namespace topology
//!   `client — site A appliance — WAN — site B appliance — server` ([`testbed::Testbed`]).
//! - [`wanem`]: the userspace WAN emulator bridging the `wan` namespace's two ports
//!   ([`wanem::Wanem`], also the `shunt-wanem` binary).
//! - [`traffic`]: ping and checked TCP transfers between namespaces.
//! - [`two_sites`]: both sites' `shunt-dataplane` and `shunt-control` as separate
//!   processes, brought to secure peering through the management API.
//!
//! - [`frames`], [`inject`], [`xsk_probe`]: crafted frames, an AF_PACKET injector and a
//!   minimal AF_XDP receiver for the XDP steering tests, the demo and the XDP bench.
//!
//! `unsafe` (setns, signals, AF_PACKET sockets) lives in `sys`, plus the AF_PACKET
//! injector and the AF_XDP receiver, which need raw socket calls of their own.

pub mod frames;
pub mod inject;
pub mod netns;
pub mod signal;
pub mod sites;
mod sys;
pub mod testbed;
pub mod traffic;
pub mod two_sites;
pub mod wanem;
pub mod xdp_site;
pub mod xsk_probe;
