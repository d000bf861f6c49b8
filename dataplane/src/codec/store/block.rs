//! On-disk block format: a lane file is a header sector followed by one slot
//! per history block; each slot holds the block's bytes and a metadata sector
//! with the held ranges and an authentication tag. With a key, every 4 KiB
//! sector is AES-256-XTS encrypted (tweak = sector number in the file).

use aes::Aes256;
use aes::cipher::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use xts_mode::{Xts128, get_tweak_default};
use zeroize::Zeroizing;

use super::StoreKey;

/// Disk sector size; also the XTS data-unit size.
pub const SECTOR: usize = 4096;
/// Most held ranges a block records (more are dropped, i.e. forgotten).
pub const MAX_BLOCK_RANGES: usize = (SECTOR - META_FIXED - TAG_LEN) / 8;

const HEADER_MAGIC: &[u8; 8] = b"SHUNTHS1";
const BLOCK_MAGIC: &[u8; 4] = b"SHB1";
const FILE_VERSION: u32 = 1;
const META_FIXED: usize = 32;
const TAG_LEN: usize = 32;
const TAG_AT: usize = SECTOR - TAG_LEN;

/// Why a stored block was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// The slot was never written.
    #[error("slot never written")]
    Empty,
    /// The block failed verification (tag, magic, layout); it is discarded.
    #[error("stored block failed verification: {0}")]
    Corrupt(&'static str),
}

/// Keys and primitives protecting one store. Debug prints no key material.
pub struct Sealer {
    xts: Option<Xts128<Aes256>>,
    mac_key: Zeroizing<[u8; 32]>,
    key_check: [u8; 16],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("encrypted", &self.xts.is_some())
            .finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl Sealer {
    /// With a key: XTS encryption plus HMAC tags; without: HMAC under a fixed
    /// public key, which serves as a checksum.
    pub fn new(key: Option<&StoreKey>) -> Self {
        match key {
            Some(k) => {
                let bytes = k.bytes();
                let c1 = Aes256::new_from_slice(&bytes[..32]).expect("32-byte key");
                let c2 = Aes256::new_from_slice(&bytes[32..]).expect("32-byte key");
                let mac_key = Zeroizing::new(hmac(bytes, &[b"shunt history tag v1"]));
                let check = hmac(&mac_key[..], &[b"shunt history key check"]);
                Self {
                    xts: Some(Xts128::new(c1, c2)),
                    mac_key,
                    key_check: check[..16].try_into().expect("16"),
                }
            }
            None => Self {
                xts: None,
                mac_key: Zeroizing::new(*b"shunt history plain checksum v1."),
                key_check: [0; 16],
            },
        }
    }

    pub(crate) fn encrypted(&self) -> bool {
        self.xts.is_some()
    }

    fn crypt(&self, buf: &mut [u8], file_offset: u64, encrypt: bool) {
        if let Some(xts) = &self.xts {
            let first = u128::from(file_offset / SECTOR as u64);
            if encrypt {
                xts.encrypt_area(buf, SECTOR, first, get_tweak_default);
            } else {
                xts.decrypt_area(buf, SECTOR, first, get_tweak_default);
            }
        }
    }

    fn tag(&self, ident: &[u8], slot: u64, meta: &[u8], data: &[u8]) -> [u8; 32] {
        hmac(
            &self.mac_key[..],
            &[ident, &slot.to_le_bytes(), &meta[..TAG_AT], data],
        )
    }
}

/// The file header (first sector, plaintext).
pub(crate) fn write_header(sealer: &Sealer, block_bytes: u64, slots: u64) -> [u8; SECTOR] {
    let mut h = [0u8; SECTOR];
    h[..8].copy_from_slice(HEADER_MAGIC);
    h[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&u32::from(sealer.encrypted()).to_le_bytes());
    h[16..24].copy_from_slice(&block_bytes.to_le_bytes());
    h[24..32].copy_from_slice(&slots.to_le_bytes());
    h[32..48].copy_from_slice(&sealer.key_check);
    let sum = xxhash_rust::xxh3::xxh3_64(&h[..48]);
    h[48..56].copy_from_slice(&sum.to_le_bytes());
    h
}

/// True when an existing header matches this store's mode, key and geometry.
pub(crate) fn header_matches(sealer: &Sealer, block_bytes: u64, slots: u64, header: &[u8]) -> bool {
    header.len() >= SECTOR && header[..SECTOR] == write_header(sealer, block_bytes, slots)[..]
}

/// One block to seal: where it sits and which of its bytes are held.
#[derive(Debug, Clone, Copy)]
pub struct BlockInfo<'a> {
    /// Slot index in the lane file.
    pub slot: u64,
    /// History id of the lane.
    pub history_id: u64,
    /// Position of the block's first byte.
    pub base: u64,
    /// Write sequence number.
    pub seq: u64,
    /// Held ranges as offsets in the block.
    pub ranges: &'a [(u32, u32)],
}

