//! Manual SPMD regions (`Builder::shard_map`) and their collectives, run on 4 (or 2×2) CPU
//! devices: each primitive against the same computation written without a region, gradients
//! against finite differences in f64 through every collective (both partitioners, a partly
//! manual region, remat and a scan inside), a ring all-gather of `ppermute`s against
//! `all_gather`, the programs compiled for a TPU slice and a GPU host, and the errors of bad use.

mod common;

use basic::exec::ShardedProgram;
use basic::ir::RematPolicy;
use basic::partition::{Mesh, PartitionSpec, ShardingContext};
use basic::runtime::{HostArray, Partitioner};
use basic::trace::{Builder, Tensor};
use basic::DType;
use common::{assert_close, cpu_runtime, Rng};

type Body<'a> = dyn Fn(&Builder, &[Tensor]) -> basic::Result<Vec<Tensor>> + 'a;

/// `f` over global parameters of the inputs' types, emitted over `mesh` with every input and
/// output replicated (any splitting happens inside `f`'s regions), compiled on the CPU devices.
fn program(
    mesh: &str,
    partitioner: Partitioner,
    inputs: &[HostArray],
    f: &Body<'_>,
) -> (ShardedProgram, basic::ir::Graph) {
    let b = Builder::new("f");
    let ps: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, a)| b.parameter(&format!("x{i}"), a.dtype(), a.shape()).unwrap())
        .collect();
    for (i, o) in f(&b, &ps).unwrap().iter().enumerate() {
        b.output(&format!("y{i}"), o).unwrap();
    }
    let g = b.finish();
    let ctx = ShardingContext {
        mesh: Mesh::parse(mesh).unwrap(),
        logical: Default::default(),
        partitioner,
    };
    let rep = |ts: Vec<basic::TensorType>| -> Vec<PartitionSpec> {
        ts.iter()
            .map(|t| PartitionSpec::replicated(t.rank()))
            .collect()
    };
    let rt = cpu_runtime(ctx.mesh.size() as usize);
    let prog = ShardedProgram::compile(
        rt.client(),
        &g,
        &ctx,
        rep(g.param_types()),
        rep(g.output_types()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (prog, g)
}

fn run(mesh: &str, p: Partitioner, inputs: &[HostArray], f: &Body<'_>) -> Vec<HostArray> {
    program(mesh, p, inputs, f).0.run_host(inputs).unwrap()
}

/// `f` partitioned automatically: the input's rows split over `data=4` (the `batch` logical
/// axis of the data-parallel rules), the partitioner deciding all communication.
fn run_automatic(p: Partitioner, x: &HostArray, f: &Body<'_>) -> Vec<HostArray> {
    let b = Builder::new("auto");
    let xt = b.parameter("x", x.dtype(), x.shape()).unwrap();
    let xt = xt.constrain(&[Some("batch"), None]).unwrap();
    let outs = f(&b, &[xt]).unwrap();
    for (i, o) in outs.iter().enumerate() {
        b.output(&format!("y{i}"), o).unwrap();
    }
    let g = b.finish();
    let ctx = ShardingContext {
        mesh: data4(),
        logical: basic::partition::Rules::data_parallel().logical,
        partitioner: p,
    };
    let results = g
        .output_types()
        .iter()
        .map(|t| PartitionSpec::replicated(t.rank()))
        .collect();
    let rt = cpu_runtime(4);
    let prog = ShardedProgram::compile(rt.client(), &g, &ctx, vec![rows()], results).unwrap();
    prog.run_host(std::slice::from_ref(x)).unwrap()
}

/// `sum(f(x) ⊙ W)` for a fixed random W, and its gradient by reverse mode, compared with central
/// differences of the same compiled program element by element.
fn check_grads(name: &str, mesh: &str, p: Partitioner, inputs: &[HostArray], f: &Body<'_>) {
    let scalar = |b: &Builder, ps: &[Tensor]| -> basic::Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (k, y) in f(b, ps)?.iter().enumerate() {
            let w = b.constant_array(&Rng(100 + k as u64).array(y.shape(), -1.0, 1.0))?;
            let s = y.mul(&w)?.sum_all()?;
            total = Some(match total {
                Some(t) => t.add(&s)?,
                None => s,
            });
        }
        Ok(total.expect("f returns at least one value"))
    };
    let grads = run(mesh, p, inputs, &|b: &Builder, ps: &[Tensor]| {
        let loss = scalar(b, ps)?;
        let mut out = vec![loss.clone()];
        out.extend(basic::autodiff::grad(&loss, ps)?);
        Ok(out)
    });
    let (loss_prog, _) = program(mesh, p, inputs, &|b: &Builder, ps: &[Tensor]| {
        Ok(vec![scalar(b, ps)?])
    });
    let eval = |args: &[HostArray]| loss_prog.run_host(args).unwrap()[0].to_f64_vec()[0];
    let h = 1e-6;
    for (i, x) in inputs.iter().enumerate() {
        let base = x.to_vec::<f64>().unwrap();
        let got = grads[1 + i].to_f64_vec();
        for k in 0..base.len() {
            let at = |d: f64| {
                let mut v = base.clone();
                v[k] += d;
                let mut args = inputs.to_vec();
                args[i] = HostArray::new(x.shape(), &v).unwrap();
                eval(&args)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (got[k] - fd).abs() <= 1e-7 * (1.0 + fd.abs()),
                "{name} ({p:?}): d/dx{i}[{k}]: reverse mode {} vs finite difference {fd}",
                got[k]
            );
        }
    }
}

