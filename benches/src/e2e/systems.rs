//! The systems under test: how each is installed, brought up between the two sites
//! of the testbed, and taken down again, leaving plain kernel forwarding behind.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;
use shunt_tests::netns::Netns;
use shunt_tests::sites::{SitesConfig, TunnelMode, manual_config};
use shunt_tests::testbed::Testbed;
use shunt_tests::traffic::ping;

/// One way of carrying traffic between the two sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// No tunnel: the appliances' kernels route between the LANs.
    Plain,
    /// Shunt, AES-256-GCM and the compression history.
    ShuntEncryptedCompressed,
    /// Shunt, compression history, no encryption.
    ShuntCompressOnly,
    /// Shunt, AES-256-GCM, no compression.
    ShuntEncrypted,
    /// wireguard-go (Debian package) configured with wireguard-tools.
    WireguardGo,
    /// boringtun-cli (crates.io) configured with wireguard-tools.
    Boringtun,
    /// OpenVPN (Debian package), TLS, AES-256-GCM, lz4-v2 compression.
    OpenVpnLz4,
}

impl System {
    /// Every system, in the order a round measures them (Shunt interleaved with the
    /// references).
    pub const ALL: [System; 7] = [
        System::Plain,
        System::ShuntEncryptedCompressed,
        System::WireguardGo,
        System::ShuntCompressOnly,
        System::Boringtun,
        System::ShuntEncrypted,
        System::OpenVpnLz4,
    ];

    /// Whether this is one of Shunt's modes.
    pub fn is_shunt(self) -> bool {
        matches!(
            self,
            System::ShuntEncryptedCompressed | System::ShuntCompressOnly | System::ShuntEncrypted
        )
    }

    /// Whether this is a third-party tunnel (the "other tunnels" of the report).
    pub fn is_other_tunnel(self) -> bool {
        matches!(
            self,
            System::WireguardGo | System::Boringtun | System::OpenVpnLz4
        )
    }

    /// Short label for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            System::Plain => "plain forwarding",
            System::ShuntEncryptedCompressed => "Shunt enc+comp",
            System::ShuntCompressOnly => "Shunt comp-only",
            System::ShuntEncrypted => "Shunt enc, no comp",
            System::WireguardGo => "wireguard-go",
            System::Boringtun => "boringtun",
            System::OpenVpnLz4 => "OpenVPN+lz4",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Installs what the selected systems need and is missing: Debian packages with
/// apt-get, boringtun-cli with `cargo install`.
pub fn install(systems: &[System]) -> anyhow::Result<()> {
    let mut packages = Vec::new();
    let mut want = |program: &str, package: &'static str| {
        if !on_path(program) && !packages.contains(&package) {
            packages.push(package);
        }
    };
    want("openssl", "openssl");
    for s in systems {
        match s {
            System::WireguardGo => {
                want("wireguard-go", "wireguard-go");
                want("wg", "wireguard-tools");
            }
            System::Boringtun => want("wg", "wireguard-tools"),
            System::OpenVpnLz4 => want("openvpn", "openvpn"),
            _ => {}
        }
    }
    if !packages.is_empty() {
        eprintln!("installing Debian packages: {}", packages.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if systems.contains(&System::Boringtun) && !on_path("boringtun-cli") {
        eprintln!("installing boringtun-cli from crates.io (cargo install, a few minutes)");
        run(Command::new("cargo").args(["install", "--locked", "boringtun-cli"]))?;
    }
    Ok(())
}

/// Versions of the installed third-party tunnels, for the report.
pub fn versions(systems: &[System]) -> Vec<(String, String)> {
    let first_line = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| "not found".into())
    };
    let dpkg = |package: &str| first_line("dpkg-query", &["-W", "-f=${Version}", package]);
    let mut v = Vec::new();
    for s in systems {
        match s {
            System::WireguardGo => {
                v.push(("wireguard-go (Debian)".into(), dpkg("wireguard-go")));
                v.push(("wireguard-tools (Debian)".into(), dpkg("wireguard-tools")));
            }
            System::Boringtun => v.push((
                "boringtun-cli".into(),
                first_line(&program_path("boringtun-cli"), &["--version"]),
            )),
            System::OpenVpnLz4 => {
                v.push(("openvpn".into(), first_line("openvpn", &["--version"])));
            }
            _ => {}
        }
    }
    v
}

