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
    /// Write the simulated GPU's drop-in driver libraries (libcuda.so.1, libnvidia-ml.so.1 and
    /// their .so names) into DIR; then run programs with LD_LIBRARY_PATH=DIR.
    Install {
        /// Directory to write the libraries into (created if needed).
        dir: std::path::PathBuf,
    },
}

/// A per-user directory holding the simulated driver libraries, refreshed when the build
/// changed (used by `run` on the simulated GPU).
pub fn installed_driver_dir() -> Result<std::path::PathBuf> {
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    })?;
    let dir = std::env::temp_dir().join(format!("tensor-fusion-fake-driver-{uid}"));
    let stamp = dir.join(".built-from");
    let mut sources = Vec::new();
    for (file, _) in tf_fake_gpu::install::DRIVER_LIBS {
        let p = tf_fake_gpu::install::find_built(file)?;
        let m = std::fs::metadata(&p)?;
        sources.push(format!("{} {} {:?}", p.display(), m.len(), m.modified()?));
    }
    let want = sources.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        tf_fake_gpu::install::install(&dir)?;
        std::fs::write(&stamp, want)?;
    }
    Ok(dir)
}

pub fn run(args: FakeGpuArgs) -> Result<()> {
    match args.command {
        FakeGpuCommand::Load { spec } => {
            println!("{}", tf_fake_gpu::load::run_json(&spec)?);
            Ok(())
        }
        FakeGpuCommand::Install { dir } => {
            for f in tf_fake_gpu::install::install(&dir)? {
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
