//! `shuntctl` drives two running `shunt-control` daemons to a secure peer
//! relationship with the appliance-generated credentials: licence, keystore,
//! private CA, `peering connect` (remote admin password on stdin, as the
//! no-echo prompt would read it), partners, enable, then `partners list`
//! shows `secure` and `Connected Available`. Also own credentials imported
//! from openssl files, the renewal and the exit codes of refusals.
//! DESIGN.md section 2: rules 10, 11 and 12 through the CLI.

mod common;
#[path = "control_common/mod.rs"]
mod daemon;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use daemon::{ADMIN_PASSWORD, Daemon, Flags};
use shunt_control::licence::{LicenceSigner, LicenceTerms, SECURE_PEERING};

fn shuntctl(d: &Daemon, tokens: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuntctl"))
        .args(["--server", &d.address, "--fingerprint", &d.fingerprint])
        .arg("--token-file")
        .arg(tokens)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "shuntctl failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

struct Site {
    daemon: Daemon,
    tokens: std::path::PathBuf,
}

impl Site {
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        shuntctl(&self.daemon, &self.tokens, args, stdin)
    }
    fn json(&self, args: &[&str], stdin: &str) -> serde_json::Value {
        let mut all = vec!["--json", "--password-stdin"];
        all.extend_from_slice(args);
        json(&self.run(&all, stdin))
    }
}

