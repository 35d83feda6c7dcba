//! Frontend cost: build + emit + compile time of a transformer stack's forward and backward, and
//! compile time of a scan over layers against the unrolled stack, on every CPU plugin found.
//! `benches/frontend.sh` runs `benches/frontend_jax.py` in the same session and prints ratios.
//! One JSON line per measurement.

use std::time::Instant;

use basic::ir::RematPolicy;
use basic::model::transformer::{block_param_specs, scanned_stack, stack, TransformerConfig};
use basic::model::{trace_specs, ParamSpec, Params, Scope, Tower};
use basic::runtime::{find_cpu_plugins, CompileOptions, Runtime};
use basic::trace::{Builder, Tensor};
use basic::DType;

const BATCH: i64 = 8;
const LENGTH: i64 = 64;
const WIDTH: i64 = 256;

fn config(depth: i64) -> TransformerConfig {
    TransformerConfig {
        width: WIDTH,
        depth,
        heads: 4,
        mlp: 4 * WIDTH,
        act: basic::model::config::Activation::GeluTanh,
        eps: 1e-6,
    }
}

/// Builds loss = mean(stack(x)²) and its gradients; returns the module text.
fn build(depth: i64, scanned: bool, remat: RematPolicy) -> basic::Result<String> {
    let c = config(depth);
    let b = Builder::new("stack");
    let x = b.parameter("x", DType::F32, &[BATCH, LENGTH, WIDTH])?;
    let (params, y) = if scanned {
        // One stacked parameter per block parameter: [depth, ...], in the block's order.
        let block = block_param_specs(&x, &c, None)?;
        let specs: Vec<ParamSpec> = block
            .iter()
            .map(|s| s.stacked(depth, format!("b/{}", s.name)))
            .collect();
        let p = Params::declare(&b, &specs, DType::F32)?;
        let stacked: Vec<Tensor> = specs
            .iter()
            .map(|s| p.get(&s.name).cloned())
            .collect::<basic::Result<_>>()?;
        let y = scanned_stack(&x, &stacked, &c, None, &remat)?;
        (stacked, y)
    } else {
        let specs = trace_specs("stack", DType::F32, |b, s| {
            let x = b.parameter("x", DType::F32, &[BATCH, LENGTH, WIDTH])?;
            stack(&x, &s.sub("s"), &c, None, &Tower::new(DType::F32))?;
            Ok(())
        })?;
        let p = Params::declare(&b, &specs, DType::F32)?;
        let t = Tower::new(DType::F32).with_remat(&remat);
        let y = stack(&x, &Scope::bound(&p).sub("s"), &c, None, &t)?;
        (
            specs
                .iter()
                .map(|s| p.get(&s.name).cloned())
                .collect::<basic::Result<_>>()?,
            y,
        )
    };
    let loss = y.square()?.mean(&[0, 1, 2])?;
    let grads = basic::autodiff::grad(&loss, &params)?;
    b.output("loss", &loss)?;
    for (i, g) in grads.iter().enumerate() {
        b.output(&format!("g{i}"), g)?;
    }
    basic::lower::module(&b.finish(), &Default::default())
}

fn main() -> basic::Result<()> {
    for (k, path) in find_cpu_plugins() {
        let rt = Runtime::open_path(&path, Some(1))?;
        // Warm the compiler once.
        rt.client().compile(
            &build(1, false, RematPolicy::None)?,
            &CompileOptions::single(),
        )?;
        for (depth, scanned) in [
            (12, false),
            (4, false),
            (4, true),
            (12, true),
            (48, false),
            (48, true),
        ] {
            let t0 = Instant::now();
            let text = build(depth, scanned, RematPolicy::None)?;
            let emit = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let exe = rt.client().compile(&text, &CompileOptions::single())?;
            let compile = t1.elapsed().as_secs_f64();
            let m = exe.memory_stats()?;
            println!(
                "{{\"impl\": \"basic\", \"plugin\": \"{}\", \"depth\": {depth}, \"scan\": {scanned}, \"build_emit_s\": {emit:.4}, \"compile_s\": {compile:.4}, \"total_s\": {:.4}, \"temp_bytes\": {}}}",
                k.package,
                emit + compile,
                m.temp_bytes
            );
        }
        for policy in [RematPolicy::None, RematPolicy::NothingSaveable] {
            let exe = rt.client().compile(
                &build(12, false, policy.clone())?,
                &CompileOptions::single(),
            )?;
            println!(
                "{{\"impl\": \"basic\", \"plugin\": \"{}\", \"remat\": \"{}\", \"depth\": 12, \"temp_bytes\": {}}}",
                k.package,
                policy,
                exe.memory_stats()?.temp_bytes
            );
        }
    }
    Ok(())
}
