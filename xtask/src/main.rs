//! Shunt's single command runner, used by developers, the README and CI alike.
//!
//! Every command first runs [`setup`], which installs what a fresh machine of
//! our kind lacks (apt packages, `rust-src` for nightly, `bpf-linker` built
//! against LLVM 22) and does nothing when it is already there.
#![forbid(unsafe_code)]

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Shunt's command runner: set-up, build, test, demo, bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (apt packages, rust-src, bpf-linker); idempotent.
    Setup,
    /// Set up, then build the whole workspace in release mode.
    Build,
    /// Set up, then check formatting, run clippy with -D warnings and run every test.
    Test,
    /// Set up, build, then run the two-appliance demonstration (needs root).
    Demo {
        /// Extra arguments passed to the demo binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every fuzz target (or the one named) for a fixed time.
    Fuzz {
        /// Only this target.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Set up, then run the criterion benchmarks; `bench e2e [ARGS]` runs the
    /// end-to-end benchmark driver instead (release build, needs root; see
    /// docs/benchmarks.md, `bench e2e --help` for its options).
    Bench {
        /// Extra arguments passed to `cargo bench`, or `e2e` and the driver's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Debian packages the build, the tests and the demo need.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "ethtool",
    "iperf3",
    "openssl",
];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root).context("cannot enter the workspace root")?;
    setup()?;
    match cli.command {
        Cmd::Setup => Ok(()),
        Cmd::Build => cargo(&["build", "--workspace", "--release"]),
        Cmd::Test => test(),
        Cmd::Demo { args } => {
            require_root("the demonstration creates network namespaces and loads XDP")?;
            cargo(&["build", "--release", "--workspace", "--bins"])?;
            let mut cmd = Command::new(root.join("target/release/shunt-demo"));
            cmd.args(&args);
            run(&mut cmd)
        }
        Cmd::Fuzz { target, seconds } => fuzz(target.as_deref(), seconds),
        Cmd::Bench { args } if args.first().is_some_and(|a| a == "e2e") => {
            require_root("the end-to-end benchmark creates network namespaces and tunnels")?;
            e2e("release", &args[1..])
        }
        Cmd::Bench { args } => {
            let mut all = vec!["bench", "--package", "shunt-benches"];
            all.extend(args.iter().map(String::as_str));
            cargo(&all)
        }
    }
}

fn test() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--", "--check"]).context("formatting differs: run `cargo fmt`")?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    require_root("the privileged tests create network namespaces and load XDP; they do not skip")?;
    cargo(&["test", "--workspace", "--no-fail-fast"])?;
    // The benchmark driver's smoke mode: plain forwarding and Shunt on the testbed,
    // every transfer checked; it fails (never skips) when it cannot run.
    e2e(
        "debug",
        &["--smoke".into(), "--out".into(), "target/e2e-smoke".into()],
    )
    .context("the end-to-end benchmark smoke run failed")?;
    fuzz(None, FUZZ_SMOKE_SECONDS)
}

/// Builds `shunt-dataplane` and the benchmark driver in `profile` and runs the driver.
fn e2e(profile: &str, args: &[String]) -> anyhow::Result<()> {
    let mut build = vec![
        "build",
        "-p",
        "shunt-dataplane",
        "-p",
        "shunt-benches",
        "--bins",
    ];
    if profile == "release" {
        build.push("--release");
    }
    cargo(&build)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    run(Command::new(target.join(profile).join("shunt-e2e")).args(args))
}

/// How long CI runs each fuzz target: a smoke test, not a campaign.
const FUZZ_SMOKE_SECONDS: u32 = 15;

/// Where the cargo-fuzz crate lives, relative to the workspace root.
const FUZZ_CRATE: &str = "dataplane";

fn fuzz(only: Option<&str>, seconds: u32) -> anyhow::Result<()> {
    let fuzz_dir = Path::new(FUZZ_CRATE).join("fuzz");
    if !fuzz_dir.join("Cargo.toml").is_file() {
        return Ok(());
    }
    let listed = Command::new("cargo")
        .current_dir(FUZZ_CRATE)
        .args(["+nightly", "fuzz", "list"])
        .output()
        .context("cannot list fuzz targets")?;
    if !listed.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let targets = String::from_utf8(listed.stdout).context("fuzz target names are not UTF-8")?;
    let mut ran = 0;
    for target in targets.lines().map(str::trim).filter(|t| !t.is_empty()) {
        if only.is_some_and(|o| o != target) {
            continue;
        }
        eprintln!("fuzz: {target} for {seconds} s");
        run(Command::new("cargo").current_dir(FUZZ_CRATE).args([
            "+nightly",
            "fuzz",
            "run",
            // Smoke runs look for panics and wrong results in safe Rust; the
            // AddressSanitizer build of the whole data plane would cost CI minutes.
            "--sanitizer",
            "none",
            target,
            "--",
            &format!("-max_total_time={seconds}"),
        ]))?;
        ran += 1;
    }
    if ran == 0 {
        bail!("no fuzz target matched");
    }
    Ok(())
}

fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() {
        eprintln!("setup: installing {}", missing.join(" "));
        require_root("installing Debian packages")?;
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is missing: install Rust with rustup first")?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        eprintln!("setup: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    if !on_path("cargo-fuzz") {
        eprintln!("setup: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }

    if !on_path("bpf-linker") {
        eprintln!("setup: building bpf-linker against LLVM 22 (about a minute)");
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn on_path(program: &str) -> bool {
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .any(|dir| dir.join(program).is_file())
}

fn require_root(why: &str) -> anyhow::Result<()> {
    // /proc/self belongs to the effective user of the process reading it.
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if euid != 0 {
        bail!("this command must run as root: {why}");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd);
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
