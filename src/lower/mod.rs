//! Graph → StableHLO text.
//!
//! Output is deterministic: values are numbered in node order, attributes are written in a fixed
//! order, constants are written exactly (hex where a decimal would not round-trip). Ops are
//! written in MLIR's generic form (`"stablehlo.add"(%0, %1) : (...) -> ...`), which every
//! StableHLO version parses.

use std::fmt::Write;

use crate::dtype::{DType, TensorType};
use crate::error::Result;
use crate::ir::{Graph, Value};
use crate::partition::{PartitionSpec, ShardingContext};
use crate::runtime::Partitioner;

/// The body of a region: writes it on the region's arguments and returns its results and their
/// types.
pub type Region<'a> =
    Box<dyn FnOnce(&mut Emitter, &[String]) -> Result<(Vec<String>, Vec<TensorType>)> + 'a>;

/// `tensor<2x3xf32>`.
pub fn ty(t: &TensorType) -> String {
    let mut s = String::from("tensor<");
    for d in &t.shape {
        let _ = write!(s, "{d}x");
    }
    s.push_str(t.dtype.mlir_name());
    s.push('>');
    s
}

fn tys(ts: &[TensorType]) -> String {
    ts.iter().map(ty).collect::<Vec<_>>().join(", ")
}

/// `array<i64: 1, 2>` (or `array<i64>` when empty).
pub fn i64_array(v: &[i64]) -> String {
    if v.is_empty() {
        "array<i64>".into()
    } else {
        format!(
            "array<i64: {}>",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// `[1, 2]`.
pub fn list<T: std::fmt::Display>(v: &[T]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `dense<[[lo, hi], ...]> : tensor<Rx2xi64>`.
pub fn padding_attr(p: &[(i64, i64)]) -> String {
    if p.is_empty() {
        return "dense<> : tensor<0x2xi64>".into();
    }
    format!(
        "dense<[{}]> : tensor<{}x2xi64>",
        p.iter()
            .map(|(a, b)| format!("[{a}, {b}]"))
            .collect::<Vec<_>>()
            .join(", "),
        p.len()
    )
}

/// Writes one scalar of `dtype` from its little-endian bytes as an MLIR literal.
fn scalar_literal(dtype: DType, b: &[u8]) -> String {
    // Rust's `{:?}` prints the shortest decimal that parses back to the same value of the same
    // width, which MLIR also parses to that value; exponents, infinities and NaNs are written as
    // their bit pattern instead (MLIR's float literals need a `.` and no bare exponent form).
    fn decimal_or_bits(d: String, bits: String) -> String {
        if d.contains('.') && !d.contains('e') && !d.contains("inf") && !d.contains("NaN") {
            d
        } else {
            bits
        }
    }
    let w8 = |b: &[u8]| -> [u8; 8] { b.try_into().unwrap_or_default() };
    let w4 = |b: &[u8]| -> [u8; 4] { b.try_into().unwrap_or_default() };
    match dtype {
        DType::Pred => if b[0] != 0 { "true" } else { "false" }.into(),
        DType::U8 => b[0].to_string(),
        DType::S32 => i32::from_le_bytes(w4(b)).to_string(),
        DType::U32 => u32::from_le_bytes(w4(b)).to_string(),
        DType::S64 => i64::from_le_bytes(w8(b)).to_string(),
        DType::U64 => u64::from_le_bytes(w8(b)).to_string(),
        DType::BF16 => format!("0x{:04X}", u16::from_le_bytes([b[0], b[1]])),
        DType::F32 => {
            let x = f32::from_le_bytes(w4(b));
            decimal_or_bits(format!("{x:?}"), format!("0x{:08X}", x.to_bits()))
        }
        DType::F64 => {
            let x = f64::from_le_bytes(w8(b));
            decimal_or_bits(format!("{x:?}"), format!("0x{:016X}", x.to_bits()))
        }
    }
}

/// `dense<...> : tensor<...>` for a constant.
pub fn dense_attr(t: &TensorType, bytes: &[u8]) -> String {
    let w = t.dtype.size_in_bytes();
    let n = bytes.len() / w;
    let splat = n > 0 && bytes.chunks_exact(w).all(|c| c == &bytes[..w]);
    if splat || n == 1 {
        return format!(
            "dense<{}> : {}",
            scalar_literal(t.dtype, &bytes[..w]),
            ty(t)
        );
    }
    if n == 0 {
        return format!("dense<> : {}", ty(t));
    }
    let mut hex = String::with_capacity(bytes.len() * 2 + 4);
    hex.push_str("\"0x");
    for b in bytes {
        let _ = write!(hex, "{b:02X}");
    }
    hex.push('"');
    format!("dense<{hex}> : {}", ty(t))
}

/// Writes StableHLO text. Values get one function-wide counter (`%0`, `%1`, ...), as nested
/// regions may not redefine a name visible from above.
pub struct Emitter {
    out: String,
    next: usize,
    indent: usize,
    sharding: Option<ShardingContext>,
    /// The manual axes of the regions being written (innermost last).
    manual: Vec<Vec<String>>,
    /// The last channel handle given to a collective (handles are unique in a module).
    channels: u64,
    /// Private functions written beside `@main` (GSPMD manual regions' bodies).
    functions: Vec<String>,
}

impl Emitter {
    pub fn new() -> Emitter {
        Emitter {
            out: String::new(),
            next: 0,
            indent: 2,
            sharding: None,
            manual: Vec::new(),
            channels: 0,
            functions: Vec::new(),
        }
    }

    /// An emitter that writes sharding constraints for this mesh and rules.
    pub fn with_sharding(sharding: Option<ShardingContext>) -> Emitter {
        Emitter {
            sharding,
            ..Emitter::new()
        }
    }

    /// The mesh and partitioner the program is written for, if it is partitioned.
    pub fn sharding(&self) -> Option<&ShardingContext> {
        self.sharding.as_ref()
    }

    /// A fresh channel handle for a collective.
    pub fn next_channel(&mut self) -> u64 {
        self.channels += 1;
        self.channels
    }

    /// Writes the body of a manual region over `manual` axes on `params`: inside, sharding
    /// constraints leave the manual axes out.
    pub fn manual_body(
        &mut self,
        manual: &[String],
        body: &Graph,
        params: &[String],
    ) -> Result<Vec<String>> {
        self.manual.push(manual.to_vec());
        let r = self.graph_body(body, params);
        self.manual.pop();
        r
    }

    /// Writes `body` over manual `axes` as a private function of the module and calls it on
    /// `args` (of types `arg_tys`). A function of its own keeps the compiler from merging the
    /// body's constants with equal ones outside (MLIR uniques constants per function), which would
    /// carry the body's manual sharding out of it: GSPMD then fails a CHECK, aborting the process.
    pub fn call_manual_body(
        &mut self,
        axes: &[String],
        body: &Graph,
        args: &[String],
        arg_tys: &[TensorType],
    ) -> Result<Vec<String>> {
        let name = format!("manual_body_{}", self.functions.len());
        let saved = (std::mem::take(&mut self.out), self.indent);
        self.indent = 2;
        let params: Vec<String> = arg_tys.iter().map(|_| self.fresh()).collect();
        let outs = self.manual_body(axes, body, &params);
        let text = std::mem::replace(&mut self.out, saved.0);
        self.indent = saved.1;
        let outs = outs?;
        let out_tys = body.output_types();
        let header = params
            .iter()
            .zip(arg_tys)
            .map(|(p, t)| format!("{p}: {}", ty(t)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut f = format!(
            "  func.func private @{name}({header}) -> ({}) {{\n",
            tys(&out_tys)
        );
        f.push_str(&text);
        let _ = writeln!(
            f,
            "    \"func.return\"({}) : ({}) -> ()\n  }}",
            outs.join(", "),
            tys(&out_tys)
        );
        self.functions.push(f);
        Ok(self.op(
            "func.call",
            args,
            arg_tys,
            &format!("callee = @{name}"),
            &out_tys,
        ))
    }

    /// `stablehlo.custom_call @target(x)` with `attrs`, from `in_t` to `out_t`.
    pub fn custom_call(
        &mut self,
        target: &str,
        x: &str,
        in_t: &TensorType,
        attrs: &str,
        out_t: &TensorType,
    ) -> String {
        let attrs = format!("call_target_name = \"{target}\", {attrs}");
        self.op1(
            "stablehlo.custom_call",
            &[x.to_string()],
            std::slice::from_ref(in_t),
            &attrs,
            out_t,
        )
    }

    /// A sharding constraint on `x`, or `x` itself when the program is not partitioned. Inside a
    /// manual region the region's manual axes are left out (the block is already the device's);
    /// GSPMD writes none there.
    pub fn sharding_constraint(
        &mut self,
        x: &str,
        t: &TensorType,
        axes: &[Option<String>],
    ) -> Result<Vec<String>> {
        let Some(ctx) = self.sharding.clone() else {
            return Ok(vec![x.to_string()]);
        };
        let manual: Vec<String> = self.manual.concat();
        if ctx.mesh.size() == 1 || (!manual.is_empty() && ctx.partitioner == Partitioner::Gspmd) {
            return Ok(vec![x.to_string()]);
        }
        let what = format!("activation {t} with axes {axes:?}");
        let mut spec = ctx.logical.spec(&what, axes)?;
        for d in &mut spec.0 {
            d.retain(|a| !manual.contains(a));
        }
        if !manual.is_empty() && spec.is_replicated() {
            return Ok(vec![x.to_string()]);
        }
        spec.validate(&what, &t.shape, &ctx.mesh)?;
        Ok(match ctx.partitioner {
            Partitioner::Shardy => self.op(
                "sdy.sharding_constraint",
                &[x.to_string()],
                std::slice::from_ref(t),
                &format!("sharding = {}", spec.sdy()),
                std::slice::from_ref(t),
            ),
            Partitioner::Gspmd => self.op(
                "stablehlo.custom_call",
                &[x.to_string()],
                std::slice::from_ref(t),
                &format!(
                    "call_target_name = \"Sharding\", mhlo.sharding = \"{}\"",
                    spec.hlo(&ctx.mesh)
                ),
                std::slice::from_ref(t),
            ),
        })
    }

    pub fn fresh(&mut self) -> String {
        let s = format!("%{}", self.next);
        self.next += 1;
        s
    }

    pub fn line(&mut self, s: &str) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
        self.out.push_str(s);
        self.out.push('\n');
    }

    fn results(&mut self, n: usize) -> (String, Vec<String>) {
        let r = self.fresh();
        if n == 1 {
            (r.clone(), vec![r])
        } else {
            (
                format!("{r}:{n}"),
                (0..n).map(|i| format!("{r}#{i}")).collect(),
            )
        }
    }

    fn sig(ins: &[TensorType], outs: &[TensorType]) -> String {
        let o = if outs.len() == 1 {
            ty(&outs[0])
        } else {
            format!("({})", tys(outs))
        };
        format!("({}) -> {o}", tys(ins))
    }

    /// One op without regions, in generic form; returns its result names.
    pub fn op(
        &mut self,
        name: &str,
        operands: &[String],
        in_tys: &[TensorType],
        attrs: &str,
        out_tys: &[TensorType],
    ) -> Vec<String> {
        let (lhs, names) = self.results(out_tys.len());
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{attrs}}}")
        };
        let line = format!(
            "{lhs} = \"{name}\"({}){attrs} : {}",
            operands.join(", "),
            Emitter::sig(in_tys, out_tys)
        );
        self.line(&line);
        names
    }

    /// One op without regions and with one result of type `out`; returns its name.
    pub fn op1(
        &mut self,
        name: &str,
        operands: &[String],
        in_tys: &[TensorType],
        attrs: &str,
        out: &TensorType,
    ) -> String {
        let mut names = self.op(name, operands, in_tys, attrs, std::slice::from_ref(out));
        names.pop().unwrap_or_default()
    }

    /// A constant of type `t` whose every element is the literal `lit` (`0.0`, `0x0000`,
    /// `1.0e0`, `true`).
    pub fn constant(&mut self, lit: &str, t: &TensorType) -> String {
        let attr = format!("value = dense<{lit}> : {}", ty(t));
        self.op1("stablehlo.constant", &[], &[], &attr, t)
    }

    /// The `i32` scalar `v` (loop counters and dynamic indices).
    pub fn constant_i32(&mut self, v: i64) -> String {
        self.constant(&v.to_string(), &TensorType::scalar(DType::S32))
    }

    /// Zeros of type `t`: a scalar constant, broadcast unless `t` is a scalar.
    pub fn zeros(&mut self, t: &TensorType) -> String {
        let s = TensorType::scalar(t.dtype);
        let lit = match t.dtype {
            DType::Pred => "false",
            DType::BF16 => "0x0000",
            d if d.is_float() => "0.0",
            _ => "0",
        };
        let z = self.constant(lit, &s);
        if t.rank() == 0 {
            return z;
        }
        let attr = "broadcast_dimensions = array<i64>";
        self.op1("stablehlo.broadcast_in_dim", &[z], &[s], attr, t)
    }

    /// `a OP b` on two values of type `t` (`stablehlo.add`, `stablehlo.subtract`, ...).
    pub fn binary(&mut self, op: &str, a: &str, b: &str, t: &TensorType) -> String {
        let operands = [a.to_string(), b.to_string()];
        self.op1(op, &operands, &[t.clone(), t.clone()], "", t)
    }

    /// `x` of type `from` reshaped to `to`.
    pub fn reshape(&mut self, x: &str, from: &TensorType, to: &TensorType) -> String {
        self.op1(
            "stablehlo.reshape",
            &[x.to_string()],
            std::slice::from_ref(from),
            "",
            to,
        )
    }

    /// Row `index` (an `i32` scalar) of `x : t` along its leading axis, without that axis;
    /// `zero` is an `i32` zero for the other axes' starts.
    pub fn dynamic_row(&mut self, x: &str, t: &TensorType, index: &str, zero: &str) -> String {
        let i32t = TensorType::scalar(DType::S32);
        let mut sizes = t.shape.clone();
        sizes[0] = 1;
        let mut operands = vec![x.to_string(), index.to_string()];
        operands.extend(std::iter::repeat_n(zero.to_string(), t.rank() - 1));
        let mut in_tys = vec![t.clone()];
        in_tys.extend(std::iter::repeat_n(i32t, t.rank()));
        let slice_t = TensorType::new(t.dtype, &sizes);
        let attr = format!("slice_sizes = {}", i64_array(&sizes));
        let row = self.op1(
            "stablehlo.dynamic_slice",
            &operands,
            &in_tys,
            &attr,
            &slice_t,
        );
        self.reshape(&row, &slice_t, &TensorType::new(t.dtype, &t.shape[1..]))
    }

    /// `acc : t` with row `index` of its leading axis replaced by `row` (of `t` without that
    /// axis); `zero` as in [`Emitter::dynamic_row`].
    pub fn update_row(
        &mut self,
        acc: &str,
        t: &TensorType,
        row: &str,
        index: &str,
        zero: &str,
    ) -> String {
        let i32t = TensorType::scalar(DType::S32);
        let mut one_shape = t.shape.clone();
        one_shape[0] = 1;
        let item_t = TensorType::new(t.dtype, &t.shape[1..]);
        let one_t = TensorType::new(t.dtype, &one_shape);
        let r = self.reshape(row, &item_t, &one_t);
        let mut operands = vec![acc.to_string(), r, index.to_string()];
        operands.extend(std::iter::repeat_n(zero.to_string(), t.rank() - 1));
        let mut in_tys = vec![t.clone(), one_t];
        in_tys.extend(std::iter::repeat_n(i32t, t.rank()));
        self.op1("stablehlo.dynamic_update_slice", &operands, &in_tys, "", t)
    }

    /// One op with regions. `regions` each get fresh block arguments of the given types and return
    /// the names their `stablehlo.return` yields.
    #[allow(clippy::type_complexity)]
    pub fn op_with_regions(
        &mut self,
        name: &str,
        operands: &[String],
        in_tys: &[TensorType],
        regions: Vec<(Vec<TensorType>, Region<'_>)>,
        attrs: &str,
        out_tys: &[TensorType],
    ) -> Result<Vec<String>> {
        self.op_with_regions_ending(
            name,
            operands,
            in_tys,
            regions,
            attrs,
            out_tys,
            "stablehlo.return",
        )
    }

    /// [`Emitter::op_with_regions`] whose regions end with `terminator` (`sdy.return`).
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub fn op_with_regions_ending(
        &mut self,
        name: &str,
        operands: &[String],
        in_tys: &[TensorType],
        regions: Vec<(Vec<TensorType>, Region<'_>)>,
        attrs: &str,
        out_tys: &[TensorType],
        terminator: &str,
    ) -> Result<Vec<String>> {
        let (lhs, names) = self.results(out_tys.len());
        self.line(&format!("{lhs} = \"{name}\"({}) ({{", operands.join(", ")));
        let n = regions.len();
        for (i, (arg_tys, body)) in regions.into_iter().enumerate() {
            let args: Vec<String> = arg_tys.iter().map(|_| self.fresh()).collect();
            let header = args
                .iter()
                .zip(&arg_tys)
                .map(|(a, t)| format!("{a}: {}", ty(t)))
                .collect::<Vec<_>>()
                .join(", ");
            self.line(&format!("^bb0({header}):"));
            self.indent += 1;
            let (rets, ret_tys) = body(self, &args)?;
            self.line(&format!(
                "\"{terminator}\"({}) : ({}) -> ()",
                rets.join(", "),
                tys(&ret_tys)
            ));
            self.indent -= 1;
            if i + 1 < n {
                self.line("}, {");
            }
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{attrs}}}")
        };
        self.line(&format!("}}){attrs} : {}", Emitter::sig(in_tys, out_tys)));
        Ok(names)
    }

    /// A region computing `op(a, b)` on scalars of `dtype` (reductions and scatters).
    pub fn scalar_region(
        &mut self,
        op: &str,
        args: &[String],
        dtype: DType,
    ) -> (Vec<String>, Vec<TensorType>) {
        let s = TensorType::scalar(dtype);
        let r = self.op(
            op,
            args,
            &[s.clone(), s.clone()],
            "",
            std::slice::from_ref(&s),
        );
        (r, vec![s])
    }

    /// Emits the nodes of `graph` with its parameters bound to `params`; returns the names of
    /// its outputs.
    pub fn graph_body(&mut self, graph: &Graph, params: &[String]) -> Result<Vec<String>> {
        let mut names: Vec<Vec<String>> = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            if let Some(&crate::ir::Parameter { index, .. }) = node.op.as_parameter() {
                names.push(vec![params[index].clone()]);
                continue;
            }
            let ins: Vec<String> = node
                .inputs
                .iter()
                .map(|v| names[v.node][v.out].clone())
                .collect();
            let in_tys: Vec<TensorType> =
                node.inputs.iter().map(|v| graph.ty(*v).clone()).collect();
            let outs = crate::ops::lower(self, &node.op, &ins, &in_tys, &node.outputs)?;
            names.push(outs);
        }
        Ok(graph
            .outputs
            .iter()
            .map(|(_, v): &(String, Value)| names[v.node][v.out].clone())
            .collect())
    }

    pub fn finish(self) -> String {
        self.out
    }
}

impl Default for Emitter {
    fn default() -> Self {
        Emitter::new()
    }
}

/// Attributes written on `@main`'s arguments and results (shardings, from the partitioner).
#[derive(Clone, Debug, Default)]
pub struct ModuleAttrs {
    /// Extra `module` attributes, e.g. `mhlo.num_partitions = 8 : i32`.
    pub module: Vec<String>,
    /// Lines placed before `func.func` (e.g. `sdy.mesh` declarations).
    pub preamble: Vec<String>,
    /// One attribute dictionary body per parameter (empty for none).
    pub args: Vec<String>,
    /// One attribute dictionary body per output (empty for none).
    pub results: Vec<String>,
}

/// A module partitioned over `ctx`'s mesh: `@main`'s parameters and outputs carry `args` and
/// `results` specs, and the graph's sharding constraints are written out.
pub fn module_sharded(
    graph: &Graph,
    ctx: &ShardingContext,
    args: &[PartitionSpec],
    results: &[PartitionSpec],
) -> Result<String> {
    module_sharded_donating(graph, ctx, args, results, &[])
}

/// [`module_sharded`] where each `(argument, result)` pair of `donate` lets XLA write the result
/// into the argument's buffer (`tf.aliasing_output`): the caller gives the argument up, and
/// parameters and optimizer state are not held twice across a step. Pairs must agree in type
/// and sharding.
pub fn module_sharded_donating(
    graph: &Graph,
    ctx: &ShardingContext,
    args: &[PartitionSpec],
    results: &[PartitionSpec],
    donate: &[(usize, usize)],
) -> Result<String> {
    let out_tys = graph.output_types();
    let in_tys = graph.param_types();
    for &(a, r) in donate {
        let (Some(at), Some(rt)) = (in_tys.get(a), out_tys.get(r)) else {
            return Err(crate::error::Error::invalid(
                format!("donating argument {a} to result {r} of `{}`", graph.name),
                format!(
                    "the graph has {} parameters and {} outputs",
                    in_tys.len(),
                    out_tys.len()
                ),
            ));
        };
        if at != rt || args.get(a) != results.get(r) {
            return Err(crate::error::Error::invalid(
                format!(
                    "donating `{}` ({at}) to output `{}` ({rt}) of `{}`",
                    graph.params[a].0, graph.outputs[r].0, graph.name
                ),
                "a donated argument and its result need the same type and sharding",
            ));
        }
    }
    let alias = |i: usize| {
        donate
            .iter()
            .find(|(a, _)| *a == i)
            .map(|(_, r)| format!("tf.aliasing_output = {r} : i32"))
    };
    let join = |parts: Vec<String>| {
        parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if ctx.mesh.size() == 1 {
        let attrs = ModuleAttrs {
            args: (0..in_tys.len())
                .map(|i| alias(i).unwrap_or_default())
                .collect(),
            ..ModuleAttrs::default()
        };
        return module(graph, &attrs);
    }
    let (module_attrs, preamble) = ctx.module_attrs();
    let attrs = ModuleAttrs {
        module: module_attrs,
        preamble,
        args: args
            .iter()
            .enumerate()
            .map(|(i, s)| {
                join(vec![
                    s.attribute(&ctx.mesh, ctx.partitioner),
                    alias(i).unwrap_or_default(),
                ])
            })
            .collect(),
        results: results
            .iter()
            .map(|s| s.attribute(&ctx.mesh, ctx.partitioner))
            .collect(),
    };
    module_with(graph, &attrs, Some(ctx.clone()))
}

/// The whole module text for a graph: `@main` takes the graph's parameters and returns its outputs.
pub fn module(graph: &Graph, attrs: &ModuleAttrs) -> Result<String> {
    module_with(graph, attrs, None)
}

fn module_with(
    graph: &Graph,
    attrs: &ModuleAttrs,
    sharding: Option<ShardingContext>,
) -> Result<String> {
    let name: String = graph
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut e = Emitter::with_sharding(sharding);
    let params: Vec<String> = (0..graph.params.len())
        .map(|i| format!("%arg{i}"))
        .collect();
    let body_start = e.out.len();
    let outs = e.graph_body(graph, &params)?;
    let body = e.out[body_start..].to_string();
    let out_tys = graph.output_types();
    let with_attr = |t: &TensorType, a: Option<&String>| match a {
        Some(a) if !a.is_empty() => format!("{} {{{a}}}", ty(t)),
        _ => ty(t),
    };
    let args = graph
        .param_types()
        .iter()
        .enumerate()
        .map(|(i, t)| format!("%arg{i}: {}", with_attr(t, attrs.args.get(i))))
        .collect::<Vec<_>>()
        .join(", ");
    let results = out_tys
        .iter()
        .enumerate()
        .map(|(i, t)| with_attr(t, attrs.results.get(i)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = String::new();
    let module_attrs = if attrs.module.is_empty() {
        String::new()
    } else {
        format!(" attributes {{{}}}", attrs.module.join(", "))
    };
    let _ = writeln!(text, "module @{name}{module_attrs} {{");
    for p in &attrs.preamble {
        let _ = writeln!(text, "  {p}");
    }
    let _ = writeln!(text, "  func.func public @main({args}) -> ({results}) {{");
    text.push_str(&body);
    let _ = writeln!(
        text,
        "    \"func.return\"({}) : ({}) -> ()",
        outs.join(", "),
        tys(&out_tys)
    );
    text.push_str("  }\n");
    for f in &e.functions {
        text.push_str(f);
    }
    text.push_str("}\n");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_exact() {
        let t = TensorType::scalar(DType::F32);
        assert_eq!(
            dense_attr(&t, &0.5f32.to_le_bytes()),
            "dense<0.5> : tensor<f32>"
        );
        assert_eq!(
            dense_attr(&t, &0.1f32.to_le_bytes()),
            "dense<0.1> : tensor<f32>"
        );
        assert_eq!(
            dense_attr(&t, &1e-30f32.to_le_bytes()),
            "dense<0x0DA24260> : tensor<f32>"
        );
        assert_eq!(
            dense_attr(&t, &f32::NEG_INFINITY.to_le_bytes()),
            "dense<0xFF800000> : tensor<f32>"
        );
        let t = TensorType::new(DType::S32, &[2]);
        let mut b = 1i32.to_le_bytes().to_vec();
        b.extend(2i32.to_le_bytes());
        assert_eq!(
            dense_attr(&t, &b),
            "dense<\"0x0100000002000000\"> : tensor<2xi32>"
        );
    }
}
