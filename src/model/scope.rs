//! Parameters declared where the model uses them. Model code asks a [`Scope`] for each
//! parameter at its point of use, with its shape, initialiser and logical axes:
//!
//! ```ignore
//! let w = s.param("patch/kernel", &[pd, d], Init::LecunUniform, &["patch", "embed"])?;
//! ```
//!
//! One code path serves two modes. *Collecting* (see [`trace_specs`]) traces the model on a
//! throwaway builder: each new name becomes a graph parameter there and its [`ParamSpec`] is
//! recorded in first-use order, which is how a model's parameter specs are derived. *Bound*
//! ([`Scope::bound`]) is every real graph: the parameters were declared up front from those specs
//! ([`Params::declare`]), and a lookup returns the tensor of that path, or an error naming it
//! when the specs lack it or give it another shape.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::dtype::{DType, TensorType};
use crate::error::{Error, Result};
use crate::ir::RematPolicy;
use crate::trace::{Builder, Tensor};

use super::config::ModelConfig;
use super::noise::Noise;
use super::params::{Init, ParamSpec, Params};

/// Where a scope's parameters come from.
#[derive(Clone)]
enum Source<'a> {
    /// Declared beforehand, looked up by path.
    Bound(&'a Params),
    /// Declared on first use on a throwaway builder, their specs recorded.
    Collect(Rc<Collector>),
}

struct Collector {
    builder: Builder,
    dtype: DType,
    /// Specs in first-use order, with the tensor each was declared as.
    seen: RefCell<Vec<(ParamSpec, Tensor)>>,
    at: RefCell<BTreeMap<String, usize>>,
}

/// A path prefix (`image/blocks/3`) over a model's parameters; see the module documentation.
/// Cheap to clone; [`Scope::sub`] descends.
#[derive(Clone)]
pub struct Scope<'a> {
    prefix: String,
    source: Source<'a>,
}

impl<'a> Scope<'a> {
    /// A scope over parameters already declared (by [`Params::declare`] or by hand).
    pub fn bound(params: &'a Params) -> Scope<'a> {
        Scope {
            prefix: String::new(),
            source: Source::Bound(params),
        }
    }

    /// A collecting scope: each parameter is declared on `b` as `dtype` at its first use and its
    /// spec recorded ([`Scope::specs`]). [`trace_specs`] wraps this with a throwaway builder.
    pub fn collect(b: &Builder, dtype: DType) -> Scope<'static> {
        Scope {
            prefix: String::new(),
            source: Source::Collect(Rc::new(Collector {
                builder: b.clone(),
                dtype,
                seen: RefCell::new(Vec::new()),
                at: RefCell::new(BTreeMap::new()),
            })),
        }
    }

    /// The scope of `name` below this one (`attn` under `text/blocks/0`: `text/blocks/0/attn`).
    pub fn sub(&self, name: &str) -> Scope<'a> {
        Scope {
            prefix: self.path(name),
            source: self.source.clone(),
        }
    }

    /// The full path of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// The parameter `name` of this scope, of `shape`, initialised by `init`, with one logical
    /// axis name per dimension. Weight decay applies to parameters of rank 2 and more.
    pub fn param(&self, name: &str, shape: &[i64], init: Init, axes: &[&str]) -> Result<Tensor> {
        self.declare(ParamSpec::new(name, shape, init, axes))
    }

    /// The parameter of `spec`, its name taken relative to this scope: collecting, declares it
    /// (the same name again gives the same tensor, and an error for another shape); bound, looks
    /// it up and checks its shape.
    pub fn declare(&self, spec: ParamSpec) -> Result<Tensor> {
        let name = self.path(&spec.name);
        let misshaped = |have: &[i64]| {
            Error::invalid(format!("parameter `{name}` of shape {have:?}"), format!(
                "the model uses it with shape {:?}: declare the parameters from the model's traced specs",
                spec.shape
            ))
        };
        match &self.source {
            Source::Bound(p) => {
                let t = p.get(&name)?;
                if t.shape() != spec.shape.as_slice() {
                    return Err(misshaped(t.shape()));
                }
                Ok(t.clone())
            }
            Source::Collect(c) => {
                if let Some(&i) = c.at.borrow().get(&name) {
                    let (s, t) = &c.seen.borrow()[i];
                    if s.shape != spec.shape {
                        return Err(misshaped(&s.shape));
                    }
                    return Ok(t.clone());
                }
                let t = c
                    .builder
                    .parameter_typed(&name, &TensorType::new(c.dtype, &spec.shape))?;
                let spec = ParamSpec { name, ..spec };
                c.at.borrow_mut()
                    .insert(spec.name.clone(), c.seen.borrow().len());
                c.seen.borrow_mut().push((spec, t.clone()));
                Ok(t)
            }
        }
    }

    /// The specs a collecting scope has recorded, in first-use order (full paths); empty when
    /// bound.
    pub fn specs(&self) -> Vec<ParamSpec> {
        match &self.source {
            Source::Bound(_) => Vec::new(),
            Source::Collect(c) => c.seen.borrow().iter().map(|(s, _)| s.clone()).collect(),
        }
    }
}

