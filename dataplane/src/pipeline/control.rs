//! Agent mode: installing, re-keying and removing partners in a running appliance.
//!
//! The control thread (the agent API server) validates every request against its
//! own view of the partners, then sends [`Command`]s to every worker over lock-free
//! queues; workers apply them between batches. XDP maps (rules, partner readiness,
//! WAN partner addresses, MSS) are rewritten from the same view after each change,
//! so the kernel side and the workers always agree.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shunt_common::{MAX_PARTNERS, RuleAction};

use super::appliance::{AGENT_LANES, local_address};
use super::history::{Histories, WriterThread, discard_dir, discard_partner, partner_disk_bytes};
use super::{Appliance, Command, PartnerPlan, PipelineError};
use crate::codec::store::{StoreError, StoreKey};
use crate::tunnel::config::Prefix;
use crate::tunnel::{EpochKeys, KeyLimits, Mode, SessionParams};
use crate::xdp::{self, Rule, XdpError};

/// XDP partner number of pass-through rules: never marked ready, so XDP passes
/// what such a rule selects to the kernel.
const PASS_THROUGH_PARTNER: u32 = MAX_PARTNERS - 1;

/// How long a control call waits for the workers to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// (partner, epoch) pairs reported by [`Appliance::expire_keys`].
pub type PartnerEpochs = Vec<(String, u32)>;

/// A partner session as the control plane asks for it.
pub struct SessionSpec {
    /// Unique partner name.
    pub partner: String,
    /// The partner's tunnel address.
    pub remote: SocketAddr,
    /// LAN prefixes behind the partner.
    pub prefixes: Vec<Prefix>,
    /// How its traffic is carried.
    pub mode: Mode,
    /// Index the partner writes into packets to us.
    pub local_index: u32,
    /// Index we write into packets to the partner.
    pub remote_index: u32,
    /// Epoch and keys (encrypted mode only).
    pub keys: Option<(u32, EpochKeys)>,
    /// Seconds since the UNIX epoch when the keys expire (encrypted mode).
    pub expires_at_unix: Option<u64>,
}

impl std::fmt::Debug for SessionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSpec")
            .field("partner", &self.partner)
            .field("remote", &self.remote)
            .field("mode", &self.mode)
            .field("epoch", &self.keys.as_ref().map(|k| k.0))
            .finish_non_exhaustive()
    }
}

/// Agent mode: where and how the compression history is kept on disk (the agent
/// API's `SetHistoryStore`).
#[derive(Clone)]
pub struct HistoryStoreSettings {
    /// Directory of the history files (one subdirectory per partner).
    pub dir: PathBuf,
    /// Disk budget over all partners, bytes (0: no limit).
    pub budget_bytes: u64,
    /// AES-256-XTS key; `None`: the files are not encrypted.
    pub key: Option<StoreKey>,
}

impl std::fmt::Debug for HistoryStoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryStoreSettings")
            .field("dir", &self.dir)
            .field("budget_bytes", &self.budget_bytes)
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

impl HistoryStoreSettings {
    /// Whether files written under `self` are readable under `other` (same key, or
    /// both unencrypted).
    fn same_key(&self, other: &Self) -> bool {
        match (&self.key, &other.key) {
            (None, None) => true,
            (Some(a), Some(b)) => a.bytes() == b.bytes(),
            _ => false,
        }
    }
}

/// What [`Appliance::set_history_store`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryStoreOutcome {
    /// Partners whose store was (re)opened.
    pub partners: u32,
    /// Whether history files were discarded (key or encryption changed).
    pub discarded: bool,
    /// The directory in use (`None`: history in memory only).
    pub dir: Option<PathBuf>,
}

/// What [`Appliance::install_session`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// A fresh session (history erased).
    NewSession,
    /// Only the keys of a newer epoch were added.
    NewEpoch,
}

