//! The keystore: one file holding the appliance's secrets (private keys, the
//! private CA key, the history encryption key) under a random master key,
//! itself wrapped under a key derived from the keystore password.
//!
//! States: uninitialized → open ⇄ sealed. It is sealed at every start
//! ([`Keystore::load`]) until [`Keystore::open`] is given the password.

mod format;
mod secret;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

pub use format::KdfParams;
use format::{KEY_LEN, KeystoreFile, MasterKey};
pub use secret::{Password, SecretBytes};

use crate::credentials::{Secret, SecretStore, SecretStoreError};
use crate::durable;
use crate::ratelimit::FailureLimiter;

/// Shortest keystore password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Failed opens allowed per [`OPEN_WINDOW`] before further attempts are refused.
pub const MAX_FAILED_OPENS: u32 = 5;
pub const OPEN_WINDOW: Duration = Duration::from_secs(60);

/// Where the keystore is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeystoreState {
    Uninitialized,
    Sealed,
    Open,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    #[error("the keystore is not initialized; initialize it with a password first")]
    NotInitialized,
    #[error("the keystore is already initialized; open it, or reset it to start over")]
    AlreadyInitialized,
    #[error("the keystore is sealed; open it with the keystore password first")]
    Sealed,
    #[error("wrong keystore password")]
    WrongPassword,
    #[error("too many failed keystore opens; try again in {retry_after_secs} s")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("keystore password too short: use at least {MIN_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("no secret named {0:?} in the keystore")]
    NoSuchSecret(String),
    #[error("keystore file is damaged ({0}); restore it from a backup or reset the keystore")]
    Corrupt(String),
    #[error("cannot {action} keystore file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The keystore file at a fixed path and, when open, its master key.