fn data4() -> Mesh {
    Mesh::parse("data=4").unwrap()
}

fn rows() -> PartitionSpec {
    PartitionSpec::of(&[&["data"], &[]])
}

fn rep2() -> PartitionSpec {
    PartitionSpec::of(&[&[], &[]])
}

/// One region over `data=4` of one operand, with the given specs.
fn region(
    b: &Builder,
    x: &Tensor,
    in_spec: PartitionSpec,
    out_spec: PartitionSpec,
    body: impl FnOnce(&Builder, &Tensor) -> basic::Result<Tensor>,
) -> basic::Result<Tensor> {
    let out = b.shard_map(
        "r",
        &data4(),
        &["data"],
        std::slice::from_ref(x),
        &[in_spec],
        &[out_spec],
        |sb, blocks| Ok(vec![body(sb, &blocks[0])?]),
    )?;
    Ok(out[0].clone())
}

fn x84() -> HostArray {
    Rng(3).array(&[8, 4], -1.0, 1.0)
}

const BOTH: [Partitioner; 2] = [Partitioner::Shardy, Partitioner::Gspmd];

/// `psum` of per-device column sums is the column sum of the whole array; `all_gather` of the
/// blocks is the array; `psum_scatter` of 4 copies is 4× the array, cut by rows; `ppermute` by
/// one position rolls the row blocks; `all_to_all` turns row blocks into column blocks;
/// `axis_index` numbers the devices.
#[test]
fn each_collective_equals_the_computation_written_without_a_region() {
    let x = x84();
    let v = x.to_f64_vec();
    let col_sums: Vec<f64> = (0..4).map(|c| (0..8).map(|r| v[r * 4 + c]).sum()).collect();
    for p in BOTH {
        let got = run(
            "data=4",
            p,
            std::slice::from_ref(&x),
            &|b: &Builder, xs: &[Tensor]| {
                let psum = region(b, &xs[0], rows(), PartitionSpec::of(&[&[]]), |_, t| {
                    t.sum(&[0])?.psum(&["data"])
                })?;
                let gathered =
                    region(b, &xs[0], rows(), rep2(), |_, t| t.all_gather(&["data"], 0))?;
                let scattered = region(b, &xs[0], rep2(), rows(), |_, t| {
                    t.psum_scatter(&["data"], 0)
                })?;
                let rolled = region(b, &xs[0], rows(), rows(), |_, t| {
                    t.ppermute("data", &[(0, 1), (1, 2), (2, 3), (3, 0)])
                })?;
                let cols = region(
                    b,
                    &xs[0],
                    rows(),
                    PartitionSpec::of(&[&[], &["data"]]),
                    |_, t| t.all_to_all("data", 1, 0),
                )?;
                let index = region(
                    b,
                    &xs[0],
                    rows(),
                    PartitionSpec::of(&[&["data"]]),
                    |sb, _| sb.axis_index("data")?.reshape(&[1]),
                )?;
                Ok(vec![psum, gathered, scattered, rolled, cols, index])
            },
        );
        assert_close(&got[0].to_f64_vec(), &col_sums, 1e-12);
        // The same reduction, partitioned automatically over a batch-split input.
        let auto = run_automatic(p, &x, &|_, xs| Ok(vec![xs[0].sum(&[0])?]));
        assert_close(&got[0].to_f64_vec(), &auto[0].to_f64_vec(), 1e-12);
        assert_eq!(got[1].to_f64_vec(), v, "{p:?}: all_gather");
        let four: Vec<f64> = v.iter().map(|a| 4.0 * a).collect();
        assert_close(&got[2].to_f64_vec(), &four, 1e-12);
        // Device d receives the block of device d - 1: global row block k is x's block k - 1.
        let rolled: Vec<f64> = (0..8)
            .flat_map(|r| (0..4).map(move |c| ((r + 6) % 8, c)))
            .map(|(r, c)| v[r * 4 + c])
            .collect();
        assert_eq!(got[3].to_f64_vec(), rolled, "{p:?}: ppermute");
        assert_eq!(got[4].to_f64_vec(), v, "{p:?}: all_to_all");
        assert_eq!(got[5].to_vec::<i32>().unwrap(), vec![0, 1, 2, 3], "{p:?}");
    }
}

