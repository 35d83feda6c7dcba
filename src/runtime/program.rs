//! What the runtime reads from a StableHLO program before handing it to the plugin: the types of
//! `@main`'s arguments and results and their shardings, so that every argument can be checked
//! against the program (the plugins check only byte sizes).
//!
//! This is not an MLIR parser: it reads the pretty-printed signature of `func.func @main`, the
//! `mhlo.sharding` / `sdy.sharding` attributes on it and `sdy.mesh` declarations, which is what
//! `basic` emits and what JAX emits.

use std::collections::BTreeMap;

use crate::dtype::TensorType;
use crate::error::{Error, Result};

/// How many pieces each dimension is cut into on each device (1 = whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tiling(pub Vec<i64>);

impl Tiling {
    /// The shape one device holds: `ceil(dim / tiles)` per dimension, as XLA pads uneven shards.
    pub fn shard_shape(&self, global: &[i64]) -> Vec<i64> {
        global
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let t = self.0.get(i).copied().unwrap_or(1).max(1);
                (d + t - 1) / t
            })
            .collect()
    }
}

/// One argument or result of `@main`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub ty: TensorType,
    /// `None` when the value carries no sharding (replicated, or a single-device program).
    pub tiling: Option<Tiling>,
    /// For an argument: the result it is donated to (`tf.aliasing_output = K`), whose buffer
    /// XLA may write over it. The caller's buffer is consumed by the execute.
    pub donated_to: Option<usize>,
}

impl Param {
    /// The type of the piece each device holds.
    pub fn per_device(&self) -> TensorType {
        match &self.tiling {
            None => self.ty.clone(),
            Some(t) => TensorType {
                dtype: self.ty.dtype,
                shape: t.shard_shape(&self.ty.shape),
            },
        }
    }
}

/// The signature of a program's `@main`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub args: Vec<Param>,
    pub results: Vec<Param>,
}

impl Signature {
    /// Reads `@main`'s signature from StableHLO text.
    pub fn from_program(text: &str) -> Result<Signature> {
        let meshes = parse_meshes(text)?;
        let start = find_main(text).ok_or_else(|| {
            Error::Program(
                "no `func.func @main` found; the entry function of a program must be `@main`"
                    .into(),
            )
        })?;
        let rest = &text[start..];
        let (args_text, after) = take_balanced(rest, '(', ')')
            .ok_or_else(|| Error::Program("unbalanced parentheses in @main's arguments".into()))?;
        let args = split_top_level(args_text, ',')
            .into_iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                let a = a.trim();
                let colon = a
                    .find(':')
                    .ok_or_else(|| Error::Program(format!("cannot read @main argument `{a}`")))?;
                parse_param(&a[colon + 1..], &meshes)
            })
            .collect::<Result<Vec<_>>>()?;
        let after = after.trim_start();
        let results = if let Some(r) = after.strip_prefix("->") {
            let r = r.trim_start();
            if r.starts_with('(') {
                let (inner, _) = take_balanced(r, '(', ')').ok_or_else(|| {
                    Error::Program("unbalanced parentheses in @main's results".into())
                })?;
                split_top_level(inner, ',')
                    .into_iter()
                    .filter(|a| !a.trim().is_empty())
                    .map(|a| parse_param(a, &meshes))
                    .collect::<Result<Vec<_>>>()?
            } else {
                let end = r.find('{').unwrap_or(r.len());
                // A single result without attributes: `-> tensor<...> {` (body follows).
                vec![parse_param(&r[..end], &meshes)?]
            }
        } else {
            vec![]
        };
        Ok(Signature { args, results })
    }
}

/// Byte offset just past `@main` in the text of a `func.func` declaration.
fn find_main(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = text[from..].find("@main(") {
        let at = from + pos;
        let line_start = text[..at].rfind('\n').map_or(0, |p| p + 1);
        if text[line_start..at].contains("func.func") {
            return Some(at + "@main".len());
        }
        from = at + 1;
    }
    None
}

/// Given text starting with `open`, returns the contents up to the matching `close` and the rest.
fn take_balanced(text: &str, open: char, close: char) -> Option<(&str, &str)> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut prev = '\0';
    for (i, c) in text.char_indices() {
        if in_str {
            if c == '"' && prev != '\\' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some((&text[open.len_utf8()..i], &text[i + close.len_utf8()..]));
            }
        }
        prev = c;
    }
    None
}

/// Splits on `sep` outside brackets and strings.
fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut in_str = false;
    let mut prev = '\0';
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if in_str {
            if c == '"' && prev != '\\' {
                in_str = false;
            }
        } else {
            match c {
                '"' => in_str = true,
                '(' | '[' | '{' | '<' => depth += 1,
                ')' | ']' | '}' | '>' => depth -= 1,
                c if c == sep && depth == 0 => {
                    out.push(&text[start..i]);
                    start = i + c.len_utf8();
                }
                _ => {}
            }
        }
        prev = c;
    }
    out.push(&text[start..]);
    out
}

