//! Two running appliances on a [`Testbed`], configured by manual keying, and a TCP
//! transfer of given bytes with SHA-256 at both ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shunt_dataplane::io::afxdp::BindMode;
use shunt_dataplane::pipeline::{Appliance, ApplianceOptions, ApplianceStats};
use shunt_dataplane::tunnel::config::{ManualConfig, PortIo};
use shunt_dataplane::xdp::ModeRequest;

use crate::netns::Netns;
use crate::testbed::{Appliance as Site, Testbed};

/// How the two appliances carry traffic to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelMode {
    /// Compressed and encrypted.
    Encrypted,
    /// Compressed only.
    CompressOnly,
}

/// Settings of [`Sites::start`].
#[derive(Clone, Debug)]
pub struct SitesConfig {
    /// Tunnel mode.
    pub mode: TunnelMode,
    /// History per lane, MiB.
    pub history_mib: usize,
    /// Rekey interval, seconds (60..).
    pub rekey_secs: u64,
    /// The appliances' ports: AF_XDP on the testbed's LAN and WAN ports, or a TUN
    /// device ([`TUN_DEVICE`], routes to the other site into it) and a UDP socket.
    pub io: PortIo,
    /// Payloads through the compression history (else as they are): false sets both
    /// the partner's `compression = false` and the appliance's `--no-compression`.
    pub compression: bool,
    /// Site A's compression history on disk (`None`: in memory).
    pub history_a: Option<HistoryOnDisk>,
    /// Site B's compression history on disk (`None`: in memory).
    pub history_b: Option<HistoryOnDisk>,
    /// The partner's `zstd_dictionary` file on both sites (`None`: no dictionary).
    pub zstd_dictionary: Option<PathBuf>,
}

/// `[local] history_dir` and `history_key` of one site.
#[derive(Clone, Debug)]
pub struct HistoryOnDisk {
    /// The directory (absolute).
    pub dir: PathBuf,
    /// The disk key, 128 hexadecimal digits (`None`: stored unencrypted).
    pub key: Option<String>,
}

/// One of the two sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Site A (the client's side).
    A,
    /// Site B (the server's side).
    B,
}

/// `text` (a manual-keying file) with `history` added to its `[local]` table.
fn with_history(text: &str, history: Option<&HistoryOnDisk>) -> String {
    let Some(h) = history else {
        return text.to_owned();
    };
    let mut local = format!("[local]\nhistory_dir = \"{}\"\n", h.dir.display());
    if let Some(key) = &h.key {
        local.push_str(&format!("history_key = \"{key}\"\n"));
    }
    text.replacen("[local]\n", &local, 1)
}

/// The TUN device each site uses with [`PortIo::Tun`].
pub const TUN_DEVICE: &str = "shtun0";
/// Its MTU: below the tunnel's inner MTU on the testbed's 1500-byte WAN.
pub const TUN_MTU: u32 = 1400;

impl Default for SitesConfig {
    fn default() -> Self {
        Self {
            mode: TunnelMode::Encrypted,
            history_mib: 64,
            rekey_secs: 600,
            io: PortIo::AfXdp,
            compression: true,
            history_a: None,
            history_b: None,
            zstd_dictionary: None,
        }
    }
}

