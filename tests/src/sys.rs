//! The only home of `unsafe` in the test tooling: setns, signals and AF_PACKET sockets.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Moves the calling thread into the network namespace bound at `path`.
pub(crate) fn enter_netns(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: `file` is an open namespace file for the whole call; setns(2) with
    // CLONE_NEWNET only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends SIGKILL to `pid`, ignoring a process that is already gone.
pub(crate) fn kill_process(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; pid comes from `ip netns pids`.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Blocks SIGINT and SIGTERM in the calling thread (and threads it spawns later), so
/// [`wait_termination`] can collect them synchronously.
pub(crate) fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset_t; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits up to `timeout` for SIGINT or SIGTERM (blocked beforehand); returns the
/// signal number, or `None` on timeout.
pub(crate) fn wait_termination(timeout: std::time::Duration) -> io::Result<Option<i32>> {
    let set = termination_set();
    let ts = timespec(timeout);
    // SAFETY: `set` and `ts` are initialised and outlive the call; siginfo is optional.
    let rc = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    if rc >= 0 {
        return Ok(Some(rc));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(err),
    }
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

fn timespec(d: std::time::Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    }
}

// From <linux/if_packet.h>.
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// `struct tpacket_stats` from <linux/if_packet.h>.
#[repr(C)]
struct TpacketStats {
    tp_packets: libc::c_uint,
    tp_drops: libc::c_uint,
}
/// Frames moved by one recvmmsg/sendmmsg call.
pub(crate) const BATCH: usize = 64;

/// A frame buffer from the emulator's fixed pool.
#[derive(Debug)]
pub(crate) struct Frame {
    /// Storage, allocated once when the pool is built.
    pub(crate) buf: Box<[u8]>,
    /// Length of the frame held (may exceed `buf.len()` right after a truncated read).
    pub(crate) len: usize,
}

impl Frame {
    pub(crate) fn new(size: usize) -> Self {
        Frame {
            buf: vec![0; size].into_boxed_slice(),
            len: 0,
        }
    }

    /// The frame's bytes (at most the buffer).
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[..self.len.min(self.buf.len())]
    }
}

/// A raw AF_PACKET socket bound to one interface: receives every frame arriving on
/// it (never its own transmissions) and sends whole Ethernet frames out of it.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens and binds a socket on `if_name` in the calling thread's namespace, with
    /// `buffer` bytes of receive and send buffer.
    pub(crate) fn open(if_name: &str, buffer: usize) -> io::Result<Self> {
        let name = CString::new(if_name).map_err(|_| io::Error::other("NUL in interface name"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: nothing is queued before bind() narrows the socket to one port.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = PacketSocket { fd };
        let size = libc::c_int::try_from(buffer).unwrap_or(libc::c_int::MAX);
        sock.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)?;
        sock.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size)?;
        sock.set_int(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;

        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll and the length passed matches it.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }

    /// Waits until a frame can be read or `timeout` passes; returns true when readable.
    pub(crate) fn wait_readable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timespec(timeout);
        // SAFETY: one valid pollfd and an initialised timespec; no signal mask change.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        match rc {
            n if n > 0 => Ok(true),
            0 => Ok(false),
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Receives up to `frames.len()` (at most [`BATCH`]) frames without blocking, each
    /// into its buffer; a frame's `len` is its full length, which may exceed its
    /// buffer (then it was truncated). Returns how many arrived (0 when none waited).
    pub(crate) fn recv_batch(&self, frames: &mut [Frame]) -> io::Result<usize> {
        let n = frames.len().min(BATCH);
        // SAFETY: iovec and mmsghdr are plain data; zero is a valid initial value.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let buf = &mut frames[i].buf;
            iov[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers point at `n` live, exclusively borrowed buffers
        // whose lengths are in their iovecs; MSG_TRUNC makes msg_len the frame length.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(err),
            };
        }
        let got = rc as usize;
        for i in 0..got {
            frames[i].len = msgs[i].msg_len as usize;
        }
        Ok(got)
    }

    /// Sends `frames` (at most [`BATCH`]) out of the bound port. Returns how many the
    /// kernel took; on an error for the first frame, the error.
    pub(crate) fn send_batch(&self, frames: &[Frame]) -> io::Result<usize> {
        let n = frames.len().min(BATCH);
        // SAFETY: iovec and mmsghdr are plain data; zero is a valid initial value.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let data = frames[i].data();
            iov[i] = libc::iovec {
                iov_base: data.as_ptr().cast_mut().cast(),
                iov_len: data.len(),
            };
            msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers point at `n` live buffers that the kernel only
        // reads (sendmmsg never writes through msg_iov); no destination: the bound port.
        let rc =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Frames the kernel dropped because the receive buffer was full, since last call.
    pub(crate) fn take_kernel_drops(&self) -> io::Result<u64> {
        let mut st = TpacketStats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<TpacketStats>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid for writes and `len` holds st's size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                (&raw mut st).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(u64::from(st.tp_drops))
        }
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: `value` is a live c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Sets a socket's receive buffer to `bytes`, above the `rmem_max` limit (root only).
pub(crate) fn force_recv_buffer(fd: std::os::fd::BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is a live descriptor for the call; `value` is a live c_int and the
    // length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
