//! BASIC's step driven from the host, for batches whose images do not fit on the devices.
//!
//! The one-program step ([`super::step`]) takes the whole global batch's images as an argument.
//! At a batch of millions they cannot all be resident, so the streamed step splits the same
//! computation into four programs and runs the loops over micro-batches on the host:
//!
//! 1. `embed` (once per micro-batch): the towers without activations; the micro-batch's
//!    embeddings are written into the step's `[N/M, M, E]` embedding buffers on the devices;
//! 2. `loss` (once): the contrastive loss over the global batch (tiled when `loss_block > 0`),
//!    its gradient with respect to every embedding and to the loss's own parameters, and the
//!    zeroed gradient accumulators of the towers;
//! 3. `backprop` (once per micro-batch): the towers again, with activations, and the vector–
//!    Jacobian product of the micro-batch's slice of the embedding gradient, added to the
//!    accumulators;
//! 4. `update` (once): the optimizer.
//!
//! Only one micro-batch's images are on the devices at a time; the host uploads them for pass 1
//! and again for pass 3 (a loader replays the step's samples instead of holding them). Row `j` of
//! micro-batch `k` is row `j·M + k` of the one-program step's batch, and micro-batch `k` draws
//! its dropout from the same key, so the two steps compute the same gradient.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::exec::{emit, Sharded, ShardedArg, ShardedProgram};
use crate::ir::Graph;
use crate::model::dual;
use crate::model::names::{io, Modality};
use crate::model::noise::Noise;
use crate::model::{ModelConfig, ParamSpec, Params};
use crate::partition::PartitionSpec;
use crate::runtime::{Client, HostArray, MemoryStats};
use crate::trace::{Builder, Tensor};

use super::optim;
use super::sharding::Layout;
use super::step::{
    batch_shapes, embed_pair, has_rng, loss_grads, noise, trainable, update_outputs, StepOptions,
};

/// The four graphs of a streamed step and the specs they were built from.
pub struct StreamedGraphs {
    pub embed: Graph,
    pub loss: Graph,
    pub backprop: Graph,
    pub update: Graph,
    /// Every parameter, then the optimizer state (the update's first arguments and results).
    pub params: Vec<ParamSpec>,
    pub state: Vec<ParamSpec>,
}

/// The towers' parameters (the embed and backprop programs' first arguments).
fn tower_specs(specs: &[ParamSpec]) -> Vec<ParamSpec> {
    specs
        .iter()
        .filter(|s| Modality::of_param(&s.name).is_some())
        .cloned()
        .collect()
}

/// The loss's own parameters (temperature, bias): the loss program's first arguments.
fn head_specs(specs: &[ParamSpec]) -> Vec<ParamSpec> {
    specs
        .iter()
        .filter(|s| Modality::of_param(&s.name).is_none())
        .cloned()
        .collect()
}

/// Rows of a micro-batch.
fn rows(o: &StepOptions) -> i64 {
    o.batch / o.microbatches
}

/// A micro-batch's inputs: the towers' parameters, the key (when the step is random), images,
/// tokens and the micro-batch's index.
struct MicroInputs {
    p: Params,
    rng: Option<Tensor>,
    images: Tensor,
    tokens: Tensor,
    micro: Tensor,
}

impl MicroInputs {
    fn declare(
        b: &Builder,
        towers: &[ParamSpec],
        c: &ModelConfig,
        o: &StepOptions,
    ) -> Result<Self> {
        let p = Params::declare(b, towers, o.param_dtype)?;
        let rng = if has_rng(c) {
            Some(b.parameter(io::RNG, DType::U64, &[2])?)
        } else {
            None
        };
        let (is, ts) = batch_shapes(c, rows(o));
        let images = b.parameter(io::IMAGES, o.image_dtype(), &is)?.constrain(&[
            Some("batch"),
            None,
            None,
            None,
        ])?;
        let tokens = b
            .parameter(io::TOKENS, DType::S32, &ts)?
            .constrain(&[Some("batch"), None])?;
        let micro = b.parameter(io::MICRO, DType::S32, &[])?;
        Ok(MicroInputs {
            p,
            rng,
            images,
            tokens,
            micro,
        })
    }

    /// The micro-batch's noise: the one-program step's (its single batch's with one
    /// micro-batch, else the key with the index folded in).
    fn noise(&self, c: &ModelConfig, o: &StepOptions) -> Result<Option<Noise>> {
        self.rng
            .as_ref()
            .map(|k| {
                let n = noise(k, c);
                if o.microbatches == 1 {
                    n.fold(0)
                } else {
                    n.fold_index(&self.micro)
                }
            })
            .transpose()
    }

    /// The micro-batch's image and text embeddings, `[N/M, E]` each.
    fn embed(&self, c: &ModelConfig, o: &StepOptions) -> Result<(Tensor, Tensor)> {
        let nz = self.noise(c, o)?;
        embed_pair(&self.images, &self.tokens, &self.p, c, o, nz.as_ref())
    }
}

