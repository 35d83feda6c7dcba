//! SPMD partitioning described as data: a [`Mesh`] of named device axes, [`PartitionSpec`]s per
//! tensor, and a [`Rules`] file that maps the model's logical axis names (`batch`, `embed`,
//! `heads`, `mlp`, `vocab`, ...) to mesh axes (the t5x logical-axis-rules idea), with ordered
//! parameter-name patterns that override them (the big_vision idea).
//!
//! Every mistake is found before compiling and named: an unknown axis, a dimension that does not
//! divide by its axes' size, a mesh larger than the devices, a tensor that would use one mesh
//! axis twice.

mod placement;
mod rules;

pub use placement::{gather, shard, shard_index};
pub use rules::{LogicalRules, ParamRule, Rules, TensorAxes, PRESETS};

use crate::error::{Error, Result};
use crate::runtime::Partitioner;

/// Named device axes, row-major: device `d` has coordinates `unravel(d, sizes)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mesh {
    pub axes: Vec<(String, i64)>,
}

impl Mesh {
    /// A mesh from `(name, size)` pairs. Names must be distinct identifiers, sizes ≥ 1.
    pub fn new(axes: &[(&str, i64)]) -> Result<Mesh> {
        let mut out: Vec<(String, i64)> = Vec::new();
        for (n, s) in axes {
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(mesh_err(
                    format!("axis name `{n}`"),
                    "use letters, digits and `_`",
                ));
            }
            if *s < 1 {
                return Err(mesh_err(
                    format!("axis `{n}` of size {s}"),
                    "sizes must be at least 1",
                ));
            }
            if out.iter().any(|(m, _)| m == n) {
                return Err(mesh_err(format!("axis `{n}`"), "each axis may appear once"));
            }
            out.push((n.to_string(), *s));
        }
        if out.is_empty() {
            return Err(mesh_err(
                "an empty mesh".into(),
                "give at least one axis, e.g. data=1",
            ));
        }
        let max = crate::runtime::MAX_DEVICES as i64;
        let size = out.iter().try_fold(1i64, |n, (_, s)| n.checked_mul(*s));
        if size.is_none_or(|n| n > max) {
            let axes: Vec<String> = out.iter().map(|(n, s)| format!("{n}={s}")).collect();
            return Err(mesh_err(
                format!("mesh {}", axes.join(",")),
                &format!("a mesh has at most {max} devices"),
            ));
        }
        Ok(Mesh { axes: out })
    }

    /// Parses `data=2,model=4`.
    pub fn parse(s: &str) -> Result<Mesh> {
        let mut axes = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (n, v) = part.split_once('=').ok_or_else(|| {
                mesh_err(
                    format!("mesh `{s}`"),
                    "write axes as name=size, e.g. data=2,model=4",
                )
            })?;
            let v: i64 = v.trim().parse().map_err(|_| {
                mesh_err(
                    format!("mesh `{s}`: size `{v}` of `{n}`"),
                    "sizes are positive integers",
                )
            })?;
            axes.push((n.trim().to_string(), v));
        }
        let refs: Vec<(&str, i64)> = axes.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        Mesh::new(&refs)
    }

    /// One device, on an axis named `data`.
    pub fn single() -> Mesh {
        Mesh {
            axes: vec![("data".into(), 1)],
        }
    }

    pub fn size(&self) -> i64 {
        self.axes.iter().map(|(_, s)| s).product()
    }

    pub fn axis_size(&self, name: &str) -> Option<i64> {
        self.axes.iter().find(|(n, _)| n == name).map(|(_, s)| *s)
    }

    pub fn axis_index(&self, name: &str) -> Option<usize> {
        self.axes.iter().position(|(n, _)| n == name)
    }

    /// Coordinates of device `d` on each axis.
    pub fn coords(&self, d: i64) -> Vec<i64> {
        let mut rem = d;
        let mut c = vec![0; self.axes.len()];
        for (i, (_, s)) in self.axes.iter().enumerate().rev() {
            c[i] = rem % s;
            rem /= s;
        }
        c
    }

    /// Fails when the mesh needs more devices than there are.
    pub fn check_devices(&self, available: usize) -> Result<()> {
        if self.size() as usize > available {
            return Err(Error::NotEnoughDevices {
                what: format!("mesh {self}"),
                needed: self.size() as usize,
                available,
                platform: "the client".into(),
                fix: "use a smaller mesh, or more devices (`--cpu-devices N` on CPU)".into(),
            });
        }
        Ok(())
    }

    /// `sdy.mesh @mesh = <["data"=2, "model"=4]>`.
    pub fn sdy_declaration(&self) -> String {
        format!(
            "sdy.mesh @mesh = <[{}]>",
            self.axes
                .iter()
                .map(|(n, s)| format!("\"{n}\"={s}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl std::fmt::Display for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: Vec<String> = self.axes.iter().map(|(n, s)| format!("{n}={s}")).collect();
        f.write_str(&s.join(","))
    }
}

fn mesh_err(what: String, fix: &str) -> Error {
    Error::invalid(what, fix)
}

/// Per tensor dimension, the mesh axes it is split over (major first; empty = not split).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PartitionSpec(pub Vec<Vec<String>>);

impl PartitionSpec {
    pub fn replicated(rank: usize) -> PartitionSpec {
        PartitionSpec(vec![vec![]; rank])
    }

    pub fn is_replicated(&self) -> bool {
        self.0.iter().all(Vec::is_empty)
    }

    /// Checks the spec against a tensor of `shape` on `mesh`; `tensor` names it in errors.
    pub fn validate(&self, tensor: &str, shape: &[i64], mesh: &Mesh) -> Result<()> {
        if self.0.len() != shape.len() {
            return Err(spec_err(
                tensor,
                format!(
                    "its spec {self} has {} entries for rank {}",
                    self.0.len(),
                    shape.len()
                ),
                "give one entry per dimension",
            ));
        }
        let mut used: Vec<&str> = Vec::new();
        for (dim, axes) in self.0.iter().enumerate() {
            let mut size = 1;
            for a in axes {
                let s = mesh.axis_size(a).ok_or_else(|| {
                    spec_err(
                        tensor,
                        format!(
                            "dimension {dim} uses mesh axis `{a}`, which mesh {mesh} does not have"
                        ),
                        "use an axis of the mesh, or change the mesh (`--mesh`)",
                    )
                })?;
                if used.contains(&a.as_str()) {
                    return Err(spec_err(
                        tensor,
                        format!("mesh axis `{a}` is used by two dimensions (spec {self})"),
                        "conflicting rules: map each mesh axis to at most one dimension of a tensor",
                    ));
                }
                used.push(a);
                size *= s;
            }
            if shape[dim] % size != 0 {
                return Err(spec_err(
                    tensor,
                    format!(
                        "dimension {dim} of size {} does not divide over {} (size {size}) of mesh {mesh}",
                        shape[dim],
                        axes.join("×")
                    ),
                    "pick sizes that divide, or shard this dimension over other axes",
                ));
            }
        }
        Ok(())
    }

    /// How many pieces each dimension is cut into.
    pub fn tiles(&self, mesh: &Mesh) -> Vec<i64> {
        self.0
            .iter()
            .map(|axes| axes.iter().filter_map(|a| mesh.axis_size(a)).product())
            .collect()
    }

    /// `#sdy.sharding<@mesh, [{"data"}, {}]>`.
    pub fn sdy(&self) -> String {
        let dims: Vec<String> = self
            .0
            .iter()
            .map(|axes| {
                format!(
                    "{{{}}}",
                    axes.iter()
                        .map(|a| format!("\"{a}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        format!("#sdy.sharding<@mesh, [{}]>", dims.join(", "))
    }

    /// The HLO sharding string with an explicit device list, e.g.
    /// `{devices=[4,1,2]0,4,1,5,2,6,3,7 last_tile_dim_replicate}` for `[model, -]` on
    /// `data=2,model=4`. (The compact `<=[..]T(..)` form is refused by GSPMD on `Sharding` custom
    /// calls with a replicated last tile dimension, so the explicit form is used everywhere.)
    pub fn hlo(&self, mesh: &Mesh) -> String {
        if self.is_replicated() || mesh.size() == 1 {
            return "{replicated}".into();
        }
        // Mesh axes in tile order: each dimension's axes, then the unused ones (replication).
        let mut order: Vec<usize> = Vec::new();
        for axes in &self.0 {
            for a in axes {
                if let Some(i) = mesh.axis_index(a) {
                    order.push(i);
                }
            }
        }
        let unused: Vec<usize> = (0..mesh.axes.len())
            .filter(|i| !order.contains(i))
            .collect();
        let replicate: i64 = unused.iter().map(|&i| mesh.axes[i].1).product();
        order.extend(&unused);
        let mut tiles = self.tiles(mesh);
        if replicate > 1 {
            tiles.push(replicate);
        }
        // Walk the mesh coordinates in `order`-major order; each step is the next tile.
        let sizes: Vec<i64> = order.iter().map(|&i| mesh.axes[i].1).collect();
        let mut devices = Vec::with_capacity(mesh.size() as usize);
        for t in 0..mesh.size() {
            let mut rem = t;
            let mut coords = vec![0i64; mesh.axes.len()];
            for (k, &ax) in order.iter().enumerate().rev() {
                coords[ax] = rem % sizes[k];
                rem /= sizes[k];
            }
            let d = coords
                .iter()
                .zip(&mesh.axes)
                .fold(0, |acc, (c, (_, s))| acc * s + c);
            devices.push(d.to_string());
        }
        format!(
            "{{devices=[{}]{}{}}}",
            tiles
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(","),
            devices.join(","),
            if replicate > 1 {
                " last_tile_dim_replicate"
            } else {
                ""
            }
        )
    }

    /// The attribute for an argument or result of `@main`.
    pub fn attribute(&self, mesh: &Mesh, partitioner: Partitioner) -> String {
        match partitioner {
            Partitioner::Shardy => format!("sdy.sharding = {}", self.sdy()),
            Partitioner::Gspmd => format!("mhlo.sharding = \"{}\"", self.hlo(mesh)),
        }
    }
}

impl std::fmt::Display for PartitionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d: Vec<String> = self
            .0
            .iter()
            .map(|a| {
                if a.is_empty() {
                    "-".into()
                } else {
                    a.join("+")
                }
            })
            .collect();
        write!(f, "[{}]", d.join(", "))
    }
}

fn spec_err(tensor: &str, problem: String, fix: &str) -> Error {
    Error::invalid(
        format!("sharding of `{tensor}`: {problem}"),
        fix.to_string(),
    )
}

/// Everything the emitter needs to write shardings: the mesh, the logical-axis rules and the
/// partitioner.
#[derive(Clone, Debug)]
pub struct ShardingContext {
    pub mesh: Mesh,
    pub logical: LogicalRules,
    pub partitioner: Partitioner,
}

impl ShardingContext {
    /// The spec for logical axis names (`None`: not split), validated against `shape`.
    pub fn spec_for(
        &self,
        tensor: &str,
        axes: &[Option<String>],
        shape: &[i64],
    ) -> Result<PartitionSpec> {
        let spec = self.logical.spec(tensor, axes)?;
        spec.validate(tensor, shape, &self.mesh)?;
        Ok(spec)
    }

    /// Module attributes and preamble of a program partitioned over this mesh.
    pub fn module_attrs(&self) -> (Vec<String>, Vec<String>) {
        let n = self.mesh.size();
        let module = vec![
            format!("mhlo.num_partitions = {n} : i32"),
            "mhlo.num_replicas = 1 : i32".to_string(),
        ];
        let preamble = match self.partitioner {
            Partitioner::Shardy => vec![self.mesh.sdy_declaration()],
            Partitioner::Gspmd => vec![],
        };
        (module, preamble)
    }

    pub fn compile_options(&self) -> crate::runtime::CompileOptions {
        if self.mesh.size() == 1 {
            crate::runtime::CompileOptions::single()
        } else {
            crate::runtime::CompileOptions::spmd(self.mesh.size() as usize, self.partitioner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: &[&[&str]]) -> PartitionSpec {
        PartitionSpec(
            v.iter()
                .map(|d| d.iter().map(|s| s.to_string()).collect())
                .collect(),
        )
    }

    #[test]
    fn hlo_strings_follow_the_mesh_order() {
        let m = Mesh::parse("data=2,model=4").unwrap();
        // Device d = 4·data + model.
        let cases: [(&[&[&str]], &str); 4] = [
            (
                &[&["data"], &[]],
                "{devices=[2,1,4]0,1,2,3,4,5,6,7 last_tile_dim_replicate}",
            ),
            (
                &[&["model"], &[]],
                "{devices=[4,1,2]0,4,1,5,2,6,3,7 last_tile_dim_replicate}",
            ),
            (&[&["data"], &["model"]], "{devices=[2,4]0,1,2,3,4,5,6,7}"),
            (&[&["model", "data"], &[]], "{devices=[8,1]0,4,1,5,2,6,3,7}"),
        ];
        for (s, want) in cases {
            assert_eq!(spec(s).hlo(&m), want);
        }
        assert_eq!(spec(&[&[], &[]]).hlo(&m), "{replicated}");
        assert_eq!(
            spec(&[&["data"], &[]]).sdy(),
            "#sdy.sharding<@mesh, [{\"data\"}, {}]>"
        );
    }

    #[test]
    fn validation_names_tensor_dimension_axis_and_sizes() {
        let m = Mesh::parse("data=2,model=4").unwrap();
        let e = spec(&[&["model"]])
            .validate("w", &[6], &m)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`w`") && e.contains("dimension 0 of size 6") && e.contains("model"),
            "{e}"
        );
        let e = spec(&[&["pipe"]])
            .validate("w", &[8], &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pipe`"), "{e}");
        let e = spec(&[&["model"], &["model"]])
            .validate("w", &[8, 8], &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("conflicting"), "{e}");
        assert!(Mesh::parse("data=2,data=2").is_err());
        assert!(Mesh::parse("data=0").is_err());
        assert!(Mesh::parse("data2").is_err());
        assert_eq!(
            Mesh::parse("data=2, model=4").unwrap().coords(6),
            vec![1, 2]
        );
    }
}
