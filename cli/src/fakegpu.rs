//! `tensor-fusion fake-gpu`: tools for the simulated GPU.

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct FakeGpuArgs {
    #[command(subcommand)]
    pub command: FakeGpuCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum FakeGpuCommand {
    /// Keep a simulated device busy with back-to-back kernels and print this process's share
    /// as JSON. SPEC is a JSON `LoadSpec` (used by the demo to start contending processes).
    #[command(hide = true)]
    Load {
        /// JSON load specification.
        spec: String,
    },
    /// Show the simulated machine's configuration: where profiles and shared memory live.
    Info,
}

pub fn run(args: FakeGpuArgs) -> Result<()> {
    match args.command {
        FakeGpuCommand::Load { spec } => {
            let spec: tf_fake_gpu::load::LoadSpec = serde_json::from_str(&spec)?;
            let gpu = tf_fake_gpu::FakeGpu::global()?;
            let report = tf_fake_gpu::load::run(&gpu, &spec)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        FakeGpuCommand::Info => {
            let gpu = tf_fake_gpu::FakeGpu::global()?;
            let cfg = gpu.config();
            match &cfg.source {
                Some(p) => println!(
                    "profile:       {} (from ${})",
                    p.display(),
                    tf_fake_gpu::profile::CONFIG_ENV
                ),
                None => println!(
                    "profile:       built-in default, 2 x NVIDIA H100 SXM5 80GB (set ${} to a TOML file to change)",
                    tf_fake_gpu::profile::CONFIG_ENV
                ),
            }
            println!("shared memory: {}", cfg.shm_dir.display());
            for d in gpu.devices() {
                let m = d.memory();
                println!(
                    "device {}: {} {} used {} of {}, {} processes, {} kernels run",
                    d.index(),
                    d.info().uuid,
                    d.info().model,
                    tf_hal::units::format_bytes(m.used_bytes),
                    tf_hal::units::format_bytes(m.total_bytes),
                    d.segment().processes().len(),
                    d.segment().kernels_total()
                );
            }
            Ok(())
        }
    }
}
