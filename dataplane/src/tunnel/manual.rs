//! Manual keying: turns a partner's pre-shared keys into sessions whose epochs follow
//! the wall clock, so two appliances rekey in step without the control plane.
//!
//! Epoch `E = floor(unix_time / rekey_interval)`; its keys are
//! [`derive_epoch_key`](super::keys::derive_epoch_key) of each directional key. The
//! receiver keeps keys for `E - 1`, `E` and `E + 1` (clock skew up to one interval);
//! the sender moves to `E` when the clock does, or to `E + 1` early if the usage
//! limit is reached first. Lane counters start at the wall clock in nanoseconds, so
//! a restart within an epoch never reuses a nonce (a lane sends far less than one
//! packet per nanosecond) — provided the clock does not step back across restarts.

use std::time::Duration;

use super::config::{ManualConfig, PartnerConfig};
use super::keys::{EpochKeys, derive_epoch_key, derive_session_index};
use super::session::{KeyError, KeyLimits, Mode, RekeyReason, Session, SessionParams};

/// The receiver index the partner writes into packets to us.
pub fn local_index(partner: &PartnerConfig) -> u32 {
    match &partner.keys {
        Some(keys) => partner
            .local_index
            .unwrap_or_else(|| derive_session_index(&keys.receive)),
        None => partner.local_index.unwrap_or(0),
    }
}

/// The receiver index we write into packets to the partner.
pub fn remote_index(partner: &PartnerConfig) -> u32 {
    match &partner.keys {
        Some(keys) => partner
            .remote_index
            .unwrap_or_else(|| derive_session_index(&keys.send)),
        None => partner.remote_index.unwrap_or(0),
    }
}

/// Session parameters for a configured partner; `None` for pass-through partners.
/// `now` is the time since the UNIX epoch.
pub fn session_params(
    config: &ManualConfig,
    partner: &PartnerConfig,
    now: Duration,
) -> Option<SessionParams> {
    (partner.mode != Mode::PassThrough).then(|| SessionParams {
        partner: partner.name.clone(),
        remote: partner.address,
        local_index: local_index(partner),
        remote_index: remote_index(partner),
        mode: partner.mode,
        lanes: config.lanes,
        initial_counter: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX / 2),
        limits: KeyLimits {
            rekey_interval: config.rekey_interval,
            // Time-based epochs switch every interval; the hard age limit leaves room
            // for a partner whose clock is one interval behind.
            reject_after: config.rekey_interval * 3,
            receive_grace: config.receive_grace,
            ..KeyLimits::default()
        },
    })
}

/// Drives the epochs of one encrypted session from its pre-shared keys.
#[derive(Debug, Clone)]
pub struct ManualKeying {
    keys: super::config::PartnerKeys,
    interval: Duration,
}

impl ManualKeying {
    /// Keying for `partner`; `None` unless it is in encrypted mode.
    pub fn new(config: &ManualConfig, partner: &PartnerConfig) -> Option<Self> {
        partner.keys.clone().map(|keys| Self {
            keys,
            interval: config.rekey_interval,
        })
    }

    /// Keying from raw keys (tests, simulator).
    pub fn from_keys(keys: super::config::PartnerKeys, interval: Duration) -> Self {
        Self { keys, interval }
    }

    /// The epoch the wall clock is in.
    pub fn epoch_at(&self, now: Duration) -> u32 {
        u32::try_from(now.as_secs() / self.interval.as_secs().max(1)).unwrap_or(u32::MAX)
    }

    /// Both keys of `epoch`.
    pub fn epoch_keys(&self, epoch: u32) -> EpochKeys {
        EpochKeys {
            send: derive_epoch_key(&self.keys.send, epoch),
            receive: derive_epoch_key(&self.keys.receive, epoch),
        }
    }

    /// Brings the session's keys up to date with the clock and the usage limit.
    /// Call it when the session is created and then every second or so (and when a
    /// seal is refused with `KeyExhausted`). Returns the new send epoch if it changed.
    pub fn tick(&self, session: &mut Session, now: Duration) -> Result<Option<u32>, KeyError> {
        let epoch = self.epoch_at(now);
        for e in [epoch.saturating_sub(1), epoch, epoch.saturating_add(1)] {
            session.install_receive_key(e, &self.epoch_keys(e), now);
        }
        let target = match session.send_epoch() {
            None => epoch,
            Some(current) if current < epoch => epoch,
            Some(current)
                if current == epoch && session.rekey_due(now) == Some(RekeyReason::Usage) =>
            {
                epoch.saturating_add(1)
            }
            Some(_) => return Ok(None),
        };
        session.install_epoch(target, &self.epoch_keys(target), now)?;
        if session.has_next_send_key() {
            session.switch_send_epoch(now)?;
        }
        Ok(Some(target))
    }
}
