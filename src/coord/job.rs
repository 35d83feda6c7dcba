//! One process's part of a multi-process job, from start to clean end: the coordinator's server
//! (process 0), this process's client, and the PJRT client made with the job's store.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::runtime::{Backend, ClientOptions as PjrtOptions, Prefixed, Runtime};

use super::{Client, ClientOptions, ProcessSpec, Server, ServerOptions};

/// How long the processes wait for each other to finish (process 0's server must outlive every
/// other process's last call).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(300);

/// A running job, seen from one process.
pub struct Job {
    pub spec: ProcessSpec,
    pub client: Client,
    /// Process 0's coordinator.
    server: Option<Server>,
}

impl Job {
    /// Joins the job `spec` describes: process 0 starts the coordinator on the port it names,
    /// every process registers with it (a deadline that names the address when it cannot be
    /// reached; duplicate or out-of-range ids refused).
    pub fn start(spec: ProcessSpec, client: ClientOptions) -> Result<Job> {
        let server = if spec.process_id == 0 {
            let opts = ServerOptions {
                job_token: spec.job_token.clone(),
                ..Default::default()
            };
            Some(Server::start(
                &spec.listen_addr(),
                spec.num_processes,
                opts,
            )?)
        } else {
            None
        };
        let opts = ClientOptions {
            job_token: spec.job_token.clone(),
            ..client
        };
        let client = Client::connect(&spec.coordinator, spec.process_id, spec.num_processes, opts)?;
        Ok(Job {
            spec,
            client,
            server,
        })
    }

    /// The job's PJRT client on `backend`, with `base`'s options: the store handed to the
    /// plugin (keys prefixed with the platform, as JAX does), and the CUDA plugin told this
    /// host's node id and the node count. The CPU plugins have no cross-process collectives, so
    /// a job of several processes on `cpu` is refused here, before anything compiles.
    pub fn runtime(&self, backend: &Backend, base: PjrtOptions) -> Result<Runtime> {
        let n = self.spec.num_processes;
        refuse_cpu(&self.spec, backend)?;
        let platform = match backend {
            Backend::Cuda => "cuda",
            Backend::Tpu => "tpu",
            _ => "pjrt",
        };
        let store = Prefixed::new(format!("{platform}:"), Arc::new(self.client.clone()));
        let options = PjrtOptions {
            kv_store: Some(Arc::new(store)),
            node: (*backend == Backend::Cuda).then_some((self.spec.process_id as i64, n as i64)),
            ..base
        };
        Runtime::open_with(backend, &options)
    }

    /// Ends this process's part: waits for every process to finish, then (process 0) stops the
    /// coordinator.
    pub fn finish(mut self) -> Result<()> {
        let r = self.client.shutdown(SHUTDOWN_WAIT);
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        r
    }
}

/// A job of several processes on the `cpu` backend is refused: the CPU plugins have no
/// collectives across processes. Called before the job starts, so that no process waits for the
/// others to register.
pub fn refuse_cpu(spec: &ProcessSpec, backend: &Backend) -> Result<()> {
    let n = spec.num_processes;
    if *backend == Backend::Cpu && n > 1 {
        return Err(Error::invalid(
            format!("a job of {n} processes on the `cpu` backend"),
            "the CPU plugins have no collectives across processes (XLA's CPU client is one \
             process): run one process with --cpu-devices N, or use --backend cuda or tpu",
        ));
    }
    Ok(())
}