/// Reverse mode through every collective, on both partitioners, equals finite differences; so
/// does a region over a replicated operand whose result is replicated (the cotangent rules of
/// a replicated result and operand), one with a checkpointed block inside, one inside a
/// checkpointed block and one run by each step of a loop.
#[test]
fn gradients_through_every_collective_match_finite_differences() {
    type Case = (&'static str, Box<Body<'static>>);
    let ring: Vec<(i64, i64)> = vec![(0, 1), (1, 2), (2, 3), (3, 0)];
    let cases: Vec<Case> = vec![
        (
            "psum",
            Box::new(|b: &Builder, x: &[Tensor]| {
                Ok(vec![region(b, &x[0], rows(), rep2(), |_, t| {
                    t.sin()?.psum(&["data"])?.mul(t)?.all_gather(&["data"], 0)
                })?])
            }),
        ),
        (
            "all_gather",
            Box::new(|b: &Builder, x: &[Tensor]| {
                Ok(vec![region(b, &x[0], rows(), rep2(), |_, t| {
                    t.sin()?.all_gather(&["data"], 0)?.square()
                })?])
            }),
        ),
        (
            "psum_scatter",
            Box::new(|b: &Builder, x: &[Tensor]| {
                Ok(vec![region(b, &x[0], rep2(), rows(), |sb, t| {
                    let i = sb
                        .axis_index("data")?
                        .convert(DType::F64)?
                        .add_scalar(1.0)?;
                    t.mul(&i.broadcast_to(t.shape())?)?
                        .psum_scatter(&["data"], 0)?
                        .cos()
                })?])
            }),
        ),
        (
            "ppermute",
            Box::new(move |b: &Builder, x: &[Tensor]| {
                let ring = ring.clone();
                Ok(vec![region(b, &x[0], rows(), rows(), move |_, t| {
                    t.sin()?.ppermute("data", &ring)?.mul(t)
                })?])
            }),
        ),
        (
            "all_to_all",
            Box::new(|b: &Builder, x: &[Tensor]| {
                Ok(vec![region(
                    b,
                    &x[0],
                    rows(),
                    PartitionSpec::of(&[&[], &["data"]]),
                    |_, t| t.square()?.all_to_all("data", 1, 0)?.sin(),
                )?])
            }),
        ),
        (
            "replicated_in_and_out",
            Box::new(|b: &Builder, x: &[Tensor]| {
                Ok(vec![region(b, &x[0], rep2(), rep2(), |_, t| {
                    t.sin()?.psum(&["data"])?.mul(t)
                })?])
            }),
        ),
        (
            "remat_inside",
            Box::new(|b: &Builder, x: &[Tensor]| {
                Ok(vec![region(b, &x[0], rows(), rows(), |sb, t| {
                    sb.checkpoint(&RematPolicy::NothingSaveable, || {
                        t.sin()?.mul(t)?.psum(&["data"])?.tanh()
                    })
                })?])
            }),
        ),
        (
            "remat_around",
            Box::new(|b: &Builder, x: &[Tensor]| {
                let y = b.checkpoint(&RematPolicy::NothingSaveable, || {
                    region(b, &x[0], rows(), rep2(), |_, t| {
                        t.sin()?.all_gather(&["data"], 0)?.mul_scalar(3.0)
                    })?
                    .tanh()
                })?;
                Ok(vec![y])
            }),
        ),
        (
            "scan_around",
            Box::new(|b: &Builder, x: &[Tensor]| {
                // Two loop steps, each running a region on the carry.
                let (fin, _) = b.scan(
                    2,
                    &[],
                    std::slice::from_ref(&x[0]),
                    &[],
                    false,
                    |_, _, c, _| {
                        let y = region(c[0].builder(), &c[0], rows(), rows(), |_, t| {
                            t.sin()?
                                .ppermute("data", &[(0, 3), (1, 0), (2, 1), (3, 2)])?
                                .add(t)
                        })?;
                        Ok((vec![y], vec![]))
                    },
                )?;
                Ok(fin)
            }),
        ),
    ];
    let x = x84();
    for p in BOTH {
        for (name, f) in &cases {
            check_grads(name, "data=4", p, std::slice::from_ref(&x), f.as_ref());
        }
    }
}

