//! The keystore file: Argon2id parameters and salt, the master key wrapped
//! (AES-256-GCM) under the password-derived key, and each named secret
//! sealed (AES-256-GCM) under the master key. JSON with hex fields.

use std::collections::BTreeMap;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KeystoreError, Password, SecretBytes};

/// Length of the master key and of the password-derived wrapping key.
pub const KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;
const FORMAT_VERSION: u32 = 1;
const MASTER_AAD: &[u8] = b"shunt keystore v1 master key";

/// Argon2id cost parameters; stored in the file so opening uses the
/// parameters the password was wrapped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: ~0.1-0.3 s on an appliance CPU.
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct KeystoreFile {
    pub version: u32,
    pub kdf: KdfParams,
    salt: String,
    master: Sealed,
    pub secrets: BTreeMap<String, Sealed>,
}

/// A nonce and an AES-256-GCM ciphertext with its tag, hex-encoded.
#[derive(Clone, Serialize, Deserialize)]
pub struct Sealed {
    nonce: String,
    ciphertext: String,
}

/// The unwrapped master key, wiped on drop.
pub type MasterKey = Zeroizing<[u8; KEY_LEN]>;

impl KeystoreFile {
    /// A new file holding `master` wrapped under `password`.
    pub fn new(
        password: &Password,
        kdf: KdfParams,
        master: &MasterKey,
    ) -> Result<Self, KeystoreError> {
        let mut file = Self {
            version: FORMAT_VERSION,
            kdf,
            salt: String::new(),
            master: Sealed {
                nonce: String::new(),
                ciphertext: String::new(),
            },
            secrets: BTreeMap::new(),
        };
        file.rewrap(password, kdf, master)?;
        Ok(file)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, KeystoreError> {
        let file: Self = serde_json::from_slice(bytes)
            .map_err(|e| KeystoreError::Corrupt(format!("not a keystore file: {e}")))?;
        if file.version != FORMAT_VERSION {
            return Err(KeystoreError::Corrupt(format!(
                "unknown keystore format version {}",
                file.version
            )));
        }
        Ok(file)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("keystore file serializes")
    }

    /// Wraps `master` under a key derived from `password` with a fresh salt.
    pub fn rewrap(
        &mut self,
        password: &Password,
        kdf: KdfParams,
        master: &MasterKey,
    ) -> Result<(), KeystoreError> {
        let salt = SecretBytes::random(SALT_LEN);
        let wrapping = derive(password, salt.expose(), kdf)?;
        self.master = seal(&wrapping, MASTER_AAD, master.as_slice())?;
        self.salt = hex::encode(salt.expose());
        self.kdf = kdf;
        Ok(())
    }

    /// Unwraps the master key; `WrongPassword` when the tag does not verify.
    pub fn unwrap_master(&self, password: &Password) -> Result<MasterKey, KeystoreError> {
        let salt =
            hex::decode(&self.salt).map_err(|_| KeystoreError::Corrupt("bad salt".into()))?;
        let wrapping = derive(password, &salt, self.kdf)?;
        let plain = open(&wrapping, MASTER_AAD, &self.master).map_err(|e| match e {
            KeystoreError::Corrupt(_) => KeystoreError::WrongPassword,
            other => other,
        })?;
        let mut master = Zeroizing::new([0u8; KEY_LEN]);
        if plain.len() != KEY_LEN {
            return Err(KeystoreError::Corrupt(
                "master key has the wrong length".into(),
            ));
        }
        master.copy_from_slice(plain.expose());
        Ok(master)
    }

    pub fn put_secret(
        &mut self,
        master: &MasterKey,
        name: &str,
        value: &SecretBytes,
    ) -> Result<(), KeystoreError> {
        let sealed = seal(master, secret_aad(name).as_bytes(), value.expose())?;
        self.secrets.insert(name.to_owned(), sealed);
        Ok(())
    }

    pub fn secret(&self, master: &MasterKey, name: &str) -> Result<SecretBytes, KeystoreError> {
        let sealed = self
            .secrets
            .get(name)
            .ok_or_else(|| KeystoreError::NoSuchSecret(name.to_owned()))?;
        open(master, secret_aad(name).as_bytes(), sealed)
    }
}

fn secret_aad(name: &str) -> String {
    format!("shunt keystore v1 secret {name}")
}

fn derive(password: &Password, salt: &[u8], kdf: KdfParams) -> Result<MasterKey, KeystoreError> {
    let params = argon2::Params::new(
        kdf.memory_kib,
        kdf.iterations,
        kdf.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| KeystoreError::Corrupt(format!("invalid Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(password.as_bytes(), salt, key.as_mut_slice())
        .map_err(|e| KeystoreError::Corrupt(format!("key derivation failed: {e}")))?;
    Ok(key)
}

fn cipher(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

fn seal(key: &[u8; KEY_LEN], aad: &[u8], plain: &[u8]) -> Result<Sealed, KeystoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| KeystoreError::Corrupt("random generator failed".into()))?;
    let mut buffer = Zeroizing::new(plain.to_vec());
    cipher(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut *buffer,
        )
        .map_err(|_| KeystoreError::Corrupt("encryption failed".into()))?;
    Ok(Sealed {
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(&*buffer),
    })
}

fn open(key: &[u8; KEY_LEN], aad: &[u8], sealed: &Sealed) -> Result<SecretBytes, KeystoreError> {
    let nonce: [u8; NONCE_LEN] = hex::decode(&sealed.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| KeystoreError::Corrupt("bad nonce".into()))?;
    let mut buffer = Zeroizing::new(
        hex::decode(&sealed.ciphertext)
            .map_err(|_| KeystoreError::Corrupt("bad ciphertext".into()))?,
    );
    let plain_len = cipher(key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buffer,
        )
        .map_err(|_| KeystoreError::Corrupt("authentication failed".into()))?
        .len();
    buffer.truncate(plain_len);
    Ok(SecretBytes::new(std::mem::take(&mut *buffer)))
}