/// The manual-keying file of one site toward the other.
pub fn manual_config(
    local: &Site,
    peer: &Site,
    config: &SitesConfig,
    keys: (&str, &str),
    indices: (u32, u32),
) -> String {
    let (net4, len4) = peer.lan_prefix_v4;
    let (net6, len6) = peer.lan_prefix_v6;
    let secret = match config.mode {
        TunnelMode::Encrypted => format!(
            "mode = \"encrypted\"\nsend_key = \"{}\"\nreceive_key = \"{}\"\n",
            keys.0, keys.1
        ),
        TunnelMode::CompressOnly => format!(
            "mode = \"compress-only\"\nlocal_index = {}\nremote_index = {}\n",
            indices.0, indices.1
        ),
    };
    let (io, lan_if) = match config.io {
        PortIo::AfXdp => ("af-xdp", local.lan_if.as_str()),
        PortIo::Tun => ("tun", TUN_DEVICE),
    };
    let mut compression = if config.compression {
        String::new()
    } else {
        "compression = false\n".to_owned()
    };
    if let Some(dict) = &config.zstd_dictionary {
        compression.push_str(&format!("zstd_dictionary = \"{}\"\n", dict.display()));
    }
    format!(
        "[local]\nio = \"{io}\"\nlan_interface = \"{lan_if}\"\nwan_interface = \"{}\"\n\
         tunnel_port = 4790\nlanes = 4\nrekey_interval_secs = {}\nreceive_grace_secs = 30\n\n\
         [[partner]]\nname = \"peer\"\naddress = \"{}\"\n\
         prefixes = [\"{net4}/{len4}\", \"{net6}/{len6}\"]\n{secret}{compression}",
        local.wan_if, config.rekey_secs, peer.wan_ipv4
    )
}

/// Two appliances running on a testbed. Dropping it stops them before the testbed
/// goes away.
pub struct Sites {
    /// Site A's appliance.
    pub a: Option<Appliance>,
    /// Site B's appliance.
    pub b: Option<Appliance>,
    /// The topology.
    pub tb: Testbed,
    /// Manual-keying files of A and B (without history settings).
    texts: (String, String),
    options: ApplianceOptions,
}

impl Sites {
    /// Starts both appliances (AF_XDP copy mode, native XDP on the veths; or, with
    /// [`PortIo::Tun`], after creating each site's TUN device and routing the other
    /// site's prefixes into it).
    pub fn start(tb: Testbed, config: &SitesConfig) -> Self {
        if config.io == PortIo::Tun {
            for (site, peer) in [(&tb.site_a, &tb.site_b), (&tb.site_b, &tb.site_a)] {
                route_into_tun(site, peer);
            }
        }
        let k1 = hex::encode(rand::random::<[u8; 32]>());
        let k2 = hex::encode(rand::random::<[u8; 32]>());
        let a_text = manual_config(&tb.site_a, &tb.site_b, config, (&k1, &k2), (101, 202));
        let b_text = manual_config(&tb.site_b, &tb.site_a, config, (&k2, &k1), (202, 101));
        let options = ApplianceOptions {
            xdp_mode: ModeRequest::Driver,
            bind: BindMode::Copy,
            history_bytes: config.history_mib << 20,
            max_workers: None,
            compression: config.compression,
        };
        let mut sites = Sites {
            a: None,
            b: None,
            tb,
            texts: (a_text, b_text),
            options,
        };
        sites.start_site(Which::A, config.history_a.as_ref());
        sites.start_site(Which::B, config.history_b.as_ref());
        sites
    }

    /// (Re)starts one site's appliance with the configuration it started with and
    /// `history` as its history on disk.
    pub fn start_site(&mut self, which: Which, history: Option<&HistoryOnDisk>) {
        let (site, text) = match which {
            Which::A => (&self.tb.site_a, &self.texts.0),
            Which::B => (&self.tb.site_b, &self.texts.1),
        };
        let text = with_history(text, history);
        let manual = ManualConfig::parse(&text, &|_: &str| true).expect("valid configuration");
        let options = self.options.clone();
        let appliance = site
            .netns
            .enter(move || Appliance::start(&manual, &options))
            .expect("enter the appliance namespace")
            .expect("appliance starts (run as root)");
        let slot = match which {
            Which::A => &mut self.a,
            Which::B => &mut self.b,
        };
        assert!(slot.is_none(), "{which:?} is already running");
        *slot = Some(appliance);
    }