/// Fills `meta`, tags, and encrypts `data` and `meta` in place for writing at
/// `file_offset` (data first, meta sector right after).
pub fn seal_block(
    sealer: &Sealer,
    ident: &[u8],
    info: &BlockInfo<'_>,
    data: &mut [u8],
    meta: &mut [u8; SECTOR],
    file_offset: u64,
) {
    meta.fill(0);
    let n = info.ranges.len().min(MAX_BLOCK_RANGES);
    meta[..4].copy_from_slice(BLOCK_MAGIC);
    meta[4..8].copy_from_slice(&(n as u32).to_le_bytes());
    meta[8..16].copy_from_slice(&info.history_id.to_le_bytes());
    meta[16..24].copy_from_slice(&info.base.to_le_bytes());
    meta[24..32].copy_from_slice(&info.seq.to_le_bytes());
    for (k, &(s, e)) in info.ranges[info.ranges.len() - n..].iter().enumerate() {
        let at = META_FIXED + k * 8;
        meta[at..at + 4].copy_from_slice(&s.to_le_bytes());
        meta[at + 4..at + 8].copy_from_slice(&e.to_le_bytes());
    }
    let tag = sealer.tag(ident, info.slot, &meta[..], data);
    meta[TAG_AT..].copy_from_slice(&tag);
    sealer.crypt(data, file_offset, true);
    sealer.crypt(&mut meta[..], file_offset + data.len() as u64, true);
}

/// A verified block: its data is `slot_bytes[..block_bytes]` (decrypted in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    /// History id the block belongs to.
    pub history_id: u64,
    /// Position of the block's first byte.
    pub base: u64,
    /// Write sequence number (newest wins).
    pub seq: u64,
    /// Held ranges as offsets in the block, ascending and disjoint.
    pub ranges: Vec<(u32, u32)>,
}

/// Reads and verifies one stored slot (`block_bytes` of data followed by the
/// metadata sector), decrypting it in place. Never returns a block whose tag,
/// layout or position does not verify.
pub fn open_block(
    sealer: &Sealer,
    ident: &[u8],
    slot: u64,
    slots: u64,
    slot_bytes: &mut [u8],
    file_offset: u64,
) -> Result<BlockView, BlockError> {
    if slot_bytes.len() < 2 * SECTOR || !slot_bytes.len().is_multiple_of(SECTOR) {
        return Err(BlockError::Corrupt("slot size"));
    }
    let block_bytes = slot_bytes.len() - SECTOR;
    let (data, meta) = slot_bytes.split_at_mut(block_bytes);
    if meta.iter().all(|&b| b == 0) {
        return Err(BlockError::Empty);
    }
    sealer.crypt(data, file_offset, false);
    sealer.crypt(meta, file_offset + block_bytes as u64, false);
    let tag = sealer.tag(ident, slot, meta, data);
    // Constant-time comparison is not needed for integrity of local files, but costs nothing.
    let diff = tag
        .iter()
        .zip(&meta[TAG_AT..])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(BlockError::Corrupt("authentication tag mismatch"));
    }
    if &meta[..4] != BLOCK_MAGIC {
        return Err(BlockError::Corrupt("bad block magic"));
    }
    let word = |at: usize| u64::from_le_bytes(meta[at..at + 8].try_into().expect("8"));
    let n = u32::from_le_bytes(meta[4..8].try_into().expect("4")) as usize;
    let (history_id, base, seq) = (word(8), word(16), word(24));
    if n > MAX_BLOCK_RANGES {
        return Err(BlockError::Corrupt("too many ranges"));
    }
    if !base.is_multiple_of(block_bytes as u64)
        || (base / block_bytes as u64) % slots.max(1) != slot
    {
        return Err(BlockError::Corrupt(
            "block position does not belong to its slot",
        ));
    }
    let mut ranges = Vec::with_capacity(n);
    let mut last_end = 0u32;
    for k in 0..n {
        let at = META_FIXED + k * 8;
        let s = u32::from_le_bytes(meta[at..at + 4].try_into().expect("4"));
        let e = u32::from_le_bytes(meta[at + 4..at + 8].try_into().expect("4"));
        if s >= e || e as usize > block_bytes || (k > 0 && s < last_end) {
            return Err(BlockError::Corrupt("bad held range"));
        }
        last_end = e;
        ranges.push((s, e));
    }
    Ok(BlockView {
        history_id,
        base,
        seq,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BB: usize = 2 * SECTOR;

    fn sealed(key: Option<&StoreKey>) -> (Sealer, Vec<u8>) {
        let sealer = Sealer::new(key);
        let mut slot = vec![0u8; BB + SECTOR];
        for (i, b) in slot[..BB].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let mut meta = [0u8; SECTOR];
        let info = BlockInfo {
            slot: 1,
            history_id: 42,
            base: 3 * BB as u64,
            seq: 9,
            ranges: &[(0, 100), (200, BB as u32)],
        };
        let (data, _) = slot.split_at_mut(BB);
        seal_block(&sealer, b"id", &info, data, &mut meta, 8192);
        slot[BB..].copy_from_slice(&meta);
        (sealer, slot)
    }

    #[test]
    fn sealed_block_opens() {
        for key in [None, Some(StoreKey::new([3; 64]))] {
            let (sealer, mut slot) = sealed(key.as_ref());
            let view = open_block(&sealer, b"id", 1, 2, &mut slot, 8192).unwrap();
            assert_eq!(
                view,
                BlockView {
                    history_id: 42,
                    base: 3 * BB as u64,
                    seq: 9,
                    ranges: vec![(0, 100), (200, BB as u32)]
                }
            );
            assert_eq!(slot[5], 35);
            // Another file identity or slot does not verify.
            let (sealer, mut slot) = sealed(key.as_ref());
            assert!(open_block(&sealer, b"ix", 1, 2, &mut slot, 8192).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_flipped_byte_is_detected(at in 0usize..BB + SECTOR, bit in 0u8..8, encrypted in any::<bool>()) {
            let key = encrypted.then(|| StoreKey::new([4; 64]));
            let (sealer, mut slot) = sealed(key.as_ref());
            slot[at] ^= 1 << bit;
            prop_assert!(open_block(&sealer, b"id", 1, 2, &mut slot, 8192).is_err());
        }
    }
}
