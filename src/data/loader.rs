//! Batches for training from the data streams (`stream.rs`): each global batch takes a block of
//! `batch / S` consecutive rows from each of the `S` streams, in stream order, so its content
//! and every row's augmentation seed depend on the seed and `S` only — not on how many
//! processes read the streams (process `p` of `P` reads streams `[p·S/P, (p+1)·S/P)` and makes
//! rows `[p·B/P, (p+1)·B/P)`) nor on the decoding threads. Decoding and tokenizing run on
//! worker threads, batches are prefetched ahead of the device, and the position after each
//! batch travels with it, so a checkpoint can restore the streams exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::array::HostArray;
use crate::dtype::DType;
use crate::error::{Error, Result};

use super::image::{preprocess_augmented_into, preprocess_into};
use super::shards::Sample;
use super::source::Dataset;
use super::stream::{self, Counts, Emitted, Plan, StreamState};
use super::tokenizer::Tokenizer;

/// Where the stream stands: the next batch is batch `batch` of epoch `epoch`, and each data
/// stream this process reads is at its state. Serialised as JSON into checkpoints; a
/// checkpoint of an older basic has `epoch` and `batch` only (`data_streams` 0), and resumes
/// by passing over the epoch's first batches.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub batch: u64,
    /// The number of data streams S (0: not recorded).
    #[serde(default)]
    pub data_streams: usize,
    /// The state of each stream (by index) this position covers.
    #[serde(default)]
    pub streams: BTreeMap<usize, StreamState>,
    /// Pairs in each batch that `batch` counts: the loader's global batch (a streamed step's
    /// loader counts micro-batches). 0: not recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_rows: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Position {
    /// What the streams skipped, padded and left, summed.
    pub fn counts(&self) -> Counts {
        Counts::total(self.streams.values())
    }
}

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// The global batch (over all processes).
    pub batch: usize,
    pub seed: u64,
    pub image_size: usize,
    pub channels: usize,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub text_length: usize,
    pub workers: usize,
    pub prefetch: usize,
    /// The number of data streams S (0: [`stream::default_streams`]; a resumed position's
    /// wins).
    pub data_streams: usize,
    /// Samples each stream shuffles together.
    pub shuffle_buffer: usize,
    /// This process and the process count: process `p` makes rows `[p·B/P, (p+1)·B/P)`.
    pub process: usize,
    pub processes: usize,
    /// Samples an epoch (all streams); `None`: counted from the data.
    pub samples_per_epoch: Option<u64>,
    /// Draw shards with replacement, weighted by their source's weight.
    pub resampled: bool,
    /// Leave damaged shards (counted) instead of stopping.
    pub skip_bad: bool,
    /// Random-resized-crop augmentation, seeded per sample by (seed, epoch, position), so a
    /// resumed run sees the same crops.
    pub augment: bool,
    /// Images as `u8` pixel values (resized and cropped, rounded, not normalised: the step
    /// normalises them on the devices with `mean` and `std`) instead of normalised `f32`.
    pub bytes: bool,
}

impl LoaderOptions {
    /// Options with the defaults for everything but the batch, image and text shapes.
    pub fn new(batch: usize, image_size: usize, channels: usize, text_length: usize) -> Self {
        LoaderOptions {
            batch,
            seed: 0,
            image_size,
            channels,
            mean: vec![0.5; channels],
            std: vec![0.5; channels],
            text_length,
            workers: 2,
            prefetch: 4,
            data_streams: 0,
            shuffle_buffer: 1000,
            process: 0,
            processes: 1,
            samples_per_epoch: None,
            resampled: false,
            skip_bad: false,
            augment: false,
            bytes: false,
        }
    }
}