/// Shardy leaves the axes a region does not name to the partitioner: a region manual over
/// `data` of a `data=2,model=2` mesh sums over `data` only, forward and backward.
#[test]
fn a_partly_manual_region_sums_over_its_manual_axis_only() {
    let mesh = Mesh::parse("data=2,model=2").unwrap();
    let x = x84();
    let f = move |b: &Builder, xs: &[Tensor]| -> basic::Result<Vec<Tensor>> {
        let out = b.shard_map(
            "partial",
            &mesh,
            &["data"],
            &xs[..1],
            &[PartitionSpec::of(&[&["data"], &[]])],
            &[PartitionSpec::of(&[&["data"], &[]])],
            |_, t| {
                let y = t[0].constrain(&[None, Some("mlp")])?.sin()?;
                Ok(vec![y.psum(&["data"])?.mul(&t[0])?])
            },
        )?;
        Ok(out)
    };
    let got = run(
        "data=2,model=2",
        Partitioner::Shardy,
        std::slice::from_ref(&x),
        &f,
    );
    // Rows r and r + 4 hold the same sum over `data`.
    let v = x.to_f64_vec();
    let want: Vec<f64> = (0..32)
        .map(|i| (v[i % 16].sin() + v[i % 16 + 16].sin()) * v[i])
        .collect();
    assert_close(&got[0].to_f64_vec(), &want, 1e-12);
    check_grads("partial", "data=2,model=2", Partitioner::Shardy, &[x], &f);
}

/// A ring all-gather written with `ppermute` in a scan (each step writes the block it holds at
/// its owner's rows and passes it on) equals `all_gather`, forward and gradient.
#[test]
fn a_ring_of_ppermutes_in_a_scan_equals_all_gather() {
    let ring = |b: &Builder, x: &[Tensor]| -> basic::Result<Vec<Tensor>> {
        Ok(vec![region(b, &x[0], rows(), rep2(), |sb, t| {
            let me = sb.axis_index("data")?;
            let acc = sb.zeros(&basic::TensorType::new(DType::F64, &[8, 4]))?;
            let (fin, _) = sb.scan(4, &[me], &[acc, t.sin()?], &[], false, |k, c, carry, _| {
                // At step k a device holds the block of device (me - k) mod 4.
                let owner = c[0].sub(k)?.add_scalar(4.0)?.rem(&k.scalar_like(4.0)?)?;
                let row = owner.mul_scalar(2.0)?;
                let zero = k.scalar_like(0.0)?;
                let acc = carry[0].dynamic_update_slice(&carry[1], &[row, zero])?;
                let next = carry[1].ppermute("data", &[(0, 1), (1, 2), (2, 3), (3, 0)])?;
                Ok((vec![acc, next], vec![]))
            })?;
            fin[0].square()
        })?])
    };
    let gather = |b: &Builder, x: &[Tensor]| -> basic::Result<Vec<Tensor>> {
        Ok(vec![region(b, &x[0], rows(), rep2(), |_, t| {
            t.sin()?.all_gather(&["data"], 0)?.square()
        })?])
    };
    let x = x84();
    for p in BOTH {
        let a = run("data=4", p, std::slice::from_ref(&x), &ring);
        let b = run("data=4", p, std::slice::from_ref(&x), &gather);
        assert_close(&a[0].to_f64_vec(), &b[0].to_f64_vec(), 1e-12);
        let grad = |f: &Body<'_>| {
            run(
                "data=4",
                p,
                std::slice::from_ref(&x),
                &|b: &Builder, xs: &[Tensor]| {
                    let loss = f(b, xs)?[0].sum_all()?;
                    basic::autodiff::grad(&loss, xs)
                },
            )
        };
        assert_close(
            &grad(&ring)[0].to_f64_vec(),
            &grad(&gather)[0].to_f64_vec(),
            1e-12,
        );
    }
    check_grads("ring", "data=4", Partitioner::Shardy, &[x], &ring);
}

