//! Named stores of CA certificates that peers' certificates are verified against.

use std::collections::BTreeMap;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use super::CredentialError;
use super::import::{CertificateInfo, certificates_from_pem};

/// Named CA certificate stores (for example `partners` or `private-ca`).
#[derive(Clone, Debug, Default)]
pub struct TrustStores {
    stores: BTreeMap<String, Vec<CertificateDer<'static>>>,
}

impl TrustStores {
    /// No stores.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the CA certificates of a PEM text (one or more blocks) to store `name`,
    /// creating it if needed; returns what was added. Duplicates are ignored.
    pub fn import_pem(
        &mut self,
        name: &str,
        pem: &[u8],
    ) -> Result<Vec<CertificateInfo>, CredentialError> {
        let certs = certificates_from_pem(pem)?;
        self.import_der(name, certs)
    }

    /// Adds DER CA certificates to store `name`.
    pub fn import_der(
        &mut self,
        name: &str,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<Vec<CertificateInfo>, CredentialError> {
        let mut infos = Vec::with_capacity(certs.len());
        // Validate everything before touching the store.
        let mut roots = RootCertStore::empty();
        for c in &certs {
            infos.push(CertificateInfo::from_der(c)?);
            roots
                .add(c.clone())
                .map_err(|e| CredentialError::BadCertificate(e.to_string()))?;
        }
        let store = self.stores.entry(name.to_owned()).or_default();
        for c in certs {
            if !store.contains(&c) {
                store.push(c);
            }
        }
        Ok(infos)
    }

    /// Removes store `name`; true when it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        self.stores.remove(name).is_some()
    }

    /// Names of all stores.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stores.keys().map(String::as_str)
    }

    /// The certificates of store `name`.
    pub fn certificates(&self, name: &str) -> Result<&[CertificateDer<'static>], CredentialError> {
        self.stores
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| CredentialError::NoTrustStore(name.to_owned()))
    }

    /// The store as rustls trust anchors.
    pub fn root_store(&self, name: &str) -> Result<RootCertStore, CredentialError> {
        let mut roots = RootCertStore::empty();
        for c in self.certificates(name)? {
            roots
                .add(c.clone())
                .map_err(|e| CredentialError::BadCertificate(e.to_string()))?;
        }
        Ok(roots)
    }
}
