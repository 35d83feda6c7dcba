//! Per primitive: a golden StableHLO snippet under `graphs/golden/` (run with `BLESS=1` to
//! rewrite them after a reviewed change), the snippet compiling on every CPU plugin, and a
//! reverse-mode gradient checked against central finite differences in f64.

mod common;

use basic::ir::{ConvAttrs, ConvDims, DotDims, ReduceKind, Window};
use basic::partition::{Mesh, PartitionSpec, ShardingContext};
use basic::runtime::{CompileOptions, HostArray, Partitioner, Runtime};
use basic::trace::{Builder, Tensor};
use basic::Result;
use common::{check_grads_step, cpu_plugins, Rng};

type F = Box<dyn Fn(&Builder, &[Tensor]) -> Result<Tensor>>;

struct Case {
    name: &'static str,
    inputs: Vec<HostArray>,
    f: F,
    /// Finite-difference tolerance; `None` for ops without a gradient to check (or, for manual
    /// regions, checked over devices in tests/manual_regions.rs).
    tol: Option<f64>,
    /// Finite-difference step.
    h: f64,
    /// The mesh and partitioner a manual region's case is emitted over (inputs and outputs
    /// replicated); `None`: one device.
    mesh: Option<(&'static str, Partitioner)>,
}

fn case(
    name: &'static str,
    inputs: Vec<HostArray>,
    f: impl Fn(&Builder, &[Tensor]) -> Result<Tensor> + 'static,
) -> Case {
    Case {
        name,
        inputs,
        f: Box::new(f),
        tol: Some(1e-6),
        h: 1e-6,
        mesh: None,
    }
}

fn s32(v: i32) -> HostArray {
    HostArray::scalar(v)
}

fn conv(
    strides: [i64; 2],
    padding: [(i64, i64); 2],
    lhs_d: [i64; 2],
    rhs_d: [i64; 2],
    groups: i64,
) -> ConvAttrs {
    ConvAttrs {
        strides: strides.to_vec(),
        padding: padding.to_vec(),
        lhs_dilation: lhs_d.to_vec(),
        rhs_dilation: rhs_d.to_vec(),
        feature_groups: groups,
        batch_groups: 1,
        dims: ConvDims::nhwc(2),
    }
}

/// `dot_general`'s dimension numbers: batch and contracted dimensions of each operand.
fn dims(
    lhs_batch: &[usize],
    rhs_batch: &[usize],
    lhs_contract: &[usize],
    rhs_contract: &[usize],
) -> DotDims {
    DotDims {
        lhs_batch: lhs_batch.to_vec(),
        rhs_batch: rhs_batch.to_vec(),
        lhs_contract: lhs_contract.to_vec(),
        rhs_contract: rhs_contract.to_vec(),
    }
}

fn cases() -> Vec<Case> {
    let mut r = Rng(42);
    let mut a = |shape: &[i64]| r.array(shape, -1.0, 1.0);
    let mut p = Rng(43);
    let mut pos = |shape: &[i64]| p.array(shape, 0.5, 2.0);
    let mut v = vec![
        case("add", vec![a(&[2, 3]), a(&[2, 3])], |_, x| x[0].add(&x[1])),
        case("sub", vec![a(&[2, 3]), a(&[2, 3])], |_, x| x[0].sub(&x[1])),
        case("mul", vec![a(&[2, 3]), a(&[2, 3])], |_, x| x[0].mul(&x[1])),
        case("div", vec![a(&[2, 3]), pos(&[2, 3])], |_, x| {
            x[0].div(&x[1])
        }),
        case("neg", vec![a(&[4])], |_, x| x[0].neg()),
        case("abs", vec![pos(&[4])], |_, x| x[0].neg()?.abs()),
        case("exp", vec![a(&[4])], |_, x| x[0].exp()),
        case("log", vec![pos(&[4])], |_, x| x[0].log()),
        case("log1p", vec![pos(&[4])], |_, x| x[0].log1p()),
        case("tanh", vec![a(&[4])], |_, x| x[0].tanh()),
        case("logistic", vec![a(&[4])], |_, x| x[0].logistic()),
        case("sqrt", vec![pos(&[4])], |_, x| x[0].sqrt()),
        case("rsqrt", vec![pos(&[4])], |_, x| x[0].rsqrt()),
        case("pow", vec![pos(&[4]), a(&[4])], |_, x| x[0].pow(&x[1])),
        case("max", vec![a(&[5]), a(&[5])], |_, x| x[0].max(&x[1])),
        case("min", vec![a(&[5]), a(&[5])], |_, x| x[0].min(&x[1])),
        case("sin", vec![a(&[4])], |_, x| x[0].sin()),
        case("cos", vec![a(&[4])], |_, x| x[0].cos()),
        case("erf", vec![a(&[4])], |_, x| x[0].erf()),
        case("erfc", vec![a(&[4])], |_, x| x[0].mul_scalar(2.0)?.erfc()),
        // Both signs of the tanh's argument and its saturated tails (|x| up to 4).
        case("gelu_tanh", vec![a(&[8])], |_, x| {
            x[0].mul_scalar(4.0)?.gelu()
        }),
        // The exact GELU through its left tail (x down to -5, where `1 + erf` would cancel).
        case("gelu", vec![a(&[8])], |_, x| {
            x[0].mul_scalar(5.0)?.gelu_exact()
        }),
        // QuickGELU's sigmoid on both sides of zero and saturated (|1.702x| up to ~10).
        case("quick_gelu", vec![a(&[8])], |_, x| {
            x[0].mul_scalar(6.0)?.quick_gelu()
        }),
        case("compare_select", vec![a(&[6]), a(&[6])], |_, x| {
            Tensor::select(&x[0].lt(&x[1])?, &x[0].mul(&x[1])?, &x[1].exp()?)
        }),
        // Through f32 the function is quantised at ~1e-7: a wide step keeps rounding out of the
        // difference (the function is linear, so the step adds no truncation error).
        Case {
            tol: Some(1e-4),
            h: 1e-2,
            ..case("convert", vec![a(&[4])], |_, x| {
                x[0].convert(basic::DType::F32)?
                    .mul_scalar(3.0)?
                    .convert(basic::DType::F64)
            })
        },
        case(
            "dot_general_batch",
            vec![a(&[2, 3, 4]), a(&[2, 4, 5])],
            |_, x| x[0].batch_matmul(&x[1]),
        ),
        case(
            "dot_general_permuted",
            vec![a(&[4, 2, 3]), a(&[3, 2, 5])],
            |_, x| x[0].dot_general(&x[1], dims(&[1], &[1], &[2], &[0])),
        ),
        case(
            "dot_general_two_contractions",
            vec![a(&[3, 2, 4]), a(&[4, 5, 3])],
            |_, x| x[0].dot_general(&x[1], dims(&[], &[], &[2, 0], &[0, 2])),
        ),
        // Activations times a weight: the rhs cotangent is one matrix product over the
        // flattened leading dimensions.
        case(
            "dot_general_leading_free",
            vec![a(&[2, 3, 4]), a(&[4, 2, 5])],
            |_, x| x[0].dot_general(&x[1], dims(&[], &[], &[2], &[0])),
        ),
        // Flattened too, with the contracted dimensions in another order in the rhs.
        case(
            "dot_general_leading_free_permuted",
            vec![a(&[2, 3, 4]), a(&[4, 3, 5])],
            |_, x| x[0].dot_general(&x[1], dims(&[], &[], &[1, 2], &[1, 0])),
        ),
        case("broadcast_in_dim", vec![a(&[3]), a(&[3, 1])], |_, x| {
            x[0].broadcast_to(&[2, 3])?
                .add(&x[1].broadcast_in_dim(&[3, 2], &[0, 1])?.t()?)
        }),
        case("broadcast_in_dim_permuted", vec![a(&[2, 3])], |_, x| {
            x[0].broadcast_in_dim(&[3, 4, 2], &[2, 0])
        }),
        case("reshape", vec![a(&[2, 6])], |_, x| x[0].reshape(&[3, 2, 2])),
        case("transpose", vec![a(&[2, 3, 4])], |_, x| {
            x[0].transpose(&[2, 0, 1])
        }),
        case("reverse", vec![a(&[3, 4])], |_, x| x[0].reverse(&[1])),
        // Slices of one value: tiling an axis with a gap (their cotangents are one
        // concatenate), overlapping, and along two axes (padded and summed).
        case("slices_tiling_an_axis", vec![a(&[6, 4])], |_, x| {
            let (p, q, r) = (
                x[0].slice_axis(0, 0, 2)?,
                x[0].slice_axis(0, 2, 3)?,
                x[0].slice_axis(0, 4, 6)?,
            );
            p.mul(&r)?.add(&q.sin()?)
        }),
        case("slices_overlapping", vec![a(&[5, 3])], |_, x| {
            x[0].slice_axis(0, 0, 3)?.mul(&x[0].slice_axis(0, 2, 5)?)
        }),
        case("slices_along_two_axes", vec![a(&[4, 4])], |_, x| {
            x[0].slice_axis(0, 0, 2)?
                .mul(&x[0].slice_axis(1, 0, 2)?.t()?)
        }),
        case("slice", vec![a(&[5, 6])], |_, x| {
            x[0].slice(&[1, 0], &[5, 5], &[2, 3])
        }),
        case("dynamic_slice", vec![a(&[5, 4]), s32(2), s32(1)], |b, x| {
            let _ = b;
            x[0].dynamic_slice(&x[1..], &[2, 3])
        }),
        case(
            "dynamic_update_slice",
            vec![a(&[5, 4]), a(&[2, 2]), s32(3), s32(1)],
            |_, x| x[0].dynamic_update_slice(&x[1], &x[2..]),
        ),
        case(
            "concatenate",
            vec![a(&[2, 3]), a(&[2, 1]), a(&[2, 2])],
            |_, x| Tensor::concat(x, 1),
        ),
        case("pad", vec![a(&[3, 4]), a(&[])], |_, x| {
            x[0].pad(&x[1], &[1, -1], &[2, 0], &[1, 2])
        }),
        case("reduce_sum", vec![a(&[2, 3, 4])], |_, x| x[0].sum(&[0, 2])),
        case("reduce_max", vec![a(&[3, 5])], |_, x| x[0].max_over(&[1])),
        case("reduce_min", vec![a(&[3, 5])], |_, x| x[0].min_over(&[0])),
        case("max_pool", vec![a(&[1, 5, 5, 2])], |_, x| {
            x[0].max_pool2d([3, 3], [2, 2], [(1, 1), (1, 1)])
        }),
        case("reduce_window_sum", vec![a(&[2, 5, 4, 3])], |_, x| {
            x[0].reduce_window(
                ReduceKind::Sum,
                Window {
                    dims: vec![1, 2, 3, 1],
                    strides: vec![1, 2, 1, 1],
                    padding: vec![(0, 0), (1, 0), (0, 2), (0, 0)],
                },
            )
        }),
        case("avg_pool", vec![a(&[1, 4, 4, 2])], |_, x| {
            x[0].avg_pool2d([2, 2], [2, 2], [(0, 0), (0, 0)])
        }),
        case("conv", vec![a(&[2, 5, 5, 3]), a(&[3, 3, 3, 4])], |_, x| {
            x[0].conv(&x[1], conv([1, 1], [(1, 1), (1, 1)], [1, 1], [1, 1], 1))
        }),
        case(
            "conv_strided",
            vec![a(&[1, 7, 6, 2]), a(&[3, 2, 2, 3])],
            |_, x| x[0].conv(&x[1], conv([2, 3], [(1, 0), (0, 2)], [1, 1], [1, 1], 1)),
        ),
        case(
            "conv_dilated",
            vec![a(&[1, 7, 7, 2]), a(&[2, 2, 2, 2])],
            |_, x| x[0].conv(&x[1], conv([1, 1], [(0, 0), (1, 1)], [1, 1], [2, 3], 1)),
        ),
        case(
            "conv_lhs_dilated",
            vec![a(&[1, 3, 3, 2]), a(&[2, 2, 2, 1])],
            |_, x| x[0].conv(&x[1], conv([1, 1], [(1, 1), (0, 0)], [2, 2], [1, 1], 1)),
        ),
        case(
            "conv_depthwise",
            vec![a(&[2, 5, 5, 3]), a(&[3, 3, 1, 3])],
            |_, x| x[0].conv(&x[1], conv([1, 1], [(1, 1), (1, 1)], [1, 1], [1, 1], 3)),
        ),
        case(
            "conv_grouped",
            vec![a(&[1, 4, 4, 4]), a(&[2, 2, 2, 6])],
            |_, x| x[0].conv(&x[1], conv([2, 2], [(0, 0), (0, 0)], [1, 1], [1, 1], 2)),
        ),
        case(
            "gather",
            vec![
                a(&[5, 3]),
                HostArray::new(&[2, 3], &[4i32, 0, 4, 1, 1, 2]).unwrap(),
            ],
            |_, x| x[0].take_rows(&x[1]),
        ),
        case(
            "scatter_add",
            vec![
                a(&[4, 2]),
                HostArray::new(&[3], &[1i32, 3, 1]).unwrap(),
                a(&[3, 2]),
            ],
            |_, x| x[0].scatter_add_rows(&x[1], &x[2]),
        ),
        case("optimization_barrier", vec![a(&[3]), a(&[3])], |b, x| {
            let y = b.optimization_barrier(&[x[0].exp()?, x[1].clone()])?;
            y[0].mul(&y[1])
        }),
        case("scan", vec![a(&[3]), a(&[4, 3]), a(&[3])], |b, x| {
            // carry ← tanh(carry · w_i + c): a loop over stacked per-step weights.
            let (carry, ys) = b.scan(
                4,
                &[x[2].clone()],
                &[x[0].clone()],
                &[x[1].clone()],
                false,
                |_, c, k, xs| {
                    let next = k[0].mul(&xs[0])?.add(&c[0])?.tanh()?;
                    Ok((vec![next.clone()], vec![next.sin()?]))
                },
            )?;
            ys[0].sum(&[0])?.add(&carry[0])
        }),
        case("scan_reverse", vec![a(&[2]), a(&[3, 2])], |b, x| {
            let (carry, _) = b.scan(
                3,
                &[],
                &[x[0].clone()],
                &[x[1].clone()],
                true,
                |i, _, k, xs| {
                    let fi = i.convert(basic::DType::F64)?.add_scalar(1.0)?;
                    Ok((vec![k[0].mul(&xs[0])?.add(&fi)?.sin()?], vec![]))
                },
            )?;
            Ok(carry[0].clone())
        }),
    ];
    let mut r = Rng(44);
    let mut a = |shape: &[i64]| r.array(shape, -1.0, 1.0);
    let mut p = Rng(45);
    let mut pos = |shape: &[i64]| p.array(shape, 0.5, 2.0);
    let u32s = |v: &[u32]| HostArray::new(&[v.len() as i64], v).unwrap();
    // The remainder's derivative: 1 in the dividend, -trunc(a / b) in the divisor (the
    // inputs keep a / b away from the integers, where it jumps).
    v.push(case("rem", vec![a(&[4]), pos(&[4])], |_, x| {
        x[0].rem(&x[1])
    }));
    // sign and floor have zero derivatives: sign(x)·x = |x| and floor(x) + x.
    v.push(case("sign", vec![a(&[4])], |_, x| x[0].sign()?.mul(&x[0])));
    v.push(case("floor", vec![a(&[4])], |_, x| {
        x[0].mul_scalar(3.0)?.floor()?.add(&x[0])
    }));
    v.push(case("not", vec![a(&[5]), a(&[5])], |_, x| {
        Tensor::select(&x[0].lt(&x[1])?.not()?, &x[0], &x[1])
    }));
    v.push(Case {
        tol: None,
        ..case(
            "bitwise",
            vec![u32s(&[0xF0F0, 7, 12345]), u32s(&[0x0FF0, 5, 999])],
            |_, x| x[0].and(&x[1])?.or(&x[0].not()?)?.xor(&x[1]),
        )
    });
    v.push(Case {
        tol: None,
        ..case(
            "shifts",
            vec![u32s(&[1, 0x8000_0000, 12345]), u32s(&[3, 31, 4])],
            |_, x| x[0].shift_left(&x[1])?.shift_right_logical(&x[1]),
        )
    });
    v.push(Case {
        tol: None,
        ..case("bitcast", vec![a(&[3])], |_, x| {
            x[0].bitcast(basic::DType::U64)?.bitcast(basic::DType::F64)
        })
    });
    v.push(Case {
        tol: None,
        ..case(
            "select_and_scatter_add",
            vec![a(&[1, 4, 4, 1]), a(&[1, 2, 2, 1])],
            |_, x| {
                x[0].select_and_scatter_add(
                    &x[1],
                    Window {
                        dims: vec![1, 2, 2, 1],
                        strides: vec![1, 2, 2, 1],
                        padding: vec![(0, 0); 4],
                    },
                )
            },
        )
    });
    // stop_gradient emits nothing; its gradient is checked by hand below (finite differences see
    // through it).
    v.push(Case {
        tol: None,
        ..case("stop_gradient", vec![a(&[3])], |_, x| {
            basic::trace::stop_gradient(&x[0])?.mul(&x[0])
        })
    });
    // Without a mesh a constraint lowers to nothing; with one, see
    // `sharding_constraints_lower_to_each_partitioner_s_line`.
    v.push(case("sharding_constraint", vec![a(&[4, 2])], |_, x| {
        x[0].constrain(&[Some("batch"), None])?.sin()
    }));
    v.push(Case {
        tol: None,
        ..case("iota", vec![], |b, _| b.iota(basic::DType::F64, &[2, 3], 1))
    });
    v.push(Case {
        tol: None,
        ..case(
            "rng_bit_generator",
            vec![HostArray::new(&[2], &[1u64, 2]).unwrap()],
            |_, x| Ok(x[0].random_bits(&[4])?.1),
        )
    });
    v.extend(collective_cases(Partitioner::Shardy, "shardy"));
    v.extend(collective_cases(Partitioner::Gspmd, "gspmd"));
    v
}

/// The case's graph: its function of parameters `x0, x1, ...`, output `y`.
fn graph(c: &Case) -> basic::ir::Graph {
    let b = Builder::new(c.name);
    let ps: Vec<Tensor> = c
        .inputs
        .iter()
        .enumerate()
        .map(|(i, a)| b.parameter(&format!("x{i}"), a.dtype(), a.shape()).unwrap())
        .collect();
    let y = (c.f)(&b, &ps).unwrap();
    b.output("y", &y).unwrap();
    b.finish()
}

/// A manual region's case: `f` over blocks of `x0` split along its first dimension over `data`
/// (the one mesh axis), returning replicated results.
fn region(
    name: &'static str,
    inputs: Vec<HostArray>,
    partitioner: Partitioner,
    body: impl Fn(&Builder, &[Tensor]) -> Result<Tensor> + 'static,
) -> Case {
    Case {
        tol: None,
        mesh: Some(("data=4", partitioner)),
        ..case(name, inputs, move |b, x| {
            let mesh = Mesh::parse("data=4")?;
            let rank = x[0].rank();
            let mut split = vec![vec!["data".to_string()]];
            split.extend(vec![vec![]; rank - 1]);
            let out = b.shard_map(
                name,
                &mesh,
                &["data"],
                &x[..1],
                &[PartitionSpec(split)],
                &[PartitionSpec::replicated(rank)],
                |sb, blocks| Ok(vec![body(sb, blocks)?]),
            )?;
            Ok(out[0].clone())
        })
    }
}

/// The collectives, each in a region over `data=4`, for one partitioner: `psum`, `all_gather`,
/// `psum_scatter`, `ppermute`, `all_to_all` and `axis_index` (all results made replicated).
fn collective_cases(p: Partitioner, tag: &'static str) -> Vec<Case> {
    let x = || Rng(9).array(&[8, 4], -1.0, 1.0);
    let names: [&'static str; 6] = match tag {
        "shardy" => [
            "psum_shardy",
            "all_gather_shardy",
            "psum_scatter_shardy",
            "ppermute_shardy",
            "all_to_all_shardy",
            "axis_index_shardy",
        ],
        _ => [
            "psum_gspmd",
            "all_gather_gspmd",
            "psum_scatter_gspmd",
            "ppermute_gspmd",
            "all_to_all_gspmd",
            "axis_index_gspmd",
        ],
    };
    vec![
        region(names[0], vec![x()], p, |_, b| {
            b[0].psum(&["data"])?.all_gather(&["data"], 0)
        }),
        region(names[1], vec![x()], p, |_, b| b[0].all_gather(&["data"], 0)),
        region(names[2], vec![x()], p, |_, b| {
            b[0].psum_scatter(&["data"], 1)?.all_gather(&["data"], 0)
        }),
        region(names[3], vec![x()], p, |_, b| {
            b[0].ppermute("data", &[(0, 1), (1, 2), (2, 3), (3, 0)])?
                .all_gather(&["data"], 0)
        }),
        region(names[4], vec![x()], p, |_, b| {
            b[0].all_to_all("data", 1, 0)?.all_gather(&["data"], 1)
        }),
        region(names[5], vec![x()], p, |sb, b| {
            let i = sb.axis_index("data")?.convert(basic::DType::F64)?;
            b[0].add(&i.broadcast_to(b[0].shape())?)?
                .all_gather(&["data"], 0)
        }),
    ]
}

fn emit(c: &Case) -> String {
    let g = graph(c);
    match c.mesh {
        None => basic::lower::module(&g, &Default::default()).unwrap(),
        Some((mesh, partitioner)) => {
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
            let (args, results) = (rep(g.param_types()), rep(g.output_types()));
            basic::lower::module_sharded(&g, &ctx, &args, &results).unwrap()
        }
    }
}

#[test]
fn golden_stablehlo_per_primitive() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/golden");
    let bless = std::env::var_os("BLESS").is_some();
    let mut mismatches = Vec::new();
    for c in cases() {
        let text = emit(&c);
        assert_eq!(text, emit(&c), "{}: emission must be deterministic", c.name);
        let path = dir.join(format!("{}.mlir", c.name));
        if bless {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == text => {}
            Ok(_) => mismatches.push(format!("{} differs from {}", c.name, path.display())),
            Err(_) => mismatches.push(format!("{} has no golden file {}", c.name, path.display())),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\n(review the change, then rerun with BLESS=1)",
        mismatches.join("\n")
    );
}

/// The op types a graph uses, its loop bodies' included.
fn op_types(g: &basic::ir::Graph, out: &mut std::collections::BTreeSet<&'static str>) {
    for n in &g.nodes {
        out.insert(n.op.type_name());
        if let Some(s) = n.op.as_scan() {
            op_types(&s.body, out);
        }
        if let Some(r) = n.op.as_manual() {
            op_types(&r.body, out);
        }
    }
}

/// Every op type of every family has a golden case: a new op cannot land without one.
#[test]
fn every_op_type_has_a_golden_case() {
    let mut covered = std::collections::BTreeSet::new();
    for c in cases() {
        op_types(&graph(&c), &mut covered);
    }
    let missing: Vec<&str> = basic::ir::Op::all_types()
        .into_iter()
        .filter(|t| !covered.contains(t))
        .collect();
    assert!(
        missing.is_empty(),
        "op types without a golden case: {missing:?}"
    );
}

#[test]
fn golden_snippets_compile_on_every_cpu_plugin() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/golden");
    for (name, path) in cpu_plugins() {
        let rt = Runtime::open_path(&path, Some(4)).unwrap();
        for c in cases() {
            let text = std::fs::read_to_string(dir.join(format!("{}.mlir", c.name))).unwrap();
            let options = match c.mesh {
                None => CompileOptions::single(),
                Some((mesh, p)) => {
                    CompileOptions::spmd(Mesh::parse(mesh).unwrap().size() as usize, p)
                }
            };
            rt.client()
                .compile(&text, &options)
                .unwrap_or_else(|e| panic!("{name}: {}: {e}", c.name));
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    for c in cases() {
        if let Some(tol) = c.tol {
            check_grads_step(c.name, &c.inputs, &c.f, tol, c.h);
        }
    }
}

#[test]
fn cotangents_of_slices_that_tile_an_axis_are_one_concatenate() {
    // q, k and v cut from one fused projection: the gradient of the projection is the three
    // cotangents side by side, not three zero-padded copies summed.
    let b = Builder::new("qkv");
    let x = b.parameter("x", basic::DType::F32, &[4, 9]).unwrap();
    let parts: Vec<Tensor> = (0..3)
        .map(|i| x.slice_axis(1, 3 * i, 3 * i + 3).unwrap())
        .collect();
    let loss = parts[0]
        .mul(&parts[1])
        .unwrap()
        .add(&parts[2].sin().unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g = basic::autodiff::grad(&loss, std::slice::from_ref(&x)).unwrap();
    b.output("g", &g[0]).unwrap();
    let text = basic::lower::module(&b.finish(), &Default::default()).unwrap();
    assert!(text.contains("stablehlo.concatenate"), "{text}");
    assert!(!text.contains("stablehlo.pad"), "{text}");
}

#[test]
fn stop_gradient_passes_no_gradient() {
    // d/dx [stop(x) · x] = stop(x) = x, where finite differences would see 2x.
    let b = Builder::new("stop");
    let x = b.parameter("x", basic::DType::F64, &[3]).unwrap();
    let y = basic::trace::stop_gradient(&x)
        .unwrap()
        .mul(&x)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = basic::autodiff::grad(&y, std::slice::from_ref(&x)).unwrap();
    b.output("g", &g[0]).unwrap();
    let out = common::compile_graph(&b.finish())
        .run(&[HostArray::new(&[3], &[1.0f64, -2.0, 0.5]).unwrap()])
        .unwrap();
    assert_eq!(out[0].to_vec::<f64>().unwrap(), vec![1.0, -2.0, 0.5]);
}

#[test]
fn integer_primitives_compute_what_they_say() {
    // Hand-worked: ((a & b) | !a) ^ b, and (a << b) >> b, on u32 (b₀ = 4080 shifts everything out).
    let b = Builder::new("ints");
    let x = b.parameter("a", basic::DType::U32, &[3]).unwrap();
    let y = b.parameter("b", basic::DType::U32, &[3]).unwrap();
    let bits = x
        .and(&y)
        .unwrap()
        .or(&x.not().unwrap())
        .unwrap()
        .xor(&y)
        .unwrap();
    let shifted = x.shift_left(&y).unwrap().shift_right_logical(&y).unwrap();
    b.output("bits", &bits).unwrap();
    b.output("shifted", &shifted).unwrap();
    let (av, bv) = ([0xF0F0u32, 7, 0x8000_0001], [0x0FF0u32, 5, 31]);
    let out = common::compile_graph(&b.finish())
        .run(&[
            HostArray::new(&[3], &av).unwrap(),
            HostArray::new(&[3], &bv).unwrap(),
        ])
        .unwrap();
    let want_bits: Vec<u32> = (0..3).map(|i| ((av[i] & bv[i]) | !av[i]) ^ bv[i]).collect();
    // StableHLO shifts by the bit width or more give 0 (Rust would mask the amount instead).
    let shl = |a: u32, s: u32| if s >= 32 { 0 } else { a << s };
    let shr = |a: u32, s: u32| if s >= 32 { 0 } else { a >> s };
    let want_shift: Vec<u32> = (0..3).map(|i| shr(shl(av[i], bv[i]), bv[i])).collect();
    assert_eq!(out[0].to_vec::<u32>().unwrap(), want_bits);
    assert_eq!(out[1].to_vec::<u32>().unwrap(), want_shift);
}

#[test]
fn sharding_constraints_lower_to_each_partitioner_s_line() {
    use basic::partition::{LogicalRules, Mesh, PartitionSpec, ShardingContext};
    use basic::runtime::Partitioner;
    let b = Builder::new("constrained");
    let x = b.parameter("x", basic::DType::F32, &[8, 2]).unwrap();
    let y = x.constrain(&[Some("batch"), None]).unwrap().sin().unwrap();
    b.output("y", &y).unwrap();
    let g = b.finish();
    let mut logical = std::collections::BTreeMap::new();
    logical.insert("batch".to_string(), vec!["data".to_string()]);
    for (partitioner, line) in [
        (
            Partitioner::Shardy,
            "%0 = \"sdy.sharding_constraint\"(%arg0) {sharding = #sdy.sharding<@mesh, [{\"data\"}, {}]>} : (tensor<8x2xf32>) -> tensor<8x2xf32>",
        ),
        (
            Partitioner::Gspmd,
            "%0 = \"stablehlo.custom_call\"(%arg0) {call_target_name = \"Sharding\", mhlo.sharding = \"{devices=[4,1]0,1,2,3}\"} : (tensor<8x2xf32>) -> tensor<8x2xf32>",
        ),
    ] {
        let ctx = ShardingContext {
            mesh: Mesh::parse("data=4").unwrap(),
            logical: LogicalRules(logical.clone()),
            partitioner,
        };
        let text = basic::exec::emit(
            &g,
            &ctx,
            &[PartitionSpec::replicated(2)],
            &[PartitionSpec::replicated(2)],
            &[],
        )
        .unwrap();
        assert!(text.contains(line), "{partitioner:?}: no `{line}` in\n{text}");
    }
}
