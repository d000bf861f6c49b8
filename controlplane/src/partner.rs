//! Partners: the static configuration (address, LAN prefixes), what the
//! peering and the data plane report about each, and the traffic mode that
//! follows from both (the mode matrix of DESIGN.md section 2).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use shunt_proto::management as m;

/// A partner as configured by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerConfig {
    pub address: String,
    pub prefixes: Vec<String>,
}

/// What the signaling and the data plane currently know about a partner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerRuntime {
    /// A signaling connection is up.
    pub connected: bool,
    /// Whether the partner announced secure peering (unknown until reached).
    pub partner_secure_peering: Option<bool>,
    /// Both sides authenticated each other over mutual TLS.
    pub authenticated: bool,
    /// Why authentication failed (wrong CA, expired, name mismatch, ...).
    pub failure: Option<String>,
    pub counters: Counters,
    /// Packets dropped for this partner by reason, as the data plane names them
    /// (`replay`, `auth_failed`, `history_miss`, ...; see `metrics::DROP_REASONS`).
    pub drops: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_before_compression: u64,
    pub bytes_after_compression: u64,
    pub packets: u64,
    pub errors: u64,
}

impl From<Counters> for m::PartnerCounters {
    fn from(c: Counters) -> Self {
        Self {
            bytes_before_compression: c.bytes_before_compression,
            bytes_after_compression: c.bytes_after_compression,
            packets: c.packets,
            errors: c.errors,
        }
    }
}

/// This appliance's side of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSecurity {
    pub peering_enabled: bool,
    /// The keystore exists but is sealed: secure peering and compression are off.
    pub keystore_sealed: bool,
    pub licence_valid: bool,
}

/// How traffic to one partner is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficMode {
    CompressedEncrypted,
    Compressed,
    Plain,
    /// Not known until the partner is reached.
    Unknown,
}

impl TrafficMode {
    pub fn describe(self) -> &'static str {
        match self {
            Self::CompressedEncrypted => "compressed, encrypted",
            Self::Compressed => "compressed, not encrypted",
            Self::Plain => "not compressed, not encrypted",
            Self::Unknown => "not accelerated until the partner is reached",
        }
    }
}

/// The decision for one partner: secure or not, why, and the traffic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub secure: bool,
    pub reason: String,
    pub traffic: TrafficMode,
}

/// Applies DESIGN.md section 2, rules 1, 2, 5, 7 and 10.
pub fn verdict(local: LocalSecurity, runtime: &PartnerRuntime) -> Verdict {
    let not_secure = |reason: &str, traffic| Verdict {
        secure: false,
        reason: reason.to_owned(),
        traffic,
    };
    if local.keystore_sealed {
        return not_secure(
            "keystore sealed: open it to enable secure peering and compression",
            TrafficMode::Plain,
        );
    }
    if local.peering_enabled && !local.licence_valid {
        // The peering states the cause (e.g. "no licence: the licence L
        // expired at T") once it has seen the change; until then a generic one.
        let reason = match runtime.failure.as_deref() {
            Some(why) if why.starts_with("no licence") => why,
            _ => "no licence: no valid crypto licence; see `shuntctl licence show`",
        };
        return not_secure(reason, TrafficMode::Plain);
    }
    let Some(remote) = runtime.partner_secure_peering else {
        return not_secure("partner not reached yet", TrafficMode::Unknown);
    };
    match (local.peering_enabled, remote) {
        (false, false) => not_secure(
            "secure peering is off on both appliances",
            TrafficMode::Compressed,
        ),
        (false, true) => not_secure(
            "secure peering is off on this appliance",
            TrafficMode::Plain,
        ),
        (true, false) => not_secure(
            "peer not secured: secure peering is off on the partner",
            TrafficMode::Plain,
        ),
        (true, true) if runtime.authenticated => Verdict {
            secure: true,
            reason: String::new(),
            traffic: TrafficMode::CompressedEncrypted,
        },
        (true, true) => not_secure(
            runtime
                .failure
                .as_deref()
                .unwrap_or("authentication with the partner has not completed"),
            TrafficMode::Plain,
        ),
    }
}

