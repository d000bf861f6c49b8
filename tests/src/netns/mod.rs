//! Network-namespace guards: unique names, commands and threads inside, removal on drop.
//!
//! Every namespace this crate creates is named `shnt-<pid>-<counter>-<role>`, where `pid`
//! is the creating process. [`remove_leftovers`] deletes namespaces (and root-namespace
//! links named `shnt<pid>-...`) whose creating process is gone, so a crashed earlier run
//! never leaves state behind for long; [`Netns::new`] calls it once per process.

#![forbid(unsafe_code)]

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sys;

mod cleanup;
mod veth;

pub use cleanup::{Leftovers, remove_leftovers};
use cleanup::{delete_netns, netns_pids};
pub use veth::{VethEnd, create_veth, format_mac, unique_link_name};

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

    /// Sends SIGTERM, then waits up to `timeout` as [`NsProcess::wait`] does (for
    /// programs that report on exit, such as `shunt-wanem`).
    pub fn terminate(self, timeout: Duration) -> Result<Output, NetnsError> {
        sys::terminate_process(self.pid()).map_err(|source| NetnsError::Spawn {
            command: format!("kill -TERM {}", self.pid()),
            source,
        })?;
        self.wait(timeout)
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
