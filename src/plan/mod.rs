//! `basic plan`: what to choose for a model on a target so that the step fits each device's HBM.
//!
//! The space: micro-batches, remat policy, mesh shape (data × model over the target's devices),
//! partitioning preset, scanned layers and donation. Compiling every point would take hours, so
//! the search leans on two monotonicities of per-device memory and on a cache:
//! - at a fixed layout and remat policy, memory falls as the number of micro-batches grows (a
//!   smaller micro-batch holds fewer activations), so the fewest micro-batches that fit is found by
//!   bisection over the candidates;
//! - at a fixed layout, a stronger remat policy never needs more memory, so policies are tried from
//!   the weakest (least recomputation) and the first that fits at the most micro-batches is the
//!   one bisected;
//! - every compile's figures are kept on disk under the hash of the program text, the target and
//!   the plugin version, so re-planning recompiles nothing.
//!
//! Scanned layers and donation are then tried on the best point only (each one compile), and kept
//! when the point ranks better with them (faster by the estimate, or as fast and smaller).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::executable::sha256_hex;
use crate::ir::RematPolicy;
use crate::model::ModelConfig;
use crate::partition::Mesh;
use crate::runtime::{MemoryStats, Partitioner, Topology};
use crate::target::Target;
use crate::train::{LayoutChoices, StepChoices, StepSetup};

/// The share of HBM a plan leaves free by default (runtime buffers, fragmentation, the
/// allocator's own reserve).
pub const DEFAULT_HEADROOM: f64 = 0.10;

/// One point of the space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub batch: i64,
    pub microbatches: i64,
    pub remat: RematPolicy,
    pub mesh: String,
    pub partitioning: String,
    pub scan_layers: bool,
    pub donate: bool,
}

impl Choice {
    /// The flags that give this choice, for `basic compile` and `basic train`.
    pub fn flags(&self) -> String {
        let mut f = format!(
            "--batch {} --microbatches {} --remat {} --mesh {} --partitioning {}",
            self.batch, self.microbatches, self.remat, self.mesh, self.partitioning
        );
        if self.scan_layers {
            f.push_str(" --scan-layers");
        }
        if self.donate {
            f.push_str(" --donate");
        }
        f
    }
}

/// A compiled point and its figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tried {
    #[serde(flatten)]
    pub choice: Choice,
    /// Per device, from the target's compiler; absent when the point could not be compiled.
    pub peak_bytes: Option<i64>,
    pub argument_bytes: Option<i64>,
    pub temp_bytes: Option<i64>,
    pub fits: bool,
    /// Analytic FLOPs of the step (recomputation included).
    pub flops: f64,
    pub step_time_lower_bound_seconds: f64,
    /// The step's estimated time ([`StepCost::seconds`]), what the ranking uses.
    pub estimated_seconds: f64,
    /// How `estimated_seconds` was made.
    pub estimate_basis: String,
    pub compile_seconds: f64,
    /// Figures from the on-disk cache: no compile ran.
    pub cached: bool,
    /// Why the point was not compiled or failed to compile.
    pub error: Option<String>,
}

/// The result of a plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub model: String,
    pub target: String,
    pub budget_bytes: i64,
    pub hbm_bytes: i64,
    pub best: Option<Tried>,
    /// Without `--batch`: the largest batch whose estimated throughput (examples per second)
    /// is within 10% of the best throughput of the batches planned (the largest and its halves).
    pub fast: Option<Tried>,
    /// The points that fit, best first: by estimated step time, then by recomputation (weaker
    /// remat first), then by fewer micro-batches.
    pub fits: Vec<Tried>,
    /// Every point looked at, in the order it was.
    pub tried: Vec<Tried>,
    /// Points in the space searched.
    pub space: usize,
    /// Compiles that ran (not served by the cache).
    pub compiles: usize,
    pub seconds: f64,
}

/// What the planner is asked.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    pub config: ModelConfig,
    pub target: Target,
    /// The global batch; `None` asks for the largest that fits.
    pub batch: Option<i64>,
    /// Bytes per device a point may use; defaults to HBM × (1 − headroom).
    pub budget: Option<i64>,
    pub cache: Option<PathBuf>,
    pub partitioner: Partitioner,
    /// Search only these meshes (`data=4`, `data=2,model=2`) instead of every factorisation.
    pub meshes: Vec<String>,
    /// Search only these partitioning presets or files instead of those that suit each mesh.
    pub partitionings: Vec<String>,
}

