//! clap definitions and the thin glue from flags to library calls.

mod devices;
mod model;
mod plan;
mod run;
mod train;

use clap::{Args, Parser, Subcommand};

/// Plan, compile, train and evaluate BASIC-style contrastive image–text models on XLA.
#[derive(Parser, Debug)]
#[command(name = "basic", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by every command that talks to a device.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// PJRT plugin: `cpu`, `cuda`, `tpu`, or the path of a plugin `.so`
    /// [default: $BASIC_PJRT_PLUGIN, else cpu]
    #[arg(long, value_name = "cpu|cuda|tpu|PATH")]
    pub backend: Option<String>,

    /// Number of virtual CPU devices (CPU plugins only)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub cpu_devices: Option<u32>,

    /// CUDA only: act as a job of SLICESxHOSTSxGPUS with NCCL mocked, so that one GPU runs the
    /// multi-host paths (topology exchange, partitioning over hosts) for checks
    #[arg(long, value_name = "SxHxG")]
    pub mock_gpu_topology: Option<String>,
}

impl BackendArgs {
    pub fn kind(&self) -> basic::runtime::Backend {
        basic::runtime::Backend::from_flag_or_env(self.backend.as_deref())
    }

    /// The client options the flags ask for.
    pub fn options(&self) -> anyhow::Result<basic::runtime::ClientOptions> {
        if let Some(t) = &self.mock_gpu_topology {
            let dims: Vec<Option<u32>> = t.split('x').map(|d| d.parse().ok()).collect();
            if dims.len() != 3 || dims.iter().any(|d| d.is_none_or(|n| n == 0)) {
                return Err(basic::Error::invalid(
                    format!("--mock-gpu-topology {t}"),
                    "give slices, hosts per slice and GPUs per host as SxHxG, e.g. 1x2x1 (two hosts of one GPU)",
                )
                .into());
            }
            if self.kind() != basic::runtime::Backend::Cuda {
                return Err(basic::Error::invalid(
                    "--mock-gpu-topology",
                    "only the CUDA plugin mocks NCCL: add --backend cuda",
                )
                .into());
            }
        }
        Ok(basic::runtime::ClientOptions {
            cpu_device_count: self.cpu_devices.map(i64::from),
            mock_gpu_topology: self.mock_gpu_topology.clone(),
            ..Default::default()
        })
    }

    pub fn open(&self) -> anyhow::Result<basic::runtime::Runtime> {
        Ok(basic::runtime::Runtime::open_with(
            &self.kind(),
            &self.options()?,
        )?)
    }

    /// Joins the job the process flags, the environment or the cluster describe (process 0
    /// starting the coordinator) and opens the backend with the job's store; without a job,
    /// opens it alone. Every later error of a job's process names it. End the job with
    /// [`end_job`] after the runtime is dropped.
    pub fn open_in_job(
        &self,
        processes: &ProcessArgs,
    ) -> anyhow::Result<(basic::runtime::Runtime, Option<basic::coord::Job>)> {
        let backend = self.kind();
        let Some(spec) = processes.discover(&backend)? else {
            return Ok((self.open()?, None));
        };
        basic::coord::job::refuse_cpu(&spec, &backend)?;
        std::env::set_var(
            "BASIC_PROCESS_LABEL",
            format!("process {} of {}", spec.process_id, spec.num_processes),
        );
        let job = basic::coord::Job::start(spec, Default::default())?;
        let rt = job.runtime(&backend, self.options()?)?;
        Ok((rt, Some(job)))
    }
}

/// Ends this process's part of a job (after its runtime is dropped): waits for the others, then
/// process 0 stops the coordinator.
pub fn end_job(job: Option<basic::coord::Job>) -> anyhow::Result<()> {
    if let Some(j) = job {
        j.finish()?;
    }
    Ok(())
}

/// The process layout of a job over several hosts (the same command on every host).
#[derive(Args, Debug, Clone, Default)]
pub struct ProcessArgs {
    /// Process 0's coordinator, HOST:PORT [default: $BASIC_COORDINATOR, else discovered on Cloud
    /// TPU VMs, GKE and SLURM; none: one process]
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,

    /// Processes in the job [default: $BASIC_NUM_PROCESSES, else discovered]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub num_processes: Option<u32>,

    /// This process's index, 0 to N-1 [default: $BASIC_PROCESS_ID, else discovered]
    #[arg(long, value_name = "I")]
    pub process_id: Option<u32>,
}

impl ProcessArgs {
    /// The job this process belongs to: from the flags, the environment (`BASIC_*`, SLURM, GKE,
    /// JobSets) or, on TPUs, the VM's metadata server; `None` for one process.
    pub fn discover(
        &self,
        backend: &basic::runtime::Backend,
    ) -> anyhow::Result<Option<basic::coord::ProcessSpec>> {
        let explicit = basic::coord::Explicit {
            coordinator: self.coordinator.clone(),
            num_processes: self.num_processes.map(|n| n as usize),
            process_id: self.process_id.map(|n| n as usize),
        };
        let tpu = *backend == basic::runtime::Backend::Tpu;
        Ok(basic::coord::discover(
            &explicit,
            &basic::coord::env_map(),
            tpu,
        )?)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the plugin, its versions and its devices
    Devices(devices::DevicesArgs),
    /// Compile a StableHLO file, report its per-device memory, and run it on generated inputs
    Run(run::RunArgs),
    /// Compile the training step without running it: parameters, FLOPs, per-device memory
    Compile(model::CompileArgs),
    /// Find the micro-batches, remat, mesh and partitioning that fit a target's HBM
    Plan(plan::PlanArgs),
    /// Loss and gradient of every parameter for one batch (parity with other frameworks)
    Grad(model::GradArgs),
    /// Image and text embeddings and the logit scale of one batch
    Embed(model::EmbedArgs),
    /// Turn a dataset into captioned shards
    #[command(subcommand)]
    Data(train::DataCommand),
    /// Train or inspect tokenizers
    #[command(subcommand)]
    Tokenizer(train::TokenizerCommand),
    /// Train a model on image–text data
    Train(train::TrainArgs),
    /// Evaluate a trained run or an imported checkpoint
    #[command(subcommand)]
    Eval(train::EvalCommand),
    /// Write a run as a folder transformers (`hf`) or open_clip load unchanged
    Export(train::ExportArgs),
}

pub fn main() -> std::process::ExitCode {
    // Before any thread starts: may re-execute the program with glibc's huge-page tunable.
    basic::runtime::host::use_huge_pages();
    // The XLA plugins log info lines to stderr at start; keep warnings and errors only.
    if std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "1");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices(a) => devices::run(&a),
        Command::Run(a) => run::run(&a),
        Command::Compile(a) => model::compile(&a),
        Command::Plan(a) => plan::run(&a),
        Command::Grad(a) => model::grad(&a),
        Command::Embed(a) => model::embed(&a),
        Command::Data(c) => train::data(&c),
        Command::Tokenizer(c) => train::tokenizer(&c),
        Command::Train(a) => train::run_train(&a),
        Command::Eval(e) => train::eval(&e),
        Command::Export(a) => train::export(&a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // In a job of several processes every one logs its own errors, with its index.
            match std::env::var("BASIC_PROCESS_LABEL") {
                Ok(label) => eprintln!("error ({label}): {e:#}"),
                Err(_) => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
