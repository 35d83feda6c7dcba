//! Batches for training: a deterministic order (a fresh permutation per epoch from the seed),
//! decoding and tokenizing on worker threads, prefetched ahead of the device. The position of
//! each batch travels with it, so a checkpoint can restore the stream exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::array::HostArray;
use crate::error::{Error, Result};

use super::image::{preprocess_augmented_into, preprocess_into};
use super::shards::Sample;
use super::tokenizer::Tokenizer;

/// Where the stream stands: the next batch is batch `batch` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub batch: u64,
}

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    pub batch: usize,
    pub seed: u64,
    pub image_size: usize,
    pub channels: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub text_length: usize,
    pub workers: usize,
    pub prefetch: usize,
    /// Data-parallel rank and count (this process reads every `ranks`-th batch).
    pub rank: usize,
    pub ranks: usize,
    /// Random-resized-crop augmentation, seeded per sample by (seed, epoch, position), so a
    /// resumed run sees the same crops.
    pub augment: bool,
}

/// One batch on the host.
pub struct Batch {
    pub images: HostArray,
    pub tokens: HostArray,
    pub labels: Vec<Option<i64>>,
    /// Captions whose tokens were cut to the text length.
    pub truncated: usize,
    /// The position after this batch.
    pub next: Position,
}

/// Permutation of `0..n` for an epoch (Fisher–Yates with splitmix64).
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut r = crate::seed::SplitMix(seed ^ epoch.wrapping_mul(crate::seed::GOLDEN));
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (r.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Runs `f` on every item on `workers` threads, each thread taking the next item when it is
/// free, so that images of unequal cost spread evenly. Returns the first error; after one, the
/// threads take no more items.
pub fn par_each<T: Send>(
    items: Vec<T>,
    workers: usize,
    f: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    let workers = workers.max(1).min(items.len().max(1));
    if workers == 1 {
        return items.into_iter().try_for_each(f);
    }
    let queue = Mutex::new(items.into_iter());
    let failed = AtomicBool::new(false);
    let work = || -> Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
            let Some(item) = next else { break };
            if let Err(e) = f(item) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("a decoding thread panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Decodes and tokenizes the given samples into one batch, spreading the work over `workers`.
/// `seeds[i]` seeds sample i's augmentation (when it is on); `next` is the position after it.
pub fn assemble(
    samples: &[&Sample],
    seeds: &[u64],
    tok: &Tokenizer,
    o: &LoaderOptions,
    next: Position,
) -> Result<Batch> {
    let px = o.image_size * o.image_size * o.channels;
    let n = samples.len();
    let mut images = vec![0f32; n * px];
    let mut tokens = vec![0i32; n * o.text_length];
    let truncated = std::sync::atomic::AtomicUsize::new(0);
    let items: Vec<_> = images
        .chunks_mut(px)
        .zip(tokens.chunks_mut(o.text_length))
        .zip(samples.iter().zip(seeds))
        .collect();
    par_each(items, o.workers, |((img, tks), (smp, &seed))| {
        let (size, ch) = (o.image_size, o.channels);
        if o.augment {
            preprocess_augmented_into(&smp.image, &smp.key, size, ch, &o.mean, &o.std, seed, img)?;
        } else {
            preprocess_into(&smp.image, &smp.key, size, ch, &o.mean, &o.std, img)?;
        }
        let t = tok.encode(&smp.caption, o.text_length)?;
        tks.copy_from_slice(&t.ids);
        truncated.fetch_add(usize::from(t.truncated), Ordering::Relaxed);
        Ok(())
    })?;
    let s = o.image_size as i64;
    Ok(Batch {
        images: HostArray::new(&[n as i64, s, s, o.channels as i64], &images)?,
        tokens: HostArray::new(&[n as i64, o.text_length as i64], &tokens)?,
        labels: samples.iter().map(|s| s.label).collect(),
        truncated: truncated.into_inner(),
        next,
    })
}

/// An endless stream of batches from a background thread.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    /// Time the consumer spent waiting for data.
    pub waited: Duration,
    pub batches_per_epoch: u64,
}

impl Loader {
    /// Starts at `start`. Fails if the dataset is smaller than one batch.
    pub fn new(
        samples: Arc<Vec<Sample>>,
        tok: Arc<Tokenizer>,
        o: LoaderOptions,
        start: Position,
    ) -> Result<Loader> {
        let global = o.batch * o.ranks.max(1);
        let per_epoch = (samples.len() / global) as u64;
        if per_epoch == 0 {
            return Err(Error::InvalidArgument {
                what: format!("a dataset of {} pairs", samples.len()),
                fix: format!(
                    "it needs at least one batch of {global}; use a smaller --batch or more data"
                ),
            });
        }
        let (tx, rx) = sync_channel(o.prefetch.max(1));
        std::thread::spawn(move || {
            let mut pos = start;
            let mut perm = permutation(samples.len(), o.seed, pos.epoch);
            loop {
                if pos.batch >= per_epoch {
                    pos = Position {
                        epoch: pos.epoch + 1,
                        batch: 0,
                    };
                    perm = permutation(samples.len(), o.seed, pos.epoch);
                }
                let at = (pos.batch as usize * o.ranks.max(1) + o.rank) * o.batch;
                let picked: Vec<&Sample> = perm[at..at + o.batch]
                    .iter()
                    .map(|&i| &samples[i])
                    .collect();
                // Each sample's crop depends on the seed, the epoch and its place in the epoch.
                let seeds: Vec<u64> = (0..o.batch as u64)
                    .map(|i| {
                        o.seed
                            ^ pos.epoch.wrapping_mul(crate::seed::GOLDEN)
                            ^ ((at as u64 + i) << 20)
                    })
                    .collect();
                pos.batch += 1;
                let r = assemble(&picked, &seeds, &tok, &o, pos);
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Loader {
            rx,
            waited: Duration::ZERO,
            batches_per_epoch: per_epoch,
        })
    }

    pub fn next_batch(&mut self) -> Result<Batch> {
        let t = Instant::now();
        let b = self
            .rx
            .recv()
            .map_err(|_| Error::Internal("the data loader stopped".into()))?;
        self.waited += t.elapsed();
        b
    }
}
