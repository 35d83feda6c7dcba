//! Splitting host arrays into per-device shards and joining them back.

use super::{Mesh, PartitionSpec};
use crate::array::HostArray;
use crate::error::{Error, Result};

/// Which piece of each dimension device `d` holds.
pub fn shard_index(spec: &PartitionSpec, mesh: &Mesh, d: i64) -> Vec<i64> {
    let coords = mesh.coords(d);
    spec.0
        .iter()
        .map(|axes| {
            axes.iter().fold(0, |acc, a| {
                let i = mesh.axis_index(a).unwrap_or(0);
                acc * mesh.axes[i].1 + coords[i]
            })
        })
        .collect()
}

/// The shard of `global` that device `d` holds.
pub fn shard(global: &HostArray, spec: &PartitionSpec, mesh: &Mesh, d: i64) -> Result<HostArray> {
    let tiles = spec.tiles(mesh);
    let idx = shard_index(spec, mesh, d);
    let mut a = global.clone();
    for (dim, (&t, &i)) in tiles.iter().zip(&idx).enumerate() {
        if t > 1 {
            a = a.split(dim, t as usize)?.swap_remove(i as usize);
        }
    }
    Ok(a)
}

/// Rebuilds the global array from every device's shard (`shards[d]` from device `d`).
pub fn gather(shards: &[HostArray], spec: &PartitionSpec, mesh: &Mesh) -> Result<HostArray> {
    if shards.len() as i64 != mesh.size() {
        return Err(Error::Array(format!(
            "gathering needs one shard per device of mesh {mesh}, got {}",
            shards.len()
        )));
    }
    let tiles = spec.tiles(mesh);
    let owner: std::collections::HashMap<Vec<i64>, usize> = (0..mesh.size())
        .rev()
        .map(|d| (shard_index(spec, mesh, d), d as usize))
        .collect();
    fn rec(
        dim: usize,
        prefix: &mut Vec<i64>,
        tiles: &[i64],
        owner: &std::collections::HashMap<Vec<i64>, usize>,
        shards: &[HostArray],
    ) -> Result<HostArray> {
        if dim == tiles.len() {
            return Ok(shards[owner[prefix]].clone());
        }
        let mut parts = Vec::with_capacity(tiles[dim] as usize);
        for t in 0..tiles[dim] {
            prefix.push(t);
            parts.push(rec(dim + 1, prefix, tiles, owner, shards)?);
            prefix.pop();
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        HostArray::concat(&parts, dim)
    }
    rec(0, &mut Vec::new(), &tiles, &owner, shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_then_gather_round_trips() {
        let mesh = Mesh::parse("data=2,model=4").unwrap();
        let a = HostArray::new(&[4, 8], &(0..32).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
        for spec in [
            PartitionSpec(vec![vec!["data".into()], vec!["model".into()]]),
            PartitionSpec(vec![vec!["model".into()], vec![]]),
            PartitionSpec(vec![vec![], vec!["model".into(), "data".into()]]),
            PartitionSpec(vec![vec![], vec![]]),
        ] {
            let shards: Vec<HostArray> = (0..8)
                .map(|d| shard(&a, &spec, &mesh, d).unwrap())
                .collect();
            assert_eq!(gather(&shards, &spec, &mesh).unwrap(), a, "{spec}");
        }
        // Device 6 = (data 1, model 2): rows 2..4, columns 4..6 under [data, model].
        let s = shard(
            &a,
            &PartitionSpec(vec![vec!["data".into()], vec!["model".into()]]),
            &mesh,
            6,
        )
        .unwrap();
        assert_eq!(s.to_vec::<f32>().unwrap(), vec![20., 21., 28., 29.]);
    }
}
