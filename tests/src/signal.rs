//! Synchronous SIGINT/SIGTERM handling for the tooling's binaries (no handler code).

#![forbid(unsafe_code)]

use std::io;
use std::time::Duration;

/// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts
/// afterwards; call it first thing in `main`, then poll with [`wait_termination`].
pub fn block_termination_signals() -> io::Result<()> {
    crate::sys::block_termination_signals()
}

/// Waits up to `timeout` for SIGINT or SIGTERM; returns the signal number, or `None`
/// when the time passed without one.
pub fn wait_termination(timeout: Duration) -> io::Result<Option<i32>> {
    crate::sys::wait_termination(timeout)
}
