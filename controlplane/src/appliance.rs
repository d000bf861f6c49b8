//! The state one `shunt-control` serves: configuration database, keystore,
//! accounts, partners' runtime state and the change feed the watches follow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::auth::{Auth, AuthSettings};
use crate::keystore::{KdfParams, Keystore, KeystoreState};
use crate::licensing::{LicenceState, LicenceVerifier};
use crate::partner::{LocalSecurity, PartnerRuntime};
use crate::store::ConfigStore;

/// Name of the keystore secret that keys the history encryption (AES-256-XTS:
/// two 256-bit keys).
pub const HISTORY_KEY: &str = "history-key";
/// Settings keys in the configuration database.
pub const PEERING_SETTINGS: &str = "peering";
pub const DATA_STORE_SETTINGS: &str = "data-store";

/// Secure-peering settings (the secrets themselves are in the keystore).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeeringSettings {
    pub enabled: bool,
    /// 0 unspecified, 1 own credentials, 2 private CA (management.proto).
    pub mode: i32,
    /// 0 unspecified (full), 1 full, 2 chain only.
    pub verification: i32,
    pub cipher_spec: String,
    pub credentials_installed: bool,
    pub ca_stores: Vec<String>,
    pub private_ca: bool,
}

/// Compression-history store settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataStoreSettings {
    pub encryption: bool,
    pub size_bytes: u64,
}

impl Default for DataStoreSettings {
    fn default() -> Self {
        Self {
            encryption: false,
            size_bytes: 8 << 30,
        }
    }
}

/// How `shunt-control` was started.
#[derive(Debug, Clone)]
pub struct ApplianceOptions {
    pub state_dir: PathBuf,
    pub auth: AuthSettings,
    pub kdf: KdfParams,
}

pub struct Appliance {
    pub started: Instant,
    pub state_dir: PathBuf,
    pub store: Arc<ConfigStore>,
    pub auth: Auth,
    keystore: Mutex<Keystore>,
    runtime: Mutex<HashMap<String, PartnerRuntime>>,
    licence: Mutex<LicenceState>,
    pub licence_verifier: Box<dyn LicenceVerifier>,
    changes: watch::Sender<u64>,
    pub management_calls: AtomicU64,
}

impl Appliance {
    /// Opens the state directory: configuration database, keystore (sealed).
    pub fn open(
        options: &ApplianceOptions,
        licence_verifier: Box<dyn LicenceVerifier>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&options.state_dir).with_context(|| {
            format!(
                "cannot create state directory {}",
                options.state_dir.display()
            )
        })?;
        std::fs::create_dir_all(history_dir(&options.state_dir))
            .context("cannot create the history directory")?;
        let store = Arc::new(
            ConfigStore::open(&options.state_dir.join("config.redb"))
                .context("cannot open the configuration database")?,
        );
        let keystore = Keystore::load(options.state_dir.join("keystore"), options.kdf)
            .context("cannot load the keystore")?;
        Ok(Self {
            started: Instant::now(),
            state_dir: options.state_dir.clone(),
            auth: Auth::new(store.clone(), options.auth),
            store,
            keystore: Mutex::new(keystore),
            runtime: Mutex::new(HashMap::new()),
            licence: Mutex::new(LicenceState::none()),
            licence_verifier,
            changes: watch::channel(0).0,
            management_calls: AtomicU64::new(0),
        })
    }

    pub fn keystore(&self) -> MutexGuard<'_, Keystore> {
        self.keystore.lock().unwrap()
    }

    pub fn keystore_state(&self) -> KeystoreState {
        self.keystore().state()
    }

    pub fn licence(&self) -> LicenceState {
        self.licence.lock().unwrap().clone()
    }

    pub fn set_licence(&self, state: LicenceState) {
        *self.licence.lock().unwrap() = state;
        self.changed();
    }

    pub fn peering_settings(&self) -> anyhow::Result<PeeringSettings> {
        Ok(self.store.setting(PEERING_SETTINGS)?)
    }

    pub fn data_store_settings(&self) -> anyhow::Result<DataStoreSettings> {
        Ok(self.store.setting(DATA_STORE_SETTINGS)?)
    }

    /// This appliance's side of the mode matrix, now.
    pub fn local_security(&self) -> LocalSecurity {
        LocalSecurity {
            peering_enabled: self.peering_settings().map(|p| p.enabled).unwrap_or(false),
            keystore_sealed: self.keystore_state() == KeystoreState::Sealed,
            licence_valid: self.licence().is_valid_now(),
        }
    }

    /// What the peering or the data plane learnt about a partner. The
    /// signaling and the agent client call this; watches see it at once.
    pub fn update_partner_runtime(&self, partner: &str, update: impl FnOnce(&mut PartnerRuntime)) {
        update(
            self.runtime
                .lock()
                .unwrap()
                .entry(partner.to_owned())
                .or_default(),
        );
        self.changed();
    }

    pub fn partner_runtime(&self, partner: &str) -> PartnerRuntime {
        self.runtime
            .lock()
            .unwrap()
            .get(partner)
            .cloned()
            .unwrap_or_default()
    }

    pub fn forget_partner_runtime(&self, partner: &str) {
        self.runtime.lock().unwrap().remove(partner);
        self.changed();
    }

    /// Signals every watcher that partners, keystore or settings changed.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn count_call(&self) {
        self.management_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn history_dir(&self) -> PathBuf {
        history_dir(&self.state_dir)
    }
}

fn history_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("history")
}

/// Total size of the files under `dir` (the stored compression history).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Deletes everything under `dir` (keeping `dir`); returns the bytes erased.
pub fn erase_dir(dir: &Path) -> std::io::Result<u64> {
    let erased = dir_size(dir);
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?
            } else {
                std::fs::remove_file(&path)?
            }
        }
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(erased)
}
