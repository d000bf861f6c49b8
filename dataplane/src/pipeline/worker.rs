//! The per-worker [`Pipeline`]: encode LAN → WAN, decode WAN → LAN.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::bundle::{BundleReader, BundleWriter, Member, MemberError};
use super::counters::{COUNTERS, Counter, Counts};
use super::history::WorkerHistory;
use super::inner;
use super::{Command, LaneMessage, PipelineConfig, Shared};
use crate::codec::{Decoder, Encoder};
use crate::forward::icmp::{self, IcmpError};
use crate::forward::packet::{self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Hop};
use crate::forward::{NextHopView, OuterHeaders};
use crate::io::{Batch, Frame, PacketIo, Port};
use crate::tunnel::config::PortIo;
use crate::tunnel::{
    ControlKind, HEADER_LEN, KeyLimits, Mode, OpenError, PacketType, Session, SessionTable, TAG_LEN,
};
use crate::worker::{Action, Ports, Process};

/// How often keys, retirements and counters are looked after.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
/// Decoded packets of a lane between two checks for holes to report.
const HOLE_CHECK_EVERY: u32 = 256;

mod summaries;
use summaries::PartnerHistory;
/// A tunnel packet being filled with the packets of one batch toward one partner.
struct OpenBundle {
    frame: Frame,
    /// Where the plaintext (the bundle) starts in the frame.
    body: usize,
    /// Where the bundle must end (room for the tag after it).
    limit: usize,
    outer: OuterHeaders,
}

