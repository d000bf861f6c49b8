//! Two appliances as an operator runs them: per site, `shunt-dataplane` in agent mode
//! and `shunt-control` as separate processes in the site's namespace of a
//! [`Testbed`], brought to secure peering through the management API: bootstrap
//! admin, licence (a test vendor key made here), keystore initialized and opened,
//! a private CA on site A that enrolls site B (`ConnectAppliance`), partners on
//! both, secure peering enabled. Every process is killed when [`TwoSites`] drops
//! (and the namespaces with the testbed).
//!
//! The binaries are looked up next to the running executable (`target/<profile>`);
//! build them first: `cargo build -p shunt-dataplane -p shunt-control`.

use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use shunt_control::client::Client;
use shunt_control::licence::{LicenceSigner, LicenceTerms, SECURE_PEERING};
use shunt_proto::management as m;

use crate::testbed::{Appliance as SiteNet, Testbed};

/// Password of the bootstrap `admin` account on both sites.
pub const ADMIN_PASSWORD: &str = "demo-admin-password";
/// Keystore password on both sites.
pub const KEYSTORE_PASSWORD: &str = "demo-keystore-password";
/// Management API port (on each site's WAN address).
pub const MANAGEMENT_PORT: u16 = 7443;
/// Tunnel (and signaling) UDP port.
pub const TUNNEL_PORT: u16 = 4790;

/// Which site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Site A (the private CA).
    A,
    /// Site B (enrolled by A).
    B,
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    /// What it is, for messages.
    pub what: String,
}