/// The default cache folder: `$XDG_CACHE_HOME/basic/plan`, else `~/.cache/basic/plan`.
pub fn default_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("basic").join("plan"))
}

/// Cached figures of one program on one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheEntry {
    target: String,
    plugin: String,
    memory: MemoryStats,
    compile_seconds: f64,
    /// The compiler refused the program as too large (`memory.peak_bytes` is then what it said
    /// it needs: a lower bound).
    #[serde(default)]
    refused: Option<String>,
    /// The compiler's bytes accessed per device (libtpu reports it).
    #[serde(default)]
    bytes_accessed: Option<f64>,
}

/// One point's figures.
struct Figures {
    memory: MemoryStats,
    flops: f64,
    /// Devices the program runs on (the mesh's size).
    devices: usize,
    seconds: f64,
    cached: bool,
    refused: Option<String>,
    bytes_accessed: Option<f64>,
    /// Bytes of the weights one device reads in the compute dtype.
    weight_bytes: f64,
}

impl Figures {
    fn cost(&self, microbatches: i64) -> StepCost {
        StepCost {
            flops: self.flops,
            devices: self.devices,
            microbatches,
            compiler_bytes: self.bytes_accessed,
            once_bytes: (self.memory.argument_bytes + self.memory.output_bytes) as f64,
            weight_bytes: self.weight_bytes,
        }
    }

    fn fits_in(&self, budget: i64) -> bool {
        crate::train::aot::fits_in(&self.memory, self.refused.as_deref(), budget)
    }
}

struct Planner<'a> {
    req: &'a PlanRequest,
    topology: Topology,
    plugin: String,
    budget: i64,
    tried: Vec<Tried>,
    compiles: usize,
    progress: &'a mut dyn FnMut(&Tried, usize),
}

