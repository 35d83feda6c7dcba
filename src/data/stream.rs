//! The training stream as `S` deterministic data streams, whatever the number of processes
//! reading them or of threads decoding them.
//!
//! Each epoch `e` the shard list is permuted from the seed, and shard `i` of the permuted list
//! goes to stream `i mod S`. A stream reads its shards in that order and yields exactly
//! `per_stream` samples an epoch: a stream whose shards hold fewer is padded by shards drawn
//! again from its own list (counted as `padded`), one whose shards hold more stops early (its
//! last samples come first in another epoch, as the permutation changes). With resampling every
//! shard of every stream is drawn with replacement, weighted by its source's weight. Bad samples
//! (no image, no caption) are skipped and counted; a damaged shard is an error naming the URL
//! and the byte, or, with `skip_bad`, counted and left.
//!
//! A stream shuffles in windows: it reads `window` samples, permutes them from (seed, epoch,
//! stream, window), and yields them; memory holds one window a stream. Its state between two
//! samples is where the current window starts — the shard's ordinal in the stream's epoch and
//! the usable samples of that shard before the window — so a resumed stream re-reads at most
//! the part of one shard that rebuilds the window, never a shard it has finished.

use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::seed::{SplitMix, GOLDEN};

use super::shards::Sample;
use super::source::{self, Dataset, Shard};
use super::webdataset::{Item, Samples};

/// What a stream skipped or repeated so far (over the whole run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Samples without an image or caption (or with a bad class), skipped.
    pub skipped_samples: u64,
    /// Damaged shards left (with `--skip-bad`).
    pub bad_shards: u64,
    /// Samples read again to pad a stream's epoch.
    pub padded_samples: u64,
}

impl Counts {
    fn add(self, o: Counts) -> Counts {
        Counts {
            skipped_samples: self.skipped_samples + o.skipped_samples,
            bad_shards: self.bad_shards + o.bad_shards,
            padded_samples: self.padded_samples + o.padded_samples,
        }
    }

    fn sub(self, o: Counts) -> Counts {
        Counts {
            skipped_samples: self.skipped_samples.saturating_sub(o.skipped_samples),
            bad_shards: self.bad_shards.saturating_sub(o.bad_shards),
            padded_samples: self.padded_samples.saturating_sub(o.padded_samples),
        }
    }

    /// The sum over streams.
    pub fn total<'a>(it: impl IntoIterator<Item = &'a StreamState>) -> Counts {
        it.into_iter()
            .fold(Counts::default(), |a, s| a.add(s.counts))
    }
}

/// One stream's state: where its current shuffle window starts (shard ordinal in the stream's
/// epoch, usable samples of that shard before it) and what it counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamState {
    pub shard: u64,
    pub skip: u64,
    pub counts: Counts,
}

/// What every stream of a run shares.
pub struct Plan {
    pub shards: Vec<Shard>,
    /// Cumulative weights, for resampling.
    cumulative: Vec<f64>,
    pub seed: u64,
    pub streams: usize,
    /// Samples each stream yields an epoch.
    pub per_stream: u64,
    pub window: usize,
    pub resampled: bool,
    pub skip_bad: bool,
}

/// A number made of several (splitmix64 over them).
fn mix(parts: &[u64]) -> u64 {
    let mut r = SplitMix(0x0DA7_A57E_A115_u64);
    for &p in parts {
        r.0 ^= p.wrapping_mul(GOLDEN);
        r.next_u64();
    }
    r.next_u64()
}

/// Salts that keep the draws of different purposes apart.
const PAD: u64 = 1;
const RESAMPLE: u64 = 2;
const WINDOW: u64 = 3;

impl Plan {
    pub fn new(
        d: &Dataset,
        seed: u64,
        streams: usize,
        per_stream: u64,
        window: usize,
        resampled: bool,
        skip_bad: bool,
    ) -> Plan {
        let mut acc = 0.0;
        let cumulative = d
            .weights
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        Plan {
            shards: d.shards.clone(),
            cumulative,
            seed,
            streams,
            per_stream,
            window: window.max(1),
            resampled,
            skip_bad,
        }
    }

    /// The shards stream `s` reads in epoch `e`, in order (without resampling).
    pub fn stream_shards(&self, epoch: u64, s: usize) -> Vec<usize> {
        super::loader::permutation(self.shards.len(), self.seed, epoch)
            .into_iter()
            .skip(s)
            .step_by(self.streams)
            .collect()
    }

