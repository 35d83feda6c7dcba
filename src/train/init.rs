//! Deterministic parameter initialisation on the host: each parameter draws from its own stream,
//! seeded by the run seed and the parameter's name, so adding a parameter changes no other.

use crate::dtype::DType;
use crate::error::Result;
use crate::model::{Init, ParamSpec};
use crate::runtime::HostArray;

pub use crate::array::to_dtype;
pub use crate::seed::SplitMix;

/// FNV-1a of a name: the per-parameter stream id.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The initial value of one parameter.
pub fn init_param(spec: &ParamSpec, seed: u64, dtype: DType) -> Result<HostArray> {
    let n: i64 = spec.shape.iter().product();
    let mut r = SplitMix(seed ^ name_hash(&spec.name));
    let layer = spec.layer_shape();
    let fan_in: i64 = if layer.len() >= 2 {
        layer[..layer.len() - 1].iter().product()
    } else {
        1
    };
    let values: Vec<f64> = (0..n)
        .map(|_| match spec.init {
            Init::Zeros => 0.0,
            Init::Ones => 1.0,
            Init::Constant(c) => c,
            Init::Normal(std) => std * r.normal(),
            Init::LecunUniform => {
                let lim = (3.0 / fan_in.max(1) as f64).sqrt();
                (2.0 * r.uniform() - 1.0) * lim
            }
        })
        .collect();
    to_dtype(&spec.shape, &values, dtype)
}

/// Every parameter's initial value, in spec order.
pub fn init_params(specs: &[ParamSpec], seed: u64, dtype: DType) -> Result<Vec<HostArray>> {
    specs.iter().map(|s| init_param(s, seed, dtype)).collect()
}
