//! The contrastive loss over blocks, so that no N × N array (or N/d × N on d devices) exists:
//! the loss and its exact gradient with respect to the embeddings, the scale and the bias, in the
//! way of Inf-CL (Cheng et al., 2025) and SigLIP's chunked sigmoid loss.
//!
//! With `t_ij = s ⟨x_i, y_j⟩ (+ b)` for N pairs:
//! - softmax: `L = 1/2N [Σ_i lse_j t_ij + Σ_j lse_i t_ij] − 1/N Σ_i t_ii`, so
//!   `∂L/∂t_ij = (P_ij + Q_ij)/2N − δ_ij/N` with `P = exp(t − lse_row)`, `Q = exp(t − lse_col)`;
//! - sigmoid: `L = 1/N [Σ_ij softplus(t_ij) − Σ_i t_ii]`, so `∂L/∂t_ij = σ(t_ij)/N − δ_ij/N`.
//!
//! The diagonal terms come from the pairs' own embeddings; every other term is a sum over
//! `B × B` tiles, each computed from an image block and a text block and dropped after use. The
//! softmax loss takes two sweeps: the first keeps running log-sum-exp statistics of every row and
//! column (a max and a sum, as online softmax does), the second recomputes each tile with the
//! final statistics and accumulates `dX = s G Y`, `dY = s Gᵀ X`, `ds = Σ G ⊙ XYᵀ`. The sigmoid
//! loss needs no statistics and takes one sweep.
//!
//! Across the devices of the batch axis the sweep is a ring (a manual region over the mesh): each
//! device keeps its images and their row statistics; the text blocks travel around the axis with
//! their column statistics and their gradients, one `ppermute` per step, and come home complete
//! after as many steps as there are devices. The permute of the block for the next step is issued
//! before the step's tiles, so the compiler can overlap it with them. A block size that does not
//! divide a device's rows pads them; padded rows and columns are masked out of every sum.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::partition::{Mesh, PartitionSpec};
use crate::trace::{Builder, Tensor};

use super::config::LossKind;

/// The batch axis a tiled loss runs its ring over.
#[derive(Clone, Debug, PartialEq)]
pub struct Ring {
    /// The program's mesh.
    pub mesh: Mesh,
    /// The mesh axis the batch is split over.
    pub axis: String,
}

/// The loss and its gradients.
pub struct LossGrads {
    pub loss: Tensor,
    pub d_img: Tensor,
    pub d_txt: Tensor,
    pub d_scale: Tensor,
    /// The sigmoid loss's bias gradient.
    pub d_bias: Option<Tensor>,
}

/// The loss of normalised embeddings `img`, `txt` (`[N, E]`, pair i matches i) and its gradients,
/// over `block × block` tiles, on a ring over `ring`'s axis when the batch is split over it.
pub fn loss_and_grads(
    img: &Tensor,
    txt: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    kind: LossKind,
    block: i64,
    ring: Option<&Ring>,
) -> Result<LossGrads> {
    if block < 1 {
        return Err(Error::invalid(
            format!("loss block {block}"),
            "a tiled loss needs a positive block (0 selects the untiled loss)",
        ));
    }
    let n = img.shape()[0];
    let Some(ring) = ring.filter(|r| r.mesh.axis_size(&r.axis).unwrap_or(1) > 1) else {
        return Sweep::new(img, txt, scale, bias, kind, block, n, None)?.run();
    };
    let b = img.builder().clone();
    let d = ring.mesh.axis_size(&ring.axis).unwrap_or(1);
    if n % d != 0 {
        return Err(Error::invalid(
            format!("batch {n} over the {d} devices of `{}`", ring.axis),
            "the batch must divide over the batch axis",
        ));
    }
    // Every mesh axis is manual: devices along the other axes hold the same blocks and compute
    // the same values, which both partitioners can express.
    let all: Vec<&str> = ring.mesh.axes.iter().map(|(a, _)| a.as_str()).collect();
    let rows = PartitionSpec(vec![vec![ring.axis.clone()], vec![]]);
    let one = PartitionSpec(vec![]);
    let mut inputs = vec![img.clone(), txt.clone(), scale.clone()];
    let mut in_specs = vec![rows.clone(), rows.clone(), one.clone()];
    let mut out_specs = vec![one.clone(), rows.clone(), rows, one.clone()];
    if let Some(bv) = bias {
        inputs.push(bv.clone());
        in_specs.push(one.clone());
        out_specs.push(one);
    }
    let axis = ring.axis.clone();
    let outs = b.shard_map(
        "tiled_loss",
        &ring.mesh,
        &all,
        &inputs,
        &in_specs,
        &out_specs,
        |_, blk| {
            let r = Sweep::new(
                &blk[0],
                &blk[1],
                &blk[2],
                blk.get(3),
                kind,
                block,
                n,
                Some((axis.as_str(), d)),
            )?
            .run()?;
            let mut v = vec![r.loss, r.d_img, r.d_txt, r.d_scale];
            v.extend(r.d_bias);
            Ok(v)
        },
    )?;
    Ok(LossGrads {
        loss: outs[0].clone(),
        d_img: outs[1].clone(),
        d_txt: outs[2].clone(),
        d_scale: outs[3].clone(),
        d_bias: outs.get(4).cloned(),
    })
}

