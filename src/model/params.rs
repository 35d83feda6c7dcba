//! Named parameters: stable, readable paths (`image/blocks/3/attn/qkv/kernel`) mapped to
//! tensors of a graph, and the specifications they are created from (derived by tracing the model,
//! see [`super::scope`]).

use std::collections::BTreeMap;

use crate::array::HostArray;
use crate::dtype::{DType, TensorType};
use crate::error::{Error, Result};
use crate::trace::{Builder, Tensor};

/// How a parameter is initialised.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with this standard deviation.
    Normal(f64),
    /// Uniform in ±sqrt(3 / fan_in) (LeCun uniform), fan-in = product of all but the last axis.
    LecunUniform,
    /// A constant.
    Constant(f64),
}

/// One parameter: its path, shape, initialiser and logical axis names (for sharding rules).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub init: Init,
    /// One logical axis name per dimension (`embed`, `mlp`, `heads`, `vocab`, ...).
    pub axes: Vec<String>,
    /// Excluded from weight decay (norms, biases, temperature).
    pub no_decay: bool,
}

impl ParamSpec {
    pub fn new(name: impl Into<String>, shape: &[i64], init: Init, axes: &[&str]) -> ParamSpec {
        let name = name.into();
        let no_decay = shape.len() <= 1;
        ParamSpec {
            name,
            shape: shape.to_vec(),
            init,
            axes: axes.iter().map(|s| s.to_string()).collect(),
            no_decay,
        }
    }

    pub fn element_count(&self) -> i64 {
        self.shape.iter().product()
    }

    /// This spec for `depth` identical layers run as one scan: the shape gains a leading
    /// [`LAYERS`] axis and the name is `rename`d; weight decay and initialisation stay per layer.
    pub fn stacked(&self, depth: i64, name: impl Into<String>) -> ParamSpec {
        let mut shape = vec![depth];
        shape.extend_from_slice(&self.shape);
        let mut axes = vec![LAYERS.to_string()];
        axes.extend(self.axes.iter().cloned());
        ParamSpec {
            name: name.into(),
            shape,
            init: self.init.clone(),
            axes,
            no_decay: self.no_decay,
        }
    }

    /// Whether the leading axis stacks layers (see [`ParamSpec::stacked`]).
    pub fn is_stacked(&self) -> bool {
        self.axes.len() == self.shape.len() && self.axes.first().is_some_and(|a| a == LAYERS)
    }

    /// The shape of one layer's slice: the whole shape unless the spec is stacked.
    pub fn layer_shape(&self) -> &[i64] {
        if self.is_stacked() {
            &self.shape[1..]
        } else {
            &self.shape
        }
    }
}

pub use super::names::{layer_name, LAYERS};

/// Values for `scanned` specs from values by unrolled names (`values[name]`): each stacked
/// parameter is the concatenation of its layers ([`layer_name`]). Converts a checkpoint of a
/// model built with `scan_layers = false` into one for the same model with `scan_layers = true`.
pub fn stack_layers(
    scanned: &[ParamSpec],
    values: &BTreeMap<String, HostArray>,
) -> Result<Vec<HostArray>> {
    let get = |n: &str| {
        values.get(n).ok_or_else(|| {
            Error::invalid(
                format!("parameter `{n}`"),
                "the unrolled values lack it: are they of the same model?",
            )
        })
    };
    scanned
        .iter()
        .map(|s| {
            if !s.is_stacked() {
                return Ok(get(&s.name)?.clone());
            }
            let parts = (0..s.shape[0])
                .map(|j| {
                    let n = layer_name(&s.name, j).unwrap_or_default();
                    let mut shape = vec![1];
                    shape.extend_from_slice(get(&n)?.shape());
                    get(&n)?.clone().reshape(&shape)
                })
                .collect::<Result<Vec<_>>>()?;
            let v = HostArray::concat(&parts, 0)?;
            if v.shape() != s.shape.as_slice() {
                return Err(Error::invalid(
                    format!("stacked `{}` of shape {:?}", s.name, v.shape()),
                    format!("expected {:?}: the layers differ in shape", s.shape),
                ));
            }
            Ok(v)
        })
        .collect()
}

/// The inverse of [`stack_layers`]: unrolled names and values from values of `scanned` specs.
pub fn unstack_layers(
    scanned: &[ParamSpec],
    values: &[HostArray],
) -> Result<BTreeMap<String, HostArray>> {
    let mut out = BTreeMap::new();
    for (s, v) in scanned.iter().zip(values) {
        if !s.is_stacked() {
            out.insert(s.name.clone(), v.clone());
            continue;
        }
        for (j, part) in v.split(0, s.shape[0] as usize)?.into_iter().enumerate() {
            let n = layer_name(&s.name, j as i64).unwrap_or_default();
            out.insert(n, part.reshape(&s.shape[1..])?);
        }
    }
    Ok(out)
}

/// Parameters of a graph by path. Lookups of missing paths are errors naming the path.
#[derive(Clone, Debug, Default)]
pub struct Params {
    map: BTreeMap<String, Tensor>,
}

impl Params {
    /// Declares every spec as a graph parameter of `dtype`, in spec order.
    pub fn declare(b: &Builder, specs: &[ParamSpec], dtype: DType) -> Result<Params> {
        let mut map = BTreeMap::new();
        for s in specs {
            let t = b.parameter_typed(&s.name, &TensorType::new(dtype, &s.shape))?;
            map.insert(s.name.clone(), t);
        }
        Ok(Params { map })
    }

    pub fn from_map(map: BTreeMap<String, Tensor>) -> Params {
        Params { map }
    }

    pub fn get(&self, path: &str) -> Result<&Tensor> {
        self.map.get(path).ok_or_else(|| {
            Error::invalid(
                format!("parameter `{path}`"),
                "it is not declared by the model's parameter specs",
            )
        })
    }

    /// The parameters under `prefix/`, with the prefix removed.
    pub fn scope(&self, prefix: &str) -> Params {
        let p = format!("{prefix}/");
        Params {
            map: self
                .map
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
                .collect(),
        }
    }

    pub fn insert(&mut self, path: &str, t: Tensor) {
        self.map.insert(path.to_string(), t);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
