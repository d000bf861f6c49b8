//! The on-disk history store: per partner, per direction and per lane, a file
//! of history blocks written behind the fast path and read back at start.
//!
//! The fast path hands completed blocks to a [`LaneSpool`] (a copy into a
//! pooled buffer and a channel send, never blocking); a [`StoreWriter`] run on
//! another thread seals (tags, optionally encrypts) and writes them in large
//! sequential writes. At start, [`LaneFile::restore_encoder`] and
//! [`LaneFile::restore_decoder`] rebuild the rings from every block that
//! verifies; blocks that fail are discarded and their ranges forgotten.

mod block;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};
use zeroize::Zeroizing;

pub use block::{
    BlockError, BlockInfo, BlockView, MAX_BLOCK_RANGES, SECTOR, Sealer, open_block, seal_block,
};
pub use writer::{LaneSpool, StoreWriter, write_behind};

use super::ring::Ring;
use super::{CodecConfig, CodecError, Decoder, Encoder};

/// The 512-bit disk key (two AES-256 keys for XTS). Wiped on drop; Debug
/// prints no bytes.
#[derive(Clone)]
pub struct StoreKey(Zeroizing<[u8; 64]>);

impl StoreKey {
    /// Wraps key bytes handed over by the keystore.
    pub fn new(bytes: [u8; 64]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

/// Store settings.
#[derive(Debug)]
pub struct StoreConfig {
    /// Root directory; each partner gets a subdirectory.
    pub dir: PathBuf,
    /// Bytes per stored block: a multiple of 4 KiB dividing the history size.
    pub block_bytes: usize,
    /// Disk encryption key; `None` stores plaintext with a checksum.
    pub key: Option<StoreKey>,
}

/// Which direction of a partner's traffic a lane file keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What we send (our encoder's history).
    Encoder,
    /// What we receive (our decoder's history).
    Decoder,
}

/// Errors of the history store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// File I/O failed.
    #[error(
        "history store I/O on {path}: {source}; check the directory's permissions and free space"
    )]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The partner name cannot be used as a directory name.
    #[error(
        "partner name {0:?} is not usable in the history store; use letters, digits, '-', '_' or '.'"
    )]
    PartnerName(String),
    /// Settings are inconsistent.
    #[error("invalid history store configuration: {0}")]
    Config(&'static str),
    /// Building the codec from restored history failed.
    #[error("restoring history: {0}")]
    Codec(#[from] CodecError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The history files of one partner.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    partner: String,
    sealer: Arc<Sealer>,
    block_bytes: usize,
}

impl Store {
    /// Opens (creating) the partner's directory under `config.dir`.
    pub fn open(config: StoreConfig, partner: &str) -> Result<Self, StoreError> {
        let valid = !partner.is_empty()
            && partner != "."
            && partner != ".."
            && partner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(StoreError::PartnerName(partner.to_owned()));
        }
        if config.block_bytes < SECTOR || !config.block_bytes.is_multiple_of(SECTOR) {
            return Err(StoreError::Config(
                "block_bytes must be a positive multiple of 4096",
            ));
        }
        let dir = config.dir.join(partner);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Self {
            dir,
            partner: partner.to_owned(),
            sealer: Arc::new(Sealer::new(config.key.as_ref())),
            block_bytes: config.block_bytes,
        })
    }

    /// Opens one lane's file. A file written with another key, encryption
    /// mode or geometry is discarded and started afresh.
    pub fn open_lane(
        &self,
        side: Side,
        lane: u16,
        codec: &CodecConfig,
    ) -> Result<LaneFile, StoreError> {
        codec.validate()?;
        if !codec.history_bytes.is_multiple_of(self.block_bytes) {
            return Err(StoreError::Config("block_bytes must divide history_bytes"));
        }
        let slots = (codec.history_bytes / self.block_bytes) as u64;
        let side_name = match side {
            Side::Encoder => "tx",
            Side::Decoder => "rx",
        };
        let path = self.dir.join(format!("{side_name}-lane-{lane}.hist"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let header = block::write_header(&self.sealer, self.block_bytes as u64, slots);
        let mut existing = [0u8; SECTOR];
        let matches = file.read_exact_at(&mut existing, 0).is_ok()
            && block::header_matches(&self.sealer, self.block_bytes as u64, slots, &existing);
        if !matches {
            info!(partner = %self.partner, lane, side = side_name, "starting a new history file");
            file.set_len(0).map_err(io_err(&path))?;
            file.write_all_at(&header, 0).map_err(io_err(&path))?;
        }
        let ident = format!("{}/{side_name}/{lane}", self.partner).into_bytes();
        Ok(LaneFile {
            file,
            path,
            ident,
            sealer: Arc::clone(&self.sealer),
            block_bytes: self.block_bytes,
            slots,
            lane,
            next_seq: 1,
            restored_high_water: 0,
        })
    }

    /// Deletes every history file of this partner (encryption turned on or
    /// off, keystore reset). Close open [`LaneFile`]s first.
    pub fn discard_all(&self) -> Result<(), StoreError> {
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            if path.extension().is_some_and(|e| e == "hist") {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        info!(partner = %self.partner, "history discarded");
        Ok(())
    }
}

/// One lane's history file.
#[derive(Debug)]
pub struct LaneFile {
    file: File,
    path: PathBuf,
    ident: Vec<u8>,
    sealer: Arc<Sealer>,
    block_bytes: usize,
    slots: u64,
    lane: u16,
    next_seq: u64,
    restored_high_water: u64,
}

/// Outcome of reading a lane file back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Blocks restored.
    pub blocks: u64,
    /// Blocks that failed verification and were discarded.
    pub discarded: u64,
    /// History id restored (0: nothing).
    pub history_id: u64,
    /// Restored high-water mark.
    pub high_water: u64,
}

impl LaneFile {
    fn slot_offset(&self, slot: u64) -> u64 {
        SECTOR as u64 + slot * (self.block_bytes + SECTOR) as u64
    }

    /// Builds this lane's encoder from the file (a fresh history if nothing
    /// verifies). Restored history is used only after the partner's summary.
    pub fn restore_encoder(
        &mut self,
        config: CodecConfig,
    ) -> Result<(Encoder, RestoreReport), StoreError> {
        let mut enc = Encoder::new(self.lane, config)?;
        let report = self.restore_ring(enc.ring_mut())?;
        if report.blocks > 0 {
            enc.mark_restored();
        }
        Ok((enc, report))
    }

    /// Builds this lane's decoder from the file.
    pub fn restore_decoder(
        &mut self,
        config: CodecConfig,
    ) -> Result<(Decoder, RestoreReport), StoreError> {
        let mut dec = Decoder::new(self.lane, config)?;
        let report = self.restore_ring(dec.ring_mut())?;
        if report.blocks > 0 {
            dec.mark_restored();
        }
        Ok((dec, report))
    }

    fn restore_ring(&mut self, ring: &mut Ring) -> Result<RestoreReport, StoreError> {
        if ring.capacity() != self.slots * self.block_bytes as u64 {
            return Err(StoreError::Config(
                "codec history size differs from the lane file's",
            ));
        }
        let mut buf = vec![0u8; self.block_bytes + SECTOR];
        let mut found: Vec<BlockView> = Vec::new();
        let mut report = RestoreReport::default();
        for slot in 0..self.slots {
            let offset = self.slot_offset(slot);
            if self.file.read_exact_at(&mut buf, offset).is_err() {
                // Truncated file: the remaining slots are absent.
                continue;
            }
            match open_block(
                &self.sealer,
                &self.ident,
                slot,
                self.slots,
                &mut buf,
                offset,
            ) {
                Ok(view) => {
                    ring.restore_region(view.base, &buf[..self.block_bytes]);
                    found.push(view);
                }
                Err(BlockError::Empty) => {}
                Err(e) => {
                    report.discarded += 1;
                    warn!(lane = self.lane, slot, error = %e, "stored history block discarded");
                }
            }
        }
        self.next_seq = found.iter().map(|b| b.seq + 1).max().unwrap_or(1);
        let Some(newest) = found.iter().max_by_key(|b| b.seq) else {
            return Ok(report);
        };
        let history_id = newest.history_id;
        let high_water = found
            .iter()
            .filter(|b| b.history_id == history_id)
            .filter_map(|b| b.ranges.last().map(|r| b.base + u64::from(r.1)))
            .max()
            .unwrap_or(0);
        let floor = high_water.saturating_sub(ring.capacity());
        ring.history_id = history_id;
        ring.high_water = high_water;
        for b in found
            .iter()
            .filter(|b| b.history_id == history_id && b.base >= floor)
        {
            for &(s, e) in &b.ranges {
                ring.held
                    .insert(b.base + u64::from(s), b.base + u64::from(e));
            }
            report.blocks += 1;
        }
        report.history_id = history_id;
        report.high_water = high_water;
        self.restored_high_water = high_water;
        debug!(
            lane = self.lane,
            blocks = report.blocks,
            discarded = report.discarded,
            "history restored"
        );
        Ok(report)
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
