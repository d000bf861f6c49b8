//! The two-site testbed: `client — site A appliance — WAN — site B appliance — server`.
//!
//! Five namespaces joined by four veth pairs. The appliances forward between their
//! LAN and WAN ports (gateway mode: each LAN host routes the other site's prefixes via
//! its appliance); the `wan` namespace bridges its two ports at layer 2, with the
//! userspace WAN emulator ([`crate::wanem`], the default) or a kernel bridge. Every address lives inside the
//! namespaces; dropping the [`Testbed`] (also while unwinding) removes everything.
//!
//! ```text
//!  client          site_a                 wan                 site_b          server
//!  eth0 ──── lan0 [appliance] wan0 ──── to_a [bridge] to_b ──── wan0 [appliance] lan0 ──── eth0
//!  10.1.0.2  10.1.0.1   10.99.0.1                          10.99.0.2   10.2.0.1  10.2.0.2
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::{Netns, NetnsError, VethEnd, create_veth};
use crate::wanem::{Wanem, WanemConfig, WanemError};

/// Site A's LAN prefix (client side).
pub const SITE_A_LAN_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 1, 0, 0), 24);
/// Site B's LAN prefix (server side).
pub const SITE_B_LAN_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 2, 0, 0), 24);
/// The WAN segment between the appliances.
pub const WAN_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 99, 0, 0), 24);
/// Site A's LAN prefix, IPv6.
pub const SITE_A_LAN_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0), 64);
/// Site B's LAN prefix, IPv6.
pub const SITE_B_LAN_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0), 64);
/// The WAN segment, IPv6.
pub const WAN_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0), 64);

/// How the `wan` namespace joins its two ports (`to_a` is the emulator's port A).
#[derive(Debug, Clone)]
#[expect(clippy::large_enum_variant, reason = "built once per testbed")]
pub enum WanLink {
    /// The userspace WAN emulator, started in-process with these settings (the
    /// default: no impairment, counters on). `max_frame` is raised to fit the MTU.
    Emulator(WanemConfig),
    /// A kernel bridge: plain forwarding, no impairment, no counters. The reference
    /// against which the emulator and the appliances are measured.
    KernelBridge,
}

impl Default for WanLink {
    fn default() -> Self {
        WanLink::Emulator(WanemConfig::default())
    }
}

/// Errors building a [`Testbed`].
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// Creating namespaces, links, addresses or routes failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The WAN emulator did not start.
    #[error(transparent)]
    Wanem(#[from] WanemError),
}

/// Testbed options.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// MTU of every veth (default 1500).
    pub mtu: u32,
    /// How the WAN namespace bridges the sites.
    pub wan: WanLink,
    /// Turn off checksum offload, TSO, GSO and GRO on every veth (default true), so
    /// every frame on every link carries complete checksums and is at most one MTU
    /// long, as on a physical wire; AF_PACKET and AF_XDP then see real frames.
    pub disable_offloads: bool,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            mtu: 1500,
            wan: WanLink::default(),
            disable_offloads: true,
        }
    }
}

/// An end host (client or server) with one port.
#[derive(Debug)]
pub struct Host {
    /// Its namespace.
    pub netns: Netns,
    /// Its only interface (`eth0`).
    pub if_name: String,
    /// MAC address of `if_name`.
    pub mac: [u8; 6],
    /// IPv4 address (prefix length 24).
    pub ipv4: Ipv4Addr,
    /// IPv6 address (prefix length 64).
    pub ipv6: Ipv6Addr,
}

/// An appliance namespace with a LAN port and a WAN port.
#[derive(Debug)]
pub struct Appliance {
    /// Its namespace.
    pub netns: Netns,
    /// LAN port (`lan0`), facing the site's host.
    pub lan_if: String,
    /// MAC address of the LAN port.
    pub lan_mac: [u8; 6],
    /// IPv4 address of the LAN port (the LAN host's gateway).
    pub lan_ipv4: Ipv4Addr,
    /// IPv6 address of the LAN port.
    pub lan_ipv6: Ipv6Addr,
    /// WAN port (`wan0`), facing the WAN namespace.
    pub wan_if: String,
    /// MAC address of the WAN port.
    pub wan_mac: [u8; 6],
    /// IPv4 address of the WAN port (the tunnel endpoint).
    pub wan_ipv4: Ipv4Addr,
    /// IPv6 address of the WAN port.
    pub wan_ipv6: Ipv6Addr,
    /// This site's LAN prefix, IPv4.
    pub lan_prefix_v4: (Ipv4Addr, u8),
    /// This site's LAN prefix, IPv6.
    pub lan_prefix_v6: (Ipv6Addr, u8),
}

/// The WAN namespace's two ports.
#[derive(Debug)]
pub struct Wan {
    /// Its namespace.
    pub netns: Netns,
    /// Port facing site A's WAN port (`to_a`).
    pub a_if: String,
    /// MAC address of `a_if`.
    pub a_mac: [u8; 6],
    /// Port facing site B's WAN port (`to_b`).
    pub b_if: String,
    /// MAC address of `b_if`.
    pub b_mac: [u8; 6],
}

