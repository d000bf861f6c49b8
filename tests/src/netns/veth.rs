//! veth pairs created directly inside namespaces, and unique root-namespace link names.

#![forbid(unsafe_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{LINK_PREFIX, Netns, NetnsError, run_checked};

/// A unique name for a link in the root namespace: `shnt<pid>-<n>` (at most 15 bytes).
pub fn unique_link_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{LINK_PREFIX}{}-{n}", std::process::id())
}

/// One end of a veth pair: the namespace it lives in (`None`: the caller's) and its name.
#[derive(Debug, Clone, Copy)]
pub struct VethEnd<'a> {
    /// Namespace of this end; `None` for the namespace of the calling process.
    pub netns: Option<&'a Netns>,
    /// Interface name (at most 15 bytes).
    pub name: &'a str,
    /// MAC address to set, or `None` for a random one.
    pub mac: Option<[u8; 6]>,
}

/// Creates a veth pair with each end directly in its namespace, sets the MTU and
/// brings both ends up. Deleting either namespace deletes the pair.
pub fn create_veth(a: VethEnd<'_>, b: VethEnd<'_>, mtu: u32) -> Result<(), NetnsError> {
    let mut cmd = Command::new("ip");
    cmd.args(["link", "add", "name", a.name]);
    push_end_args(&mut cmd, &a);
    cmd.args([
        "mtu",
        &mtu.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        b.name,
    ]);
    push_end_args(&mut cmd, &b);
    cmd.args(["mtu", &mtu.to_string()]);
    run_checked(&mut cmd)?;
    for end in [a, b] {
        let mut up = Command::new("ip");
        if let Some(ns) = end.netns {
            up.args(["-n", ns.name()]);
        }
        run_checked(up.args(["link", "set", "dev", end.name, "up"]))?;
    }
    Ok(())
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

fn push_end_args(cmd: &mut Command, end: &VethEnd<'_>) {
    if let Some(mac) = end.mac {
        cmd.args(["address", &format_mac(mac)]);
    }
    if let Some(ns) = end.netns {
        cmd.args(["netns", ns.name()]);
    }
}
