//! The Prometheus endpoint, scraped over HTTP on loopback: a real `shunt-control`
//! started with `--metrics-listen`, whose keystore and partner series follow the
//! changes made through the management API; and an in-process appliance whose
//! partner counters and drops (as the data plane reports them) appear in the scrape.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use shunt_control::appliance::{Appliance, ApplianceOptions};
use shunt_control::auth::AuthSettings;
use shunt_control::client::Client;
use shunt_control::keystore::KdfParams;
use shunt_control::licensing::NoVerifyingKey;
use shunt_control::partner::PartnerConfig;
use shunt_control::store::PARTNERS;
use shunt_proto::management as m;

const ADMIN_PASSWORD: &str = "bootstrap-admin-pw";

/// One parsed sample: metric name and sorted labels.
type Key = (String, BTreeMap<String, String>);

#[tokio::test]
async fn daemon_metrics_follow_keystore_and_partners() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_daemon(dir.path());
    let url = daemon.metrics.clone();

    let (content_type, body) = scrape(&url);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let s = parse(&body);
    assert_eq!(
        value(&s, "shunt_keystore_state", &[("state", "uninitialized")]),
        1
    );
    assert_eq!(value(&s, "shunt_keystore_state", &[("state", "open")]), 0);
    assert_eq!(value(&s, "shunt_partners", &[]), 0);
    assert_eq!(value(&s, "shunt_secure_peering_enabled", &[]), 0);

    let mut admin = Client::connect(&daemon.address, &daemon.fingerprint)
        .await
        .unwrap();
    admin.login("admin", ADMIN_PASSWORD).await.unwrap();
    admin
        .keystore()
        .initialize(m::InitializeKeystoreRequest {
            password: "keystore-password-1".into(),
        })
        .await
        .unwrap();
    admin
        .partners()
        .add_partner(m::AddPartnerRequest {
            name: "site-b".into(),
            address: "192.0.2.2:4790".into(),
            prefixes: vec!["10.2.0.0/16".into()],
        })
        .await
        .unwrap();
    let s = parse(&scrape(&url).1);
    assert_eq!(value(&s, "shunt_keystore_state", &[("state", "open")]), 1);
    assert_eq!(
        value(&s, "shunt_keystore_state", &[("state", "uninitialized")]),
        0
    );
    assert_eq!(value(&s, "shunt_partners", &[]), 1);
    let p = [("partner", "site-b")];
    assert_eq!(value(&s, "shunt_partner_connected", &p), 0);
    assert_eq!(value(&s, "shunt_partner_secure", &p), 0);
    assert_eq!(
        value(
            &s,
            "shunt_partner_traffic_mode",
            &[("partner", "site-b"), ("mode", "unknown")]
        ),
        1
    );
    assert_eq!(
        value(&s, "shunt_partner_bytes_before_compression_total", &p),
        0
    );
    assert!(value(&s, "shunt_management_calls_total", &[]) >= 2);

    admin
        .keystore()
        .seal(m::SealKeystoreRequest {})
        .await
        .unwrap();
    let s = parse(&scrape(&url).1);
    assert_eq!(value(&s, "shunt_keystore_state", &[("state", "sealed")]), 1);
    assert_eq!(
        value(
            &s,
            "shunt_partner_traffic_mode",
            &[("partner", "site-b"), ("mode", "plain")]
        ),
        1,
        "sealed keystore: nothing compressed or encrypted"
    );

    // Only /metrics, only GET.
    assert!(
        raw_request(&url, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404")
    );
    assert!(
        raw_request(&url, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 405")
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "daemon still runs"
    );
}

#[tokio::test]
async fn partner_counters_and_drops_are_exposed() {
    let dir = tempfile::tempdir().unwrap();
    let options = ApplianceOptions {
        state_dir: dir.path().join("state"),
        auth: AuthSettings::default(),
        kdf: KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        },
    };
    let appliance = Arc::new(Appliance::open(&options, Box::new(NoVerifyingKey)).unwrap());
    appliance
        .store
        .put(
            PARTNERS,
            "site-b",
            &PartnerConfig {
                address: "192.0.2.2:4790".into(),
                prefixes: vec!["10.2.0.0/16".into()],
            },
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(shunt_control::metrics::serve(appliance.clone(), listener));

    let fetch = |url: String| async move {
        tokio::task::spawn_blocking(move || parse(&scrape(&url).1))
            .await
            .unwrap()
    };
    let p = [("partner", "site-b")];
    let s = fetch(url.clone()).await;
    assert_eq!(value(&s, "shunt_partner_replay_failures_total", &p), 0);
    assert_eq!(
        value(
            &s,
            "shunt_partner_drops_total",
            &[("partner", "site-b"), ("reason", "history_miss")]
        ),
        0
    );

    appliance.update_partner_runtime("site-b", |r| {
        r.connected = true;
        r.partner_secure_peering = Some(false);
        r.counters.bytes_before_compression = 10_000;
        r.counters.bytes_after_compression = 2_500;
        r.counters.packets = 12;
        r.drops.insert("replay".into(), 3);
        r.drops.insert("auth_failed".into(), 2);
        r.drops.insert("history_miss".into(), 5);
    });
    let s = fetch(url.clone()).await;
    assert_eq!(value(&s, "shunt_partner_connected", &p), 1);
    assert_eq!(
        value(&s, "shunt_partner_bytes_before_compression_total", &p),
        10_000
    );
    assert_eq!(
        value(&s, "shunt_partner_bytes_after_compression_total", &p),
        2_500
    );
    assert_eq!(value(&s, "shunt_partner_packets_total", &p), 12);
    assert_eq!(value(&s, "shunt_partner_replay_failures_total", &p), 3);
    assert_eq!(value(&s, "shunt_partner_auth_failures_total", &p), 2);
    assert_eq!(
        value(
            &s,
            "shunt_partner_drops_total",
            &[("partner", "site-b"), ("reason", "history_miss")]
        ),
        5
    );
    // Keystore uninitialized, peering off on both sides: compressed, not encrypted.
    assert_eq!(
        value(
            &s,
            "shunt_partner_traffic_mode",
            &[("partner", "site-b"), ("mode", "compressed")]
        ),
        1
    );
}

struct RunningDaemon {
    child: Child,
    address: String,
    fingerprint: String,
    metrics: String,
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &std::path::Path) -> RunningDaemon {
    let bootstrap = dir.join("bootstrap");
    std::fs::write(&bootstrap, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shunt-control"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args([
            "--keystore-kdf-memory-kib",
            "256",
            "--keystore-kdf-iterations",
            "1",
        ])
        .arg("--bootstrap-admin-password-file")
        .arg(&bootstrap)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("shunt-control starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut address, mut fingerprint, mut metrics) = (None, None, None);
    while address.is_none() || fingerprint.is_none() || metrics.is_none() {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("shunt-control exited before listening: {:?}", child.wait());
        };
        if let Some(a) = line.strip_prefix("listening ") {
            address = Some(a.to_owned());
        } else if let Some(f) = line.strip_prefix("fingerprint ") {
            fingerprint = Some(f.to_owned());
        } else if let Some(u) = line.strip_prefix("metrics ") {
            metrics = Some(u.to_owned());
        }
    }
    // Keep reading, so the daemon never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let metrics = metrics.unwrap();
    assert!(metrics.starts_with("http://127.0.0.1:"), "{metrics}");
    RunningDaemon {
        child,
        address: address.unwrap(),
        fingerprint: fingerprint.unwrap(),
        metrics,
    }
}

