//! Gateway forwarding: next-hop MAC addresses from the kernel's route and neighbour tables
//! ([`nexthop`], over [`netlink`]), TTL / hop-limit decrement and MTU checks ([`packet`]),
//! ICMP errors towards the sender ([`icmp`]), checksums ([`checksum`]) and outer-header
//! encapsulation in place ([`encap`]). [`gateway::Gateway`] puts them together as a
//! worker [`crate::worker::Process`] that forwards plain (unencapsulated) traffic.
#![deny(unsafe_code)]

pub mod checksum;
pub mod encap;
pub mod gateway;
pub mod icmp;
pub mod netlink;
pub mod nexthop;
pub mod packet;

pub use encap::{EncapError, OuterHeaders};
pub use gateway::{Gateway, GatewayConfig, GatewayCounters};
pub use nexthop::{Miss, NextHop, NextHopView, NextHops, Resolver, Snapshot};