pub struct Keystore {
    path: PathBuf,
    kdf: KdfParams,
    file: Option<KeystoreFile>,
    master: Option<MasterKey>,
    failed_opens: FailureLimiter<()>,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field("path", &self.path)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Keystore {
    /// Reads the keystore at `path` (sealed), or notes that there is none
    /// (uninitialized). `kdf` is used for every new password wrap.
    pub fn load(path: impl Into<PathBuf>, kdf: KdfParams) -> Result<Self, KeystoreError> {
        let path = path.into();
        durable::remove_stale_temp(&path).map_err(io_error("clean up", &path))?;
        let file = match std::fs::read(&path) {
            Ok(bytes) => Some(KeystoreFile::parse(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        Ok(Self {
            path,
            kdf,
            file,
            master: None,
            failed_opens: FailureLimiter::new(MAX_FAILED_OPENS, OPEN_WINDOW),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state(&self) -> KeystoreState {
        match (&self.file, &self.master) {
            (None, _) => KeystoreState::Uninitialized,
            (Some(_), None) => KeystoreState::Sealed,
            (Some(_), Some(_)) => KeystoreState::Open,
        }
    }

    /// Argon2id parameters of the stored file (or the ones new files get).
    pub fn kdf_params(&self) -> KdfParams {
        self.file.as_ref().map_or(self.kdf, |f| f.kdf)
    }

    /// Creates the keystore with a new random master key; leaves it open.
    pub fn initialize(&mut self, password: &Password) -> Result<(), KeystoreError> {
        if self.file.is_some() {
            return Err(KeystoreError::AlreadyInitialized);
        }
        self.create(password)
    }

    /// Unwraps the master key with `password`. Failed attempts are limited
    /// to [`MAX_FAILED_OPENS`] per [`OPEN_WINDOW`].
    pub fn open(&mut self, password: &Password) -> Result<(), KeystoreError> {
        let master = self.unwrap_checked(password)?;
        self.master = Some(master);
        tracing::info!(path = %self.path.display(), "keystore opened");
        Ok(())
    }

    /// Forgets the master key; secrets stay on disk, unreadable until opened.
    pub fn seal(&mut self) {
        if self.master.take().is_some() {
            tracing::info!(path = %self.path.display(), "keystore sealed");
        }
    }

    /// Rewraps the master key under `new`; every secret is kept. Works in
    /// both sealed and open state and leaves the state as it was.
    pub fn change_password(
        &mut self,
        current: &Password,
        new: &Password,
    ) -> Result<(), KeystoreError> {
        check_strength(new)?;
        let master = self.unwrap_checked(current)?;
        let mut file = self.parse_current()?;
        file.rewrap(new, self.kdf, &master)?;
        self.store(file)?;
        tracing::info!(path = %self.path.display(), "keystore password changed");
        Ok(())
    }

    /// Destroys every secret and starts a new, empty, open keystore under
    /// `new_password`. Returns the names of the destroyed secrets.
    pub fn reset(&mut self, new_password: &Password) -> Result<Vec<String>, KeystoreError> {
        check_strength(new_password)?;
        let destroyed = self
            .file
            .as_ref()
            .map(|f| f.secrets.keys().cloned().collect())
            .unwrap_or_default();
        self.master = None;
        self.create(new_password)?;
        self.failed_opens.clear(&());
        tracing::warn!(path = %self.path.display(), destroyed = ?destroyed, "keystore reset: all secrets destroyed");
        Ok(destroyed)
    }

    /// Names (never values) of the secrets held.
    pub fn secret_names(&self) -> Vec<String> {
        self.file
            .as_ref()
            .map(|f| f.secrets.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file
            .as_ref()
            .is_some_and(|f| f.secrets.contains_key(name))
    }

    /// Stores (or replaces) a named secret; needs the keystore open.
    pub fn put_secret(&mut self, name: &str, value: &SecretBytes) -> Result<(), KeystoreError> {
        let master = self.master.as_ref().ok_or(self.closed_error())?;
        let mut file = self.parse_current()?;
        file.put_secret(master, name, value)?;
        self.store(file)
    }

    pub fn secret(&self, name: &str) -> Result<SecretBytes, KeystoreError> {
        let master = self.master.as_ref().ok_or(self.closed_error())?;
        self.file
            .as_ref()
            .ok_or(KeystoreError::NotInitialized)?
            .secret(master, name)
    }

    pub fn remove_secret(&mut self, name: &str) -> Result<(), KeystoreError> {
        if self.master.is_none() {
            return Err(self.closed_error());
        }
        let mut file = self.parse_current()?;
        if file.secrets.remove(name).is_none() {
            return Err(KeystoreError::NoSuchSecret(name.to_owned()));
        }
        self.store(file)
    }

    fn create(&mut self, password: &Password) -> Result<(), KeystoreError> {
        check_strength(password)?;
        let mut master = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(master.as_mut_slice())
            .map_err(|_| KeystoreError::Corrupt("random generator failed".into()))?;
        let file = KeystoreFile::new(password, self.kdf, &master)?;
        self.store(file)?;
        self.master = Some(master);
        tracing::info!(path = %self.path.display(), "keystore created");
        Ok(())
    }

    fn unwrap_checked(&mut self, password: &Password) -> Result<MasterKey, KeystoreError> {
        let file = self.file.as_ref().ok_or(KeystoreError::NotInitialized)?;
        if let Some(wait) = self.failed_opens.refused_for(&()) {
            return Err(KeystoreError::TooManyAttempts {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        match file.unwrap_master(password) {
            Ok(master) => {
                self.failed_opens.clear(&());
                Ok(master)
            }
            Err(KeystoreError::WrongPassword) => {
                self.failed_opens.record_failure((), Instant::now());
                tracing::warn!(path = %self.path.display(), "keystore open failed: wrong password");
                Err(KeystoreError::WrongPassword)
            }
            Err(e) => Err(e),
        }
    }

    /// A private copy of the in-memory file, to change and then [`Self::store`].
    fn parse_current(&self) -> Result<KeystoreFile, KeystoreError> {
        let file = self.file.as_ref().ok_or(KeystoreError::NotInitialized)?;
        KeystoreFile::parse(&file.to_bytes())
    }

    fn store(&mut self, file: KeystoreFile) -> Result<(), KeystoreError> {
        durable::write_atomic(&self.path, &file.to_bytes(), 0o600)
            .map_err(io_error("write", &self.path))?;
        self.file = Some(file);
        Ok(())
    }

    fn closed_error(&self) -> KeystoreError {
        match self.file {
            None => KeystoreError::NotInitialized,
            Some(_) => KeystoreError::Sealed,
        }
    }
}

fn check_strength(password: &Password) -> Result<(), KeystoreError> {
    if password.as_str().chars().count() < MIN_PASSWORD_LEN {
        return Err(KeystoreError::WeakPassword);
    }
    Ok(())
}

fn io_error(action: &'static str, path: &Path) -> impl Fn(std::io::Error) -> KeystoreError + use<> {
    let path = path.to_owned();
    move |source| KeystoreError::Io {
        action,
        path: path.clone(),
        source,
    }
}

/// The keystore as the credentials library's secret store: private keys and the
/// private CA key live here, encrypted under the master key. While the keystore is
/// sealed every call fails with [`SecretStoreError::Sealed`].
impl SecretStore for std::sync::Mutex<Keystore> {
    fn put(&self, name: &str, secret: &Secret) -> Result<(), SecretStoreError> {
        let mut ks = self.lock().unwrap_or_else(|e| e.into_inner());
        ks.put_secret(name, &SecretBytes::new(secret.expose().to_vec()))
            .map_err(secret_store_error)
    }

    fn get(&self, name: &str) -> Result<Secret, SecretStoreError> {
        let ks = self.lock().unwrap_or_else(|e| e.into_inner());
        ks.secret(name)
            .map(|s| Secret::from_slice(s.expose()))
            .map_err(secret_store_error)
    }

    fn remove(&self, name: &str) -> Result<(), SecretStoreError> {
        let mut ks = self.lock().unwrap_or_else(|e| e.into_inner());
        match ks.remove_secret(name) {
            Ok(()) | Err(KeystoreError::NoSuchSecret(_)) => Ok(()),
            Err(e) => Err(secret_store_error(e)),
        }
    }
}

fn secret_store_error(e: KeystoreError) -> SecretStoreError {
    match e {
        KeystoreError::Sealed => SecretStoreError::Sealed,
        KeystoreError::NoSuchSecret(name) => SecretStoreError::NotFound { name },
        other => SecretStoreError::Storage(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so tests stay fast; production uses the default.
    const TEST_KDF: KdfParams = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    fn fresh() -> (tempfile::TempDir, Keystore) {
        let dir = tempfile::tempdir().unwrap();
        let ks = Keystore::load(dir.path().join("keystore"), TEST_KDF).unwrap();
        (dir, ks)
    }

    #[test]
    fn lifecycle_uninitialized_open_sealed() {
        let (_dir, mut ks) = fresh();
        assert_eq!(ks.state(), KeystoreState::Uninitialized);
        assert!(matches!(
            ks.open(&Password::new("whatever1")),
            Err(KeystoreError::NotInitialized)
        ));
        ks.initialize(&Password::new("first-password")).unwrap();
        assert_eq!(ks.state(), KeystoreState::Open);
        ks.put_secret("ca-key", &SecretBytes::new(b"private".to_vec()))
            .unwrap();
        ks.seal();
        assert_eq!(ks.state(), KeystoreState::Sealed);
        assert!(matches!(ks.secret("ca-key"), Err(KeystoreError::Sealed)));
        assert!(matches!(
            ks.open(&Password::new("wrong-password")),
            Err(KeystoreError::WrongPassword)
        ));
        ks.open(&Password::new("first-password")).unwrap();
        assert_eq!(ks.secret("ca-key").unwrap().expose(), b"private");
    }

    #[test]
    fn reload_is_sealed_and_keeps_secrets() {
        let (dir, mut ks) = fresh();
        ks.initialize(&Password::new("first-password")).unwrap();
        ks.put_secret("history-key", &SecretBytes::random(32))
            .unwrap();
        let before = ks.secret("history-key").unwrap();
        let mut again = Keystore::load(dir.path().join("keystore"), TEST_KDF).unwrap();
        assert_eq!(again.state(), KeystoreState::Sealed);
        again.open(&Password::new("first-password")).unwrap();
        assert_eq!(again.secret("history-key").unwrap(), before);
    }

    #[test]
    fn change_password_keeps_secrets_and_drops_old_password() {
        let (dir, mut ks) = fresh();
        ks.initialize(&Password::new("first-password")).unwrap();
        ks.put_secret("key", &SecretBytes::new(vec![7; 32]))
            .unwrap();
        assert!(matches!(
            ks.change_password(&Password::new("first-password"), &Password::new("short")),
            Err(KeystoreError::WeakPassword)
        ));
        ks.change_password(
            &Password::new("first-password"),
            &Password::new("second-password"),
        )
        .unwrap();
        let mut again = Keystore::load(dir.path().join("keystore"), TEST_KDF).unwrap();
        assert!(matches!(
            again.open(&Password::new("first-password")),
            Err(KeystoreError::WrongPassword)
        ));
        again.open(&Password::new("second-password")).unwrap();
        assert_eq!(again.secret("key").unwrap().expose(), &[7; 32]);
    }

    #[test]
    fn reset_destroys_every_secret() {
        let (dir, mut ks) = fresh();
        ks.initialize(&Password::new("first-password")).unwrap();
        ks.put_secret("a", &SecretBytes::new(vec![1])).unwrap();
        ks.put_secret("b", &SecretBytes::new(vec![2])).unwrap();
        ks.seal();
        let destroyed = ks.reset(&Password::new("after-reset")).unwrap();
        assert_eq!(destroyed, ["a", "b"]);
        assert!(ks.secret_names().is_empty());
        let raw = std::fs::read_to_string(dir.path().join("keystore")).unwrap();
        assert!(!raw.contains("\"a\"") && !raw.contains("\"b\""));
        let mut again = Keystore::load(dir.path().join("keystore"), TEST_KDF).unwrap();
        assert!(matches!(
            again.open(&Password::new("first-password")),
            Err(KeystoreError::WrongPassword)
        ));
        again.open(&Password::new("after-reset")).unwrap();
        assert!(matches!(
            again.secret("a"),
            Err(KeystoreError::NoSuchSecret(_))
        ));
    }

    #[test]
    fn failed_opens_are_rate_limited() {
        let (_dir, mut ks) = fresh();
        ks.initialize(&Password::new("first-password")).unwrap();
        ks.seal();
        for _ in 0..MAX_FAILED_OPENS {
            assert!(matches!(
                ks.open(&Password::new("wrong-password")),
                Err(KeystoreError::WrongPassword)
            ));
        }
        // Even the right password is refused until the window passes.
        let refused = ks.open(&Password::new("first-password"));
        assert!(
            matches!(refused, Err(KeystoreError::TooManyAttempts { .. })),
            "{refused:?}"
        );
        assert_eq!(ks.state(), KeystoreState::Sealed);
    }

    #[test]
    fn tampered_file_is_reported_not_accepted() {
        let (dir, mut ks) = fresh();
        ks.initialize(&Password::new("first-password")).unwrap();
        ks.put_secret("a", &SecretBytes::new(vec![1; 16])).unwrap();
        let path = dir.path().join("keystore");
        let raw = std::fs::read_to_string(&path).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let ct = json["secrets"]["a"]["ciphertext"]
            .as_str()
            .unwrap()
            .to_owned();
        let flipped = format!(
            "{}{}",
            if ct.starts_with('0') { "1" } else { "0" },
            &ct[1..]
        );
        json["secrets"]["a"]["ciphertext"] = serde_json::Value::String(flipped);
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let mut again = Keystore::load(&path, TEST_KDF).unwrap();
        again.open(&Password::new("first-password")).unwrap();
        assert!(matches!(again.secret("a"), Err(KeystoreError::Corrupt(_))));
    }
}