impl Planner<'_> {
    /// The step a point describes, exactly as `basic compile` would set it up from its flags.
    fn setup(&self, choice: &Choice) -> Result<StepSetup> {
        let mut base = self.req.config.clone();
        base.scan_layers = choice.scan_layers;
        let step = StepChoices {
            batch: Some(choice.batch),
            microbatches: Some(choice.microbatches),
            remat: Some(choice.remat.clone()),
            ..Default::default()
        };
        let layout = LayoutChoices {
            mesh: Some(choice.mesh.clone()),
            partitioning: Some(choice.partitioning.clone()),
            partitioner: self.req.partitioner,
        };
        StepSetup::new(&base, &step, &layout, choice.donate)
    }

    fn cache_path(&self, text: &str) -> Option<PathBuf> {
        let dir = self.req.cache.as_ref()?;
        let key = sha256_hex(
            format!(
                "{}\n{}\n{}",
                self.req.target.name(),
                self.plugin,
                sha256_hex(text.as_bytes())
            )
            .as_bytes(),
        );
        Some(dir.join(format!("{key}.json")))
    }

    /// Compiles one point (or reads its figures from the cache) and records it.
    fn evaluate(&mut self, choice: &Choice) -> Tried {
        if let Some(t) = self.tried.iter().find(|t| &t.choice == choice) {
            return t.clone();
        }
        let mut t = Tried {
            choice: choice.clone(),
            peak_bytes: None,
            argument_bytes: None,
            temp_bytes: None,
            fits: false,
            flops: 0.0,
            step_time_lower_bound_seconds: f64::INFINITY,
            estimated_seconds: f64::INFINITY,
            estimate_basis: String::new(),
            compile_seconds: 0.0,
            cached: false,
            error: None,
        };
        match self.figures(choice) {
            Ok(f) => {
                t.peak_bytes = Some(f.memory.peak_bytes);
                t.argument_bytes = Some(f.memory.argument_bytes);
                t.temp_bytes = Some(f.memory.temp_bytes);
                t.fits = f.fits_in(self.budget);
                t.flops = f.flops;
                t.step_time_lower_bound_seconds =
                    self.req.target.step_time_bound(f.flops, f.devices);
                let spec = &self.req.target.spec;
                let (secs, basis) = f
                    .cost(choice.microbatches)
                    .seconds(spec.peak_bf16_flops, spec.hbm_bandwidth);
                t.estimated_seconds = secs;
                t.estimate_basis = basis.to_string();
                t.compile_seconds = f.seconds;
                t.cached = f.cached;
                t.error = f.refused;
            }
            Err(e) => t.error = Some(e.to_string()),
        }
        self.tried.push(t.clone());
        (self.progress)(&t, self.compiles);
        t
    }

    fn figures(&mut self, choice: &Choice) -> Result<Figures> {
        let setup = self.setup(choice)?;
        let sp = setup.build()?;
        let flops = crate::ops::flops(&sp.graph);
        let devices = setup.devices();
        let model_axis = setup.layout.mesh.axis_size("model").unwrap_or(1).max(1);
        let weight_bytes = sp.param_count() as f64
            * setup.options.compute_dtype.size_in_bytes() as f64
            / model_axis as f64;
        let cache = self.cache_path(&sp.text);
        if let Some(p) = &cache {
            if let Ok(text) = std::fs::read_to_string(p) {
                if let Ok(e) = serde_json::from_str::<CacheEntry>(&text) {
                    return Ok(Figures {
                        memory: e.memory,
                        flops,
                        devices,
                        seconds: e.compile_seconds,
                        cached: true,
                        refused: e.refused,
                        bytes_accessed: e.bytes_accessed,
                        weight_bytes,
                    });
                }
            }
        }
        let m = sp.measure_on_target(&self.req.target, &self.topology, &setup.layout)?;
        let bytes_accessed = m
            .compiled
            .as_ref()
            .and_then(|c| c.cost_analysis().ok())
            .and_then(|c| c.bytes_accessed)
            .filter(|b| b.is_finite() && *b > 0.0);
        let (memory, refused, seconds) = (m.memory, m.refused, m.seconds);
        self.compiles += 1;
        if let Some(p) = &cache {
            let entry = CacheEntry {
                target: self.req.target.name(),
                plugin: self.plugin.clone(),
                memory,
                compile_seconds: seconds,
                refused: refused.clone(),
                bytes_accessed,
            };
            if let Ok(text) = serde_json::to_string_pretty(&entry) {
                // A cache that cannot be written only costs a recompile next time.
                let _ = crate::fs::write_atomic(p, text.as_bytes());
            }
        }
        Ok(Figures {
            memory,
            flops,
            devices,
            seconds,
            cached: false,
            refused,
            bytes_accessed,
            weight_bytes,
        })
    }

    /// The layouts of the space: each data × model factorisation of the target's devices with the
    /// presets that use exactly those axes.
    fn layouts(&self) -> Vec<(String, String)> {
        let d = self.topology.devices().len() as i64;
        let mut out: Vec<(String, String)> = Vec::new();
        if !self.req.meshes.is_empty() || !self.req.partitionings.is_empty() {
            let meshes = if self.req.meshes.is_empty() {
                self.layouts_all(d).into_iter().map(|(m, _)| m).collect()
            } else {
                self.req.meshes.clone()
            };
            for m in meshes {
                let model = Mesh::parse(&m)
                    .ok()
                    .and_then(|x| x.axis_size("model"))
                    .unwrap_or(1);
                let presets: Vec<String> = if self.req.partitionings.is_empty() {
                    if model == 1 {
                        vec!["data_parallel".into(), "fsdp".into()]
                    } else {
                        vec!["data_model".into()]
                    }
                } else {
                    self.req.partitionings.clone()
                };
                for p in presets {
                    if !out.contains(&(m.clone(), p.clone())) {
                        out.push((m.clone(), p));
                    }
                }
            }
            return out;
        }
        self.layouts_all(d)
    }

    fn layouts_all(&self, d: i64) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut model = 1;
        while model <= d && model <= 16 {
            if d % model == 0 {
                let data = d / model;
                if model == 1 {
                    out.push((format!("data={data}"), "data_parallel".to_string()));
                    out.push((format!("data={data}"), "fsdp".to_string()));
                } else {
                    out.push((
                        format!("data={data},model={model}"),
                        "data_model".to_string(),
                    ));
                }
            }
            model *= 2;
        }
        out
    }

    /// Micro-batch counts for `batch` on `mesh`: powers of two whose micro-batch still splits over
    /// the data axis, fewest first.
    fn microbatch_candidates(batch: i64, mesh: &str) -> Vec<i64> {
        let data = Mesh::parse(mesh)
            .ok()
            .and_then(|m| m.axis_size("data"))
            .unwrap_or(1);
        let mut out = Vec::new();
        let mut m = 1;
        while m <= batch {
            if batch % m == 0 && (batch / m) % data == 0 {
                out.push(m);
            }
            m *= 2;
        }
        // One example per device in each micro-batch: the least memory for this batch, also when
        // it is not a power of two.
        if batch % data == 0 && !out.contains(&(batch / data)) {
            out.push(batch / data);
            out.sort_unstable();
        }
        out
    }

    /// For one layout: the weakest remat that fits at the most micro-batches, then the fewest
    /// micro-batches that fit under it (bisection). Returns the fitting point found, if any.
    fn search_layout(&mut self, batch: i64, mesh: &str, preset: &str) -> Option<Tried> {
        let ms = Self::microbatch_candidates(batch, mesh);
        let &most = ms.last()?;
        let base = |remat: &RematPolicy, m: i64, scan: bool| Choice {
            batch,
            microbatches: m,
            remat: remat.clone(),
            mesh: mesh.to_string(),
            partitioning: preset.to_string(),
            scan_layers: scan,
            donate: false,
        };
        let scan = self.req.config.scan_layers || can_scan(&self.req.config);
        for remat in &RematPolicy::SEARCHED {
            let at_most = self.evaluate(&base(remat, most, scan));
            // No figures: the layout itself is invalid (a dimension that does not divide), and no
            // remat helps.
            at_most.peak_bytes?;
            if !at_most.fits {
                continue;
            }
            // Bisect: ms[hi] fits; find the smallest index that fits.
            let (mut lo, mut hi) = (0usize, ms.len() - 1);
            let mut best = at_most;
            while lo < hi {
                let mid = (lo + hi) / 2;
                let t = self.evaluate(&base(remat, ms[mid], scan));
                if t.fits {
                    hi = mid;
                    best = t;
                } else {
                    lo = mid + 1;
                }
            }
            return Some(best);
        }
        None
    }

    fn plan_batch(&mut self, batch: i64) -> Option<Tried> {
        let mut found = Vec::new();
        for (mesh, preset) in self.layouts() {
            if let Some(t) = self.search_layout(batch, &mesh, &preset) {
                found.push(t);
            }
        }
        found.sort_by(rank);
        let best = found.into_iter().next()?;
        // Scanned layers and donation, on the best point only.
        let mut best = best;
        for toggle in [Toggle::Scan, Toggle::Donate] {
            let mut c = best.choice.clone();
            match toggle {
                Toggle::Scan => {
                    if !can_scan(&self.req.config) {
                        continue;
                    }
                    c.scan_layers = !c.scan_layers;
                }
                Toggle::Donate => c.donate = !c.donate,
            }
            // Kept when it ranks better: faster by the estimate, or as fast and smaller.
            let t = self.evaluate(&c);
            if t.fits && rank(&t, &best) == std::cmp::Ordering::Less {
                best = t;
            }
        }
        Some(best)
    }

    fn space(&self, batches: &[i64]) -> usize {
        let scan = if can_scan(&self.req.config) { 2 } else { 1 };
        batches
            .iter()
            .map(|&b| {
                self.layouts()
                    .iter()
                    .map(|(mesh, _)| Self::microbatch_candidates(b, mesh).len())
                    .sum::<usize>()
                    * RematPolicy::SEARCHED.len()
                    * scan
                    * 2
            })
            .sum()
    }
}

