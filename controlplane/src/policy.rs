//! Acceleration rules: which traffic is steered into the fast path.

use serde::{Deserialize, Serialize};
use shunt_proto::management as m;

use crate::partner::parse_prefix;

/// A rule as stored in the configuration database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    pub priority: u32,
    pub source_prefix: String,
    pub destination_prefix: String,
    pub protocol: String,
    pub port_low: u16,
    pub port_high: u16,
    pub accelerate: bool,
}

impl RuleRecord {
    pub fn from_proto(rule: &m::Rule) -> Self {
        Self {
            priority: rule.priority,
            source_prefix: rule.source_prefix.clone(),
            destination_prefix: rule.destination_prefix.clone(),
            protocol: if rule.protocol.is_empty() {
                "any".into()
            } else {
                rule.protocol.to_ascii_lowercase()
            },
            port_low: u16::try_from(rule.port_low).unwrap_or(u16::MAX),
            port_high: u16::try_from(rule.port_high).unwrap_or(u16::MAX),
            accelerate: rule.action != m::RuleAction::PassThrough as i32,
        }
    }

    pub fn to_proto(&self, name: &str) -> m::Rule {
        m::Rule {
            name: name.to_owned(),
            priority: self.priority,
            source_prefix: self.source_prefix.clone(),
            destination_prefix: self.destination_prefix.clone(),
            protocol: self.protocol.clone(),
            port_low: self.port_low.into(),
            port_high: self.port_high.into(),
            action: if self.accelerate {
                m::RuleAction::Accelerate
            } else {
                m::RuleAction::PassThrough
            } as i32,
        }
    }
}

/// Checks a rule; the message says what is wrong and how to write it.
pub fn validate_rule(name: &str, rule: &RuleRecord) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("give the rule a name of 1-64 characters".into());
    }
    parse_prefix(&rule.source_prefix)?;
    parse_prefix(&rule.destination_prefix)?;
    if !["tcp", "udp", "any"].contains(&rule.protocol.as_str()) {
        return Err(format!("protocol {:?}: use tcp, udp or any", rule.protocol));
    }
    if rule.port_low > rule.port_high {
        return Err(format!(
            "port range {}-{} is empty: give low <= high",
            rule.port_low, rule.port_high
        ));
    }
    Ok(())
}
