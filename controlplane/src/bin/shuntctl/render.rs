//! How replies are shown: tables and `key: value` lines, or JSON with enum
//! values as words.

use serde_json::{Value, json};
use shunt_proto::management as m;

use crate::Context;
use crate::output::{self, table, when};

/// Prints `value` as JSON with `--json`, else runs `human`.
pub(crate) fn show(cx: &Context, value: Value, human: impl FnOnce()) {
    if cx.cli.json {
        output::json(&value)
    } else {
        human()
    }
}

pub(crate) fn print_partners(cx: &Context, list: &m::PartnerList) {
    show(
        cx,
        json!(list.partners.iter().map(partner_json).collect::<Vec<_>>()),
        || {
            let rows: Vec<Vec<String>> = list
                .partners
                .iter()
                .map(|p| {
                    let c = p.counters.unwrap_or_default();
                    vec![
                        p.name.clone(),
                        p.address.clone(),
                        p.prefixes.join(","),
                        p.secure.to_string(),
                        p.connection_status.clone(),
                        p.traffic.clone(),
                        format!(
                            "{}/{}",
                            c.bytes_before_compression, c.bytes_after_compression
                        ),
                        if p.reason.is_empty() {
                            "-".into()
                        } else {
                            p.reason.clone()
                        },
                    ]
                })
                .collect();
            table(
                &[
                    "PARTNER",
                    "ADDRESS",
                    "PREFIXES",
                    "SECURE",
                    "STATUS",
                    "TRAFFIC",
                    "BYTES IN/OUT",
                    "REASON",
                ],
                &rows,
            )
        },
    );
}

pub(crate) fn print_rules(cx: &Context, rules: &[m::Rule]) {
    let action = |a: i32| {
        if a == m::RuleAction::PassThrough as i32 {
            "pass-through"
        } else {
            "accelerate"
        }
    };
    show(
        cx,
        json!(
            rules
                .iter()
                .map(
                    |r| json!({"name": r.name, "priority": r.priority, "source": r.source_prefix,
            "destination": r.destination_prefix, "protocol": r.protocol, "port_low": r.port_low,
            "port_high": r.port_high, "action": action(r.action)})
                )
                .collect::<Vec<_>>()
        ),
        || {
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|r| {
                    vec![
                        r.priority.to_string(),
                        r.name.clone(),
                        r.source_prefix.clone(),
                        r.destination_prefix.clone(),
                        r.protocol.clone(),
                        format!("{}-{}", r.port_low, r.port_high),
                        action(r.action).into(),
                    ]
                })
                .collect();
            table(
                &[
                    "PRIO",
                    "RULE",
                    "SOURCE",
                    "DESTINATION",
                    "PROTO",
                    "PORTS",
                    "ACTION",
                ],
                &rows,
            )
        },
    );
}

pub(crate) fn print_stats(cx: &Context, s: &m::StatsSnapshot) {
    let counters = |c: &m::PartnerCounters| {
        json!({"bytes_before_compression": c.bytes_before_compression, "bytes_after_compression": c.bytes_after_compression,
               "packets": c.packets, "errors": c.errors})
    };
    let total = s.total.unwrap_or_default();
    let mut names: Vec<&String> = s.per_partner.keys().collect();
    names.sort();
    show(
        cx,
        json!({"taken_at_unix_ms": s.taken_at_unix_ms, "total": counters(&total),
               "per_partner": names.iter().map(|n| (n.to_string(), counters(&s.per_partner[*n]))).collect::<serde_json::Map<_, _>>(),
               "management_calls": s.management_calls, "failed_logins": s.failed_logins}),
        || {
            let row = |name: &str, c: &m::PartnerCounters| {
                vec![
                    name.to_owned(),
                    c.bytes_before_compression.to_string(),
                    c.bytes_after_compression.to_string(),
                    c.packets.to_string(),
                    c.errors.to_string(),
                ]
            };
            let mut rows: Vec<Vec<String>> =
                names.iter().map(|n| row(n, &s.per_partner[*n])).collect();
            rows.push(row("(total)", &total));
            table(
                &[
                    "PARTNER",
                    "BYTES BEFORE",
                    "BYTES AFTER",
                    "PACKETS",
                    "ERRORS",
                ],
                &rows,
            );
            println!(
                "management calls: {}, failed logins: {}",
                s.management_calls, s.failed_logins
            );
        },
    );
}

