//! BASIC's training step as one program.
//!
//! With `M` micro-batches (§4 of the paper, "gradient accumulation for contrastive learning"), the
//! step computes the exact full-batch gradient while holding one micro-batch's activations:
//!
//! 1. a loop over micro-batches computes every embedding, keeping no activations;
//! 2. the contrastive loss over the global batch, and its gradient with respect to every
//!    embedding (and the temperature);
//! 3. a second loop re-runs each micro-batch's towers and backpropagates that micro-batch's slice
//!    of the embedding gradient, summing parameter gradients;
//!
//! then the optimizer update. Both loops are XLA `while` loops inside the one compiled program:
//! no host round trip between passes. With `M = 1` the step is plain backpropagation.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ir::{Graph, RematPolicy};
use crate::model::config::{LossKind, ModelConfig};
use crate::model::dual::{self, logit_scale};
use crate::model::names::{io, Modality};
use crate::model::noise::Noise;
use crate::model::tiled::{self, Ring};
use crate::model::{ParamSpec, Params, Scope, Tower};
use crate::trace::{Builder, Tensor};

use super::optim;
pub use crate::model::inference::batch_shapes;

/// Shapes and numerics of a step.
#[derive(Clone, Debug)]
pub struct StepOptions {
    /// Global batch (pairs per step).
    pub batch: i64,
    pub microbatches: i64,
    pub remat: RematPolicy,
    /// Dtype of parameters and optimizer state (f32, or f64 for parity checks).
    pub param_dtype: DType,
    /// Dtype the towers compute in (bf16 for mixed precision).
    pub compute_dtype: DType,
    /// Parameters that get no gradient and no optimizer state (locked towers).
    pub frozen: Vec<String>,
    /// Rows and columns of a tile of the tiled contrastive loss; 0: the loss over the whole
    /// `N × N` logits (split by rows over the batch axes).
    pub loss_block: i64,
    /// The batch axis the tiled loss runs its ring over, when the batch is split over one
    /// ([`crate::train::Layout::ring`]).
    pub ring: Option<Ring>,
    /// Images cross to the devices as `u8` pixel values and are normalised there with the
    /// config's mean and deviation, a micro-batch at a time as the towers take them: a quarter
    /// of the bytes of normalised `f32` images. `false`: normalised images of `param_dtype`
    /// (parity programs fed exact values).
    pub image_bytes: bool,
}

impl StepOptions {
    pub fn from_config(c: &ModelConfig) -> Result<StepOptions> {
        let t = &c.train;
        Ok(StepOptions {
            batch: t.batch,
            microbatches: t.microbatches,
            remat: t.remat.clone(),
            param_dtype: DType::F32,
            compute_dtype: t.dtype.compute_dtype(),
            frozen: dual::locked(&dual::specs(c)?, &t.lock),
            loss_block: t.loss_block,
            ring: None,
            image_bytes: true,
        })
    }

    /// The type a batch's images cross to the devices in.
    pub fn image_dtype(&self) -> DType {
        if self.image_bytes {
            DType::U8
        } else {
            self.param_dtype
        }
    }

    pub(super) fn check(&self, c: &ModelConfig) -> Result<()> {
        if self.batch < 1 || self.microbatches < 1 || self.batch % self.microbatches != 0 {
            return Err(Error::invalid(
                format!(
                    "batch {} with {} micro-batches",
                    self.batch, self.microbatches
                ),
                "the batch must divide evenly into micro-batches",
            ));
        }
        if self.batch < 2 && c.loss == LossKind::Softmax {
            return Err(Error::invalid(
                format!("batch {}", self.batch),
                "a contrastive batch needs at least 2 pairs",
            ));
        }
        Ok(())
    }
}

/// The parameters a step trains: all but the frozen ones.
pub fn trainable(specs: &[ParamSpec], o: &StepOptions) -> Vec<ParamSpec> {
    specs
        .iter()
        .filter(|s| !o.frozen.contains(&s.name))
        .cloned()
        .collect()
}

/// Whether the step draws random numbers (dropout or stochastic depth): it then takes a
/// `u64[2]` key input named `rng`, after `tokens`.
pub fn has_rng(c: &ModelConfig) -> bool {
    c.train.dropout > 0.0 || c.train.drop_path > 0.0
}