/// The most negative finite value of `dtype`: masked logits, and the running max's start (a
/// finite value keeps `exp(m - m')` at 0 instead of NaN).
fn lowest(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::MIN,
        DType::BF16 => half::bf16::MIN.to_f64(),
        _ => f64::from(f32::MIN),
    }
}

/// One device's part of the loss: its `nl` images and texts (padded to `r` blocks of `bs`), the
/// ring's axis and size (none on one device), and the global batch `n`.
struct Sweep {
    b: Builder,
    kind: LossKind,
    /// Block size and count.
    bs: i64,
    r: i64,
    nl: i64,
    n: i64,
    dtype: DType,
    /// `[R, B, E]`: the device's images and texts, padded.
    x: Tensor,
    y: Tensor,
    /// `[R, B]`: which rows are real.
    mask: Tensor,
    s: Tensor,
    bias: Option<Tensor>,
    ring: Option<(String, i64)>,
}

impl Sweep {
    #[allow(clippy::too_many_arguments)]
    fn new(
        img: &Tensor,
        txt: &Tensor,
        scale: &Tensor,
        bias: Option<&Tensor>,
        kind: LossKind,
        block: i64,
        n: i64,
        ring: Option<(&str, i64)>,
    ) -> Result<Sweep> {
        let b = img.builder().clone();
        let (nl, e) = (img.shape()[0], img.shape()[1]);
        let bs = block.min(nl);
        let r = (nl + bs - 1) / bs;
        let pad = r * bs - nl;
        let blocks = |t: &Tensor| -> Result<Tensor> {
            let t = if pad > 0 {
                let z = t.scalar_like(0.0)?;
                t.pad(&z, &[0, 0], &[pad, 0], &[0, 0])?
            } else {
                t.clone()
            };
            t.reshape(&[r, bs, e])
        };
        let mask = b
            .iota(DType::S32, &[r, bs], 0)?
            .mul_scalar(bs as f64)?
            .add(&b.iota(DType::S32, &[r, bs], 1)?)?
            .lt(&b.scalar(nl as f64, DType::S32)?)?;
        Ok(Sweep {
            kind,
            bs,
            r,
            nl,
            n,
            dtype: img.dtype(),
            x: blocks(img)?,
            y: blocks(txt)?,
            mask,
            s: scale.clone(),
            bias: bias.cloned(),
            ring: ring.map(|(a, d)| (a.to_string(), d)),
            b,
        })
    }

    fn run(&self) -> Result<LossGrads> {
        let stats = match self.kind {
            LossKind::Softmax => Some(self.statistics()?),
            LossKind::Sigmoid => None,
        };
        let g = self.gradients(stats.as_ref())?;
        self.finish(g, stats.as_ref())
    }

    fn steps(&self) -> i64 {
        self.ring.as_ref().map_or(1, |(_, d)| *d)
    }

    /// The visiting blocks passed one device on, when there is a ring.
    fn pass_on(&self, ts: &[Tensor]) -> Result<Vec<Tensor>> {
        match &self.ring {
            None => Ok(ts.to_vec()),
            Some((axis, d)) => {
                let ring: Vec<(i64, i64)> = (0..*d).map(|i| (i, (i + 1) % d)).collect();
                ts.iter().map(|t| t.ppermute(axis, &ring)).collect()
            }
        }
    }

