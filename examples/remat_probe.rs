use basic::ir::RematPolicy;
use basic::model::transformer::{stack, stack_specs, TransformerConfig};
use basic::model::Params;
use basic::runtime::{Backend, CompileOptions, Runtime};
use basic::trace::Builder;
use basic::DType;
fn main() {
    let rt = Runtime::open(&Backend::Cpu, Some(1)).unwrap();
    for depth in [1, 4, 12] {
        for policy in [None, Some(RematPolicy::NothingSaveable)] {
            let c = TransformerConfig {
                width: 128,
                depth,
                heads: 4,
                mlp: 512,
            };
            let b = Builder::new("stack");
            let x = b.parameter("x", DType::F32, &[8, 64, 128]).unwrap();
            let specs = stack_specs("s", &c);
            let p = Params::declare(&b, &specs, DType::F32).unwrap();
            let y = stack(&x, &p.scope("s"), &c, None, policy.as_ref()).unwrap();
            let loss = y.square().unwrap().mean(&[0, 1, 2]).unwrap();
            let wrt: Vec<_> = specs
                .iter()
                .map(|s| p.get(&s.name).unwrap().clone())
                .collect();
            let grads = basic::autodiff::grad(&loss, &wrt).unwrap();
            b.output("loss", &loss).unwrap();
            for (i, g) in grads.iter().enumerate() {
                b.output(&format!("g{i}"), g).unwrap();
            }
            let text = basic::lower::module(&b.finish(), &Default::default()).unwrap();
            if depth == 1 && policy.is_some() {
                std::fs::write("/tmp/remat1.mlir", &text).unwrap();
            }
            let m = rt
                .client()
                .compile(&text, &CompileOptions::single())
                .unwrap()
                .memory_stats()
                .unwrap();
            println!(
                "depth {depth} {:?}: temp {} MB",
                policy,
                m.temp_bytes as f64 / 1e6
            );
        }
    }
}