    /// Stops one site's appliance cleanly (its history written to disk); returns its
    /// final counters.
    pub fn stop_site(&mut self, which: Which) -> ApplianceStats {
        let slot = match which {
            Which::A => &mut self.a,
            Which::B => &mut self.b,
        };
        slot.take()
            .expect("running")
            .stop()
            .expect("the appliance stops cleanly")
    }

    /// Site A's counters.
    pub fn a_stats(&self) -> ApplianceStats {
        self.a.as_ref().expect("running").stats()
    }

    /// Site B's counters.
    pub fn b_stats(&self) -> ApplianceStats {
        self.b.as_ref().expect("running").stats()
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        if let Some(a) = self.a.take() {
            let _ = a.stop();
        }
        if let Some(b) = self.b.take() {
            let _ = b.stop();
        }
    }
}

/// Creates [`TUN_DEVICE`] in `site` (it goes with the namespace) and routes `peer`'s
/// LAN prefixes into it instead of toward the peer's WAN address.
fn route_into_tun(site: &Site, peer: &Site) {
    let ip = |args: &[&str]| {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["-n", site.netns.name()]).args(args);
        crate::netns::run_checked(&mut cmd).expect("set up the TUN device (run as root)");
    };
    ip(&["tuntap", "add", "dev", TUN_DEVICE, "mode", "tun"]);
    let mtu = TUN_MTU.to_string();
    ip(&["link", "set", TUN_DEVICE, "mtu", &mtu, "up"]);
    let (net4, len4) = peer.lan_prefix_v4;
    ip(&[
        "route",
        "replace",
        &format!("{net4}/{len4}"),
        "dev",
        TUN_DEVICE,
    ]);
    let (net6, len6) = peer.lan_prefix_v6;
    ip(&[
        "-6",
        "route",
        "replace",
        &format!("{net6}/{len6}"),
        "dev",
        TUN_DEVICE,
    ]);
}

/// A counter of the first partner of `stats`.
pub fn counter(stats: &ApplianceStats, name: &str) -> u64 {
    stats.partners[0].counters.get(name).copied().unwrap_or(0)
}

/// Result of [`transfer`].
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes received.
    pub bytes: usize,
    /// SHA-256 of what was sent.
    pub sent: [u8; 32],
    /// SHA-256 of what was received.
    pub received: [u8; 32],
    /// Connect to end of stream at the receiver.
    pub elapsed: Duration,
}

/// Sends `data` over TCP from `from` to a listener in `to` at `addr`.
pub fn transfer(
    from: &Netns,
    to: &Netns,
    addr: SocketAddr,
    data: Arc<Vec<u8>>,
    timeout: Duration,
) -> Transfer {
    let listener = to
        .enter(move || TcpListener::bind(addr))
        .expect("enter")
        .expect("listen");
    let receiver = to
        .spawn_thread(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(timeout)).expect("timeout");
            let (mut hash, mut total, mut buf) = (Sha256::new(), 0usize, vec![0u8; 1 << 16]);
            loop {
                let n = s.read(&mut buf).expect("read (stalled transfer?)");
                if n == 0 {
                    return (total, <[u8; 32]>::from(hash.finalize()), Instant::now());
                }
                hash.update(&buf[..n]);
                total += n;
            }
        })
        .expect("receiver");
    let started = Instant::now();
    let sent = from
        .enter(move || {
            // The first SYN may be lost while next hops are resolved; TCP retries.
            let mut s = TcpStream::connect_timeout(&addr, timeout).expect("connect");
            s.set_write_timeout(Some(timeout)).expect("timeout");
            for chunk in data.chunks(1 << 16) {
                s.write_all(chunk).expect("write (stalled transfer?)");
            }
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            <[u8; 32]>::from(Sha256::digest(data.as_slice()))
        })
        .expect("enter");
    let (bytes, received, done) = receiver.join().expect("receiver thread");
    Transfer {
        bytes,
        sent,
        received,
        elapsed: done - started,
    }
}

/// `len` bytes from a seeded generator (incompressible).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}