/// Declares the batch inputs `images` and `tokens` (and `rng` when the step is random).
fn batch_inputs(
    b: &Builder,
    c: &ModelConfig,
    o: &StepOptions,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let (is, ts) = batch_shapes(c, o.batch);
    let images = b.parameter(io::IMAGES, o.image_dtype(), &is)?;
    let tokens = b.parameter(io::TOKENS, DType::S32, &ts)?;
    let rng = if has_rng(c) {
        Some(b.parameter(io::RNG, DType::U64, &[2])?)
    } else {
        None
    };
    Ok((
        images.constrain(&[Some("batch"), None, None, None])?,
        tokens.constrain(&[Some("batch"), None])?,
        rng,
    ))
}

pub(super) fn noise(key: &Tensor, c: &ModelConfig) -> Noise {
    Noise {
        key: key.clone(),
        dropout: c.train.dropout,
        drop_path: c.train.drop_path,
    }
}

pub(super) fn embed_pair(
    images: &Tensor,
    tokens: &Tensor,
    p: &Params,
    c: &ModelConfig,
    o: &StepOptions,
    noise: Option<&Noise>,
) -> Result<(Tensor, Tensor)> {
    let cp = dual::cast(p, o.compute_dtype)?;
    let s = Scope::bound(&cp);
    // A locked tower (LiT) is a fixed feature extractor: it runs without dropout.
    let t = Tower::of(c, o.compute_dtype).with_remat(&o.remat);
    let img = dual::embed_images(
        &normalised(images, c, o)?.convert(o.compute_dtype)?,
        &s,
        c,
        &t.with_noise(noise.filter(|_| !c.train.locks(Modality::Image))),
    )?;
    let txt = dual::embed_texts(
        tokens,
        &s,
        c,
        &t.with_noise(noise.filter(|_| !c.train.locks(Modality::Text))),
    )?;
    Ok((img.convert(o.param_dtype)?, txt.convert(o.param_dtype)?))
}

/// Images as the towers take them: `u8` pixel values normalised (in `param_dtype`) with the
/// config's per-channel mean and deviation, `(x / 255 − mean) / std`; float images as they are.
fn normalised(images: &Tensor, c: &ModelConfig, o: &StepOptions) -> Result<Tensor> {
    if images.dtype() != DType::U8 {
        return Ok(images.clone());
    }
    let ch = *images.shape().last().unwrap_or(&1) as usize;
    let (mean, std) = crate::data::image::per_channel(&c.train.mean, &c.train.std, ch);
    let b = images.builder();
    let scale: Vec<f64> = std.iter().map(|&s| 1.0 / (255.0 * f64::from(s))).collect();
    let shift: Vec<f64> = mean
        .iter()
        .zip(&std)
        .map(|(&m, &s)| f64::from(m) / f64::from(s))
        .collect();
    let shape = images.shape().to_vec();
    let per_channel = |v: &[f64]| -> Result<Tensor> {
        b.constant(&[ch as i64], v)?
            .convert(o.param_dtype)?
            .broadcast_in_dim(&shape, &[shape.len() - 1])
    };
    images
        .convert(o.param_dtype)?
        .mul(&per_channel(&scale)?)?
        .sub(&per_channel(&shift)?)
}

fn head_loss(img: &Tensor, txt: &Tensor, p: &Params, c: &ModelConfig) -> Result<Tensor> {
    let s = Scope::bound(p);
    let scale = logit_scale(&s, c)?;
    let bias = dual::logit_bias(&s, c)?;
    dual::loss(img, txt, &scale, bias.as_ref(), c.loss)
}

/// The loop constants of BASIC's accumulation: the tower parameters by name, the dropout key and
/// the batch split into micro-batches, and how a loop step reads them.
struct MicroBatches<'a> {
    /// Tower parameter names, in `consts` order.
    names: Vec<String>,
    /// Tower parameters, then the key (when the step is random), then images and tokens as
    /// `[N/M, M, ...]`: micro-batch k holds examples j·M + k.
    consts: Vec<Tensor>,
    key: Option<usize>,
    at_batch: usize,
    m: i64,
    c: &'a ModelConfig,
    o: &'a StepOptions,
}

