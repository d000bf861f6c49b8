//! One checked TCP transfer between the testbed's client and server, with the WAN
//! emulator's byte counters and the CPU time of the tunnel processes around it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use sha2::{Digest, Sha256};
use shunt_tests::testbed::Testbed;

/// A data set: the bytes and their SHA-256.
pub struct Payload {
    /// The bytes the client sends.
    pub data: Arc<Vec<u8>>,
    /// Their SHA-256.
    pub sha256: [u8; 32],
}

impl Payload {
    /// Hashes `data` once.
    pub fn new(data: Vec<u8>) -> Self {
        let sha256 = Sha256::digest(&data).into();
        Self {
            data: Arc::new(data),
            sha256,
        }
    }
}

/// What one transfer measured.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Bytes the client sent (and the server received, with the same SHA-256).
    pub bytes: u64,
    /// Connect to the receiver's end of stream.
    pub elapsed: Duration,
    /// Ethernet bytes the WAN emulator forwarded site A → site B.
    pub wan_bytes_fwd: u64,
    /// Ethernet bytes it forwarded site B → site A (acknowledgements).
    pub wan_bytes_rev: u64,
    /// CPU seconds of the tunnel processes of both sites (user + system).
    pub tunnel_cpu: f64,
    /// CPU seconds the whole machine was busy (all cores, every process, softirq).
    pub machine_cpu: f64,
    /// Of which softirq (where the kernel forwards and runs XDP).
    pub softirq_cpu: f64,
}

impl Sample {
    /// Goodput in Mbit/s.
    pub fn goodput_mbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Sends `payload` from the client to the server (`port` on the server's IPv4
/// address) and checks that the same bytes arrived. `pids` are the tunnel processes
/// whose CPU time is charged to the transfer.
pub fn transfer(
    tb: &Testbed,
    port: u16,
    payload: &Payload,
    pids: &[u32],
    timeout: Duration,
) -> anyhow::Result<Sample> {
    let wanem = tb.wanem().context("the testbed has no WAN emulator")?;
    let addr = SocketAddr::new(tb.server.ipv4.into(), port);
    let listener = tb
        .server
        .netns
        .enter(move || TcpListener::bind(addr))?
        .with_context(|| format!("cannot listen on {addr} in the server namespace"))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let receiver = tb
        .server
        .netns
        .spawn_thread(move || receive(listener, deadline))?;

    let cpu_before = cpu_seconds(pids)?;
    let machine_before = MachineCpu::read()?;
    let wan_before = wanem.stats();
    let started = Instant::now();
    let data = payload.data.clone();
    let sent = tb.client.netns.enter(move || -> anyhow::Result<()> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to {addr}"))?;
        s.set_write_timeout(Some(timeout))?;
        for chunk in data.chunks(1 << 16) {
            s.write_all(chunk).context("write stalled or reset")?;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?;
    sent?;
    let (bytes, sha256, done) = received?;
    let elapsed = done - started;
    // Frames still in the emulator's queue (delay) belong to this transfer.
    std::thread::sleep(wanem.config().a_to_b.delay + Duration::from_millis(50));
    let wan_after = wanem.stats();
    let cpu_after = cpu_seconds(pids)?;
    let machine = MachineCpu::read()?.since(&machine_before);
    ensure!(
        bytes == payload.data.len() as u64,
        "short transfer: {bytes} of {} bytes arrived",
        payload.data.len()
    );
    ensure!(
        sha256 == payload.sha256,
        "corrupted transfer: SHA-256 of the received bytes differs from the sent ones"
    );
    Ok(Sample {
        bytes,
        elapsed,
        wan_bytes_fwd: wan_after.a_to_b.tx_bytes - wan_before.a_to_b.tx_bytes,
        wan_bytes_rev: wan_after.b_to_a.tx_bytes - wan_before.b_to_a.tx_bytes,
        tunnel_cpu: cpu_after - cpu_before,
        machine_cpu: machine.busy,
        softirq_cpu: machine.softirq,
    })
}

fn receive(listener: TcpListener, deadline: Instant) -> anyhow::Result<(u64, [u8; 32], Instant)> {
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection arrived before the deadline");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e).context("accept failed"),
        }
    };
    stream.set_nonblocking(false)?;
    let (mut hash, mut total, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 16]);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "transfer did not finish before the deadline"
        );
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf).context("read stalled or reset")?;
        if n == 0 {
            return Ok((total, hash.finalize().into(), Instant::now()));
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
}

/// Clock ticks per second of `/proc` times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// User + system CPU seconds of `pids` (all threads of each process).
pub fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    let mut total = 0u64;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {path}: did the tunnel process die?"))?;
        // Fields after the parenthesised command name: state is field 3, utime 14,
        // stime 15 (1-based, proc(5)).
        let rest = text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("unexpected /proc/PID/stat format")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i - 3)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("no field {i} in {path}"))
        };
        total += tick(14)? + tick(15)?;
    }
    Ok(total as f64 / TICKS)
}

/// Machine-wide CPU time from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct MachineCpu {
    busy: f64,
    softirq: f64,
}

impl MachineCpu {
    fn read() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        let line = text.lines().next().context("empty /proc/stat")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        ensure!(v.len() >= 8, "unexpected /proc/stat format: {line}");
        // user nice system idle iowait irq softirq steal
        let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        Ok(Self {
            busy: busy as f64 / TICKS,
            softirq: v[6] as f64 / TICKS,
        })
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            busy: self.busy - before.busy,
            softirq: self.softirq - before.softirq,
        }
    }
}
