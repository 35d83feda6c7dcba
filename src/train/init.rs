//! Deterministic parameter initialisation on the host: each parameter draws from its own stream,
//! seeded by the run seed and the parameter's name, so adding a parameter changes no other.

use crate::dtype::DType;
use crate::error::Result;
use crate::model::{Init, ParamSpec};
use crate::runtime::HostArray;

/// splitmix64.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

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

/// An array of `dtype` from f64 values.
pub fn to_dtype(shape: &[i64], v: &[f64], dtype: DType) -> Result<HostArray> {
    match dtype {
        DType::F64 => HostArray::new(shape, v),
        DType::F32 => HostArray::new(shape, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
        DType::BF16 => HostArray::new(
            shape,
            &v.iter()
                .map(|&x| half::bf16::from_f64(x))
                .collect::<Vec<_>>(),
        ),
        other => Err(crate::Error::InvalidArgument {
            what: format!("parameter dtype {other}"),
            fix: "parameters are f32, f64 or bf16".into(),
        }),
    }
}

/// Every parameter's initial value, in spec order.
pub fn init_params(specs: &[ParamSpec], seed: u64, dtype: DType) -> Result<Vec<HostArray>> {
    specs.iter().map(|s| init_param(s, seed, dtype)).collect()
}
