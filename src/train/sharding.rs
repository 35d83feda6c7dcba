//! Shardings of the step programs' arguments and results, from a rule file and a mesh.

use crate::dtype::DType;
use crate::error::Result;
use crate::ir::Graph;
use crate::model::names::io;
use crate::model::tiled::Ring;
use crate::model::ParamSpec;
use crate::partition::{LogicalRules, Mesh, PartitionSpec, Rules, ShardingContext, TensorAxes};
use crate::runtime::Partitioner;

/// Mesh, rules and partitioner of a run.
#[derive(Clone, Debug)]
pub struct Layout {
    pub mesh: Mesh,
    pub rules: Rules,
    pub partitioner: Partitioner,
}

impl Layout {
    /// One device, nothing split.
    pub fn single() -> Layout {
        Layout {
            mesh: Mesh::single(),
            rules: Rules::default(),
            partitioner: Partitioner::Shardy,
        }
    }

    pub fn context(&self) -> ShardingContext {
        ShardingContext {
            mesh: self.mesh.clone(),
            logical: self.rules.logical.clone(),
            partitioner: self.partitioner,
        }
    }

    /// The mesh axis the batch is split over, as the tiled loss's ring: `None` when the batch is
    /// not split; an error when it is split over more than one axis (the ring runs over one).
    pub fn ring(&self) -> Result<Option<Ring>> {
        let spec = self.batch_spec(1)?;
        let axes: Vec<&String> = spec.0[0]
            .iter()
            .filter(|a| self.mesh.axis_size(a).unwrap_or(1) > 1)
            .collect();
        match axes[..] {
            [] => Ok(None),
            [a] => Ok(Some(Ring {
                mesh: self.mesh.clone(),
                axis: a.clone(),
            })),
            _ => Err(crate::error::Error::invalid(
                format!("the batch split over {axes:?} of mesh {}", self.mesh),
                "the tiled loss's ring runs over one mesh axis: split the batch over one",
            )),
        }
    }

    fn batch_spec(&self, rank: usize) -> Result<PartitionSpec> {
        let mut axes = vec![Some("batch".to_string())];
        axes.extend(std::iter::repeat_n(None, rank - 1));
        LogicalRules::spec(&self.rules.logical, "batch", &axes)
    }

    /// Specs for every parameter and output of a step graph: parameters and optimizer state by
    /// the rules, and a parameter's gradient (`grad/…`) like it; `images`/`tokens`, embeddings
    /// and their gradients split over `batch` (their first axis); scalars replicated; outputs
    /// named like an input share its spec.
    pub fn specs(
        &self,
        g: &Graph,
        params: &[ParamSpec],
    ) -> Result<(Vec<PartitionSpec>, Vec<PartitionSpec>)> {
        self.rules.check_mesh(&self.mesh)?;
        let tensors: Vec<TensorAxes<'_>> = params
            .iter()
            .map(|p| TensorAxes {
                name: &p.name,
                shape: &p.shape,
                axes: &p.axes,
                stacked: p.is_stacked(),
            })
            .collect();
        let resolved = self.rules.param_specs(&tensors, &self.mesh)?;
        let by_name = |name: &str, rank: usize| -> Result<PartitionSpec> {
            // A gradient is laid out like its parameter.
            let param = name.strip_prefix(io::GRAD).unwrap_or(name);
            if let Some(i) = params.iter().position(|s| s.name == param) {
                return Ok(resolved[i].clone());
            }
            match name {
                io::IMAGES
                | io::TOKENS
                | io::IMAGE_EMBEDDINGS
                | io::TEXT_EMBEDDINGS
                | io::IMAGE_EMBEDDING_GRADS
                | io::TEXT_EMBEDDING_GRADS => self.batch_spec(rank),
                _ => Ok(PartitionSpec::replicated(rank)),
            }
        };
        let args = g
            .params
            .iter()
            .map(|(n, v)| by_name(n, g.ty(*v).rank()))
            .collect::<Result<Vec<_>>>()?;
        let results = g
            .outputs
            .iter()
            .map(|(n, v)| by_name(n, g.ty(*v).rank()))
            .collect::<Result<Vec<_>>>()?;
        Ok((args, results))
    }
}

/// Bytes of the parameters and state one device holds under `layout` (for reports).
pub fn per_device_bytes(
    params: &[ParamSpec],
    specs: &[PartitionSpec],
    mesh: &Mesh,
    dtype: DType,
) -> i64 {
    params
        .iter()
        .zip(specs)
        .map(|(p, s)| {
            let tiles: i64 = s.tiles(mesh).iter().product();
            p.element_count() / tiles.max(1) * dtype.size_in_bytes() as i64
        })
        .sum()
}
