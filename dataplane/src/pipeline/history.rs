//! Persistent compression history at start-up: one store per partner (`[local]
//! history_dir`), the encoder and decoder lanes restored from it and handed to the
//! workers with their write-behind spools, and the writer thread that puts completed
//! blocks on disk. See `docs/codec.md` ("Persistent store") and `docs/operations.md`.

use std::thread::JoinHandle;

use crate::codec::store::{
    LaneFile, LaneSpool, RestoreReport, SECTOR, Side, Store, StoreConfig, StoreError, StoreWriter,
    write_behind,
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
        let workers = config.workers;
        let partners = config.partners.len();
        let mut histories = Self::none(workers, partners);
        let Some(settings) = &manual.history else {
            return Ok(histories);
        };
        if !config.compression {
            return Ok(histories);
        }
        let mut files: Vec<LaneFile> = Vec::new();
        let mut owners = Vec::new();
        let mut encoders: Vec<Vec<Option<Encoder>>> = (0..workers)
            .map(|_| (0..partners).map(|_| None).collect())
            .collect();
        let mut decoders: Vec<Vec<Option<Decoder>>> = (0..partners).map(|_| Vec::new()).collect();
        for (p, plan) in config.partners.iter().enumerate() {
            let Some(params) = &plan.params else {
                continue;
            };
            if plan.is_vacant() || plan.mode == Mode::PassThrough || !plan.compress {
                continue;
            }
            let codec = config.codec_for(p);
            let store = Store::open(
                StoreConfig {
                    dir: settings.dir.clone(),
                    block_bytes: BLOCK_BYTES,
                    key: settings.key.clone(),
                },
                &plan.name,
            )?;
            let mut total = Restored::default();
            for (worker, restored) in encoders.iter_mut().enumerate() {
                let lane = worker as u16;
                let mut file = store.open_lane(Side::Encoder, lane, &codec)?;
                let (mut enc, report) = file.restore_encoder(codec)?;
                config.apply_dictionary(p, Some(&mut enc), None)?;
                total.add(&report, enc.held_bytes());
                restored[p] = Some(enc);
                files.push(file);
                owners.push(Owner::Encoder { worker, partner: p });
            }
            decoders[p] = (0..params.lanes).map(|_| None).collect();
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
                        decoders[p][usize::from(lane)] = Some(dec);
                    }
                }
                files.push(file);
                owners.push(Owner::Decoder { partner: p, lane });
            }
            tracing::info!(
                partner = %plan.name,
                dir = %settings.dir.display(),
                encrypted = settings.key.is_some(),
                history_mib = codec.history_bytes >> 20,
                restored_bytes = total.bytes,
                restored_blocks = total.blocks,
                discarded_blocks = total.discarded,
                "history store opened"
            );
        }
        if files.is_empty() {
            return Ok(histories);
        }
        let guard = config.codec.reorder_guard_bytes;
        let (spools, writer) = write_behind(files, POOL_BLOCKS, guard)?;
        for (spool, owner) in spools.into_iter().zip(owners) {
            match owner {
                Owner::Encoder { worker, partner } => {
                    let encoder = encoders[worker][partner].take().expect("restored above");
                    histories.per_worker[worker][partner] = Some(WorkerHistory {
                        encoder,
                        encoder_spool: spool,
                        decoders: Vec::new(),
                    });
                }
                Owner::Decoder { partner, lane } => {
                    let worker = usize::from(lane) % workers;
                    let dec = decoders[partner][usize::from(lane)].take();
                    if let Some(h) = histories.per_worker[worker][partner].as_mut() {
                        h.decoders.push((lane, dec, spool));
                    }
                }
            }
        }
        histories.writer = Some(writer);
        Ok(histories)
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
