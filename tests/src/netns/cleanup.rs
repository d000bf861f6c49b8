//! Removal of namespaces and links left behind by dead runs, and namespace deletion.

#![forbid(unsafe_code)]

use std::io;
use std::process::Command;
use std::time::Duration;

use super::{LINK_PREFIX, NETNS_DIR, NETNS_PREFIX, NetnsError, run_checked};
use crate::sys;

/// What [`remove_leftovers`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Root-namespace links deleted.
    pub links: usize,
}

/// Deletes namespaces named `shnt-<pid>-...` and root links named `shnt<pid>-...` whose
/// `pid` is no longer a running process (left by a crashed or killed earlier run).
pub fn remove_leftovers() -> Result<Leftovers, NetnsError> {
    let mut removed = Leftovers::default();
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries.filter_map(Result::ok).collect::<Vec<_>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(NetnsError::Spawn {
                command: format!("read_dir {NETNS_DIR}"),
                source,
            });
        }
    };
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(&name, NETNS_PREFIX).is_some_and(|pid| !process_alive(pid)) {
            match delete_netns(&name) {
                Ok(()) => removed.namespaces += 1,
                // Another process cleaning up at the same time got there first.
                Err(_) if !entry.path().exists() => {}
                Err(e) => return Err(e),
            }
        }
    }
    let links = run_checked(Command::new("ip").args(["-o", "link", "show"]))?;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let Some(name) = line
            .split(':')
            .nth(1)
            .map(|s| s.trim().split('@').next().unwrap_or(""))
        else {
            continue;
        };
        if owner_pid(name, LINK_PREFIX).is_some_and(|pid| !process_alive(pid)) {
            match run_checked(Command::new("ip").args(["link", "del", name])) {
                Ok(_) => removed.links += 1,
                // The peer of a veth deleted a moment ago disappears with it.
                Err(NetnsError::Command { stderr, .. }) if stderr.contains("Cannot find") => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Kills everything inside the namespace, then deletes it.
pub(super) fn delete_netns(name: &str) -> Result<(), NetnsError> {
    for _ in 0..50 {
        let pids = netns_pids(name)?;
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            sys::kill_process(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    run_checked(Command::new("ip").args(["netns", "del", name])).map(drop)
}

pub(super) fn netns_pids(name: &str) -> Result<Vec<u32>, NetnsError> {
    let out = run_checked(Command::new("ip").args(["netns", "pids", name]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// The pid in `<prefix><pid>-...`, if `name` has that shape.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::unique_link_name;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("shnt-1234-0-client", NETNS_PREFIX), Some(1234));
        assert_eq!(owner_pid("shnt1234-7", LINK_PREFIX), Some(1234));
        assert_eq!(owner_pid("other-1234-0", NETNS_PREFIX), None);
        assert_eq!(owner_pid("shnt-x-0", NETNS_PREFIX), None);
    }

    #[test]
    fn link_names_fit_ifnamsiz() {
        let name = unique_link_name();
        assert!(name.len() <= 15, "{name}");
        assert_eq!(owner_pid(&name, LINK_PREFIX), Some(std::process::id()));
    }
}