/// An installed partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// Name.
    pub partner: String,
    /// Tunnel address.
    pub remote: SocketAddr,
    /// LAN prefixes.
    pub prefixes: Vec<Prefix>,
    /// Mode.
    pub mode: Mode,
    /// Newest epoch with keys.
    pub epoch: Option<u32>,
    /// Key expiry, seconds since the UNIX epoch.
    pub expires_at_unix: Option<u64>,
}

/// One rule of the rule table (on top of the partners' own prefixes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSpec {
    /// Traffic to `prefix` goes to `partner`'s tunnel.
    Accelerate {
        /// Destination prefix.
        prefix: Prefix,
        /// Partner name.
        partner: String,
    },
    /// Traffic to `prefix` is left to the kernel.
    PassThrough {
        /// Destination prefix.
        prefix: Prefix,
    },
}

/// Why a control request was refused. Messages say what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The appliance runs from a manual-keying file.
    #[error(
        "this data plane runs from a manual-keying file; start it with --agent-socket to control it"
    )]
    NotAgentMode,
    /// Bad name.
    #[error("partner name must be 1 to 64 characters")]
    BadName,
    /// No such partner.
    #[error("no partner named {0:?} is installed")]
    UnknownPartner(String),
    /// All slots taken.
    #[error("all {0} partner slots are in use; remove a partner first")]
    NoSlot(usize),
    /// Keys given for a mode without encryption.
    #[error("partner {partner}: mode {mode:?} uses no keys; send none")]
    KeysInMode {
        /// Partner.
        partner: String,
        /// Mode.
        mode: Mode,
    },
    /// Encrypted without keys.
    #[error(
        "partner {0}: encrypted mode needs one transmit and one receive key of 32 bytes and an epoch"
    )]
    MissingKeys(String),
    /// Epoch not newer.
    #[error("partner {partner}: epoch {epoch} is not newer than the installed epoch {installed}")]
    EpochNotNewer {
        /// Partner.
        partner: String,
        /// Requested.
        epoch: u32,
        /// Installed.
        installed: u32,
    },
    /// Expiry in the past.
    #[error("partner {0}: the keys' expiry is in the past")]
    AlreadyExpired(String),
    /// Receiver index taken.
    #[error("partner {partner}: local index {index} is used by partner {other}")]
    IndexInUse {
        /// Partner.
        partner: String,
        /// Index.
        index: u32,
        /// Holder.
        other: String,
    },
    /// Address taken.
    #[error("partner {partner}: address {address} is used by partner {other}")]
    AddressInUse {
        /// Partner.
        partner: String,
        /// Address.
        address: IpAddr,
        /// Holder.
        other: String,
    },
    /// Overlapping prefixes.
    #[error("partner {partner}: prefix {prefix} overlaps {other_prefix} of partner {other}")]
    Overlap {
        /// Partner.
        partner: String,
        /// Its prefix.
        prefix: Prefix,
        /// Other partner.
        other: String,
        /// Its prefix.
        other_prefix: Prefix,
    },
    /// No prefixes for a tunnelled partner.
    #[error("partner {0}: give at least one LAN prefix")]
    NoPrefixes(String),
    /// No route to the partner.
    #[error("no route from this appliance to partner {partner} at {address}: {source}")]
    NoRoute {
        /// Partner.
        partner: String,
        /// Address.
        address: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Worker queues full.
    #[error("the workers' command queues are full; retry in a moment")]
    Busy,
    /// XDP map update failed.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// Encrypted history store settings without a key.
    #[error(
        "history store encryption is on but no 64-byte key was given; send the keystore's history key, or no directory while the keystore is sealed"
    )]
    HistoryKeyMissing,
    /// The history store could not be opened, read or discarded.
    #[error("history store: {0}")]
    History(#[source] Box<PipelineError>),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        Self::History(Box::new(PipelineError::Store(e)))
    }
}

impl From<PipelineError> for ControlError {
    fn from(e: PipelineError) -> Self {
        Self::History(Box::new(e))
    }
}