    /// A tile's raw scores `x yᵀ` `[B, B]` and the mask of its real entries.
    fn tile(&self, x: &Tensor, y: &Tensor, mr: &Tensor, mc: &Tensor) -> Result<(Tensor, Tensor)> {
        let raw = x.matmul(&y.t()?)?;
        let bs = self.bs;
        let m = mr
            .reshape(&[bs, 1])?
            .broadcast_to(&[bs, bs])?
            .and(&mc.reshape(&[1, bs])?.broadcast_to(&[bs, bs])?)?;
        Ok((raw, m))
    }

    /// Softmax only: the row and column log-sum-exp of `t = s x yᵀ` over every real pair, `[R, B]`
    /// each (the device's rows; its texts' columns, complete after the ring).
    fn statistics(&self) -> Result<(Tensor, Tensor)> {
        let low = self.x.scalar_like(lowest(self.dtype))?;
        let start = |v: &Tensor| v.broadcast_to(&[self.r, self.bs]);
        let zeros = self
            .b
            .zeros(&crate::TensorType::new(self.dtype, &[self.r, self.bs]))?;
        let carry = [
            start(&low)?,
            zeros.clone(),
            self.y.clone(),
            start(&low)?,
            zeros,
        ];
        let consts = [self.x.clone(), self.mask.clone(), self.s.clone()];
        let (fin, _) = self
            .b
            .scan(self.steps(), &consts, &carry, &[], false, |_, c, k, _| {
                // Send the visiting texts on first: the permute can overlap the tiles. Their column
                // statistics follow once the tiles have updated them.
                let next = self.pass_on(&k[2..3])?.remove(0);
                let (rm, rl, cm, cl) = self.stat_sweep(c, &k[0], &k[1], &k[2], &k[3], &k[4])?;
                let stats = self.pass_on(&[cm, cl])?;
                Ok((
                    vec![rm, rl, next, stats[0].clone(), stats[1].clone()],
                    vec![],
                ))
            })?;
        let lse = |m: &Tensor, l: &Tensor| m.add(&l.log()?);
        Ok((lse(&fin[0], &fin[1])?, lse(&fin[3], &fin[4])?))
    }

    /// One step of the statistics ring: every tile of the device's rows against the visiting
    /// texts `y` (`[R, B, E]`), updating the rows' running (max, sum) and the texts'.
    #[allow(clippy::too_many_arguments)]
    fn stat_sweep(
        &self,
        c: &[Tensor],
        rm: &Tensor,
        rl: &Tensor,
        y: &Tensor,
        cm: &Tensor,
        cl: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let (x, mask, s) = (&c[0], &c[1], &c[2]);
        let b = x.builder().clone();
        // Over row blocks, carrying the visiting columns' statistics; each row block's own
        // statistics come out per step.
        let (col, row) = b.scan(
            self.r,
            &[y.clone(), mask.clone(), s.clone()],
            &[cm.clone(), cl.clone()],
            &[x.clone(), mask.clone(), rm.clone(), rl.clone()],
            false,
            |_, k, col, xs| {
                let (yb, mk, s) = (&k[0], &k[1], &k[2]);
                let ib = xs[0].builder().clone();
                let (row, col) = ib.scan(
                    self.r,
                    &[xs[0].clone(), xs[1].clone(), s.clone()],
                    &[xs[2].clone(), xs[3].clone()],
                    &[yb.clone(), mk.clone(), col[0].clone(), col[1].clone()],
                    false,
                    |_, k, row, ys| {
                        let (raw, m) = self.tile(&k[0], &ys[0], &k[1], &ys[1])?;
                        let t = raw.mul(&k[2])?;
                        let low = t.scalar_like(lowest(self.dtype))?;
                        let t = Tensor::select(&m, &t, &low)?;
                        let (rm, rl) = online(&row[0], &row[1], &t, 1, self.bs)?;
                        let (cm, cl) = online(&ys[2], &ys[3], &t, 0, self.bs)?;
                        Ok((vec![rm, rl], vec![cm, cl]))
                    },
                )?;
                Ok((col, row))
            },
        )?;
        Ok((
            row[0].clone(),
            row[1].clone(),
            col[0].clone(),
            col[1].clone(),
        ))
    }