/// The whole topology; dropping it removes every namespace and link it created.
#[derive(Debug)]
pub struct Testbed {
    /// The host on site A's LAN.
    pub client: Host,
    /// Site A's appliance.
    pub site_a: Appliance,
    /// The WAN in between.
    pub wan: Wan,
    /// Site B's appliance.
    pub site_b: Appliance,
    /// The host on site B's LAN.
    pub server: Host,
    /// The MTU every veth was given.
    pub mtu: u32,
    wanem: Option<Wanem>,
}

impl Testbed {
    /// Builds the topology with default options (MTU 1500, offloads off).
    pub fn new() -> Result<Self, TestbedError> {
        Self::with_config(TestbedConfig::default())
    }

    /// Builds the topology with `config`. On error, everything created so far is
    /// removed before returning.
    pub fn with_config(config: TestbedConfig) -> Result<Self, TestbedError> {
        let client_ns = Netns::new("client")?;
        let site_a_ns = Netns::new("site_a")?;
        let wan_ns = Netns::new("wan")?;
        let site_b_ns = Netns::new("site_b")?;
        let server_ns = Netns::new("server")?;

        // No duplicate address detection: link-local addresses are usable at once, so
        // IPv6 works as soon as the testbed is returned.
        for ns in [&client_ns, &site_a_ns, &wan_ns, &site_b_ns, &server_ns] {
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        // The WAN namespace is a pure layer-2 hop; keep IPv6 autoconfiguration
        // (router solicitations, DAD) off its ports.
        wan_ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        wan_ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;

        let mut tb = Testbed {
            client: host(
                client_ns,
                [0x02, 0, 0, 1, 0, 2],
                Ipv4Addr::new(10, 1, 0, 2),
                1,
            ),
            site_a: appliance(site_a_ns, 1, SITE_A_LAN_V4, SITE_A_LAN_V6),
            wan: Wan {
                netns: wan_ns,
                a_if: "to_a".into(),
                a_mac: [0x02, 0, 0, 0x99, 0, 0x0a],
                b_if: "to_b".into(),
                b_mac: [0x02, 0, 0, 0x99, 0, 0x0b],
            },
            site_b: appliance(site_b_ns, 2, SITE_B_LAN_V4, SITE_B_LAN_V6),
            server: host(
                server_ns,
                [0x02, 0, 0, 2, 0, 2],
                Ipv4Addr::new(10, 2, 0, 2),
                2,
            ),
            mtu: config.mtu,
            wanem: None,
        };
        tb.link(&config)?;
        tb.address_and_route()?;
        tb.bridge_wan(&config)?;
        tracing::info!(client = tb.client.netns.name(), mtu = tb.mtu, "testbed up");
        Ok(tb)
    }

    /// The running WAN emulator (`None` with [`WanLink::KernelBridge`] or after
    /// [`Testbed::stop_wanem`]).
    pub fn wanem(&self) -> Option<&Wanem> {
        self.wanem.as_ref()
    }

    /// Stops the WAN emulator (cutting the WAN) and returns it, e.g. to read its
    /// final counters with [`Wanem::stop`].
    pub fn stop_wanem(&mut self) -> Option<Wanem> {
        self.wanem.take()
    }

    /// Starts a WAN emulator with `config` on the WAN ports, replacing the running one
    /// (whose final counters are lost). Not possible with [`WanLink::KernelBridge`].
    pub fn restart_wanem(&mut self, mut config: WanemConfig) -> Result<&Wanem, TestbedError> {
        drop(self.wanem.take());
        config.max_frame = config
            .max_frame
            .max(WanemConfig::max_frame_for_mtu(self.mtu));
        let w = &self.wan;
        Ok(self
            .wanem
            .insert(Wanem::start_in(&w.netns, &w.a_if, &w.b_if, config)?))
    }

    /// Every namespace, in path order: client, site_a, wan, site_b, server.
    pub fn namespaces(&self) -> [&Netns; 5] {
        [
            &self.client.netns,
            &self.site_a.netns,
            &self.wan.netns,
            &self.site_b.netns,
            &self.server.netns,
        ]
    }

    fn link(&self, config: &TestbedConfig) -> Result<(), NetnsError> {
        let (c, a, w, b, s) = (
            &self.client,
            &self.site_a,
            &self.wan,
            &self.site_b,
            &self.server,
        );
        let pairs = [
            (
                end(&c.netns, &c.if_name, c.mac),
                end(&a.netns, &a.lan_if, a.lan_mac),
            ),
            (
                end(&a.netns, &a.wan_if, a.wan_mac),
                end(&w.netns, &w.a_if, w.a_mac),
            ),
            (
                end(&w.netns, &w.b_if, w.b_mac),
                end(&b.netns, &b.wan_if, b.wan_mac),
            ),
            (
                end(&b.netns, &b.lan_if, b.lan_mac),
                end(&s.netns, &s.if_name, s.mac),
            ),
        ];
        for (x, y) in pairs {
            create_veth(x, y, config.mtu)?;
            if config.disable_offloads {
                for e in [x, y] {
                    let ns = e.netns.expect("testbed ends always have a namespace");
                    ns.run(
                        "ethtool",
                        &["-K", e.name, "tx", "off", "tso", "off", "gso", "off"],
                    )?;
                    ns.run("ethtool", &["-K", e.name, "gro", "off"])?;
                }
            }
        }
        Ok(())
    }

    fn address_and_route(&self) -> Result<(), NetnsError> {
        for (host, gw) in [(&self.client, &self.site_a), (&self.server, &self.site_b)] {
            add_addresses(&host.netns, &host.if_name, host.ipv4, host.ipv6)?;
            let remote = if std::ptr::eq(host, &self.client) {
                &self.site_b
            } else {
                &self.site_a
            };
            for (net, len) in [remote.lan_prefix_v4, WAN_V4] {
                ip(
                    &host.netns,
                    &[
                        "route",
                        "add",
                        &format!("{net}/{len}"),
                        "via",
                        &gw.lan_ipv4.to_string(),
                    ],
                )?;
            }
            for (net, len) in [remote.lan_prefix_v6, WAN_V6] {
                ip(
                    &host.netns,
                    &[
                        "-6",
                        "route",
                        "add",
                        &format!("{net}/{len}"),
                        "via",
                        &gw.lan_ipv6.to_string(),
                    ],
                )?;
            }
        }
        for (app, peer) in [(&self.site_a, &self.site_b), (&self.site_b, &self.site_a)] {
            add_addresses(&app.netns, &app.lan_if, app.lan_ipv4, app.lan_ipv6)?;
            add_addresses(&app.netns, &app.wan_if, app.wan_ipv4, app.wan_ipv6)?;
            let (net4, len4) = peer.lan_prefix_v4;
            ip(
                &app.netns,
                &[
                    "route",
                    "add",
                    &format!("{net4}/{len4}"),
                    "via",
                    &peer.wan_ipv4.to_string(),
                ],
            )?;
            let (net6, len6) = peer.lan_prefix_v6;
            ip(
                &app.netns,
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{net6}/{len6}"),
                    "via",
                    &peer.wan_ipv6.to_string(),
                ],
            )?;
            app.netns.sysctl("net.ipv4.ip_forward", "1")?;
            app.netns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        Ok(())
    }

    fn bridge_wan(&mut self, config: &TestbedConfig) -> Result<(), TestbedError> {
        let w = &self.wan;
        match &config.wan {
            WanLink::Emulator(wanem) => {
                self.restart_wanem(wanem.clone())?;
            }
            WanLink::KernelBridge => {
                ip(&w.netns, &["link", "add", "br0", "type", "bridge"])?;
                for port in [&w.a_if, &w.b_if] {
                    ip(&w.netns, &["link", "set", port, "master", "br0"])?;
                }
                ip(&w.netns, &["link", "set", "br0", "up"])?;
            }
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // The emulator's sockets pin the WAN namespace; close them before the
        // namespaces go.
        drop(self.wanem.take());
    }
}

fn host(netns: Netns, mac: [u8; 6], ipv4: Ipv4Addr, site: u16) -> Host {
    Host {
        netns,
        if_name: "eth0".into(),
        mac,
        ipv4,
        ipv6: Ipv6Addr::new(0xfd00, site, 0, 0, 0, 0, 0, 2),
    }
}

fn appliance(netns: Netns, site: u8, v4: (Ipv4Addr, u8), v6: (Ipv6Addr, u8)) -> Appliance {
    let s = u16::from(site);
    Appliance {
        netns,
        lan_if: "lan0".into(),
        lan_mac: [0x02, 0, 0, site, 0, 1],
        lan_ipv4: Ipv4Addr::new(10, site, 0, 1),
        lan_ipv6: Ipv6Addr::new(0xfd00, s, 0, 0, 0, 0, 0, 1),
        wan_if: "wan0".into(),
        wan_mac: [0x02, 0, 0, 0x99, 0, site],
        wan_ipv4: Ipv4Addr::new(10, 99, 0, site),
        wan_ipv6: Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, s),
        lan_prefix_v4: v4,
        lan_prefix_v6: v6,
    }
}

fn end<'a>(netns: &'a Netns, name: &'a str, mac: [u8; 6]) -> VethEnd<'a> {
    VethEnd {
        netns: Some(netns),
        name,
        mac: Some(mac),
    }
}

fn add_addresses(netns: &Netns, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<(), NetnsError> {
    ip(netns, &["addr", "add", &format!("{v4}/24"), "dev", dev])?;
    ip(
        netns,
        &[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            dev,
            "nodad",
        ],
    )
}

fn ip(netns: &Netns, args: &[&str]) -> Result<(), NetnsError> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["-n", netns.name()]).args(args);
    crate::netns::run_checked(&mut cmd).map(drop)
}
