//! Inference graphs: the embeddings of images and texts under a model's parameters, with no
//! dropout, no rematerialisation and no gradient (`basic embed`, `basic eval`, the periodic
//! zero-shot of a run).

use crate::dtype::DType;
use crate::error::Result;
use crate::ir::Graph;
use crate::model::names::{self, io};
use crate::model::{dual, trace_specs, ModelConfig, ParamSpec, Params, Scope, Tower};
use crate::trace::Builder;

/// Shapes of the batch inputs of `n` pairs: images `[n, H, W, C]`, tokens `[n, L]`.
pub fn batch_shapes(c: &ModelConfig, n: i64) -> ([i64; 4], [i64; 2]) {
    let s = c.image.image_size();
    ([n, s, s, c.image.channels()], [n, c.text.length])
}

/// `(params..., images, tokens) → (image_embeddings, text_embeddings, logit_scale)` for a batch
/// of `n` pairs: parameters and images in `param_dtype`, the towers computed in `compute_dtype`,
/// the batch split over the `batch` logical axis.
pub fn embed_graph(
    c: &ModelConfig,
    n: i64,
    param_dtype: DType,
    compute_dtype: DType,
) -> Result<Graph> {
    let b = Builder::new(&format!("{}_embed", c.name));
    let specs = dual::specs(c)?;
    let p = Params::declare(&b, &specs, param_dtype)?;
    let (is, ts) = batch_shapes(c, n);
    let images =
        b.parameter(io::IMAGES, param_dtype, &is)?
            .constrain(&[Some("batch"), None, None, None])?;
    let tokens = b
        .parameter(io::TOKENS, DType::S32, &ts)?
        .constrain(&[Some("batch"), None])?;
    let cp = dual::cast(&p, compute_dtype)?;
    let (cs, t) = (Scope::bound(&cp), Tower::of(c, compute_dtype));
    let img = dual::embed_images(&images.convert(compute_dtype)?, &cs, c, &t)?;
    let txt = dual::embed_texts(&tokens, &cs, c, &t)?;
    b.output(io::IMAGE_EMBEDDINGS, &img.convert(param_dtype)?)?;
    b.output(io::TEXT_EMBEDDINGS, &txt.convert(param_dtype)?)?;
    b.output(
        names::LOGIT_SCALE,
        &dual::logit_scale(&Scope::bound(&p), c)?,
    )?;
    Ok(b.finish())
}

/// `(params..., images) → image_embeddings`: normalised image embeddings of `n` images,
/// parameters, images and embeddings in `param_dtype`, the tower computed in `compute_dtype`
/// (bf16 inference from an f32 checkpoint: the cast is part of the program).
pub fn image_embed_graph(
    c: &ModelConfig,
    n: i64,
    param_dtype: DType,
    compute_dtype: DType,
) -> Result<Graph> {
    let b = Builder::new(&format!("{}_embed_images", c.name));
    let specs = dual::specs(c)?;
    let p = Params::declare(&b, &specs, param_dtype)?;
    let (is, _) = batch_shapes(c, n);
    let images = b.parameter(io::IMAGES, param_dtype, &is)?;
    let cp = dual::cast(&p, compute_dtype)?;
    let t = Tower::of(c, compute_dtype);
    let e = dual::embed_images(&images.convert(compute_dtype)?, &Scope::bound(&cp), c, &t)?;
    b.output(io::IMAGE_EMBEDDINGS, &e.convert(param_dtype)?)?;
    Ok(b.finish())
}

/// `(params..., tokens) → text_embeddings`: normalised text embeddings of `n` token rows, in
/// the dtypes of [`image_embed_graph`].
pub fn text_embed_graph(
    c: &ModelConfig,
    n: i64,
    param_dtype: DType,
    compute_dtype: DType,
) -> Result<Graph> {
    let b = Builder::new(&format!("{}_embed_texts", c.name));
    let specs = dual::specs(c)?;
    let p = Params::declare(&b, &specs, param_dtype)?;
    let (_, ts) = batch_shapes(c, n);
    let tokens = b.parameter(io::TOKENS, DType::S32, &ts)?;
    let cp = dual::cast(&p, compute_dtype)?;
    let t = Tower::of(c, compute_dtype);
    let e = dual::embed_texts(&tokens, &Scope::bound(&cp), c, &t)?;
    b.output(io::TEXT_EMBEDDINGS, &e.convert(param_dtype)?)?;
    Ok(b.finish())
}

/// `(text-tower params..., tokens) → text_embeddings`: the text tower's pooled features, not
/// projected or normalised (sentence embeddings of a text-only model). Its parameters are the
/// ones the features use, found by tracing them (no projection, whatever its kind).
pub fn text_features_graph(
    c: &ModelConfig,
    n: i64,
    compute_dtype: DType,
) -> Result<(Graph, Vec<ParamSpec>)> {
    let b = Builder::new(&format!("{}_text_features", c.name));
    let specs = trace_specs(&format!("{}_text_specs", c.name), DType::F32, |b, s| {
        let (_, ts) = batch_shapes(c, 1);
        let tokens = b.parameter(io::TOKENS, DType::S32, &ts)?;
        dual::text_features(&tokens, s, c, &Tower::of(c, DType::F32))?;
        Ok(())
    })?;
    let p = Params::declare(&b, &specs, DType::F32)?;
    let (_, ts) = batch_shapes(c, n);
    let tokens = b.parameter(io::TOKENS, DType::S32, &ts)?;
    let cp = dual::cast(&p, compute_dtype)?;
    let t = Tower::of(c, compute_dtype);
    let f = dual::text_features(&tokens, &Scope::bound(&cp), c, &t)?;
    b.output(io::TEXT_EMBEDDINGS, &f.convert(DType::F32)?)?;
    Ok((b.finish(), specs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_features_declare_the_tower_without_its_projection_whatever_its_kind() {
        for preset in ["tiny", "siglip-b16"] {
            let mut c = ModelConfig::load(preset).unwrap();
            c.text.depth = 1;
            let (_, specs) = text_features_graph(&c, 2, DType::F32).unwrap();
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            assert!(
                names.iter().all(|n| n.starts_with("text/")),
                "{preset}: {names:?}"
            );
            assert!(
                !names.iter().any(|n| n.starts_with("text/proj")),
                "{preset}: {names:?}"
            );
            assert!(
                names.iter().any(|n| n.contains("embed")),
                "{preset}: {names:?}"
            );
        }
        // siglip-b16's head is a linear layer with a bias: both are in the full model.
        let c = ModelConfig::load("siglip-b16").unwrap();
        assert_eq!(
            c.text_projection,
            crate::model::config::Projection::LinearBias,
            "the preset this test relies on changed"
        );
    }
}
