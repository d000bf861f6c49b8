//! Network-namespace guards: unique names, commands and threads inside, removal on drop.
//!
//! Every namespace this crate creates is named `shnt-<pid>-<counter>-<role>`, where `pid`
//! is the creating process. [`remove_leftovers`] deletes namespaces (and root-namespace
//! links named `shnt<pid>-...`) whose creating process is gone, so a crashed earlier run
//! never leaves state behind for long; [`Netns::new`] calls it once per process.

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys;

/// Prefix of every namespace name created by this crate.
pub const NETNS_PREFIX: &str = "shnt-";
/// Prefix of every link created by this crate in the root namespace.
pub const LINK_PREFIX: &str = "shnt";

const NETNS_DIR: &str = "/run/netns";

/// Errors of the namespace and testbed tooling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command could not be started at all (missing binary, fork failure).
    #[error("cannot run `{command}`: {source} (is iproute2 installed and are we root?)")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status as printed by std.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// Entering a namespace with setns(2) failed.
    #[error("cannot enter network namespace {name}: {source} (needs CAP_SYS_ADMIN)")]
    Enter {
        /// Namespace name.
        name: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A thread inside a namespace could not be started.
    #[error("cannot start a thread in namespace {name}: {source}")]
    Thread {
        /// Namespace name.
        name: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Output of a tool did not look as expected.
    #[error("unexpected output from `{command}`: {detail}")]
    Parse {
        /// The command line.
        command: String,
        /// What was wrong.
        detail: String,
    },
}

/// An owned network namespace; deleted (with every process still inside) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    role: String,
}

impl Netns {
    /// Creates a namespace `shnt-<pid>-<counter>-<role>` with loopback up.
    ///
    /// The first call in a process also removes leftovers of dead earlier runs.
    pub fn new(role: &str) -> Result<Self, NetnsError> {
        static LEFTOVERS: Once = Once::new();
        static COUNTER: AtomicU32 = AtomicU32::new(0);

        LEFTOVERS.call_once(|| match remove_leftovers() {
            Ok(n) if n.namespaces + n.links > 0 => {
                tracing::info!(
                    namespaces = n.namespaces,
                    links = n.links,
                    "removed leftovers"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot remove leftovers of earlier runs"),
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{n}-{role}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Netns {
            name,
            role: role.to_owned(),
        };
        netns.run("ip", &["link", "set", "lo", "up"])?;
        tracing::debug!(netns = %netns.name, "namespace created");
        Ok(netns)
    }

    /// The namespace's name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role given at creation (`client`, `site_a`, ...).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args...` inside the namespace; returns its stdout or an error with
    /// its stderr when it exits unsuccessfully.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, NetnsError> {
        let out = run_checked(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command inside the namespace and returns its full output whatever its
    /// exit status (for commands expected to fail, such as a ping across a cut link).
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output, NetnsError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        cmd.output().map_err(|source| NetnsError::Spawn {
            command: describe(&cmd),
            source,
        })
    }

    /// Starts a long-running process inside the namespace. The returned guard kills it
    /// on drop; dropping the namespace also kills anything still running inside.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<NsProcess, NetnsError> {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| NetnsError::Spawn {
            command: describe(&cmd),
            source,
        })?;
        Ok(NsProcess {
            child: Some(child),
            command: describe(&cmd),
        })
    }

    /// Runs `f` on a new thread that has entered this namespace and waits for it, so
    /// every socket `f` creates belongs to the namespace. A panic in `f` is resumed
    /// on the calling thread.
    pub fn enter<F, R>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.role))
                .spawn_scoped(scope, move || sys::enter_netns(&path).map(|()| f()))
                .map_err(|source| NetnsError::Thread {
                    name: self.name.clone(),
                    source,
                })?;
            match handle.join() {
                Ok(result) => result.map_err(|source| NetnsError::Enter {
                    name: self.name.clone(),
                    source,
                }),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts a long-running thread inside this namespace (for a server, a receiver).
    /// Returns once the thread has entered the namespace.
    pub fn spawn_thread<F, R>(&self, f: F) -> Result<JoinHandle<R>, NetnsError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path();
        let (entered_tx, entered_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{}", self.role))
            .spawn(move || {
                let entered = sys::enter_netns(&path);
                let ok = entered.is_ok();
                // The receiver only disappears if spawn_thread itself unwound.
                let _ = entered_tx.send(entered);
                if !ok {
                    // Never run `f` outside the namespace; the caller got the error.
                    std::panic::panic_any("thread did not enter its namespace");
                }
                f()
            })
            .map_err(|source| NetnsError::Thread {
                name: self.name.clone(),
                source,
            })?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(source)) => Err(NetnsError::Enter {
                name: self.name.clone(),
                source,
            }),
            Err(_) => Err(NetnsError::Thread {
                name: self.name.clone(),
                source: io::Error::other("namespace thread died before entering"),
            }),
        }
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        // /proc/sys/net belongs to the namespace of the thread that opens it.
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
            .map_err(|source| NetnsError::Spawn {
                command: format!("write {value} to {} in {}", path.display(), self.name),
                source,
            })
    }

    /// The interface index of `if_name` inside the namespace.
    pub fn ifindex(&self, if_name: &str) -> Result<u32, NetnsError> {
        let out = self.run("ip", &["-o", "link", "show", "dev", if_name])?;
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| NetnsError::Parse {
                command: format!("ip -o link show dev {if_name}"),
                detail: out,
            })
    }

    /// Pids of every process currently inside the namespace.
    pub fn pids(&self) -> Result<Vec<u32>, NetnsError> {
        netns_pids(&self.name)
    }

    /// `/run/netns/<name>`, the bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = delete_netns(&self.name) {
            tracing::warn!(netns = %self.name, %error, "cannot delete namespace");
        } else {
            tracing::debug!(netns = %self.name, "namespace deleted");
        }
    }
}

/// A process started by [`Netns::spawn`]; killed on drop.
#[derive(Debug)]
pub struct NsProcess {
    child: Option<Child>,
    command: String,
}

impl NsProcess {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits up to `timeout` for it to exit; returns its output, or an error (and kills
    /// it) when it is still running or exits unsuccessfully.
    pub fn wait(mut self, timeout: Duration) -> Result<Output, NetnsError> {
        let mut child = self.child.take().expect("child present until wait or drop");
        let deadline = Instant::now() + timeout;
        loop {
            let status = child.try_wait().map_err(|source| NetnsError::Spawn {
                command: self.command.clone(),
                source,
            })?;
            if status.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NetnsError::Command {
                    command: self.command.clone(),
                    status: format!("still running after {timeout:?}, killed"),
                    stderr: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child
            .wait_with_output()
            .map_err(|source| NetnsError::Spawn {
                command: self.command.clone(),
                source,
            })?;
        check_output(&self.command, out)
    }

    /// Kills it now and waits for it.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

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
            delete_netns(&name)?;
            removed.namespaces += 1;
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

/// Kills everything inside the namespace, then deletes it.
fn delete_netns(name: &str) -> Result<(), NetnsError> {
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

fn netns_pids(name: &str) -> Result<Vec<u32>, NetnsError> {
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

pub(crate) fn run_checked(cmd: &mut Command) -> Result<Output, NetnsError> {
    let out = cmd.output().map_err(|source| NetnsError::Spawn {
        command: describe(cmd),
        source,
    })?;
    check_output(&describe(cmd), out)
}

fn check_output(command: &str, out: Output) -> Result<Output, NetnsError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(NetnsError::Command {
            command: command.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
