//! Decryption of legacy OpenSSL-encrypted PEM keys (`Proc-Type: 4,ENCRYPTED`,
//! `DEK-Info: AES-256-CBC,<iv>`), as `openssl rsa -aes256 -traditional` writes them.

use cbc::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use md5::{Digest, Md5};
use zeroize::Zeroizing;

use super::CredentialError;
use super::secret::Secret;

/// Decrypts `body` as described by the `DEK-Info` header value.
pub(crate) fn decrypt(
    dek_info: &str,
    body: &[u8],
    password: &Secret,
) -> Result<Secret, CredentialError> {
    let (cipher, iv_hex) = dek_info
        .split_once(',')
        .ok_or_else(|| CredentialError::BadPem(format!("malformed DEK-Info {dek_info:?}")))?;
    let iv = hex::decode(iv_hex.trim())
        .map_err(|_| CredentialError::BadPem(format!("malformed DEK-Info IV {iv_hex:?}")))?;
    let cipher = cipher.trim().to_ascii_uppercase();
    let key_len = match cipher.as_str() {
        "AES-128-CBC" => 16,
        "AES-192-CBC" => 24,
        "AES-256-CBC" => 32,
        "DES-EDE3-CBC" => 24,
        other => {
            return Err(CredentialError::UnsupportedEncryption(format!(
                "legacy PEM cipher {other}; convert the key with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc -in key.pem -out key-pkcs8.pem`"
            )));
        }
    };
    if iv.len() < 8 {
        return Err(CredentialError::BadPem("DEK-Info IV is too short".into()));
    }
    let key = bytes_to_key(password.expose(), &iv[..8], key_len);
    let mut buf = Zeroizing::new(body.to_vec());
    let plain_len = match cipher.as_str() {
        "AES-128-CBC" => run::<cbc::Decryptor<aes::Aes128>>(&key, &iv, &mut buf),
        "AES-192-CBC" => run::<cbc::Decryptor<aes::Aes192>>(&key, &iv, &mut buf),
        "AES-256-CBC" => run::<cbc::Decryptor<aes::Aes256>>(&key, &iv, &mut buf),
        _ => run::<cbc::Decryptor<des::TdesEde3>>(&key, &iv, &mut buf),
    }?;
    Ok(Secret::from_slice(&buf[..plain_len]))
}

fn run<D: KeyIvInit + BlockDecryptMut>(
    key: &[u8],
    iv: &[u8],
    buf: &mut [u8],
) -> Result<usize, CredentialError> {
    let dec = D::new_from_slices(key, iv)
        .map_err(|_| CredentialError::BadPem("DEK-Info IV has the wrong length".into()))?;
    dec.decrypt_padded_mut::<Pkcs7>(buf)
        .map(|plain| plain.len())
        .map_err(|_| CredentialError::WrongPassword)
}

/// OpenSSL's `EVP_BytesToKey` with MD5 and one iteration, as legacy PEM uses it.
fn bytes_to_key(password: &[u8], salt: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 16));
    let mut prev: Option<Zeroizing<Vec<u8>>> = None;
    while out.len() < len {
        let mut h = Md5::new();
        if let Some(p) = &prev {
            h.update(p.as_slice());
        }
        h.update(password);
        h.update(salt);
        let d = Zeroizing::new(h.finalize().to_vec());
        out.extend_from_slice(&d);
        prev = Some(d);
    }
    out.truncate(len);
    out
}
