//! Batches for training: a deterministic order (a fresh permutation per epoch from the seed),
//! decoding and tokenizing on worker threads, prefetched ahead of the device. The position of
//! each batch travels with it, so a checkpoint can restore the stream exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::array::HostArray;
use crate::dtype::DType;
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
        let f = &f;
        return on_own_thread(move || items.into_iter().try_for_each(f));
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
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| on_own_thread(work)))
            .collect();
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
    let mut b = Pending::new(samples.iter().map(|s| s.label).collect(), next);
    let items: Vec<_> = b.rows.iter_mut().zip(samples.iter().zip(seeds)).collect();
    par_each(items, o.workers, |(row, (smp, &seed))| {
        *row = Some(Row::prepare(smp, seed, tok, o)?);
        Ok(())
    })?;
    b.finish(o)
}

/// One sample, prepared: its image (the model's input, channels last) and tokens.
struct Row {
    image: Vec<f32>,
    tokens: Vec<i32>,
    /// Whether the caption was cut to the text length.
    truncated: bool,
}

impl Row {
    /// Decodes, preprocesses (with the augmentation `seed` when augmenting) and tokenizes.
    fn prepare(smp: &Sample, seed: u64, tok: &Tokenizer, o: &LoaderOptions) -> Result<Row> {
        let (size, ch) = (o.image_size, o.channels);
        let mut image = vec![0f32; size * size * ch];
        if o.augment {
            preprocess_augmented_into(
                &smp.image, &smp.key, size, ch, &o.mean, &o.std, seed, &mut image,
            )?;
        } else {
            preprocess_into(&smp.image, &smp.key, size, ch, &o.mean, &o.std, &mut image)?;
        }
        let t = tok.encode(&smp.caption, o.text_length)?;
        Ok(Row {
            image,
            tokens: t.ids,
            truncated: t.truncated,
        })
    }
}

/// A batch being filled row by row, in any order.
struct Pending {
    rows: Vec<Option<Row>>,
    labels: Vec<Option<i64>>,
    /// Rows not filled yet.
    left: usize,
    next: Position,
    /// The first row that failed.
    error: Option<Error>,
}

impl Pending {
    fn new(labels: Vec<Option<i64>>, next: Position) -> Pending {
        Pending {
            rows: labels.iter().map(|_| None).collect(),
            left: labels.len(),
            labels,
            next,
            error: None,
        }
    }

    fn fill(&mut self, i: usize, r: Result<Row>) {
        match r {
            Ok(row) => self.rows[i] = Some(row),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self.left = self.left.saturating_sub(1);
    }

    /// The batch: its images written once, straight into the array's bytes.
    fn finish(self, o: &LoaderOptions) -> Result<Batch> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let (n, s, c) = (self.labels.len(), o.image_size, o.channels);
        let mut images = Vec::with_capacity(n * s * s * c * 4);
        let mut tokens = Vec::with_capacity(n * o.text_length);
        let mut truncated = 0;
        for row in self.rows {
            let row =
                row.ok_or_else(|| Error::Internal("a batch was sent before it was full".into()))?;
            images.extend(row.image.iter().flat_map(|x| x.to_le_bytes()));
            tokens.extend_from_slice(&row.tokens);
            truncated += usize::from(row.truncated);
        }
        let (n, s, c) = (n as i64, s as i64, c as i64);
        Ok(Batch {
            images: HostArray::from_bytes(DType::F32, &[n, s, s, c], images)?,
            tokens: HostArray::new(&[n, o.text_length as i64], &tokens)?,
            labels: self.labels,
            truncated,
            next: self.next,
        })
    }
}

/// What the loader's threads tell the thread that puts batches together, in the order they
/// happen: a batch is announced before any of its samples is handed to a worker.
enum Note {
    /// Batch `seq` will have these labels and ends at `next`.
    Batch {
        seq: u64,
        labels: Vec<Option<i64>>,
        next: Position,
    },
    /// Row `row` of batch `seq`, prepared.
    Row {
        seq: u64,
        row: usize,
        prepared: Result<Row>,
    },
}

/// One sample for a worker: row `row` of batch `seq` is `samples[sample]`, augmented with `seed`.
struct Job {
    seq: u64,
    row: usize,
    sample: usize,
    seed: u64,
}

