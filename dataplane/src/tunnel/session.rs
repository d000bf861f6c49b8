//! A partner session: sealing toward the partner and opening what it sends, with key
//! epochs, usage limits, anti-replay and counters. No clocks: `now` is a parameter
//! (any fixed origin; the manual-keying driver uses the UNIX epoch).

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use thiserror::Error;

use super::aead::{PacketKey, TAG_LEN};
use super::header::{ControlKind, FLAG_ENCRYPTED, HEADER_LEN, Header, HeaderError, PacketType};
use super::keys::EpochKeys;
use super::replay::{Replay, ReplayWindow};

/// How traffic to a partner is carried (DESIGN.md section 2, mode matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Compressed and AES-256-GCM encrypted; header authenticated; anti-replay.
    Encrypted,
    /// Compressed, not encrypted and not authenticated (neither side runs secure
    /// peering). No anti-replay: without authentication a forged counter could
    /// only be used to block genuine packets.
    CompressOnly,
    /// Not tunnelled: the packets go to the kernel unchanged. Sealing and opening
    /// are refused.
    PassThrough,
}

/// AES-256-GCM usage limits of one send key, and the receive grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Signal a rekey once this many AES blocks (payload blocks + 1 per packet) were
    /// sealed under one key.
    pub rekey_after_blocks: u64,
    /// Refuse to seal beyond this many blocks under one key.
    pub reject_after_blocks: u64,
    /// Signal a rekey when the send key is this old.
    pub rekey_interval: Duration,
    /// Refuse to seal with a send key this old.
    pub reject_after: Duration,
    /// How long the previous epoch's receive key keeps working after the partner
    /// switched to a newer epoch.
    pub receive_grace: Duration,
}

impl Default for KeyLimits {
    /// 2^36 blocks keeps the AES-GCM confidentiality advantage near 2^-57
    /// ((blocks)^2 / 2^129); a rekey is signalled at half of it and every 10 minutes.
    fn default() -> Self {
        Self {
            rekey_after_blocks: 1 << 35,
            reject_after_blocks: 1 << 36,
            rekey_interval: Duration::from_secs(600),
            reject_after: Duration::from_secs(1800),
            receive_grace: Duration::from_secs(30),
        }
    }
}

impl KeyLimits {
    /// Limits for one of `workers` copies of a session that share the same keys
    /// (each worker seals only on its own lanes): the block budgets are split so
    /// that together the copies stay within the key's limits.
    pub fn per_worker(self, workers: u16) -> Self {
        let w = u64::from(workers.max(1));
        Self {
            rekey_after_blocks: self.rekey_after_blocks / w,
            reject_after_blocks: self.reject_after_blocks / w,
            ..self
        }
    }
}

/// Everything needed to set up a session with a partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// The partner's name (for logs and counters).
    pub partner: String,
    /// The partner's tunnel address (WAN IP and UDP port).
    pub remote: SocketAddr,
    /// Index the partner writes into packets sent to us (ours, unique locally).
    pub local_index: u32,
    /// Index we write into packets sent to the partner (chosen by the partner).
    pub remote_index: u32,
    /// How traffic is carried.
    pub mode: Mode,
    /// Lanes used in each direction (lane numbers `0..lanes`).
    pub lanes: u16,
    /// First counter of every lane under a new key. Manual keying starts it at the
    /// wall clock in nanoseconds so that a restart never reuses a nonce.
    pub initial_counter: u64,
    /// Key usage limits.
    pub limits: KeyLimits,
}

/// Why a rekey should happen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyReason {
    /// The send key reached [`KeyLimits::rekey_after_blocks`].
    Usage,
    /// The send key is older than [`KeyLimits::rekey_interval`].
    Interval,
}

/// Plain per-session counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Packets sealed.
    pub sealed: u64,
    /// Payload bytes sealed.
    pub sealed_bytes: u64,
    /// Packets refused for sealing (limits, unknown lane, mode).
    pub seal_refused: u64,
    /// Packets opened and delivered.
    pub opened: u64,
    /// Payload bytes delivered.
    pub opened_bytes: u64,
    /// Packets dropped as replays (duplicate or older than the window).
    pub replayed: u64,
    /// Packets that failed authentication.
    pub auth_failed: u64,
    /// Packets under an epoch with no receive key (retired or never installed).
    pub stale_epoch: u64,
    /// Malformed packets (bad header, wrong session, lane or mode).
    pub malformed: u64,
    /// Send-key switches.
    pub send_epochs: u64,
    /// Receive keys retired after their grace period.
    pub receive_epochs_retired: u64,
}

