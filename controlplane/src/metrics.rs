//! Prometheus text exposition (format 0.0.4) of the appliance's state, served over
//! plain HTTP on `GET /metrics` when `shunt-control --metrics-listen` asks for it.
//!
//! Everything comes from state the daemon already keeps: the keystore state, the
//! secure-peering setting, the configured partners with what the peering and the
//! data plane reported about them ([`crate::partner::PartnerRuntime`]), and the
//! management API's own counters. Nothing secret is exposed, but the endpoint has no
//! authentication: it listens on loopback unless the operator says otherwise.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::appliance::Appliance;
use crate::keystore::KeystoreState;
use crate::partner::{PartnerConfig, TrafficMode, verdict};
use crate::store::PARTNERS;

/// Where `--metrics-listen` without an address listens (9464: the port commonly
/// used by Prometheus exporters of this kind).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Drop reasons always exposed (0 until the data plane reports one), so that every
/// series exists from the first scrape.
pub const DROP_REASONS: [&str; 12] = [
    "replay",
    "auth_failed",
    "history_miss",
    "stale_epoch",
    "malformed",
    "no_next_hop",
    "too_big",
    "no_buffer",
    "seal_refused",
    "ttl_expired",
    "pass_through",
    "queue_full",
];

/// Largest request head read; longer requests are refused.
const MAX_REQUEST: usize = 8 << 10;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait.
const MAX_CONNECTIONS: usize = 16;

/// Binds `address` and serves the metrics until the runtime shuts down; returns the
/// bound address (port 0 picks a free one).
pub async fn spawn(appliance: Arc<Appliance>, address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "metrics endpoint reachable beyond this host; it has no authentication");
    }
    tracing::info!(%bound, "metrics endpoint listening");
    tokio::spawn(serve(appliance, listener));
    Ok(bound)
}

/// Accepts connections on `listener` and answers each with one response.
pub async fn serve(appliance: Arc<Appliance>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let appliance = appliance.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(&appliance, stream).await {
                tracing::debug!(%peer, %error, "metrics request failed");
            }
            drop(permit);
        });
    }
}

