//! `tensor-fusion`: the user's command line.
// The driver-library crates (tf-fake-libcuda, tf-fake-nvml, tf-cuda-interposer) are
// dependencies only so that cargo builds their cdylibs beside this binary; linking them in would
// export `cuInit`, `dlsym`, ... from the binary itself, so they stay unused on purpose.
#![allow(unused_crate_dependencies)]

mod args;
mod backends;
mod bench;
mod config;
mod cudaprobe;
mod demo;
mod demo_node;
mod devices;
mod fakegpu;
mod install;
mod k8s;
mod node;
mod remote;
mod run;
mod sim;
mod top;

use clap::{Parser, Subcommand};

/// GPU virtualization and pooling: fractions of a GPU (a share of its time and of its VRAM) for
/// AI workloads, and the scheduler that places them over a pool of GPU nodes.
///
/// Backends: the simulated GPU (fake, the default) and NVIDIA (cuda), chosen with --backend
/// where a command takes it, else $TF_BACKEND, else the `backend` key of the config file
/// ($TF_CONFIG or /etc/tensor-fusion/config.toml); Ascend (ascend) is not built yet. Logs go to
/// stderr, filtered by $TF_LOG (e.g. TF_LOG=debug).
#[derive(Debug, Parser)]
#[command(name = "tensor-fusion", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the devices a backend sees (index, UUID, model, memory, SMs, TFLOPS, vendor, backend).
    Devices(devices::DevicesArgs),
    /// Run the demonstration on the simulated GPU.
    Demo(demo::DemoArgs),
    /// Tools for the simulated GPU.
    FakeGpu(fakegpu::FakeGpuArgs),
    /// Run a command on a fraction of one GPU (VRAM quota and compute share), no daemon needed.
    Run(run::RunArgs),
    /// The node daemon: owns this machine's devices and every vGPU on them.
    Node(node::NodeArgs),
    /// The node daemon's vGPUs: create, ls, rm.
    Vgpu(node::VgpuArgs),
    /// A live view of the node daemon's devices and vGPUs.
    Top(top::TopArgs),
    /// Serve a device to remote clients (a remote vGPU): tensor-fusion run --remote, the
    /// client stub libcuda.so.1, or anything written against the HAL connect to it.
    Worker(remote::WorkerArgs),
    /// Scheduler trace simulator and throughput bench.
    Sim(sim::SimArgs),
    /// Benchmarks that print their figures as JSON lines.
    Bench(bench::BenchArgs),
    /// The Kubernetes operator: controllers, the admission webhook and the scheduler extender
    /// (HTTPS), one leader by a Lease.
    Operator(k8s::OperatorArgs),
    /// Register this node's GPUNode and GPUs (HAL discovery) with Kubernetes and keep their
    /// status true.
    NodeAgent(k8s::NodeAgentArgs),
    /// Render everything a Kubernetes install needs (CRDs, RBAC, operator, node agent, webhook,
    /// scheduler configuration).
    Manifests(k8s::ManifestsArgs),
    /// Install tensor-fusion (the binary and the libraries it ships) under a prefix, so that it
    /// runs from any folder without the build folder.
    Install(install::InstallArgs),
    /// A small CUDA program (used by the demo): `vram BLOCK_MIB` or `busy SECONDS WARMUP`.
    #[command(hide = true)]
    CudaProbe {
        /// vram or busy.
        mode: String,
        /// Mode arguments.
        args: Vec<f64>,
    },
    /// Time driver calls in this process (used by `bench limiter`).
    #[command(hide = true)]
    BenchProbe {
        /// Calls to time.
        iterations: u32,
    },
}

/// Logs on stderr, filtered by `TF_LOG` (default `warn`): tracing's text with fields, or one
/// JSON object per line with `TF_LOG_FORMAT=json` (for a log collector; what a daemon under
/// systemd or in a Pod would use).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var("TF_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().with_current_span(false).init(),
        Ok(other) if !other.is_empty() && other != "text" => {
            builder.with_ansi(false).init();
            tracing::warn!("TF_LOG_FORMAT={other:?} is not a format (text or json); using text");
        }
        _ => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> std::process::ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices(args) => devices::run(args),
        Command::Demo(args) => demo::run(args),
        Command::FakeGpu(args) => fakegpu::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Worker(args) => remote::worker(args),
        Command::Bench(args) => bench::run(args),
        Command::Install(args) => install::run(args),
        Command::Operator(args) => k8s::operator(args),
        Command::NodeAgent(args) => k8s::node_agent(args),
        Command::Manifests(args) => k8s::manifests(args),
        Command::Node(args) => node::node(args),
        Command::Vgpu(args) => node::vgpu(args),
        Command::Top(args) => top::run(args),
        Command::BenchProbe { iterations } => bench::probe(iterations),
        Command::CudaProbe { mode, args } => {
            let v = match (mode.as_str(), args.as_slice()) {
                ("vram", [mib]) => cudaprobe::vram(*mib as u64),
                ("busy", [seconds, warmup]) => cudaprobe::busy(*seconds, *warmup, 0),
                ("busy", [seconds, warmup, mib]) => cudaprobe::busy(*seconds, *warmup, *mib as u64),
                _ => Err(anyhow::anyhow!(
                    "usage: cuda-probe vram BLOCK_MIB | busy SECONDS WARMUP [HOLD_MIB]"
                )),
            };
            v.map(|v| println!("{v}"))
        }
        Command::Run(args) => match run::run(args) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tensor-fusion: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
