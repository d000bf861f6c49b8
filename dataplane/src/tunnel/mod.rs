//! The tunnel between appliances: header format, AES-256-GCM with anti-replay and key
//! epochs, partner sessions, the manual-keying file, and a deterministic
//! two-appliance simulator. Pure logic: no sockets, no clocks, no threads.
//!
//! See `docs/tunnel.md` for the format and the fast-path API.
#![forbid(unsafe_code)]

pub mod aead;
pub mod config;
pub mod header;
pub mod keys;
pub mod manual;
pub mod replay;
pub mod session;
pub mod sim;
pub mod table;

pub use aead::TAG_LEN;
pub use header::{ControlKind, HEADER_LEN, Header, HeaderError, PacketType};
pub use keys::{EpochKeys, SecretKey};
pub use session::{
    KeyError, KeyLimits, Mode, OpenError, Opened, RekeyReason, SealError, Sealed, Session,
    SessionCounters, SessionParams,
};
pub use table::{SessionTable, TableError};

/// Bytes the tunnel adds to a payload in encrypted mode (header and tag), not
/// counting the outer IP and UDP headers.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
