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
    /// Lay out the simulated GPU's drop-in driver libraries (libcuda.so.1, libnvidia-ml.so.1
    /// and their .so names) in DIR, as symbolic links to the libraries tensor-fusion ships; then
    /// run programs with LD_LIBRARY_PATH=DIR.
    Install {
        /// Directory to write the libraries into (created if needed).
        dir: std::path::PathBuf,
        /// Copy the libraries instead of linking to them (the folder then keeps working if
        /// tensor-fusion is removed).
        #[arg(long)]
        copy: bool,
    },
}

pub fn run(args: FakeGpuArgs) -> Result<()> {
    match args.command {
        FakeGpuCommand::Load { spec } => {
            println!("{}", tf_fake_gpu::load::run_json(&spec)?);
            Ok(())
        }
        FakeGpuCommand::Install { dir, copy } => {
            let mode = if copy {
                tf_fake_gpu::install::InstallMode::Copy
            } else {
                tf_fake_gpu::install::InstallMode::Link
            };
            for f in tf_fake_gpu::install::install(&dir, mode)? {
                println!("{}", f.display());
            }
            eprintln!(
                "run programs on the simulated GPU with: LD_LIBRARY_PATH={}",
                dir.display()
            );
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
            for (file, _) in tf_fake_gpu::install::DRIVER_LIBS {
                match tf_os::artifacts::find(file) {
                    Ok((p, origin)) => println!("library:       {} ({origin})", p.display()),
                    Err(e) => println!("library:       {e}"),
                }
            }
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