/// Settings every system is brought up with.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// `shunt-dataplane`.
    pub dataplane: PathBuf,
    /// Compression history per lane, MiB (both sites).
    pub history_mib: usize,
    /// Where configurations, keys and logs go.
    pub work_dir: PathBuf,
}

/// A running system; [`Running::down`] (or drop) stops it and restores the routes.
pub struct Running<'a> {
    tb: &'a Testbed,
    daemons: Vec<Daemon>,
    rerouted: bool,
}

impl Running<'_> {
    /// Pids of the tunnel processes (empty for plain forwarding).
    pub fn pids(&self) -> Vec<u32> {
        self.daemons.iter().map(|d| d.child.id()).collect()
    }

    /// Fails when a tunnel process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for d in &mut self.daemons {
            if let Some(status) = d.child.try_wait()? {
                bail!("{} exited ({status}); see {}", d.name, d.log.display());
            }
        }
        Ok(())
    }

    /// Stops the tunnel processes and puts the kernel routes back.
    pub fn down(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for d in self.daemons.drain(..) {
            if let Err(e) = d.stop() {
                first_error.get_or_insert(e);
            }
        }
        if std::mem::take(&mut self.rerouted)
            && let Err(e) = route_via_wan(self.tb)
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: taking a system down failed: {e:#}");
        }
    }
}

/// Brings `system` up on `tb` and waits until the client can ping the server through it.
pub fn up<'a>(tb: &'a Testbed, system: System, options: &UpOptions) -> anyhow::Result<Running<'a>> {
    let mut running = Running {
        tb,
        daemons: Vec::new(),
        rerouted: false,
    };
    let dir = options.work_dir.join(format!("{system:?}").to_lowercase());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    match system {
        System::Plain => {}
        System::ShuntEncryptedCompressed => shunt(&mut running, options, &dir, Shunt::EncComp)?,
        System::ShuntCompressOnly => shunt(&mut running, options, &dir, Shunt::CompOnly)?,
        System::ShuntEncrypted => shunt(&mut running, options, &dir, Shunt::EncOnly)?,
        System::WireguardGo => wireguard(&mut running, &dir, Wg::Go)?,
        System::Boringtun => wireguard(&mut running, &dir, Wg::Boringtun)?,
        System::OpenVpnLz4 => openvpn(&mut running, &dir)?,
    }
    wait_for_path(&mut running).with_context(|| format!("{system} did not come up"))?;
    Ok(running)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shunt {
    EncComp,
    CompOnly,
    EncOnly,
}

