//! Compression history on disk in agent mode (run as root): both sites run the data
//! plane in agent mode on the testbed, driven over the agent API's unix socket by the
//! control plane's client. `SetHistoryStore` gives each a directory and a 64-byte
//! XTS key; after a transfer the partner's history files exist and hold none of the
//! transferred bytes in clear; after both data planes restart the repeated transfer
//! crosses as references; with encryption turned off the files are discarded, and
//! the bytes are then found in clear (so the search above can find them).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shunt_dataplane::agent;
use shunt_dataplane::io::afxdp::BindMode;
use shunt_dataplane::pipeline::{AgentSettings, Appliance, ApplianceOptions, ApplianceStats};
use shunt_dataplane::xdp::ModeRequest;
use shunt_proto::agent as pb;
use shunt_proto::agent::agent_client::AgentClient;
use shunt_tests::sites::{counter, random_bytes, transfer};
use shunt_tests::testbed::{Appliance as Site, Testbed};
use tonic::transport::Channel;

/// The file sent: it fits the history (16 MiB per lane) whole.
const FILE: usize = 8 << 20;
const HISTORY_MIB: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(60);

/// One site's data plane in agent mode with its agent server, on a runtime whose
/// threads live in the site's namespace (the server finds its addresses there).
struct Running {
    rt: tokio::runtime::Runtime,
    appliance: Arc<Mutex<Appliance>>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
    client: AgentClient<Channel>,
}

fn start(site: &Site, socket: &Path) -> Running {
    let rt = site
        .netns
        .enter(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        })
        .expect("enter")
        .expect("runtime");
    let settings = AgentSettings {
        lan_interface: site.lan_if.clone(),
        wan_interface: site.wan_if.clone(),
        ..AgentSettings::default()
    };
    let options = ApplianceOptions {
        xdp_mode: ModeRequest::Driver,
        bind: BindMode::Copy,
        history_bytes: HISTORY_MIB << 20,
        max_workers: None,
        compression: true,
    };
    let appliance = site
        .netns
        .enter(move || Appliance::start_agent(&settings, &options))
        .expect("enter")
        .expect("appliance starts in agent mode (run as root)");
    let appliance = Arc::new(Mutex::new(appliance));
    let listener = rt.block_on(async { agent::bind_socket(socket) }).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(agent::serve(
        appliance.clone(),
        listener,
        4790,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = rt
        .block_on(shunt_control::agent::connect(socket))
        .expect("connect to the agent socket");
    Running {
        rt,
        appliance,
        stop,
        server,
        client,
    }
}

impl Running {
    fn stats(&self) -> ApplianceStats {
        self.appliance.lock().unwrap().stats()
    }

    /// Stops the server and the appliance (the history is flushed to disk).
    fn stop(self) {
        drop(self.client);
        let _ = self.stop.send(());
        self.rt.block_on(self.server).unwrap().unwrap();
        let appliance = Arc::try_unwrap(self.appliance)
            .expect("server released the appliance")
            .into_inner()
            .unwrap();
        appliance.stop().expect("stop");
    }
}

fn store(dir: &Path, key: Option<&[u8; 64]>) -> pb::SetHistoryStoreRequest {
    pb::SetHistoryStoreRequest {
        dir: dir.display().to_string(),
        size_mib: 0,
        encrypt: key.is_some(),
        key: key.map(|k| k.to_vec()).unwrap_or_default(),
    }
}

/// A compress-only session toward `peer` (indices mirrored between the sites).
fn session(name: &str, peer: &Site, indices: (u32, u32)) -> pb::InstallSessionRequest {
    let (net, len) = peer.lan_prefix_v4;
    pb::InstallSessionRequest {
        partner: name.into(),
        endpoint: format!("{}:4790", peer.wan_ipv4),
        prefixes: vec![format!("{net}/{len}")],
        mode: pb::PartnerMode::Compress as i32,
        local_index: indices.0,
        remote_index: indices.1,
        ..Default::default()
    }
}

/// Starts both sites, gives each its store, installs the sessions.
fn start_both(
    tb: &Testbed,
    sockets: &Path,
    stores: (&pb::SetHistoryStoreRequest, &pb::SetHistoryStoreRequest),
) -> (Running, Running) {
    let a = start(&tb.site_a, &sockets.join("a.sock"));
    let b = start(&tb.site_b, &sockets.join("b.sock"));
    for (site, request, name, peer, indices) in [
        (&a, stores.0, "site-b", &tb.site_b, (101, 202)),
        (&b, stores.1, "site-a", &tb.site_a, (202, 101)),
    ] {
        let mut client = site.client.clone();
        site.rt.block_on(async {
            let reply = client
                .set_history_store(request.clone())
                .await
                .expect("history store set")
                .into_inner();
            assert_eq!(reply.dir, request.dir, "the directory sent is used");
            client
                .install_session(session(name, peer, indices))
                .await
                .expect("install");
        });
    }
    (a, b)
}

/// Sends `data` from the client to the server; returns the WAN bytes a → b.
fn send(tb: &Testbed, data: &Arc<Vec<u8>>, port: u16) -> u64 {
    let wanem = tb.wanem().expect("emulator");
    let server = SocketAddr::new(IpAddr::V4(tb.server.ipv4), port);
    let before = wanem.stats().a_to_b.tx_bytes;
    let t = transfer(
        &tb.client.netns,
        &tb.server.netns,
        server,
        data.clone(),
        TIMEOUT,
    );
    assert_eq!(t.bytes, data.len());
    assert_eq!(t.sent, t.received, "SHA-256 at both ends");
    wanem.stats().a_to_b.tx_bytes - before
}

/// Waits until both sites received a history summary from the other.
fn await_summaries(a: &Running, b: &Running) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (
            counter(&a.stats(), "summaries_received"),
            counter(&b.stats(), "summaries_received"),
        );
        if sa >= 1 && sb >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history summaries not exchanged: A received {sa}, B received {sb}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
}

