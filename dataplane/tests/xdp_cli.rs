//! `shunt-dataplane`'s start-up errors and signal handling, run as a real process
//! (root: the test drops privileges itself where it needs to).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shunt-dataplane");

/// A namespace named for this process, deleted on drop (panics included).
struct Namespace(String);

impl Namespace {
    fn new(tag: &str) -> Self {
        // The testbed tooling's naming, so its leftover removal also cleans up after a
        // crashed run of this test.
        let name = format!("shnt-{}-cli-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Self(name);
        run(
            "ip",
            &[
                "-n", &ns.0, "link", "add", "va", "type", "veth", "peer", "name", "vb",
            ],
        );
        for dev in ["va", "vb"] {
            run("ip", &["-n", &ns.0, "link", "set", dev, "up"]);
        }
        ns
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A copy of the binary (and room for files) the unprivileged user can read; removed
/// on drop.
struct Sandbox(std::path::PathBuf);

impl Sandbox {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shnt-cli-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(BIN, dir.join("shunt-dataplane")).unwrap();
        run("chmod", &["-R", "a+rX", dir.to_str().unwrap()]);
        Self(dir)
    }

    fn bin(&self) -> std::path::PathBuf {
        self.0.join("shunt-dataplane")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// setpriv's arguments that run the rest as `nobody` with no capabilities.
const AS_NOBODY: [&str; 4] = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"];

fn assert_privilege_message(out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("missing privileges: CAP_BPF, CAP_NET_ADMIN")
            && stderr.contains("run shunt-dataplane as root"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("AF_XDP"),
        "privileges reported as a socket error: {stderr}"
    );
}

#[test]
fn unprivileged_start_says_which_capabilities_are_missing() {
    let sandbox = Sandbox::new("steer");
    let out = Command::new("setpriv")
        .args(AS_NOBODY)
        .arg(sandbox.bin())
        .args(["--lan", "lo"])
        .output()
        .unwrap();
    assert_privilege_message(&out);
}

#[test]
fn unprivileged_appliance_start_fails_before_opening_sockets() {
    let ns = Namespace::new("priv");
    let sandbox = Sandbox::new("appliance");
    let config = sandbox.0.join("site.toml");
    std::fs::write(
        &config,
        "[local]\nlan_interface = \"va\"\nwan_interface = \"vb\"\n\n[[partner]]\n\
         name = \"b\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\n\
         mode = \"compress-only\"\nlocal_index = 1\nremote_index = 2\n",
    )
    .unwrap();
    run("chmod", &["a+r", config.to_str().unwrap()]);
    // `ip netns exec` mounts the namespace's sysfs, so the file's interfaces are found
    // and the start gets as far as the data plane.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "setpriv"])
        .args(AS_NOBODY)
        .arg(sandbox.bin())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_privilege_message(&out);
}

#[test]
fn missing_interface_is_reported_by_name() {
    let out = Command::new(BIN)
        .args(["--lan", "shnt-nosuch0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("interface `shnt-nosuch0` does not exist"),
        "{stderr}"
    );
}

#[test]
fn sigterm_detaches_and_exits_cleanly() {
    let ns = Namespace::new("term");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, BIN, "--lan", "va", "--wan", "vb"])
        .args([
            "--rule",
            "10.2.0.0/16=1",
            "--tunnel-port",
            "7000",
            "--interval",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attached = 0;
    while attached < 2 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) if l.contains("in driver mode") => attached += 1,
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert_eq!(attached, 2, "both ports attached in driver mode");
    let link = run("ip", &["-n", &ns.0, "-d", "link", "show", "dev", "va"]);
    assert!(link.contains("xdp"), "{link}");

    run("kill", &["-TERM", &child.id().to_string()]);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(rest.iter().any(|l| l == "detached"), "{rest:?}");
    let link = run("ip", &["-n", &ns.0, "-d", "link", "show", "dev", "va"]);
    assert!(
        !link.contains("xdp"),
        "still attached after SIGTERM: {link}"
    );
}