/// A `[N/M, M, E]` buffer of the step's embeddings (or their gradients): row `j` of micro-batch
/// `k` at `[j, k]`, so that its `[N, E]` view is the batch in the one-program step's order and a
/// device's rows of it are its rows of every micro-batch.
fn buffer(b: &Builder, name: &str, c: &ModelConfig, o: &StepOptions) -> Result<Tensor> {
    b.parameter(name, o.param_dtype, &[rows(o), o.microbatches, c.embed_dim])?
        .constrain(&[Some("batch"), None, None])
}

fn zero_index(b: &Builder) -> Result<Tensor> {
    b.scalar(0.0, DType::S32)
}

/// `all` with micro-batch `micro`'s rows set to `x` (`[N/M, E]`).
fn put(all: &Tensor, x: &Tensor, micro: &Tensor) -> Result<Tensor> {
    let z = zero_index(all.builder())?;
    let s = all.shape().to_vec();
    all.dynamic_update_slice(
        &x.reshape(&[s[0], 1, s[2]])?,
        &[z.clone(), micro.clone(), z],
    )?
    .constrain(&[Some("batch"), None, None])
}

/// Micro-batch `micro`'s rows of `all`, `[N/M, E]`.
fn take(all: &Tensor, micro: &Tensor) -> Result<Tensor> {
    let z = zero_index(all.builder())?;
    let s = all.shape().to_vec();
    all.dynamic_slice(&[z.clone(), micro.clone(), z], &[s[0], 1, s[2]])?
        .reshape(&[s[0], s[2]])?
        .constrain(&[Some("batch"), None])
}

/// `(towers..., [rng], images, tokens, micro, image_embeddings, text_embeddings) →
/// (image_embeddings, text_embeddings)` with micro-batch `micro`'s rows filled in.
fn embed_graph(c: &ModelConfig, o: &StepOptions, specs: &[ParamSpec]) -> Result<Graph> {
    let b = Builder::new(&format!("{}_embed", c.name));
    let mi = MicroInputs::declare(&b, &tower_specs(specs), c, o)?;
    let img_all = buffer(&b, io::IMAGE_EMBEDDINGS, c, o)?;
    let txt_all = buffer(&b, io::TEXT_EMBEDDINGS, c, o)?;
    let (img, txt) = mi.embed(c, o)?;
    b.output(io::IMAGE_EMBEDDINGS, &put(&img_all, &img, &mi.micro)?)?;
    b.output(io::TEXT_EMBEDDINGS, &put(&txt_all, &txt, &mi.micro)?)?;
    Ok(b.finish())
}

/// `(heads..., image_embeddings, text_embeddings) → (loss, image_embedding_grads,
/// text_embedding_grads, grad/head..., grad/tower...)`: the loss over the global batch, its
/// gradients, and the towers' accumulators at zero.
fn loss_graph(c: &ModelConfig, o: &StepOptions, specs: &[ParamSpec]) -> Result<Graph> {
    let b = Builder::new(&format!("{}_loss", c.name));
    let heads = head_specs(specs);
    let p = Params::declare(&b, &heads, o.param_dtype)?;
    let (n, e) = (o.batch, c.embed_dim);
    let whole =
        |t: Tensor| -> Result<Tensor> { t.reshape(&[n, e])?.constrain(&[Some("batch"), None]) };
    let img = whole(buffer(&b, io::IMAGE_EMBEDDINGS, c, o)?)?;
    let txt = whole(buffer(&b, io::TEXT_EMBEDDINGS, c, o)?)?;
    let train = trainable(specs, o);
    let trained_heads: Vec<&ParamSpec> = train
        .iter()
        .filter(|s| Modality::of_param(&s.name).is_none())
        .collect();
    let head_params: Vec<Tensor> = trained_heads
        .iter()
        .map(|s| p.get(&s.name).cloned())
        .collect::<Result<_>>()?;
    let (loss, d_img, d_txt, head_grads) = loss_grads(&img, &txt, &head_params, &p, c, o)?;
    let split = |t: &Tensor| -> Result<Tensor> {
        t.reshape(&[rows(o), o.microbatches, e])?
            .constrain(&[Some("batch"), None, None])
    };
    b.output(io::LOSS, &loss)?;
    b.output(io::IMAGE_EMBEDDING_GRADS, &split(&d_img)?)?;
    b.output(io::TEXT_EMBEDDING_GRADS, &split(&d_txt)?)?;
    for (s, g) in trained_heads.iter().zip(&head_grads) {
        b.output(&io::grad(&s.name), g)?;
    }
    let zero = b.scalar(0.0, o.param_dtype)?;
    for s in train
        .iter()
        .filter(|s| Modality::of_param(&s.name).is_some())
    {
        b.output(&io::grad(&s.name), &zero.broadcast_to(&s.shape)?)?;
    }
    Ok(b.finish())
}

