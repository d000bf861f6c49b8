//! Tunnel tests through the public API: sessions and epochs, the manual-keying file,
//! and the two-appliance simulator.

mod common;
mod config;
mod manual;
mod session;
mod sim;
