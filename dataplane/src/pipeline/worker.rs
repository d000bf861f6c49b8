//! The per-worker [`Pipeline`]: encode LAN → WAN, decode WAN → LAN.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::counters::{COUNTERS, Counter, Counts};
use super::inner::{self, FORMAT_CODEC, FORMAT_HEADERS_ONLY, PREFIX_LEN};
use super::{PipelineConfig, Shared};
use crate::codec::{ControlMessage, Decoder, Encoder, ForgetRanges};
use crate::forward::icmp::{self, IcmpError};
use crate::forward::packet::{self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Hop};
use crate::forward::{NextHopView, OuterHeaders};
use crate::io::{Batch, Frame, PacketIo, Port};
use crate::tunnel::{
    ControlKind, HEADER_LEN, KeyLimits, Mode, OpenError, PacketType, Session, SessionTable, TAG_LEN,
};
use crate::worker::{Action, Ports, Process};

/// How often keys, retirements and counters are looked after.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
/// Decoded packets of a lane between two checks for holes to report.
const HOLE_CHECK_EVERY: u32 = 256;

/// One worker's fast path. Worker `i` encodes on lane `i` and decodes the lanes `l`
/// with `l % workers == i`; a tunnel packet of another worker's lane is handed to it.
pub struct Pipeline {
    index: usize,
    lane: u16,
    config: Arc<PipelineConfig>,
    shared: Arc<Shared>,
    hops: NextHopView,
    sessions: SessionTable,
    /// Per partner: its local session index (None in pass-through mode).
    local_index: Vec<Option<u32>>,
    encoders: Vec<Option<Encoder>>,
    /// Per partner, per lane; created when the lane is first seen.
    decoders: Vec<Vec<Option<Decoder>>>,
    hole_check: Vec<Vec<u32>>,
    counts: Vec<Counts>,
    control: Batch,
    scratch: Box<[u8]>,
    now: Duration,
    next_maintain: Duration,
    ip_id: u16,
}

fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Pipeline {
    /// Worker `index`'s pipeline; sets up its sessions (with the current epoch keys),
    /// encoders and counters.
    pub fn new(
        index: usize,
        config: Arc<PipelineConfig>,
        shared: Arc<Shared>,
        hops: NextHopView,
    ) -> Result<Self, super::PipelineError> {
        let now = wall_clock();
        let mut sessions = SessionTable::new();
        let mut local_index = Vec::new();
        let mut encoders = Vec::new();
        let mut decoders = Vec::new();
        let lane = u16::try_from(index).map_err(|_| super::PipelineError::TooManyWorkers)?;
        for p in &config.partners {
            let Some(params) = p.params.clone() else {
                local_index.push(None);
                encoders.push(None);
                decoders.push(Vec::new());
                continue;
            };
            if usize::from(params.lanes) < config.workers {
                return Err(super::PipelineError::TooManyWorkers);
            }
            let lanes = usize::from(params.lanes);
            let limits: KeyLimits = params.limits.per_worker(config.workers as u16);
            let params = crate::tunnel::SessionParams { limits, ..params };
            let idx = params.local_index;
            let session = sessions.install(params, now)?;
            if let Some(k) = &p.keying {
                k.tick(session, now)?;
            }
            local_index.push(Some(idx));
            encoders.push(Some(Encoder::new(lane, config.codec)?));
            decoders.push((0..lanes).map(|_| None).collect());
        }
        let partners = config.partners.len();
        Ok(Self {
            index,
            lane,
            hole_check: decoders.iter().map(|d| vec![0; d.len()]).collect(),
            config,
            shared,
            hops,
            sessions,
            local_index,
            encoders,
            decoders,
            counts: vec![[0; COUNTERS]; partners + 1],
            control: Batch::with_capacity(16),
            scratch: vec![0u8; 4096].into_boxed_slice(),
            now,
            next_maintain: now + MAINTAIN_EVERY,
            ip_id: (index as u16).wrapping_mul(0x3001),
        })
    }

    fn count(&mut self, partner: Option<usize>, c: Counter, n: u64) {
        let row = partner.unwrap_or(self.config.partners.len());
        self.counts[row][c as usize] += n;
    }

    fn session(&mut self, partner: usize) -> Option<&mut Session> {
        let idx = self.local_index[partner]?;
        self.sessions.get_mut(idx)
    }

    fn partner_of_index(&self, idx: u32) -> Option<usize> {
        self.local_index.iter().position(|&i| i == Some(idx))
    }

    /// Keys (manual keying epochs), retirements, forget messages from other workers.
    fn maintain(&mut self) {
        let now = self.now;
        for p in 0..self.config.partners.len() {
            let Some(idx) = self.local_index[p] else {
                continue;
            };
            let keying = self.config.partners[p].keying.clone();
            let Some(session) = self.sessions.get_mut(idx) else {
                continue;
            };
            if let Some(k) = keying {
                match k.tick(session, now) {
                    Ok(Some(epoch)) => {
                        tracing::info!(worker = self.index, partner = %self.config.partners[p].name, epoch, "send key epoch switched");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(worker = self.index, partner = %self.config.partners[p].name, error = %e, "rekey failed")
                    }
                }
            }
            session.retire_expired(now);
            let epochs = session.counters().send_epochs;
            self.counts[p][Counter::SendEpochs as usize] = epochs;
        }
    }

    fn take_forgets(&mut self) {
        while let Some((p, forget)) = self.shared.forgets[self.index].pop() {
            if let Some(Some(enc)) = self.encoders.get_mut(p) {
                enc.apply_forget(&forget);
                self.count(Some(p), Counter::ForgetsApplied, 1);
            }
        }
    }

    fn outer(&self, p: usize, wan_hop: crate::forward::NextHop) -> OuterHeaders {
        let plan = &self.config.partners[p];
        OuterHeaders {
            src_mac: wan_hop.src_mac,
            dst_mac: wan_hop.dst_mac,
            src: plan.local,
            dst: plan.remote.ip(),
            src_port: self.config.tunnel_port,
            dst_port: plan.remote.port(),
            ttl: 64,
        }
    }

    fn wan_hop(&mut self, p: usize) -> Option<crate::forward::NextHop> {
        match self.hops.lookup(self.config.partners[p].remote.ip()) {
            Ok(h) if h.ifindex == self.config.wan_ifindex => Some(h),
            _ => None,
        }
    }

    /// LAN → WAN.
    fn encode(&mut self, ports: &mut Ports, frame: Frame) -> Action {
        let Ports { lan, wan } = ports;
        let data = lan.data(&frame);
        let Some(ip_at) = packet::ip_offset(data) else {
            self.count(None, Counter::DropMalformed, 1);
            return Action::Drop(Port::Lan, frame);
        };
        let ip = &data[ip_at..];
        let (Some((_, dst)), Some(total)) = (packet::addresses(ip), packet::total_len(ip)) else {
            self.count(None, Counter::DropMalformed, 1);
            return Action::Drop(Port::Lan, frame);
        };
        if total > ip.len() || total < 20 {
            self.count(None, Counter::DropMalformed, 1);
            return Action::Drop(Port::Lan, frame);
        }
        let Some(p) = self.config.partner_for(dst) else {
            self.count(None, Counter::DropNoNextHop, 1);
            return Action::Drop(Port::Lan, frame);
        };
        let mode = self.config.partners[p].mode;
        if mode == Mode::PassThrough {
            self.count(Some(p), Counter::DropPassThrough, 1);
            return Action::Drop(Port::Lan, frame);
        }
        if total > self.config.inner_mtu() {
            self.count(Some(p), Counter::DropTooBig, 1);
            return self.too_big(lan.as_mut(), frame, ip_at);
        }
        let ip = &ip[..total];
        let payload_len = total - inner::header_len(ip);
        // Without compression the whole packet travels as "headers only".
        let hlen = if self.config.partners[p].compress {
            total - payload_len
        } else {
            total
        };
        let (headers, payload) = ip.split_at(hlen);
        let Some(hop) = self.wan_hop(p) else {
            self.count(Some(p), Counter::DropNoNextHop, 1);
            return Action::Drop(Port::Lan, frame);
        };
        let outer = self.outer(p, hop);
        let Some(mut out) = wan.alloc() else {
            self.count(Some(p), Counter::DropNoBuffer, 1);
            return Action::Drop(Port::Lan, frame);
        };
        let olen = outer.len();
        let tag = if mode == Mode::Encrypted { TAG_LEN } else { 0 };
        let body = olen + HEADER_LEN;
        let at = body + PREFIX_LEN + hlen;
        let max = at + payload.len() + crate::codec::MAX_FRAME_OVERHEAD + tag;
        if !out.set_len(max) {
            wan.release(out);
            self.count(Some(p), Counter::DropNoBuffer, 1);
            return Action::Drop(Port::Lan, frame);
        }
        let buf = wan.data_mut(&out);
        buf[body + 1..body + 3].copy_from_slice(&(hlen as u16).to_be_bytes());
        buf[body + PREFIX_LEN..at].copy_from_slice(headers);
        let frame_len = if payload.is_empty() {
            buf[body] = FORMAT_HEADERS_ONLY;
            0
        } else {
            buf[body] = FORMAT_CODEC;
            let enc = self.encoders[p]
                .as_mut()
                .expect("tunnelled partner has an encoder");
            match enc.encode(payload, &mut buf[at..max - tag]) {
                Ok(meta) => meta.len,
                Err(e) => {
                    tracing::trace!(error = %e, "encode failed");
                    wan.release(out);
                    self.count(Some(p), Counter::DropMalformed, 1);
                    return Action::Drop(Port::Lan, frame);
                }
            }
        };
        let plain_end = at + frame_len;
        let (lane, now) = (self.lane, self.now);
        let idx = self.local_index[p].expect("tunnelled partner has a session");
        let session = self.sessions.get_mut(idx).expect("installed");
        let sealed = match session.seal_data(lane, &mut buf[body..plain_end], now) {
            Ok(s) => s,
            Err(e) => {
                tracing::trace!(error = %e, "seal refused");
                wan.release(out);
                self.count(Some(p), Counter::DropSealRefused, 1);
                return Action::Drop(Port::Lan, frame);
            }
        };
        buf[olen..body].copy_from_slice(&sealed.header);
        let end = plain_end + sealed.trailer().len();
        buf[plain_end..end].copy_from_slice(sealed.trailer());
        self.ip_id = self.ip_id.wrapping_add(1);
        if outer.write(&mut buf[..end], self.ip_id).is_err() || !out.set_len(end) {
            wan.release(out);
            self.count(Some(p), Counter::DropMalformed, 1);
            return Action::Drop(Port::Lan, frame);
        }
        lan.release(frame);
        let c = &mut self.counts[p];
        c[Counter::EncodedPackets as usize] += 1;
        c[Counter::BytesBefore as usize] += payload_len as u64;
        c[Counter::BytesAfter as usize] += (frame_len + payload_len + hlen - total) as u64;
        c[Counter::WanPacketsOut as usize] += 1;
        c[Counter::WanBytesOut as usize] += (end - ETH_HLEN) as u64;
        Action::Transmit(Port::Wan, out)
    }

    /// Answers a packet too big for the tunnel with ICMP "fragmentation needed" /
    /// "packet too big" toward its sender, when one may be sent.
    fn too_big(&mut self, lan: &mut dyn PacketIo, frame: Frame, ip_at: usize) -> Action {
        let original = lan.data(&frame);
        let Some((src, _)) = packet::addresses(&original[ip_at..]) else {
            return Action::Drop(Port::Lan, frame);
        };
        let router: Option<IpAddr> = match src {
            IpAddr::V4(_) => self.config.router_v4.map(Into::into),
            IpAddr::V6(_) => self.config.router_v6.map(Into::into),
        };
        let mtu = self.config.inner_mtu() as u32;
        let fragmentable = matches!(
            packet::check_mtu(&original[ip_at..], 0, 0),
            packet::MtuCheck::TooBigFragmentable
        );
        let Some(router) = router.filter(|_| !fragmentable) else {
            return Action::Drop(Port::Lan, frame);
        };
        let Some(n) = icmp::write_error(
            &original[ip_at..],
            IcmpError::PacketTooBig { mtu },
            router,
            &mut self.scratch[ETH_HLEN..],
        ) else {
            return Action::Drop(Port::Lan, frame);
        };
        let ethertype = if router.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        self.scratch[0..6].copy_from_slice(&original[6..12]);
        self.scratch[6..12].copy_from_slice(&original[0..6]);
        self.scratch[12..14].copy_from_slice(&ethertype.to_be_bytes());
        // Reuse the frame: the reply is never longer than 14 + 576 / 1280 bytes.
        let mut reply = frame;
        if !reply.set_len(ETH_HLEN + n) {
            return Action::Drop(Port::Lan, reply);
        }
        lan.data_mut(&reply)
            .copy_from_slice(&self.scratch[..ETH_HLEN + n]);
        Action::Transmit(Port::Lan, reply)
    }

    /// WAN → LAN.
    fn decode(&mut self, ports: &mut Ports, frame: Frame) -> Action {
        let Ports { lan, wan } = ports;
        let wire_len = frame.len();
        let data = wan.data_mut(&frame);
        let Some(udp) = udp_payload(data) else {
            self.count(None, Counter::DropMalformed, 1);
            return Action::Drop(Port::Wan, frame);
        };
        let lane = u16::from_be_bytes([data[udp.start + 4], data[udp.start + 5]]);
        let owner = usize::from(lane) % self.config.workers;
        if owner != self.index {
            return Action::Handoff {
                worker: owner,
                from: Port::Wan,
                frame,
            };
        }
        let index = u32::from_be_bytes(
            data[udp.start + 8..udp.start + 12]
                .try_into()
                .expect("4 bytes"),
        );
        let partner = self.partner_of_index(index);
        let opened = match self.sessions.open(&mut data[udp.clone()], self.now) {
            Ok((_, o)) => o,
            Err(e) => {
                let c = match e {
                    OpenError::Replayed(_) => Counter::DropReplay,
                    OpenError::AuthFailed => Counter::DropAuthFailed,
                    OpenError::StaleEpoch(_) => Counter::DropStaleEpoch,
                    _ => Counter::DropMalformed,
                };
                tracing::trace!(error = %e, "tunnel packet dropped");
                self.count(partner, c, 1);
                return Action::Drop(Port::Wan, frame);
            }
        };
        let Some(p) = partner else {
            return Action::Drop(Port::Wan, frame);
        };
        self.count(Some(p), Counter::WanPacketsIn, 1);
        self.count(Some(p), Counter::WanBytesIn, (wire_len - ETH_HLEN) as u64);
        let plain = udp.start + opened.payload.start..udp.start + opened.payload.end;
        if let PacketType::Control(_) = opened.header.packet_type {
            self.on_control(p, &data[plain]);
            return Action::Drop(Port::Wan, frame);
        }
        let plain = &data[plain];
        if plain.len() < PREFIX_LEN {
            self.count(Some(p), Counter::DropMalformed, 1);
            return Action::Drop(Port::Wan, frame);
        }
        let format = plain[0];
        let hlen = usize::from(u16::from_be_bytes([plain[1], plain[2]]));
        if hlen < 20 || PREFIX_LEN + hlen > plain.len() || format > FORMAT_HEADERS_ONLY {
            self.count(Some(p), Counter::DropMalformed, 1);
            return Action::Drop(Port::Wan, frame);
        }
        let headers = &plain[PREFIX_LEN..PREFIX_LEN + hlen];
        let body = &plain[PREFIX_LEN + hlen..];
        let Some(mut out) = lan.alloc() else {
            self.count(Some(p), Counter::DropNoBuffer, 1);
            return Action::Drop(Port::Wan, frame);
        };
        let room = out.len() + out.tailroom();
        if !out.set_len(room) || room < ETH_HLEN + hlen {
            lan.release(out);
            self.count(Some(p), Counter::DropNoBuffer, 1);
            return Action::Drop(Port::Wan, frame);
        }
        let buf = lan.data_mut(&out);
        buf[ETH_HLEN..ETH_HLEN + hlen].copy_from_slice(headers);
        let n = if format == FORMAT_HEADERS_ONLY {
            0
        } else {
            let lanes = &mut self.decoders[p];
            let Some(slot) = lanes.get_mut(usize::from(lane)) else {
                lan.release(out);
                self.count(Some(p), Counter::DropMalformed, 1);
                return Action::Drop(Port::Wan, frame);
            };
            if slot.is_none() {
                match Decoder::new(lane, self.config.codec) {
                    Ok(d) => *slot = Some(d),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot create a history decoder");
                        lan.release(out);
                        self.count(Some(p), Counter::DropNoBuffer, 1);
                        return Action::Drop(Port::Wan, frame);
                    }
                }
            }
            let dec = slot.as_mut().expect("created above");
            match dec.decode(body, &mut buf[ETH_HLEN + hlen..]) {
                Ok(meta) => meta.len,
                Err(e) => {
                    let c = if e.is_miss() {
                        Counter::DropHistoryMiss
                    } else {
                        Counter::DropMalformed
                    };
                    lan.release(out);
                    self.count(Some(p), c, 1);
                    self.report_holes(wan.as_mut(), p, lane);
                    return Action::Drop(Port::Wan, frame);
                }
            }
        };
        let end = ETH_HLEN + hlen + n;
        let _ = out.set_len(end);
        let ip = &mut buf[ETH_HLEN..end];
        let dst = packet::addresses(ip).map(|(_, d)| d);
        match packet::decrement_ttl(ip) {
            Hop::Forward => {}
            Hop::Expired => {
                lan.release(out);
                self.count(Some(p), Counter::DropTtlExpired, 1);
                return Action::Drop(Port::Wan, frame);
            }
            Hop::Malformed => {
                lan.release(out);
                self.count(Some(p), Counter::DropMalformed, 1);
                return Action::Drop(Port::Wan, frame);
            }
        }
        let ethertype = if ip[0] >> 4 == 4 {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        let hop = match dst.map(|d| self.hops.lookup(d)) {
            Some(Ok(h)) if h.ifindex == self.config.lan_ifindex => h,
            _ => {
                lan.release(out);
                self.count(Some(p), Counter::DropNoNextHop, 1);
                return Action::Drop(Port::Wan, frame);
            }
        };
        packet::set_macs(buf, hop.dst_mac, hop.src_mac);
        buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
        wan.release(frame);
        let c = &mut self.counts[p];
        c[Counter::BytesRestored as usize] += n as u64;
        c[Counter::DecodedPackets as usize] += 1;
        if n > 0 {
            let check = &mut self.hole_check[p][usize::from(lane)];
            *check += 1;
            if *check >= HOLE_CHECK_EVERY {
                *check = 0;
                self.report_holes(wan.as_mut(), p, lane);
            }
        }
        Action::Transmit(Port::Lan, out)
    }
}