/// `(towers..., [rng], images, tokens, micro, image_embedding_grads, text_embedding_grads,
/// grad/tower...) → (grad/tower...)`: micro-batch `micro`'s share of the towers' gradients added
/// to the accumulators.
fn backprop_graph(c: &ModelConfig, o: &StepOptions, specs: &[ParamSpec]) -> Result<Graph> {
    let b = Builder::new(&format!("{}_backprop", c.name));
    let mi = MicroInputs::declare(&b, &tower_specs(specs), c, o)?;
    let d_img = take(&buffer(&b, io::IMAGE_EMBEDDING_GRADS, c, o)?, &mi.micro)?;
    let d_txt = take(&buffer(&b, io::TEXT_EMBEDDING_GRADS, c, o)?, &mi.micro)?;
    let trained: Vec<ParamSpec> = trainable(specs, o)
        .into_iter()
        .filter(|s| Modality::of_param(&s.name).is_some())
        .collect();
    let acc: Vec<Tensor> = trained
        .iter()
        .map(|s| b.parameter(&io::grad(&s.name), o.param_dtype, &s.shape))
        .collect::<Result<_>>()?;
    let wrt: Vec<Tensor> = trained
        .iter()
        .map(|s| mi.p.get(&s.name).cloned())
        .collect::<Result<_>>()?;
    let (img, txt) = mi.embed(c, o)?;
    let g = crate::autodiff::vjp(&[img, txt], &[Some(d_img), Some(d_txt)], &wrt)?;
    for ((s, a), gi) in trained.iter().zip(&acc).zip(g) {
        let sum = match gi {
            Some(gi) => a.add(&gi)?,
            None => a.clone(),
        };
        b.output(&io::grad(&s.name), &sum)?;
    }
    Ok(b.finish())
}

/// `(params..., state..., step, grad/trained...) → (params..., state..., grad_norm,
/// learning_rate, temperature)`.
fn update_graph(
    c: &ModelConfig,
    o: &StepOptions,
    specs: &[ParamSpec],
    sspecs: &[ParamSpec],
) -> Result<Graph> {
    let b = Builder::new(&format!("{}_update", c.name));
    let p = Params::declare(&b, specs, o.param_dtype)?;
    let state = Params::declare(&b, sspecs, o.param_dtype)?;
    let step = b.parameter(io::STEP, DType::S32, &[])?;
    let grads: Vec<Tensor> = trainable(specs, o)
        .iter()
        .map(|s| b.parameter(&io::grad(&s.name), o.param_dtype, &s.shape))
        .collect::<Result<_>>()?;
    update_outputs(&b, &p, &state, &step, &grads, None, c, o)?;
    Ok(b.finish())
}

/// The streamed step's graphs for `c` under options `o`.
pub fn streamed_graphs(c: &ModelConfig, o: &StepOptions) -> Result<StreamedGraphs> {
    o.check(c)?;
    let specs = dual::specs(c)?;
    let sspecs = optim::state_specs(&trainable(&specs, o), &c.train);
    Ok(StreamedGraphs {
        embed: embed_graph(c, o, &specs)?,
        loss: loss_graph(c, o, &specs)?,
        backprop: backprop_graph(c, o, &specs)?,
        update: update_graph(c, o, &specs, &sspecs)?,
        params: specs,
        state: sspecs,
    })
}

/// Which of the streamed step's programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Embed,
    Loss,
    Backprop,
    Update,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Embed, Part::Loss, Part::Backprop, Part::Update];

    pub fn name(self) -> &'static str {
        match self {
            Part::Embed => "embed",
            Part::Loss => "loss",
            Part::Backprop => "backprop",
            Part::Update => "update",
        }
    }

    /// How many times a step runs it.
    pub fn runs_per_step(self, o: &StepOptions) -> i64 {
        match self {
            Part::Embed | Part::Backprop => o.microbatches,
            Part::Loss | Part::Update => 1,
        }
    }
}

/// One emitted program of a streamed step.
pub struct PartProgram {
    pub part: Part,
    pub graph: Graph,
    pub args: Vec<PartitionSpec>,
    pub results: Vec<PartitionSpec>,
    pub donations: Vec<(usize, usize)>,
    /// The partitioned StableHLO.
    pub text: String,
}

impl PartProgram {
    fn input(&self, name: &str) -> Result<usize> {
        position(self.graph.params.iter().map(|(n, _)| n), name, self.part)
    }
    fn output(&self, name: &str) -> Result<usize> {
        position(self.graph.outputs.iter().map(|(n, _)| n), name, self.part)
    }
}

fn position<'a>(
    names: impl IntoIterator<Item = &'a String>,
    name: &str,
    part: Part,
) -> Result<usize> {
    names.into_iter().position(|n| n == name).ok_or_else(|| {
        Error::Program(format!(
            "the streamed step's {} program has no `{name}`",
            part.name()
        ))
    })
}

/// The streamed step emitted for a layout: its four programs, in [`Part::ALL`] order.
pub struct StreamedProgram {
    pub parts: Vec<PartProgram>,
    pub params: Vec<ParamSpec>,
    pub state: Vec<ParamSpec>,
}