impl MicroBatches<'_> {
    /// Micro-batch `index`'s images and tokens, from a loop step's constants.
    fn take(&self, index: &Tensor, cs: &[Tensor]) -> Result<(Tensor, Tensor)> {
        let zero = index.builder().scalar(0.0, DType::S32)?;
        let take = |t: &Tensor| -> Result<Tensor> {
            let mut starts = vec![zero.clone(); t.rank()];
            starts[1] = index.clone();
            let mut sizes = t.shape().to_vec();
            sizes[1] = 1;
            let mut shape = t.shape().to_vec();
            shape.remove(1);
            t.dynamic_slice(&starts, &sizes)?.reshape(&shape)
        };
        Ok((take(&cs[self.at_batch])?, take(&cs[self.at_batch + 1])?))
    }

    /// The noise of micro-batch `index`: the key with the index folded in, so that passes 1 and
    /// 3 draw the same masks.
    fn noise(&self, index: &Tensor, cs: &[Tensor]) -> Result<Option<Noise>> {
        self.key
            .map(|k| noise(&cs[k], self.c).fold_index(index))
            .transpose()
    }

    /// The tower parameters of a loop step.
    fn params(&self, cs: &[Tensor]) -> Params {
        let mut q = Params::default();
        for (k, t) in self.names.iter().zip(cs) {
            q.insert(k, t.clone());
        }
        q
    }

    /// Micro-batch `index`'s image and text embeddings.
    fn embed(&self, index: &Tensor, cs: &[Tensor]) -> Result<(Tensor, Tensor)> {
        let nz = self.noise(index, cs)?;
        let (images, tokens) = self.take(index, cs)?;
        embed_pair(
            &images,
            &tokens,
            &self.params(cs),
            self.c,
            self.o,
            nz.as_ref(),
        )
    }
}

/// Pass 1: the embeddings of every micro-batch, keeping no activations; `[N, E]` each, in batch
/// order.
fn pass1_embeddings(b: &Builder, mbs: &MicroBatches<'_>) -> Result<(Tensor, Tensor)> {
    let (_, embs) = b.scan(mbs.m, &mbs.consts, &[], &[], false, |index, cs, _, _| {
        let (img, txt) = mbs.embed(index, cs)?;
        Ok((vec![], vec![img, txt]))
    })?;
    let (n, e) = (mbs.o.batch, mbs.c.embed_dim);
    // [M, N/M, E] in micro-batch order → [N, E] in batch order (row j·M + k).
    let gather = |t: &Tensor| -> Result<Tensor> {
        t.transpose(&[1, 0, 2])?
            .reshape(&[n, e])?
            .constrain(&[Some("batch"), None])
    };
    Ok((gather(&embs[0])?, gather(&embs[1])?))
}

/// The loss over the global batch of embeddings `img`, `txt` and its gradient with respect to
/// both and to the head parameters `heads`: by differentiating the whole-batch loss, or, with
/// `o.loss_block > 0`, by the tiled loss's own sweeps (which build no `N × N` array), the heads'
/// gradients then flowing from the scale's and bias's through their definitions.
pub(super) fn loss_grads(
    img: &Tensor,
    txt: &Tensor,
    heads: &[Tensor],
    p: &Params,
    c: &ModelConfig,
    o: &StepOptions,
) -> Result<(Tensor, Tensor, Tensor, Vec<Tensor>)> {
    if o.loss_block == 0 {
        let loss = head_loss(img, txt, p, c)?;
        let mut targets = vec![img.clone(), txt.clone()];
        targets.extend(heads.iter().cloned());
        let mut g = crate::autodiff::grad(&loss, &targets)?;
        let head_grads = g.split_off(2);
        return Ok((loss, g[0].clone(), g[1].clone(), head_grads));
    }
    let s = Scope::bound(p);
    let scale = logit_scale(&s, c)?;
    let bias = dual::logit_bias(&s, c)?;
    let r = tiled::loss_and_grads(
        img,
        txt,
        &scale,
        bias.as_ref(),
        c.loss,
        o.loss_block,
        o.ring.as_ref(),
    )?;
    let mut outs = vec![scale];
    let mut cots = vec![Some(r.d_scale)];
    if let (Some(b), Some(db)) = (bias, r.d_bias) {
        outs.push(b);
        cots.push(Some(db));
    }
    let head_grads = crate::autodiff::vjp(&outs, &cots, heads)?
        .into_iter()
        .zip(heads)
        .map(|(g, h)| g.map_or_else(|| h.zeros_like(), Ok))
        .collect::<Result<Vec<_>>>()?;
    Ok((r.loss, r.d_img, r.d_txt, head_grads))
}