/// The regions' programs (every collective, each partitioner; f32, as accelerators run) compile
/// for a TPU slice (libtpu) and a GPU host (the CUDA plugin) with no device attached.
#[test]
fn region_programs_compile_for_a_tpu_slice_and_a_gpu_host() {
    let body = |b: &Builder, x: &[Tensor]| -> basic::Result<Vec<Tensor>> {
        let ring = [(0, 1), (1, 2), (2, 3), (3, 0)];
        Ok(vec![region(b, &x[0], rows(), rep2(), |sb, t| {
            let i = sb.axis_index("data")?.convert(DType::F32)?;
            t.psum(&["data"])?
                .ppermute("data", &ring)?
                .all_to_all("data", 1, 0)?
                .all_gather(&["data"], 1)?
                .psum_scatter(&["data"], 0)?
                .add(&i.broadcast_to(t.shape())?)?
                .all_gather(&["data"], 0)
        })?])
    };
    let b = Builder::new("collectives");
    let x = b.parameter("x", DType::F32, &[8, 4]).unwrap();
    b.output("y", &body(&b, &[x]).unwrap()[0]).unwrap();
    let g = b.finish();
    for target in ["tpu-v5e:2x2", "h100:4"] {
        let t = basic::target::Target::parse(target).unwrap();
        let topo = t.topology().unwrap();
        for p in BOTH {
            let ctx = ShardingContext {
                mesh: data4(),
                logical: Default::default(),
                partitioner: p,
            };
            let rep = [PartitionSpec::replicated(2)];
            let text = basic::lower::module_sharded(&g, &ctx, &rep, &rep).unwrap();
            let options = t.compile_options(&ctx.compile_options()).unwrap();
            let compiled = topo
                .compile(&text, &options)
                .unwrap_or_else(|e| panic!("{target} ({p:?}): {e}"));
            assert!(compiled.memory_stats().unwrap().argument_bytes > 0);
        }
    }
}

fn err(f: impl FnOnce(&Builder, &Tensor) -> basic::Result<Tensor>) -> String {
    let b = Builder::new("bad");
    let x = b.parameter("x", DType::F64, &[8, 4]).unwrap();
    f(&b, &x).unwrap_err().to_string()
}

/// Bad use is one error naming the region and the axis: a collective outside a region, an axis
/// not in the mesh or not manual, a block that does not divide, nesting, and a partly manual
/// region under GSPMD.
#[test]
fn bad_use_names_the_region_and_the_axis() {
    let e = err(|_, x| x.psum(&["data"]));
    assert!(
        e.contains("outside a manual region") && e.contains("data"),
        "{e}"
    );
    let mesh = Mesh::parse("data=2,model=2").unwrap();
    let one = |manual: &'static [&'static str], body: fn(&Tensor) -> basic::Result<Tensor>| {
        let mesh = mesh.clone();
        err(move |b, x| {
            Ok(b.shard_map(
                "ring",
                &mesh,
                manual,
                std::slice::from_ref(x),
                &[PartitionSpec::of(&[&["data"], &[]])],
                &[PartitionSpec::of(&[&["data"], &[]])],
                |_, t| Ok(vec![body(&t[0])?]),
            )?[0]
                .clone())
        })
    };
    let e = one(&["data"], |t| t.psum(&["pipe"]));
    assert!(
        e.contains("`ring`") && e.contains("`pipe`") && e.contains("not an axis of the mesh"),
        "{e}"
    );
    let e = one(&["data"], |t| t.psum(&["model"]));
    assert!(
        e.contains("`ring`") && e.contains("`model`") && e.contains("not manual"),
        "{e}"
    );
    let e = one(&["pipe"], |t| Ok(t.clone()));
    assert!(e.contains("`ring`") && e.contains("`pipe`"), "{e}");
    let e = err(|b, x| {
        Ok(b.shard_map(
            "odd",
            &Mesh::parse("data=3").unwrap(),
            &["data"],
            std::slice::from_ref(x),
            &[PartitionSpec::of(&[&["data"], &[]])],
            &[PartitionSpec::of(&[&["data"], &[]])],
            |_, t| Ok(t.to_vec()),
        )?[0]
            .clone())
    });
    assert!(
        e.contains("`odd`") && e.contains("does not divide") && e.contains("data"),
        "{e}"
    );
    let e = err(|b, x| {
        region(b, x, rows(), rows(), |sb, t| {
            Ok(sb.shard_map(
                "inner",
                &data4(),
                &["data"],
                std::slice::from_ref(t),
                &[rep2()],
                &[rep2()],
                |_, u| Ok(u.to_vec()),
            )?[0]
                .clone())
        })
    });
    assert!(
        e.contains("`inner`") && e.contains("inside manual region `r`"),
        "{e}"
    );
    // GSPMD cannot leave an axis automatic inside a region.
    let b = Builder::new("gspmd_partial");
    let x = b.parameter("x", DType::F64, &[8, 4]).unwrap();
    let y = b
        .shard_map(
            "half",
            &mesh,
            &["data"],
            std::slice::from_ref(&x),
            &[PartitionSpec::of(&[&["data"], &[]])],
            &[PartitionSpec::of(&[&["data"], &[]])],
            |_, t| Ok(vec![t[0].psum(&["data"])?]),
        )
        .unwrap();
    b.output("y", &y[0]).unwrap();
    let ctx = ShardingContext {
        mesh: mesh.clone(),
        logical: Default::default(),
        partitioner: Partitioner::Gspmd,
    };
    let rep = [PartitionSpec::replicated(2)];
    let e = basic::lower::module_sharded(&b.finish(), &ctx, &rep, &rep)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`half`") && e.contains("shardy"), "{e}");
}

