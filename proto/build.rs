//! Compiles `proto/shunt/*.proto` with protox (pure Rust, no system `protoc`)
//! and generates prost messages plus tonic clients and servers into `OUT_DIR`.
//!
//! `src/gen/` holds a checked-in copy of the generated code; the test
//! `generated_code_matches_proto` fails when it differs from what the `.proto`
//! files produce. Refresh the copy with `SHUNT_UPDATE_PROTO_GEN=1 cargo build -p shunt-proto`.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "shunt/management.proto",
    "shunt/agent.proto",
    "shunt/signaling.proto",
];

/// Messages that carry passwords or keys: their `Debug` is written by hand
/// in `src/redact.rs` so that no secret reaches a log.
const SECRET_MESSAGES: &[&str] = &[
    ".shunt.management.v1.LoginRequest",
    ".shunt.management.v1.LoginReply",
    ".shunt.management.v1.ChangeAdminPasswordRequest",
    ".shunt.management.v1.CreateAccountRequest",
    ".shunt.management.v1.InitializeKeystoreRequest",
    ".shunt.management.v1.OpenKeystoreRequest",
    ".shunt.management.v1.ChangeKeystorePasswordRequest",
    ".shunt.management.v1.ResetKeystoreRequest",
    ".shunt.management.v1.PemPair",
    ".shunt.management.v1.Pkcs12Bundle",
    ".shunt.management.v1.ConnectApplianceRequest",
    ".shunt.agent.v1.SessionKey",
    ".shunt.agent.v1.SetHistoryStoreRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest.join("proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", include.join(proto).display());
    }
    println!("cargo:rerun-if-env-changed=SHUNT_UPDATE_PROTO_GEN");

    let files = protox::compile(PROTOS, [&include])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .out_dir(&out_dir)
        .emit_rerun_if_changed(false)
        .skip_debug(SECRET_MESSAGES.iter().copied())
        .compile_fds(files)?;

    if std::env::var_os("SHUNT_UPDATE_PROTO_GEN").is_some() {
        let gen_dir = manifest.join("src/gen");
        std::fs::create_dir_all(&gen_dir)?;
        for package in PACKAGES {
            let file = format!("{package}.rs");
            std::fs::copy(out_dir.join(&file), gen_dir.join(&file))?;
        }
    }
    Ok(())
}

/// One generated file per protobuf package.
const PACKAGES: &[&str] = &[
    "shunt.management.v1",
    "shunt.agent.v1",
    "shunt.signaling.v1",
];