fn site(dir: &Path, name: &str, key_hex: &str) -> Site {
    let flags = Flags(
        [
            "--name",
            name,
            "--licence-verifying-key",
            key_hex,
            "--peering-keepalive-ms",
            "200",
            "--peering-idle-timeout-ms",
            "2000",
            "--peering-backoff-max-ms",
            "300",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    let daemon = Daemon::start(&dir.join(name), &flags);
    let s = Site {
        daemon,
        tokens: dir.join(format!("{name}-token.json")),
    };
    ok(&s.run(
        &["--password-stdin", "login"],
        &format!("{ADMIN_PASSWORD}\n"),
    ));
    s
}

fn wait_secure(s: &Site, partner: &str) {
    let start = Instant::now();
    loop {
        let list = s.json(&["partners", "list"], "");
        let p = list
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == partner)
            .unwrap()
            .clone();
        if p["secure"] == true && p["connection_status"] == "Connected Available" {
            // The table shows the same.
            let table = ok(&s.run(&["partners", "list"], ""));
            assert!(table.contains("Connected Available"), "{table}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{partner} not secure: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn private_ca_enrollment_through_shuntctl() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = LicenceSigner::generate().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let licence = dir.path().join("licence.json");
    std::fs::write(
        &licence,
        signer
            .sign(&LicenceTerms {
                licence_id: "CLI-1".into(),
                customer: "Example Ltd".into(),
                features: vec![SECURE_PEERING.into()],
                not_before: now - 60,
                not_after: now + 86_400,
            })
            .unwrap(),
    )
    .unwrap();
    let key_hex = hex::encode(signer.public_key());
    let a = site(dir.path(), "site-a", &key_hex);
    let b = site(dir.path(), "site-b", &key_hex);

    // Without a licence, enabling fails with exit code 6 and the reason.
    let refused = a.run(&["peering", "enable"], "");
    assert_eq!(refused.status.code(), Some(6));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no licence"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    for s in [&a, &b] {
        s.json(&["keystore", "init"], "keystore-pw-1\n");
        let l = s.json(&["licence", "install", licence.to_str().unwrap()], "");
        assert_eq!(l["valid"], true, "{l}");
        assert_eq!(l["holder"], "Example Ltd");
        let table = ok(&s.run(&["licence", "show"], ""));
        assert!(table.contains("valid"), "{table}");
    }

    // Connecting before a CA exists: refused (6).
    let early = a.run(
        &[
            "--password-stdin",
            "peering",
            "connect",
            "site-b",
            "--address",
            &b.daemon.address,
            "--remote-fingerprint",
            &b.daemon.fingerprint,
        ],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(early.status.code(), Some(6));

    let ca = a.json(&["peering", "create-ca", "--days", "3650"], "");
    assert_eq!(ca["private_ca"], true, "{ca}");
    assert_eq!(ca["credentials_installed"], true);
    let peers = a.json(
        &[
            "peering",
            "connect",
            "site-b",
            "--address",
            &b.daemon.address,
            "--remote-fingerprint",
            &b.daemon.fingerprint,
            "--days",
            "30",
        ],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert_eq!(peers[0]["name"], "site-b", "{peers}");
    let first_expiry = peers[0]["expires_at_unix"].as_u64().unwrap();
    let b_peering = b.json(&["peering", "show"], "");
    assert_eq!(b_peering["credentials_installed"], true, "{b_peering}");
    assert_eq!(b_peering["mode"], "private-ca");

    a.json(
        &["partners", "add", "site-b", "--address", &b.daemon.tunnel],
        "",
    );
    b.json(
        &["partners", "add", "site-a", "--address", &a.daemon.tunnel],
        "",
    );
    a.json(&["peering", "enable"], "");
    b.json(&["peering", "enable"], "");
    wait_secure(&a, "site-b");
    wait_secure(&b, "site-a");

    // Renewal issues a later expiry; the peers table lists it.
    let renewed = a.json(
        &[
            "peering",
            "renew",
            "site-b",
            "--remote-fingerprint",
            &b.daemon.fingerprint,
            "--days",
            "90",
        ],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert!(renewed[0]["expires_at_unix"].as_u64().unwrap() > first_expiry + 59 * 86_400);
    let table = ok(&a.run(&["peering", "peers"], ""));
    assert!(table.contains("site-b"), "{table}");
    let missing = a.run(
        &[
            "--password-stdin",
            "peering",
            "renew",
            "nobody",
            "--remote-fingerprint",
            &b.daemon.fingerprint,
        ],
        "x\n",
    );
    assert_eq!(missing.status.code(), Some(7));
    wait_secure(&a, "site-b");

    a.run(&["peering", "remove-peer", "site-b"], "");
    let peers = a.json(&["peering", "peers"], "");
    assert_eq!(peers.as_array().unwrap().len(), 0, "{peers}");
}

#[test]
fn own_credentials_import_through_shuntctl() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    common::root_ca(&certs, "ca");
    common::leaf(&certs, "site-a", "site-a", "ca", common::Alg::Rsa, 30);
    common::openssl(
        &certs,
        &[
            "pkcs12",
            "-export",
            "-in",
            "site-a.pem",
            "-inkey",
            "site-a.key",
            "-out",
            "site-a.p12",
            "-passout",
            "pass:p12-pw",
        ],
    );
    common::openssl(
        &certs,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "site-a.key",
            "-out",
            "site-a-enc.key",
            "-passout",
            "pass:key-pw",
        ],
    );
    let a = site(dir.path(), "site-a", &"00".repeat(32));
    let path = |n: &str| certs.join(n).to_str().unwrap().to_owned();

    // Sealed (uninitialized) keystore: refused with 6 and the reason.
    let sealed = a.run(
        &[
            "peering",
            "import-pem",
            "--cert",
            &path("site-a-chain.pem"),
            "--key",
            &path("site-a.key"),
        ],
        "",
    );
    assert_eq!(sealed.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&sealed.stderr).contains("keystore"));
    a.json(&["keystore", "init"], "keystore-pw-1\n");

    // Encrypted PEM key: a wrong password is 9, the right one imports.
    let wrong = a.run(
        &[
            "--password-stdin",
            "peering",
            "import-pem",
            "--cert",
            &path("site-a-chain.pem"),
            "--key",
            &path("site-a-enc.key"),
            "--encrypted-key",
        ],
        "bad\n",
    );
    assert_eq!(wrong.status.code(), Some(9));
    let st = a.json(
        &[
            "peering",
            "import-pem",
            "--cert",
            &path("site-a-chain.pem"),
            "--key",
            &path("site-a-enc.key"),
            "--encrypted-key",
        ],
        "key-pw\n",
    );
    assert_eq!(st["credentials_installed"], true);
    assert_eq!(st["mode"], "own");
    let st = a.json(
        &["peering", "import-pkcs12", &path("site-a.p12")],
        "p12-pw\n",
    );
    assert_eq!(st["credentials_installed"], true);
    let st = a.json(&["peering", "import-ca", "partners", &path("ca.pem")], "");
    assert_eq!(st["ca_stores"][0], "partners");
    let st = a.json(&["peering", "verification", "chain-only"], "");
    assert_eq!(st["verification"], "chain-only");
    let bad = a.run(&["peering", "ciphers", "RC4-MD5"], "");
    assert_eq!(bad.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RC4-MD5"));
}
