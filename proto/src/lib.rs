//! Shunt's protobuf messages and gRPC services: the management API
//! (`shuntctl` → `shunt-control`), the agent API (`shunt-control` →
//! `shunt-dataplane`) and the signaling messages between partner appliances.
//!
//! The code is generated at build time by `build.rs` (protox, no system
//! `protoc`); `src/gen/` holds a checked-in copy that a test compares.
#![forbid(unsafe_code)]

mod redact;

/// Management API served by `shunt-control`.
pub mod management {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/shunt.management.v1.rs"));
}

/// Local agent API served by `shunt-dataplane` on a unix socket.
pub mod agent {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/shunt.agent.v1.rs"));
}

/// Signaling messages between partner appliances (QUIC streams).
pub mod signaling {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/shunt.signaling.v1.rs"));
}

/// The string `Keystore.Reset` requires in its `confirm` field.
pub const RESET_CONFIRMATION: &str = "destroy all keys and encrypted data";

#[cfg(test)]
mod tests {
    /// Fails when `src/gen/` (checked in, reviewed) and the code generated
    /// from the `.proto` files in this build disagree.
    #[test]
    fn generated_code_matches_proto() {
        let pairs = [
            (
                include_str!(concat!(env!("OUT_DIR"), "/shunt.management.v1.rs")),
                include_str!("gen/shunt.management.v1.rs"),
                "shunt.management.v1",
            ),
            (
                include_str!(concat!(env!("OUT_DIR"), "/shunt.agent.v1.rs")),
                include_str!("gen/shunt.agent.v1.rs"),
                "shunt.agent.v1",
            ),
            (
                include_str!(concat!(env!("OUT_DIR"), "/shunt.signaling.v1.rs")),
                include_str!("gen/shunt.signaling.v1.rs"),
                "shunt.signaling.v1",
            ),
        ];
        for (generated, checked_in, package) in pairs {
            assert!(
                generated == checked_in,
                "src/gen/{package}.rs is stale: run `SHUNT_UPDATE_PROTO_GEN=1 cargo build -p shunt-proto` and commit it"
            );
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let login = super::management::LoginRequest {
            account: "admin".into(),
            password: "hunter2-secret".into(),
        };
        let shown = format!("{login:?}");
        assert!(shown.contains("admin"));
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        let key = super::agent::SessionKey {
            direction: 1,
            key: vec![0xab; 32],
        };
        let shown = format!("{key:?}");
        assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
        let store = super::agent::SetHistoryStoreRequest {
            dir: "/var/lib/shunt/history".into(),
            size_mib: 1024,
            encrypt: true,
            key: vec![0xcd; 64],
        };
        let shown = format!("{store:?}");
        assert!(shown.contains("/var/lib/shunt/history"), "{shown}");
        assert!(!shown.contains("205") && !shown.contains("cd,"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
