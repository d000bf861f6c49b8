//! The manual-keying configuration file of `shunt-dataplane`: interfaces, tunnel
//! port and partners with their prefixes, mode and pre-shared keys, like a static
//! VPN configuration. Used until the control plane drives sessions.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::keys::{KeyParseError, SecretKey};
use super::session::Mode;
use crate::codec::ZstdDictionary;
use crate::codec::store::StoreKey;

/// Default UDP port of the tunnel.
pub const DEFAULT_TUNNEL_PORT: u16 = 4790;

/// How the appliance's ports reach the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortIo {
    /// XDP steering on both ports and one AF_XDP socket per queue and port (production).
    #[default]
    AfXdp,
    /// For hosts where XDP cannot be used: `lan_interface` is a TUN device the kernel
    /// routes the partners' prefixes into, and the tunnel runs over a kernel UDP socket
    /// on `tunnel_port` (outer headers by the kernel).
    Tun,
}

/// A validated manual-keying configuration.
#[derive(Debug, Clone)]
pub struct ManualConfig {
    /// How the ports reach the wire.
    pub io: PortIo,
    /// The LAN-facing interface (a TUN device with `io = "tun"`).
    pub lan_interface: String,
    /// The WAN-facing interface.
    pub wan_interface: String,
    /// UDP port of the tunnel (and of QUIC signaling).
    pub tunnel_port: u16,
    /// Lanes per direction.
    pub lanes: u16,
    /// Length of a key epoch.
    pub rekey_interval: Duration,
    /// How long the previous receive key lives after the partner switched.
    pub receive_grace: Duration,
    /// The partners.
    pub partners: Vec<PartnerConfig>,
    /// Where compression history persists across restarts (`None`: in memory only).
    pub history: Option<HistoryStoreConfig>,
}

/// The on-disk compression history: `[local] history_dir`, `history_key` or
/// `history_key_file`. Each partner gets a subdirectory named after it.
#[derive(Debug, Clone)]
pub struct HistoryStoreConfig {
    /// Root directory (absolute).
    pub dir: PathBuf,
    /// AES-256-XTS disk key (512 bits); `None` stores plaintext with a keyed checksum.
    pub key: Option<StoreKey>,
}

/// Largest per-partner history (`history_mib`), MiB per lane and direction.
pub const MAX_HISTORY_MIB: usize = 4096;

/// One partner of a manual configuration.
#[derive(Debug, Clone)]
pub struct PartnerConfig {
    /// Unique name.
    pub name: String,
    /// The partner's tunnel address.
    pub address: SocketAddr,
    /// LAN prefixes behind the partner.
    pub prefixes: Vec<Prefix>,
    /// How traffic to it is carried.
    pub mode: Mode,
    /// Keys (encrypted mode only).
    pub keys: Option<PartnerKeys>,
    /// Receiver index the partner puts in packets to us (compress-only mode; derived
    /// from the keys in encrypted mode).
    pub local_index: Option<u32>,
    /// Receiver index we put in packets to the partner (compress-only mode).
    pub remote_index: Option<u32>,
    /// Run transport payloads through the compression history (default true).
    /// `false` only tunnels them (encrypted mode: encryption without compression,
    /// e.g. for traffic known to be incompressible, or as a benchmark reference).
    pub compression: bool,
    /// Compression history per lane and direction toward this partner, MiB (a power
    /// of two; both partners must agree). `None`: the appliance's `--history-mib`.
    pub history_mib: Option<usize>,
    /// A zstd dictionary for the residue (`zstd_dictionary = "/path"`, loaded and
    /// checked at load time); both partners must use the same file.
    pub zstd_dictionary: Option<ZstdDictionary>,
}

/// The two directional pre-shared keys of a partner.
#[derive(Debug, Clone)]
pub struct PartnerKeys {
    /// Seals traffic toward the partner (the partner's `receive_key`).
    pub send: SecretKey,
    /// Opens traffic from the partner (the partner's `send_key`).
    pub receive: SecretKey,
}

/// An IPv4 or IPv6 prefix such as `10.1.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// Network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

