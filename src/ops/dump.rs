//! A readable dump of a graph: one equation per line, each op named by its rule.

use std::fmt;

use crate::dtype::TensorType;
use crate::ir::{Graph, Value};

use super::rule;

fn fmt_ty(t: &TensorType) -> String {
    format!(
        "{}[{}]",
        t.dtype,
        t.shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

impl fmt::Display for Graph {
    /// A readable dump: one equation per line, `%node.out` names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |x: &Value| {
            if x.out == 0 {
                format!("%{}", x.node)
            } else {
                format!("%{}.{}", x.node, x.out)
            }
        };
        writeln!(
            f,
            "graph {}({}) {{",
            self.name,
            self.params
                .iter()
                .map(|(n, x)| format!("{n}: {}", fmt_ty(self.ty(*x))))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.op.is_parameter() {
                continue;
            }
            let outs = n.outputs.iter().map(fmt_ty).collect::<Vec<_>>().join(", ");
            let attrs = n.op.dump_attrs();
            writeln!(
                f,
                "  %{i} = {}{}({}) : {outs}{}{}",
                rule(&n.op).name(),
                attrs,
                n.inputs.iter().map(v).collect::<Vec<_>>().join(", "),
                n.name
                    .as_ref()
                    .map(|s| format!("  # {s}"))
                    .unwrap_or_default(),
                n.region
                    .map(|r| format!("  [remat {r}]"))
                    .unwrap_or_default(),
            )?;
        }
        writeln!(
            f,
            "  return {}\n}}",
            self.outputs
                .iter()
                .map(|(n, x)| format!("{n}={}", v(x)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Floating-point operations of matrix products and convolutions in `graph` (2 per
/// multiply–add), loops counted as many times as they run: the analytic FLOPs of a program,
/// summed from each op's [`super::Rule::flops`].
pub fn flops(graph: &Graph) -> f64 {
    graph
        .nodes
        .iter()
        .map(|n| {
            let ins: Vec<TensorType> = n.inputs.iter().map(|v| graph.ty(*v).clone()).collect();
            rule(&n.op).flops(&ins, &n.outputs)
        })
        .sum()
}
