//! Persistent compression history at start-up: one store per partner (`[local]
//! history_dir`), the encoder and decoder lanes restored from it and handed to the
//! workers with their write-behind spools, and the writer thread that puts completed
//! blocks on disk. See `docs/codec.md` ("Persistent store") and `docs/operations.md`.

use std::path::Path;
use std::thread::JoinHandle;

use crate::codec::store::{
    LaneFile, LaneSpool, RestoreReport, SECTOR, Side, Store, StoreConfig, StoreError, StoreKey,
    StoreWriter, write_behind,
};
use crate::codec::{Decoder, Encoder};
use crate::tunnel::Mode;
use crate::tunnel::config::ManualConfig;

use super::{PipelineConfig, PipelineError};

/// Bytes per stored block (divides every history size, which is a power of two of
/// at least 1 MiB): one sequential write per block.
pub(super) const BLOCK_BYTES: usize = 1 << 20;
/// Block buffers shared by all lanes between the fast path and the writer thread.
const POOL_BLOCKS: usize = 16;

/// The history writer's thread; it returns the lane files once every spool is gone.
pub(super) type WriterThread = JoinHandle<Result<Vec<LaneFile>, StoreError>>;

/// What one worker starts with for one partner whose history persists.
pub struct WorkerHistory {
    /// The worker's encoder lane, restored (fresh when nothing verified).
    pub encoder: Encoder,
    /// Its write-behind.
    pub encoder_spool: LaneSpool,
    /// Decoder lanes this worker owns: lane, restored decoder (`None`: nothing
    /// restored, created when the lane is first used) and write-behind.
    pub decoders: Vec<(u16, Option<Decoder>, LaneSpool)>,
}

/// The restored lanes of every worker and the writer that persists them.
pub(super) struct Histories {
    /// `[worker][partner]`.
    per_worker: Vec<Vec<Option<WorkerHistory>>>,
    writer: Option<StoreWriter>,
}

/// Where one lane file's spool goes.
enum Owner {
    Encoder { worker: usize, partner: usize },
    Decoder { partner: usize, lane: u16 },
}

impl Histories {
    /// Nothing persists (no `history_dir`).
    fn none(workers: usize, partners: usize) -> Self {
        Self {
            per_worker: (0..workers)
                .map(|_| (0..partners).map(|_| None).collect())
                .collect(),
            writer: None,
        }
    }

    /// Opens the store of every compressing partner and restores its lanes.
    pub(super) fn open(
        manual: &ManualConfig,
        config: &PipelineConfig,
    ) -> Result<Self, PipelineError> {
        let Some(settings) = &manual.history else {
            return Ok(Self::none(config.workers, config.partners.len()));
        };
        let mut opened = Opened::new(config);
        for p in 0..config.partners.len() {
            opened.restore_partner(&settings.dir, settings.key.as_ref(), config, p)?;
        }
        opened.assemble(config)
    }

    /// Agent mode: opens partner `p`'s store under `dir` (created if needed) and
    /// restores its lanes; the other partners get nothing.
    pub(super) fn open_partner(
        dir: &Path,
        key: Option<&StoreKey>,
        config: &PipelineConfig,
        p: usize,
    ) -> Result<Self, PipelineError> {
        let mut opened = Opened::new(config);
        opened.restore_partner(dir, key, config, p)?;
        opened.assemble(config)
    }

    /// Worker `index`'s share, per partner.
    pub(super) fn take_worker(&mut self, index: usize) -> Vec<Option<WorkerHistory>> {
        self.per_worker
            .get_mut(index)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Starts the writer thread (when any history persists). It ends, after
    /// flushing to disk, once every worker has stopped and dropped its spools.
    pub(super) fn start_writer(&mut self) -> Result<Option<WriterThread>, PipelineError> {
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        std::thread::Builder::new()
            .name("shunt-history".into())
            .spawn(move || writer.run())
            .map(Some)
            .map_err(PipelineError::Kernel)
    }
}

/// Lane files opened and rings restored, before the write-behind is set up.
struct Opened {
    files: Vec<LaneFile>,
    owners: Vec<Owner>,
    /// `[worker][partner]`.
    encoders: Vec<Vec<Option<Encoder>>>,
    /// `[partner][lane]`.
    decoders: Vec<Vec<Option<Decoder>>>,
}

impl Opened {
    fn new(config: &PipelineConfig) -> Self {
        let partners = config.partners.len();
        Self {
            files: Vec::new(),
            owners: Vec::new(),
            encoders: (0..config.workers)
                .map(|_| (0..partners).map(|_| None).collect())
                .collect(),
            decoders: (0..partners).map(|_| Vec::new()).collect(),
        }
    }

