//! Secret values: wiped on drop, and their `Debug` never shows a byte.

use std::fmt;

use zeroize::Zeroizing;

/// A password typed by an operator (keystore or account).
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn new(password: impl Into<String>) -> Self {
        Self(Zeroizing::new(password.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Secret bytes held by the keystore (a private key, the history key, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Fresh random bytes from the system's CSPRNG.
    pub fn random(len: usize) -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        aws_lc_rs::rand::fill(&mut bytes).expect("system random generator failed");
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let p = Password::new("correct horse battery");
        assert!(!format!("{p:?}").contains("horse"));
        let s = SecretBytes::new(vec![0x41; 8]);
        let shown = format!("{s:?}");
        assert!(!shown.contains("65") && !shown.contains("AAAA"), "{shown}");
    }
}