/// The control thread's view of agent-mode partners and rules.
#[derive(Debug, Default)]
pub(crate) struct ControlState {
    agent: bool,
    installed: BTreeMap<usize, Installed>,
    rules: Vec<RuleSpec>,
    steered: BTreeSet<(IpAddr, u8)>,
    wan: BTreeSet<IpAddr>,
    sequence: u64,
    /// History store settings from the control plane (`None`: memory only).
    history_store: Option<HistoryStoreSettings>,
    /// The last settings with a directory: a store set again after a spell in
    /// memory only (keystore sealed) with another key still discards the files.
    last_store: Option<HistoryStoreSettings>,
    /// `--history-dir`: replaces the directory the control plane sends.
    history_dir_override: Option<PathBuf>,
    /// Per slot: the open store's writer thread and the disk it may take.
    stores: BTreeMap<usize, OpenStore>,
}

#[derive(Debug)]
struct OpenStore {
    writer: Option<WriterThread>,
    bytes: u64,
}

#[derive(Debug, Clone)]
struct Installed {
    name: String,
    remote: SocketAddr,
    prefixes: Vec<Prefix>,
    mode: Mode,
    local_index: u32,
    remote_index: u32,
    epoch: Option<u32>,
    expires_at: Option<u64>,
    rekey_announced: Option<u32>,
}

impl ControlState {
    pub(crate) fn new(agent: bool, history_dir_override: Option<PathBuf>) -> Self {
        Self {
            agent,
            history_dir_override,
            ..Self::default()
        }
    }

    /// Waits for every store writer (the workers have stopped and handed over their
    /// last blocks).
    pub(crate) fn finish_stores(&mut self) {
        for (slot, store) in std::mem::take(&mut self.stores) {
            join_writer(slot, store);
        }
    }
}

