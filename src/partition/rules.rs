//! Rule files (`partitioning/*.toml`): logical axis → mesh axes, and ordered parameter-name
//! patterns that override them.
//!
//! ```toml
//! description = "Megatron-style model parallelism"
//! mesh = "model=8"               # default mesh when --mesh is not given
//!
//! [logical]                      # logical axis name → mesh axes (unlisted: not split)
//! batch = ["data"]
//! heads = ["model"]
//! mlp = ["model"]
//!
//! [[params]]                     # first matching pattern wins
//! pattern = "temperature$"
//! spec = []                      # an explicit spec per dimension ([] = replicated)
//!
//! [[params]]
//! pattern = ".*"
//! largest = ["data"]             # split the largest dimension that divides (FSDP / ZeRO-3)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use super::{Mesh, PartitionSpec};
use crate::error::{Error, Result};

/// Logical axis name → mesh axes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogicalRules(pub BTreeMap<String, Vec<String>>);

impl LogicalRules {
    /// The spec of a tensor whose dimensions carry these logical names.
    pub fn spec(&self, _tensor: &str, axes: &[Option<String>]) -> Result<PartitionSpec> {
        Ok(PartitionSpec(
            axes.iter()
                .map(|a| match a {
                    Some(name) => self.0.get(name).cloned().unwrap_or_default(),
                    None => vec![],
                })
                .collect(),
        ))
    }
}

/// One `[[params]]` entry.
#[derive(Clone, Debug)]
pub struct ParamRule {
    pub pattern: Regex,
    pub action: ParamAction,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamAction {
    /// An explicit spec; `[]` replicates a tensor of any rank.
    Spec(Vec<Vec<String>>),
    /// Split the largest dimension that divides over these axes.
    Largest(Vec<String>),
}

/// What the rules need to know of a tensor: its name, shape and logical axes (one per
/// dimension, or none), and whether its leading dimension stacks the layers of a scan (never
/// split: a scan takes one layer a step).
#[derive(Clone, Copy, Debug)]
pub struct TensorAxes<'a> {
    pub name: &'a str,
    pub shape: &'a [i64],
    pub axes: &'a [String],
    pub stacked: bool,
}

/// The presets of `partitioning/`, built into the binary (a file path given instead overrides).
pub const PRESETS: [&str; 4] = ["data_parallel", "fsdp", "model_parallel", "data_model"];

/// The text of each preset, by name, in [`PRESETS`] order.
const PRESET_FILES: [(&str, &str); 4] = [
    (
        "data_parallel",
        include_str!("../../partitioning/data_parallel.toml"),
    ),
    ("fsdp", include_str!("../../partitioning/fsdp.toml")),
    (
        "model_parallel",
        include_str!("../../partitioning/model_parallel.toml"),
    ),
    (
        "data_model",
        include_str!("../../partitioning/data_model.toml"),
    ),
];

/// A parsed rule file.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub description: String,
    pub default_mesh: Option<Mesh>,
    pub logical: LogicalRules,
    pub params: Vec<ParamRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    pattern: String,
    #[serde(default)]
    spec: Option<Vec<Vec<String>>>,
    #[serde(default)]
    largest: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    description: String,
    #[serde(default)]
    mesh: Option<String>,
    #[serde(default)]
    logical: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    params: Vec<RawParam>,
}

