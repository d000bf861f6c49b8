//! A minimal AF_XDP receiver for tests and the demo: binds one queue of one
//! interface, keeps the fill ring topped up, counts frames and keeps copies of the
//! first few. Not the production fast path (that is `shunt_dataplane::io`).

use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use xdpilone::{BufIdx, IfInfo, Socket, SocketConfig, Umem, UmemConfig};

use crate::netns::Netns;

/// Frames in the UMEM (each one page).
const FRAMES: u32 = 2048;
const FRAME_SIZE: u32 = 4096;
/// Copies of received frames kept for inspection.
const KEEP: usize = 256;

/// Errors setting up the receiver.
#[derive(Debug, thiserror::Error)]
pub enum XskProbeError {
    /// An AF_XDP set-up step failed.
    #[error("AF_XDP {step} failed: errno {errno}")]
    Setup {
        /// The failing step.
        step: &'static str,
        /// The OS error number.
        errno: i32,
    },
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// The receiver thread stopped before reporting its socket.
    #[error("the AF_XDP receiver thread died during set-up")]
    Died,
}

/// A running AF_XDP receiver; dropping it stops the thread and closes the socket.
pub struct XskProbe {
    fd: RawFd,
    received: Arc<AtomicU64>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl XskProbe {
    /// Binds queue `queue` of `if_name` inside `netns` (copy mode, which veth needs).
    pub fn bind(netns: &Netns, if_name: &str, queue: u32) -> Result<Self, XskProbeError> {
        let received = Arc::new(AtomicU64::new(0));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let if_name = std::ffi::CString::new(if_name).expect("interface names have no NUL");
        let (r, f, s) = (received.clone(), frames.clone(), stop.clone());
        let thread = netns.spawn_thread(move || run(&if_name, queue, ready_tx, r, f, s))?;
        let fd = match ready_rx.recv() {
            Ok(Ok(fd)) => fd,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(XskProbeError::Died),
        };
        Ok(Self {
            fd,
            received,
            frames,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's descriptor, for `Steering::register_socket`.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Frames received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Copies of the first frames received.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.frames
            .lock()
            .expect("receiver never panics holding it")
            .clone()
    }

    /// Waits up to `timeout` until at least `count` frames arrived; returns the count.
    pub fn wait_for(&self, count: u64, timeout: Duration) -> u64 {
        let deadline = std::time::Instant::now() + timeout;
        while self.received() < count && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.received()
    }
}

impl Drop for XskProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    if_name: &std::ffi::CStr,
    queue: u32,
    ready: mpsc::Sender<Result<RawFd, XskProbeError>>,
    received: Arc<AtomicU64>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
) {
    let setup = |step| {
        move |e: xdpilone::Errno| XskProbeError::Setup {
            step,
            errno: e.get_raw(),
        }
    };
    let layout = std::alloc::Layout::from_size_align((FRAMES * FRAME_SIZE) as usize, 4096)
        .expect("constant, valid layout");
    // SAFETY: the layout has a non-zero size. The area is never freed (leaked), so it
    // outlives the UMEM registration whatever happens to the socket.
    let base = unsafe { std::alloc::alloc_zeroed(layout) };
    let Some(base) = NonNull::new(base) else {
        let _ = ready.send(Err(XskProbeError::Setup {
            step: "UMEM allocation",
            errno: libc::ENOMEM,
        }));
        return;
    };
    let area_ptr = NonNull::slice_from_raw_parts(base, layout.size());
    let config = UmemConfig {
        fill_size: FRAMES,
        complete_size: FRAMES,
        frame_size: FRAME_SIZE,
        headroom: 0,
        flags: 0,
    };
    let result = (|| {
        // SAFETY: the area is page aligned, FRAMES * FRAME_SIZE long and leaked, so it
        // outlives the UMEM registration; nothing else accesses it except through
        // descriptors the kernel hands back on the RX ring.
        let umem = unsafe { Umem::new(config, area_ptr) }.map_err(setup("UMEM registration"))?;
        let mut info = IfInfo::invalid();
        info.from_name(if_name).map_err(setup("interface lookup"))?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem).map_err(setup("socket"))?;
        let device = umem.fq_cq(&sock).map_err(setup("fill/completion rings"))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(FRAMES),
                    tx_size: None,
                    bind_flags: 0,
                },
            )
            .map_err(setup("rx ring"))?;
        let rx = user.map_rx().map_err(setup("rx ring mapping"))?;
        umem.bind(&user).map_err(setup("bind"))?;
        Ok((umem, device, user, rx))
    })();
    let (umem, mut device, user, mut rx) = match result {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // Hand every frame to the kernel, then keep handing back what we read.
    let offsets = |idx: u32| umem.frame(BufIdx(idx)).map(|c| c.offset);
    {
        let mut fill = device.fill(FRAMES);
        fill.insert((0..FRAMES).filter_map(offsets));
        fill.commit();
    }
    let _ = ready.send(Ok(user.as_raw_fd()));
    let mut pending: Vec<u64> = Vec::with_capacity(FRAMES as usize);
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd: user.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 10) };
        {
            let mut reader = rx.receive(FRAMES);
            while let Some(desc) = reader.read() {
                let chunk = desc.addr - desc.addr % u64::from(FRAME_SIZE);
                let mut kept = frames.lock().expect("never poisoned");
                if kept.len() < KEEP {
                    let start = desc.addr as usize;
                    // SAFETY: the kernel wrote `len` bytes at `addr` inside the UMEM
                    // and handed the frame to us; it does not touch it until we put
                    // it back on the fill ring below.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(base.as_ptr().add(start), desc.len as usize)
                    };
                    kept.push(bytes.to_vec());
                }
                pending.push(chunk);
                received.fetch_add(1, Ordering::AcqRel);
            }
            reader.release();
        }
        if !pending.is_empty() {
            let mut fill = device.fill(pending.len() as u32);
            let n = fill.insert(pending.iter().copied());
            fill.commit();
            pending.drain(..n as usize);
        }
    }
}