/// An endless stream of batches from background threads: one thread walks the epochs' order
/// and hands out samples, `workers` threads prepare them, one thread puts the batches together
/// in order. The workers take samples across batch boundaries, so that no worker waits for the
/// slowest image of a batch before starting on the next.
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
            return Err(Error::invalid(
                format!("a dataset of {} pairs", samples.len()),
                format!(
                    "it needs at least one batch of {global}; use a smaller --batch or more data"
                ),
            ));
        }
        let (tx, rx) = sync_channel(o.prefetch.max(1));
        // Bounded queues hold the stream to about one batch ahead of the assembled ones.
        let (job_tx, job_rx) = sync_channel::<Job>(o.batch);
        let (note_tx, note_rx) = sync_channel::<Note>(o.batch);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..o.workers.max(1) {
            let (job_rx, note_tx) = (job_rx.clone(), note_tx.clone());
            let (samples, tok, o) = (samples.clone(), tok.clone(), o.clone());
            std::thread::spawn(move || {
                on_own_thread(|| work(&job_rx, &note_tx, &samples, &tok, &o));
            });
        }
        let order = {
            let (o, samples) = (o.clone(), samples.clone());
            move || walk(&samples, &o, start, per_epoch, &job_tx, &note_tx)
        };
        std::thread::spawn(order);
        std::thread::spawn(move || put_together(&note_rx, &tx, &o));
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

/// The epochs' order from `start` on: announces each batch, then hands its samples to the
/// workers. Returns when the workers or the assembling thread are gone.
fn walk(
    samples: &[Sample],
    o: &LoaderOptions,
    start: Position,
    per_epoch: u64,
    jobs: &SyncSender<Job>,
    notes: &SyncSender<Note>,
) {
    let n = samples.len();
    let mut pos = start;
    let mut perm = permutation(n, o.seed, pos.epoch);
    for seq in 0.. {
        if pos.batch >= per_epoch {
            pos = Position {
                epoch: pos.epoch + 1,
                batch: 0,
            };
            perm = permutation(n, o.seed, pos.epoch);
        }
        let (picked, seeds) = plan(&perm, pos, o);
        pos.batch += 1;
        let labels = picked.iter().map(|&i| samples[i].label).collect();
        if notes
            .send(Note::Batch {
                seq,
                labels,
                next: pos,
            })
            .is_err()
        {
            return;
        }
        for (row, (sample, seed)) in picked.into_iter().zip(seeds).enumerate() {
            if jobs
                .send(Job {
                    seq,
                    row,
                    sample,
                    seed,
                })
                .is_err()
            {
                return;
            }
        }
    }
}

/// The samples of the batch at `pos` (indices into the dataset) and their augmentation seeds:
/// each sample's crop depends on the seed, the epoch and its place in the epoch.
fn plan(perm: &[usize], pos: Position, o: &LoaderOptions) -> (Vec<usize>, Vec<u64>) {
    let at = (pos.batch as usize * o.ranks.max(1) + o.rank) * o.batch;
    let picked = perm[at..at + o.batch].to_vec();
    let seeds = (0..o.batch as u64)
        .map(|i| o.seed ^ pos.epoch.wrapping_mul(crate::seed::GOLDEN) ^ ((at as u64 + i) << 20))
        .collect();
    (picked, seeds)
}

/// Runs `f` on this thread as the only thread of its own rayon pool, so that the work the JPEG
/// decoder splits into parallel tasks runs here rather than on helper threads. The loader's
/// parallelism is its workers; outside a pool jpeg-decoder hands every row of an image to
/// helper threads of its own, which made one worker use part of a second core and two workers
/// spend a fifth of their time in the kernel (BENCHMARKS.md, input pipeline).
pub fn on_own_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// A worker: prepares samples until the queue closes or nobody listens.
fn work(
    jobs: &Mutex<Receiver<Job>>,
    notes: &SyncSender<Note>,
    samples: &[Sample],
    tok: &Tokenizer,
    o: &LoaderOptions,
) {
    loop {
        let job = match jobs.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let smp = &samples[job.sample];
        let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Row::prepare(smp, job.seed, tok, o)
        }))
        .unwrap_or_else(|_| {
            Err(Error::Internal(format!(
                "a data-loading thread panicked on sample {:?}",
                smp.key
            )))
        });
        let note = Note::Row {
            seq: job.seq,
            row: job.row,
            prepared,
        };
        if notes.send(note).is_err() {
            return;
        }
    }
}

