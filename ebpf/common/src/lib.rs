//! Types shared by the XDP program (`ebpf/xdp`) and userspace (`dataplane`).
//!
//! Every type here is `#[repr(C)]` and plain old data so that its layout is defined
//! once for both sides of the kernel boundary.
#![no_std]
