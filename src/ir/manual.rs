//! Manual SPMD regions and the collectives that run inside them (JAX's `shard_map` and its
//! `psum`, `all_gather`, `psum_scatter`, `ppermute`, `all_to_all`, `axis_index`).
//!
//! A region's body is a graph over each device's block of its operands: along a dimension split
//! over manual mesh axes, a block holds the device's piece; axes the region leaves automatic stay
//! the partitioner's. Collectives name mesh axes; their device groups are computed when they are
//! traced, from the mesh, so lowering only writes them out.
//!
//! Device numbering: the mesh is row-major over its axes, and device `d` (the SPMD partition) has
//! coordinates `unravel(d, sizes)`, as `sdy.mesh` and the iota tile assignments of GSPMD have it.

use std::sync::Arc;

use super::Graph;

/// A mesh as a region records it: `(axis, size)`, row-major.
pub type MeshAxes = Vec<(String, i64)>;

/// Per dimension of one tensor, the mesh axes that split it (major first).
pub type DimAxes = Vec<Vec<String>>;

/// A manual region: `body` runs on every device, on blocks of the operands cut by `in_specs`;
/// its results are assembled from the devices' blocks by `out_specs`. Specs name only manual
/// axes; a result not split over a manual axis is taken to be the same on every device along it.
#[derive(Clone, Debug)]
pub struct ManualRegion {
    /// Names the region in errors.
    pub name: String,
    pub body: Arc<Graph>,
    pub mesh: MeshAxes,
    /// The axes the body sees as manual (a subset of the mesh's; the rest stay automatic).
    pub manual: Vec<String>,
    pub in_specs: Vec<DimAxes>,
    pub out_specs: Vec<DimAxes>,
}

impl ManualRegion {
    /// Devices in one group of the manual axes (the product of their sizes).
    pub fn manual_size(&self) -> i64 {
        axes_size(&self.mesh, &self.manual)
    }
}

/// The product of the sizes of `axes` on `mesh` (axes not on the mesh count 1).
pub fn axes_size(mesh: &[(String, i64)], axes: &[String]) -> i64 {
    mesh.iter()
        .filter(|(n, _)| axes.contains(n))
        .map(|(_, s)| s)
        .product()
}

/// The device groups of a collective over `axes`: one group per combination of the other axes'
/// coordinates (in row-major order), each listing the devices that differ only along `axes`, in
/// row-major order of `axes` as given (the first axis major). A device's position in its group is
/// its linear index over `axes`, as in a dimension split over them.
pub fn device_groups(mesh: &[(String, i64)], axes: &[String]) -> Vec<Vec<i64>> {
    let sizes: Vec<i64> = mesh.iter().map(|(_, s)| *s).collect();
    let pos: Vec<usize> = axes
        .iter()
        .filter_map(|a| mesh.iter().position(|(n, _)| n == a))
        .collect();
    let others: Vec<usize> = (0..mesh.len()).filter(|i| !pos.contains(i)).collect();
    let count = |idx: &[usize]| idx.iter().map(|&i| sizes[i]).product::<i64>();
    let unravel = |mut k: i64, idx: &[usize], coords: &mut [i64]| {
        for &i in idx.iter().rev() {
            coords[i] = k % sizes[i];
            k /= sizes[i];
        }
    };
    (0..count(&others))
        .map(|g| {
            let mut coords = vec![0i64; mesh.len()];
            unravel(g, &others, &mut coords);
            (0..count(&pos))
                .map(|k| {
                    unravel(k, &pos, &mut coords);
                    coords.iter().zip(&sizes).fold(0, |d, (c, s)| d * s + c)
                })
                .collect()
        })
        .collect()
}

/// `psum`: the sum over the devices of each group.
#[derive(Clone, Debug)]
pub struct Psum {
    pub axes: Vec<String>,
    pub groups: Vec<Vec<i64>>,
}

/// `all_gather`: each group's blocks concatenated along `dim`, in group order.
#[derive(Clone, Debug)]
pub struct AllGather {
    pub axes: Vec<String>,
    pub dim: usize,
    pub groups: Vec<Vec<i64>>,
}

/// `psum_scatter` (reduce-scatter): the group's sum, cut along `dim`; device `k` of a group keeps
/// piece `k`.
#[derive(Clone, Debug)]
pub struct ReduceScatter {
    pub axes: Vec<String>,
    pub dim: usize,
    pub groups: Vec<Vec<i64>>,
}

/// `ppermute`: device at position `src` along `axis` sends its block to position `dst`, for each
/// `(src, dst)` of `perm`; a device that receives nothing gets zeros.
#[derive(Clone, Debug)]
pub struct Ppermute {
    pub axis: String,
    /// `(src, dst)` positions along the axis.
    pub perm: Vec<(i64, i64)>,
    /// The same as device ids, for every combination of the other axes.
    pub pairs: Vec<(i64, i64)>,
}

/// `all_to_all`: each block is cut into `n` pieces along `split`; piece `j` goes to device `j` of
/// the group, which concatenates what it receives along `concat`, in group order.
#[derive(Clone, Debug)]
pub struct AllToAll {
    pub axis: String,
    pub split: usize,
    pub concat: usize,
    pub groups: Vec<Vec<i64>>,
}

/// `axis_index`: the device's position along `axis` (an `s32` scalar), from its partition id:
/// `(id / stride) % size`.
#[derive(Clone, Debug)]
pub struct AxisIndex {
    pub axis: String,
    pub size: i64,
    /// The product of the sizes of the axes after `axis` in the mesh.
    pub stride: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> MeshAxes {
        vec![("data".into(), 2), ("model".into(), 4)]
    }

    #[test]
    fn groups_hold_devices_that_differ_only_along_the_axes() {
        // Device d = 4·data + model.
        let m = mesh();
        assert_eq!(
            device_groups(&m, &["data".into()]),
            vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]
        );
        assert_eq!(
            device_groups(&m, &["model".into()]),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
        );
        // Model major: position = 2·model + data.
        assert_eq!(
            device_groups(&m, &["model".into(), "data".into()]),
            vec![vec![0, 4, 1, 5, 2, 6, 3, 7]]
        );
        assert_eq!(axes_size(&m, &["model".into()]), 4);
    }
}