impl Pipeline {
    /// A control message from partner `p`.
    fn on_control(&mut self, p: usize, message: &[u8]) {
        self.count(Some(p), Counter::ControlReceived, 1);
        match ControlMessage::parse(message) {
            Ok(ControlMessage::Forget(forget)) => self.route_forget(p, forget),
            // Summaries matter after a restart with a persistent history; this pipeline
            // keeps history in memory only, so a fresh encoder never needs one.
            Ok(ControlMessage::Summary(_)) => {}
            Err(e) => {
                tracing::debug!(error = %e, "malformed control message");
                self.count(Some(p), Counter::DropMalformed, 1);
            }
        }
    }

    /// Applies a forget message to the encoder of its lane, here or on its worker.
    fn route_forget(&mut self, p: usize, forget: ForgetRanges) {
        let owner = usize::from(forget.lane);
        if owner == self.index {
            if let Some(Some(enc)) = self.encoders.get_mut(p) {
                enc.apply_forget(&forget);
                self.count(Some(p), Counter::ForgetsApplied, 1);
            }
        } else if owner < self.config.workers {
            if self.shared.forgets[owner].push((p, forget)).is_err() {
                self.count(Some(p), Counter::DropQueueFull, 1);
            }
        } else {
            self.count(Some(p), Counter::DropMalformed, 1);
        }
    }