#[derive(Clone, Copy)]
enum Toggle {
    Scan,
    Donate,
}

/// Whether the model's towers can run as scanned layers (a BERT text tower cannot).
fn can_scan(c: &ModelConfig) -> bool {
    let mut s = c.clone();
    s.scan_layers = true;
    s.validate(&c.name).is_ok()
}

/// What a step's time is estimated from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCost {
    /// Analytic FLOPs of the whole step (every micro-batch, recomputation included), all devices.
    pub flops: f64,
    pub devices: usize,
    pub microbatches: i64,
    /// Bytes one device's program reads and writes, by the compiler's cost analysis, which
    /// counts a loop's body once: the step's work outside the micro-batch loop plus one
    /// micro-batch. libtpu reports it; the CPU and CUDA plugins do not.
    pub compiler_bytes: Option<f64>,
    /// Bytes moved once a step whatever the micro-batches: every argument read and every output
    /// written (parameters, optimizer state, the batch), per device.
    pub once_bytes: f64,
    /// Bytes of the weights one device reads, in the compute dtype.
    pub weight_bytes: f64,
}

impl StepCost {
    /// The estimated seconds of one step at `peak_flops` and `bandwidth` (bytes/s) per device,
    /// and how it was made. Each micro-batch takes the longer of its compute (its share of the
    /// FLOPs at peak) and its memory traffic at HBM bandwidth: the compiler's bytes accessed
    /// less what moves once a step, when the compiler reports them; else the weights read three
    /// times (the forward pass and the backward pass's two products). What moves once a step
    /// is added. Small micro-batches re-read the weights for little compute, which this sees
    /// and the FLOP bound alone does not; overlap of compute and traffic across micro-batches,
    /// collectives and the host are not modelled.
    pub fn seconds(&self, peak_flops: f64, bandwidth: f64) -> (f64, &'static str) {
        let m = self.microbatches.max(1) as f64;
        let compute = self.flops / (self.devices.max(1) as f64 * peak_flops) / m;
        let (per_micro, basis) = match self.compiler_bytes {
            Some(b) => (
                (b - self.once_bytes).max(0.0),
                "per micro-batch the longer of analytic FLOPs at peak and the compiler's bytes accessed at HBM bandwidth, plus arguments and outputs once",
            ),
            None => (
                3.0 * self.weight_bytes,
                "per micro-batch the longer of analytic FLOPs at peak and three reads of the weights at HBM bandwidth, plus arguments and outputs once",
            ),
        };
        (
            m * compute.max(per_micro / bandwidth) + self.once_bytes / bandwidth,
            basis,
        )
    }
}