/// One worker's fast path. Worker `i` encodes on lane `i` and decodes the lanes `l`
/// with `l % workers == i`; a tunnel packet of another worker's lane is handed to it.
pub struct Pipeline {
    index: usize,
    lane: u16,
    /// This worker's copy; agent commands change its partners.
    config: PipelineConfig,
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
    /// Per partner: the bundle being filled in this batch, and its writer.
    open: Vec<Option<OpenBundle>>,
    writers: Vec<BundleWriter>,
    /// Bundles ready to go out, and LAN packets restored from bundles.
    wan_out: Batch,
    lan_out: Batch,
    /// One codec frame (encode) or a frame rebuilt from a bundle (decode).
    frame_scratch: Box<[u8]>,
    scratch: Box<[u8]>,
    /// Per partner: persistence and summary exchange.
    history: Vec<PartnerHistory>,
    /// A summary round is due (set once per [`MAINTAIN_EVERY`]).
    summary_round: bool,
    /// Some summary may be owed: look at [`Pipeline::history`] at the next flush.
    summaries_due: bool,
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
        let lane = u16::try_from(index).map_err(|_| super::PipelineError::TooManyWorkers)?;
        let partners = config.partners.len();
        let frame_scratch = vec![0u8; config.codec.max_payload + 64].into_boxed_slice();
        let mut pipeline = Self {
            index,
            lane,
            hole_check: vec![Vec::new(); partners],
            config: (*config).clone(),
            shared,
            hops,
            sessions: SessionTable::new(),
            local_index: vec![None; partners],
            encoders: (0..partners).map(|_| None).collect(),
            decoders: (0..partners).map(|_| Vec::new()).collect(),
            counts: vec![[0; COUNTERS]; partners + 1],
            control: Batch::with_capacity(16),
            open: (0..partners).map(|_| None).collect(),
            writers: (0..partners).map(|_| BundleWriter::new()).collect(),
            wan_out: Batch::with_capacity(64),
            lan_out: Batch::with_capacity(64),
            frame_scratch,
            scratch: vec![0u8; 4096].into_boxed_slice(),
            history: (0..partners).map(|_| PartnerHistory::default()).collect(),
            summary_round: false,
            summaries_due: false,
            now,
            next_maintain: now + MAINTAIN_EVERY,
            ip_id: (index as u16).wrapping_mul(0x3001),
        };
        for p in 0..partners {
            pipeline.open_slot(p)?;
        }
        Ok(pipeline)
    }

    /// (Re)creates partner `p`'s session, encoder and decoders from its plan; whatever
    /// the slot held before (keys, history) is dropped.
    fn open_slot(&mut self, p: usize) -> Result<(), super::PipelineError> {
        if let Some(idx) = self.local_index[p].take() {
            self.sessions.remove(idx);
        }
        self.encoders[p] = None;
        self.decoders[p] = Vec::new();
        self.hole_check[p] = Vec::new();
        self.history[p] = PartnerHistory::default();
        let plan = &self.config.partners[p];
        let Some(params) = plan.params.clone() else {
            return Ok(());
        };
        if usize::from(params.lanes) < self.config.workers {
            return Err(super::PipelineError::TooManyWorkers);
        }
        let lanes = usize::from(params.lanes);
        let limits: KeyLimits = params.limits.per_worker(self.config.workers as u16);
        let params = crate::tunnel::SessionParams { limits, ..params };
        let idx = params.local_index;
        let session = self.sessions.install(params, self.now)?;
        if let Some(k) = &plan.keying {
            k.tick(session, self.now)?;
        }
        self.local_index[p] = Some(idx);
        self.encoders[p] = Some(self.config.encoder_for(p, self.lane)?);
        self.decoders[p] = (0..lanes).map(|_| None).collect();
        self.hole_check[p] = vec![0; lanes];
        self.history[p] = PartnerHistory::with_lanes(lanes);
        Ok(())
    }

    /// Applies the agent's commands queued for this worker.
    fn take_commands(&mut self) {
        let mut last = None;
        while let Some((sequence, command)) = self.shared.commands[self.index].pop() {
            self.apply(command);
            last = Some(sequence);
        }
        if let Some(sequence) = last {
            // Counters first, so that a reader who sees the sequence sees the rows the
            // command reset.
            self.shared.counters[self.index].store(&self.counts);
            self.shared.applied[self.index].store(sequence, Ordering::Release);
        }
    }

    fn apply(&mut self, command: Command) {
        let now = self.now;
        match command {
            Command::SetPartner { slot, plan, keys } => {
                if slot >= self.config.partners.len() {
                    tracing::warn!(worker = self.index, slot, "partner slot out of range");
                    return;
                }
                if self.config.partners[slot].name != plan.name {
                    self.counts[slot] = [0; COUNTERS];
                }
                self.config.partners[slot] = *plan;
                if let Err(e) = self.open_slot(slot) {
                    tracing::warn!(worker = self.index, slot, error = %e, "cannot set up the partner session");
                    return;
                }
                if let Some((epoch, keys)) = keys
                    && let Some(session) = self.session(slot)
                    && let Err(e) = session.install_epoch(epoch, &keys, now)
                {
                    tracing::warn!(worker = self.index, slot, error = %e, "cannot install keys");
                }
            }
            Command::AddEpoch { slot, epoch, keys } => {
                let Some(session) = self
                    .local_index
                    .get(slot)
                    .copied()
                    .flatten()
                    .and_then(|i| self.sessions.get_mut(i))
                else {
                    return;
                };
                let switched = session.install_epoch(epoch, &keys, now).and_then(|()| {
                    if session.has_next_send_key() {
                        session.switch_send_epoch(now).map(Some)
                    } else {
                        Ok(None)
                    }
                });
                if let Err(e) = switched {
                    tracing::warn!(worker = self.index, slot, epoch, error = %e, "cannot install keys");
                }
            }
            Command::AttachHistory { slot, history } => {
                if slot >= self.config.partners.len() {
                    return;
                }
                self.reset_partner_history(slot);
                if let Some(history) = history {
                    self.attach_partner_history(slot, *history);
                }
            }
        }
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
        self.summary_round = true;
        self.summaries_due = true;
    }

    /// Control messages other workers received for lanes this worker owns.
    fn take_lane_messages(&mut self) {
        while let Some((p, message)) = self.shared.lane_messages[self.index].pop() {
            self.apply_lane_message(p, message);
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
        if self.config.io == PortIo::Tun {
            return Some(kernel_hop(
                self.config.wan_ifindex,
                self.config.partners[p].remote.ip(),
            ));
        }
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
        let hlen = inner::header_len(ip);
        let (headers, payload) = ip.split_at(hlen);
        if self.open[p].is_none() && self.wan_hop(p).is_none() {
            // Checked before encoding, so the history does not move for nothing.
            self.count(Some(p), Counter::DropNoNextHop, 1);
            return Action::Drop(Port::Lan, frame);
        }
        let mut scratch = std::mem::take(&mut self.frame_scratch);
        // Compression off for this partner (or, folded into every plan, for the
        // whole appliance).
        let raw = !self.config.partners[p].compress;
        let frame_len = if payload.is_empty() || raw {
            0
        } else {
            let Some(enc) = self.encoders[p].as_mut() else {
                self.frame_scratch = scratch;
                self.count(Some(p), Counter::DropSealRefused, 1);
                return Action::Drop(Port::Lan, frame);
            };
            match enc.encode(payload, &mut scratch) {
                Ok(meta) => meta.len,
                Err(e) => {
                    tracing::trace!(error = %e, "encode failed");
                    self.frame_scratch = scratch;
                    self.count(Some(p), Counter::DropMalformed, 1);
                    return Action::Drop(Port::Lan, frame);
                }
            }
        };
        let member = Member {
            headers,
            payload,
            frame: &scratch[..frame_len],
            raw,
        };
        let added = self.bundle_append(wan.as_mut(), p, &member);
        self.frame_scratch = scratch;
        if !added {
            return Action::Drop(Port::Lan, frame);
        }
        let c = &mut self.counts[p];
        c[Counter::EncodedPackets as usize] += 1;
        c[Counter::BytesBefore as usize] += (total - hlen) as u64;
        c[Counter::BytesAfter as usize] += if raw { total - hlen } else { frame_len } as u64;
        Action::Consumed(Port::Lan, frame)
    }

    /// Adds a packet to partner `p`'s bundle of this batch, sending the bundle first
    /// when the packet does not fit. False (counted) when it cannot be sent.
    fn bundle_append(&mut self, wan: &mut dyn PacketIo, p: usize, m: &Member<'_>) -> bool {
        if let Some(open) = &self.open[p] {
            let buf = wan.data_mut(&open.frame);
            if self.writers[p].append(&mut buf[open.body..open.limit], m) {
                return true;
            }
            self.seal_bundle(wan, p);
        }
        let Some(hop) = self.wan_hop(p) else {
            self.count(Some(p), Counter::DropNoNextHop, 1);
            return false;
        };
        let outer = self.outer(p, hop);
        let Some(mut out) = wan.alloc() else {
            self.count(Some(p), Counter::DropNoBuffer, 1);
            return false;
        };
        let tag = if self.config.partners[p].mode == Mode::Encrypted {
            TAG_LEN
        } else {
            0
        };
        let body = outer.len() + HEADER_LEN;
        let cap = out.len() + out.tailroom();
        let limit = (ETH_HLEN + self.config.wan_mtu).min(cap) - tag;
        if limit <= body || !out.set_len(limit + tag) {
            wan.release(out);
            self.count(Some(p), Counter::DropNoBuffer, 1);
            return false;
        }
        let buf = wan.data_mut(&out);
        let writer = &mut self.writers[p];
        writer.start(&mut buf[body..limit]);
        if !writer.append(&mut buf[body..limit], m) {
            wan.release(out);
            self.count(Some(p), Counter::DropTooBig, 1);
            return false;
        }
        self.open[p] = Some(OpenBundle {
            frame: out,
            body,
            limit,
            outer,
        });
        true
    }

    /// Seals partner `p`'s open bundle and queues it for the WAN port.
    fn seal_bundle(&mut self, wan: &mut dyn PacketIo, p: usize) {
        let Some(open) = self.open[p].take() else {
            return;
        };
        let OpenBundle {
            frame: mut out,
            body,
            outer,
            ..
        } = open;
        let members = self.writers[p].members() as u64;
        let plain_end = body + self.writers[p].len();
        let (lane, now) = (self.lane, self.now);
        let Some(session) = self.local_index[p].and_then(|i| self.sessions.get_mut(i)) else {
            wan.release(out);
            self.count(Some(p), Counter::DropSealRefused, members);
            return;
        };
        let buf = wan.data_mut(&out);
        let sealed = match session.seal_data(lane, &mut buf[body..plain_end], now) {
            Ok(s) => s,
            Err(e) => {
                tracing::trace!(error = %e, "seal refused");
                wan.release(out);
                self.count(Some(p), Counter::DropSealRefused, members);
                return;
            }
        };
        let olen = outer.len();
        buf[olen..body].copy_from_slice(&sealed.header);
        let end = plain_end + sealed.trailer().len();
        buf[plain_end..end].copy_from_slice(sealed.trailer());
        self.ip_id = self.ip_id.wrapping_add(1);
        if outer.write(&mut buf[..end], self.ip_id).is_err() || !out.set_len(end) {
            wan.release(out);
            self.count(Some(p), Counter::DropMalformed, members);
            return;
        }
        let c = &mut self.counts[p];
        c[Counter::WanPacketsOut as usize] += 1;
        c[Counter::WanBytesOut as usize] += (end - ETH_HLEN) as u64;
        if let Err(f) = self.wan_out.push(out) {
            wan.release(f);
        }
        if self.wan_out.room() == 0 {
            let _ = wan.send(&mut self.wan_out);
        }
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
        if let PacketType::Control(kind) = opened.header.packet_type {
            self.on_control(p, kind, &data[plain]);
            return Action::Drop(Port::Wan, frame);
        }
        let plain = &data[plain];
        let Ok(mut reader) = BundleReader::new(plain) else {
            self.count(Some(p), Counter::DropMalformed, 1);
            return Action::Drop(Port::Wan, frame);
        };
        let lanes = &mut self.decoders[p];
        let Some(slot) = lanes.get_mut(usize::from(lane)) else {
            self.count(Some(p), Counter::DropMalformed, 1);
            return Action::Drop(Port::Wan, frame);
        };
        if slot.is_none() {
            match self.config.decoder_for(p, lane) {
                Ok(d) => *slot = Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a history decoder");
                    self.count(Some(p), Counter::DropNoBuffer, 1);
                    return Action::Drop(Port::Wan, frame);
                }
            }
        }
        let dec = slot.as_mut().expect("created above");
        let c = &mut self.counts[p];
        let mut missed = false;
        let mut restored = 0u32;
        let kernel_routes = self.config.io == PortIo::Tun;
        let lan_ifindex = self.config.lan_ifindex;
        loop {
            let Some(mut out) = lan.alloc() else {
                c[Counter::DropNoBuffer as usize] += 1;
                break;
            };
            let room = out.len() + out.tailroom();
            if !out.set_len(room) || room <= ETH_HLEN {
                lan.release(out);
                c[Counter::DropNoBuffer as usize] += 1;
                break;
            }
            let buf = lan.data_mut(&out);
            let (end, n) =
                match reader.next_into(dec, &mut self.frame_scratch, &mut buf[ETH_HLEN..]) {
                    None => {
                        lan.release(out);
                        break;
                    }
                    Some(Ok((len, n))) => (ETH_HLEN + len, n),
                    Some(Err(e)) => {
                        lan.release(out);
                        let counter = match &e {
                            MemberError::Codec(e) if e.is_miss() => {
                                missed = true;
                                Counter::DropHistoryMiss
                            }
                            _ => Counter::DropMalformed,
                        };
                        tracing::trace!(error = %e, "bundle member dropped");
                        c[counter as usize] += 1;
                        continue;
                    }
                };
            let _ = out.set_len(end);
            let ip = &mut buf[ETH_HLEN..end];
            let dst = packet::addresses(ip).map(|(_, d)| d);
            // With TUN ports the kernel forwards the packet on (and decrements the TTL).
            let drop = match if kernel_routes {
                Hop::Forward
            } else {
                packet::decrement_ttl(ip)
            } {
                Hop::Forward => None,
                Hop::Expired => Some(Counter::DropTtlExpired),
                Hop::Malformed => Some(Counter::DropMalformed),
            };
            if let Some(counter) = drop {
                lan.release(out);
                c[counter as usize] += 1;
                continue;
            }
            let ethertype = if ip[0] >> 4 == 4 {
                ETH_P_IP
            } else {
                ETH_P_IPV6
            };
            let hop = match dst.map(|d| {
                if kernel_routes {
                    Ok(kernel_hop(lan_ifindex, d))
                } else {
                    self.hops.lookup(d)
                }
            }) {
                Some(Ok(h)) if h.ifindex == lan_ifindex => h,
                _ => {
                    lan.release(out);
                    c[Counter::DropNoNextHop as usize] += 1;
                    continue;
                }
            };
            packet::set_macs(buf, hop.dst_mac, hop.src_mac);
            buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
            c[Counter::BytesRestored as usize] += n as u64;
            c[Counter::DecodedPackets as usize] += 1;
            if n > 0 {
                restored += 1;
            }
            if let Err(f) = self.lan_out.push(out) {
                lan.release(f);
            }
            if self.lan_out.room() == 0 {
                let _ = lan.send(&mut self.lan_out);
            }
        }
        let check = &mut self.hole_check[p][usize::from(lane)];
        *check += restored;
        if missed || *check >= HOLE_CHECK_EVERY {
            *check = 0;
            self.report_holes(wan.as_mut(), p, lane);
        }
        Action::Consumed(Port::Wan, frame)
    }
}