    /// Sends the decoder's pending forget message for `lane` of partner `p`, if any.
    fn report_holes(&mut self, wan: &mut dyn PacketIo, p: usize, lane: u16) {
        let Some(Some(dec)) = self.decoders[p].get_mut(usize::from(lane)) else {
            return;
        };
        let n = match dec.take_control(&mut self.scratch) {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot write a forget message");
                return;
            }
        };
        let Some(hop) = self.wan_hop(p) else {
            self.count(Some(p), Counter::DropNoNextHop, 1);
            return;
        };
        let outer = self.outer(p, hop);
        let Some(mut out) = wan.alloc() else {
            self.count(Some(p), Counter::DropNoBuffer, 1);
            return;
        };
        let body = outer.len() + HEADER_LEN;
        let end = body + n + TAG_LEN;
        if !out.set_len(end) {
            wan.release(out);
            return;
        }
        let buf = wan.data_mut(&out);
        buf[body..body + n].copy_from_slice(&self.scratch[..n]);
        let (my_lane, now) = (self.lane, self.now);
        let Some(session) = self.session(p) else {
            wan.release(out);
            return;
        };
        let sealed = match session.seal_control(
            ControlKind::ForgetRanges,
            my_lane,
            &mut buf[body..body + n],
            now,
        ) {
            Ok(s) => s,
            Err(_) => {
                wan.release(out);
                self.count(Some(p), Counter::DropSealRefused, 1);
                return;
            }
        };
        buf[body - HEADER_LEN..body].copy_from_slice(&sealed.header);
        let end = body + n + sealed.trailer().len();
        buf[body + n..end].copy_from_slice(sealed.trailer());
        self.ip_id = self.ip_id.wrapping_add(1);
        if outer.write(&mut buf[..end], self.ip_id).is_err() || !out.set_len(end) {
            wan.release(out);
            return;
        }
        self.count(Some(p), Counter::ControlSent, 1);
        self.count(Some(p), Counter::WanPacketsOut, 1);
        self.count(Some(p), Counter::WanBytesOut, (end - ETH_HLEN) as u64);
        if let Err(f) = self.control.push(out) {
            wan.release(f);
            return;
        }
        if self.control.room() == 0 {
            let _ = wan.send(&mut self.control);
        }
    }
}