/// The operator's view of a partner.
pub fn view(
    name: &str,
    config: &PartnerConfig,
    runtime: &PartnerRuntime,
    local: LocalSecurity,
) -> m::Partner {
    let verdict = verdict(local, runtime);
    let connection_status = if runtime.connected {
        "Connected Available"
    } else {
        "Disconnected"
    };
    m::Partner {
        name: name.to_owned(),
        address: config.address.clone(),
        prefixes: config.prefixes.clone(),
        secure: verdict.secure,
        connection_status: connection_status.to_owned(),
        reason: verdict.reason,
        traffic: verdict.traffic.describe().to_owned(),
        counters: Some(runtime.counters.into()),
    }
}

/// Checks an operator's partner definition; the message says what is wrong.
pub fn validate(name: &str, config: &PartnerConfig) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "partner name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
        ));
    }
    let port_ok = config
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok {
        return Err(format!(
            "partner address {:?}: give host:port, e.g. 192.0.2.10:4500",
            config.address
        ));
    }
    for prefix in &config.prefixes {
        parse_prefix(prefix)?;
    }
    Ok(())
}

/// Parses "10.1.0.0/16" or "2001:db8::/32".
pub fn parse_prefix(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("prefix {text:?}: give address/length, e.g. 10.1.0.0/16");
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(enabled: bool) -> LocalSecurity {
        LocalSecurity {
            peering_enabled: enabled,
            keystore_sealed: false,
            licence_valid: true,
        }
    }

    fn remote(enabled: bool, authenticated: bool, failure: Option<&str>) -> PartnerRuntime {
        PartnerRuntime {
            connected: true,
            partner_secure_peering: Some(enabled),
            authenticated,
            failure: failure.map(str::to_owned),
            ..Default::default()
        }
    }

    /// The mode matrix of DESIGN.md section 2, rule 5, row by row.
    #[test]
    fn mode_matrix() {
        let v = verdict(local(false), &remote(false, false, None));
        assert_eq!((v.secure, v.traffic), (false, TrafficMode::Compressed));
        let v = verdict(local(true), &remote(false, false, None));
        assert_eq!((v.secure, v.traffic), (false, TrafficMode::Plain));
        assert!(v.reason.contains("peer not secured"));
        let v = verdict(local(false), &remote(true, false, None));
        assert_eq!((v.secure, v.traffic), (false, TrafficMode::Plain));
        let v = verdict(local(true), &remote(true, true, None));
        assert_eq!(
            (v.secure, v.traffic),
            (true, TrafficMode::CompressedEncrypted)
        );
        assert!(v.reason.is_empty());
        let v = verdict(local(true), &remote(true, false, Some("wrong CA")));
        assert_eq!(
            (v.secure, v.traffic, v.reason.as_str()),
            (false, TrafficMode::Plain, "wrong CA")
        );
    }

    /// Rule 7: while sealed, neither secure peering nor compression.
    #[test]
    fn sealed_keystore_turns_everything_off() {
        let sealed = LocalSecurity {
            keystore_sealed: true,
            ..local(true)
        };
        let v = verdict(sealed, &remote(true, true, None));
        assert_eq!((v.secure, v.traffic), (false, TrafficMode::Plain));
        assert!(v.reason.contains("keystore sealed"));
        let sealed_off = LocalSecurity {
            keystore_sealed: true,
            ..local(false)
        };
        assert_eq!(
            verdict(sealed_off, &remote(false, false, None)).traffic,
            TrafficMode::Plain
        );
    }

    /// Rule 10: no licence, no secure relationship.
    #[test]
    fn lapsed_licence_is_not_secure() {
        let unlicensed = LocalSecurity {
            licence_valid: false,
            ..local(true)
        };
        let v = verdict(unlicensed, &remote(true, true, None));
        assert!(!v.secure && v.reason.contains("licence"));
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let ok = PartnerConfig {
            address: "192.0.2.1:4500".into(),
            prefixes: vec!["10.2.0.0/16".into()],
        };
        validate("site-b", &ok).unwrap();
        let bad = PartnerConfig {
            address: "192.0.2.1".into(),
            prefixes: vec![],
        };
        assert!(validate("site-b", &bad).unwrap_err().contains("host:port"));
        let bad = PartnerConfig {
            prefixes: vec!["10.2.0.0/33".into()],
            ..ok
        };
        assert!(
            validate("site-b", &bad)
                .unwrap_err()
                .contains("10.2.0.0/33")
        );
    }
}
