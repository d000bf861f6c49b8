//! Compression history end to end (run as root): two appliances on the testbed, WAN
//! bytes counted by the emulator. A file sent twice crosses the second time as
//! references; a file with 1% of its bytes changed crosses as a small delta;
//! incompressible data does not grow.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shunt_tests::sites::{Sites, SitesConfig, counter, random_bytes, transfer};
use shunt_tests::testbed::Testbed;

/// Size of the file: issue 4 asks 100 MB (optimised build); an unoptimised build
/// (plain `cargo test`) sends 24 MB, the same test at a quarter of the size.
const FILE: usize = if cfg!(debug_assertions) {
    24 << 20
} else {
    100 << 20
};
const TIMEOUT: Duration = Duration::from_secs(60);

/// WAN and codec bytes of one transfer.
struct Crossing {
    wan: u64,
    before: u64,
    after: u64,
}

impl Crossing {
    fn codec_ratio(&self) -> f64 {
        self.after as f64 / self.before as f64
    }
}

#[test]
fn repeated_and_changed_files_cross_the_wan_as_references() {
    // Room for the whole file in one lane's history.
    let config = SitesConfig {
        history_mib: 256,
        ..SitesConfig::default()
    };
    let sites = Sites::start(Testbed::new().expect("testbed (run as root)"), &config);
    let wanem = sites.tb.wanem().expect("emulator");
    let server = |port| SocketAddr::new(IpAddr::V4(sites.tb.server.ipv4), port);
    let send = |data: &Arc<Vec<u8>>, port: u16| {
        let wan_before = wanem.stats().a_to_b.tx_bytes;
        let a_before = sites.a_stats();
        let t = transfer(
            &sites.tb.client.netns,
            &sites.tb.server.netns,
            server(port),
            data.clone(),
            TIMEOUT,
        );
        assert_eq!(t.bytes, data.len());
        assert_eq!(t.sent, t.received, "SHA-256 at both ends");
        let a = sites.a_stats();
        let delta = |name| counter(&a, name) - counter(&a_before, name);
        Crossing {
            wan: wanem.stats().a_to_b.tx_bytes - wan_before,
            before: delta("bytes_before"),
            after: delta("bytes_after"),
        }
    };

    let original = Arc::new(random_bytes(FILE, 42));
    let first = send(&original, 5500);
    let second = send(&original, 5501);
    let mut changed = original.as_ref().clone();
    let mut rng = random_bytes(FILE / 100 * 8, 43).into_iter();
    for _ in 0..FILE / 100 {
        let at = u64::from_le_bytes(std::array::from_fn(|_| rng.next().unwrap())) as usize % FILE;
        changed[at] = changed[at].wrapping_add(1);
    }
    let third = send(&Arc::new(changed), 5502);
    let pct = |x: f64| x * 100.0;
    eprintln!(
        "file {} MB | WAN bytes: first {} ({:.2}% of the file), repeat {} ({:.2}% of the first), \
         1% changed {} ({:.2}% of the file) | codec out/in: first {:.3}%, repeat {:.2}%, 1% changed {:.2}%",
        FILE >> 20,
        first.wan,
        pct(first.wan as f64 / FILE as f64),
        second.wan,
        pct(second.wan as f64 / first.wan as f64),
        third.wan,
        pct(third.wan as f64 / FILE as f64),
        pct(first.codec_ratio()),
        pct(second.codec_ratio()),
        pct(third.codec_ratio()),
    );
    // The codec (payload bytes, what the history controls): issue 4's targets.
    assert!(
        first.codec_ratio() <= 1.01,
        "incompressible data grew by more than 1%"
    );
    assert!(
        second.codec_ratio() <= 0.05,
        "repeat: codec output above 5% of its input"
    );
    assert!(
        third.codec_ratio() <= 0.10,
        "1% changed: codec output above 10% of its input"
    );
    // On the wire every tunnel packet still carries its Ethernet, outer IP/UDP, tunnel
    // header, tag and the inner IP/TCP headers (about 130 bytes per 1350-byte segment,
    // one tunnel packet per segment), so the WAN ratios sit above the codec's; see
    // docs/pipeline.md ("Compression on the wire").
    assert!(
        first.wan as usize >= FILE,
        "the first transfer crossed in full"
    );
    assert!(
        second.wan * 8 <= first.wan,
        "repeat: {} WAN bytes > 12.5% of {}",
        second.wan,
        first.wan
    );
    assert!(
        third.wan as usize * 4 <= FILE,
        "1% changed: {} WAN bytes > 25% of {FILE}",
        third.wan
    );
}
