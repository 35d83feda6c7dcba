//! Named parameters: stable, readable paths (`image/blocks/3/attn/qkv/kernel`) mapped to
//! tensors of a graph, and the specifications they are created from.

use std::collections::BTreeMap;

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
        self.map.get(path).ok_or_else(|| Error::InvalidArgument {
            what: format!("parameter `{path}`"),
            fix: "it is not declared by the model's parameter specs".into(),
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
