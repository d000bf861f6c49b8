//! Test helpers: credentials made with the real `openssl` binary, ports, event waits.
#![allow(dead_code)]

pub mod pair;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shunt_control::credentials::{
    CipherSpec, MemorySecretStore, PeeringCredentials, Verification, certificates_from_pem,
    import_pem,
};
use shunt_control::peering::{PartnerStatus, PeeringEvent, SessionKeys};
use tokio::sync::mpsc::UnboundedReceiver;

/// Runs `openssl` in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A root CA (`<name>.pem`, `<name>.key`), ECDSA P-256.
pub fn root_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// An intermediate CA `<name>` signed by `<issuer>`.
pub fn intermediate_ca(dir: &Path, name: &str, issuer: &str) {
    write(
        dir,
        "ca-ext.cnf",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{issuer}.pem"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "30",
            "-extfile",
            "ca-ext.cnf",
        ],
    );
}

/// Key algorithm for leaves.
#[derive(Clone, Copy)]
pub enum Alg {
    Rsa,
    Ec,
}

/// A leaf `<name>` for `dns` (plus 127.0.0.1) signed by `<issuer>`, valid `days` (may be
/// negative for an expired certificate). Writes `<name>.key` and `<name>-chain.pem`
/// (leaf followed by `<issuer>.pem`).
pub fn leaf(dir: &Path, name: &str, dns: &str, issuer: &str, alg: Alg, days: i32) {
    write(
        dir,
        &format!("{name}-ext.cnf"),
        &format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{dns},IP:127.0.0.1\n"
        ),
    );
    let newkey: &[&str] = match alg {
        Alg::Rsa => &["-newkey", "rsa:2048"],
        Alg::Ec => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    };
    let mut args = vec!["req", "-new"];
    args.extend_from_slice(newkey);
    let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
    args.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr]);
    let subj = format!("/CN={dns}");
    args.extend_from_slice(&["-subj", &subj]);
    openssl(dir, &args);
    let days = days.to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{issuer}.pem"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            &days,
            "-extfile",
            &format!("{name}-ext.cnf"),
        ],
    );
    let mut chain = read(dir, &format!("{name}.pem"));
    chain.extend(read(dir, &format!("{issuer}.pem")));
    std::fs::write(dir.join(format!("{name}-chain.pem")), chain).unwrap();
}

/// Imports `<name>-chain.pem`/`<name>.key` into `store` and trusts `trust_pem`.
pub fn credentials(
    dir: &Path,
    name: &str,
    trust_pem: &str,
    store: &MemorySecretStore,
) -> PeeringCredentials {
    let id = import_pem(
        &read(dir, &format!("{name}-chain.pem")),
        &read(dir, &format!("{name}.key")),
        None,
    )
    .expect("import identity");
    PeeringCredentials {
        identity: id.store(store, "identity").unwrap(),
        trust: certificates_from_pem(&read(dir, trust_pem)).unwrap(),
        verification: Verification::Full,
        ciphers: CipherSpec::default(),
    }
}

/// A free loopback UDP port (bound, read, released).
pub fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits (bounded) for a status of `partner` matching `pred`.
pub async fn wait_status(
    rx: &mut UnboundedReceiver<PeeringEvent>,
    partner: &str,
    what: &str,
    pred: impl Fn(&PartnerStatus) -> bool,
) -> PartnerStatus {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ev) = rx.recv().await {
            if let PeeringEvent::Status(s) = ev {
                if s.partner == partner && pred(&s) {
                    return Some(s);
                }
                seen.push(s);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(s)) => s,
        _ => panic!("timed out waiting for {partner}: {what}; saw {seen:#?}"),
    }
}

/// Waits (bounded) for the keys of `epoch`.
pub async fn wait_keys(rx: &mut UnboundedReceiver<PeeringEvent>, epoch: u64) -> SessionKeys {
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ev) = rx.recv().await {
            if let PeeringEvent::Keys(k) = ev
                && k.epoch == epoch
            {
                return Some(k);
            }
        }
        None
    })
    .await;
    found
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no keys for epoch {epoch}"))
}