impl Process {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One site's processes and files.
#[derive(Debug)]
pub struct Site {
    /// Its name (`site-a`, `site-b`): partner name and certificate name.
    pub name: String,
    /// The data plane.
    pub dataplane: Process,
    /// The control plane (None while restarted).
    pub control: Option<Process>,
    /// Agent socket.
    pub socket: PathBuf,
    /// State directory of shunt-control.
    pub state_dir: PathBuf,
    /// Management API address (WAN address, port 7443).
    pub management: SocketAddr,
    /// Management certificate fingerprint (`sha256:…`).
    pub fingerprint: String,
    /// Logs of both processes.
    pub log_dir: PathBuf,
}

/// Two sites running, secure.
pub struct TwoSites {
    /// Site A.
    pub a: Site,
    /// Site B.
    pub b: Site,
    /// The testbed (dropped last).
    pub tb: Testbed,
    verifying_key: String,
    licence: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// Where `name` was built: next to this executable, or one folder up (test
/// binaries live in `deps/`), or `$SHUNT_BIN_DIR`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("SHUNT_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    if let Some(d) = exe.parent() {
        dirs.push(d.to_owned());
        if let Some(up) = d.parent() {
            dirs.push(up.to_owned());
        }
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} not found next to {}; build it first: cargo build -p shunt-dataplane -p shunt-control (add --release for the release demo)",
                exe.display()
            )
        })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Polls `check` every 100 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > limit {
            match last_error {
                Some(e) => bail!("timed out after {limit:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {limit:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl TwoSites {
    /// Starts both sites' processes and brings them to secure peering.
    /// `progress` is told each step.
    /// `history_mib`: compression history per lane and direction (the repeat of a
    /// file is reduced only if the file fits).
    pub fn start(tb: Testbed, history_mib: usize, progress: &dyn Fn(&str)) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("shunt-two-sites-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let (signer, _) = LicenceSigner::generate().context("cannot make a test licence key")?;
        let now = unix_now();
        let licence = signer
            .sign(&LicenceTerms {
                licence_id: "DEMO-1".into(),
                customer: "Shunt demo (test key)".into(),
                features: vec![SECURE_PEERING.into()],
                not_before: now - 60,
                not_after: now + 86_400,
            })
            .context("cannot sign the test licence")?;
        let verifying_key = hex::encode(signer.public_key());

        progress("starting shunt-dataplane (agent mode) on both sites");
        let a = start_dataplane(&tb.site_a, "site-a", dir.path(), history_mib)?;
        let b = start_dataplane(&tb.site_b, "site-b", dir.path(), history_mib)?;
        let mut sites = TwoSites {
            a,
            b,
            tb,
            verifying_key,
            licence,
            _dir: dir,
        };
        progress("starting shunt-control on both sites (admin bootstrap from a password file)");
        for which in [Which::A, Which::B] {
            sites.start_control(which, true)?;
        }

        progress("installing the licence and initializing the keystores");
        for which in [Which::A, Which::B] {
            let licence = sites.licence.clone();
            sites.api(which, async move |c| {
                let st = c
                    .licensing()
                    .install_licence(m::InstallLicenceRequest { licence })
                    .await?
                    .into_inner();
                anyhow::ensure!(st.valid, "licence refused: {st:?}");
                c.keystore()
                    .initialize(m::InitializeKeystoreRequest {
                        password: KEYSTORE_PASSWORD.into(),
                    })
                    .await?;
                Ok(())
            })?;
        }

        progress("site A: creating the private CA and enrolling site B (ConnectAppliance)");
        let (b_mgmt, b_fp) = (sites.b.management.to_string(), sites.b.fingerprint.clone());
        sites.api(Which::A, async move |c| {
            c.peering()
                .create_private_ca(m::CreatePrivateCaRequest {
                    common_name: "Shunt demo private CA".into(),
                    validity_days: 30,
                })
                .await?;
            c.peering()
                .connect_appliance(m::ConnectApplianceRequest {
                    name: "site-b".into(),
                    address: b_mgmt,
                    fingerprint: b_fp,
                    account: "admin".into(),
                    password: ADMIN_PASSWORD.into(),
                    validity_days: 30,
                })
                .await?;
            Ok(())
        })?;

        progress("adding the partners and enabling secure peering");
        for which in [Which::A, Which::B] {
            let (peer, prefixes) = sites.peer_of(which);
            sites.api(which, async move |c| {
                c.partners()
                    .add_partner(m::AddPartnerRequest {
                        name: peer.0,
                        address: peer.1,
                        prefixes,
                    })
                    .await?;
                c.peering()
                    .set_enabled(m::SetPeeringEnabledRequest { enabled: true })
                    .await?;
                Ok(())
            })?;
        }
        progress("waiting for secure: true, Connected Available on both sites");
        sites.wait_secure(Duration::from_secs(30))?;
        Ok(sites)
    }

    /// The site.
    pub fn site(&self, which: Which) -> &Site {
        match which {
            Which::A => &self.a,
            Which::B => &self.b,
        }
    }

    fn site_mut(&mut self, which: Which) -> &mut Site {
        match which {
            Which::A => &mut self.a,
            Which::B => &mut self.b,
        }
    }

    fn net(&self, which: Which) -> &SiteNet {
        match which {
            Which::A => &self.tb.site_a,
            Which::B => &self.tb.site_b,
        }
    }

    /// (name, address) of the other site and its LAN prefixes.
    fn peer_of(&self, which: Which) -> ((String, String), Vec<String>) {
        let (other, name) = match which {
            Which::A => (&self.tb.site_b, "site-b"),
            Which::B => (&self.tb.site_a, "site-a"),
        };
        let (n4, l4) = other.lan_prefix_v4;
        let (n6, l6) = other.lan_prefix_v6;
        (
            (name.to_owned(), format!("{}:{TUNNEL_PORT}", other.wan_ipv4)),
            vec![format!("{n4}/{l4}"), format!("{n6}/{l6}")],
        )
    }

    /// Runs `f` with a logged-in management client of `which`, from inside the
    /// site's namespace (the API listens there).
    pub fn api<T, F, Fut>(&self, which: Which, f: F) -> anyhow::Result<T>
    where
        T: Send,
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let site = self.site(which);
        let (address, fingerprint) = (site.management.to_string(), site.fingerprint.clone());
        self.net(which)
            .netns
            .enter(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start a runtime")?
                    .block_on(async move {
                        let mut c = Client::connect(&address, &fingerprint).await?;
                        c.login("admin", ADMIN_PASSWORD)
                            .await
                            .context("admin login")?;
                        f(c).await
                    })
            })
            .context("cannot enter the site's namespace")?
    }

    /// The partner table of `which`.
    pub fn partners(&self, which: Which) -> anyhow::Result<Vec<m::Partner>> {
        self.api(which, async |c| {
            Ok(c.partners()
                .list_partners(m::ListPartnersRequest {})
                .await?
                .into_inner()
                .partners)
        })
    }

    /// Waits until both sites show their partner `secure` and `Connected Available`.
    pub fn wait_secure(&self, limit: Duration) -> anyhow::Result<()> {
        for which in [Which::A, Which::B] {
            wait_for(limit, "a secure partner", || {
                let p = self.partners(which)?;
                Ok(p.iter()
                    .all(|p| p.secure && p.connection_status == "Connected Available")
                    .then_some(()))
            })
            .with_context(|| {
                format!(
                    "{which:?}: {:?}\nsite-a control log:\n{}\nsite-b control log:\n{}",
                    self.partners(which),
                    tail(&self.a.log_dir.join("site-a-control.log")),
                    tail(&self.b.log_dir.join("site-b-control.log"))
                )
            })?;
        }
        Ok(())
    }

    /// Kills `which`'s shunt-control (SIGKILL) and starts it again on the same state
    /// directory; the keystore is then sealed until [`TwoSites::open_keystore`].
    pub fn restart_control(&mut self, which: Which) -> anyhow::Result<()> {
        if let Some(mut p) = self.site_mut(which).control.take() {
            p.kill();
        }
        self.start_control(which, false)
    }

    /// Opens `which`'s keystore.
    pub fn open_keystore(&self, which: Which) -> anyhow::Result<()> {
        self.api(which, async |c| {
            c.keystore()
                .open(m::OpenKeystoreRequest {
                    password: KEYSTORE_PASSWORD.into(),
                })
                .await?;
            Ok(())
        })
    }

    fn start_control(&mut self, which: Which, first: bool) -> anyhow::Result<()> {
        let net = self.net(which);
        let site = self.site(which);
        let bootstrap = site.state_dir.with_extension("admin-password");
        if first {
            std::fs::write(&bootstrap, format!("{ADMIN_PASSWORD}\n"))
                .context("cannot write the bootstrap password file")?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(site.log_dir.join(format!("{}-control.log", site.name)))
            .context("cannot open the log file")?;
        let mut cmd = net
            .netns
            .command(binary("shunt-control")?.to_str().unwrap_or_default());
        cmd.arg("--state-dir")
            .arg(&site.state_dir)
            .args(["--listen", &site.management.to_string()])
            .args(["--name", &site.name])
            .args([
                "--tunnel-listen",
                &format!("{}:{TUNNEL_PORT}", net.wan_ipv4),
            ])
            .args(["--licence-verifying-key", &self.verifying_key])
            .arg("--dataplane-socket")
            .arg(&site.socket)
            // Quick detection and reconnection on the testbed.
            .args([
                "--peering-keepalive-ms",
                "500",
                "--peering-idle-timeout-ms",
                "3000",
            ])
            .args(["--peering-backoff-max-ms", "1000"])
            .args([
                "--keystore-kdf-memory-kib",
                "8192",
                "--keystore-kdf-iterations",
                "1",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if first {
            cmd.arg("--bootstrap-admin-password-file").arg(&bootstrap);
        }
        let mut child = cmd.spawn().context("cannot start shunt-control")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut process = Process {
            child: Some(child),
            what: format!("{} shunt-control", site.name),
        };
        let mut fingerprint = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading shunt-control's output")?;
            if let Some(f) = line.strip_prefix("fingerprint ") {
                fingerprint = Some(f.to_owned());
            }
            if line.starts_with("tunnel ") {
                break;
            }
        }
        let Some(fingerprint) = fingerprint else {
            process.kill();
            bail!(
                "{} shunt-control exited before listening:\n{}",
                site.name,
                tail(&site.log_dir.join(format!("{}-control.log", site.name)))
            );
        };
        if first {
            let _ = std::fs::remove_file(&bootstrap);
        }
        let site = self.site_mut(which);
        site.fingerprint = fingerprint;
        site.control = Some(process);
        Ok(())
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn start_dataplane(
    net: &SiteNet,
    name: &str,
    dir: &Path,
    history_mib: usize,
) -> anyhow::Result<Site> {
    let socket = dir.join(format!("{name}-agent.sock"));
    let log_dir = dir.to_owned();
    let log = std::fs::File::create(log_dir.join(format!("{name}-dataplane.log")))
        .context("cannot create the log file")?;
    let child = net
        .netns
        .command(binary("shunt-dataplane")?.to_str().unwrap_or_default())
        .arg("--agent-socket")
        .arg(&socket)
        .args(["--lan", &net.lan_if, "--wan", &net.wan_if])
        .args([
            "--copy",
            "--driver-only",
            "--history-mib",
            &history_mib.to_string(),
        ])
        .args(["--interval", "3600"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start shunt-dataplane")?;
    let mut dataplane = Process {
        child: Some(child),
        what: format!("{name} shunt-dataplane"),
    };
    let start = Instant::now();
    while !socket.exists() {
        if !dataplane.running() {
            bail!(
                "{name} shunt-dataplane exited:\n{}",
                tail(&log_dir.join(format!("{name}-dataplane.log")))
            );
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("{name} shunt-dataplane did not create its agent socket within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Site {
        name: name.to_owned(),
        dataplane,
        control: None,
        socket,
        state_dir: dir.join(format!("{name}-state")),
        management: SocketAddr::new(net.wan_ipv4.into(), MANAGEMENT_PORT),
        fingerprint: String::new(),
        log_dir,
    })
}
