//! Traffic for tests: ping with parsed results and a checked TCP transfer between namespaces.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::netns::{Netns, NetnsError};

/// What `ping` reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingReport {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Average round-trip time of the replies, if any.
    pub rtt_avg: Option<Duration>,
}

/// Pings `to` from inside `from`: `count` requests `interval` apart, each waiting at
/// most `wait` for its reply. Returns the parsed summary whatever the loss.
pub fn ping(
    from: &Netns,
    to: IpAddr,
    count: u32,
    interval: Duration,
    wait: Duration,
) -> Result<PingReport, NetnsError> {
    let args = [
        "-n".to_owned(),
        "-q".to_owned(),
        "-c".to_owned(),
        count.to_string(),
        "-i".to_owned(),
        format!("{:.3}", interval.as_secs_f64()),
        "-W".to_owned(),
        format!("{:.3}", wait.as_secs_f64()),
        to.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = from.output("ping", &args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).ok_or_else(|| NetnsError::Parse {
        command: format!("ping {}", args.join(" ")),
        detail: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
    })
}

/// Result of [`tcp_transfer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes the receiver read.
    pub bytes: u64,
    /// FNV-1a hash of what was sent.
    pub sent_hash: u64,
    /// FNV-1a hash of what was received.
    pub received_hash: u64,
    /// Wall time from connect to the receiver's end of stream.
    pub elapsed: Duration,
}

/// Sends `bytes` of a deterministic pattern over TCP from a socket in `client` to a
/// listener in `server` bound to `server_addr`; the whole transfer must finish within
/// `timeout`. Compare `sent_hash` and `received_hash` to check integrity.
pub fn tcp_transfer(
    client: &Netns,
    server: &Netns,
    server_addr: SocketAddr,
    bytes: u64,
    timeout: Duration,
) -> Result<TransferReport, TransferError> {
    let listener = server.enter(|| TcpListener::bind(server_addr))??;
    let receiver = server.spawn_thread(move || -> io::Result<(u64, u64)> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 64 * 1024];
        let (mut total, mut hash) = (0u64, Fnv::new());
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok((total, hash.0));
            }
            hash.update(&buf[..n]);
            total += n as u64;
        }
    })?;
    let started = Instant::now();
    let sent_hash = client.enter(|| -> io::Result<u64> {
        let mut stream = TcpStream::connect_timeout(&server_addr, timeout)?;
        stream.set_write_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 64 * 1024];
        let (mut left, mut offset, mut hash) = (bytes, 0u64, Fnv::new());
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill_pattern(&mut buf[..n], offset);
            stream.write_all(&buf[..n])?;
            hash.update(&buf[..n]);
            left -= n as u64;
            offset += n as u64;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        Ok(hash.0)
    })??;
    let (received, received_hash) = receiver
        .join()
        .map_err(|_| TransferError::ReceiverPanicked)??;
    Ok(TransferReport {
        bytes: received,
        sent_hash,
        received_hash,
        elapsed: started.elapsed(),
    })
}

/// Errors of [`tcp_transfer`].
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A socket operation failed (refused, timed out, reset).
    #[error("TCP transfer failed: {0}")]
    Io(#[from] io::Error),
    /// The receiving thread panicked.
    #[error("TCP receiver thread panicked")]
    ReceiverPanicked,
}

/// Fills `buf` with the pattern byte for stream offset `offset + i`: not compressible
/// by accident, identical on every run.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = (offset + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        *b = (x >> 56) as u8;
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn parse_ping(text: &str) -> Option<PingReport> {
    // "5 packets transmitted, 5 received, 0% packet loss, time 4005ms"
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    let transmitted = numbers.next()??;
    let received = numbers.next()??;
    // "rtt min/avg/max/mdev = 0.040/0.052/0.071/0.011 ms"
    let rtt_avg = text
        .lines()
        .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
        .and_then(|l| {
            l.split('=')
                .nth(1)?
                .trim()
                .split('/')
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map(|ms| Duration::from_secs_f64(ms / 1000.0));
    Some(PingReport {
        transmitted,
        received,
        rtt_avg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let text = "--- 10.2.0.2 ping statistics ---\n\
                    5 packets transmitted, 4 received, 20% packet loss, time 4005ms\n\
                    rtt min/avg/max/mdev = 0.040/1.500/0.071/0.011 ms\n";
        let r = parse_ping(text).unwrap();
        assert_eq!((r.transmitted, r.received), (5, 4));
        assert_eq!(r.rtt_avg, Some(Duration::from_micros(1500)));
        let lost = "3 packets transmitted, 0 received, 100% packet loss, time 2002ms\n";
        assert_eq!(parse_ping(lost).unwrap().rtt_avg, None);
    }

    #[test]
    fn pattern_depends_on_offset() {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill_pattern(&mut a, 0);
        fill_pattern(&mut b, 1);
        assert_eq!(a[1..], b[..63]);
        assert_ne!(a, b);
    }
}

/// Collects numbered UDP datagrams sent by [`send_udp_sequence`], inside a namespace.
#[derive(Debug)]
pub struct UdpSink {
    handle: std::thread::JoinHandle<io::Result<Vec<u32>>>,
}

impl UdpSink {
    /// Binds `addr` inside `netns` (with a 16 MiB receive buffer) and receives until no
    /// datagram came for `quiet` after the first one (at most 120 s).
    pub fn start(netns: &Netns, addr: SocketAddr, quiet: Duration) -> Result<Self, TransferError> {
        let socket = netns.enter(|| std::net::UdpSocket::bind(addr))??;
        socket.set_read_timeout(Some(quiet))?;
        // Room for seconds of datagrams, so a descheduled receiver loses none.
        crate::sys::force_recv_buffer(std::os::fd::AsFd::as_fd(&socket), 16 << 20)?;
        let handle = std::thread::spawn(move || {
            let mut seqs = Vec::new();
            let mut buf = [0u8; 2048];
            let mut started = false;
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                match socket.recv(&mut buf) {
                    Ok(n) if n >= 4 => {
                        started = true;
                        seqs.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        if started {
                            break;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(seqs)
        });
        Ok(UdpSink { handle })
    }

    /// Waits for the quiet period and returns the sequence numbers in arrival order.
    pub fn finish(self) -> Result<Vec<u32>, TransferError> {
        Ok(self
            .handle
            .join()
            .map_err(|_| TransferError::ReceiverPanicked)??)
    }
}

/// Sends `count` UDP datagrams of `len` bytes (at least 4) from inside `netns` to `to`:
/// a big-endian sequence number, then `marker` (repeated), paced at about
/// `per_ms` datagrams per millisecond so no socket buffer overflows.
pub fn send_udp_sequence(
    netns: &Netns,
    to: SocketAddr,
    count: u32,
    len: usize,
    marker: &[u8],
    per_ms: u32,
) -> Result<(), TransferError> {
    netns.enter(|| -> io::Result<()> {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("literal");
        let socket = std::net::UdpSocket::bind(bind)?;
        let mut buf = vec![0u8; len.max(4)];
        for (i, b) in buf[4..].iter_mut().enumerate() {
            *b = marker.get(i % marker.len().max(1)).copied().unwrap_or(0);
        }
        for seq in 0..count {
            buf[..4].copy_from_slice(&seq.to_be_bytes());
            socket.send_to(&buf, to)?;
            if per_ms > 0 && seq % per_ms == per_ms - 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })??;
    Ok(())
}
