//! Secret bytes that wipe themselves, and the `SecretStore` the keystore implements.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes (a private key, a password): zeroized on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps bytes; the caller's buffer is moved, not copied.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copies a slice into a new secret.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The secret bytes. Callers must not log or persist them outside a `SecretStore`.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no bytes are held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::from_slice(s.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

/// Why a `SecretStore` could not serve a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretStoreError {
    /// The keystore is sealed; open it with the keystore password first.
    #[error("the keystore is sealed: open it with the keystore password first")]
    Sealed,
    /// No secret with that name exists.
    #[error("no secret named {name:?} in the keystore")]
    NotFound {
        /// The requested name.
        name: String,
    },
    /// The storage behind the store failed.
    #[error("keystore storage failed: {0}")]
    Storage(String),
}

/// A named-secret store. The appliance keystore (encrypted under its master key)
/// implements it; [`MemorySecretStore`] serves tests.
pub trait SecretStore: Send + Sync {
    /// Stores (or replaces) the secret under `name`.
    fn put(&self, name: &str, secret: &Secret) -> Result<(), SecretStoreError>;
    /// Returns a copy of the secret stored under `name`.
    fn get(&self, name: &str) -> Result<Secret, SecretStoreError>;
    /// Deletes the secret under `name`; deleting a missing name is not an error.
    fn remove(&self, name: &str) -> Result<(), SecretStoreError>;
}

/// An in-memory `SecretStore` for tests and tools; can be sealed to exercise that path.
#[derive(Default)]
pub struct MemorySecretStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    sealed: bool,
    secrets: HashMap<String, Secret>,
}

impl MemorySecretStore {
    /// An empty, open store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Seals (true) or opens (false) the store; while sealed every call fails with `Sealed`.
    pub fn set_sealed(&self, sealed: bool) {
        self.lock().sealed = sealed;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SecretStore for MemorySecretStore {
    fn put(&self, name: &str, secret: &Secret) -> Result<(), SecretStoreError> {
        let mut inner = self.lock();
        if inner.sealed {
            return Err(SecretStoreError::Sealed);
        }
        inner.secrets.insert(name.to_owned(), secret.clone());
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Secret, SecretStoreError> {
        let inner = self.lock();
        if inner.sealed {
            return Err(SecretStoreError::Sealed);
        }
        inner
            .secrets
            .get(name)
            .cloned()
            .ok_or_else(|| SecretStoreError::NotFound {
                name: name.to_owned(),
            })
    }

    fn remove(&self, name: &str) -> Result<(), SecretStoreError> {
        let mut inner = self.lock();
        if inner.sealed {
            return Err(SecretStoreError::Sealed);
        }
        inner.secrets.remove(name);
        Ok(())
    }
}

impl fmt::Debug for MemorySecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemorySecretStore")
            .field("sealed", &inner.sealed)
            .field("secrets", &inner.secrets.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_bytes() {
        let s = Secret::from_slice(b"hunter2-key-material");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("20 bytes"));
    }

    #[test]
    fn sealed_store_refuses() {
        let store = MemorySecretStore::new();
        store.put("k", &Secret::from("v")).unwrap();
        store.set_sealed(true);
        assert!(matches!(store.get("k"), Err(SecretStoreError::Sealed)));
        store.set_sealed(false);
        assert_eq!(store.get("k").unwrap().expose(), b"v");
        assert!(matches!(
            store.get("x"),
            Err(SecretStoreError::NotFound { .. })
        ));
    }
}