/// Why a configuration is refused. Each message names the field and the fix.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML or not the expected fields.
    #[error("invalid manual-keying file: {0}")]
    Syntax(String),
    /// The interface does not exist on this host.
    #[error("{role} interface {name:?} does not exist (see `ip link`){hint}")]
    UnknownInterface {
        /// How to create it, when the appliance expects the operator to.
        hint: &'static str,
        /// `lan` or `wan`.
        role: &'static str,
        /// Its name.
        name: String,
    },
    /// Same interface for LAN and WAN.
    #[error("lan_interface and wan_interface are both {0:?}; they must differ")]
    SameInterface(String),
    /// A number out of range.
    #[error("{field} must be {expect}")]
    Range {
        /// The field.
        field: &'static str,
        /// What is allowed.
        expect: &'static str,
    },
    /// Bad key.
    #[error("partner {partner}: {field}: {source}")]
    BadKey {
        /// The partner.
        partner: String,
        /// `send_key` or `receive_key`.
        field: &'static str,
        /// The cause.
        source: KeyParseError,
    },
    /// Missing or superfluous keys or indices for the mode.
    #[error("partner {partner}: {problem}")]
    ModeFields {
        /// The partner.
        partner: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Same key in both directions (nonces would repeat across directions).
    #[error("partner {0}: send_key and receive_key are equal; generate two different keys")]
    SameKeyBothWays(String),
    /// A key is used for two partners.
    #[error("partners {0} and {1} share a key; every partner needs its own keys")]
    SharedKey(String, String),
    /// Two partners with one name or one address.
    #[error("partner {0:?} is defined twice (same name or address)")]
    DuplicatePartner(String),
    /// Two receiver indices collide.
    #[error("partners {0} and {1} have the same receiver index; change local_index")]
    DuplicateIndex(String, String),
    /// Bad address.
    #[error("partner {partner}: address {value:?} is not an IP address or IP:port")]
    BadAddress {
        /// The partner.
        partner: String,
        /// The text.
        value: String,
    },
    /// Bad prefix.
    #[error("partner {partner}: prefix {value:?}: {reason}")]
    BadPrefix {
        /// The partner.
        partner: String,
        /// The text.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The history store settings are unusable.
    #[error("{field}: {problem}")]
    History {
        /// `history_dir`, `history_key`, `history_key_file`, `history_mib` or
        /// `zstd_dictionary`.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Overlapping prefixes.
    #[error(
        "prefix {first} (partner {first_partner}) overlaps {second} (partner {second_partner})"
    )]
    Overlap {
        /// First partner.
        first_partner: String,
        /// First prefix.
        first: Prefix,
        /// Second partner.
        second_partner: String,
        /// Second prefix.
        second: Prefix,
    },
}

/// Tells whether a network interface exists (injectable for tests).
pub trait InterfaceProbe {
    /// Whether `name` exists.
    fn exists(&self, name: &str) -> bool;
}

/// Looks interfaces up in `/sys/class/net`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SysClassNet;

impl InterfaceProbe for SysClassNet {
    fn exists(&self, name: &str) -> bool {
        !name.is_empty() && !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
    }
}

impl<F: Fn(&str) -> bool> InterfaceProbe for F {
    fn exists(&self, name: &str) -> bool {
        self(name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    local: RawLocal,
    #[serde(default, rename = "partner")]
    partners: Vec<RawPartner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    #[serde(default)]
    io: PortIo,
    lan_interface: String,
    wan_interface: String,
    #[serde(default = "default_port")]
    tunnel_port: u16,
    #[serde(default = "default_lanes")]
    lanes: u16,
    #[serde(default = "default_interval")]
    rekey_interval_secs: u64,
    #[serde(default = "default_grace")]
    receive_grace_secs: u64,
    history_dir: Option<PathBuf>,
    history_key: Option<String>,
    history_key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    name: String,
    address: String,
    prefixes: Vec<String>,
    mode: Mode,
    send_key: Option<String>,
    receive_key: Option<String>,
    local_index: Option<u32>,
    remote_index: Option<u32>,
    #[serde(default = "default_compression")]
    compression: bool,
    history_mib: Option<usize>,
    zstd_dictionary: Option<PathBuf>,
}

fn default_compression() -> bool {
    true
}

fn default_port() -> u16 {
    DEFAULT_TUNNEL_PORT
}
fn default_lanes() -> u16 {
    16
}
fn default_interval() -> u64 {
    600
}
fn default_grace() -> u64 {
    30
}

impl ManualConfig {
    /// Reads and validates a file, checking interfaces in `/sys/class/net`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // The text holds keys: wiped when dropped.
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?);
        Self::parse(&text, &SysClassNet)
    }