/// Pass 2: the loss over the global batch and its gradient with respect to every embedding and
/// to the head parameters `heads`. Returns the loss, dL/d(image, text embeddings) as
/// `[M, N/M, E]` in micro-batch order, and the heads' gradients.
fn pass2_loss(
    img: &Tensor,
    txt: &Tensor,
    heads: &[Tensor],
    p: &Params,
    mbs: &MicroBatches<'_>,
) -> Result<(Tensor, Tensor, Tensor, Vec<Tensor>)> {
    let (loss, d_img, d_txt, head_grads) = loss_grads(img, txt, heads, p, mbs.c, mbs.o)?;
    let (mb, m, e) = (mbs.o.batch / mbs.m, mbs.m, mbs.c.embed_dim);
    // And back: row j·M + k of the batch to micro-batch k, row j.
    let split = |t: &Tensor| -> Result<Tensor> {
        t.reshape(&[mb, m, e])?
            .constrain(&[Some("batch"), None, None])?
            .transpose(&[1, 0, 2])?
            .constrain(&[None, Some("batch"), None])
    };
    Ok((loss, split(&d_img)?, split(&d_txt)?, head_grads))
}

/// Pass 3: re-run each micro-batch with activations and backpropagate its slice of the embedding
/// gradient; returns the summed gradients of the tower parameters at positions `acc` of the
/// constants.
fn pass3_backprop(
    b: &Builder,
    mbs: &MicroBatches<'_>,
    acc: &[usize],
    d_img: Tensor,
    d_txt: Tensor,
) -> Result<Vec<Tensor>> {
    let acc0: Vec<Tensor> = acc
        .iter()
        .map(|&i| mbs.consts[i].zeros_like())
        .collect::<Result<_>>()?;
    let (sums, _) = b.scan(
        mbs.m,
        &mbs.consts,
        &acc0,
        &[d_img, d_txt],
        false,
        |index, cs, sums, xs| {
            let (img, txt) = mbs.embed(index, cs)?;
            let wrt: Vec<Tensor> = acc.iter().map(|&i| cs[i].clone()).collect();
            let g = crate::autodiff::vjp(
                &[img, txt],
                &[Some(xs[0].clone()), Some(xs[1].clone())],
                &wrt,
            )?;
            let next = sums
                .iter()
                .zip(g)
                .map(|(a, gi)| match gi {
                    Some(gi) => a.add(&gi),
                    None => Ok(a.clone()),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((next, vec![]))
        },
    )?;
    Ok(sums)
}

impl<'a> MicroBatches<'a> {
    /// The batch split into `o.microbatches` micro-batches, with the tower parameters (by name)
    /// and the dropout key as the loops' constants.
    fn new(
        p: &Params,
        images: &Tensor,
        tokens: &Tensor,
        rng: Option<&Tensor>,
        c: &'a ModelConfig,
        o: &'a StepOptions,
    ) -> Result<MicroBatches<'a>> {
        let (m, mb) = (o.microbatches, o.batch / o.microbatches);
        // Micro-batch k holds examples j·M + k (j < N/M). A device's contiguous rows of the
        // global batch then hold its share of every micro-batch, so splitting the batch moves no
        // data between devices (contiguous micro-batches would need an all-to-all of every
        // image). The full-batch gradient does not depend on how the batch is split.
        let mut ishape = vec![mb, m];
        ishape.extend_from_slice(&images.shape()[1..]);
        let images_mb =
            images
                .reshape(&ishape)?
                .constrain(&[Some("batch"), None, None, None, None])?;
        let tokens_mb =
            tokens
                .reshape(&[mb, m, tokens.shape()[1]])?
                .constrain(&[Some("batch"), None, None])?;
        // Tower parameters go into the loops as constants, by name; the key and the batch ride
        // along.
        let names: Vec<String> = p
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| Modality::of_param(k).is_some())
            .collect();
        let mut consts: Vec<Tensor> = names
            .iter()
            .map(|k| p.get(k).cloned())
            .collect::<Result<_>>()?;
        let key = rng.map(|k| {
            consts.push(k.clone());
            consts.len() - 1
        });
        let at_batch = consts.len();
        consts.push(images_mb);
        consts.push(tokens_mb);
        Ok(MicroBatches {
            names,
            consts,
            key,
            at_batch,
            m,
            c,
            o,
        })
    }
}

