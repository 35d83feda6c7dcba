//! Which process each device of a program belongs to, as a run sees it.
//!
//! A multi-process job runs the same program on every host: every process compiles it over the
//! global devices (ordered by process index, then id, as JAX orders them), and executes it on its
//! addressable devices only, feeding each one its block of every argument. A process loads only
//! the rows of each global batch that its devices hold, and writes only the checkpoint pieces its
//! devices hold.
//!
//! Tests run the same code paths with several processes simulated in one: one client's devices
//! are split into `P` contiguous groups, each group treated as a process (its own loader, its own
//! uploads, its own checkpoint file), and the program executed once on all of them.

use crate::error::{Error, Result};
use crate::partition::{shard_index, Mesh, PartitionSpec};
use crate::runtime::Client;

/// The processes a run's devices belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    /// Processes in the job.
    pub processes: usize,
    /// The processes this OS process acts as: its own, or every one when simulated.
    pub local: Vec<usize>,
    /// The mesh position (SPMD partition) of each addressable device, in execute order.
    pub positions: Vec<i64>,
    /// The process of each addressable device.
    pub owner: Vec<usize>,
}

impl Hosts {
    /// One process holding all `devices`.
    pub fn single(devices: usize) -> Hosts {
        Hosts::simulated(devices, 1).expect("one process divides any device count")
    }

    /// `devices` devices of one client treated as `processes` processes of `devices /
    /// processes` contiguous devices each.
    pub fn simulated(devices: usize, processes: usize) -> Result<Hosts> {
        if processes == 0 || !devices.is_multiple_of(processes) {
            return Err(Error::invalid(
                format!("{processes} simulated processes over {devices} devices"),
                "the processes must divide the devices evenly",
            ));
        }
        let per = devices / processes;
        Ok(Hosts {
            processes,
            local: (0..processes).collect(),
            positions: (0..devices as i64).collect(),
            owner: (0..devices).map(|d| d / per).collect(),
        })
    }

    /// This process's part of a real job whose program runs mesh position `k` on global device
    /// `order[k]` ([`global_order`]): the mesh position of each device the executable runs here
    /// (`executing`, its device ids in execute order).
    pub fn of_job(
        order: &[i64],
        executing: &[i32],
        process: usize,
        processes: usize,
    ) -> Result<Hosts> {
        let positions = executing
            .iter()
            .map(|id| {
                order
                    .iter()
                    .position(|g| *g == i64::from(*id))
                    .map(|p| p as i64)
                    .ok_or_else(|| {
                        Error::Internal(format!("device {id} runs the step but is not in its mesh"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Hosts {
            processes,
            local: vec![process],
            owner: vec![process; positions.len()],
            positions,
        })
    }

    /// The addressable devices (indices in execute order) of process `p`.
    pub fn devices_of(&self, p: usize) -> Vec<usize> {
        (0..self.owner.len())
            .filter(|&d| self.owner[d] == p)
            .collect()
    }

    /// Whether this OS process acts as process 0 (it writes metrics and manifests).
    pub fn leads(&self) -> bool {
        self.local.contains(&0)
    }
}

/// The global device ids of the first `n` devices of the job, ordered by (process index, id):
/// the order of the mesh's positions.
pub fn global_order(client: &Client, n: usize) -> Result<Vec<i64>> {
    let mut all: Vec<(i32, i32)> = client
        .devices()
        .iter()
        .map(|d| (d.process_index, d.id))
        .collect();
    all.sort_unstable();
    if all.len() < n {
        return Err(Error::NotEnoughDevices {
            what: format!("a mesh of {n} devices"),
            needed: n,
            available: all.len(),
            platform: format!("the `{}` job", client.platform()),
            fix: "use a smaller mesh, or more hosts".into(),
        });
    }
    Ok(all.iter().take(n).map(|(_, id)| i64::from(*id)).collect())
}

/// The rows `[start, end)` of dimension 0 of an argument split by `spec` over `mesh` that the
/// devices at `positions` hold together: one contiguous range (a batch split over the leading
/// mesh axes, as the step's rules give it), else an error naming the argument.
pub fn rows_held(
    what: &str,
    rows: i64,
    spec: &PartitionSpec,
    mesh: &Mesh,
    positions: &[i64],
) -> Result<(i64, i64)> {
    let pieces = spec.tiles(mesh).first().copied().unwrap_or(1);
    let size = rows / pieces.max(1);
    let mut held: Vec<i64> = positions
        .iter()
        .map(|&p| shard_index(spec, mesh, p).first().copied().unwrap_or(0))
        .collect();
    held.sort_unstable();
    held.dedup();
    let (Some(&first), Some(&last)) = (held.first(), held.last()) else {
        return Ok((0, 0));
    };
    if last - first + 1 != held.len() as i64 {
        return Err(Error::invalid(
            format!("{what}: a process's devices hold rows blocks {held:?} of {pieces}"),
            "lay the batch axis out so that each process's devices hold contiguous rows (the data axis first in the mesh)",
        ));
    }
    Ok((first * size, (last + 1) * size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_processes_hold_contiguous_devices_and_rows() {
        let h = Hosts::simulated(8, 4).unwrap();
        assert_eq!(h.devices_of(2), vec![4, 5]);
        assert!(h.leads());
        let mesh = Mesh::parse("data=8").unwrap();
        let spec = PartitionSpec::of(&[&["data"], &[]]);
        assert_eq!(
            rows_held("images", 64, &spec, &mesh, &[4, 5]).unwrap(),
            (32, 48)
        );
        // On data=2,model=4 the first four devices all hold rows 0..32.
        let mesh = Mesh::parse("data=2,model=4").unwrap();
        assert_eq!(
            rows_held("images", 64, &spec, &mesh, &[0, 1, 2, 3]).unwrap(),
            (0, 32)
        );
        assert!(Hosts::simulated(8, 3).is_err());
    }
}
