//! Header rewriting: the one place where the program changes packet bytes.
//!
//! Today that is MSS clamping of TCP SYN and SYN-ACK segments; the TCP option used
//! by partner auto-discovery will be added and stripped here too, so that every
//! change goes through the same checksum fix-up ([`csum_replace16`], RFC 1624).
//!
//! Rewriting touches only SYNs, so it reads and writes through the
//! `bpf_xdp_load_bytes`/`bpf_xdp_store_bytes` helpers at plain offsets: the verifier
//! then has no variable-offset packet pointers to track, whatever LLVM does with them.

use aya_ebpf::{helpers::generated as helpers, programs::XdpContext};

const TCP_CHECK: usize = 16;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
/// Options walked before the MSS option must have been found. Every common stack
/// sends MSS first in a SYN; a short walk keeps the verifier's work small.
const MAX_OPTIONS: usize = 8;

/// Lowers the MSS option of the TCP header at `tcp` (`len` bytes long) to `mss`.
///
/// Returns whether the segment was changed. A segment without an MSS option, or
/// with one already at or below `mss`, is left as it is.
#[inline(always)]
pub fn clamp_mss(ctx: &XdpContext, tcp: usize, len: usize, mss: u16) -> bool {
    let end = tcp + len;
    let mut off = tcp + 20;
    for _ in 0..MAX_OPTIONS {
        // A lone trailing byte can only be padding; the MSS option needs four.
        if off + 2 > end {
            return false;
        }
        let Some([kind, opt_len]) = load::<2>(ctx, off) else {
            return false;
        };
        match kind {
            TCPOPT_EOL => return false,
            TCPOPT_NOP => off += 1,
            _ => {
                let opt_len = opt_len as usize;
                if opt_len < 2 || off + opt_len > end {
                    return false;
                }
                if kind == TCPOPT_MSS {
                    if opt_len != 4 {
                        return false;
                    }
                    return lower_mss(ctx, tcp, off + 2, mss);
                }
                off += opt_len;
            }
        }
    }
    false
}

/// Writes `mss` over the 16-bit MSS value at `at` if it is larger, fixing the
/// TCP checksum of the header at `tcp`.
#[inline(always)]
fn lower_mss(ctx: &XdpContext, tcp: usize, at: usize, mss: u16) -> bool {
    let (Some(value), Some(check)) = (load::<2>(ctx, at), load::<2>(ctx, tcp + TCP_CHECK)) else {
        return false;
    };
    let old = u16::from_be_bytes(value);
    if old <= mss {
        return false;
    }
    // The checksum sums 16-bit words from the start of the TCP header; a field at
    // an odd offset contributes its bytes swapped.
    let (old_word, new_word) = if (at - tcp) & 1 == 0 {
        (old, mss)
    } else {
        (old.swap_bytes(), mss.swap_bytes())
    };
    let sum = csum_replace16(u16::from_be_bytes(check), old_word, new_word);
    store(ctx, at, mss.to_be_bytes()) && store(ctx, tcp + TCP_CHECK, sum.to_be_bytes())
}

/// Copies `N` bytes at `offset` out of the frame.
#[inline(always)]
fn load<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: the helper writes at most `N` bytes into `buf` and checks `offset`
    // against the frame itself.
    let rc = unsafe {
        helpers::bpf_xdp_load_bytes(ctx.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32)
    };
    (rc == 0).then_some(buf)
}

/// Copies `bytes` into the frame at `offset`.
#[inline(always)]
fn store<const N: usize>(ctx: &XdpContext, offset: usize, mut bytes: [u8; N]) -> bool {
    // SAFETY: the helper reads `N` bytes from `bytes` and checks `offset` against
    // the frame itself.
    let rc = unsafe {
        helpers::bpf_xdp_store_bytes(ctx.ctx, offset as u32, bytes.as_mut_ptr().cast(), N as u32)
    };
    rc == 0
}

/// Incremental update of an Internet checksum when one 16-bit word changes from
/// `old` to `new` (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
pub fn csum_replace16(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