pub(crate) fn print_peers(cx: &Context, peers: &[m::ConnectedPeer]) {
    show(
        cx,
        json!(peers.iter().map(|p| json!({"name": p.name, "address": p.address, "subject": p.certificate_subject,
            "expires_at_unix": p.expires_at_unix})).collect::<Vec<_>>()),
        || {
            let rows: Vec<Vec<String>> = peers
                .iter()
                .map(|p| vec![p.name.clone(), p.address.clone(), p.certificate_subject.clone(), when(p.expires_at_unix)])
                .collect();
            table(&["PEER", "ADDRESS", "SUBJECT", "EXPIRES"], &rows)
        },
    );
}

pub(crate) fn done(cx: &Context, message: &str) {
    show(cx, json!({"ok": true}), || println!("{message}"));
}

pub(crate) fn role_name(r: i32) -> &'static str {
    match m::Role::try_from(r) {
        Ok(m::Role::Admin) => "admin",
        Ok(m::Role::KeystoreAdmin) => "keystore-admin",
        _ => "unknown",
    }
}

pub(crate) fn state_name(s: i32) -> &'static str {
    match m::KeystoreState::try_from(s) {
        Ok(m::KeystoreState::Uninitialized) => "uninitialized",
        Ok(m::KeystoreState::Sealed) => "sealed",
        Ok(m::KeystoreState::Open) => "open",
        _ => "unknown",
    }
}

pub(crate) fn mode_name(mode: i32) -> &'static str {
    match m::CredentialMode::try_from(mode) {
        Ok(m::CredentialMode::Own) => "own",
        Ok(m::CredentialMode::PrivateCa) => "private-ca",
        _ => "not set",
    }
}

pub(crate) fn verification_name(v: i32) -> &'static str {
    match m::Verification::try_from(v) {
        Ok(m::Verification::ChainOnly) => "chain-only",
        _ => "full",
    }
}

pub(crate) fn keystore_json(s: &m::KeystoreStatus) -> Value {
    json!({"state": state_name(s.state), "secrets": s.secret_names, "effect": s.effect,
           "kdf": {"algorithm": "argon2id", "memory_kib": s.kdf_memory_kib, "iterations": s.kdf_iterations,
                   "parallelism": s.kdf_parallelism}})
}

pub(crate) fn keystore_line(s: &m::KeystoreStatus) -> String {
    if s.effect.is_empty() {
        state_name(s.state).into()
    } else {
        format!("{} ({})", state_name(s.state), s.effect)
    }
}

pub(crate) fn licence_json(l: &m::LicenceStatus) -> Value {
    json!({"valid": l.valid, "holder": l.holder, "expires_at_unix": l.expires_at_unix, "source": l.source, "detail": l.detail})
}

pub(crate) fn licence_line(l: &m::LicenceStatus) -> String {
    if l.valid {
        format!("valid, {} until {}", l.holder, when(l.expires_at_unix))
    } else {
        format!("none ({})", l.detail)
    }
}

pub(crate) fn peering_json(p: &m::PeeringStatus) -> Value {
    json!({"enabled": p.enabled, "mode": mode_name(p.mode), "verification": verification_name(p.verification),
           "cipher_spec": p.cipher_spec, "detail": p.detail, "credentials_installed": p.credentials_installed,
           "ca_stores": p.ca_stores, "private_ca": p.private_ca})
}

pub(crate) fn peering_line(p: &m::PeeringStatus) -> String {
    match (p.enabled, p.detail.is_empty()) {
        (true, true) => "enabled, active".into(),
        (_, false) => format!(
            "{} ({})",
            if p.enabled { "enabled" } else { "disabled" },
            p.detail
        ),
        (false, true) => "disabled".into(),
    }
}

pub(crate) fn partner_json(p: &m::Partner) -> Value {
    let c = p.counters.unwrap_or_default();
    json!({"name": p.name, "address": p.address, "prefixes": p.prefixes, "secure": p.secure,
           "connection_status": p.connection_status, "reason": p.reason, "traffic": p.traffic,
           "counters": {"bytes_before_compression": c.bytes_before_compression,
                        "bytes_after_compression": c.bytes_after_compression, "packets": c.packets, "errors": c.errors}})
}
