//! Administrator accounts (Argon2id password hashes in the configuration
//! database), login tokens with an expiry, and the bounded rate of failed
//! logins per source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keystore::{Password, SecretBytes};
use crate::ratelimit::FailureLimiter;
use crate::store::{ACCOUNTS, ConfigStore, StoreError};

/// Name of the account the first start creates.
pub const BOOTSTRAP_ACCOUNT: &str = "admin";
/// Shortest account password accepted.
pub const MIN_ACCOUNT_PASSWORD_LEN: usize = 10;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything except keystore administration.
    Admin,
    /// Keystore initialize, open, seal, change password, reset.
    KeystoreAdmin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Argon2id PHC string.
    pub password_hash: String,
    pub roles: Vec<Role>,
}

/// Who a valid token belongs to; the auth layer puts it into each request.
#[derive(Debug, Clone)]
pub struct Session {
    pub account: String,
    pub roles: Vec<Role>,
    pub token_digest: [u8; 32],
}

impl Session {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A fresh login: the token (shown once to the client) and its expiry.
pub struct Login {
    pub token: SecretBytes,
    pub expires_at: SystemTime,
    pub roles: Vec<Role>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("wrong account name or password")]
    BadCredentials,
    #[error("too many failed logins from {source_addr}; try again in {retry_after_secs} s")]
    TooManyAttempts {
        source_addr: String,
        retry_after_secs: u64,
    },
    #[error("no token: log in first (shuntctl login)")]
    MissingToken,
    #[error("token invalid or expired: log in again (shuntctl login)")]
    InvalidToken,
    #[error("account {0:?} already exists")]
    AccountExists(String),
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    #[error("password too short: use at least {MIN_ACCOUNT_PASSWORD_LEN} characters")]
    WeakPassword,
    #[error("the last account holding the {0:?} role cannot be removed")]
    LastHolder(Role),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Limits on logins.
#[derive(Debug, Clone, Copy)]
pub struct AuthSettings {
    pub token_ttl: Duration,
    pub max_failed_logins: u32,
    pub failed_login_window: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(3600),
            max_failed_logins: 5,
            failed_login_window: Duration::from_secs(60),
        }
    }
}

struct Issued {
    account: String,
    roles: Vec<Role>,
    expires: Instant,
}

pub struct Auth {
    store: Arc<ConfigStore>,
    settings: AuthSettings,
    /// Keyed by SHA-256 of the token, so memory never holds a usable token.
    sessions: Mutex<HashMap<[u8; 32], Issued>>,
    failures: Mutex<FailureLimiter<IpAddr>>,
    failed_logins: std::sync::atomic::AtomicU64,
}

impl Auth {
    pub fn new(store: Arc<ConfigStore>, settings: AuthSettings) -> Self {
        Self {
            store,
            settings,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(FailureLimiter::new(
                settings.max_failed_logins,
                settings.failed_login_window,
            )),
            failed_logins: Default::default(),
        }
    }

    /// Creates the first account from the bootstrap password when there is
    /// no account yet. Returns whether it did.
    pub fn bootstrap(&self, password: &Password) -> Result<bool, AuthError> {
        if !self.store.is_empty(ACCOUNTS)? {
            return Ok(false);
        }
        self.create_account(
            BOOTSTRAP_ACCOUNT,
            password,
            &[Role::Admin, Role::KeystoreAdmin],
        )?;
        tracing::info!(account = BOOTSTRAP_ACCOUNT, "bootstrap account created");
        Ok(true)
    }

    pub fn has_accounts(&self) -> Result<bool, AuthError> {
        Ok(!self.store.is_empty(ACCOUNTS)?)
    }