fn shunt(r: &mut Running<'_>, options: &UpOptions, dir: &Path, mode: Shunt) -> anyhow::Result<()> {
    let tb = r.tb;
    let config = SitesConfig {
        mode: if mode == Shunt::CompOnly {
            TunnelMode::CompressOnly
        } else {
            TunnelMode::Encrypted
        },
        history_mib: options.history_mib,
        compression: mode != Shunt::EncOnly,
        ..SitesConfig::default()
    };
    let keys = (
        hex::encode(rand::random::<[u8; 32]>()),
        hex::encode(rand::random::<[u8; 32]>()),
    );
    let sites = [
        (
            "site-a",
            &tb.site_a,
            &tb.site_b,
            (keys.0.as_str(), keys.1.as_str()),
            (101, 202),
        ),
        (
            "site-b",
            &tb.site_b,
            &tb.site_a,
            (keys.1.as_str(), keys.0.as_str()),
            (202, 101),
        ),
    ];
    for (name, local, peer, keys, indices) in sites {
        let text = manual_config(local, peer, &config, keys, indices);
        let file = dir.join(format!("{name}.toml"));
        write_private(&file, &text)?;
        let stats = dir.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&stats);
        let history = options.history_mib.to_string();
        let d = Daemon::spawn(
            &local.netns,
            name,
            &options.dataplane.to_string_lossy(),
            &[
                "--config",
                &file.to_string_lossy(),
                "--copy",
                "--driver-only",
                "--history-mib",
                &history,
                "--interval",
                "1",
                "--stats-file",
                &stats.to_string_lossy(),
            ],
            &[],
            dir,
        )?;
        r.daemons.push(d);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stats.exists() {
            r.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "{name}: shunt-dataplane wrote no stats within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wg {
    Go,
    Boringtun,
}

/// WireGuard UDP port on both sites.
const WG_PORT: u16 = 51820;

fn wireguard(r: &mut Running<'_>, dir: &Path, flavour: Wg) -> anyhow::Result<()> {
    let tb = r.tb;
    // The UAPI sockets live in /var/run/wireguard, shared by all namespaces: unique names.
    let tag = std::process::id() % 100_000;
    let names = [format!("wga{tag}"), format!("wgb{tag}")];
    let private: Vec<String> = (0..2)
        .map(|_| command_output(Command::new("wg").arg("genkey")))
        .collect::<Result<_, _>>()?;
    let public: Vec<String> = private
        .iter()
        .map(|k| {
            let mut c = Command::new("wg");
            c.arg("pubkey");
            command_output_with_input(&mut c, k)
        })
        .collect::<Result<_, _>>()?;
    let sites = [(&tb.site_a, &tb.site_b), (&tb.site_b, &tb.site_a)];
    for (i, (local, peer)) in sites.into_iter().enumerate() {
        let name = &names[i];
        let d = match flavour {
            Wg::Go => Daemon::spawn(
                &local.netns,
                name,
                "wireguard-go",
                &["-f", name],
                &[("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")],
                dir,
            )?,
            Wg::Boringtun => {
                let log = dir.join(format!("{name}-boringtun.log"));
                Daemon::spawn(
                    &local.netns,
                    name,
                    &program_path("boringtun-cli"),
                    &[
                        "-f",
                        "--disable-drop-privileges",
                        "-l",
                        &log.to_string_lossy(),
                        name,
                    ],
                    &[],
                    dir,
                )?
            }
        };
        r.daemons.push(d);
        let sock = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            r.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "{name}: no UAPI socket after 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let key_file = dir.join(format!("{name}.key"));
        write_private(&key_file, &private[i])?;
        let (net, len) = peer.lan_prefix_v4;
        local.netns.run(
            "wg",
            &[
                "set",
                name,
                "private-key",
                &key_file.to_string_lossy(),
                "listen-port",
                &WG_PORT.to_string(),
                "peer",
                &public[1 - i],
                "endpoint",
                &format!("{}:{WG_PORT}", peer.wan_ipv4),
                "allowed-ips",
                &format!("{net}/{len}"),
            ],
        )?;
        local
            .netns
            .run("ip", &["link", "set", name, "mtu", "1420", "up"])?;
    }
    reroute(r, &names)
}

fn openvpn(r: &mut Running<'_>, dir: &Path) -> anyhow::Result<()> {
    let tb = r.tb;
    let tag = std::process::id() % 100_000;
    let names = [format!("ova{tag}"), format!("ovb{tag}")];
    let mut fingerprints = Vec::new();
    for name in &names {
        let (key, cert) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.crt")),
        );
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null()))?;
        let out = command_output(
            Command::new("openssl")
                .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
                .arg(&cert),
        )?;
        let fp = out
            .split_once('=')
            .map(|(_, f)| f.trim().to_owned())
            .context("unexpected openssl fingerprint output")?;
        fingerprints.push(fp);
    }
    let sites = [(&tb.site_a, &tb.site_b), (&tb.site_b, &tb.site_a)];
    for (i, (local, peer)) in sites.into_iter().enumerate() {
        let name = &names[i];
        let role = if i == 0 { "tls-server" } else { "tls-client" };
        let (here, there) = if i == 0 {
            ("10.200.0.1", "10.200.0.2")
        } else {
            ("10.200.0.2", "10.200.0.1")
        };
        let text = format!(
            "dev {name}\ndev-type tun\nproto udp\nlocal {local_ip}\nlport 1194\n\
             remote {peer_ip} 1194\nifconfig {here} {there}\n{role}\ndh none\n\
             cert {dir}/{name}.crt\nkey {dir}/{name}.key\npeer-fingerprint {fp}\n\
             data-ciphers AES-256-GCM\ncipher AES-256-GCM\ncompress lz4-v2\n\
             allow-compression yes\ntun-mtu 1420\nping 5\nverb 1\n",
            local_ip = local.wan_ipv4,
            peer_ip = peer.wan_ipv4,
            dir = dir.display(),
            fp = fingerprints[1 - i],
        );
        let file = dir.join(format!("{name}.conf"));
        write_private(&file, &text)?;
        let d = Daemon::spawn(
            &local.netns,
            name,
            "openvpn",
            &["--config", &file.to_string_lossy()],
            &[],
            dir,
        )?;
        r.daemons.push(d);
    }
    // The tun devices appear once the TLS handshake completed.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, site) in [&tb.site_a, &tb.site_b].into_iter().enumerate() {
        while site
            .netns
            .run("ip", &["-o", "addr", "show", "dev", &names[i]])
            .map_or(true, |o| !o.contains("10.200.0."))
        {
            r.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "OpenVPN: {} has no tunnel address after 30 s (see its log)",
                names[i]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    reroute(r, &names)
}

