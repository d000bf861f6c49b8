//! Shunt's data plane.
//!
//! The XDP program (built from `ebpf/xdp`) classifies and steers packets; this crate
//! loads it, owns the AF_XDP sockets and runs the fast-path worker pool. Protocol
//! logic (codec, AEAD, tunnel framing) takes buffers and a time value and never
//! touches sockets or clocks; all `unsafe` for rings and UMEM lives in one module.

pub mod agent;
pub mod codec;

/// The compiled XDP object, embedded at build time.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shunt-xdp"));

pub mod forward;
pub mod io;
pub mod pipeline;
pub mod tunnel;
pub mod worker;
pub mod xdp;