/// The header and tag of a sealed packet; the caller writes `header` before the
/// payload and `trailer()` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// The tunnel header to put before the payload.
    pub header: [u8; HEADER_LEN],
    tag: [u8; TAG_LEN],
    tag_len: usize,
}

impl Sealed {
    /// Bytes to put after the payload (the GCM tag, or nothing in compress-only mode).
    pub fn trailer(&self) -> &[u8] {
        &self.tag[..self.tag_len]
    }
}

/// A packet opened in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The packet's header.
    pub header: Header,
    /// The full epoch the packet was sealed under.
    pub epoch: u32,
    /// Where the plaintext payload is in the packet buffer.
    pub payload: Range<usize>,
}

/// Why a packet was not sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The partner is in pass-through mode: send the packet unchanged.
    #[error("partner is in pass-through mode; the packet is not tunnelled")]
    PassThrough,
    /// No send key installed yet.
    #[error("no send key installed for this partner; install an epoch first")]
    NoKey,
    /// Usage or age limit of the send key reached.
    #[error("send key of epoch {0} reached its usage or age limit; switch to a new epoch")]
    KeyExhausted(u32),
    /// The lane's counter cannot advance.
    #[error("lane counter exhausted; switch to a new epoch")]
    CounterExhausted,
    /// Lane outside `0..lanes`.
    #[error("lane {0} is not configured for this session")]
    UnknownLane(u16),
    /// The buffer cannot hold header + payload + tag.
    #[error("buffer of {have} bytes cannot hold the sealed packet ({need} bytes)")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Why a received packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The header does not parse.
    #[error("malformed tunnel header: {0}")]
    Malformed(#[from] HeaderError),
    /// No session has this receiver index.
    #[error("no session with receiver index {0}")]
    UnknownSession(u32),
    /// The partner is in pass-through mode.
    #[error("partner is in pass-through mode; tunnel packets are not accepted")]
    PassThrough,
    /// Encrypted flag does not match the session's mode.
    #[error("packet's encryption flag does not match the partner's mode")]
    ModeMismatch,
    /// Lane outside `0..lanes`.
    #[error("lane {0} is not configured for this session")]
    UnknownLane(u16),
    /// No receive key for this epoch.
    #[error("no receive key for epoch {0} (retired or not yet installed)")]
    StaleEpoch(u8),
    /// Already received, or older than the replay window.
    #[error("replayed packet ({0:?})")]
    Replayed(Replay),
    /// Authentication failed.
    #[error("packet failed authentication")]
    AuthFailed,
}

/// Why keys could not be installed or switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The session's mode uses no keys.
    #[error("partner mode {0:?} uses no keys")]
    NoKeysInMode(Mode),
    /// Epochs must increase.
    #[error("epoch {new} is not newer than installed epoch {installed}")]
    EpochNotNewer {
        /// Requested.
        new: u32,
        /// Already installed.
        installed: u32,
    },
    /// `switch_send_epoch` without a staged next key.
    #[error("no next send key staged; install the next epoch first")]
    NoNextKey,
}

/// Receive keys kept at most (previous, current, next and one spare).
const MAX_RECEIVE_EPOCHS: usize = 4;

struct SendEpoch {
    epoch: u32,
    key: Option<PacketKey>,
    counters: Box<[u64]>,
    blocks: u64,
    since: Duration,
}

struct ReceiveEpoch {
    epoch: u32,
    key: PacketKey,
    windows: Box<[ReplayWindow]>,
    retire_at: Option<Duration>,
}