/// Fills the announced batches with their rows as they come and sends each one, in order, when
/// it is full; a batch with a failed row is sent as its first error, and the stream stops.
fn put_together(notes: &Receiver<Note>, out: &SyncSender<Result<Batch>>, o: &LoaderOptions) {
    let mut pending: std::collections::BTreeMap<u64, Pending> = Default::default();
    let mut next_out = 0u64;
    while let Ok(note) = notes.recv() {
        match note {
            Note::Batch { seq, labels, next } => {
                pending.insert(seq, Pending::new(labels, next));
            }
            Note::Row { seq, row, prepared } => {
                if let Some(b) = pending.get_mut(&seq) {
                    b.fill(row, prepared);
                }
            }
        }
        while pending.get(&next_out).is_some_and(|b| b.left == 0) {
            let Some(b) = pending.remove(&next_out) else {
                break;
            };
            next_out += 1;
            let r = b.finish(o);
            let failed = r.is_err();
            if out.send(r).is_err() || failed {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::encode_png;
    use crate::data::tokenizer::Kind;

    const CAPTIONS: [&str; 3] = ["a red square", "a blue circle", "the green one"];

    fn tokenizer(name: &str) -> Arc<Tokenizer> {
        let dir = std::env::temp_dir().join(format!("basic-loader-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let corpus = dir.join("corpus.txt");
        std::fs::write(&corpus, CAPTIONS.join("\n")).unwrap();
        let tok = Tokenizer::train(&corpus, Kind::WordLevel, 32, &dir.join("tok.json")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        Arc::new(tok)
    }

    /// Ten PNGs of unequal sizes (so that workers finish them out of order).
    fn samples() -> Vec<Sample> {
        (0..10)
            .map(|i| {
                let (w, h) = (8 + (i % 5) as u32 * 9, 6 + (i % 3) as u32 * 11);
                let px: Vec<u8> = (0..(w * h * 3) as usize)
                    .map(|k| ((k * 7 + i * 13) % 256) as u8)
                    .collect();
                Sample {
                    key: format!("s{i}"),
                    image: Arc::new(encode_png(w, h, 3, &px).unwrap()),
                    caption: CAPTIONS[i % 3].into(),
                    label: Some(i as i64),
                }
            })
            .collect()
    }

    fn options(workers: usize) -> LoaderOptions {
        LoaderOptions {
            batch: 4,
            seed: 5,
            image_size: 6,
            channels: 3,
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
            text_length: 5,
            workers,
            prefetch: 2,
            rank: 0,
            ranks: 1,
            augment: true,
        }
    }

    #[test]
    fn batches_are_the_same_whatever_the_workers_and_in_order_across_epochs() {
        let (data, tok) = (Arc::new(samples()), tokenizer("order"));
        let start = Position { epoch: 0, batch: 1 };
        for workers in [1, 3] {
            let mut l = Loader::new(data.clone(), tok.clone(), options(workers), start).unwrap();
            assert_eq!(l.batches_per_epoch, 2);
            let mut pos = start;
            // Five batches from the second one on cross two epoch boundaries.
            for _ in 0..5 {
                if pos.batch == 2 {
                    pos = Position {
                        epoch: pos.epoch + 1,
                        batch: 0,
                    };
                }
                let perm = permutation(data.len(), 5, pos.epoch);
                let (picked, seeds) = plan(&perm, pos, &options(1));
                let rows: Vec<&Sample> = picked.iter().map(|&i| &data[i]).collect();
                let next = Position {
                    batch: pos.batch + 1,
                    ..pos
                };
                let want = assemble(&rows, &seeds, &tok, &options(1), next).unwrap();
                let got = l.next_batch().unwrap();
                assert_eq!(
                    got.images.bytes(),
                    want.images.bytes(),
                    "{workers} workers, {pos:?}"
                );
                assert_eq!(got.tokens.bytes(), want.tokens.bytes());
                assert_eq!(got.labels, want.labels);
                assert_eq!(got.next, next);
                pos = next;
            }
        }
    }

    #[test]
    fn a_bad_image_fails_its_batch_after_the_good_batches_before_it() {
        let mut data = samples();
        // Row 1 of the second batch of the first epoch.
        let bad = permutation(data.len(), 5, 0)[5];
        data[bad].image = Arc::new(b"not an image".to_vec());
        let mut l = Loader::new(
            Arc::new(data),
            tokenizer("bad"),
            options(3),
            Position::default(),
        )
        .unwrap();
        assert_eq!(l.next_batch().unwrap().labels.len(), 4);
        let e = l
            .next_batch()
            .err()
            .expect("the batch with the bad image fails")
            .to_string();
        assert!(e.contains(&format!("s{bad}")), "{e}");
        assert!(l.next_batch().is_err(), "the stream stops after an error");
    }
}