    /// Parses and validates a file's text.
    pub fn parse(text: &str, interfaces: &dyn InterfaceProbe) -> Result<Self, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let local = raw.local;
        for (role, name) in [("lan", &local.lan_interface), ("wan", &local.wan_interface)] {
            if !interfaces.exists(name) {
                let hint = if role == "lan" && local.io == PortIo::Tun {
                    "; with io = \"tun\" create it first: `ip tuntap add dev NAME mode tun`, \
                     `ip link set NAME up` and a route for each partner prefix into it"
                } else {
                    ""
                };
                return Err(ConfigError::UnknownInterface {
                    hint,
                    role,
                    name: name.clone(),
                });
            }
        }
        if local.lan_interface == local.wan_interface {
            return Err(ConfigError::SameInterface(local.lan_interface));
        }
        if local.tunnel_port == 0 {
            return Err(ConfigError::Range {
                field: "tunnel_port",
                expect: "1..=65535",
            });
        }
        if local.lanes == 0 || local.lanes > 1024 {
            return Err(ConfigError::Range {
                field: "lanes",
                expect: "1..=1024",
            });
        }
        if !(60..=86_400).contains(&local.rekey_interval_secs) {
            return Err(ConfigError::Range {
                field: "rekey_interval_secs",
                expect: "60..=86400 seconds",
            });
        }
        if local.receive_grace_secs == 0 || local.receive_grace_secs >= local.rekey_interval_secs {
            return Err(ConfigError::Range {
                field: "receive_grace_secs",
                expect: "at least 1 and below rekey_interval_secs",
            });
        }
        let history = history_store(
            local.history_dir,
            local.history_key.map(zeroize::Zeroizing::new),
            local.history_key_file,
        )?;
        let partners = raw
            .partners
            .into_iter()
            .map(|p| validate_partner(p, local.tunnel_port))
            .collect::<Result<Vec<_>, _>>()?;
        check_across_partners(&partners)?;
        if history.is_some()
            && let Some(p) = partners.iter().find(|p| !usable_as_directory(&p.name))
        {
            return Err(ConfigError::History {
                field: "history_dir",
                problem: format!(
                    "partner name {:?} names its history directory; use letters, digits, '-', '_' or '.'",
                    p.name
                ),
            });
        }
        Ok(Self {
            io: local.io,
            lan_interface: local.lan_interface,
            wan_interface: local.wan_interface,
            tunnel_port: local.tunnel_port,
            lanes: local.lanes,
            rekey_interval: Duration::from_secs(local.rekey_interval_secs),
            receive_grace: Duration::from_secs(local.receive_grace_secs),
            partners,
            history,
        })
    }
}