/// Parses `tensor<...> {attr = ..., ...}`.
fn parse_param(text: &str, meshes: &BTreeMap<String, Vec<(String, i64)>>) -> Result<Param> {
    let text = text.trim();
    let (ty_text, attrs) = match text.find('{') {
        Some(p) if text[..p].trim_end().ends_with('>') => (&text[..p], Some(&text[p..])),
        _ => (text, None),
    };
    let ty = TensorType::parse(ty_text)?;
    let tiling = match attrs {
        None => None,
        Some(a) => parse_sharding_attrs(a, ty.shape.len(), meshes)?,
    };
    let donated_to = match attrs.and_then(|a| a.find("tf.aliasing_output").map(|p| &a[p..])) {
        None => None,
        Some(rest) => {
            let value = rest
                .split_once('=')
                .map(|(_, v)| v.trim_start())
                .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::Program(format!("cannot read tf.aliasing_output in `{text}`"))
                })?;
            Some(value)
        }
    };
    Ok(Param {
        ty,
        tiling,
        donated_to,
    })
}

fn parse_sharding_attrs(
    attrs: &str,
    rank: usize,
    meshes: &BTreeMap<String, Vec<(String, i64)>>,
) -> Result<Option<Tiling>> {
    if let Some(p) = attrs.find("mhlo.sharding") {
        let rest = &attrs[p..];
        let q1 = rest
            .find('"')
            .ok_or_else(|| Error::Program(format!("cannot read mhlo.sharding in `{attrs}`")))?;
        let q2 = rest[q1 + 1..]
            .find('"')
            .ok_or_else(|| Error::Program(format!("cannot read mhlo.sharding in `{attrs}`")))?;
        return parse_hlo_sharding(&rest[q1 + 1..q1 + 1 + q2], rank).map(Some);
    }
    if let Some(p) = attrs.find("#sdy.sharding<") {
        let rest = &attrs[p + "#sdy.sharding".len()..];
        let (inner, _) = take_balanced(rest, '<', '>')
            .ok_or_else(|| Error::Program(format!("cannot read sdy.sharding in `{attrs}`")))?;
        return parse_sdy_sharding(inner, rank, meshes).map(Some);
    }
    Ok(None)
}