/// Routes each site's traffic for the other site's LAN into the tunnel device.
fn reroute(r: &mut Running<'_>, devices: &[String]) -> anyhow::Result<()> {
    let tb = r.tb;
    r.rerouted = true;
    for (site, peer, dev) in [
        (&tb.site_a, &tb.site_b, &devices[0]),
        (&tb.site_b, &tb.site_a, &devices[1]),
    ] {
        let (net, len) = peer.lan_prefix_v4;
        site.netns.run(
            "ip",
            &["route", "replace", &format!("{net}/{len}"), "dev", dev],
        )?;
    }
    Ok(())
}

/// Puts back the testbed's routes: each site reaches the other LAN via the WAN.
fn route_via_wan(tb: &Testbed) -> anyhow::Result<()> {
    for (site, peer) in [(&tb.site_a, &tb.site_b), (&tb.site_b, &tb.site_a)] {
        let (net, len) = peer.lan_prefix_v4;
        site.netns.run(
            "ip",
            &[
                "route",
                "replace",
                &format!("{net}/{len}"),
                "via",
                &peer.wan_ipv4.to_string(),
            ],
        )?;
    }
    Ok(())
}

fn wait_for_path(r: &mut Running<'_>) -> anyhow::Result<()> {
    let tb = r.tb;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        r.check_alive()?;
        let report = ping(
            &tb.client.netns,
            tb.server.ipv4.into(),
            1,
            Duration::from_millis(200),
            Duration::from_millis(500),
        )?;
        if report.received == 1 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the client cannot ping the server after 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A tunnel process in a site namespace, output to a log file; stopped with SIGTERM.
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(
        netns: &Netns,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = netns.command(program);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // `ip netns exec` execs the program: the child's pid is the tunnel process.
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {program} (is it installed?)"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not stop within 10 s of SIGTERM; killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn command_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn command_output_with_input(cmd: &mut Command, input: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "{cmd:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn cargo_bin() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin())
        .any(|dir| dir.join(program).is_file())
}

/// `program` as found on PATH or in ~/.cargo/bin (where `cargo install` puts it).
fn program_path(program: &str) -> String {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map_or_else(|| program.to_owned(), |p| p.to_string_lossy().into_owned())
}
