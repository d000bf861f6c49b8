//! Fuzzes the stored-block reader: a valid sealed block altered by the input
//! (XOR mask) must be rejected unless unchanged; raw input as a slot must
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shunt_dataplane::codec::store::{BlockInfo, SECTOR, Sealer, StoreKey, open_block, seal_block};

const BB: usize = 2 * SECTOR;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mask)) = data.split_first() else { return };
    let key = (mode & 1 == 1).then(|| StoreKey::new([mode; 64]));
    let sealer = Sealer::new(key.as_ref());

    // Raw input as a slot.
    let mut raw = vec![0u8; BB + SECTOR];
    let n = mask.len().min(raw.len());
    raw[..n].copy_from_slice(&mask[..n]);
    let _ = open_block(&sealer, b"fuzz", 1, 2, &mut raw, 8192);

    // A sealed block with the input XORed in.
    let mut slot = vec![0u8; BB + SECTOR];
    for (i, b) in slot[..BB].iter_mut().enumerate() {
        *b = (i * 13) as u8;
    }
    let original = slot[..BB].to_vec();
    let ranges = [(0u32, 512u32), (1000, BB as u32)];
    let info = BlockInfo { slot: 1, history_id: 5, base: 3 * BB as u64, seq: 2, ranges: &ranges };
    let mut meta = [0u8; SECTOR];
    seal_block(&sealer, b"fuzz", &info, &mut slot[..BB], &mut meta, 8192);
    slot[BB..].copy_from_slice(&meta);
    let offset = usize::from(mode >> 1) * 64;
    let mut changed = false;
    for (i, m) in mask.iter().enumerate() {
        if let Some(b) = slot.get_mut(offset + i) {
            *b ^= m;
            changed |= *m != 0;
        }
    }
    match open_block(&sealer, b"fuzz", 1, 2, &mut slot, 8192) {
        Ok(view) => {
            assert!(!changed, "an altered block verified");
            assert_eq!(view.ranges, ranges.to_vec());
            assert_eq!(&slot[..BB], &original[..]);
        }
        Err(_) => assert!(changed, "an intact block was rejected"),
    }
});