/// Reads the tile counts of an HLO sharding string such as `{devices=[8,1]<=[8]}`,
/// `{devices=[2,1,4]<=[8] last_tile_dim_replicate}` or `{replicated}`.
pub fn parse_hlo_sharding(s: &str, rank: usize) -> Result<Tiling> {
    let s = s.trim();
    if s.contains("replicated") && !s.contains("devices=") || s.contains("maximal") {
        return Ok(Tiling(vec![1; rank]));
    }
    let p = s
        .find("devices=[")
        .ok_or_else(|| Error::Program(format!("unsupported HLO sharding `{s}`")))?;
    let rest = &s[p + "devices=[".len()..];
    let end = rest
        .find(']')
        .ok_or_else(|| Error::Program(format!("cannot read HLO sharding `{s}`")))?;
    let tiles = rest[..end]
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<i64>()
                .map_err(|_| Error::Program(format!("cannot read HLO sharding `{s}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tiles = if s.contains("last_tile_dim_replicate") || s.contains("last_tile_dims") {
        tiles[..tiles.len().min(rank)].to_vec()
    } else {
        tiles
    };
    if tiles.len() != rank {
        return Err(Error::Program(format!(
            "HLO sharding `{s}` tiles {} dimensions but the value has rank {rank}",
            tiles.len()
        )));
    }
    Ok(Tiling(tiles))
}

/// Reads `@mesh, [{"data"}, {}]` against the declared meshes.
fn parse_sdy_sharding(
    inner: &str,
    rank: usize,
    meshes: &BTreeMap<String, Vec<(String, i64)>>,
) -> Result<Tiling> {
    let parts = split_top_level(inner, ',');
    let mesh_name = parts[0].trim().trim_start_matches('@');
    let axes = if mesh_name.starts_with("<[") || mesh_name.starts_with('<') {
        parse_mesh_axes(mesh_name)?
    } else {
        meshes.get(mesh_name).cloned().ok_or_else(|| {
            Error::Program(format!(
                "sdy.sharding names an undeclared mesh `@{mesh_name}`"
            ))
        })?
    };
    let dims_text = parts
        .get(1)
        .ok_or_else(|| Error::Program(format!("cannot read sdy sharding `{inner}`")))?
        .trim();
    let dims_inner = dims_text
        .strip_prefix('[')
        .and_then(|d| d.strip_suffix(']'))
        .ok_or_else(|| Error::Program(format!("cannot read sdy sharding `{inner}`")))?;
    let dims: Vec<&str> = split_top_level(dims_inner, ',')
        .into_iter()
        .filter(|d| !d.trim().is_empty())
        .collect();
    if dims.len() != rank {
        return Err(Error::Program(format!(
            "sdy sharding `{inner}` names {} dimensions but the value has rank {rank}",
            dims.len()
        )));
    }
    let tiles = dims
        .iter()
        .map(|d| {
            let d = d.trim().trim_start_matches('{');
            let d = &d[..d.find('}').unwrap_or(d.len())];
            d.split(',')
                .map(|a| a.trim().trim_matches('"'))
                .filter(|a| !a.is_empty() && *a != "?")
                .map(|a| {
                    axes.iter()
                        .find(|(n, _)| n == a)
                        .map(|(_, s)| *s)
                        .ok_or_else(|| {
                            Error::Program(format!(
                                "sdy sharding `{inner}` uses axis `{a}`, which mesh `{mesh_name}` lacks"
                            ))
                        })
                })
                .product::<Result<i64>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tiling(tiles))
}

/// All `sdy.mesh @name = <["a"=2, "b"=4]>` declarations.
fn parse_meshes(text: &str) -> Result<BTreeMap<String, Vec<(String, i64)>>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("sdy.mesh @") {
            let (name, def) = rest
                .split_once('=')
                .ok_or_else(|| Error::Program(format!("cannot read mesh `{line}`")))?;
            out.insert(name.trim().to_string(), parse_mesh_axes(def.trim())?);
        }
    }
    Ok(out)
}

/// `<["a"=2, "b"=4]>` or `<["a"=2], device_ids=[...]>` → `[("a", 2), ("b", 4)]`.
fn parse_mesh_axes(def: &str) -> Result<Vec<(String, i64)>> {
    // The first `]` after the first `[` (a `]` before it is not this list's end).
    let open = def.find('[');
    let close = open.and_then(|o| def[o..].find(']').map(|c| o + c));
    let (Some(open), Some(close)) = (open, close) else {
        return Ok(vec![]);
    };
    def[open + 1..close]
        .split(',')
        .filter(|a| !a.trim().is_empty())
        .map(|a| {
            let (n, s) = a
                .split_once('=')
                .ok_or_else(|| Error::Program(format!("cannot read mesh axis `{a}`")))?;
            let size = s
                .trim()
                .parse::<i64>()
                .map_err(|_| Error::Program(format!("cannot read mesh axis `{a}`")))?;
            Ok((n.trim().trim_matches('"').to_string(), size))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    #[test]
    fn reads_plain_signature() {
        let s = Signature::from_program(
            "module @m {\n  func.func public @main(%arg0: tensor<2x3xf32>, %arg1: tensor<i32>) -> (tensor<3x2xf32>, tensor<i1>) {\n",
        )
        .unwrap();
        assert_eq!(s.args.len(), 2);
        assert_eq!(s.args[0].ty.shape, vec![2, 3]);
        assert_eq!(s.args[1].ty.dtype, DType::S32);
        assert_eq!(s.results[1].ty.dtype, DType::Pred);
        let single =
            Signature::from_program("func.func @main(%a: tensor<4xbf16>) -> tensor<4xbf16> {")
                .unwrap();
        assert_eq!(single.results[0].ty.dtype, DType::BF16);
    }

    #[test]
    fn reads_shardings() {
        let gspmd = Signature::from_program(
            r#"func.func @main(%arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[8,1]<=[8]}"}, %arg1: tensor<4x8xf32> {mhlo.sharding = "{devices=[1,2,4]<=[8] last_tile_dim_replicate}"}) -> (tensor<8x8xf32> {mhlo.sharding = "{replicated}"}) {"#,
        )
        .unwrap();
        assert_eq!(gspmd.args[0].per_device().shape, vec![1, 4]);
        assert_eq!(gspmd.args[1].per_device().shape, vec![4, 4]);
        assert_eq!(gspmd.results[0].per_device().shape, vec![8, 8]);
        let sdy = Signature::from_program(
            "sdy.mesh @mesh = <[\"data\"=2, \"model\"=4]>\nfunc.func @main(%arg0: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{\"data\", \"model\"}, {}]>}) -> (tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{\"data\"}, {}]>}) {",
        )
        .unwrap();
        assert_eq!(sdy.args[0].per_device().shape, vec![1, 4]);
        assert_eq!(sdy.results[0].per_device().shape, vec![4, 4]);
    }

    #[test]
    fn rejects_what_it_cannot_check() {
        assert!(Signature::from_program("func.func @other() {").is_err());
        assert!(TensorType::parse("tensor<?x3xf32>").is_err());
        assert!(TensorType::parse("tensor<3xcomplex<f32>>").is_err());
    }
}
