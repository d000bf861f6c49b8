//! `shuntctl` against a running `shunt-control`: login with the token
//! cache, tables and `--json`, password prompts fed on stdin, and the exit
//! codes scripts rely on.

#[path = "control_common/mod.rs"]
mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{ADMIN_PASSWORD, Daemon, Flags};

/// Runs shuntctl with `args`, feeding `stdin`, against `daemon`.
fn shuntctl(daemon: &Daemon, token_file: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuntctl"))
        .args([
            "--server",
            &daemon.address,
            "--fingerprint",
            &daemon.fingerprint,
        ])
        .arg("--token-file")
        .arg(token_file)
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

#[test]
fn cli_against_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("state"), &Flags::default());
    let tokens = dir.path().join("token.json");

    // Health needs no login; everything else does (exit code 4).
    let health = json(&shuntctl(&daemon, &tokens, &["--json", "health"], ""));
    assert_eq!(health["serving"], true);
    let refused = shuntctl(&daemon, &tokens, &["status"], "");
    assert_eq!(
        refused.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A wrong password is 4 too; the right one caches a token (mode 0600).
    let wrong = shuntctl(
        &daemon,
        &tokens,
        &["--password-stdin", "login"],
        "wrong-password\n",
    );
    assert_eq!(wrong.status.code(), Some(4));
    let login = ok(&shuntctl(
        &daemon,
        &tokens,
        &["--password-stdin", "login"],
        &format!("{ADMIN_PASSWORD}\n"),
    ));
    assert!(login.contains("logged in"), "{login}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Status as a table and as JSON.
    let status = ok(&shuntctl(&daemon, &tokens, &["status"], ""));
    assert!(
        status.contains("keystore:") && status.contains("uninitialized"),
        "{status}"
    );
    let status = json(&shuntctl(&daemon, &tokens, &["--json", "status"], ""));
    assert_eq!(status["keystore"]["state"], "uninitialized");
    assert_eq!(status["licence"]["valid"], false);

    // Keystore: init and open take passwords from stdin; a wrong open is 5.
    let ks = json(&shuntctl(
        &daemon,
        &tokens,
        &["--json", "--password-stdin", "keystore", "init"],
        "keystore-pw-1\n",
    ));
    assert_eq!(ks["state"], "open");
    ok(&shuntctl(&daemon, &tokens, &["keystore", "seal"], ""));
    let wrong = shuntctl(
        &daemon,
        &tokens,
        &["--password-stdin", "keystore", "open"],
        "wrong-password\n",
    );
    assert_eq!(
        wrong.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let ks = json(&shuntctl(
        &daemon,
        &tokens,
        &["--json", "--password-stdin", "keystore", "open"],
        "keystore-pw-1\n",
    ));
    assert_eq!(ks["state"], "open");
    // Reset without the explicit flag is a usage error (2) and destroys nothing.
    let reset = shuntctl(
        &daemon,
        &tokens,
        &["--password-stdin", "keystore", "reset"],
        "new-keystore-pw\n",
    );
    assert_eq!(reset.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&reset.stderr).contains("--yes-destroy-all-keys"));

    // Partners and rules.
    let added = ok(&shuntctl(
        &daemon,
        &tokens,
        &[
            "partners",
            "add",
            "site-b",
            "--address",
            "192.0.2.2:4500",
            "--prefix",
            "10.2.0.0/16",
        ],
        "",
    ));
    assert!(
        added.contains("PARTNER") && added.contains("site-b") && added.contains("Disconnected"),
        "{added}"
    );
    let dup = shuntctl(
        &daemon,
        &tokens,
        &["partners", "add", "site-b", "--address", "192.0.2.2:4500"],
        "",
    );
    assert_eq!(dup.status.code(), Some(8));
    let list = json(&shuntctl(
        &daemon,
        &tokens,
        &["--json", "partners", "list"],
        "",
    ));
    assert_eq!(list[0]["name"], "site-b");
    assert_eq!(list[0]["secure"], false);
    let watched = json(&shuntctl(
        &daemon,
        &tokens,
        &["--json", "partners", "watch", "--count", "1"],
        "",
    ));
    assert_eq!(watched[0]["prefixes"][0], "10.2.0.0/16");
    ok(&shuntctl(
        &daemon,
        &tokens,
        &[
            "rules",
            "add",
            "web",
            "--destination",
            "10.2.0.0/16",
            "--ports",
            "80-443",
        ],
        "",
    ));
    let rules = json(&shuntctl(
        &daemon,
        &tokens,
        &["--json", "rules", "list"],
        "",
    ));
    assert_eq!(
        (
            rules[0]["port_low"].as_u64(),
            rules[0]["port_high"].as_u64()
        ),
        (Some(80), Some(443))
    );
    let bad = shuntctl(
        &daemon,
        &tokens,
        &["rules", "add", "bad", "--destination", "10.2.0.0"],
        "",
    );
    assert_eq!(bad.status.code(), Some(9));

    // Peering without a licence is refused in this state (6), saying why.
    let enable = shuntctl(&daemon, &tokens, &["peering", "enable"], "");
    assert_eq!(enable.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&enable.stderr).contains("licence"));

    let stats = json(&shuntctl(
        &daemon,
        &tokens,
        &["--json", "stats", "show"],
        "",
    ));
    assert!(stats["management_calls"].as_u64().unwrap() > 5);
    let ds = json(&shuntctl(
        &daemon,
        &tokens,
        &["--json", "datastore", "set", "--encryption", "on"],
        "",
    ));
    assert_eq!(ds["encryption"], true);

    // A wrong fingerprint: the server is not trusted (3).
    let mut other = Command::new(env!("CARGO_BIN_EXE_shuntctl"));
    let untrusted = other
        .args([
            "--server",
            &daemon.address,
            "--fingerprint",
            &"00".repeat(32),
            "health",
        ])
        .output()
        .unwrap();
    assert_eq!(
        untrusted.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );

    // Logout revokes the token and clears the cache.
    ok(&shuntctl(&daemon, &tokens, &["logout"], ""));
    assert!(!tokens.exists());
    assert_eq!(
        shuntctl(&daemon, &tokens, &["status"], "").status.code(),
        Some(4)
    );
}