/// Whether a partner name can be its history directory's name (as `codec::store`
/// requires).
fn usable_as_directory(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Validates `[local] history_dir`, `history_key` and `history_key_file`.
fn history_store(
    dir: Option<PathBuf>,
    key: Option<zeroize::Zeroizing<String>>,
    key_file: Option<PathBuf>,
) -> Result<Option<HistoryStoreConfig>, ConfigError> {
    let problem = |field, problem: &str| ConfigError::History {
        field,
        problem: problem.to_owned(),
    };
    let Some(dir) = dir else {
        if key.is_some() || key_file.is_some() {
            return Err(problem(
                "history_key",
                "a disk key needs history_dir (where the history is stored)",
            ));
        }
        return Ok(None);
    };
    if !dir.is_absolute() {
        return Err(problem(
            "history_dir",
            "must be an absolute path, e.g. /var/lib/shunt/history",
        ));
    }
    let key = match (key, key_file) {
        (Some(_), Some(_)) => {
            return Err(problem(
                "history_key",
                "give either history_key or history_key_file, not both",
            ));
        }
        (Some(text), None) => {
            Some(parse_store_key(text.as_bytes()).map_err(|p| problem("history_key", p))?)
        }
        (None, Some(path)) => {
            let bytes = zeroize::Zeroizing::new(std::fs::read(&path).map_err(|e| {
                ConfigError::History {
                    field: "history_key_file",
                    problem: format!("cannot read {}: {e}", path.display()),
                }
            })?);
            Some(parse_store_key(&bytes).map_err(|p| problem("history_key_file", p))?)
        }
        (None, None) => None,
    };
    Ok(Some(HistoryStoreConfig { dir, key }))
}

/// A 512-bit disk key: 128 hexadecimal digits (surrounding white space ignored) or,
/// from a key file, exactly 64 raw bytes.
fn parse_store_key(text: &[u8]) -> Result<StoreKey, &'static str> {
    let mut key = zeroize::Zeroizing::new([0u8; 64]);
    if text.len() == 64 && hex::decode(text).is_err() {
        key.copy_from_slice(text);
        return Ok(StoreKey::new(*key));
    }
    let trimmed = text.trim_ascii();
    if trimmed.len() != 128 {
        return Err("needs 128 hexadecimal digits (512 bits: `openssl rand -hex 64`)");
    }
    hex::decode_to_slice(trimmed, &mut key[..])
        .map_err(|_| "is not hexadecimal (write 128 digits, e.g. from `openssl rand -hex 64`)")?;
    Ok(StoreKey::new(*key))
}