/// The parameter specs of whatever `f` traces: `f` gets a throwaway builder (for its inputs) and
/// a collecting scope whose parameters are declared there as `dtype`. Specs come in first-use
/// order.
pub fn trace_specs(
    name: &str,
    dtype: DType,
    f: impl FnOnce(&Builder, &Scope<'static>) -> Result<()>,
) -> Result<Vec<ParamSpec>> {
    let b = Builder::new(name);
    let s = Scope::collect(&b, dtype);
    f(&b, &s)?;
    Ok(s.specs())
}

/// How a tower runs, besides its parameters: rematerialisation of each block, dropout and
/// stochastic depth, blocks as one scan over stacked layers, and the dtype of its masks.
#[derive(Clone, Copy, Debug)]
pub struct Tower<'a> {
    /// Each block checkpointed with this policy.
    pub remat: &'a RematPolicy,
    /// Dropout and stochastic depth on the blocks' residual branches; `None`: deterministic.
    pub noise: Option<&'a Noise>,
    /// Identical blocks stacked on a leading `layers` axis and run as one loop.
    pub scan: bool,
    /// The compute dtype (masks and pooling weights are made in it).
    pub dtype: DType,
}

impl<'a> Tower<'a> {
    /// No remat, no noise, unrolled blocks.
    pub fn new(dtype: DType) -> Tower<'a> {
        Tower {
            remat: &RematPolicy::None,
            noise: None,
            scan: false,
            dtype,
        }
    }

    /// A model's towers in `dtype`: scanned as the config says, no remat, no noise.
    pub fn of(c: &ModelConfig, dtype: DType) -> Tower<'a> {
        Tower {
            scan: c.scan_layers,
            ..Tower::new(dtype)
        }
    }

    pub fn with_remat(self, remat: &'a RematPolicy) -> Tower<'a> {
        Tower { remat, ..self }
    }

    /// This context with `noise` instead of its own (often the own one folded by a salt).
    pub fn with_noise<'b>(self, noise: Option<&'b Noise>) -> Tower<'b>
    where
        'a: 'b,
    {
        Tower { noise, ..self }
    }

    /// The noise folded by `salt` (see [`Noise::fold`]); `None` without noise.
    pub fn fold(&self, salt: u64) -> Result<Option<Noise>> {
        self.noise.map(|n| n.fold(salt)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collecting_records_first_use_order_and_reuses_a_name() {
        let specs = trace_specs("t", DType::F32, |_, s| {
            let a = s.sub("x").param("w", &[2, 3], Init::Zeros, &["a", "b"])?;
            s.param("b", &[3], Init::Ones, &["b"])?;
            let again = s.sub("x").param("w", &[2, 3], Init::Zeros, &["a", "b"])?;
            assert_eq!(a.shape(), again.shape());
            let err = s.sub("x").param("w", &[3, 2], Init::Zeros, &["a", "b"]);
            assert!(err.unwrap_err().to_string().contains("x/w"));
            Ok(())
        })
        .unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["x/w", "b"]);
        assert!(!specs[0].no_decay && specs[1].no_decay);
    }

    #[test]
    fn bound_lookups_name_a_missing_or_misshaped_parameter() {
        let b = Builder::new("t");
        let specs = vec![ParamSpec::new("x/w", &[2, 3], Init::Zeros, &["a", "b"])];
        let p = Params::declare(&b, &specs, DType::F32).unwrap();
        let s = Scope::bound(&p).sub("x");
        assert!(s.param("w", &[2, 3], Init::Zeros, &["a", "b"]).is_ok());
        let e = s.param("w", &[3, 3], Init::Zeros, &["a", "b"]).unwrap_err();
        assert!(e.to_string().contains("`x/w`"), "{e}");
        let e = s.param("v", &[3], Init::Zeros, &["b"]).unwrap_err();
        assert!(e.to_string().contains("`x/v`"), "{e}");
    }
}