async fn answer(appliance: &Appliance, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_REQUEST {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    })
    .await
    .unwrap_or(Ok(false))?;
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[]));
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (complete, method, path) {
        (false, _, _) => (
            "400 Bad Request",
            "incomplete or oversized request\n".into(),
        ),
        (true, "GET" | "HEAD", "/metrics") => ("200 OK", render(appliance)),
        (true, "GET" | "HEAD", _) => ("404 Not Found", "metrics are at /metrics\n".into()),
        _ => ("405 Method Not Allowed", "use GET /metrics\n".into()),
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The exposition text of `appliance` now.
pub fn render(appliance: &Appliance) -> String {
    let mut out = Exposition::default();
    let keystore = appliance.keystore_state();
    out.family(
        "shunt_keystore_state",
        "gauge",
        "1 for the keystore's current state (uninitialized, sealed, open), 0 for the others.",
    );
    for (name, state) in [
        ("uninitialized", KeystoreState::Uninitialized),
        ("sealed", KeystoreState::Sealed),
        ("open", KeystoreState::Open),
    ] {
        out.sample(
            "shunt_keystore_state",
            &[("state", name)],
            u64::from(keystore == state),
        );
    }
    let local = appliance.local_security();
    out.family(
        "shunt_secure_peering_enabled",
        "gauge",
        "1 when secure peering is enabled on this appliance.",
    );
    out.sample(
        "shunt_secure_peering_enabled",
        &[],
        u64::from(local.peering_enabled),
    );
    out.family(
        "shunt_uptime_seconds",
        "gauge",
        "Seconds since shunt-control started.",
    );
    out.sample(
        "shunt_uptime_seconds",
        &[],
        appliance.started.elapsed().as_secs(),
    );
    out.family(
        "shunt_management_calls_total",
        "counter",
        "Management API calls served.",
    );
    out.sample(
        "shunt_management_calls_total",
        &[],
        appliance
            .management_calls
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    out.family(
        "shunt_failed_logins_total",
        "counter",
        "Failed management logins.",
    );
    out.sample(
        "shunt_failed_logins_total",
        &[],
        appliance.auth.failed_logins(),
    );

    let partners: Vec<(String, PartnerConfig)> = match appliance.store.list(PARTNERS) {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(%error, "metrics: cannot list partners");
            Vec::new()
        }
    };
    out.family(
        "shunt_partners",
        "gauge",
        "Partners configured on this appliance.",
    );
    out.sample("shunt_partners", &[], partners.len() as u64);
    let runtimes: Vec<_> = partners
        .iter()
        .map(|(name, _)| (name.as_str(), appliance.partner_runtime(name)))
        .collect();
    let per_partner =
        |out: &mut Exposition,
         name: &str,
         kind: &str,
         help: &str,
         value: &dyn Fn(&crate::partner::PartnerRuntime) -> u64| {
            out.family(name, kind, help);
            for (partner, runtime) in &runtimes {
                out.sample(name, &[("partner", partner)], value(runtime));
            }
        };
    per_partner(
        &mut out,
        "shunt_partner_connected",
        "gauge",
        "1 while the signaling connection to the partner is up (Connected Available).",
        &|r| u64::from(r.connected),
    );
    per_partner(
        &mut out,
        "shunt_partner_secure",
        "gauge",
        "1 when a secure peer relationship exists (both sides authenticated).",
        &|r| u64::from(verdict(local, r).secure),
    );
    out.family(
        "shunt_partner_traffic_mode",
        "gauge",
        "1 for how traffic to the partner is carried now, 0 for the other modes.",
    );
    for (partner, runtime) in &runtimes {
        let mode = verdict(local, runtime).traffic;
        for (label, m) in [
            ("compressed-encrypted", TrafficMode::CompressedEncrypted),
            ("compressed", TrafficMode::Compressed),
            ("plain", TrafficMode::Plain),
            ("unknown", TrafficMode::Unknown),
        ] {
            out.sample(
                "shunt_partner_traffic_mode",
                &[("partner", partner), ("mode", label)],
                u64::from(mode == m),
            );
        }
    }
    per_partner(
        &mut out,
        "shunt_partner_bytes_before_compression_total",
        "counter",
        "Payload bytes toward the partner before compression.",
        &|r| r.counters.bytes_before_compression,
    );
    per_partner(
        &mut out,
        "shunt_partner_bytes_after_compression_total",
        "counter",
        "Payload bytes toward the partner after compression.",
        &|r| r.counters.bytes_after_compression,
    );
    per_partner(
        &mut out,
        "shunt_partner_packets_total",
        "counter",
        "Packets carried to and from the partner.",
        &|r| r.counters.packets,
    );
    per_partner(
        &mut out,
        "shunt_partner_errors_total",
        "counter",
        "Errors the data plane counted for the partner.",
        &|r| r.counters.errors,
    );
    per_partner(
        &mut out,
        "shunt_partner_replay_failures_total",
        "counter",
        "Tunnel packets from the partner dropped as replayed (duplicate or too old).",
        &|r| r.drops.get("replay").copied().unwrap_or(0),
    );
    per_partner(
        &mut out,
        "shunt_partner_auth_failures_total",
        "counter",
        "Tunnel packets from the partner that failed authentication.",
        &|r| r.drops.get("auth_failed").copied().unwrap_or(0),
    );
    out.family(
        "shunt_partner_drops_total",
        "counter",
        "Packets dropped for the partner, by reason.",
    );
    for (partner, runtime) in &runtimes {
        let extra = runtime
            .drops
            .keys()
            .map(String::as_str)
            .filter(|r| !DROP_REASONS.contains(r));
        for reason in DROP_REASONS.into_iter().chain(extra) {
            out.sample(
                "shunt_partner_drops_total",
                &[("partner", partner), ("reason", reason)],
                runtime.drops.get(reason).copied().unwrap_or(0),
            );
        }
    }
    out.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut e = Exposition::default();
        e.sample("x", &[("partner", "a\"b\\c\nd")], 7);
        assert_eq!(e.text, "x{partner=\"a\\\"b\\\\c\\nd\"} 7\n");
    }
}
