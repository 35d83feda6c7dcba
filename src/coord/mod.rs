//! Coordination of a job that runs as one process per host, the way JAX runs: the same command on
//! every host, XLA's collectives moving the data, and `basic` only coordinating.
//!
//! Process 0 runs a [`Server`]; every process (0 included) connects a [`Client`] to it. The
//! server keeps a write-once key-value store (what the PJRT plugins exchange their topology and
//! NCCL ids through: a `Client` is a [`crate::runtime::KeyValueStore`]), named barriers, a stop
//! notice and the agreement on the step to stop at (preemption), and watches the job: a process whose connection
//! drops, whose heartbeats stop, or whose step stops advancing while others move on fails the
//! job, and every other process's client fails at once with an error naming it. A lost
//! coordinator fails every client within its heartbeat timeout. Nothing waits without a deadline.
//!
//! ```no_run
//! use std::time::Duration;
//! use basic::coord::{self, Client, ClientOptions, Server, ServerOptions};
//! # fn main() -> basic::Result<()> {
//! let env = coord::env_map();
//! if let Some(spec) = coord::discover(&Default::default(), &env, false)? {
//!     let server = (spec.process_id == 0)
//!         .then(|| Server::start(&spec.listen_addr(), spec.num_processes, ServerOptions {
//!             job_token: spec.job_token.clone(),
//!             ..Default::default()
//!         }))
//!         .transpose()?;
//!     let opts = ClientOptions { job_token: spec.job_token.clone(), ..Default::default() };
//!     let client = Client::connect(&spec.coordinator, spec.process_id, spec.num_processes, opts)?;
//!     client.barrier("ready", Duration::from_secs(60))?;
//!     for step in 0.. {
//!         if client.begin_step(step)? {
//!             break; // a stop was requested (SIGTERM): save here, on every process
//!         }
//!         // ... run the step ...
//!     }
//!     client.shutdown(Duration::from_secs(300))?;
//!     drop(server);
//! }
//! # Ok(()) }
//! ```

mod client;
mod discovery;
pub mod job;
mod server;
mod state;
mod wire;

use std::time::Duration;

pub use client::{Client, ClientOptions, FailureCallback, StopNotice};
pub use discovery::{discover, env_map, Explicit, ProcessSpec, DEFAULT_PORT, MAX_PROCESSES};
pub use job::Job;
pub use server::{Server, ServerOptions};
pub use wire::{MAX_KEY, MAX_TEXT, MAX_VALUE};

/// Barrier names the coordinator keeps for itself; a user barrier may not start with this.
pub const RESERVED: &str = "coord/";
/// The barrier of [`Client::shutdown`].
const SHUTDOWN_BARRIER: &str = "coord/shutdown";

/// The coordinator's parsers of untrusted bytes, as the server, the clients and [`discover`]
/// call them, for the fuzz targets of `fuzz/` and their regression test. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::wire::{FrameReader, Polled, ReadError, ToClient, ToServer};

    /// Decodes the body of a frame that a peer sends to the coordinator; on success, the body
    /// that the decoded message encodes back to.
    pub fn to_server(body: &[u8]) -> Result<Vec<u8>, String> {
        let m = ToServer::decode(body).map_err(|m| m.0)?;
        Ok(m.encode()[4..].to_vec())
    }

    /// [`to_server`] for a frame that the coordinator sends to a process.
    pub fn to_client(body: &[u8]) -> Result<Vec<u8>, String> {
        let m = ToClient::decode(body).map_err(|m| m.0)?;
        Ok(m.encode()[4..].to_vec())
    }

    /// Cuts a byte stream into frame bodies of at most `max` bytes as a connection's reader
    /// does, the stream arriving `chunk` bytes per read; the error that ended it, if any.
    pub fn frames(stream: &[u8], max: usize, chunk: usize) -> (Vec<Vec<u8>>, Option<String>) {
        struct Chunked<'a>(&'a [u8], usize);
        impl std::io::Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(self.1.max(1));
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut src = Chunked(stream, chunk);
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        loop {
            match reader.poll(&mut src, max) {
                Ok(Polled::Frame(f)) => out.push(f),
                Ok(Polled::Bytes | Polled::Idle) => {}
                Err(ReadError::Closed { mid_frame: false }) => return (out, None),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    /// The attribute a metadata server's raw HTTP answer carries (see `discover`).
    pub fn metadata_answer(raw: &[u8]) -> Result<Option<String>, String> {
        super::discovery::metadata_answer(raw)
    }

    /// The IPs of a TPU VM's `worker-network-endpoints` attribute.
    pub fn endpoint_ips(list: &str) -> Option<Vec<String>> {
        super::discovery::endpoint_ips(list)
    }

    /// The first host of a SLURM node list.
    pub fn first_host(list: &str) -> Result<String, String> {
        super::discovery::first_host(list)
    }
}

/// `now + d`, saturating ten years out: a timeout from a peer or an option may be any size, and
/// `Instant + Duration` panics on overflow.
pub(crate) fn after(now: std::time::Instant, d: Duration) -> std::time::Instant {
    let cap = Duration::from_secs(10 * 365 * 86_400);
    now.checked_add(d.min(cap)).unwrap_or(now)
}

/// A thread that could not be started: the process is at a limit.
fn spawn_failed(what: &str, e: std::io::Error) -> crate::Error {
    crate::Error::coord(
        crate::StatusCode::Unavailable,
        format!(
            "cannot start a thread of {what}: {e}; the process is out of threads or memory \
             (raise `ulimit -u` or free memory)"
        ),
    )
}

/// `1.5 s`.
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `1, 3, 4` (or `none`).
fn fmt_ids(ids: &[usize]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        let now = std::time::Instant::now();
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(fmt_ids(&[]), "none");
        assert_eq!(fmt_ids(&[1, 3]), "1, 3");
    }
}