impl Pipeline {
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
        self.send_control(wan, p, ControlKind::ForgetRanges, n);
    }

    /// Seals the control message in `scratch[..n]` toward partner `p` on this worker's
    /// lane and queues it; returns whether it was queued.
    fn send_control(
        &mut self,
        wan: &mut dyn PacketIo,
        p: usize,
        kind: ControlKind,
        n: usize,
    ) -> bool {
        let Some(hop) = self.wan_hop(p) else {
            self.count(Some(p), Counter::DropNoNextHop, 1);
            return false;
        };
        let outer = self.outer(p, hop);
        let Some(mut out) = wan.alloc() else {
            self.count(Some(p), Counter::DropNoBuffer, 1);
            return false;
        };
        let body = outer.len() + HEADER_LEN;
        let end = body + n + TAG_LEN;
        if !out.set_len(end) {
            wan.release(out);
            return false;
        }
        let buf = wan.data_mut(&out);
        buf[body..body + n].copy_from_slice(&self.scratch[..n]);
        let (my_lane, now) = (self.lane, self.now);
        let Some(session) = self.session(p) else {
            wan.release(out);
            return false;
        };
        let sealed = match session.seal_control(kind, my_lane, &mut buf[body..body + n], now) {
            Ok(s) => s,
            Err(_) => {
                wan.release(out);
                self.count(Some(p), Counter::DropSealRefused, 1);
                return false;
            }
        };
        buf[body - HEADER_LEN..body].copy_from_slice(&sealed.header);
        let end = body + n + sealed.trailer().len();
        buf[body + n..end].copy_from_slice(sealed.trailer());
        self.ip_id = self.ip_id.wrapping_add(1);
        if outer.write(&mut buf[..end], self.ip_id).is_err() || !out.set_len(end) {
            wan.release(out);
            return false;
        }
        self.count(Some(p), Counter::ControlSent, 1);
        self.count(Some(p), Counter::WanPacketsOut, 1);
        self.count(Some(p), Counter::WanBytesOut, (end - ETH_HLEN) as u64);
        if let Err(f) = self.control.push(out) {
            wan.release(f);
            return false;
        }
        if self.control.room() == 0 {
            let _ = wan.send(&mut self.control);
        }
        true
    }
}

/// The next hop on a port the kernel routes for (TUN, UDP socket): no link addresses.
fn kernel_hop(ifindex: u32, via: IpAddr) -> crate::forward::NextHop {
    crate::forward::NextHop {
        ifindex,
        via,
        src_mac: [0; 6],
        dst_mac: [0; 6],
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
        self.take_commands();
        self.take_lane_messages();
        if self.now >= self.next_maintain {
            self.next_maintain = self.now + MAINTAIN_EVERY;
            self.maintain();
        }
    }

    fn flush(&mut self, ports: &mut Ports) {
        for p in 0..self.open.len() {
            self.seal_bundle(ports.wan.as_mut(), p);
        }
        self.send_summaries(ports.wan.as_mut());
        if !self.control.is_empty() {
            let _ = ports.wan.send(&mut self.control);
        }
        if !self.wan_out.is_empty() {
            let _ = ports.wan.send(&mut self.wan_out);
        }
        if !self.lan_out.is_empty() {
            let _ = ports.lan.send(&mut self.lan_out);
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
        self.offer_history();
        self.shared.counters[self.index].store(&self.counts);
    }
}
