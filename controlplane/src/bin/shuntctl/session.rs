//! The token cache: after `shuntctl login` the server address, its
//! fingerprint and the token are kept (mode 0600) so later commands need
//! neither flags nor a password.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct CachedLogin {
    pub server: String,
    pub fingerprint: String,
    pub account: String,
    pub token: String,
    pub expires_at_unix: u64,
}

impl std::fmt::Debug for CachedLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedLogin")
            .field("server", &self.server)
            .field("account", &self.account)
            .field("expires_at_unix", &self.expires_at_unix)
            .finish_non_exhaustive()
    }
}

/// `$SHUNTCTL_TOKEN_FILE`, else `$XDG_CONFIG_HOME/shunt/token.json`, else
/// `~/.config/shunt/token.json`.
pub fn default_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("shunt/token.json");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".config/shunt/token.json")
}

pub fn load(path: &Path) -> Option<CachedLogin> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn store(path: &Path, login: &CachedLogin) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(login)?;
    shunt_control::durable::write_atomic(path, &bytes, 0o600)
        .with_context(|| format!("cannot write the token cache {}", path.display()))
}

pub fn remove(path: &Path) -> anyhow::Result<()> {
    shunt_control::durable::remove_durable(path)
        .with_context(|| format!("cannot remove {}", path.display()))
}
