//! The table of partner sessions, keyed by the local receiver index that arriving
//! packets carry. The control plane (later through the agent API) or the
//! manual-keying file installs, updates and removes entries.

use std::collections::HashMap;
use std::time::Duration;

use thiserror::Error;

use super::header::HEADER_LEN;
use super::session::{OpenError, Opened, Session, SessionParams};

/// Why a session could not be installed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TableError {
    /// The local index is taken.
    #[error("receiver index {index} is already used by partner {partner}")]
    IndexInUse {
        /// The index.
        index: u32,
        /// The partner holding it.
        partner: String,
    },
    /// A partner of this name exists.
    #[error("a session for partner {0} already exists; remove it first or update it")]
    DuplicatePartner(String),
}

/// All sessions of one worker.
#[derive(Debug, Default)]
pub struct SessionTable {
    by_index: HashMap<u32, Session>,
    unknown_session: u64,
}

impl SessionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a session.
    pub fn install(
        &mut self,
        params: SessionParams,
        now: Duration,
    ) -> Result<&mut Session, TableError> {
        if let Some(s) = self.by_index.get(&params.local_index) {
            return Err(TableError::IndexInUse {
                index: params.local_index,
                partner: s.params().partner.clone(),
            });
        }
        if self.by_partner(&params.partner).is_some() {
            return Err(TableError::DuplicatePartner(params.partner));
        }
        let index = params.local_index;
        Ok(self
            .by_index
            .entry(index)
            .or_insert(Session::new(params, now)))
    }

    /// Removes a session (its keys are wiped as they drop).
    pub fn remove(&mut self, local_index: u32) -> Option<Session> {
        self.by_index.remove(&local_index)
    }

    /// The session with this local index, to update it (keys, address).
    pub fn get_mut(&mut self, local_index: u32) -> Option<&mut Session> {
        self.by_index.get_mut(&local_index)
    }

    /// The local index of a partner's session.
    pub fn by_partner(&self, partner: &str) -> Option<u32> {
        self.by_index
            .iter()
            .find(|(_, s)| s.params().partner == partner)
            .map(|(&i, _)| i)
    }

    /// Every session.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.by_index.values_mut()
    }

    /// Packets whose receiver index matched no session.
    pub fn unknown_session_drops(&self) -> u64 {
        self.unknown_session
    }

    /// Opens a packet with the session its header names; returns that session's
    /// local index with the result.
    pub fn open(&mut self, packet: &mut [u8], now: Duration) -> Result<(u32, Opened), OpenError> {
        // The index sits at bytes 8..12; `Session::open` parses the rest strictly.
        let Some(index) = packet
            .get(8..12)
            .filter(|_| packet.len() >= HEADER_LEN)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            return Err(OpenError::Malformed(super::header::HeaderError::Truncated(
                packet.len(),
            )));
        };
        match self.by_index.get_mut(&index) {
            Some(session) => session.open(packet, now).map(|o| (index, o)),
            None => {
                self.unknown_session += 1;
                Err(OpenError::UnknownSession(index))
            }
        }
    }
}