impl StreamedProgram {
    /// Builds and emits the streamed step of `c` under `layout`. The embedding buffers and the
    /// gradient accumulators are always donated (each program hands them on); parameters and
    /// optimizer state are donated to the update when `donate`.
    pub fn build(
        c: &ModelConfig,
        o: &StepOptions,
        layout: &Layout,
        donate: bool,
    ) -> Result<StreamedProgram> {
        let mut o = o.clone();
        if o.loss_block > 0 {
            o.ring = layout.ring()?;
        }
        let g = streamed_graphs(c, &o)?;
        let mut all = g.params.clone();
        all.extend(g.state.iter().cloned());
        let np = all.len();
        let graphs = [g.embed, g.loss, g.backprop, g.update];
        let mut parts = Vec::with_capacity(4);
        for (part, graph) in Part::ALL.into_iter().zip(graphs) {
            let (args, results) = layout.specs(&graph, &all)?;
            // Each output named like an input takes its buffers (the accumulators, the
            // embeddings); the update's parameters and state only when asked.
            let donations: Vec<(usize, usize)> = graph
                .outputs
                .iter()
                .enumerate()
                .filter_map(|(r, (name, _))| {
                    let a = graph.params.iter().position(|(n, _)| n == name)?;
                    let is_state = part == Part::Update && a < np;
                    (donate || !is_state).then_some((a, r))
                })
                .collect();
            let text = emit(&graph, &layout.context(), &args, &results, &donations)?;
            parts.push(PartProgram {
                part,
                graph,
                args,
                results,
                donations,
                text,
            });
        }
        Ok(StreamedProgram {
            parts,
            params: g.params,
            state: g.state,
        })
    }

    pub fn part(&self, p: Part) -> &PartProgram {
        &self.parts[p as usize]
    }

    /// Compiles the four programs on `client` (over `devices` in mesh order, `None`: ids
    /// `0..n`).
    pub fn compile(
        self,
        client: &Client,
        layout: &Layout,
        devices: Option<Vec<i64>>,
    ) -> Result<StreamedStep> {
        let ctx = layout.context();
        let embed = self.part(Part::Embed);
        let embeddings = embed
            .graph
            .ty(embed.graph.params[embed.input(io::IMAGE_EMBEDDINGS)?].1)
            .clone();
        let mut progs = Vec::with_capacity(4);
        let mut io = Vec::with_capacity(4);
        for pp in self.parts {
            io.push(PartIo::of(&pp)?);
            progs.push(ShardedProgram::compile_assigned(
                client,
                &ctx,
                devices.clone(),
                pp.args,
                pp.results,
                pp.text,
            )?);
        }
        let np = self.params.len() + self.state.len();
        // Positions among the values of a program's leading parameter arguments.
        let leading = |p: Part| -> Vec<usize> {
            let values = &io[Part::Update as usize].inputs[..np];
            io[p as usize]
                .inputs
                .iter()
                .map_while(|n| values.iter().position(|v| v == n))
                .collect()
        };
        let (towers, heads) = (leading(Part::Embed), leading(Part::Loss));
        Ok(StreamedStep {
            progs,
            io,
            values: np,
            towers,
            heads,
            embeddings,
            spare: std::sync::Mutex::new(None),
        })
    }
}

/// Where a program's inputs sit.
struct PartIo {
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl PartIo {
    /// The program's names, checked for those the step looks up.
    fn of(pp: &PartProgram) -> Result<PartIo> {
        let (ins, outs): (&[&str], &[&str]) = match pp.part {
            Part::Embed => (
                &[io::IMAGES, io::TOKENS, io::MICRO, io::IMAGE_EMBEDDINGS],
                &[],
            ),
            Part::Backprop => (&[io::IMAGES, io::TOKENS, io::MICRO], &[]),
            Part::Loss => (&[], &[io::LOSS]),
            Part::Update => (&[io::STEP], &[]),
        };
        for name in ins {
            pp.input(name)?;
        }
        for name in outs {
            pp.output(name)?;
        }
        Ok(PartIo {
            inputs: pp.graph.params.iter().map(|(n, _)| n.clone()).collect(),
            outputs: pp.graph.outputs.iter().map(|(n, _)| n.clone()).collect(),
        })
    }
}

/// One micro-batch on the devices: its images and tokens, uploaded with
/// [`StreamedStep::upload_micro`] (or the callers' own per-process pieces through
/// [`StreamedStep::micro_program`]).
pub struct MicroBatch {
    pub images: Sharded,
    pub tokens: Sharded,
}

/// What one step reports (the streamed step's, and the trainer's of either step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamedDone {
    pub loss: f64,
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub temperature: f64,
}

/// A streamed step compiled for a client.
pub struct StreamedStep {
    progs: Vec<ShardedProgram>,
    io: Vec<PartIo>,
    /// Parameters plus optimizer state.
    values: usize,
    /// Positions among the values of the towers' parameters (the embed and backprop programs'
    /// first arguments) and of the loss's (the loss program's).
    towers: Vec<usize>,
    heads: Vec<usize>,
    /// The type of an embedding buffer, `[N/M, M, E]`.
    embeddings: crate::dtype::TensorType,
    /// Device buffers of the embeddings' shape kept from the last step, for the next pass 1.
    spare: std::sync::Mutex<Option<Vec<Sharded>>>,
}

