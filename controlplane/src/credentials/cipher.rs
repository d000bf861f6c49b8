//! Cipher specifications: OpenSSL-style names mapped onto the suites rustls offers.
//!
//! The signaling tunnel is QUIC, which runs TLS 1.3 only. A TLS 1.2 name such as
//! `ECDHE-ECDSA-AES256-GCM-SHA384` therefore selects the TLS 1.3 suite with the same
//! AEAD and hash (`TLS_AES_256_GCM_SHA384`); key exchange is always ephemeral and the
//! authentication algorithm follows the certificate.

use std::fmt;
use std::str::FromStr;

use rustls::SupportedCipherSuite;
use rustls::crypto::aws_lc_rs::cipher_suite;

use super::CredentialError;

/// The TLS 1.3 suites the signaling tunnel may use, in preference order.
#[derive(Clone, PartialEq, Eq)]
pub struct CipherSpec {
    suites: Vec<Suite>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suite {
    Aes256Gcm,
    Aes128Gcm,
    Chacha20,
}

impl Suite {
    const ALL: [Suite; 3] = [Suite::Aes256Gcm, Suite::Aes128Gcm, Suite::Chacha20];

    fn rustls(self) -> SupportedCipherSuite {
        match self {
            Suite::Aes256Gcm => cipher_suite::TLS13_AES_256_GCM_SHA384,
            Suite::Aes128Gcm => cipher_suite::TLS13_AES_128_GCM_SHA256,
            Suite::Chacha20 => cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Suite::Aes256Gcm => "TLS_AES_256_GCM_SHA384",
            Suite::Aes128Gcm => "TLS_AES_128_GCM_SHA256",
            Suite::Chacha20 => "TLS_CHACHA20_POLY1305_SHA256",
        }
    }
}

impl Default for CipherSpec {
    /// All three TLS 1.3 suites, AES-256-GCM first.
    fn default() -> Self {
        Self {
            suites: Suite::ALL.to_vec(),
        }
    }
}

impl CipherSpec {
    /// The rustls suites, in preference order.
    pub fn rustls_suites(&self) -> Vec<SupportedCipherSuite> {
        self.suites.iter().map(|s| s.rustls()).collect()
    }

    /// IANA names of the selected suites.
    pub fn names(&self) -> Vec<&'static str> {
        self.suites.iter().map(|s| s.name()).collect()
    }
}

impl fmt::Debug for CipherSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl fmt::Display for CipherSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(":"))
    }
}

impl FromStr for CipherSpec {
    type Err = CredentialError;

    /// Parses a colon-, comma- or space-separated list. Accepted: IANA TLS 1.3 names,
    /// OpenSSL TLS 1.2 ECDHE AEAD names, their IANA forms, the keywords `DEFAULT`,
    /// `ALL`, `HIGH`, `TLSv1.3`, and exclusions (`!x`, `-x`). Anything else is an error
    /// that names every entry that cannot be honoured.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut chosen: Vec<Suite> = Vec::new();
        let mut excluded: Vec<Suite> = Vec::new();
        let mut unsupported = Vec::new();
        for raw in spec
            .split([':', ',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if let Some(name) = raw.strip_prefix('!').or_else(|| raw.strip_prefix('-')) {
                // Excluding something never offered (aNULL, MD5, RC4...) is a no-op.
                if let Some(s) = suites_for(name) {
                    excluded.extend(s);
                }
                continue;
            }
            let name = raw.strip_prefix('+').unwrap_or(raw);
            match suites_for(name) {
                Some(s) => {
                    for suite in s {
                        if !chosen.contains(&suite) {
                            chosen.push(suite);
                        }
                    }
                }
                None => unsupported.push(raw.to_owned()),
            }
        }
        if !unsupported.is_empty() {
            return Err(CredentialError::UnsupportedCiphers {
                names: unsupported,
                supported: supported_names(),
            });
        }
        chosen.retain(|s| !excluded.contains(s));
        if chosen.is_empty() {
            return Err(CredentialError::UnsupportedCiphers {
                names: vec![spec.to_owned()],
                supported: supported_names(),
            });
        }
        Ok(Self { suites: chosen })
    }
}

fn supported_names() -> String {
    "TLS_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256, TLS_CHACHA20_POLY1305_SHA256, \
     ECDHE-{ECDSA,RSA}-AES{128-GCM-SHA256,256-GCM-SHA384}, ECDHE-{ECDSA,RSA}-CHACHA20-POLY1305, \
     DEFAULT, HIGH, ALL"
        .to_owned()
}

fn suites_for(name: &str) -> Option<Vec<Suite>> {
    let upper = name.to_ascii_uppercase().replace('_', "-");
    let one = |s| Some(vec![s]);
    match upper.as_str() {
        "DEFAULT" | "ALL" | "HIGH" | "TLSV1.3" | "TLSV1.2" | "ECDHE" | "EECDH" | "AESGCM"
        | "AEAD" => Some(Suite::ALL.to_vec()),
        "AES256" => one(Suite::Aes256Gcm),
        "AES128" => one(Suite::Aes128Gcm),
        "CHACHA20" => one(Suite::Chacha20),
        "TLS-AES-256-GCM-SHA384"
        | "TLS13-AES-256-GCM-SHA384"
        | "ECDHE-ECDSA-AES256-GCM-SHA384"
        | "ECDHE-RSA-AES256-GCM-SHA384"
        | "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384"
        | "TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384" => one(Suite::Aes256Gcm),
        "TLS-AES-128-GCM-SHA256"
        | "TLS13-AES-128-GCM-SHA256"
        | "ECDHE-ECDSA-AES128-GCM-SHA256"
        | "ECDHE-RSA-AES128-GCM-SHA256"
        | "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"
        | "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" => one(Suite::Aes128Gcm),
        "TLS-CHACHA20-POLY1305-SHA256"
        | "TLS13-CHACHA20-POLY1305-SHA256"
        | "ECDHE-ECDSA-CHACHA20-POLY1305"
        | "ECDHE-RSA-CHACHA20-POLY1305"
        | "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256"
        | "TLS-ECDHE-RSA-WITH-CHACHA20-POLY1305-SHA256" => one(Suite::Chacha20),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_and_iana_names_map() {
        let spec: CipherSpec = "ECDHE-ECDSA-AES256-GCM-SHA384:TLS_CHACHA20_POLY1305_SHA256"
            .parse()
            .unwrap();
        assert_eq!(
            spec.names(),
            ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
        );
        let spec: CipherSpec = "TLS_AES_128_GCM_SHA256".parse().unwrap();
        assert_eq!(spec.rustls_suites().len(), 1);
    }

    #[test]
    fn keywords_and_exclusions() {
        let spec: CipherSpec = "HIGH:!aNULL:!MD5:!CHACHA20".parse().unwrap();
        assert_eq!(
            spec.names(),
            ["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"]
        );
    }

    #[test]
    fn unsupported_names_are_listed() {
        let err =
            "AES128-SHA:ECDHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-SHA256:TLS_AES_128_CCM_SHA256"
                .parse::<CipherSpec>()
                .unwrap_err();
        let msg = err.to_string();
        for name in [
            "AES128-SHA",
            "DHE-RSA-AES256-SHA256",
            "TLS_AES_128_CCM_SHA256",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
        assert!(!msg.contains("ECDHE-RSA-AES256-GCM-SHA384 "), "{msg}");
    }

    #[test]
    fn excluding_everything_is_an_error() {
        assert!(
            "TLS_AES_128_GCM_SHA256:!AES128"
                .parse::<CipherSpec>()
                .is_err()
        );
    }
}
