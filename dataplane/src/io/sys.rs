//! The only home of `unsafe` in the data plane: the UMEM mapping shared with the kernel,
//! its registration, the TUN ioctl, socket options the libraries do not wrap, and `poll`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// An anonymous, page-aligned memory area used as a UMEM: the kernel reads and writes
/// packet data in it while the chunks concerned sit in its rings.
///
/// Invariant kept by the owning port: a chunk is accessed through [`UmemArea::chunk`] /
/// [`UmemArea::chunk_mut`] only while the port holds it (in its free list or as a
/// [`super::Frame`]), never while its index is in the fill or transmit ring.
#[derive(Debug)]
pub(crate) struct UmemArea {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the area is plain memory owned by this value; moving the owner to another
// thread moves the only handle (the kernel's access does not depend on the thread).
unsafe impl Send for UmemArea {}

impl UmemArea {
    /// Maps `len` bytes of zeroed, private, anonymous memory.
    pub(crate) fn map(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty UMEM"));
        }
        // SAFETY: an anonymous private mapping with a null hint touches no existing memory;
        // the result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(UmemArea { ptr, len })
    }

    /// `len` bytes at `offset`, or `None` when out of bounds.
    pub(crate) fn chunk(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset..end` lies inside the mapping, which lives as long as `self`; by
        // the type's invariant the kernel does not write this chunk while the port holds it.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) })
    }

    /// `len` writable bytes at `offset`, or `None` when out of bounds.
    pub(crate) fn chunk_mut(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: as in `chunk`; `&mut self` makes this the only live slice of the area
        // handed out by this value.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) })
    }

    /// Registers the area as the UMEM of a new AF_XDP socket.
    pub(crate) fn register(&self, config: xdpilone::UmemConfig) -> io::Result<xdpilone::Umem> {
        let area = NonNull::slice_from_raw_parts(self.ptr, self.len);
        // SAFETY: the area is page aligned (mmap), valid for `len` bytes, and outlives the
        // UMEM: every port declares its `UmemArea` after the sockets and rings, so it is
        // unmapped only after they are closed.
        unsafe { xdpilone::Umem::new(config, area) }.map_err(errno)
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, unmapped once here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw())
}

/// Creates (or attaches to) the TUN interface `name` on an open `/dev/net/tun`, without
/// packet information headers. Returns the name the kernel gave the interface.
pub(crate) fn tun_set_iff(fd: &OwnedFd, name: &str) -> io::Result<String> {
    if name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `IfReq` has its layout (name
    // then a union whose first member is the short flags, padded to the full size) and
    // lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = req
        .name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(libc::IFNAMSIZ);
    Ok(req.name[..len].iter().map(|&c| c as u8 as char).collect())
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Sets an integer socket option the `nix` crate does not wrap (busy polling).
pub(crate) fn set_int_sockopt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed; the kernel copies it in.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout_ms` until one of `fds` is readable. Returns whether any was.
pub(crate) fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<bool> {
    let mut polled = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    let n = fds.len().min(polled.len());
    for (p, &fd) in polled.iter_mut().zip(fds) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    // SAFETY: `polled` holds `n` initialised pollfd entries and outlives the call; the
    // descriptors are borrowed from live ports for the duration of the call only.
    let rc = unsafe { libc::poll(polled.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    match rc {
        r if r > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umem_area_bounds() {
        let mut area = UmemArea::map(8192).unwrap();
        area.chunk_mut(4096, 4096).unwrap()[0] = 7;
        assert_eq!(area.chunk(4096, 1).unwrap(), &[7]);
        assert!(area.chunk(4097, 4096).is_none());
        assert!(area.chunk_mut(usize::MAX, 2).is_none());
    }

    #[test]
    fn poll_times_out_on_silent_fd() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert!(!wait_readable(&[a.as_raw_fd()], 1).unwrap());
    }
}