/// One batch on the host: this process's rows of a global batch.
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
        // Pixel values in [0, 255]: "normalised" by a mean of 0 and a deviation of 1/255.
        let (zero, unit) = (vec![0.0; ch], vec![1.0 / 255.0; ch]);
        let (mean, std) = if o.bytes {
            (&zero, &unit)
        } else {
            (&o.mean, &o.std)
        };
        if o.augment {
            preprocess_augmented_into(&smp.image, &smp.key, size, ch, mean, std, seed, &mut image)?;
        } else {
            preprocess_into(&smp.image, &smp.key, size, ch, mean, std, &mut image)?;
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
        let width = if o.bytes { 1 } else { 4 };
        let mut images = Vec::with_capacity(n * s * s * c * width);
        let mut tokens = Vec::with_capacity(n * o.text_length);
        let mut truncated = 0;
        for row in self.rows {
            let row =
                row.ok_or_else(|| Error::Internal("a batch was sent before it was full".into()))?;
            if o.bytes {
                images.extend(row.image.iter().map(|x| x.round().clamp(0.0, 255.0) as u8));
            } else {
                images.extend(row.image.iter().flat_map(|x| x.to_le_bytes()));
            }
            tokens.extend_from_slice(&row.tokens);
            truncated += usize::from(row.truncated);
        }
        let (n, s, c) = (n as i64, s as i64, c as i64);
        Ok(Batch {
            images: HostArray::from_bytes(
                if o.bytes { DType::U8 } else { DType::F32 },
                &[n, s, s, c],
                images,
            )?,
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
    /// The streams failed: the stream of batches ends with this error.
    Failed(Error),
}

/// One sample for a worker: row `row` of batch `seq`, augmented with `seed`.
struct Job {
    seq: u64,
    row: usize,
    sample: Sample,
    seed: u64,
}

/// What the streams reported (skipped samples, damaged shards), for the caller to show.
pub type Reports = Arc<Mutex<Vec<String>>>;

/// An endless stream of batches from background threads: one thread per data stream reads its
/// shards, one thread takes each batch's rows from the streams and hands them out, `workers`
/// threads prepare them, one thread puts the batches together in order. The workers take
/// samples across batch boundaries, so that no worker waits for the slowest image of a batch
/// before starting on the next. Memory: each stream's shuffle window and read-ahead, and about
/// two batches of samples between the threads, whatever the dataset's size.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    /// Time the consumer spent waiting for data.
    pub waited: Duration,
    pub batches_per_epoch: u64,
    /// The number of data streams S.
    pub data_streams: usize,
    /// Samples an epoch over all streams (counted or given).
    pub samples_per_epoch: u64,
    reports: Reports,
}

/// The streams' shape: S, samples per stream and epoch, batches per epoch.
fn shape(data: &Dataset, o: &LoaderOptions, start: &Position) -> Result<(usize, u64, u64)> {
    let (b, p) = (o.batch, o.processes.max(1));
    if start.batch_rows != 0 && start.batch_rows != b as u64 {
        return Err(Error::invalid(
            format!(
                "a data position counted in batches of {} pairs, read in batches of {b}",
                start.batch_rows
            ),
            "resume with the batch, --microbatches and --streamed the run was checkpointed with (a streamed step reads its data a micro-batch at a time)",
        ));
    }
    let total = match o.samples_per_epoch {
        Some(n) => n,
        None => super::source::count(data, o.skip_bad)?,
    };
    let s = match (start.data_streams, o.data_streams) {
        (0, 0) => stream::default_streams(data.shards.len(), b, p),
        (0, s) => s,
        (r, 0) => r,
        (r, s) if r == s => s,
        (r, s) => {
            return Err(Error::invalid(
                format!("--data-streams {s}"),
                format!("the run being resumed has {r} data streams, which fix its order: drop the flag or give {r}"),
            ))
        }
    };
    if s == 0 || b % s != 0 {
        return Err(Error::invalid(
            format!("{s} data streams for a batch of {b}"),
            "each stream fills an equal block of every batch: choose --data-streams dividing the batch",
        ));
    }
    if s % p != 0 || o.process >= p {
        return Err(Error::invalid(
            format!("process {} of {p} with {s} data streams", o.process),
            "every process reads an equal share of the streams: the process count must divide --data-streams",
        ));
    }
    if !o.resampled && data.shards.len() < s {
        return Err(Error::invalid(
            format!("{s} data streams over {} shards", data.shards.len()),
            "every stream needs a shard of its own: lower --data-streams, use more shards, or pass --dataset-resampled",
        ));
    }
    let per_epoch = total / b as u64;
    if per_epoch == 0 {
        return Err(Error::invalid(
            format!("a dataset of {total} pairs"),
            format!("it needs at least one batch of {b}; use a smaller --batch or more data"),
        ));
    }
    Ok((s, per_epoch * (b / s) as u64, per_epoch))
}

impl Loader {
    /// Starts at `start`. Fails if the dataset is smaller than one batch, or the streams do not
    /// fit the batch and processes.
    pub fn new(
        data: &Dataset,
        tok: Arc<Tokenizer>,
        o: LoaderOptions,
        start: Position,
    ) -> Result<Loader> {
        let (s, per_stream, per_epoch) = shape(data, &o, &start)?;
        // A position at an epoch's end (an older checkpoint's) is the next epoch's start.
        let mut start = start;
        if start.batch >= per_epoch {
            start.epoch += 1;
            start.batch = 0;
            for st in start.streams.values_mut() {
                (st.shard, st.skip) = (0, 0);
            }
        }
        let plan = Arc::new(Plan::new(
            data,
            o.seed,
            s,
            per_stream,
            o.shuffle_buffer,
            o.resampled,
            o.skip_bad,
        ));
        let (rows, global) = (o.batch / s, o.batch);
        let mine = o.process * s / o.processes.max(1)..(o.process + 1) * s / o.processes.max(1);
        let reports: Reports = Default::default();
        let mut inputs = Vec::new();
        for st in mine.clone() {
            let (tx, rx) = sync_channel::<Result<Emitted>>(2 * rows);
            let (plan, reports) = (plan.clone(), reports.clone());
            let state = start.streams.get(&st).copied();
            let (epoch, emitted) = (start.epoch, start.batch * rows as u64);
            std::thread::spawn(move || {
                let report = |m: String| {
                    if let Ok(mut r) = reports.lock() {
                        r.push(m);
                    }
                };
                stream::run(&plan, st, epoch, emitted, state, &tx, &report);
            });
            inputs.push((st, rx));
        }
        let local = rows * inputs.len();
        let (tx, rx) = sync_channel(o.prefetch.max(1));
        // Bounded queues hold the stream to about one batch ahead of the assembled ones.
        let (job_tx, job_rx) = sync_channel::<Job>(local);
        let (note_tx, note_rx) = sync_channel::<Note>(local);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..o.workers.max(1) {
            let (job_rx, note_tx) = (job_rx.clone(), note_tx.clone());
            let (tok, o) = (tok.clone(), o.clone());
            std::thread::spawn(move || {
                on_own_thread(|| work(&job_rx, &note_tx, &tok, &o));
            });
        }
        let walker = Walk {
            inputs,
            rows,
            first_row: o.process * (o.batch / o.processes.max(1)),
            global: o.batch,
            seed: o.seed,
            streams: s,
            per_epoch,
        };
        std::thread::spawn(move || walker.run(start, &job_tx, &note_tx));
        std::thread::spawn(move || put_together(&note_rx, &tx, &o));
        Ok(Loader {
            rx,
            waited: Duration::ZERO,
            batches_per_epoch: per_epoch,
            data_streams: s,
            samples_per_epoch: per_epoch * global as u64,
            reports,
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

    /// What the streams reported since the last call (skipped samples, damaged shards).
    pub fn take_reports(&self) -> Vec<String> {
        self.reports
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

/// The thread that takes each batch's rows from this process's streams, announces the batch,
/// and hands its samples to the workers.
struct Walk {
    inputs: Vec<(usize, Receiver<Result<Emitted>>)>,
    /// Rows per stream in a batch.
    rows: usize,
    /// The global row of this process's first row.
    first_row: usize,
    global: usize,
    seed: u64,
    streams: usize,
    per_epoch: u64,
}

impl Walk {
    /// Returns when the workers or the assembling thread are gone, or a stream failed.
    fn run(self, start: Position, jobs: &SyncSender<Job>, notes: &SyncSender<Note>) {
        let mut pos = Position {
            data_streams: self.streams,
            batch_rows: self.global as u64,
            ..start
        };
        // This process's streams only: the others' states are other processes' to report.
        pos.streams
            .retain(|s, _| self.inputs.iter().any(|(mine, _)| mine == s));
        if pos.batch >= self.per_epoch {
            pos.epoch += 1;
            pos.batch = 0;
        }
        for seq in 0.. {
            let mut samples = Vec::with_capacity(self.rows * self.inputs.len());
            let mut epoch_end = false;
            for (st, rx) in &self.inputs {
                for _ in 0..self.rows {
                    let e = match rx.recv() {
                        Ok(Ok(e)) => e,
                        Ok(Err(e)) => {
                            let _ = notes.send(Note::Failed(e));
                            return;
                        }
                        Err(_) => {
                            let e = Error::Internal(format!("data stream {st} stopped"));
                            let _ = notes.send(Note::Failed(e));
                            return;
                        }
                    };
                    pos.streams.insert(*st, e.after);
                    epoch_end |= e.epoch_end;
                    samples.push(e.sample);
                }
            }
            let seeds = row_seeds(
                self.seed,
                pos.epoch,
                pos.batch,
                self.global,
                self.first_row,
                samples.len(),
            );
            pos.batch += 1;
            if epoch_end || pos.batch == self.per_epoch {
                pos.epoch += 1;
                pos.batch = 0;
            }
            let labels = samples.iter().map(|s| s.label).collect();
            let next = pos.clone();
            if notes.send(Note::Batch { seq, labels, next }).is_err() {
                return;
            }
            for (row, (sample, seed)) in samples.into_iter().zip(seeds).enumerate() {
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
}

/// The augmentation seeds of `n` rows from global row `first` of batch `batch` of `epoch`: each
/// sample's crop depends on the seed, the epoch and its place in the epoch.
pub fn row_seeds(
    seed: u64,
    epoch: u64,
    batch: u64,
    global: usize,
    first: usize,
    n: usize,
) -> Vec<u64> {
    let at = batch * global as u64 + first as u64;
    (0..n as u64)
        .map(|i| seed ^ epoch.wrapping_mul(crate::seed::GOLDEN) ^ ((at + i) << 20))
        .collect()
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
fn work(jobs: &Mutex<Receiver<Job>>, notes: &SyncSender<Note>, tok: &Tokenizer, o: &LoaderOptions) {
    loop {
        let job = match jobs.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let smp = &job.sample;
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
    let mut failure = None;
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
            // The batches announced before the failure go first, then the error.
            Note::Failed(e) => failure = Some(e),
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
        if failure.is_some() && pending.is_empty() {
            break;
        }
    }
    if let Some(e) = failure {
        let _ = out.send(Err(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::encode_png;
    use crate::data::tokenizer::Kind;
    use crate::data::Shard;

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

    /// PNGs of unequal sizes (so that workers finish them out of order), labelled by index.
    fn samples(n: usize) -> Vec<Sample> {
        (0..n)
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

    /// Shards of the given sizes over consecutive samples.
    fn dataset(sizes: &[usize]) -> Dataset {
        let all = samples(sizes.iter().sum());
        let mut at = 0;
        let shards: Vec<Shard> = sizes
            .iter()
            .map(|&n| {
                at += n;
                Shard::Memory(Arc::new(all[at - n..at].to_vec()))
            })
            .collect();
        Dataset {
            weights: vec![1.0; shards.len()],
            shards,
            root: None,
        }
    }

    fn options(workers: usize, process: usize, processes: usize) -> LoaderOptions {
        LoaderOptions {
            seed: 5,
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
            workers,
            prefetch: 2,
            data_streams: 4,
            shuffle_buffer: 3,
            process,
            processes,
            augment: true,
            ..LoaderOptions::new(8, 6, 3, 5)
        }
    }

    /// A global batch: images, tokens, labels, and the merged position after it.
    type Global = (Vec<u8>, Vec<u8>, Vec<Option<i64>>, Position);

    /// `n` global batches read by `processes` loaders (their rows concatenated in process
    /// order), each with `workers` workers, from `start`.
    fn read(
        d: &Dataset,
        workers: usize,
        processes: usize,
        start: &Position,
        n: usize,
    ) -> Vec<Global> {
        let tok = tokenizer(&format!("p{processes}w{workers}"));
        let mut loaders: Vec<Loader> = (0..processes)
            .map(|p| {
                Loader::new(
                    d,
                    tok.clone(),
                    options(workers, p, processes),
                    start.clone(),
                )
                .unwrap()
            })
            .collect();
        (0..n)
            .map(|_| {
                let mut g: Global = Default::default();
                for l in &mut loaders {
                    let b = l.next_batch().unwrap();
                    g.0.extend_from_slice(b.images.bytes());
                    g.1.extend_from_slice(b.tokens.bytes());
                    g.2.extend(b.labels);
                    g.3.epoch = b.next.epoch;
                    g.3.batch = b.next.batch;
                    g.3.data_streams = b.next.data_streams;
                    g.3.streams.extend(b.next.streams);
                }
                g
            })
            .collect()
    }

    #[test]
    fn global_batches_are_the_same_whatever_the_processes_and_workers_and_resume_across_them() {
        // 41 samples in unequal shards: the streams are padded or cut to 40 / 4 = 10 each.
        let d = dataset(&[3, 7, 4, 5, 2, 6, 4, 5, 5]);
        let start = Position::default();
        let want = read(&d, 1, 1, &start, 16);
        assert_eq!(want[0].2.len(), 8);
        assert!(want.iter().any(|g| g.3.counts().padded_samples > 0));
        for (workers, processes) in [(3, 1), (1, 2), (2, 4)] {
            let got = read(&d, workers, processes, &start, 16);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g == w,
                    "batch {i} differs with {workers} workers, {processes} processes"
                );
            }
        }
        // Every epoch has 5 batches; positions count them.
        assert_eq!((want[4].3.epoch, want[4].3.batch), (1, 0));
        assert_eq!((want[6].3.epoch, want[6].3.batch), (1, 2));
        // Resumed after batch k (mid-window, at an epoch's end, in a later epoch), by one, two
        // or four processes: the same batches as the run that went on.
        for (k, processes) in [(0, 2), (1, 1), (4, 4), (6, 2), (8, 1)] {
            let got = read(&d, 2, processes, &want[k].3, 16 - k - 1);
            for (i, g) in got.iter().enumerate() {
                let w = &want[k + 1 + i];
                let at = format!(
                    "resumed after batch {k} by {processes}: batch {}",
                    k + 1 + i
                );
                assert_eq!(g.2, w.2, "{at}: labels");
                assert!(g.0 == w.0, "{at}: images");
                assert_eq!(g.3, w.3, "{at}: position");
            }
        }
        // A position of an older basic (epoch and batch only) resumes to the same batches.
        let legacy = Position {
            epoch: 1,
            batch: 2,
            ..Default::default()
        };
        let got = read(&d, 2, 1, &legacy, 3);
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.0, want[7 + i].0, "legacy resume, batch {}", 7 + i);
        }
    }

    #[test]
    fn each_epoch_is_a_fresh_shuffle_of_every_sample() {
        // 48 samples in 8 equal shards over 4 streams: no padding, every sample once an epoch.
        let d = dataset(&[6; 8]);
        let got = read(&d, 2, 1, &Position::default(), 12);
        let epoch = |e: usize| -> Vec<i64> {
            got[e * 6..(e + 1) * 6]
                .iter()
                .flat_map(|g| g.2.iter().map(|l| l.unwrap()))
                .collect()
        };
        let (a, b) = (epoch(0), epoch(1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..48).collect::<Vec<_>>());
        let mut sb = b.clone();
        sb.sort();
        assert_eq!(sb, sorted);
        assert_ne!(a, b, "the second epoch is shuffled anew");
        assert_eq!(got[11].3.counts(), Counts::default());
    }

    #[test]
    fn byte_images_are_the_float_images_before_normalising_rounded() {
        // The same samples, crops and order: the u8 pixels, normalised as the step does, are
        // the f32 images within half a pixel step.
        let d = dataset(&[6; 8]);
        let tok = tokenizer("bytes");
        let read_one = |bytes: bool| {
            let o = LoaderOptions {
                bytes,
                ..options(2, 0, 1)
            };
            Loader::new(&d, tok.clone(), o, Position::default())
                .unwrap()
                .next_batch()
                .unwrap()
        };
        let (f, b) = (read_one(false), read_one(true));
        assert_eq!(b.images.dtype(), DType::U8);
        assert_eq!(b.images.shape(), f.images.shape());
        assert_eq!(b.images.bytes().len() * 4, f.images.bytes().len());
        assert_eq!(b.tokens, f.tokens);
        let (m, s) = (0.5, 0.25);
        let floats = f.images.to_f64_vec();
        let mut exact = 0;
        for (px, x) in b.images.bytes().iter().zip(&floats) {
            let y = (f64::from(*px) / 255.0 - m) / s;
            assert!(
                (y - x).abs() <= 0.5 / 255.0 / s + 1e-5,
                "{px} → {y}, float {x}"
            );
            exact += usize::from((y - x).abs() < 1e-5);
        }
        // Not all exact: the resampled values fall between pixel steps.
        assert!(exact < floats.len(), "{exact} of {}", floats.len());
    }

    #[test]
    fn streams_that_do_not_fit_say_what_to_change() {
        let d = dataset(&[4; 3]);
        let tok = tokenizer("fit");
        let e = |o: LoaderOptions| {
            Loader::new(&d, tok.clone(), o, Position::default())
                .err()
                .unwrap()
                .to_string()
        };
        assert!(e(options(1, 0, 1)).contains("every stream needs a shard"));
        let o = LoaderOptions {
            data_streams: 3,
            ..options(1, 0, 1)
        };
        assert!(e(o).contains("dividing the batch"));
        let o = LoaderOptions {
            data_streams: 2,
            ..options(1, 0, 4)
        };
        assert!(e(o).contains("must divide --data-streams"));
        let resumed = Position {
            data_streams: 2,
            ..Default::default()
        };
        let x = Loader::new(&d, tok.clone(), options(1, 0, 1), resumed)
            .err()
            .unwrap()
            .to_string();
        assert!(x.contains("has 2 data streams"), "{x}");
    }

    #[test]
    fn a_bad_image_fails_its_batch_after_the_good_batches_before_it() {
        let mut d = dataset(&[3, 7, 4, 5, 2, 6, 4, 5, 5]);
        let want = read(&d, 1, 1, &Position::default(), 2);
        // Spoil one sample of the second batch.
        let bad = want[1].2[3].unwrap();
        for s in &mut d.shards {
            if let Shard::Memory(m) = s {
                let mut v = m.to_vec();
                for x in &mut v {
                    if x.label == Some(bad) {
                        x.image = Arc::new(b"not an image".to_vec());
                    }
                }
                *m = Arc::new(v);
            }
        }
        let mut l =
            Loader::new(&d, tokenizer("bad"), options(3, 0, 1), Position::default()).unwrap();
        assert_eq!(l.next_batch().unwrap().labels.len(), 8);
        let e = l
            .next_batch()
            .err()
            .expect("the batch with the bad image fails")
            .to_string();
        assert!(e.contains(&format!("s{bad}")), "{e}");
        assert!(l.next_batch().is_err(), "the stream stops after an error");
    }
}