    /// The tiles' part of the gradients (and, for the sigmoid loss, of the loss): `dX` `[R, B,
    /// E]` of the device's images, `dY` of its texts (home after the ring), `ds`, `db`, loss.
    fn gradients(&self, stats: Option<&(Tensor, Tensor)>) -> Result<Grads> {
        let zeros_like = |t: &Tensor| t.zeros_like();
        let scalar0 = self.s.zeros_like()?;
        let (row_lse, col_lse) = match stats {
            Some((r, c)) => (r.clone(), c.clone()),
            None => (
                self.mask.convert(self.dtype)?,
                self.mask.convert(self.dtype)?,
            ),
        };
        let carry = [
            zeros_like(&self.x)?,
            self.y.clone(),
            col_lse,
            zeros_like(&self.y)?,
            scalar0.clone(),
            scalar0.clone(),
            scalar0,
        ];
        let mut consts = vec![self.x.clone(), self.mask.clone(), self.s.clone(), row_lse];
        consts.extend(self.bias.clone());
        let (fin, _) = self
            .b
            .scan(self.steps(), &consts, &carry, &[], false, |_, c, k, _| {
                let next = self.pass_on(&k[1..3])?;
                let (dx, dy, sums) = self.grad_sweep(c, &k[0], &k[1], &k[2], &k[3], &k[4..7])?;
                let dy = self.pass_on(std::slice::from_ref(&dy))?.remove(0);
                let mut out = vec![dx, next[0].clone(), next[1].clone(), dy];
                out.extend(sums);
                Ok((out, vec![]))
            })?;
        Ok(Grads {
            dx: fin[0].clone(),
            dy: fin[3].clone(),
            ds: fin[4].clone(),
            db: fin[5].clone(),
            loss: fin[6].clone(),
        })
    }

    /// One step of the gradient ring: every tile of the device's rows against the visiting texts
    /// `y` with their column statistics `cl` (softmax), adding into `dx`, the visiting `dy` and
    /// the sums `(ds, db, loss)`.
    #[allow(clippy::too_many_arguments)]
    fn grad_sweep(
        &self,
        c: &[Tensor],
        dx: &Tensor,
        y: &Tensor,
        clse: &Tensor,
        dy: &Tensor,
        sums: &[Tensor],
    ) -> Result<(Tensor, Tensor, Vec<Tensor>)> {
        let (x, mask) = (&c[0], &c[1]);
        let mut inner_consts = vec![y.clone(), mask.clone(), clse.clone(), c[2].clone()];
        inner_consts.extend(c.get(4).cloned());
        let b = x.builder().clone();
        let mut carry = vec![dy.clone()];
        carry.extend(sums.iter().cloned());
        let (fin, dxs) = b.scan(
            self.r,
            &inner_consts,
            &carry,
            &[x.clone(), mask.clone(), c[3].clone(), dx.clone()],
            false,
            |_, k, acc, xs| self.grad_row(k, acc, xs),
        )?;
        Ok((dxs[0].clone(), fin[0].clone(), fin[1..].to_vec()))
    }

    /// One row block against every visiting column block.
    fn grad_row(
        &self,
        k: &[Tensor],
        acc: &[Tensor],
        xs: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let (yv, mk, clse, s) = (&k[0], &k[1], &k[2], &k[3]);
        let bias = k.get(4);
        let (xb, mr, rlse, dxb) = (&xs[0], &xs[1], &xs[2], &xs[3]);
        let ib = xb.builder().clone();
        let mut consts = vec![xb.clone(), mr.clone(), rlse.clone(), s.clone()];
        consts.extend(bias.cloned());
        let mut carry = vec![dxb.clone()];
        carry.extend(acc[1..].iter().cloned());
        let (fin, dys) = ib.scan(
            self.r,
            &consts,
            &carry,
            &[yv.clone(), mk.clone(), clse.clone(), acc[0].clone()],
            false,
            |_, k, acc, ys| {
                let (xb, mr, rlse, s) = (&k[0], &k[1], &k[2], &k[3]);
                let (yb, mc, clse, dyb) = (&ys[0], &ys[1], &ys[2], &ys[3]);
                let (raw, m) = self.tile(xb, yb, mr, mc)?;
                let t = raw.mul(s)?;
                let zero = t.scalar_like(0.0)?;
                let (g, tile_loss) = match self.kind {
                    LossKind::Softmax => {
                        let bs = self.bs;
                        let p = t.sub(&rlse.reshape(&[bs, 1])?)?.exp()?;
                        let q = t.sub(&clse.reshape(&[1, bs])?)?.exp()?;
                        (p.add(&q)?.div_scalar(2.0 * self.n as f64)?, None)
                    }
                    LossKind::Sigmoid => {
                        let tb = match k.get(4) {
                            Some(bv) => t.add(bv)?,
                            None => t.clone(),
                        };
                        let sp = tb.max_scalar(0.0)?.add(&tb.abs()?.neg()?.exp()?.log1p()?)?;
                        let l = Tensor::select(&m, &sp, &zero)?.sum_all()?;
                        (tb.logistic()?.div_scalar(self.n as f64)?, Some(l))
                    }
                };
                let g = Tensor::select(&m, &g, &zero)?;
                let dx = acc[0].add(&g.matmul(yb)?.mul(s)?)?;
                let dy = dyb.add(&g.t()?.matmul(xb)?.mul(s)?)?;
                let ds = acc[1].add(&g.mul(&raw)?.sum_all()?)?;
                let db = acc[2].add(&g.sum_all()?)?;
                let loss = match tile_loss {
                    Some(l) => acc[3].add(&l.div_scalar(self.n as f64)?)?,
                    None => acc[3].clone(),
                };
                Ok((vec![dx, ds, db, loss], vec![dy]))
            },
        )?;
        let mut out = vec![dys[0].clone()];
        out.extend(fin[1..].iter().cloned());
        Ok((out, vec![fin[0].clone()]))
    }