/// The UDP payload of an outer IPv4/IPv6 packet in an Ethernet frame, when it is long
/// enough to hold a tunnel header.
fn udp_payload(frame: &[u8]) -> Option<std::ops::Range<usize>> {
    let ip_at = packet::ip_offset(frame)?;
    let ip = &frame[ip_at..];
    let (proto, l4) = match packet::version(ip)? {
        4 => (ip[9], usize::from(ip[0] & 0x0f) * 4),
        _ => (*ip.get(6)?, 40),
    };
    if proto != 17 {
        return None;
    }
    let udp = ip_at + l4;
    let len = usize::from(u16::from_be_bytes([
        *frame.get(udp + 4)?,
        *frame.get(udp + 5)?,
    ]));
    let end = udp.checked_add(len).filter(|&e| e <= frame.len())?;
    (len >= 8 + HEADER_LEN).then_some(udp + 8..end)
}

impl Process for Pipeline {
    fn begin(&mut self, _worker: usize) {
        self.now = wall_clock();
        self.hops.refresh();
        self.take_forgets();
        if self.now >= self.next_maintain {
            self.next_maintain = self.now + MAINTAIN_EVERY;
            self.maintain();
        }
    }

    fn process(&mut self, ports: &mut Ports, from: Port, frame: Frame) -> Action {
        let action = match from {
            Port::Lan => self.encode(ports, frame),
            Port::Wan => self.decode(ports, frame),
        };
        if !self.control.is_empty() {
            let _ = ports.wan.send(&mut self.control);
        }
        action
    }

    fn end(&mut self, _worker: usize) {
        self.shared.counters[self.index].store(&self.counts);
    }
}
