//! The TUN backend of the appliance (`io = "tun"`), for hosts where XDP cannot be used.
//!
//! The kernel routes the partners' prefixes into a TUN device (`lan_interface`); one
//! worker reads the packets from it, runs them through the same [`Pipeline`] as on
//! AF_XDP (codec, AEAD, replay windows, control messages) and sends the tunnel packets
//! from a kernel UDP socket on the tunnel port, which puts the outer headers on and
//! routes them out of the WAN port. Tunnel packets from the partners arrive on that
//! socket, are opened and decoded, and the inner packets are written into the TUN
//! device, from where the kernel forwards them to the LAN hosts.
//!
//! The operator creates the device and its routes before starting (a persistent TUN
//! device, like a static VPN's): start-up checks them and says what is missing.

use std::net::IpAddr;
use std::sync::Arc;

use super::{PartnerPlan, Pipeline, PipelineConfig, PipelineError, Shared};
use crate::forward::{NextHops, Snapshot};
use crate::io::IoError;
use crate::io::tun::TunPort;
use crate::io::udp::UdpPort;
use crate::tunnel::Mode;
use crate::tunnel::config::ManualConfig;
use crate::worker::{Ports, WorkerSpec};

/// Buffers of each port (TUN device, UDP socket).
const CHUNKS: u32 = 4096;

/// Why the TUN backend cannot start; each message says what to run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunSetupError {
    /// `lan_interface` exists but is not a TUN device.
    #[error(
        "lan_interface {0:?} is not a TUN device; with io = \"tun\" create one with \
         `ip tuntap add dev NAME mode tun` and name it as lan_interface"
    )]
    NotTun(String),
    /// A partner prefix is not routed into the TUN device.
    #[error(
        "prefix {prefix} of partner {partner} is routed {via}, not into the TUN device \
         {tun}; add `ip route replace {prefix} dev {tun}`"
    )]
    PrefixNotRouted {
        /// Partner name.
        partner: String,
        /// The prefix, as written in the file.
        prefix: String,
        /// Where it goes instead.
        via: String,
        /// The TUN device.
        tun: String,
    },
    /// A partner's address is not reached through the WAN port.
    #[error(
        "partner {partner} at {address} is routed {via}, not via wan_interface {wan}; \
         fix the routes so tunnel packets leave by the WAN port"
    )]
    PartnerNotOnWan {
        /// Partner name.
        partner: String,
        /// Its address.
        address: IpAddr,
        /// Where it goes instead.
        via: String,
        /// The WAN port.
        wan: String,
    },
}

/// Checks the device and routes, opens the TUN device and the tunnel's UDP socket and
/// returns the one worker's spec.
pub(super) fn start(
    manual: &ManualConfig,
    config: &Arc<PipelineConfig>,
    shared: &Arc<Shared>,
    hops: &Arc<NextHops>,
    snap: &Snapshot,
    histories: &mut super::history::Histories,
) -> Result<Vec<WorkerSpec>, PipelineError> {
    let tun = &manual.lan_interface;
    // TUNSETIFF attaches to an existing TUN device and refuses any other kind (EINVAL).
    let lan = match TunPort::open(tun, CHUNKS) {
        Ok(port) => port.with_ethernet_framing(),
        Err(IoError::Setup { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            return Err(TunSetupError::NotTun(tun.clone()).into());
        }
        Err(e) => return Err(e.into()),
    };
    let tunnelled = config
        .partners
        .iter()
        .filter(|p| p.mode != Mode::PassThrough);
    for p in tunnelled.clone() {
        check_routes(p, config, manual, snap)?;
    }
    if let Some(link) = snap.link(config.lan_ifindex)
        && link.mtu as usize > config.inner_mtu()
    {
        tracing::warn!(
            interface = %tun,
            mtu = link.mtu,
            inner_mtu = config.inner_mtu(),
            "TUN MTU above the tunnel's inner MTU: larger packets get ICMP \"too big\" \
             from the appliance; set `ip link set dev {tun} mtu {}`",
            config.inner_mtu()
        );
    }

    let peers = tunnelled.map(|p| p.remote.ip()).collect();
    let wan = UdpPort::open(manual.tunnel_port, peers, CHUNKS)?;
    tracing::info!(tun = %lan.name(), local = %wan.local_addr(), "TUN backend open");
    let mut process = Pipeline::new(0, config.clone(), shared.clone(), hops.view())?;
    process.attach_history(histories.take_worker(0));
    Ok(vec![WorkerSpec {
        ports: Ports {
            lan: Box::new(lan),
            wan: Box::new(wan),
        },
        // The kernel does half of the work (routing, UDP); leave placement to it.
        core: None,
        process: Box::new(process),
    }])
}

fn check_routes(
    p: &PartnerPlan,
    config: &PipelineConfig,
    manual: &ManualConfig,
    snap: &Snapshot,
) -> Result<(), TunSetupError> {
    let via = |addr: IpAddr| match snap.route(addr) {
        None => "nowhere (no route)".to_owned(),
        Some(r) => match snap.link(r.oif) {
            Some(l) => format!("via {}", l.name),
            None => format!("via interface index {}", r.oif),
        },
    };
    for &(addr, len) in &p.prefixes {
        if snap.route(addr).map(|r| r.oif) != Some(config.lan_ifindex) {
            return Err(TunSetupError::PrefixNotRouted {
                partner: p.name.clone(),
                prefix: format!("{addr}/{len}"),
                via: via(addr),
                tun: manual.lan_interface.clone(),
            });
        }
    }
    let address = p.remote.ip();
    if snap.route(address).map(|r| r.oif) != Some(config.wan_ifindex) {
        return Err(TunSetupError::PartnerNotOnWan {
            partner: p.name.clone(),
            address,
            via: via(address),
            wan: manual.wan_interface.clone(),
        });
    }
    Ok(())
}