/// Best first: lower estimated step time (estimates within 0.1% of each other count as equal:
/// scanned and unrolled towers differ in a few index computations), then less recomputation,
/// then fewer micro-batches, then lower peak.
fn rank(a: &Tried, b: &Tried) -> std::cmp::Ordering {
    let (x, y) = (a.estimated_seconds, b.estimated_seconds);
    let bound = if (x - y).abs() <= 1e-3 * x.abs().max(y.abs()) {
        std::cmp::Ordering::Equal
    } else {
        x.total_cmp(&y)
    };
    bound
        .then(a.choice.remat.cmp(&b.choice.remat))
        .then(a.choice.microbatches.cmp(&b.choice.microbatches))
        .then(a.peak_bytes.cmp(&b.peak_bytes))
}

/// Runs a plan. `progress` sees every point as it is evaluated, with the compiles so far.
pub fn plan(req: &PlanRequest, progress: &mut dyn FnMut(&Tried, usize)) -> Result<Plan> {
    let t0 = Instant::now();
    let topology = req.target.topology()?;
    let plugin = crate::target::plugin_identity(topology.plugin(), topology.platform_version());
    let hbm = req.target.spec.hbm_bytes;
    let budget = req
        .budget
        .unwrap_or((hbm as f64 * (1.0 - DEFAULT_HEADROOM)) as i64);
    if budget <= 0 {
        return Err(Error::invalid(
            format!("memory budget {budget} bytes"),
            "give a positive --budget",
        ));
    }
    if let Some(dir) = &req.cache {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut p = Planner {
        req,
        topology,
        plugin,
        budget,
        tried: Vec::new(),
        compiles: 0,
        progress,
    };
    let (best, mut batches) = match req.batch {
        Some(b) => (p.plan_batch(b), vec![b]),
        None => largest_batch(&mut p),
    };
    let fast = match req.batch {
        Some(_) => None,
        None => within_ten_percent(&mut p, best.as_ref(), &mut batches),
    };
    let mut fits: Vec<Tried> = p.tried.iter().filter(|t| t.fits).cloned().collect();
    fits.sort_by(rank);
    // The best is the first of the ranking among the points of the planned batch.
    let best = best.and_then(|b| {
        fits.iter()
            .find(|t| t.choice.batch == b.choice.batch)
            .cloned()
    });
    Ok(Plan {
        model: req.config.name.clone(),
        target: req.target.name(),
        budget_bytes: budget,
        hbm_bytes: hbm,
        best,
        fast,
        fits,
        space: p.space(&batches),
        compiles: p.compiles,
        tried: p.tried,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The largest global batch that fits: with the least memory per batch (the strongest remat and
/// one example per device in each micro-batch), double the batch from the preset's until it stops
/// fitting (or halve it until it fits), bisect between the last two, then plan that batch in full.
fn largest_batch(p: &mut Planner<'_>) -> (Option<Tried>, Vec<i64>) {
    let layouts = p.layouts();
    let Some((mesh, preset)) = layouts.first().cloned() else {
        return (None, vec![]);
    };
    let data = Mesh::parse(&mesh)
        .ok()
        .and_then(|m| m.axis_size("data"))
        .unwrap_or(1);
    let scan = p.req.config.scan_layers || can_scan(&p.req.config);
    let probe = |p: &mut Planner<'_>, b: i64| {
        p.evaluate(&Choice {
            batch: b,
            microbatches: b / data,
            remat: RematPolicy::NothingSaveable,
            mesh: mesh.clone(),
            partitioning: preset.clone(),
            scan_layers: scan,
            donate: false,
        })
        .fits
    };
    // From the preset's batch (a multiple of the data axis): doubling while it fits, or halving
    // down to one example per device while it does not; then bisection between the last batch
    // that fits and the first that does not, on multiples of the data axis.
    let mut b = (p.req.config.train.batch / data).max(1) * data;
    let mut batches = vec![b];
    let (mut good, mut bad) = (0, 0);
    if probe(p, b) {
        good = b;
        while b <= 1 << 24 {
            b *= 2;
            batches.push(b);
            if !probe(p, b) {
                bad = b;
                break;
            }
            good = b;
        }
    } else {
        bad = b;
        while b > data {
            b = (b / 2 / data).max(1) * data;
            batches.push(b);
            if probe(p, b) {
                good = b;
                break;
            }
            bad = b;
        }
    }
    if good == 0 {
        return (None, batches);
    }
    if bad == 0 {
        bad = good * 2;
    }
    while bad - good > data {
        let mid = ((good + bad) / 2 / data) * data;
        if mid <= good || mid >= bad {
            break;
        }
        if probe(p, mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    let best = p.plan_batch(good);
    batches.push(good);
    (best, batches)
}

/// Plans the halves of the largest batch (down to the preset's batch, at most six halvings) and
/// returns the largest batch whose estimated throughput (examples per second) is within 10% of
/// the best among them: past it, a larger batch costs more time per example.
fn within_ten_percent(
    p: &mut Planner<'_>,
    largest: Option<&Tried>,
    batches: &mut Vec<i64>,
) -> Option<Tried> {
    let largest = largest?.clone();
    let data = Mesh::parse(&largest.choice.mesh)
        .ok()
        .and_then(|m| m.axis_size("data"))
        .unwrap_or(1);
    let floor = p.req.config.train.batch.max(data);
    let mut planned = vec![largest.clone()];
    let mut b = largest.choice.batch;
    for _ in 0..6 {
        let half = (b / 2 / data) * data;
        if half < floor || half == b {
            break;
        }
        b = half;
        batches.push(b);
        planned.extend(p.plan_batch(b));
    }
    // Each planned batch at its best-ranked fit (the ranking of every point looked at).
    let planned: Vec<Tried> = planned
        .iter()
        .filter_map(|b| {
            p.tried
                .iter()
                .filter(|t| t.fits && t.choice.batch == b.choice.batch)
                .min_by(|x, y| rank(x, y))
                .cloned()
        })
        .collect();
    let rate = |t: &Tried| t.choice.batch as f64 / t.estimated_seconds;
    let top = planned.iter().map(rate).fold(0.0, f64::max);
    planned
        .into_iter()
        .filter(|t| rate(t) >= 0.9 * top)
        .max_by_key(|t| t.choice.batch)
}

/// Reads a `--budget` value: bytes, or with a unit (`15GiB`, `15.5GB`, `800MiB`).
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| {
        Error::invalid(
            format!("byte count `{s}`"),
            "give bytes, or a number with KB, MB, GB, KiB, MiB or GiB",
        )
    })?;
    let scale: BTreeMap<&str, f64> = [
        ("", 1.0),
        ("b", 1.0),
        ("kb", 1e3),
        ("mb", 1e6),
        ("gb", 1e9),
        ("tb", 1e12),
        ("kib", 1024.0),
        ("mib", 1024.0 * 1024.0),
        ("gib", 1024.0 * 1024.0 * 1024.0),
        ("tib", 1024f64.powi(4)),
    ]
    .into_iter()
    .collect();
    let k = scale
        .get(unit.trim().to_ascii_lowercase().as_str())
        .ok_or_else(|| {
            Error::invalid(
                format!("byte unit `{unit}` in `{s}`"),
                "use KB, MB, GB, KiB, MiB or GiB",
            )
        })?;
    Ok((v * k) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_budgets() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("2KiB").unwrap(), 2048);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert!(parse_bytes("12 parsecs").is_err());
    }

    /// Hand-worked: 8 devices at 1e15 FLOP/s and 1e12 B/s; 8e15 FLOPs a step (1 s of compute
    /// over all devices); 2e9 bytes moved once; weights of 1e9 bytes a device.
    #[test]
    fn the_estimate_sees_the_weights_each_micro_batch_reads() {
        let cost = |m: i64, compiler_bytes: Option<f64>| StepCost {
            flops: 8e15,
            devices: 8,
            microbatches: m,
            compiler_bytes,
            once_bytes: 2e9,
            weight_bytes: 1e9,
        };
        let secs = |c: StepCost| c.seconds(1e15, 1e12).0;
        // One micro-batch: compute 1 s > 3e9 B / 1e12 B/s = 3 ms; plus 2 ms once.
        assert!((secs(cost(1, None)) - 1.002).abs() < 1e-9);
        // 1000 micro-batches: each 1 ms of compute but 3 ms of weight reads.
        assert!((secs(cost(1000, None)) - (1000.0 * 3e-3 + 2e-3)).abs() < 1e-9);
        // With the compiler's figure: 7e9 bytes less the 2e9 moved once = 5 ms a micro-batch.
        assert!((secs(cost(1000, Some(7e9))) - (1000.0 * 5e-3 + 2e-3)).abs() < 1e-9);
        assert!(cost(1, Some(7e9))
            .seconds(1e15, 1e12)
            .1
            .contains("compiler"));
        // The FLOP bound is the same for both; the estimate is not.
        assert!(secs(cost(1000, None)) > 2.9 * secs(cost(1, None)));
    }

    #[test]
    fn the_ranking_follows_the_estimate_then_recomputation() {
        let tried = |m: i64, remat: RematPolicy, secs: f64| Tried {
            choice: Choice {
                batch: 64,
                microbatches: m,
                remat,
                mesh: "data=4".into(),
                partitioning: "fsdp".into(),
                scan_layers: false,
                donate: false,
            },
            peak_bytes: Some(1),
            argument_bytes: Some(1),
            temp_bytes: Some(1),
            fits: true,
            flops: 1.0,
            step_time_lower_bound_seconds: 1.0,
            estimated_seconds: secs,
            estimate_basis: String::new(),
            compile_seconds: 0.0,
            cached: false,
            error: None,
        };
        let mut v = [
            tried(16, RematPolicy::None, 3.0),
            tried(2, RematPolicy::NothingSaveable, 1.0),
            tried(4, RematPolicy::None, 1.0005),
        ];
        v.sort_by(rank);
        // 1.0 and 1.0005 tie; the weaker remat goes first. The slow point is last although its
        // FLOP bound is the same.
        assert_eq!(v[0].choice.microbatches, 4);
        assert_eq!(v[1].choice.microbatches, 2);
        assert_eq!(v[2].choice.microbatches, 16);
    }

    #[test]
    fn microbatch_candidates_split_over_the_data_axis() {
        assert_eq!(
            Planner::microbatch_candidates(64, "data=4"),
            vec![1, 2, 4, 8, 16]
        );
        assert_eq!(
            Planner::microbatch_candidates(48, "data=2,model=2"),
            vec![1, 2, 4, 8, 24]
        );
    }
}