fn join_writer(slot: usize, store: OpenStore) {
    let Some(writer) = store.writer else {
        return;
    };
    match writer.join() {
        Ok(Ok(files)) => tracing::debug!(slot, files = files.len(), "history store closed"),
        Ok(Err(e)) => tracing::warn!(slot, error = %e, "history writer failed"),
        Err(_) => tracing::warn!(slot, "history writer panicked"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Appliance {
    /// Installs, replaces or re-keys a partner session (see the agent API).
    pub fn install_session(&mut self, spec: SessionSpec) -> Result<InstallOutcome, ControlError> {
        self.require_agent()?;
        let name = spec.partner.clone();
        if name.is_empty() || name.len() > 64 {
            return Err(ControlError::BadName);
        }
        match (spec.mode, &spec.keys) {
            (Mode::Encrypted, None) => return Err(ControlError::MissingKeys(name)),
            (Mode::Encrypted, Some(_)) => {
                if spec.expires_at_unix.is_some_and(|e| e <= unix_now()) {
                    return Err(ControlError::AlreadyExpired(name));
                }
            }
            (mode, Some(_)) => {
                return Err(ControlError::KeysInMode {
                    partner: name,
                    mode,
                });
            }
            (_, None) => {}
        }
        if spec.mode != Mode::PassThrough && spec.prefixes.is_empty() {
            return Err(ControlError::NoPrefixes(name));
        }
        self.check_conflicts(&spec)?;
        let existing = self.slot_of(&name);

        // Same session, newer keys: keep the history.
        if let (Some(slot), Some((epoch, keys))) = (existing, &spec.keys) {
            let inst = &self.control.installed[&slot];
            let same = inst.remote == spec.remote
                && inst.prefixes == spec.prefixes
                && inst.mode == spec.mode
                && inst.local_index == spec.local_index
                && inst.remote_index == spec.remote_index;
            if same && let Some(installed) = inst.epoch {
                if *epoch <= installed {
                    return Err(ControlError::EpochNotNewer {
                        partner: name,
                        epoch: *epoch,
                        installed,
                    });
                }
                let epoch = *epoch;
                let sequence = self.broadcast(|| Command::AddEpoch {
                    slot,
                    epoch,
                    keys: keys.clone(),
                })?;
                let inst = self.control.installed.get_mut(&slot).expect("present");
                inst.epoch = Some(epoch);
                inst.expires_at = spec.expires_at_unix;
                self.wait_applied(sequence);
                tracing::info!(partner = %name, epoch, "session keys added");
                return Ok(InstallOutcome::NewEpoch);
            }
        }

        let slot = match existing {
            Some(slot) => slot,
            None => (0..self.config.partners.len())
                .find(|s| !self.control.installed.contains_key(s))
                .ok_or(ControlError::NoSlot(self.config.partners.len()))?,
        };
        let local = local_address(spec.remote).map_err(|source| ControlError::NoRoute {
            partner: name.clone(),
            address: spec.remote,
            source,
        })?;
        let inst = Installed {
            name: name.clone(),
            remote: spec.remote,
            prefixes: spec.prefixes,
            mode: spec.mode,
            local_index: spec.local_index,
            remote_index: spec.remote_index,
            epoch: spec.keys.as_ref().map(|k| k.0),
            expires_at: spec
                .expires_at_unix
                .filter(|_| spec.mode == Mode::Encrypted),
            rekey_announced: None,
        };
        self.open_session(slot, inst, local, spec.keys)?;
        Ok(InstallOutcome::NewSession)
    }

    /// Removes a partner: session, keys, history, rules.
    pub fn remove_session(&mut self, partner: &str) -> Result<(), ControlError> {
        self.require_agent()?;
        let slot = self
            .slot_of(partner)
            .ok_or_else(|| ControlError::UnknownPartner(partner.to_owned()))?;
        self.control.installed.remove(&slot);
        let sequence = self.broadcast(|| Command::SetPartner {
            slot,
            plan: Box::new(PartnerPlan::vacant()),
            keys: None,
        })?;
        std::sync::Arc::make_mut(&mut self.config).partners[slot] = PartnerPlan::vacant();
        self.sync_steering()?;
        self.wait_applied(sequence);
        // The workers dropped the spools: the writer ends once it wrote what they
        // queued; then the partner's files go with it.
        self.join_store(slot);
        if let Some(settings) = &self.control.history_store
            && let Err(e) = discard_partner(&settings.dir, partner)
        {
            tracing::warn!(partner, error = %e, "history files of the removed partner not deleted");
        }
        tracing::info!(partner, "session removed");
        Ok(())
    }

    /// Changes how traffic to a partner is carried: a fresh session, history erased;
    /// an encrypted partner carries nothing until keys arrive.
    pub fn set_partner_mode(&mut self, partner: &str, mode: Mode) -> Result<(), ControlError> {
        self.require_agent()?;
        let slot = self
            .slot_of(partner)
            .ok_or_else(|| ControlError::UnknownPartner(partner.to_owned()))?;
        let mut inst = self.control.installed[&slot].clone();
        if inst.mode == mode {
            return Ok(());
        }
        if mode != Mode::PassThrough && inst.prefixes.is_empty() {
            return Err(ControlError::NoPrefixes(partner.to_owned()));
        }
        inst.mode = mode;
        inst.epoch = None;
        inst.expires_at = None;
        let local = self.config.partners[slot].local;
        self.open_session(slot, inst, local, None)
    }

    /// Drops the compression history of one partner (or all with `None`), in memory
    /// and on disk; returns how many installed partners were affected.
    pub fn erase_history(&mut self, partner: Option<&str>) -> Result<u32, ControlError> {
        self.require_agent()?;
        let slots: Vec<usize> = match partner {
            Some(name) => vec![
                self.slot_of(name)
                    .ok_or_else(|| ControlError::UnknownPartner(name.to_owned()))?,
            ],
            None => self.control.installed.keys().copied().collect(),
        };
        for &slot in &slots {
            self.close_store(slot)?;
        }
        if let Some(settings) = &self.control.history_store {
            match partner {
                Some(name) => discard_partner(&settings.dir, name)?,
                None => {
                    discard_dir(&settings.dir)?;
                }
            }
        }
        for &slot in &slots {
            self.open_store_or_warn(slot);
        }
        tracing::info!(partners = slots.len(), "history erased");
        Ok(slots.len() as u32)
    }

    /// Sets where and how the history is kept on disk (`None`: memory only). A new
    /// key, or encryption turned on or off, discards every partner's files; every
    /// installed partner is moved onto the new store (its history in memory is
    /// replaced by what the store holds).
    pub fn set_history_store(
        &mut self,
        settings: Option<HistoryStoreSettings>,
    ) -> Result<HistoryStoreOutcome, ControlError> {
        self.require_agent()?;
        let settings = settings.map(|mut s| {
            if let Some(dir) = &self.control.history_dir_override {
                s.dir = dir.clone();
            }
            s
        });
        let dir = settings.as_ref().map(|s| s.dir.clone());
        let unchanged = match (&self.control.history_store, &settings) {
            (None, None) => true,
            (Some(old), Some(new)) => {
                old.same_key(new) && old.dir == new.dir && old.budget_bytes == new.budget_bytes
            }
            _ => false,
        };
        let discard = match (&self.control.last_store, &settings) {
            (Some(last), Some(new)) => !last.same_key(new),
            _ => false,
        };
        if unchanged {
            return Ok(HistoryStoreOutcome {
                partners: 0,
                discarded: false,
                dir,
            });
        }
        let slots: Vec<usize> = self.control.installed.keys().copied().collect();
        for &slot in &slots {
            self.close_store(slot)?;
        }
        self.control.history_store = settings.clone();
        let last = match settings {
            Some(s) => self.control.last_store.replace(s),
            None => None,
        };
        if discard && let Some(old) = &last {
            let files = discard_dir(&old.dir)?;
            tracing::info!(dir = %old.dir.display(), files, "history key or encryption changed; history discarded");
        }
        let mut partners = 0;
        let mut failed = None;
        for &slot in &slots {
            match self.open_store(slot) {
                Ok(true) => partners += 1,
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        tracing::info!(
            dir = ?self.control.history_store.as_ref().map(|s| s.dir.display().to_string()),
            encrypted = self.control.history_store.as_ref().is_some_and(|s| s.key.is_some()),
            partners,
            discarded = discard,
            "history store set"
        );
        Ok(HistoryStoreOutcome {
            partners,
            discarded: discard,
            dir,
        })
    }

    /// Closes slot `slot`'s store: the workers drop its history and spools, then the
    /// writer finishes.
    fn close_store(&mut self, slot: usize) -> Result<(), ControlError> {
        let sequence = self.broadcast(|| Command::AttachHistory {
            slot,
            history: None,
        })?;
        self.wait_applied(sequence);
        self.join_store(slot);
        Ok(())
    }

    fn join_store(&mut self, slot: usize) {
        if let Some(store) = self.control.stores.remove(&slot) {
            join_writer(slot, store);
        }
    }

    /// Opens slot `slot`'s store (when a store is set and the partner compresses),
    /// restores its history and hands each worker its share; returns whether a store
    /// was opened.
    fn open_store(&mut self, slot: usize) -> Result<bool, ControlError> {
        let Some(settings) = self.control.history_store.clone() else {
            return Ok(false);
        };
        let Some(inst) = self.control.installed.get(&slot) else {
            return Ok(false);
        };
        if inst.mode == Mode::PassThrough || !self.config.compression {
            return Ok(false);
        }
        let name = inst.name.clone();
        let need = partner_disk_bytes(&self.config, slot, AGENT_LANES);
        let used: u64 = self.control.stores.values().map(|s| s.bytes).sum();
        if settings.budget_bytes != 0 && used + need > settings.budget_bytes {
            tracing::warn!(
                partner = %name,
                need_mib = need >> 20,
                used_mib = used >> 20,
                budget_mib = settings.budget_bytes >> 20,
                "history store full: this partner's history stays in memory; raise the data store size"
            );
            return Ok(false);
        }
        let mut histories =
            Histories::open_partner(&settings.dir, settings.key.as_ref(), &self.config, slot)?;
        let writer = histories.start_writer()?;
        self.control.sequence += 1;
        let sequence = self.control.sequence;
        for (w, queue) in self.shared.commands.iter().enumerate() {
            let share = histories.take_worker(w).into_iter().nth(slot).flatten();
            let command = Command::AttachHistory {
                slot,
                history: share.map(Box::new),
            };
            if queue.push((sequence, command)).is_err() {
                tracing::warn!(partner = %name, worker = w, "worker queue full; its share of the history store is not attached");
            }
        }
        self.control.stores.insert(
            slot,
            OpenStore {
                writer,
                bytes: need,
            },
        );
        self.wait_applied(sequence);
        Ok(true)
    }

    /// As [`Self::open_store`]; a store that cannot be opened leaves the partner's
    /// history in memory, with a warning.
    fn open_store_or_warn(&mut self, slot: usize) {
        if let Err(e) = self.open_store(slot) {
            let partner = self.control.installed.get(&slot).map(|i| i.name.clone());
            tracing::warn!(partner = ?partner, error = %e, "history store not opened; the partner's history stays in memory");
        }
    }

    /// Replaces the rule table.
    pub fn set_rules(&mut self, rules: Vec<RuleSpec>) -> Result<(), ControlError> {
        self.require_agent()?;
        for r in &rules {
            if let RuleSpec::Accelerate { partner, .. } = r
                && self.slot_of(partner).is_none()
            {
                return Err(ControlError::UnknownPartner(partner.clone()));
            }
        }
        self.control.rules = rules;
        self.sync_steering()
    }

    /// Installed partners.
    pub fn sessions(&self) -> Vec<SessionState> {
        self.control
            .installed
            .values()
            .map(|i| SessionState {
                partner: i.name.clone(),
                remote: i.remote,
                prefixes: i.prefixes.clone(),
                mode: i.mode,
                epoch: i.epoch,
                expires_at_unix: i.expires_at,
            })
            .collect()
    }

    /// Once a second: encrypted sessions whose keys expired lose them (their traffic
    /// is dropped, never sent in clear, until new keys come). Returns the partners
    /// whose keys expired and those whose keys expire within `warn` (each epoch once).
    pub fn expire_keys(
        &mut self,
        warn: Duration,
    ) -> Result<(PartnerEpochs, PartnerEpochs), ControlError> {
        let now = unix_now();
        let (mut expired, mut soon) = (Vec::new(), Vec::new());
        let slots: Vec<usize> = self.control.installed.keys().copied().collect();
        for slot in slots {
            let inst = self.control.installed[&slot].clone();
            let (Some(epoch), Some(at)) = (inst.epoch, inst.expires_at) else {
                continue;
            };
            if at <= now {
                tracing::warn!(partner = %inst.name, epoch, "session keys expired; traffic to the partner is dropped until new keys arrive");
                let local = self.config.partners[slot].local;
                let fresh = Installed {
                    epoch: None,
                    expires_at: None,
                    ..inst.clone()
                };
                self.open_session(slot, fresh, local, None)?;
                expired.push((inst.name, epoch));
            } else if at <= now + warn.as_secs() && inst.rekey_announced != Some(epoch) {
                if let Some(i) = self.control.installed.get_mut(&slot) {
                    i.rekey_announced = Some(epoch);
                }
                soon.push((inst.name, epoch));
            }
        }
        Ok((expired, soon))
    }

    fn require_agent(&self) -> Result<(), ControlError> {
        if self.control.agent {
            Ok(())
        } else {
            Err(ControlError::NotAgentMode)
        }
    }

    fn slot_of(&self, partner: &str) -> Option<usize> {
        self.control
            .installed
            .iter()
            .find(|(_, i)| i.name == partner)
            .map(|(&s, _)| s)
    }

    fn check_conflicts(&self, spec: &SessionSpec) -> Result<(), ControlError> {
        let partner = || spec.partner.clone();
        for (j, a) in spec.prefixes.iter().enumerate() {
            if let Some(b) = spec.prefixes[j + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(ControlError::Overlap {
                    partner: partner(),
                    prefix: *a,
                    other: partner(),
                    other_prefix: *b,
                });
            }
        }
        for other in self.control.installed.values() {
            if other.name == spec.partner {
                continue;
            }
            let tunnelled = |m: Mode| m != Mode::PassThrough;
            if tunnelled(spec.mode)
                && tunnelled(other.mode)
                && other.local_index == spec.local_index
            {
                return Err(ControlError::IndexInUse {
                    partner: partner(),
                    index: spec.local_index,
                    other: other.name.clone(),
                });
            }
            if other.remote.ip() == spec.remote.ip() {
                return Err(ControlError::AddressInUse {
                    partner: partner(),
                    address: spec.remote.ip(),
                    other: other.name.clone(),
                });
            }
            for a in &spec.prefixes {
                if let Some(b) = other.prefixes.iter().find(|b| a.overlaps(b)) {
                    return Err(ControlError::Overlap {
                        partner: partner(),
                        prefix: *a,
                        other: other.name.clone(),
                        other_prefix: *b,
                    });
                }
            }
        }
        Ok(())
    }

    /// Puts `inst` into `slot` with a fresh session on every worker.
    fn open_session(
        &mut self,
        slot: usize,
        inst: Installed,
        local: IpAddr,
        keys: Option<(u32, EpochKeys)>,
    ) -> Result<(), ControlError> {
        let plan = PartnerPlan {
            name: inst.name.clone(),
            mode: inst.mode,
            remote: inst.remote,
            local,
            compress: self.config.compression,
            history_bytes: None,
            zstd_dictionary: None,
            prefixes: inst.prefixes.iter().map(|p| (p.addr, p.len)).collect(),
            params: (inst.mode != Mode::PassThrough).then(|| SessionParams {
                partner: inst.name.clone(),
                remote: inst.remote,
                local_index: inst.local_index,
                remote_index: inst.remote_index,
                mode: inst.mode,
                lanes: AGENT_LANES,
                // Nonces never repeat across restarts within a key's life (see
                // `tunnel::manual`).
                initial_counter: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2)),
                // The key's life is the control plane's expiry, enforced by
                // `expire_keys`; the usage limits stay.
                limits: KeyLimits {
                    rekey_interval: Duration::from_secs(86_400),
                    reject_after: Duration::from_secs(7 * 86_400),
                    ..KeyLimits::default()
                },
            }),
            keying: None,
        };
        let sequence = self.broadcast(|| Command::SetPartner {
            slot,
            plan: Box::new(plan.clone()),
            keys: keys.clone(),
        })?;
        tracing::info!(partner = %inst.name, slot, mode = ?inst.mode, epoch = ?inst.epoch, "session installed");
        // History learnt in another mode must not serve this one.
        let mode_changed = self
            .control
            .installed
            .get(&slot)
            .is_some_and(|old| old.name == inst.name && old.mode != inst.mode);
        let name = inst.name.clone();
        self.control.installed.insert(slot, inst);
        std::sync::Arc::make_mut(&mut self.config).partners[slot] = plan;
        self.sync_steering()?;
        self.wait_applied(sequence);
        // The fresh session dropped the old spools; the old writer finishes, then the
        // store is opened again for the new session (restored history is used only
        // once the partner's summary says it holds it too).
        self.join_store(slot);
        if mode_changed
            && let Some(settings) = &self.control.history_store
            && let Err(e) = discard_partner(&settings.dir, &name)
        {
            // The files stay; the partner's store is not reopened on them.
            tracing::warn!(partner = %name, error = %e, "history of the previous mode not discarded; history kept in memory only");
            return Ok(());
        }
        self.open_store_or_warn(slot);
        Ok(())
    }

    /// Sends a command to every worker; returns its sequence number.
    fn broadcast(&mut self, make: impl Fn() -> Command) -> Result<u64, ControlError> {
        self.control.sequence += 1;
        let sequence = self.control.sequence;
        for queue in &self.shared.commands {
            queue
                .push((sequence, make()))
                .map_err(|_| ControlError::Busy)?;
        }
        Ok(sequence)
    }

    /// Waits (briefly) until every worker applied command `sequence`; workers look at
    /// their queue at least once a millisecond.
    fn wait_applied(&self, sequence: u64) {
        let start = Instant::now();
        while !self.shared.all_applied(sequence) {
            if start.elapsed() > APPLY_TIMEOUT {
                tracing::warn!(sequence, "workers did not apply a command in time");
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Rewrites XDP's rules, partner readiness, WAN partner addresses and the MSS
    /// from the installed partners and the rule table.
    fn sync_steering(&mut self) -> Result<(), ControlError> {
        // Agent mode runs on AF_XDP ports only, so the steering program is there.
        let Some(steering) = self.steering.as_mut() else {
            return Ok(());
        };
        let mut desired: BTreeMap<(IpAddr, u8), Rule> = BTreeMap::new();
        let mut wan: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for (&slot, inst) in &self.control.installed {
            if inst.mode == Mode::PassThrough {
                continue;
            }
            let partner = slot as u32;
            for p in &inst.prefixes {
                let rule = Rule {
                    partner,
                    action: RuleAction::Accelerate,
                    must_protect: inst.mode == Mode::Encrypted,
                };
                desired.insert((p.addr, p.len), rule);
            }
            wan.insert(inst.remote.ip(), partner);
        }
        for r in &self.control.rules {
            let (prefix, partner, must_protect) = match r {
                RuleSpec::PassThrough { prefix } => (prefix, PASS_THROUGH_PARTNER, false),
                RuleSpec::Accelerate { prefix, partner } => {
                    let Some(slot) = self
                        .control
                        .installed
                        .iter()
                        .find(|(_, i)| &i.name == partner && i.mode != Mode::PassThrough)
                        .map(|(&s, _)| s)
                    else {
                        continue;
                    };
                    let encrypted = self.control.installed[&slot].mode == Mode::Encrypted;
                    (prefix, slot as u32, encrypted)
                }
            };
            let rule = Rule {
                partner,
                action: RuleAction::Accelerate,
                must_protect,
            };
            desired.insert((prefix.addr, prefix.len), rule);
        }
        for slot in 0..self.config.partners.len() {
            let ready = self
                .control
                .installed
                .get(&slot)
                .is_some_and(|i| match i.mode {
                    Mode::CompressOnly => true,
                    Mode::Encrypted => i.epoch.is_some(),
                    Mode::PassThrough => false,
                });
            steering.set_partner_ready(slot as u32, ready)?;
        }
        for (&addr, &partner) in &wan {
            steering.add_wan_partner(addr, partner)?;
        }
        for addr in self.control.wan.clone() {
            if !wan.contains_key(&addr) {
                steering.remove_wan_partner(addr)?;
            }
        }
        self.control.wan = wan.keys().copied().collect();
        for (&(addr, len), &rule) in &desired {
            steering.add_rule(xdp::Prefix::new(addr, len)?, rule)?;
        }
        for (addr, len) in self.control.steered.clone() {
            if !desired.contains_key(&(addr, len)) {
                steering.remove_rule(xdp::Prefix::new(addr, len)?)?;
            }
        }
        self.control.steered = desired.keys().copied().collect();
        steering.set_mss(self.config.mss())?;
        Ok(())
    }
}