    /// The shard at `ordinal` of stream `s`'s epoch `e`: its own list, then draws from it to
    /// pad; with resampling, draws from every shard by weight.
    fn shard_at(&self, epoch: u64, s: usize, list: &[usize], ordinal: u64) -> usize {
        if self.resampled {
            let total = self.cumulative.last().copied().unwrap_or(1.0);
            let u = SplitMix(mix(&[self.seed, RESAMPLE, epoch, s as u64, ordinal])).uniform();
            let x = u * total;
            return self
                .cumulative
                .partition_point(|&c| c <= x)
                .min(self.shards.len() - 1);
        }
        match list.get(ordinal as usize) {
            Some(&i) => i,
            None => {
                let r = mix(&[self.seed, PAD, epoch, s as u64, ordinal]);
                list[(r % list.len() as u64) as usize]
            }
        }
    }

    fn is_pad(&self, list: &[usize], ordinal: u64) -> bool {
        !self.resampled && ordinal as usize >= list.len()
    }

    /// The permutation of a window of `n` samples.
    fn window_order(&self, epoch: u64, s: usize, w: u64, n: usize) -> Vec<usize> {
        let mut r = SplitMix(mix(&[self.seed, WINDOW, epoch, s as u64, w]));
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (r.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// The items of one shard.
trait Items: Send {
    /// The next item; `Err` is the damage, described with its byte.
    fn next_item(&mut self) -> std::result::Result<Option<Item>, String>;
}

impl Items for Samples {
    fn next_item(&mut self) -> std::result::Result<Option<Item>, String> {
        Samples::next_item(self).map_err(|d| d.to_string())
    }
}

struct InMemory(Arc<Vec<Sample>>, usize);

impl Items for InMemory {
    fn next_item(&mut self) -> std::result::Result<Option<Item>, String> {
        let s = self.0.get(self.1).cloned();
        self.1 += 1;
        Ok(s.map(Item::Sample))
    }
}

/// A JSONL manifest's lines as items (each image read when its line is reached).
struct Manifest {
    path: std::path::PathBuf,
    lines: std::vec::IntoIter<(usize, String)>,
}

impl Items for Manifest {
    fn next_item(&mut self) -> std::result::Result<Option<Item>, String> {
        let Some((i, line)) = self.lines.next() else {
            return Ok(None);
        };
        Ok(Some(
            match super::shards::manifest_sample(&self.path, i, &line) {
                Ok(s) => Item::Sample(s),
                Err(e) => Item::Skipped(e.to_string()),
            },
        ))
    }
}

fn open_items(shard: &Shard) -> Result<Box<dyn Items>> {
    match shard {
        Shard::Memory(m) => Ok(Box::new(InMemory(m.clone(), 0))),
        Shard::Url(u) if u.ends_with(".jsonl") && !u.starts_with("pipe:") => {
            let path = std::path::PathBuf::from(u);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let lines: Vec<(usize, String)> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i, l.to_string()))
                .collect();
            Ok(Box::new(Manifest {
                path,
                lines: lines.into_iter(),
            }))
        }
        Shard::Url(u) => Ok(Box::new(Samples::new(source::open(u)?))),
    }
}

/// A usable sample, and where it was: its shard ordinal and index among the shard's usable
/// samples.
struct Found {
    sample: Sample,
    ordinal: u64,
    index: u64,
}

/// One stream's input in one epoch: its shards' usable samples in order, endless (padding).
struct Input<'a> {
    plan: &'a Plan,
    epoch: u64,
    stream: usize,
    list: Vec<usize>,
    ordinal: u64,
    /// Usable samples taken from the current shard.
    taken: u64,
    /// Usable samples of the current shard to pass over unseen and uncounted (a resume).
    pass: u64,
    items: Option<Box<dyn Items>>,
    /// Shards opened in a row that gave no usable sample.
    dry: usize,
    counts: Counts,
    peeked: Option<Found>,
    reports: &'a dyn Fn(String),
}