impl Rules {
    /// Parses rule-file text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Rules> {
        let bad = |m: String| Error::invalid(format!("partitioning rules `{source}`"), m);
        let raw: RawRules = toml::from_str(text).map_err(|e| bad(format!("{e}")))?;
        let default_mesh = raw.mesh.as_deref().map(Mesh::parse).transpose()?;
        let mut params = Vec::new();
        for p in raw.params {
            let pattern = Regex::new(&p.pattern).map_err(|e| {
                bad(format!(
                    "pattern `{}` is not a regular expression: {e}",
                    p.pattern
                ))
            })?;
            let action = match (p.spec, p.largest) {
                (Some(s), None) => ParamAction::Spec(s),
                (None, Some(l)) => ParamAction::Largest(l),
                _ => {
                    return Err(bad(format!(
                        "rule for `{}` needs exactly one of `spec` or `largest`",
                        p.pattern
                    )))
                }
            };
            params.push(ParamRule { pattern, action });
        }
        Ok(Rules {
            description: raw.description,
            default_mesh,
            logical: LogicalRules(raw.logical),
            params,
        })
    }

    /// Reads a rule file.
    pub fn load(path: &Path) -> Result<Rules> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Rules::parse(&text, &path.display().to_string())
    }

    /// Loads a rule file by path, else a preset built into the binary by name (`fsdp`, or
    /// `fsdp.toml`): an installed `basic` needs no source tree.
    pub fn find(name_or_path: &str) -> Result<Rules> {
        let p = Path::new(name_or_path);
        if p.is_file() {
            return Rules::load(p);
        }
        let name = name_or_path.strip_suffix(".toml").unwrap_or(name_or_path);
        if let Some((n, text)) = PRESET_FILES.iter().find(|(n, _)| *n == name) {
            return Rules::parse(text, &format!("partitioning/{n}.toml (built in)"));
        }
        Err(Error::invalid(
            format!("partitioning `{name_or_path}`"),
            format!(
                "give a rule file path or a preset of partitioning/: {}",
                PRESETS.join(", ")
            ),
        ))
    }

    /// Data parallelism: batch over `data`, weights replicated.
    pub fn data_parallel() -> Rules {
        let mut l = BTreeMap::new();
        l.insert("batch".to_string(), vec!["data".to_string()]);
        Rules {
            description: "data parallel".into(),
            default_mesh: None,
            logical: LogicalRules(l),
            params: vec![],
        }
    }

    /// Every mesh axis a rule mentions must exist in `mesh`.
    pub fn check_mesh(&self, mesh: &Mesh) -> Result<()> {
        let mut mentioned: Vec<(&str, String)> = Vec::new();
        for (k, v) in &self.logical.0 {
            mentioned.extend(
                v.iter()
                    .map(|a| (a.as_str(), format!("logical axis `{k}`"))),
            );
        }
        for p in &self.params {
            let axes: Vec<&String> = match &p.action {
                ParamAction::Spec(s) => s.iter().flatten().collect(),
                ParamAction::Largest(l) => l.iter().collect(),
            };
            mentioned.extend(
                axes.into_iter()
                    .map(|a| (a.as_str(), format!("parameter rule `{}`", p.pattern))),
            );
        }
        for (a, by) in &mentioned {
            if mesh.axis_size(a).is_none() {
                return Err(Error::invalid(
                    format!("mesh axis `{a}` (used by {by})"),
                    format!("mesh {mesh} has no such axis: add it to --mesh or change the rules"),
                ));
            }
        }
        // An axis of more than one device that no rule uses would hold a full copy of
        // everything on each of its devices: almost always a mistake of flags.
        for (axis, size) in &mesh.axes {
            if *size > 1 && !mentioned.iter().any(|(a, _)| a == axis) {
                let users: Vec<&str> = PRESETS
                    .iter()
                    .filter(|p| {
                        Rules::find(p).is_ok_and(|r| {
                            r.logical.0.values().flatten().any(|a| a == axis)
                                || r.params.iter().any(|pr| match &pr.action {
                                    ParamAction::Spec(s) => s.iter().flatten().any(|a| a == axis),
                                    ParamAction::Largest(l) => l.iter().any(|a| a == axis),
                                })
                        })
                    })
                    .copied()
                    .collect();
                return Err(Error::invalid(format!(
                        "mesh axis `{axis}` of size {size} in mesh {mesh}: no sharding rule uses it, so every tensor would be replicated over it"
                    ), if users.is_empty() {
                        "drop the axis from --mesh, or give rules that shard over it".into()
                    } else {
                        format!(
                            "pick rules that shard over it (--partitioning {}), or drop it from --mesh",
                            users.join(" or ")
                        )
                    }));
            }
        }
        Ok(())
    }

    /// The spec of every parameter, validated against the mesh.
    pub fn param_specs(&self, specs: &[TensorAxes<'_>], mesh: &Mesh) -> Result<Vec<PartitionSpec>> {
        self.check_mesh(mesh)?;
        specs
            .iter()
            .map(|s| {
                let spec = match self.params.iter().find(|r| r.pattern.is_match(s.name)) {
                    Some(r) => match &r.action {
                        ParamAction::Spec(v) if v.is_empty() => {
                            PartitionSpec::replicated(s.shape.len())
                        }
                        ParamAction::Spec(v) => PartitionSpec(v.clone()),
                        ParamAction::Largest(axes) => {
                            let size: i64 = axes.iter().filter_map(|a| mesh.axis_size(a)).product();
                            // A stacked layers axis stays whole: a scan takes one layer a step.
                            let mut order: Vec<usize> =
                                (usize::from(s.stacked)..s.shape.len()).collect();
                            order.sort_by_key(|&i| (std::cmp::Reverse(s.shape[i]), i));
                            let mut spec = PartitionSpec::replicated(s.shape.len());
                            if let Some(&d) = order
                                .iter()
                                .find(|&&d| s.shape[d] % size == 0 && s.shape[d] >= size)
                            {
                                spec.0[d] = axes.clone();
                            }
                            spec
                        }
                    },
                    None => {
                        let axes: Vec<Option<String>> =
                            s.axes.iter().map(|a| Some(a.clone())).collect();
                        let axes = if axes.len() == s.shape.len() {
                            axes
                        } else {
                            vec![None; s.shape.len()]
                        };
                        self.logical.spec(s.name, &axes)?
                    }
                };
                spec.validate(s.name, s.shape, mesh)?;
                Ok(spec)
            })
            .collect()
    }
}

#[cfg(test)]
mod preset_tests {
    use super::*;

    /// Every rule file of `partitioning/` is built in, and parses.
    #[test]
    fn every_rule_file_of_partitioning_is_built_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("partitioning");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".toml").map(str::to_string)
            })
            .collect();
        files.sort();
        let mut built_in: Vec<String> = PRESETS.iter().map(|n| n.to_string()).collect();
        built_in.sort();
        assert_eq!(files, built_in);
        assert_eq!(
            PRESET_FILES.map(|(n, _)| n),
            PRESETS,
            "the texts follow PRESETS' order"
        );
        for n in PRESETS {
            Rules::find(n).unwrap();
        }
    }
}
