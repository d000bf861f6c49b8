//! Test support: a real `shunt-control` process on loopback with its own
//! state directory, stopped (and reaped) when the guard drops.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shunt_control::client::Client;

pub const ADMIN_PASSWORD: &str = "bootstrap-admin-pw";

/// A running daemon; killed and reaped on drop, panic included.
pub struct Daemon {
    child: Child,
    pub address: String,
    pub fingerprint: String,
    /// The tunnel UDP address (secure-peering signaling).
    pub tunnel: String,
    /// The licence server's address, when started with --serve-licence.
    pub licence_server: Option<String>,
    pub state_dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extra flags for a daemon start.
#[derive(Default, Clone)]
pub struct Flags(pub Vec<String>);

impl Daemon {
    /// Starts on a fresh (or the given) state directory with a bootstrap
    /// password file and cheap keystore KDF parameters.
    pub fn start(state_dir: &Path, flags: &Flags) -> Daemon {
        let bootstrap = state_dir.with_extension("bootstrap");
        std::fs::write(&bootstrap, format!("{ADMIN_PASSWORD}\n")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shunt-control"))
            .arg("--state-dir")
            .arg(state_dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--keystore-kdf-memory-kib",
                "256",
                "--keystore-kdf-iterations",
                "1",
            ])
            .args(if flags.0.iter().any(|f| f == "--tunnel-listen") {
                &[][..]
            } else {
                &["--tunnel-listen", "127.0.0.1:0"][..]
            })
            .arg("--bootstrap-admin-password-file")
            .arg(&bootstrap)
            .args(&flags.0)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("shunt-control starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut address = None;
        let mut fingerprint = None;
        let mut tunnel = None;
        let mut licence_server = None;
        while address.is_none() || fingerprint.is_none() || tunnel.is_none() {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                other => {
                    let _ = child.kill();
                    panic!(
                        "shunt-control exited before listening: {other:?}; status {:?}",
                        child.wait()
                    );
                }
            };
            if let Some(a) = line.strip_prefix("listening ") {
                address = Some(a.to_owned());
            } else if let Some(f) = line.strip_prefix("fingerprint ") {
                fingerprint = Some(f.to_owned());
            } else if let Some(t) = line.strip_prefix("tunnel ") {
                tunnel = Some(t.to_owned());
            } else if let Some(l) = line.strip_prefix("licence-server ") {
                licence_server = Some(l.to_owned());
            }
        }
        Daemon {
            child,
            address: address.unwrap(),
            fingerprint: fingerprint.unwrap(),
            tunnel: tunnel.unwrap(),
            licence_server,
            state_dir: state_dir.to_owned(),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.address, &self.fingerprint)
            .await
            .expect("client connects")
    }

    pub async fn admin(&self) -> Client {
        let mut client = self.client().await;
        client
            .login("admin", ADMIN_PASSWORD)
            .await
            .expect("admin logs in");
        client
    }

    /// Stops the daemon (SIGKILL: the harshest restart) and waits for it.
    pub fn stop(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.state_dir.clone()
    }
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
