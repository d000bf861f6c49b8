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
use crate::credentials::SecretStore;
use crate::keystore::{KdfParams, Keystore, KeystoreState};
use crate::licence::{InstalledLicence, LicenceError, LicenceOrigin, VerifyLicence};
use crate::partner::{LocalSecurity, PartnerRuntime};
use crate::store::ConfigStore;

/// Name of the keystore secret that keys the history encryption (AES-256-XTS:
/// two 256-bit keys).
pub const HISTORY_KEY: &str = "history-key";
/// Settings keys in the configuration database.
pub const PEERING_SETTINGS: &str = "peering";
pub const DATA_STORE_SETTINGS: &str = "data-store";
pub const LICENCE_SETTINGS: &str = "licence";
/// File (in the state directory) holding the installed licence as received.
pub const LICENCE_FILE: &str = "licence.json";
/// Keystore names of the peering private key and the private CA key.
pub const PEERING_KEY: &str = "peering-key";
pub const PRIVATE_CA_KEY: &str = "private-ca-key";

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
    /// This appliance's certificate chain (PEM); its key is `PEERING_KEY` in
    /// the keystore.
    #[serde(default)]
    pub identity_chain_pem: String,
    /// CA stores by name (PEM); partners are verified against all of them.
    #[serde(default)]
    pub trust_pem: std::collections::BTreeMap<String, String>,
    /// The private CA's certificate (PEM) when this appliance runs one.
    #[serde(default)]
    pub private_ca_pem: String,
    /// Appliances enrolled into the private CA.
    #[serde(default)]
    pub connected_peers: Vec<ConnectedPeerRecord>,
}

/// An appliance enrolled into this appliance's private CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectedPeerRecord {
    pub name: String,
    pub address: String,
    pub fingerprint: String,
    pub certificate_subject: String,
    pub expires_at_unix: u64,
}

/// Where the licence comes from (the file itself is `LICENCE_FILE`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LicenceSettings {
    /// Licence server "host:port"; empty when the licence was installed as a file.
    pub server: String,
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
    licence: Mutex<InstalledLicence>,
    pub licence_verifier: Box<dyn VerifyLicence>,
    name: String,
    changes: watch::Sender<u64>,
    pub management_calls: AtomicU64,
}

impl Appliance {
    /// Opens the state directory: configuration database, keystore (sealed).
    pub fn open(
        options: &ApplianceOptions,
        licence_verifier: Box<dyn VerifyLicence>,
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
        let licence = load_licence(&options.state_dir, &store, licence_verifier.as_ref());
        Ok(Self {
            started: Instant::now(),
            state_dir: options.state_dir.clone(),
            auth: Auth::new(store.clone(), options.auth),
            store,
            keystore: Mutex::new(keystore),
            runtime: Mutex::new(HashMap::new()),
            licence: Mutex::new(licence),
            licence_verifier,
            name: "shunt".into(),
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

    /// Names this appliance (in licence requests, its own certificate, hellos).
    pub fn named(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keystore as the credentials library's secret store (fails with
    /// `Sealed` while sealed).
    pub fn secrets(&self) -> &dyn SecretStore {
        &self.keystore
    }

    pub fn licence(&self) -> InstalledLicence {
        self.licence.lock().unwrap().clone()
    }

    /// Verifies `file` with the configured verifying key and, if it verifies,
    /// keeps it (durably) as the appliance's licence.
    pub fn install_licence(
        &self,
        file: &[u8],
        origin: LicenceOrigin,
    ) -> Result<InstalledLicence, LicenceError> {
        let licence = self.licence_verifier.verify_file(file)?;
        let server = match &origin {
            LicenceOrigin::Server(addr) => addr.clone(),
            _ => String::new(),
        };
        let path = self.state_dir.join(LICENCE_FILE);
        crate::durable::write_atomic(&path, file, 0o644).map_err(|e| {
            LicenceError::Unusable(format!(
                "cannot store the licence in {}: {e}",
                path.display()
            ))
        })?;
        self.store
            .put(
                crate::store::SETTINGS,
                LICENCE_SETTINGS,
                &LicenceSettings { server },
            )
            .map_err(|e| LicenceError::Unusable(format!("cannot record the licence: {e}")))?;
        let installed = InstalledLicence {
            licence: Some(licence),
            origin,
            problem: None,
        };
        *self.licence.lock().unwrap() = installed.clone();
        self.changed();
        Ok(installed)
    }

    /// Records why the licence could not be (re)fetched; a licence already held
    /// stays in force until it expires.
    pub fn set_licence_problem(&self, origin: LicenceOrigin, problem: String) {
        let mut l = self.licence.lock().unwrap();
        l.origin = origin;
        l.problem = Some(problem);
        drop(l);
        self.changed();
    }

    /// Forgets the licence (file and server).
    pub fn remove_licence(&self) -> anyhow::Result<()> {
        crate::durable::remove_durable(&self.state_dir.join(LICENCE_FILE))?;
        self.store.put(
            crate::store::SETTINGS,
            LICENCE_SETTINGS,
            &LicenceSettings::default(),
        )?;
        *self.licence.lock().unwrap() = InstalledLicence::none();
        self.changed();
        Ok(())
    }

    pub fn licence_settings(&self) -> anyhow::Result<LicenceSettings> {
        Ok(self.store.setting(LICENCE_SETTINGS)?)
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

/// The licence kept in the state directory, verified again at every start.
fn load_licence(
    state_dir: &Path,
    store: &ConfigStore,
    verifier: &dyn VerifyLicence,
) -> InstalledLicence {
    let settings: LicenceSettings = store.setting(LICENCE_SETTINGS).unwrap_or_default();
    let origin = if settings.server.is_empty() {
        LicenceOrigin::File
    } else {
        LicenceOrigin::Server(settings.server)
    };
    let path = state_dir.join(LICENCE_FILE);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if origin == LicenceOrigin::File {
                InstalledLicence::none()
            } else {
                InstalledLicence {
                    licence: None,
                    origin,
                    problem: Some("not fetched from the licence server yet".into()),
                }
            }
        }
        Err(e) => InstalledLicence {
            licence: None,
            origin,
            problem: Some(format!("cannot read {}: {e}", path.display())),
        },
        Ok(file) => match verifier.verify_file(&file) {
            Ok(licence) => InstalledLicence {
                licence: Some(licence),
                origin,
                problem: None,
            },
            Err(e) => {
                tracing::warn!(error = %e, "the stored licence is refused");
                InstalledLicence {
                    licence: None,
                    origin,
                    problem: Some(format!("the stored licence is refused: {e}")),
                }
            }
        },
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
