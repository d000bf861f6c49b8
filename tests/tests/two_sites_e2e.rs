//! Two sites as an operator runs them (run as root; build the binaries first:
//! `cargo build -p shunt-dataplane -p shunt-control`): per site `shunt-dataplane`
//! in agent mode and `shunt-control` as separate processes, brought to `secure:
//! true, Connected Available` through the management API (licence, keystore,
//! private CA on site A enrolling site B). A TCP transfer arrives intact with no
//! clear text on the WAN; after site A's shunt-control is killed and restarted
//! (keystore sealed) traffic still flows on the data plane's sessions, and the
//! partner is secure again once the keystore is opened.
//!
//! DESIGN.md section 2: rules 1 (secure ⇒ encrypted and compressed), 4, 7 (sealed
//! after restart), 10, 11 (private CA), 12; issue 5 item 8 (the data plane keeps
//! its sessions across a control-plane restart).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shunt_tests::sites::{random_bytes, transfer};
use shunt_tests::testbed::{Testbed, TestbedConfig, WanLink};
use shunt_tests::two_sites::{TwoSites, Which, wait_for};
use shunt_tests::wanem::{LinkProfile, WanemConfig};

const MARKER: &[u8] = b"SHUNT-MARKER-agent-e2e-do-not-leak";
const TIMEOUT: Duration = Duration::from_secs(30);

fn marked(len: usize, seed: u64) -> Arc<Vec<u8>> {
    let mut data = random_bytes(len, seed);
    data[100..100 + MARKER.len()].copy_from_slice(MARKER);
    Arc::new(data)
}

fn send(sites: &TwoSites, port: u16, data: Arc<Vec<u8>>) {
    let addr = SocketAddr::new(IpAddr::V4(sites.tb.server.ipv4), port);
    let len = data.len();
    let t = transfer(
        &sites.tb.client.netns,
        &sites.tb.server.netns,
        addr,
        data,
        TIMEOUT,
    );
    assert_eq!(t.bytes, len, "byte count");
    assert_eq!(t.sent, t.received, "SHA-256 at both ends");
}

#[test]
fn two_sites_as_processes_peer_securely_and_survive_a_control_plane_restart() {
    let mut wanem = WanemConfig::symmetric(LinkProfile::CLEAN);
    wanem.capture_frames = 8192;
    let tb = Testbed::with_config(TestbedConfig {
        wan: WanLink::Emulator(wanem),
        ..TestbedConfig::default()
    })
    .expect("testbed (run as root)");
    let mut sites = TwoSites::start(tb, 16, &|step| eprintln!("[two sites] {step}"))
        .expect("both sites secure through the API");

    for which in [Which::A, Which::B] {
        let p = sites.partners(which).unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].secure, "{p:?}");
        assert_eq!(p[0].connection_status, "Connected Available");
        assert_eq!(p[0].traffic, "compressed, encrypted");
    }

    // Wait until both data planes hold keys (the partner table is secure as soon
    // as the handshake ends; the keys follow within the same exchange).
    let first = marked(1 << 20, 1);
    send(&sites, 5600, first.clone());
    assert!(
        !sites.tb.wanem().unwrap().captured().is_empty(),
        "the capture saw the WAN"
    );
    assert!(
        !sites.tb.wanem().unwrap().capture_contains(MARKER),
        "marker crossed the WAN in clear"
    );
    // The data plane carried it, and its counters reached the partner table.
    let before = wait_for(
        Duration::from_secs(10),
        "counters in the partner table",
        || {
            let p = sites.partners(Which::A)?;
            let c = p[0].counters.unwrap_or_default();
            Ok((c.bytes_before_compression >= first.len() as u64).then_some(c))
        },
    )
    .unwrap();
    assert!(before.packets > 0);
    // The control plane gave the data plane its history store (<state_dir>/history):
    // the partner's lane files were opened there.
    let history = sites
        .site(Which::A)
        .state_dir
        .join("history")
        .join("site-b");
    assert!(
        history.join("tx-lane-0.hist").is_file() && history.join("rx-lane-0.hist").is_file(),
        "no history files under {}",
        history.display()
    );

    // Kill site A's shunt-control: the data plane keeps its sessions.
    sites.restart_control(Which::A).expect("restart");
    let p = sites.partners(Which::A).unwrap();
    assert!(!p[0].secure, "sealed after restart: {p:?}");
    sites.tb.wanem().unwrap().clear_capture();
    send(&sites, 5601, marked(1 << 20, 2));
    assert!(
        !sites.tb.wanem().unwrap().capture_contains(MARKER),
        "marker crossed the WAN in clear after the restart"
    );
    let after = wait_for(
        Duration::from_secs(10),
        "counters after the restart",
        || {
            let p = sites.partners(Which::A)?;
            let c = p[0].counters.unwrap_or_default();
            Ok((c.bytes_before_compression >= 2 * first.len() as u64).then_some(c))
        },
    )
    .unwrap();
    assert!(after.packets > before.packets);

    // Open the keystore: the partner comes back secure, with new keys.
    sites.open_keystore(Which::A).unwrap();
    sites.wait_secure(Duration::from_secs(30)).unwrap();
    sites.tb.wanem().unwrap().clear_capture();
    send(&sites, 5602, marked(1 << 20, 3));
    assert!(!sites.tb.wanem().unwrap().capture_contains(MARKER));
}