impl StreamedStep {
    pub fn program(&self, p: Part) -> &ShardedProgram {
        &self.progs[p as usize]
    }

    /// Sets the mesh position of each addressable device on every program (a host's share of
    /// a multi-process job).
    pub fn set_positions(&mut self, positions: Vec<i64>) -> Result<()> {
        for p in &mut self.progs {
            p.set_positions(positions.clone())?;
        }
        Ok(())
    }

    /// The positions of `images` and `tokens` among the micro-batch program's arguments.
    pub fn micro_args(&self) -> Result<(usize, usize)> {
        Ok((
            self.arg_index(Part::Embed, io::IMAGES)?,
            self.arg_index(Part::Embed, io::TOKENS)?,
        ))
    }

    /// The embed program, whose `images` and `tokens` arguments a micro-batch is uploaded for
    /// (the backprop program lays them out the same).
    pub fn micro_program(&self) -> &ShardedProgram {
        self.program(Part::Embed)
    }

    fn arg_index(&self, p: Part, name: &str) -> Result<usize> {
        position(&self.io[p as usize].inputs, name, p)
    }

    fn arg_out(&self, p: Part, name: &str) -> Result<usize> {
        position(&self.io[p as usize].outputs, name, p)
    }

    /// Uploads a whole micro-batch's images (`[N/M, ...]`) from one host array.
    pub fn upload_micro(&self, images: &HostArray, tokens: &HostArray) -> Result<MicroBatch> {
        let p = self.micro_program();
        Ok(MicroBatch {
            images: p.upload(self.arg_index(Part::Embed, io::IMAGES)?, images)?,
            tokens: p.upload(self.arg_index(Part::Embed, io::TOKENS)?, tokens)?,
        })
    }

    /// Peak bytes per device of each program, in [`Part::ALL`] order.
    pub fn memory_stats(&self) -> Result<Vec<MemoryStats>> {
        self.progs
            .iter()
            .map(ShardedProgram::memory_stats)
            .collect()
    }

