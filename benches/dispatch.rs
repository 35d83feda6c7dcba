//! Dispatch overhead: one execute of a tiny program, host → device → host, on every CPU plugin
//! found. Run through `benches/dispatch.sh`, which runs JAX's `jit` on the same program in the same
//! session and prints the ratio. Prints one JSON line per plugin.

use std::time::Instant;

use basic::runtime::{find_cpu_plugins, CompileOptions, HostArray, Runtime};

const PROGRAM: &str = "func.func @main(%x: tensor<8xf32>) -> tensor<8xf32> {
  %one = stablehlo.constant dense<1.0> : tensor<8xf32>
  %0 = stablehlo.add %x, %one : tensor<8xf32>
  return %0 : tensor<8xf32>
}";

const BATCHES: usize = 30;
const CALLS: usize = 300;

fn main() -> basic::Result<()> {
    // As the `basic` command does: glibc's huge-page tunable for the plugin's buffers.
    basic::runtime::host::use_huge_pages();
    let x = HostArray::new(&[8], &[0.5f32; 8])?;
    for (k, path) in find_cpu_plugins() {
        let rt = Runtime::open_path(&path, Some(1))?;
        let exe = rt.client().compile(PROGRAM, &CompileOptions::single())?;
        let args = [x.clone()];
        for _ in 0..CALLS {
            exe.run(&args)?;
        }
        let mut per_call: Vec<f64> = (0..BATCHES)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..CALLS {
                    let out = exe.run(&args).expect("run");
                    std::hint::black_box(out);
                }
                t.elapsed().as_secs_f64() / CALLS as f64
            })
            .collect();
        per_call.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{{\"impl\": \"basic\", \"plugin\": \"{}\", \"median_us\": {:.3}, \"min_us\": {:.3}}}",
            k.package,
            per_call[BATCHES / 2] * 1e6,
            per_call[0] * 1e6
        );
    }
    Ok(())
}
