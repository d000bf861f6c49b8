//! `shunt-demo` (what `cargo xtask demo` runs): brings up the two-site testbed, loads
//! the XDP steering program on both appliances' LAN and WAN ports, sends traffic in
//! three phases and prints the per-verdict counters after each.
//!
//! The fast path (encode, tunnel, decode) is not wired to the testbed yet, so in the
//! "ready" phase selected packets stop at a test AF_XDP socket on site A.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use shunt_common::RuleAction;
use shunt_dataplane::xdp::{ModeRequest, Prefix, Role, Rule, Steering};
use shunt_tests::testbed::{Appliance, Testbed};
use shunt_tests::traffic::{ping, tcp_transfer};
use shunt_tests::xdp_site::attach_appliance;
use shunt_tests::xsk_probe::XskProbe;

const PARTNER: u32 = 1;
const MSS: u16 = 1360;
const TUNNEL_PORT: u16 = 7000;
const UDP_DATAGRAMS: u32 = 1000;

fn main() -> anyhow::Result<()> {
    let generic = std::env::args().any(|a| a == "--generic");
    let mode = if generic {
        ModeRequest::Generic
    } else {
        ModeRequest::Auto
    };
    let tb = Testbed::new().context("cannot build the namespace testbed (run as root)")?;
    println!(
        "testbed up: client {} -> server {}",
        tb.client.ipv4, tb.server.ipv4
    );

    let mut a = load(&tb.site_a, &tb.site_b, mode, "site A")?;
    let mut b = load(&tb.site_b, &tb.site_a, mode, "site B")?;

    println!("\n== phase 1: partner not ready -> selected traffic fails open, SYNs clamped");
    traffic(&tb)?;
    report(&a, &b)?;

    println!("\n== phase 2: partner ready, AF_XDP socket on site A's LAN queue 0");
    let probe = XskProbe::bind(&tb.site_a.netns, &tb.site_a.lan_if, 0)
        .context("cannot open the AF_XDP socket")?;
    a.register_socket(&tb.site_a.lan_if, 0, probe.fd())?;
    a.set_partner_ready(PARTNER, true)?;
    send_udp(&tb, UDP_DATAGRAMS)?;
    let got = probe.wait_for(u64::from(UDP_DATAGRAMS), Duration::from_secs(5));
    println!("AF_XDP socket received {got} of {UDP_DATAGRAMS} selected datagrams");
    let r = ping(
        &tb.client.netns,
        IpAddr::V4(tb.server.ipv4),
        3,
        Duration::from_millis(100),
        Duration::from_secs(2),
    )?;
    println!(
        "ping (ICMP is never steered): {}/{} replies",
        r.received, r.transmitted
    );
    report(&a, &b)?;

    println!("\n== phase 3: must-protect rule, partner down -> selected traffic dropped");
    a.unregister_socket(&tb.site_a.lan_if, 0)?;
    a.set_partner_ready(PARTNER, false)?;
    a.add_rule(site_prefix(&tb.site_b)?, rule(true))?;
    send_udp(&tb, 100)?;
    std::thread::sleep(Duration::from_millis(300));
    report(&a, &b)?;
    b.detach_all();
    a.detach_all();
    println!("\ndetached; removing the testbed");
    Ok(())
}

fn rule(must_protect: bool) -> Rule {
    Rule {
        partner: PARTNER,
        action: RuleAction::Accelerate,
        must_protect,
    }
}

fn site_prefix(site: &Appliance) -> anyhow::Result<Prefix> {
    let (net, len) = site.lan_prefix_v4;
    Ok(Prefix::new(IpAddr::V4(net), len)?)
}

/// Loads the program on `site`, selecting `remote`'s LAN for partner 1.
fn load(
    site: &Appliance,
    remote: &Appliance,
    mode: ModeRequest,
    name: &str,
) -> anyhow::Result<Steering> {
    let (mut s, modes) =
        attach_appliance(site, mode).with_context(|| format!("cannot load XDP on {name}"))?;
    println!(
        "{name}: LAN {} in {} mode, WAN {} in {} mode",
        site.lan_if,
        modes[0].as_str(),
        site.wan_if,
        modes[1].as_str()
    );
    s.add_rule(site_prefix(remote)?, rule(false))?;
    let (net6, len6) = remote.lan_prefix_v6;
    s.add_rule(Prefix::new(IpAddr::V6(net6), len6)?, rule(false))?;
    s.set_mss(MSS)?;
    s.set_tunnel_port(TUNNEL_PORT)?;
    s.add_wan_partner(IpAddr::V4(remote.wan_ipv4), PARTNER)?;
    Ok(s)
}

fn traffic(tb: &Testbed) -> anyhow::Result<()> {
    let r = ping(
        &tb.client.netns,
        IpAddr::V4(tb.server.ipv4),
        3,
        Duration::from_millis(100),
        Duration::from_secs(2),
    )?;
    println!("ping: {}/{} replies", r.received, r.transmitted);
    let t = tcp_transfer(
        &tb.client.netns,
        &tb.server.netns,
        SocketAddr::new(IpAddr::V4(tb.server.ipv4), 5001),
        4 << 20,
        Duration::from_secs(30),
    )?;
    ensure!(t.sent_hash == t.received_hash, "TCP transfer corrupted");
    println!("TCP: {} bytes intact in {:?}", t.bytes, t.elapsed);
    send_udp(tb, 100)?;
    println!("UDP: 100 datagrams sent");
    Ok(())
}

fn send_udp(tb: &Testbed, count: u32) -> anyhow::Result<()> {
    let to = SocketAddr::new(IpAddr::V4(tb.server.ipv4), 9000);
    tb.client.netns.enter(|| -> std::io::Result<()> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..count {
            sock.send_to(&i.to_be_bytes(), to)?;
        }
        Ok(())
    })??;
    Ok(())
}

fn report(a: &Steering, b: &Steering) -> anyhow::Result<()> {
    println!(
        "{:<14} {:>8} {:>10} {:>8} {:>9} {:>8} {:>9}",
        "port", "passed", "redirected", "dropped", "malformed", "clamped", "fail_open"
    );
    for (name, s) in [("site A", a), ("site B", b)] {
        for role in [Role::Lan, Role::Wan] {
            let c = s.verdicts(role)?;
            println!(
                "{:<14} {:>8} {:>10} {:>8} {:>9} {:>8} {:>9}",
                format!("{name} {role:?}"),
                c.passed,
                c.redirected,
                c.dropped,
                c.malformed,
                c.clamped,
                c.fail_open
            );
        }
    }
    Ok(())
}