/// The README's example, run: a ring of partial sums gives every device the sum of all blocks.
#[test]
fn the_readme_ring_of_partial_sums_sums_every_block() {
    let x = Rng(5).array(&[8, 3], -1.0, 1.0);
    let ring = [(0, 1), (1, 2), (2, 3), (3, 0)];
    let got = run(
        "data=4",
        Partitioner::Shardy,
        std::slice::from_ref(&x),
        &|b: &Builder, xs: &[Tensor]| {
            b.shard_map(
                "ring",
                &Mesh::parse("data=4")?,
                &["data"],
                &xs[..1],
                &[PartitionSpec::of(&[&["data"], &[]])],
                &[PartitionSpec::of(&[&["data"], &[]])],
                |sb, blocks| {
                    let mine = blocks[0].sum(&[0])?;
                    let (done, _) = sb.scan(
                        4,
                        std::slice::from_ref(&mine),
                        &[mine.zeros_like()?],
                        &[],
                        false,
                        |_, own, acc, _| {
                            let acc = acc[0].add(&own[0])?.ppermute("data", &ring)?;
                            Ok((vec![acc], vec![]))
                        },
                    )?;
                    Ok(vec![done[0].reshape(&[1, 3])?])
                },
            )
        },
    );
    let v = x.to_f64_vec();
    let total: Vec<f64> = (0..3).map(|c| (0..8).map(|r| v[r * 3 + c]).sum()).collect();
    let want: Vec<f64> = (0..4).flat_map(|_| total.clone()).collect();
    assert_close(&got[0].to_f64_vec(), &want, 1e-12);
}

/// Programs with collectives running at the same time on devices of the same ids (here two
/// clients of one process, each with 4 devices) each get their own results: every execution
/// has its own launch id, which XLA's CPU runtime uses to pair the devices of one collective
/// (with one id for all, they joined each other's `psum`s and `ppermute`s).
#[test]
fn programs_running_at_once_do_not_join_each_others_collectives() {
    let threads: Vec<_> = (0..3u64)
        .map(|k| {
            std::thread::spawn(move || {
                let x = Rng(40 + k).array(&[8, 4], -1.0, 1.0);
                let v = x.to_f64_vec();
                let mut want: Vec<f64> =
                    (0..4).map(|c| (0..8).map(|r| v[r * 4 + c]).sum()).collect();
                // Row block i moves to device i + 1: the rolled array.
                want.extend((0..32).map(|i| v[(i + 32 - 8) % 32]));
                let (prog, _) = program(
                    "data=4",
                    Partitioner::Shardy,
                    std::slice::from_ref(&x),
                    &|b: &Builder, xs: &[Tensor]| {
                        let sums = region(b, &xs[0], rows(), PartitionSpec::of(&[&[]]), |_, t| {
                            t.sum(&[0])?.psum(&["data"])
                        })?;
                        let rolled = region(b, &xs[0], rows(), rows(), |_, t| {
                            t.ppermute("data", &[(0, 1), (1, 2), (2, 3), (3, 0)])
                        })?;
                        Ok(vec![sums, rolled])
                    },
                );
                for _ in 0..40 {
                    let got = prog.run_host(std::slice::from_ref(&x)).unwrap();
                    let mut g = got[0].to_f64_vec();
                    g.extend(got[1].to_f64_vec());
                    assert_close(&g, &want, 1e-12);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
