//! Test helper for the crash-safety test: rewrites a keystore in a loop
//! (store a secret, change the password back and forth) until killed.
//!
//! `keystore-churn PATH PASSWORD_A PASSWORD_B KDF_MEMORY_KIB` — the keystore
//! must exist and open with one of the two passwords. Not for production
//! use: the passwords are on the command line.
#![forbid(unsafe_code)]

use std::io::Write as _;

use anyhow::{Context as _, bail};
use shunt_control::keystore::{KdfParams, Keystore, KeystoreError, Password, SecretBytes};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, a, b, memory] = args.as_slice() else {
        bail!("usage: keystore-churn PATH PASSWORD_A PASSWORD_B KDF_MEMORY_KIB");
    };
    let kdf = KdfParams {
        memory_kib: memory.parse().context("KDF_MEMORY_KIB")?,
        iterations: 1,
        parallelism: 1,
    };
    let (mut current, mut next) = (Password::new(a.as_str()), Password::new(b.as_str()));
    for round in 0u64.. {
        let mut keystore = Keystore::load(path, kdf)?;
        match keystore.open(&current) {
            Ok(()) => {}
            Err(KeystoreError::WrongPassword) => {
                std::mem::swap(&mut current, &mut next);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        keystore.put_secret("round", &SecretBytes::new(round.to_le_bytes().to_vec()))?;
        keystore.change_password(&current, &next)?;
        std::mem::swap(&mut current, &mut next);
        // Progress for the test, which kills at a random point after it.
        let mut out = std::io::stdout().lock();
        writeln!(out, "changed {round}")?;
        out.flush()?;
    }
    Ok(())
}