fn validate_partner(p: RawPartner, port: u16) -> Result<PartnerConfig, ConfigError> {
    let address = SocketAddr::from_str(&p.address)
        .or_else(|_| IpAddr::from_str(&p.address).map(|ip| SocketAddr::new(ip, port)))
        .map_err(|_| ConfigError::BadAddress {
            partner: p.name.clone(),
            value: p.address.clone(),
        })?;
    let prefixes = p
        .prefixes
        .iter()
        .map(|text| {
            Prefix::from_str(text).map_err(|reason| ConfigError::BadPrefix {
                partner: p.name.clone(),
                value: text.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mode_error = |problem| ConfigError::ModeFields {
        partner: p.name.clone(),
        problem,
    };
    let key = |field, text: &Option<String>| {
        text.as_deref()
            .map(|t| {
                SecretKey::from_hex(t).map_err(|source| ConfigError::BadKey {
                    partner: p.name.clone(),
                    field,
                    source,
                })
            })
            .transpose()
    };
    if let Some(mib) = p.history_mib
        && (!mib.is_power_of_two() || mib > MAX_HISTORY_MIB)
    {
        return Err(ConfigError::History {
            field: "history_mib",
            problem: format!(
                "partner {}: {mib} is not a power of two between 1 and {MAX_HISTORY_MIB}",
                p.name
            ),
        });
    }
    let zstd_dictionary = match &p.zstd_dictionary {
        Some(path) if !p.compression => {
            return Err(ConfigError::History {
                field: "zstd_dictionary",
                problem: format!(
                    "partner {}: a zstd dictionary ({}) is of no use with compression = false; remove one of them",
                    p.name,
                    path.display()
                ),
            });
        }
        Some(path) => Some(
            ZstdDictionary::load(path).map_err(|e| ConfigError::History {
                field: "zstd_dictionary",
                problem: format!("partner {}: {e}", p.name),
            })?,
        ),
        None => None,
    };
    let send = key("send_key", &p.send_key)?;
    let receive = key("receive_key", &p.receive_key)?;
    let keys = match (p.mode, send, receive) {
        (Mode::Encrypted, Some(send), Some(receive)) => {
            if send == receive {
                return Err(ConfigError::SameKeyBothWays(p.name));
            }
            Some(PartnerKeys { send, receive })
        }
        (Mode::Encrypted, _, _) => {
            return Err(mode_error(
                "mode \"encrypted\" needs send_key and receive_key",
            ));
        }
        (_, None, None) => None,
        _ => {
            return Err(mode_error(
                "keys are only used in mode \"encrypted\"; remove them",
            ));
        }
    };
    match (p.mode, p.local_index, p.remote_index) {
        (Mode::CompressOnly, Some(_), Some(_)) | (Mode::Encrypted, _, _) => {}
        (Mode::CompressOnly, _, _) => {
            return Err(mode_error(
                "mode \"compress-only\" needs local_index and remote_index (the partner's file swaps them)",
            ));
        }
        (Mode::PassThrough, None, None) => {}
        (Mode::PassThrough, _, _) => {
            return Err(mode_error(
                "mode \"pass-through\" uses no session indices; remove them",
            ));
        }
    }
    Ok(PartnerConfig {
        name: p.name,
        address,
        prefixes,
        mode: p.mode,
        keys,
        local_index: p.local_index,
        remote_index: p.remote_index,
        compression: p.compression,
        history_mib: p.history_mib,
        zstd_dictionary,
    })
}

fn check_across_partners(partners: &[PartnerConfig]) -> Result<(), ConfigError> {
    let mut indices: Vec<(u32, &str)> = Vec::new();
    for (i, a) in partners.iter().enumerate() {
        if a.mode != Mode::PassThrough {
            let index = super::manual::local_index(a);
            if let Some((_, other)) = indices.iter().find(|(ix, _)| *ix == index) {
                return Err(ConfigError::DuplicateIndex(
                    (*other).to_owned(),
                    a.name.clone(),
                ));
            }
            indices.push((index, &a.name));
        }
        for (j, pa) in a.prefixes.iter().enumerate() {
            for pb in &a.prefixes[j + 1..] {
                if pa.overlaps(pb) {
                    return Err(overlap(a, pa, a, pb));
                }
            }
        }
        for b in &partners[..i] {
            if a.name == b.name || a.address == b.address {
                return Err(ConfigError::DuplicatePartner(a.name.clone()));
            }
            if let (Some(ka), Some(kb)) = (&a.keys, &b.keys)
                && [&kb.send, &kb.receive]
                    .iter()
                    .any(|k| **k == ka.send || **k == ka.receive)
            {
                return Err(ConfigError::SharedKey(b.name.clone(), a.name.clone()));
            }
            for pa in &a.prefixes {
                if let Some(pb) = b.prefixes.iter().find(|pb| pa.overlaps(pb)) {
                    return Err(overlap(b, pb, a, pa));
                }
            }
        }
    }
    Ok(())
}

fn overlap(a: &PartnerConfig, pa: &Prefix, b: &PartnerConfig, pb: &Prefix) -> ConfigError {
    ConfigError::Overlap {
        first_partner: a.name.clone(),
        first: *pa,
        second_partner: b.name.clone(),
        second: *pb,
    }
}

impl Prefix {
    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        let len = self.len.min(other.len);
        match (self.addr, other.addr) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                mask(u128::from(a.to_bits()) << 96, len) == mask(u128::from(b.to_bits()) << 96, len)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => mask(a.to_bits(), len) == mask(b.to_bits(), len),
            _ => false,
        }
    }
}

fn mask(bits: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len)))
    }
}

impl FromStr for Prefix {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or("missing /length (write e.g. 10.1.0.0/16)")?;
        let addr = IpAddr::from_str(addr).map_err(|_| "not an IPv4 or IPv6 address")?;
        let len: u8 = len.parse().map_err(|_| "length is not a number")?;
        let (max, bits) = match addr {
            IpAddr::V4(a) => (32, u128::from(a.to_bits()) << 96),
            IpAddr::V6(a) => (128, a.to_bits()),
        };
        if len > max {
            return Err("length exceeds the address size (32 for IPv4, 128 for IPv6)");
        }
        if mask(bits, len) != bits {
            return Err("host bits are set (write the network address)");
        }
        Ok(Self { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