impl<'a> Input<'a> {
    fn new(
        plan: &'a Plan,
        epoch: u64,
        stream: usize,
        at: (u64, u64),
        reports: &'a dyn Fn(String),
    ) -> Input<'a> {
        let list = if plan.resampled {
            Vec::new()
        } else {
            plan.stream_shards(epoch, stream)
        };
        Input {
            plan,
            epoch,
            stream,
            list,
            ordinal: at.0,
            taken: 0,
            pass: at.1,
            items: None,
            dry: 0,
            counts: Counts::default(),
            peeked: None,
            reports,
        }
    }

    fn next(&mut self) -> Result<Found> {
        if let Some(f) = self.peeked.take() {
            return Ok(f);
        }
        loop {
            let shard = self
                .plan
                .shard_at(self.epoch, self.stream, &self.list, self.ordinal);
            let url = self.plan.shards[shard].name();
            if self.items.is_none() {
                if self.dry > self.list.len().max(self.plan.shards.len()) + 8 {
                    return Err(Error::invalid(
                        format!("data stream {} of epoch {}", self.stream, self.epoch),
                        format!("{} shards in a row gave no usable sample (the last: `{url}`); check the data", self.dry),
                    ));
                }
                self.items = Some(self.open(shard, &url)?);
                self.dry += 1;
            }
            let item = match self.items.as_mut() {
                Some(it) => it.next_item(),
                None => Ok(None),
            };
            match item {
                Ok(Some(Item::Sample(sample))) => {
                    self.dry = 0;
                    let index = self.taken;
                    self.taken += 1;
                    if self.pass > 0 {
                        self.pass -= 1;
                        continue;
                    }
                    if self.plan.is_pad(&self.list, self.ordinal) {
                        self.counts.padded_samples += 1;
                    }
                    return Ok(Found {
                        sample,
                        ordinal: self.ordinal,
                        index,
                    });
                }
                Ok(Some(Item::Skipped(why))) => {
                    if self.pass == 0 {
                        self.counts.skipped_samples += 1;
                        (self.reports)(format!("skipped in `{url}`: {why}"));
                    }
                }
                Ok(None) => self.next_shard(),
                Err(damage) => {
                    if !self.plan.skip_bad {
                        return Err(Error::invalid(
                            format!("shard `{url}`"),
                            format!("{damage}; pass --skip-bad to skip shards that are damaged or cannot be read (they are counted)"),
                        ));
                    }
                    self.counts.bad_shards += 1;
                    (self.reports)(format!(
                        "skipped the rest of damaged shard `{url}`: {damage}"
                    ));
                    self.next_shard();
                }
            }
        }
    }

    fn open(&mut self, shard: usize, url: &str) -> Result<Box<dyn Items>> {
        match open_items(&self.plan.shards[shard]) {
            Ok(i) => Ok(i),
            Err(e) if self.plan.skip_bad => {
                self.counts.bad_shards += 1;
                (self.reports)(format!("skipped shard `{url}`: {e}"));
                Ok(Box::new(InMemory(Arc::new(Vec::new()), 0)))
            }
            Err(e) => Err(e),
        }
    }

    fn next_shard(&mut self) {
        self.items = None;
        self.ordinal += 1;
        self.taken = 0;
        self.pass = 0;
    }

    /// Where the next usable sample is (reading it ahead).
    fn position(&mut self) -> Result<(u64, u64)> {
        if self.peeked.is_none() {
            let f = self.next()?;
            self.peeked = Some(f);
        }
        Ok(self
            .peeked
            .as_ref()
            .map_or((self.ordinal, self.taken), |f| (f.ordinal, f.index)))
    }
}

/// A sample of a stream and the stream's state after it.
pub struct Emitted {
    pub sample: Sample,
    pub after: StreamState,
    /// Whether the sample is the last of its stream's epoch.
    pub epoch_end: bool,
}