/// One partner session. Owned by one worker; never locked.
pub struct Session {
    params: SessionParams,
    send: Option<SendEpoch>,
    next_send: Option<SendEpoch>,
    receive: Vec<ReceiveEpoch>,
    newest_receive: Option<u32>,
    next_retirement: Option<Duration>,
    counters: SessionCounters,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("params", &self.params)
            .field("send_epoch", &self.send_epoch())
            .field("receive_epochs", &self.receive_epochs())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Session {
    /// A new session. Compress-only sessions can seal at once; encrypted ones after
    /// [`install_epoch`](Self::install_epoch).
    pub fn new(params: SessionParams, now: Duration) -> Self {
        let send = (params.mode == Mode::CompressOnly).then(|| SendEpoch {
            epoch: 0,
            key: None,
            counters: vec![params.initial_counter; usize::from(params.lanes)].into(),
            blocks: 0,
            since: now,
        });
        tracing::info!(partner = %params.partner, mode = ?params.mode, local_index = params.local_index, "tunnel session created");
        Self {
            params,
            send,
            next_send: None,
            receive: Vec::with_capacity(MAX_RECEIVE_EPOCHS),
            newest_receive: None,
            next_retirement: None,
            counters: SessionCounters::default(),
        }
    }

    /// The session's parameters.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// The counters.
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// Points the session at a new partner address (the partner moved).
    pub fn set_remote(&mut self, remote: SocketAddr) {
        self.params.remote = remote;
    }

    /// The epoch of the active send key.
    pub fn send_epoch(&self) -> Option<u32> {
        self.send.as_ref().map(|s| s.epoch)
    }

    /// The epochs with a receive key, oldest first.
    pub fn receive_epochs(&self) -> Vec<u32> {
        self.receive.iter().map(|r| r.epoch).collect()
    }

    /// Installs the keys of `epoch`: the receive key works at once (the partner may
    /// switch before us); the send key becomes active now if there is none, else it is
    /// staged until [`switch_send_epoch`](Self::switch_send_epoch).
    pub fn install_epoch(
        &mut self,
        epoch: u32,
        keys: &EpochKeys,
        now: Duration,
    ) -> Result<(), KeyError> {
        if self.params.mode != Mode::Encrypted {
            return Err(KeyError::NoKeysInMode(self.params.mode));
        }
        let installed = self
            .next_send
            .as_ref()
            .or(self.send.as_ref())
            .map(|s| s.epoch);
        if let Some(installed) = installed.filter(|&i| epoch <= i) {
            return Err(KeyError::EpochNotNewer {
                new: epoch,
                installed,
            });
        }
        self.install_receive_key(epoch, keys, now);
        let staged = SendEpoch {
            epoch,
            key: Some(PacketKey::new(&keys.send)),
            counters: vec![self.params.initial_counter; usize::from(self.params.lanes)].into(),
            blocks: 0,
            since: now,
        };
        if self.send.is_none() {
            self.send = Some(staged);
            self.counters.send_epochs += 1;
        } else {
            self.next_send = Some(staged);
        }
        tracing::debug!(partner = %self.params.partner, epoch, "tunnel epoch installed");
        Ok(())
    }

    /// Installs only a receive key (manual keying keeps one epoch either side of the
    /// current one). Ignored if the epoch is already installed.
    pub fn install_receive_key(&mut self, epoch: u32, keys: &EpochKeys, now: Duration) {
        if self.receive.iter().any(|r| r.epoch == epoch) {
            return;
        }
        if self.receive.len() == MAX_RECEIVE_EPOCHS {
            self.receive.remove(0);
        }
        let retire_at = self
            .newest_receive
            .filter(|&n| epoch < n)
            .map(|_| now + self.params.limits.receive_grace);
        let entry = ReceiveEpoch {
            epoch,
            key: PacketKey::new(&keys.receive),
            windows: vec![ReplayWindow::default(); usize::from(self.params.lanes)].into(),
            retire_at,
        };
        let at = self.receive.partition_point(|r| r.epoch < epoch);
        self.receive.insert(at, entry);
        self.update_next_retirement();
    }

    /// Makes the staged send key active; returns its epoch.
    pub fn switch_send_epoch(&mut self, now: Duration) -> Result<u32, KeyError> {
        let mut next = self.next_send.take().ok_or(KeyError::NoNextKey)?;
        next.since = now;
        let epoch = next.epoch;
        self.send = Some(next);
        self.counters.send_epochs += 1;
        tracing::info!(partner = %self.params.partner, epoch, "tunnel send key switched");
        Ok(epoch)
    }

    /// Whether the send key is due for replacement (the caller starts a rekey).
    pub fn rekey_due(&self, now: Duration) -> Option<RekeyReason> {
        let send = self.send.as_ref().filter(|s| s.key.is_some())?;
        if send.blocks >= self.params.limits.rekey_after_blocks {
            Some(RekeyReason::Usage)
        } else if now.saturating_sub(send.since) >= self.params.limits.rekey_interval {
            Some(RekeyReason::Interval)
        } else {
            None
        }
    }

    /// Whether a next send key is staged.
    pub fn has_next_send_key(&self) -> bool {
        self.next_send.is_some()
    }

    /// Drops receive keys whose grace period is over. Also done lazily by `open`.
    pub fn retire_expired(&mut self, now: Duration) {
        if self.next_retirement.is_none_or(|t| now < t) {
            return;
        }
        let before = self.receive.len();
        self.receive.retain(|r| r.retire_at.is_none_or(|t| now < t));
        let retired = (before - self.receive.len()) as u64;
        self.counters.receive_epochs_retired += retired;
        tracing::debug!(partner = %self.params.partner, retired, "tunnel receive keys retired");
        self.update_next_retirement();
    }

    /// Seals a data payload in place; see [`seal`](Self::seal).
    #[inline]
    pub fn seal_data(
        &mut self,
        lane: u16,
        payload: &mut [u8],
        now: Duration,
    ) -> Result<Sealed, SealError> {
        self.seal(PacketType::Data, lane, payload, now)
    }

    /// Seals a control message in place; see [`seal`](Self::seal).
    pub fn seal_control(
        &mut self,
        kind: ControlKind,
        lane: u16,
        payload: &mut [u8],
        now: Duration,
    ) -> Result<Sealed, SealError> {
        self.seal(PacketType::Control(kind), lane, payload, now)
    }

    /// Encrypts `payload` in place (unless compress-only) and returns the header to
    /// write before it and the trailer (tag) to write after it.
    pub fn seal(
        &mut self,
        packet_type: PacketType,
        lane: u16,
        payload: &mut [u8],
        now: Duration,
    ) -> Result<Sealed, SealError> {
        let result = self.seal_inner(packet_type, lane, payload, now);
        match result {
            Ok(_) => {
                self.counters.sealed += 1;
                self.counters.sealed_bytes += payload.len() as u64;
            }
            Err(_) => self.counters.seal_refused += 1,
        }
        result
    }

    /// Seals the payload at `buf[HEADER_LEN..HEADER_LEN + payload_len]` and writes
    /// header and tag around it; returns the packet length.
    pub fn seal_into(
        &mut self,
        packet_type: PacketType,
        lane: u16,
        buf: &mut [u8],
        payload_len: usize,
        now: Duration,
    ) -> Result<usize, SealError> {
        let tag_len = if self.params.mode == Mode::Encrypted {
            TAG_LEN
        } else {
            0
        };
        let need = HEADER_LEN + payload_len + tag_len;
        if buf.len() < need {
            self.counters.seal_refused += 1;
            return Err(SealError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let end = HEADER_LEN + payload_len;
        let sealed = self.seal(packet_type, lane, &mut buf[HEADER_LEN..end], now)?;
        buf[..HEADER_LEN].copy_from_slice(&sealed.header);
        buf[end..need].copy_from_slice(sealed.trailer());
        Ok(need)
    }

    /// Checks, authenticates and decrypts a tunnel packet (header, payload, tag) in
    /// place. The replay window is updated only after authentication succeeds.
    pub fn open(&mut self, packet: &mut [u8], now: Duration) -> Result<Opened, OpenError> {
        let result = self.open_inner(packet, now);
        match &result {
            Ok(o) => {
                self.counters.opened += 1;
                self.counters.opened_bytes += o.payload.len() as u64;
            }
            Err(OpenError::Replayed(_)) => self.counters.replayed += 1,
            Err(OpenError::AuthFailed) => self.counters.auth_failed += 1,
            Err(OpenError::StaleEpoch(_)) => self.counters.stale_epoch += 1,
            Err(_) => self.counters.malformed += 1,
        }
        if let Err(e) = &result {
            tracing::trace!(partner = %self.params.partner, error = %e, "tunnel packet dropped");
        }
        result
    }

    fn seal_inner(
        &mut self,
        packet_type: PacketType,
        lane: u16,
        payload: &mut [u8],
        now: Duration,
    ) -> Result<Sealed, SealError> {
        if self.params.mode == Mode::PassThrough {
            return Err(SealError::PassThrough);
        }
        let limits = self.params.limits;
        let send = self.send.as_mut().ok_or(SealError::NoKey)?;
        let counter_slot = send
            .counters
            .get_mut(usize::from(lane))
            .ok_or(SealError::UnknownLane(lane))?;
        let counter = *counter_slot;
        if counter == u64::MAX {
            return Err(SealError::CounterExhausted);
        }
        let mut header = Header {
            packet_type,
            flags: 0,
            epoch: send.epoch as u8,
            lane,
            receiver_index: self.params.remote_index,
            counter,
        };
        let Some(key) = &send.key else {
            *counter_slot += 1;
            return Ok(Sealed {
                header: header.to_bytes(),
                tag: [0; TAG_LEN],
                tag_len: 0,
            });
        };
        let blocks = send.blocks + payload.len().div_ceil(16) as u64 + 1;
        if blocks > limits.reject_after_blocks
            || now.saturating_sub(send.since) >= limits.reject_after
        {
            return Err(SealError::KeyExhausted(send.epoch));
        }
        header.flags = FLAG_ENCRYPTED;
        let header = header.to_bytes();
        let tag = key.seal(lane, counter, &header, payload);
        *counter_slot += 1;
        send.blocks = blocks;
        Ok(Sealed {
            header,
            tag,
            tag_len: TAG_LEN,
        })
    }

    fn open_inner(&mut self, packet: &mut [u8], now: Duration) -> Result<Opened, OpenError> {
        let header = Header::parse(packet)?;
        if header.receiver_index != self.params.local_index {
            return Err(OpenError::UnknownSession(header.receiver_index));
        }
        let encrypted = match self.params.mode {
            Mode::PassThrough => return Err(OpenError::PassThrough),
            Mode::Encrypted => true,
            Mode::CompressOnly => false,
        };
        if header.is_encrypted() != encrypted {
            return Err(OpenError::ModeMismatch);
        }
        if header.lane >= self.params.lanes {
            return Err(OpenError::UnknownLane(header.lane));
        }
        if !encrypted {
            return Ok(Opened {
                header,
                epoch: u32::from(header.epoch),
                payload: HEADER_LEN..packet.len(),
            });
        }
        self.retire_expired(now);
        let slot = self
            .receive
            .iter()
            .position(|r| r.epoch as u8 == header.epoch)
            .ok_or(OpenError::StaleEpoch(header.epoch))?;
        let entry = &mut self.receive[slot];
        let lane = usize::from(header.lane);
        entry.windows[lane]
            .check(header.counter)
            .map_err(OpenError::Replayed)?;

        let (head, body) = packet.split_at_mut(HEADER_LEN);
        let head: &[u8; HEADER_LEN] = (&*head).try_into().expect("split at HEADER_LEN");
        let plain_len = entry
            .key
            .open(header.lane, header.counter, head, body)
            .map_err(|_| OpenError::AuthFailed)?;
        entry.windows[lane].mark(header.counter);
        let epoch = entry.epoch;
        if self.newest_receive.is_none_or(|n| epoch > n) {
            self.promote_receive_epoch(epoch, now);
        }
        Ok(Opened {
            header,
            epoch,
            payload: HEADER_LEN..HEADER_LEN + plain_len,
        })
    }

    /// The partner authenticated a packet under a newer epoch: older receive keys
    /// now live only for the grace period.
    fn promote_receive_epoch(&mut self, epoch: u32, now: Duration) {
        let retire_at = now + self.params.limits.receive_grace;
        for r in self.receive.iter_mut().filter(|r| r.epoch < epoch) {
            r.retire_at.get_or_insert(retire_at);
        }
        self.newest_receive = Some(epoch);
        self.update_next_retirement();
        tracing::debug!(partner = %self.params.partner, epoch, "tunnel partner switched epoch");
    }

    fn update_next_retirement(&mut self) {
        self.next_retirement = self.receive.iter().filter_map(|r| r.retire_at).min();
    }
}