    /// Runs one step on parameters and state `values` (the update's first arguments, in order),
    /// at step `step` with dropout key `rng`, fetching micro-batch `k` with `micro(k)` once for
    /// pass 1 and once again for pass 3. Returns the updated values and what the step reported.
    ///
    /// `micro` runs on a thread of its own, one micro-batch ahead: micro-batch `k + 1` is read
    /// and uploaded while the devices run micro-batch `k`, so at most two micro-batches' images
    /// are on the devices at once.
    pub fn run(
        &self,
        values: Vec<Sharded>,
        step: i32,
        rng: Option<[u64; 2]>,
        mut micro: impl FnMut(usize) -> Result<MicroBatch> + Send,
    ) -> Result<(Vec<Sharded>, StreamedDone)> {
        if values.len() != self.values {
            return Err(Error::Internal(format!(
                "the streamed step takes {} parameters and state slots, not {}",
                self.values,
                values.len()
            )));
        }
        let m = self.embeddings.shape[1] as usize;
        std::thread::scope(|scope| {
            // A rendezvous: the reader hands over micro-batch k + 1 when the step takes it.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<MicroBatch>>(0);
            scope.spawn(move || {
                for k in (0..m).chain(0..m) {
                    let r = micro(k);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            let next = |k: usize| -> Result<MicroBatch> {
                rx.recv().unwrap_or_else(|_| {
                    Err(Error::Internal(format!(
                        "the micro-batch reader stopped before micro-batch {k}"
                    )))
                })
            };
            self.passes(values, step, rng, m, next)
        })
    }

    /// The step's passes, taking each micro-batch from `next` (pass 1's, then pass 3's).
    fn passes(
        &self,
        values: Vec<Sharded>,
        step: i32,
        rng: Option<[u64; 2]>,
        m: usize,
        mut micro: impl FnMut(usize) -> Result<MicroBatch>,
    ) -> Result<(Vec<Sharded>, StreamedDone)> {
        let (towers, heads) = (&self.towers, &self.heads);
        let upload = |p: Part, name: &str, a: &HostArray| -> Result<Sharded> {
            self.program(p).upload(self.arg_index(p, name)?, a)
        };
        // A micro-batch program's leading arguments: the towers, the key, micro-batch k.
        let micro_args = |p: Part, k: usize, mb: MicroBatch| -> Result<Vec<ShardedArg<'_>>> {
            let mut args: Vec<ShardedArg<'_>> = towers
                .iter()
                .map(|&i| ShardedArg::Borrowed(&values[i]))
                .collect();
            if let Some(key) = rng {
                let key = upload(p, io::RNG, &HostArray::new(&[2], &key)?)?;
                args.push(ShardedArg::Owned(key));
            }
            args.push(ShardedArg::Owned(mb.images));
            args.push(ShardedArg::Owned(mb.tokens));
            let index = upload(p, io::MICRO, &HostArray::scalar(k as i32))?;
            args.push(ShardedArg::Owned(index));
            Ok(args)
        };
        // Pass 1: every micro-batch's embeddings into the buffers.
        let mut embs = self.empty_embeddings()?;
        for k in 0..m {
            let mut args = micro_args(Part::Embed, k, micro(k)?)?;
            args.extend(embs.into_iter().map(ShardedArg::Owned));
            embs = self.program(Part::Embed).run_owned(args)?;
        }
        // Pass 2: the loss, the embeddings' gradients, the heads' gradients, the accumulators.
        let mut args: Vec<ShardedArg<'_>> = heads
            .iter()
            .map(|&i| ShardedArg::Borrowed(&values[i]))
            .collect();
        args.extend(embs.into_iter().map(ShardedArg::Owned));
        let mut out = self.program(Part::Loss).run_owned(args)?;
        let loss_at = self.arg_out(Part::Loss, io::LOSS)?;
        let loss = out[loss_at].bufs[0].to_host()?.to_f64_vec()[0];
        let loss_names = self.io[Part::Loss as usize].outputs.clone();
        let mut loss_out: Vec<(String, Sharded)> =
            loss_names.into_iter().zip(out.drain(..)).collect();
        let mut take_out = |name: &str| -> Result<Sharded> {
            let i = loss_out
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| {
                    Error::Internal(format!("the loss program has no output `{name}`"))
                })?;
            Ok(loss_out.remove(i).1)
        };
        let d_img = take_out(io::IMAGE_EMBEDDING_GRADS)?;
        let d_txt = take_out(io::TEXT_EMBEDDING_GRADS)?;
        // Pass 3: each micro-batch's share of the towers' gradients.
        let acc_names: Vec<String> = self.io[Part::Backprop as usize].outputs.clone();
        let mut acc: Vec<Sharded> = acc_names
            .iter()
            .map(|n| take_out(n))
            .collect::<Result<_>>()?;
        for k in 0..m {
            let mut args = micro_args(Part::Backprop, k, micro(k)?)?;
            args.push(ShardedArg::Borrowed(&d_img));
            args.push(ShardedArg::Borrowed(&d_txt));
            args.extend(acc.into_iter().map(ShardedArg::Owned));
            acc = self.program(Part::Backprop).run_owned(args)?;
        }
        *lock(&self.spare) = Some(vec![d_img, d_txt]);
        // The update, its gradients by name: the heads' from pass 2, the towers' from pass 3.
        let mut grads: Vec<(String, Sharded)> = acc_names.into_iter().zip(acc).collect();
        grads.append(&mut loss_out);
        let upd = &self.io[Part::Update as usize];
        let mut args: Vec<ShardedArg<'_>> = values.into_iter().map(ShardedArg::Owned).collect();
        args.push(ShardedArg::Owned(upload(
            Part::Update,
            io::STEP,
            &HostArray::scalar(step),
        )?));
        for name in &upd.inputs[self.values + 1..] {
            let i = grads
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| Error::Internal(format!("no gradient `{name}` for the update")))?;
            args.push(ShardedArg::Owned(grads.remove(i).1));
        }
        let mut out = self.program(Part::Update).run_owned(args)?;
        let scalar = |i: usize| -> Result<f64> { Ok(out[i].bufs[0].to_host()?.to_f64_vec()[0]) };
        let n = self.values;
        let done = StreamedDone {
            loss,
            grad_norm: scalar(n)?,
            learning_rate: scalar(n + 1)?,
            temperature: scalar(n + 2)?,
        };
        out.truncate(n);
        Ok((out, done))
    }