/// Runs stream `s` from sample `emitted` of epoch `epoch` (state `state`, or none: from the
/// epoch's start, passing over the samples before), sending every sample to `tx` until it
/// closes. An error is sent once and ends the stream.
pub fn run(
    plan: &Plan,
    s: usize,
    mut epoch: u64,
    mut emitted: u64,
    state: Option<StreamState>,
    tx: &SyncSender<Result<Emitted>>,
    reports: &dyn Fn(String),
) {
    let mut state = state;
    loop {
        match run_epoch(plan, s, epoch, emitted, state, tx, reports) {
            Ok(Some(counts)) => {
                state = Some(StreamState {
                    shard: 0,
                    skip: 0,
                    counts,
                });
                epoch += 1;
                emitted = 0;
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// One epoch of a stream from sample `emitted` on; the counts at its end, or `None` when the
/// receiver is gone.
fn run_epoch(
    plan: &Plan,
    s: usize,
    epoch: u64,
    emitted: u64,
    state: Option<StreamState>,
    tx: &SyncSender<Result<Emitted>>,
    reports: &dyn Fn(String),
) -> Result<Option<Counts>> {
    let w = plan.window as u64;
    let first_window = emitted / w;
    let (mut input, mut running) = match state {
        Some(st) => (
            Input::new(plan, epoch, s, (st.shard, st.skip), reports),
            st.counts,
        ),
        None => {
            // No state (a checkpoint of an older basic): from the epoch's start, passing over
            // the windows before.
            let mut input = Input::new(plan, epoch, s, (0, 0), reports);
            for _ in 0..first_window * w {
                input.next()?;
            }
            input.counts = Counts::default();
            (input, Counts::default())
        }
    };
    let mut start = input.position()?;
    for win in first_window.. {
        if win * w >= plan.per_stream {
            break;
        }
        let len = (plan.per_stream - win * w).min(w) as usize;
        input.counts = Counts::default();
        let mut samples = Vec::with_capacity(len);
        for _ in 0..len {
            samples.push(Some(input.next()?.sample));
        }
        let last = win * w + len as u64 == plan.per_stream;
        let end = if last { (0, 0) } else { input.position()? };
        let own = input.counts;
        // A window begun before a resume was counted in the state already.
        let resumed_mid = win == first_window && !emitted.is_multiple_of(w) && state.is_some();
        let before = if resumed_mid {
            running.sub(own)
        } else {
            running
        };
        let after_window = before.add(own);
        let from = if win == first_window {
            (emitted % w) as usize
        } else {
            0
        };
        let order = plan.window_order(epoch, s, win, len);
        for (k, &i) in order.iter().enumerate().skip(from) {
            let at = if k + 1 < len { start } else { end };
            let e = Emitted {
                sample: samples[i].take().unwrap_or_else(|| samples_missing(i)),
                after: StreamState {
                    shard: at.0,
                    skip: at.1,
                    counts: after_window,
                },
                epoch_end: last && k + 1 == len,
            };
            if tx.send(Ok(e)).is_err() {
                return Ok(None);
            }
        }
        running = after_window;
        start = end;
    }
    Ok(Some(running))
}

/// A permutation names each index once; this is never reached.
fn samples_missing(i: usize) -> Sample {
    Sample {
        key: format!("<window slot {i} used twice>"),
        image: Arc::new(Vec::new()),
        caption: String::new(),
        label: None,
    }
}

/// The default number of streams: a divisor of the batch and multiple of the processes, up to 8
/// (or the processes), at most the shards; the largest that also divides the shard count (every
/// stream then gets as many shards, and none is padded by re-reading), else the largest.
pub fn default_streams(shards: usize, batch: usize, processes: usize) -> usize {
    let p = processes.max(1);
    let fits: Vec<usize> = (1..=8usize.max(p))
        .filter(|&s| s.is_multiple_of(p) && batch.is_multiple_of(s) && s <= shards.max(1))
        .collect();
    fits.iter()
        .rev()
        .find(|&&s| shards.is_multiple_of(s))
        .or(fits.last())
        .copied()
        .unwrap_or(p)
}

/// The states of several processes' streams merged (each process holds its own streams').
pub fn merge(parts: &[BTreeMap<usize, StreamState>]) -> BTreeMap<usize, StreamState> {
    parts.iter().flat_map(|m| m.clone()).collect()
}

/// Every usable sample of `d`, shard by shard in order, to `f` until it returns `false`
/// (evaluation: nothing but the current sample is held). Samples without an image or caption
/// are skipped and counted; a damaged shard is an error naming it and the byte, or, with
/// `skip_bad`, counted and left.
pub fn for_each_sample(
    d: &Dataset,
    skip_bad: bool,
    f: &mut dyn FnMut(Sample) -> Result<bool>,
) -> Result<Counts> {
    let mut counts = Counts::default();
    for shard in &d.shards {
        let mut items = open_items(shard)?;
        loop {
            match items.next_item() {
                Ok(Some(Item::Sample(s))) => {
                    if !f(s)? {
                        return Ok(counts);
                    }
                }
                Ok(Some(Item::Skipped(_))) => counts.skipped_samples += 1,
                Ok(None) => break,
                Err(damage) if skip_bad => {
                    counts.bad_shards += 1;
                    eprintln!(
                        "skipped the rest of damaged shard `{}`: {damage}",
                        shard.name()
                    );
                    break;
                }
                Err(damage) => {
                    return Err(Error::invalid(
                        format!("shard `{}`", shard.name()),
                        format!(
                            "{damage}; pass --skip-bad to skip shards that are damaged or cannot be read (they are counted)"
                        ),
                    ))
                }
            }
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_streams_divide_the_batch_and_prefer_dividing_the_shards() {
        assert_eq!(default_streams(6, 128, 1), 2);
        assert_eq!(default_streams(41456, 32768, 1), 8);
        assert_eq!(default_streams(7, 128, 1), 1);
        assert_eq!(default_streams(12, 128, 1), 4);
        assert_eq!(default_streams(1, 16, 1), 1);
        assert_eq!(default_streams(64, 96, 16), 16);
        assert_eq!(default_streams(64, 48, 4), 8);
    }

    #[test]
    fn resampling_draws_shards_by_their_weight() {
        // Source A: 2 shards of weight 1; source B: 2 shards of weight 3.
        let d = Dataset {
            shards: (0..4).map(|i| Shard::Url(format!("s{i}.tar"))).collect(),
            weights: vec![1.0, 1.0, 3.0, 3.0],
            root: None,
        };
        let plan = Plan::new(&d, 7, 2, 100, 10, true, false);
        let mut n = [0usize; 4];
        for ordinal in 0..4000 {
            n[plan.shard_at(0, ordinal as usize % 2, &[], ordinal)] += 1;
        }
        let b_share = (n[2] + n[3]) as f64 / 4000.0;
        assert!((b_share - 0.75).abs() < 0.03, "{n:?}");
        // The same draws every time; another epoch draws others.
        let again: Vec<usize> = (0..20).map(|o| plan.shard_at(0, 0, &[], o)).collect();
        assert_eq!(
            again,
            (0..20)
                .map(|o| plan.shard_at(0, 0, &[], o))
                .collect::<Vec<_>>()
        );
        assert_ne!(
            again,
            (0..20)
                .map(|o| plan.shard_at(1, 0, &[], o))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_resumed_stream_does_not_reopen_the_shards_it_finished() {
        // 8 shards of 10 samples, read by commands that log which shard they are.
        let dir = std::env::temp_dir().join(format!("basic-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let samples: Vec<Sample> = (0..80)
            .map(|i| Sample {
                key: format!("k{i:03}"),
                image: Arc::new(vec![0xFF, 0xD8, i as u8]),
                caption: format!("c{i}"),
                label: Some(i),
            })
            .collect();
        super::super::shards::write_shards(&dir, "train", &samples, 10).unwrap();
        let log = dir.join("opened.log");
        let d = Dataset {
            shards: (0..8)
                .map(|i| {
                    Shard::Url(format!(
                        "pipe:echo {i} >> {log} && cat {dir}/train-{i:05}.tar",
                        log = log.display(),
                        dir = dir.display()
                    ))
                })
                .collect(),
            weights: vec![1.0; 8],
            root: None,
        };
        // 2 streams of 40 samples an epoch, windows of 4.
        let plan = Plan::new(&d, 3, 2, 40, 4, false, false);
        let take = |s: usize, from: Option<StreamState>, emitted: u64, n: usize| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let plan = &plan;
            std::thread::scope(|sc| {
                sc.spawn(move || run(plan, s, 0, emitted, from, &tx, &|_| {}));
                let got: Vec<Emitted> = (0..n).map(|_| rx.recv().unwrap().unwrap()).collect();
                drop(rx);
                got
            })
        };
        // Twelve samples in: each stream is 2 samples into its second shard's window.
        let first: Vec<Vec<Emitted>> = (0..2).map(|s| take(s, None, 0, 16)).collect();
        std::fs::remove_file(&log).unwrap();
        for (s, got) in first.iter().enumerate() {
            let state = got[11].after;
            assert_eq!((state.shard, state.skip), (1, 2), "stream {s}");
            let resumed = take(s, Some(state), 12, 4);
            let keys: Vec<&str> = resumed.iter().map(|e| e.sample.key.as_str()).collect();
            let want: Vec<&str> = first[s][12..16]
                .iter()
                .map(|e| e.sample.key.as_str())
                .collect();
            assert_eq!(keys, want, "stream {s} resumed");
        }
        let opened = std::fs::read_to_string(&log).unwrap();
        for s in 0..2 {
            let finished = plan.stream_shards(0, s)[0].to_string();
            assert!(
                !opened.lines().any(|l| l == finished),
                "stream {s} reopened shard {finished}: {opened}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