    /// The diagonal terms, the loss, and the sums over the ring.
    fn finish(&self, g: Grads, stats: Option<&(Tensor, Tensor)>) -> Result<LossGrads> {
        let e = self.x.shape()[2];
        let unpad = |t: &Tensor| -> Result<Tensor> {
            t.reshape(&[self.r * self.bs, e])?.slice_axis(0, 0, self.nl)
        };
        let (x, y) = (unpad(&self.x)?, unpad(&self.y)?);
        let inv_n = 1.0 / self.n as f64;
        // t_ii: the pairs' own scores; ∂L/∂t_ii has the extra −1/N of both losses.
        let dots = x.mul(&y)?.sum(&[1])?;
        let s = &self.s;
        let d_img = unpad(&g.dx)?.sub(&y.mul(s)?.mul_scalar(inv_n)?)?;
        let d_txt = unpad(&g.dy)?.sub(&x.mul(s)?.mul_scalar(inv_n)?)?;
        let mut ds = g.ds.sub(&dots.sum_all()?.mul_scalar(inv_n)?)?;
        let diag = dots.mul(s)?;
        let mut loss = match (self.kind, stats) {
            (LossKind::Softmax, Some((rl, cl))) => {
                let zero = rl.scalar_like(0.0)?;
                let real = |v: &Tensor| Tensor::select(&self.mask, v, &zero)?.sum_all();
                real(rl)?
                    .add(&real(cl)?)?
                    .mul_scalar(0.5 * inv_n)?
                    .sub(&diag.sum_all()?.mul_scalar(inv_n)?)?
            }
            _ => {
                let with_bias = match &self.bias {
                    Some(bv) => diag.add(bv)?,
                    None => diag,
                };
                g.loss.sub(&with_bias.sum_all()?.mul_scalar(inv_n)?)?
            }
        };
        let mut db = self
            .bias
            .as_ref()
            .map(|_| g.db.sub(&g.db.scalar_like(self.nl as f64 * inv_n)?))
            .transpose()?;
        if let Some((axis, _)) = &self.ring {
            loss = loss.psum(&[axis])?;
            ds = ds.psum(&[axis])?;
            db = db.map(|v| v.psum(&[axis])).transpose()?;
        }
        Ok(LossGrads {
            loss,
            d_img,
            d_txt,
            d_scale: ds,
            d_bias: db,
        })
    }
}

/// The tiles' sums, before the diagonal terms.
struct Grads {
    dx: Tensor,
    dy: Tensor,
    ds: Tensor,
    db: Tensor,
    loss: Tensor,
}

/// Online log-sum-exp along `axis` (1: rows, 0: columns) of a tile `t`: from running `(m, l)`
/// (`[B]`), `m' = max(m, max t)`, `l' = l e^{m − m'} + Σ e^{t − m'}`.
fn online(m: &Tensor, l: &Tensor, t: &Tensor, axis: usize, bs: i64) -> Result<(Tensor, Tensor)> {
    let m_new = m.max(&t.max_over(&[axis])?)?;
    let shape = if axis == 1 { [bs, 1] } else { [1, bs] };
    let e = t.sub(&m_new.reshape(&shape)?)?.exp()?.sum(&[axis])?;
    let l_new = l.mul(&m.sub(&m_new)?.exp()?)?.add(&e)?;
    Ok((m_new, l_new))
}