/// GET `url` (http://host:port/path); returns the content type and the body.
fn scrape(url: &str) -> (String, String) {
    let path = url
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .map(|(_, p)| format!("/{p}"))
        .unwrap();
    let response = raw_request(
        url,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n"),
    );
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    assert_eq!(header("content-length"), body.len().to_string());
    (header("content-type"), body.to_owned())
}

fn raw_request(url: &str, request: &str) -> String {
    let host = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Parses the text exposition format strictly: every family has HELP and TYPE
/// before its samples, every sample line is `name{label="value",...} integer`, names
/// and label names are valid, no sample repeats.
fn parse(text: &str) -> BTreeMap<Key, u64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "bad name in {line:?}");
            assert!(helped.insert(name.to_owned()), "HELP repeated: {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                "{line:?}"
            );
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: u64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("}"))),
            None => (series, BTreeMap::new()),
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        assert!(typed.contains_key(name), "sample before its TYPE: {line:?}");
        assert!(helped.contains(name), "sample without HELP: {line:?}");
        if typed[name] == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {name}");
        }
        assert!(
            samples.insert((name.to_owned(), labels), value).is_none(),
            "duplicate sample {line:?}"
        );
    }
    samples
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").expect("label=\"value\"");
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name {key}"
        );
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}"),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    labels
}

fn value(samples: &BTreeMap<Key, u64>, name: &str, labels: &[(&str, &str)]) -> u64 {
    let key = (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}