    pub fn login(
        &self,
        account: &str,
        password: &Password,
        source: IpAddr,
    ) -> Result<Login, AuthError> {
        if let Some(wait) = self.failures.lock().unwrap().refused_for(&source) {
            return Err(AuthError::TooManyAttempts {
                source_addr: source.to_string(),
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        let record: Option<AccountRecord> = self.store.get(ACCOUNTS, account)?;
        let verified = match &record {
            Some(r) => verify(&r.password_hash, password),
            None => {
                // Same work as for a real account, so timing does not tell
                // which account names exist.
                let _ = hash(password);
                false
            }
        };
        let Some(record) = record.filter(|_| verified) else {
            self.failures
                .lock()
                .unwrap()
                .record_failure(source, Instant::now());
            self.failed_logins
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(account, %source, "login failed");
            return Err(AuthError::BadCredentials);
        };
        let token = SecretBytes::random(32);
        let token_text = SecretBytes::new(hex::encode(token.expose()).into_bytes());
        let digest = digest(token_text.expose());
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            digest,
            Issued {
                account: account.to_owned(),
                roles: record.roles.clone(),
                expires: now + self.settings.token_ttl,
            },
        );
        tracing::info!(account, %source, "login");
        Ok(Login {
            token: token_text,
            expires_at: SystemTime::now() + self.settings.token_ttl,
            roles: record.roles,
        })
    }

    /// The session a bearer token belongs to, if the token is valid now.
    pub fn session(&self, token: &str) -> Result<Session, AuthError> {
        let digest = digest(token.as_bytes());
        let mut sessions = self.sessions.lock().unwrap();
        match sessions.get(&digest) {
            Some(s) if s.expires > Instant::now() => Ok(Session {
                account: s.account.clone(),
                roles: s.roles.clone(),
                token_digest: digest,
            }),
            Some(_) => {
                sessions.remove(&digest);
                Err(AuthError::InvalidToken)
            }
            None => Err(AuthError::InvalidToken),
        }
    }

    pub fn logout(&self, session: &Session) {
        self.sessions.lock().unwrap().remove(&session.token_digest);
    }

    pub fn change_password(
        &self,
        account: &str,
        current: &Password,
        new: &Password,
    ) -> Result<(), AuthError> {
        let mut record: AccountRecord = self
            .store
            .get(ACCOUNTS, account)?
            .ok_or(AuthError::BadCredentials)?;
        if !verify(&record.password_hash, current) {
            return Err(AuthError::BadCredentials);
        }
        check_strength(new)?;
        record.password_hash = hash(new);
        self.store.put(ACCOUNTS, account, &record)?;
        // Every other session of the account ends with the old password.
        self.sessions
            .lock()
            .unwrap()
            .retain(|_, s| s.account != account);
        tracing::info!(account, "account password changed");
        Ok(())
    }

    pub fn create_account(
        &self,
        name: &str,
        password: &Password,
        roles: &[Role],
    ) -> Result<(), AuthError> {
        check_strength(password)?;
        let record = AccountRecord {
            password_hash: hash(password),
            roles: roles.to_vec(),
        };
        if !self.store.insert_new(ACCOUNTS, name, &record)? {
            return Err(AuthError::AccountExists(name.to_owned()));
        }
        Ok(())
    }

    pub fn remove_account(&self, name: &str) -> Result<(), AuthError> {
        let accounts = self.accounts()?;
        let Some((_, removed)) = accounts.iter().find(|(n, _)| n == name) else {
            return Err(AuthError::NoSuchAccount(name.to_owned()));
        };
        for role in &removed.roles {
            if !accounts
                .iter()
                .any(|(n, r)| n != name && r.roles.contains(role))
            {
                return Err(AuthError::LastHolder(*role));
            }
        }
        self.store.remove(ACCOUNTS, name)?;
        self.sessions
            .lock()
            .unwrap()
            .retain(|_, s| s.account != name);
        Ok(())
    }

    pub fn accounts(&self) -> Result<Vec<(String, AccountRecord)>, AuthError> {
        Ok(self.store.list(ACCOUNTS)?)
    }

    pub fn failed_logins(&self) -> u64 {
        self.failed_logins
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn check_strength(password: &Password) -> Result<(), AuthError> {
    if password.as_str().chars().count() < MIN_ACCOUNT_PASSWORD_LEN {
        return Err(AuthError::WeakPassword);
    }
    Ok(())
}

fn hash(password: &Password) -> String {
    let salt_bytes = SecretBytes::random(16);
    let salt = SaltString::encode_b64(salt_bytes.expose()).expect("16-byte salt encodes");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("Argon2id with default parameters hashes")
        .to_string()
}

fn verify(phc: &str, password: &Password) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(ttl: Duration) -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ConfigStore::open(&dir.path().join("c.redb")).unwrap());
        let settings = AuthSettings {
            token_ttl: ttl,
            max_failed_logins: 3,
            failed_login_window: Duration::from_secs(60),
        };
        (dir, Auth::new(store, settings))
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn bootstrap_then_login_and_token_expiry() {
        let (_dir, auth) = auth(Duration::from_millis(200));
        assert!(auth.bootstrap(&Password::new("bootstrap-pass")).unwrap());
        assert!(
            !auth.bootstrap(&Password::new("other-password")).unwrap(),
            "only once"
        );
        let stored = &auth.accounts().unwrap()[0].1.password_hash;
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        let login = auth
            .login("admin", &Password::new("bootstrap-pass"), LOCAL)
            .unwrap();
        let token = std::str::from_utf8(login.token.expose())
            .unwrap()
            .to_owned();
        let session = auth.session(&token).unwrap();
        assert!(session.has(Role::KeystoreAdmin) && session.has(Role::Admin));
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(auth.session(&token), Err(AuthError::InvalidToken)));
    }

    #[test]
    fn failed_logins_are_limited_per_source() {
        let (_dir, auth) = auth(Duration::from_secs(60));
        auth.bootstrap(&Password::new("bootstrap-pass")).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                auth.login("admin", &Password::new("nope-nope-nope"), LOCAL),
                Err(AuthError::BadCredentials)
            ));
        }
        let refused = auth.login("admin", &Password::new("bootstrap-pass"), LOCAL);
        assert!(matches!(refused, Err(AuthError::TooManyAttempts { .. })));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(
            auth.login("admin", &Password::new("bootstrap-pass"), other)
                .is_ok()
        );
    }

    #[test]
    fn last_keystore_admin_cannot_be_removed() {
        let (_dir, auth) = auth(Duration::from_secs(60));
        auth.bootstrap(&Password::new("bootstrap-pass")).unwrap();
        auth.create_account("ops", &Password::new("ops-password"), &[Role::Admin])
            .unwrap();
        assert!(matches!(
            auth.remove_account("admin"),
            Err(AuthError::LastHolder(Role::KeystoreAdmin))
        ));
        auth.remove_account("ops").unwrap();
    }
}