/// Loss and gradients (in `train` order) of the whole batch, by BASIC's accumulation when
/// `microbatches > 1`: [`pass1_embeddings`], [`pass2_loss`], [`pass3_backprop`].
pub fn loss_and_grads(
    p: &Params,
    train: &[ParamSpec],
    images: &Tensor,
    tokens: &Tensor,
    rng: Option<&Tensor>,
    c: &ModelConfig,
    o: &StepOptions,
) -> Result<(Tensor, Vec<Tensor>)> {
    let b = images.builder().clone();
    let wrt: Vec<Tensor> = train
        .iter()
        .map(|s| p.get(&s.name).cloned())
        .collect::<Result<_>>()?;
    if o.microbatches == 1 {
        let n = rng.map(|k| noise(k, c).fold(0)).transpose()?;
        let (img, txt) = embed_pair(images, tokens, p, c, o, n.as_ref())?;
        if o.loss_block == 0 {
            let loss = head_loss(&img, &txt, p, c)?;
            let grads = crate::autodiff::grad(&loss, &wrt)?;
            return Ok((loss, grads));
        }
        return whole_batch_tiled(&img, &txt, p, train, &wrt, c, o);
    }
    let mbs = MicroBatches::new(p, images, tokens, rng, c, o)?;
    let (img_all, txt_all) = pass1_embeddings(&b, &mbs)?;
    // The loss's own parameters (temperature, bias) get their gradients in pass 2.
    let heads: Vec<usize> = (0..train.len())
        .filter(|&i| Modality::of_param(&train[i].name).is_none())
        .collect();
    let head_params: Vec<Tensor> = heads.iter().map(|&i| wrt[i].clone()).collect();
    let (loss, d_img, d_txt, head_grads) = pass2_loss(&img_all, &txt_all, &head_params, p, &mbs)?;
    // The trained tower parameters' gradients accumulate over pass 3.
    let acc: Vec<usize> = (0..mbs.names.len())
        .filter(|&i| train.iter().any(|s| s.name == mbs.names[i]))
        .collect();
    let sums = pass3_backprop(&b, &mbs, &acc, d_img, d_txt)?;
    let mut by_name: std::collections::HashMap<&str, Tensor> = acc
        .iter()
        .map(|&i| mbs.names[i].as_str())
        .zip(sums)
        .collect();
    for (&i, g) in heads.iter().zip(head_grads) {
        by_name.insert(&train[i].name, g);
    }
    // In `train` order; zeros for a parameter no gradient reaches.
    let grads = train
        .iter()
        .zip(&wrt)
        .map(|(s, w)| {
            by_name
                .remove(s.name.as_str())
                .map_or_else(|| w.zeros_like(), Ok)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((loss, grads))
}

/// One micro-batch with the tiled loss: the loss's gradient with respect to the embeddings
/// backpropagated through the towers (a vector–Jacobian product), the heads' from the loss.
fn whole_batch_tiled(
    img: &Tensor,
    txt: &Tensor,
    p: &Params,
    train: &[ParamSpec],
    wrt: &[Tensor],
    c: &ModelConfig,
    o: &StepOptions,
) -> Result<(Tensor, Vec<Tensor>)> {
    let is_head = |s: &ParamSpec| Modality::of_param(&s.name).is_none();
    let pick = |head: bool| -> Vec<Tensor> {
        train
            .iter()
            .zip(wrt)
            .filter(|(s, _)| is_head(s) == head)
            .map(|(_, w)| w.clone())
            .collect()
    };
    let (heads, towers) = (pick(true), pick(false));
    let (loss, d_img, d_txt, head_grads) = loss_grads(img, txt, &heads, p, c, o)?;
    let tower_grads = crate::autodiff::vjp(
        &[img.clone(), txt.clone()],
        &[Some(d_img), Some(d_txt)],
        &towers,
    )?;
    let (mut hg, mut tg) = (head_grads.into_iter(), tower_grads.into_iter());
    let grads = train
        .iter()
        .zip(wrt)
        .map(|(s, w)| {
            let g = if is_head(s) {
                hg.next()
            } else {
                tg.next().flatten()
            };
            g.map_or_else(|| w.zeros_like(), Ok)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((loss, grads))
}

/// `(params..., images, tokens) → (loss, grads...)`: one batch's loss and the gradient of every
/// trainable parameter, named like the parameter (`basic grad`).
pub fn grad_graph(c: &ModelConfig, o: &StepOptions) -> Result<(Graph, Vec<ParamSpec>)> {
    o.check(c)?;
    let b = Builder::new(&format!("{}_grad", c.name));
    let specs = dual::specs(c)?;
    let p = Params::declare(&b, &specs, o.param_dtype)?;
    let (images, tokens, rng) = batch_inputs(&b, c, o)?;
    let train = trainable(&specs, o);
    let (loss, grads) = loss_and_grads(&p, &train, &images, &tokens, rng.as_ref(), c, o)?;
    b.output(io::LOSS, &loss)?;
    for (s, g) in train.iter().zip(&grads) {
        b.output(&s.name, g)?;
    }
    Ok((b.finish(), specs))
}

/// The full training step: `(params..., state..., step, images, tokens) →
/// (params..., state..., loss, grad_norm, learning_rate, temperature)`.
/// Returns the graph, the parameter specs and the optimizer-state specs.
pub fn train_graph(
    c: &ModelConfig,
    o: &StepOptions,
) -> Result<(Graph, Vec<ParamSpec>, Vec<ParamSpec>)> {
    o.check(c)?;
    let b = Builder::new(&format!("{}_train", c.name));
    let specs = dual::specs(c)?;
    let train = trainable(&specs, o);
    let sspecs = optim::state_specs(&train, &c.train);
    let p = Params::declare(&b, &specs, o.param_dtype)?;
    let state = Params::declare(&b, &sspecs, o.param_dtype)?;
    let step = b.parameter(io::STEP, DType::S32, &[])?;
    let (images, tokens, rng) = batch_inputs(&b, c, o)?;
    let (loss, grads) = loss_and_grads(&p, &train, &images, &tokens, rng.as_ref(), c, o)?;
    update_outputs(&b, &p, &state, &step, &grads, Some(&loss), c, o)?;
    Ok((b.finish(), specs, sspecs))
}

/// The optimizer update of parameters `p` and state `state` by `grads` (in [`trainable`]
/// order) at `step`, as outputs: every parameter, every state slot, then the loss when given,
/// `grad_norm`, `learning_rate` and `temperature`.
#[allow(clippy::too_many_arguments)]
pub(super) fn update_outputs(
    b: &Builder,
    p: &Params,
    state: &Params,
    step: &Tensor,
    grads: &[Tensor],
    loss: Option<&Tensor>,
    c: &ModelConfig,
    o: &StepOptions,
) -> Result<()> {
    let specs = dual::specs(c)?;
    let train = trainable(&specs, o);
    let sspecs = optim::state_specs(&train, &c.train);
    let ps: Vec<Tensor> = train
        .iter()
        .map(|s| p.get(&s.name).cloned())
        .collect::<Result<_>>()?;
    let st: Vec<Tensor> = sspecs
        .iter()
        .map(|s| state.get(&s.name).cloned())
        .collect::<Result<_>>()?;
    let stepf = step.convert(DType::F32)?;
    let (new_p, new_s, lr, norm) = optim::update(&train, &ps, grads, &st, &stepf, &c.train)?;
    let mut updated = std::collections::BTreeMap::new();
    for (s, t) in train.iter().zip(new_p) {
        updated.insert(s.name.clone(), t);
    }
    for s in &specs {
        let t = match updated.get(&s.name) {
            Some(t) => t.clone(),
            None => p.get(&s.name)?.clone(),
        };
        b.output(&s.name, &t)?;
    }
    for (s, t) in sspecs.iter().zip(new_s) {
        b.output(&s.name, &t)?;
    }
    if let Some(loss) = loss {
        b.output(io::LOSS, loss)?;
    }
    b.output(io::GRAD_NORM, &norm)?;
    b.output(io::LEARNING_RATE, &lr)?;
    let temperature = logit_scale(&Scope::bound(p), c)?.convert(DType::F32)?;
    b.output(
        io::TEMPERATURE,
        &temperature.scalar_like(1.0)?.div(&temperature)?,
    )?;
    Ok(())
}

/// The `(argument, result)` pairs a training step donates: every parameter and optimizer-state
/// slot to its updated value (the step's first outputs, in the same order), so that a step holds
/// them once instead of twice.
pub fn train_donations(params: &[ParamSpec], state: &[ParamSpec]) -> Vec<(usize, usize)> {
    (0..params.len() + state.len()).map(|i| (i, i)).collect()
}
