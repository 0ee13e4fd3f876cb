//! `tensor-fusion install`: lay tensor-fusion out under a prefix so that it runs from anywhere,
//! with no build folder: the binary in `PREFIX/bin/`, the libraries it ships (the CUDA
//! interposer, the simulated driver libraries) in `PREFIX/lib/tensor-fusion/`, and the simulated
//! driver under its real names in `PREFIX/lib/tensor-fusion/driver/` (what `LD_LIBRARY_PATH`
//! needs). The installed binary finds them there first (see `tf_os::artifacts`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The libraries tensor-fusion ships, as cargo names them.
pub const SHIPPED: &[&str] = &[
    "libtf_cuda_interposer.so",
    "libcuda.so",
    "libnvidia_ml.so",
    "libtf_acl_interposer.so",
    "libascendcl.so",
    "libdcmi.so",
    "libtf_vulkan_layer.so",
    "libtf_remote_cuda.so",
];

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example, from a checkout:\n  cargo build --release --workspace\n  target/release/tensor-fusion install            # into ~/.local\n  ~/.local/bin/tensor-fusion demo"
)]
pub struct InstallArgs {
    /// Installation prefix: the binary goes to PREFIX/bin, the libraries to
    /// PREFIX/lib/tensor-fusion (default: ~/.local).
    #[arg(long)]
    pub prefix: Option<PathBuf>,
    /// Keep the debug information in the installed files (by default it is stripped with
    /// `strip` when that tool is on PATH).
    #[arg(long)]
    pub no_strip: bool,
}

pub fn run(args: InstallArgs) -> Result<()> {
    let prefix = match args.prefix {
        Some(p) => p,
        None => PathBuf::from(
            std::env::var_os("HOME")
                .context("HOME is not set: say where to install with --prefix")?,
        )
        .join(".local"),
    };
    let bin = prefix.join("bin");
    let lib = prefix.join(tf_os::artifacts::INSTALLED_LIB_DIR);
    let driver = lib.join(tf_fake_gpu::install::INSTALLED_DRIVER_DIR);
    for d in [&bin, &lib, &driver] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let strip = !args.no_strip && which("strip").is_some();
    let exe = std::env::current_exe().context("locating this binary")?;
    place(&exe, &bin.join("tensor-fusion"), strip)?;
    for file in SHIPPED {
        let (src, origin) = tf_os::artifacts::find(file)?;
        eprintln!("  {file} ({origin})");
        place(&src, &lib.join(file), strip)?;
    }
    // The Vulkan layer's manifest beside its library (the folder `run` names to the loader).
    let manifest = lib.join(crate::run::VULKAN_LAYER_MANIFEST);
    let tmp = lib.join(format!(".{}.tmp", crate::run::VULKAN_LAYER_MANIFEST));
    std::fs::write(&tmp, crate::run::VULKAN_LAYER_MANIFEST_TEXT)
        .and_then(|()| std::fs::rename(&tmp, &manifest))
        .with_context(|| format!("writing {}", manifest.display()))?;
    // The simulated driver under the real drivers' names, linked to the installed files.
    for (built, names) in tf_fake_gpu::install::DRIVER_LIBS {
        for name in *names {
            let link = driver.join(name);
            let tmp = driver.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(Path::new("..").join(built), &tmp)
                .and_then(|()| std::fs::rename(&tmp, &link))
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    // The remote vGPU's client stub under the drivers' names (what `run --remote` puts on
    // LD_LIBRARY_PATH).
    let stub = lib.join(crate::remote::INSTALLED_STUB_DIR);
    std::fs::create_dir_all(&stub).with_context(|| format!("creating {}", stub.display()))?;
    for (built, names) in crate::remote::STUB_LIBS {
        for name in *names {
            let link = stub.join(name);
            let tmp = stub.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(Path::new("..").join(built), &tmp)
                .and_then(|()| std::fs::rename(&tmp, &link))
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    println!("installed {}", bin.join("tensor-fusion").display());
    println!("libraries in {}", lib.display());
    let on_path =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d == bin));
    if !on_path {
        println!(
            "add {} to PATH to run `tensor-fusion` by name",
            bin.display()
        );
    }
    Ok(())
}

/// Copy `src` to `dest` atomically (a running copy of `dest` is unharmed), stripped of debug
/// information if asked.
fn place(src: &Path, dest: &Path, strip: bool) -> Result<()> {
    if src.canonicalize().ok() == dest.canonicalize().ok() {
        return Ok(()); // installing the installed copy over itself
    }
    let tmp = dest.with_file_name(format!(
        ".{}.{}.tmp",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    if strip {
        let ok = Command::new("strip")
            .arg("--strip-debug")
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            tracing::warn!(file = %src.display(), "strip failed: installing it with its debug information");
        }
    }
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_file(&tmp);
        bail!("installing {}: {e}", dest.display());
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