    /// Embedding buffers for pass 1: the last step's embedding gradients (pass 1 writes every
    /// row, so what they hold does not matter), or zeros made piece by piece on the first step.
    fn empty_embeddings(&self) -> Result<Vec<Sharded>> {
        if let Some(v) = lock(&self.spare).take() {
            return Ok(v);
        }
        let p = self.program(Part::Embed);
        let ty = &self.embeddings;
        let i = self.arg_index(Part::Embed, io::IMAGE_EMBEDDINGS)?;
        let spec = p.arg(i)?.clone();
        let mesh = p.mesh().clone();
        (0..2)
            .map(|_| {
                p.upload_with(|_, position| {
                    let (_, block) = super::persist::region(&ty.shape, &spec, &mesh, position);
                    HostArray::zeros(ty.dtype, &block)
                })
            })
            .collect()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is replaced whole, never left half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One program of a streamed step as compiled and measured.
#[derive(Clone, Debug)]
pub struct PartReport {
    pub part: Part,
    pub runs_per_step: i64,
    /// Per device; for a program the target's compiler refused, what it said it needs.
    pub memory: MemoryStats,
    pub refused: Option<String>,
    /// Analytic FLOPs of one run.
    pub flops: f64,
    pub compile_seconds: f64,
    /// Bytes per device the step holds while this program runs that are not its arguments
    /// (the other programs' parameters, the optimizer state, buffers kept for the next pass,
    /// the next micro-batch uploaded ahead).
    pub resident_beside_bytes: i64,
}

impl PartReport {
    /// The device's peak while this program runs: its own peak and what is held beside it.
    pub fn step_peak_bytes(&self) -> i64 {
        self.memory.peak_bytes + self.resident_beside_bytes
    }
}

/// What compiling a streamed step reports: `basic compile --streamed`.
#[derive(Clone, Debug)]
pub struct StreamedReport {
    pub target: Option<crate::target::Target>,
    pub params: i64,
    pub parts: Vec<PartReport>,
    /// Host bytes of one micro-batch as one process loads it (its rows' images and tokens in
    /// the step's input types).
    pub host_bytes_per_micro_batch: i64,
    /// Host → device bytes of a step over the whole job: every micro-batch twice (passes 1
    /// and 3).
    pub host_to_device_bytes_per_step: i64,
    /// What the one-program step of the same batch would upload: every example once.
    pub one_program_host_to_device_bytes: i64,
    pub processes: usize,
}

impl StreamedReport {
    /// The step's peak per device: the largest of its programs' peaks with what is held beside.
    pub fn peak_bytes(&self) -> i64 {
        self.parts
            .iter()
            .map(PartReport::step_peak_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Whether every program compiled and the step's peak fits the target's HBM (`None` on a
    /// local client).
    pub fn fits(&self) -> Option<bool> {
        self.target.as_ref().map(|t| {
            self.parts.iter().all(|p| p.refused.is_none()) && self.peak_bytes() <= t.spec.hbm_bytes
        })
    }

    /// Analytic FLOPs of a whole step (each program times its runs).
    pub fn flops_per_step(&self) -> f64 {
        self.parts
            .iter()
            .map(|p| p.flops * p.runs_per_step as f64)
            .sum()
    }

    /// `basic compile --streamed --json`'s object.
    pub fn to_json(&self, setup: &super::StepSetup) -> serde_json::Value {
        use serde_json::json;
        let (c, o, layout) = (&setup.config, &setup.options, &setup.layout);
        let programs: Vec<_> = self
            .parts
            .iter()
            .map(|p| {
                let m = &p.memory;
                let mut v = json!({"name": p.part.name(), "runs_per_step": p.runs_per_step,
                    "argument_bytes": m.argument_bytes, "output_bytes": m.output_bytes,
                    "alias_bytes": m.alias_bytes, "temp_bytes": m.temp_bytes,
                    "peak_bytes": m.peak_bytes, "resident_beside_bytes": p.resident_beside_bytes,
                    "step_peak_bytes": p.step_peak_bytes(), "flops": p.flops,
                    "compile_seconds": p.compile_seconds});
                if let Some(r) = &p.refused {
                    v["compiler_refused"] = json!(r);
                }
                v
            })
            .collect();
        let mut out = json!({
            "model": c.name, "params": self.params, "streamed": true,
            "batch": o.batch, "microbatches": o.microbatches, "micro_batch": o.batch / o.microbatches,
            "loss_block": o.loss_block, "remat": c.train.remat, "dtype": c.train.dtype,
            "mesh": layout.mesh.to_string(), "partitioner": layout.partitioner,
            "programs": programs, "peak_bytes": self.peak_bytes(),
            "peak_bytes_is": "per device: the largest over the programs of the program's peak plus the bytes the step holds beside its arguments",
            "flops_per_step": self.flops_per_step(),
            "processes": self.processes,
            "host_bytes_per_micro_batch": self.host_bytes_per_micro_batch,
            "host_bytes_per_micro_batch_is": "per process: its rows of one micro-batch, images and tokens as the step takes them",
            "host_to_device_bytes_per_step": self.host_to_device_bytes_per_step,
            "one_program_host_to_device_bytes_per_step": self.one_program_host_to_device_bytes,
        });
        if let Some(t) = &self.target {
            out["target"] = json!(t.name());
            out["hbm_bytes"] = json!(t.spec.hbm_bytes);
            out["fits"] = json!(self.fits());
            let bound = t.step_time_bound(self.flops_per_step(), setup.devices());
            out["step_time_lower_bound_seconds"] = json!(bound);
            out["examples_per_second_upper_bound"] = json!(o.batch as f64 / bound);
            out["step_time_lower_bound_is"] = json!(
                "analytic FLOPs of every program run / (devices × peak dense bf16 FLOP/s): a bound, not a prediction"
            );
        }
        out
    }
}

/// Bytes per device of an argument of `ty` laid out by `spec`.
fn shard_bytes(
    ty: &crate::dtype::TensorType,
    spec: &PartitionSpec,
    mesh: &crate::partition::Mesh,
) -> i64 {
    let tiles: i64 = spec.tiles(mesh).iter().product();
    let n: i64 = ty.shape.iter().product();
    n / tiles.max(1) * ty.dtype.size_in_bytes() as i64
}

/// Builds the streamed step of `setup`, compiles its four programs on `on` and measures them.
/// A program the target's compiler refuses as too large is reported (the step then does not
/// fit), not an error.
pub fn compile_streamed(
    setup: &super::StepSetup,
    on: super::aot::CompileOn<'_>,
) -> Result<StreamedReport> {
    use super::aot::CompileOn;
    use crate::target::OutOfMemory;
    use std::time::Instant;
    let (c, o, layout) = (&setup.config, &setup.options, &setup.layout);
    let sp = StreamedProgram::build(c, o, layout, setup.donate)?;
    let mesh = &layout.mesh;
    let n = setup.devices();
    // Per-device bytes of every named argument of every program.
    let sized = |pp: &PartProgram| -> Vec<(String, i64)> {
        pp.graph
            .params
            .iter()
            .zip(&pp.args)
            .map(|((name, v), spec)| (name.clone(), shard_bytes(pp.graph.ty(*v), spec, mesh)))
            .collect()
    };
    let all: Vec<Vec<(String, i64)>> = sp.parts.iter().map(sized).collect();
    let values: Vec<(String, i64)> =
        all[Part::Update as usize][..sp.params.len() + sp.state.len()].to_vec();
    let embeddings: i64 = all[Part::Embed as usize]
        .iter()
        .filter(|(n, _)| n == io::IMAGE_EMBEDDINGS || n == io::TEXT_EMBEDDINGS)
        .map(|(_, b)| b)
        .sum();
    let head_grads: i64 = all[Part::Update as usize]
        .iter()
        .filter(|(n, _)| {
            n.strip_prefix(io::GRAD)
                .is_some_and(|p| Modality::of_param(p).is_none())
        })
        .map(|(_, b)| b)
        .sum();
    let prefetched: i64 = all[Part::Embed as usize]
        .iter()
        .filter(|(n, _)| n == io::IMAGES || n == io::TOKENS)
        .map(|(_, b)| b)
        .sum();
    let (target, topology) = match on {
        CompileOn::Target(t) => (Some(t.clone()), Some(t.topology()?)),
        CompileOn::Client(_) => (None, None),
    };
    let mut parts = Vec::with_capacity(4);
    for (pp, args) in sp.parts.iter().zip(&all) {
        let held: i64 = values
            .iter()
            .filter(|(n, _)| !args.iter().any(|(a, _)| a == n))
            .map(|(_, b)| b)
            .sum();
        // The reader holds the next micro-batch on the devices while a program runs (pass 3's
        // first during the loss).
        let extra = match pp.part {
            Part::Embed => prefetched,
            Part::Loss => prefetched,
            Part::Backprop => head_grads + prefetched,
            Part::Update => embeddings,
        };
        let t0 = Instant::now();
        let (memory, refused) = match (on, &target, &topology) {
            (CompileOn::Target(_), Some(t), Some(topo)) => {
                let options = t.compile_options(&layout.context().compile_options())?;
                match topo.compile(&pp.text, &options) {
                    Ok(compiled) => (compiled.memory_stats()?, None),
                    Err(e) => match OutOfMemory::from_error(&e) {
                        Some(oom) => (oom.memory_stats(), Some(oom.message)),
                        None => return Err(e),
                    },
                }
            }
            (CompileOn::Client(client), _, _) => {
                let order = super::hosts::global_order(client, n)?;
                let prog = ShardedProgram::compile_assigned(
                    client,
                    &layout.context(),
                    Some(order),
                    pp.args.clone(),
                    pp.results.clone(),
                    pp.text.clone(),
                )?;
                (prog.memory_stats()?, None)
            }
            _ => return Err(Error::Internal("a target without its topology".into())),
        };
        parts.push(PartReport {
            part: pp.part,
            runs_per_step: pp.part.runs_per_step(o),
            memory,
            refused,
            flops: crate::ops::flops(&pp.graph),
            compile_seconds: t0.elapsed().as_secs_f64(),
            resident_beside_bytes: held + extra,
        });
    }
    // Host side: one micro-batch's rows per process, every micro-batch uploaded twice.
    let processes = match (&topology, on) {
        (Some(topo), _) => {
            let mut p: Vec<i32> = topo.job_order(n).iter().map(|d| d.process_index).collect();
            p.sort_unstable();
            p.dedup();
            p.len().max(1)
        }
        _ => 1,
    };
    let embed = sp.part(Part::Embed);
    let example_bytes: i64 = [io::IMAGES, io::TOKENS]
        .iter()
        .map(|name| -> Result<i64> {
            let v = embed.graph.params[embed.input(name)?].1;
            let ty = embed.graph.ty(v);
            Ok(ty.shape[1..].iter().product::<i64>() * ty.dtype.size_in_bytes() as i64)
        })
        .sum::<Result<i64>>()?;
    let mb = o.batch / o.microbatches;
    Ok(StreamedReport {
        target,
        params: sp.params.iter().map(|s| s.element_count()).sum(),
        parts,
        host_bytes_per_micro_batch: mb / processes as i64 * example_bytes,
        host_to_device_bytes_per_step: 2 * o.batch * example_bytes,
        one_program_host_to_device_bytes: o.batch * example_bytes,
        processes,
    })
}