    /// Opens partner `p`'s store (when it compresses) and restores its lanes.
    fn restore_partner(
        &mut self,
        dir: &Path,
        key: Option<&StoreKey>,
        config: &PipelineConfig,
        p: usize,
    ) -> Result<(), PipelineError> {
        let plan = &config.partners[p];
        let Some(params) = &plan.params else {
            return Ok(());
        };
        if plan.is_vacant() || plan.mode == Mode::PassThrough || !plan.compress {
            return Ok(());
        }
        let codec = config.codec_for(p);
        let store = Store::open(
            StoreConfig {
                dir: dir.to_owned(),
                block_bytes: BLOCK_BYTES,
                key: key.cloned(),
            },
            &plan.name,
        )?;
        let mut total = Restored::default();
        for (worker, restored) in self.encoders.iter_mut().enumerate() {
            let lane = worker as u16;
            let mut file = store.open_lane(Side::Encoder, lane, &codec)?;
            let (mut enc, report) = file.restore_encoder(codec)?;
            config.apply_dictionary(p, Some(&mut enc), None)?;
            total.add(&report, enc.held_bytes());
            restored[p] = Some(enc);
            self.files.push(file);
            self.owners.push(Owner::Encoder { worker, partner: p });
        }
        self.decoders[p] = (0..params.lanes).map(|_| None).collect();
        for lane in 0..params.lanes {
            let mut file = store.open_lane(Side::Decoder, lane, &codec)?;
            // A file with no block past its header restores nothing: leave the
            // lane to be created (and its ring allocated) when it is used.
            let stored = std::fs::metadata(file.path()).map_or(0, |m| m.len());
            if stored > SECTOR as u64 {
                let (mut dec, report) = file.restore_decoder(codec)?;
                config.apply_dictionary(p, None, Some(&mut dec))?;
                total.add(&report, dec.held_bytes());
                if report.blocks > 0 {
                    self.decoders[p][usize::from(lane)] = Some(dec);
                }
            }
            self.files.push(file);
            self.owners.push(Owner::Decoder { partner: p, lane });
        }
        tracing::info!(
            partner = %plan.name,
            dir = %dir.display(),
            encrypted = key.is_some(),
            history_mib = codec.history_bytes >> 20,
            restored_bytes = total.bytes,
            restored_blocks = total.blocks,
            discarded_blocks = total.discarded,
            "history store opened"
        );
        Ok(())
    }

    /// Connects the opened files to the workers through one writer.
    fn assemble(mut self, config: &PipelineConfig) -> Result<Histories, PipelineError> {
        let workers = config.workers;
        let mut histories = Histories::none(workers, config.partners.len());
        if self.files.is_empty() {
            return Ok(histories);
        }
        let guard = config.codec.reorder_guard_bytes;
        let (spools, writer) = write_behind(self.files, POOL_BLOCKS, guard)?;
        for (spool, owner) in spools.into_iter().zip(self.owners) {
            match owner {
                Owner::Encoder { worker, partner } => {
                    let encoder = self.encoders[worker][partner]
                        .take()
                        .expect("restored above");
                    histories.per_worker[worker][partner] = Some(WorkerHistory {
                        encoder,
                        encoder_spool: spool,
                        decoders: Vec::new(),
                    });
                }
                Owner::Decoder { partner, lane } => {
                    let worker = usize::from(lane) % workers;
                    let dec = self.decoders[partner][usize::from(lane)].take();
                    if let Some(h) = histories.per_worker[worker][partner].as_mut() {
                        h.decoders.push((lane, dec, spool));
                    }
                }
            }
        }
        histories.writer = Some(writer);
        Ok(histories)
    }
}

/// Disk a partner's history files may take at most: one file per encoder lane
/// (worker) and per decoder lane, each a header sector plus every block with its
/// metadata sector.
pub(super) fn partner_disk_bytes(config: &PipelineConfig, p: usize, lanes: u16) -> u64 {
    let history = config.codec_for(p).history_bytes as u64;
    let blocks = history / BLOCK_BYTES as u64;
    let per_file = SECTOR as u64 + history + blocks * SECTOR as u64;
    (config.workers as u64 + u64::from(lanes)) * per_file
}

/// Deletes the history files (`*.hist`) of every partner under `dir` (one level of
/// partner directories; nothing else is touched). Returns how many were removed.
pub(super) fn discard_dir(dir: &Path) -> Result<u64, StoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let partner = entry.map_err(io(dir))?.path();
        if !partner.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&partner).map_err(io(&partner))? {
            let path = file.map_err(io(&partner))?.path();
            if path.extension().is_some_and(|e| e == "hist") {
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Deletes partner `name`'s history files under `dir` (none is an error only
/// when the directory cannot be read).
pub(super) fn discard_partner(dir: &Path, name: &str) -> Result<(), StoreError> {
    if !dir.join(name).is_dir() {
        return Ok(());
    }
    Store::open(
        StoreConfig {
            dir: dir.to_owned(),
            block_bytes: BLOCK_BYTES,
            key: None,
        },
        name,
    )?
    .discard_all()
}

#[derive(Default)]
struct Restored {
    bytes: u64,
    blocks: u64,
    discarded: u64,
}

impl Restored {
    fn add(&mut self, report: &RestoreReport, bytes: u64) {
        self.bytes += bytes;
        self.blocks += report.blocks;
        self.discarded += report.discarded;
    }
}