/// The history files of `partner` under `dir` whose name starts with `side`, with
/// their contents.
fn files(dir: &Path, partner: &str, side: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join(partner)) else {
        return out;
    };
    for e in entries {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(side) && name.ends_with(".hist") {
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    out
}

/// How many of `markers` occur in any of `files`.
fn found(files: &[(PathBuf, Vec<u8>)], markers: &[&[u8]]) -> usize {
    markers
        .iter()
        .filter(|m| {
            files
                .iter()
                .any(|(_, f)| f.windows(m.len()).any(|w| w == **m))
        })
        .count()
}

fn stored_bytes(files: &[(PathBuf, Vec<u8>)]) -> usize {
    files.iter().map(|(_, f)| f.len()).sum()
}

#[test]
fn agent_mode_history_is_stored_encrypted_and_used_after_restarts() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let tb = Testbed::new().expect("testbed (run as root)");
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a-history"), dir.path().join("b-history"));
    let (a_key, b_key) = (rand::random::<[u8; 64]>(), rand::random::<[u8; 64]>());
    let (a_store, b_store) = (store(&a_dir, Some(&a_key)), store(&b_dir, Some(&b_key)));

    let data = Arc::new(random_bytes(FILE, 21));
    // Three 64-byte pieces of the file (all within what one lane's history keeps).
    let markers: Vec<&[u8]> = [FILE / 8, FILE / 2, FILE - 4096]
        .iter()
        .map(|&at| &data[at..at + 64])
        .collect();

    // First transfer, both stores encrypted.
    let (a, b) = start_both(&tb, dir.path(), (&a_store, &b_store));
    eprintln!("sessions installed; first transfer");
    let first = send(&tb, &data, 5700);
    a.stop();
    b.stop();
    let a_tx = files(&a_dir, "site-b", "tx-");
    let b_rx = files(&b_dir, "site-a", "rx-");
    assert!(!a_tx.is_empty() && !b_rx.is_empty(), "history files exist");
    for (what, f) in [("A tx", &a_tx), ("B rx", &b_rx)] {
        assert!(
            stored_bytes(f) >= FILE / 2,
            "{what}: {} bytes of history stored after an {FILE}-byte transfer",
            stored_bytes(f)
        );
        assert_eq!(
            found(f, &markers),
            0,
            "{what}: transferred bytes found in clear in an encrypted history file"
        );
    }

    // Both data planes restart with the same stores: the file crosses as references.
    let (a, b) = start_both(&tb, dir.path(), (&a_store, &b_store));
    await_summaries(&a, &b);
    let second = send(&tb, &data, 5701);
    let misses = counter(&b.stats(), "drop_history_miss");

    // Encryption turned off: the encrypted files are discarded, history restarts.
    for (site, dir) in [(&a, &a_dir), (&b, &b_dir)] {
        let mut client = site.client.clone();
        let reply = site
            .rt
            .block_on(client.set_history_store(store(dir, None)))
            .unwrap()
            .into_inner();
        assert!(reply.discarded, "encrypted history discarded");
        assert_eq!(reply.partners, 1, "the partner's store reopened");
    }
    let after_toggle = stored_bytes(&files(&a_dir, "site-b", "tx-"));
    let third = send(&tb, &data, 5702);
    a.stop();
    b.stop();
    let a_plain = files(&a_dir, "site-b", "tx-");
    eprintln!(
        "WAN bytes a->b: first {first}, after restarting both {second} ({:.2}%), after encryption off {third} | B misses {misses} | A tx history right after the toggle {after_toggle} B",
        second as f64 * 100.0 / first as f64
    );
    assert!(first as usize >= FILE, "the first transfer crossed in full");
    assert!(
        second * 10 <= first,
        "restored history unused after restarting both: {second} WAN bytes > 10% of {first}"
    );
    assert_eq!(misses, 0, "B never met a reference it did not hold");
    assert!(
        third * 10 >= first * 9,
        "history discarded with the encryption change was still referenced: {third} of {first}"
    );
    assert!(
        after_toggle < FILE / 2,
        "encrypted files were not discarded: {after_toggle} bytes right after the toggle"
    );
    assert_eq!(
        found(&a_plain, &markers),
        markers.len(),
        "without encryption the transferred bytes are in the files (the search works)"
    );
}
