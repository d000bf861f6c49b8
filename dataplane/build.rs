//! Builds the XDP program (`ebpf/xdp`) for `bpfel-unknown-none` with the nightly
//! toolchain and `-Z build-std=core`, and leaves the object in `OUT_DIR` so the
//! data plane can embed it with `aya::include_bytes_aligned!`.
//!
//! The eBPF crate is its own workspace so that host builds (clippy, tests) never
//! compile it; that is why this does what `aya-build` does, but with
//! `--manifest-path` instead of a package name.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let ebpf_dir = manifest_dir.join("../ebpf");
    for watched in [
        "xdp/src",
        "xdp/Cargo.toml",
        "xdp/Cargo.lock",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            ebpf_dir.join(watched).display()
        );
    }
    let target_dir = out_dir.join("ebpf-target");

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .arg("--manifest-path")
        .arg(ebpf_dir.join("xdp/Cargo.toml"))
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\u{1f}-Clink-arg=--btf",
        );
    // The outer cargo's settings would pin the stable compiler and its wrappers.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run rustup to build the XDP program ({e}); run `cargo xtask setup`")
    });
    assert!(
        status.success(),
        "building the XDP program failed ({status}); `cargo xtask setup` installs the nightly \
         rust-src component and bpf-linker it needs"
    );
    let object = target_dir.join("bpfel-unknown-none/release/shunt-xdp");
    std::fs::copy(&object, out_dir.join("shunt-xdp"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", object.display()));
}
