//! Helpers for tests that run real third-party programs against tensor-fusion.
//!
//! Everything is fetched once into `target/tf-test-deps/` (under a file lock, so parallel test
//! processes share one download), so `cargo test --workspace` works on a fresh machine with
//! network access, and `.ci/run` can fetch it all up front.
//!
//! - [`python_packages`]: PyPI packages (e.g. `nvidia-ml-py`, `cuda-python`) installed with
//!   `pip --target`, returned as a `PYTHONPATH` entry;
//! - [`cuda_include_dir`]: NVIDIA's `cuda.h` and `nvml.h` from the PyPI wheels
//!   `nvidia-cuda-runtime-cu12` and `nvidia-nvml-dev-cu12` (never committed);
//! - [`cdylib`]: the path of a cdylib built by cargo in this workspace.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Pinned versions of what the tests fetch.
pub const CUDA_RUNTIME_WHEEL: &str = "nvidia-cuda-runtime-cu12==12.9.79";
pub const NVML_DEV_WHEEL: &str = "nvidia-nvml-dev-cu12==12.9.79";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace")
        .to_path_buf()
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Where fetched test dependencies live.
pub fn deps_dir() -> PathBuf {
    let d = target_dir().join("tf-test-deps");
    std::fs::create_dir_all(&d).expect("create target/tf-test-deps");
    d
}

struct Lock(File);

impl Lock {
    fn take(path: &Path) -> Lock {
        let f = File::create(path).expect("create lock file");
        // SAFETY: flock on a descriptor we own and keep open in the guard.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "lock {}", path.display());
        Lock(f)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: unlocking the lock this guard holds.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn key(specs: &[&str]) -> String {
    specs
        .iter()
        .map(|s| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// Install PyPI packages (pip requirement specs) into a private directory; returns it, for
/// `PYTHONPATH`.
pub fn python_packages(specs: &[&str]) -> Result<PathBuf, String> {
    let root = deps_dir();
    let _lock = Lock::take(&root.join("python.lock"));
    let dir = root.join("py").join(key(specs));
    let done = dir.join(".installed");
    if done.exists() {
        return Ok(dir);
    }
    run(Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
        ])
        .arg(&dir)
        .args(specs))?;
    std::fs::write(&done, specs.join("\n")).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// The Python interpreter the tests use (`$PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A directory holding NVIDIA's `cuda.h`, `cudaTypedefs.h` and `nvml.h`, fetched from PyPI.
pub fn cuda_include_dir() -> Result<PathBuf, String> {
    let root = deps_dir();
    let _lock = Lock::take(&root.join("headers.lock"));
    let inc = root.join("cuda-include");
    if inc.join("cuda.h").exists() && inc.join("nvml.h").exists() {
        return Ok(inc);
    }
    let wheels = root.join("wheels");
    run(Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--platform",
            "manylinux2014_x86_64",
            "-d",
        ])
        .arg(&wheels)
        .args([CUDA_RUNTIME_WHEEL, NVML_DEV_WHEEL]))?;
    std::fs::create_dir_all(&inc).map_err(|e| e.to_string())?;
    // Unpack only the include directories, with Python's zipfile (no unzip needed).
    let script = r#"
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
for w in glob.glob(os.path.join(wheels, "*.whl")):
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            if "/include/" in n and n.endswith(".h"):
                with open(os.path.join(out, os.path.basename(n)), "wb") as f:
                    f.write(z.read(n))
"#;
    run(Command::new(python())
        .args(["-c", script])
        .arg(&wheels)
        .arg(&inc))?;
    if !inc.join("cuda.h").exists() || !inc.join("nvml.h").exists() {
        return Err(format!(
            "cuda.h or nvml.h missing after unpacking wheels into {}",
            inc.display()
        ));
    }
    Ok(inc)
}

/// The path of a cdylib this workspace built (e.g. `cdylib("libcuda.so")`), looking in the
/// profile directory of the running test and its `deps/`.
pub fn cdylib(file: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/<test binary>
    let deps = exe.parent().ok_or("no parent")?;
    let profile = deps.parent().ok_or("no profile dir")?;
    // Cargo rebuilds deps/ whenever a dependent is built, but refreshes the copy in the
    // profile directory only on `cargo build` of the library itself: take the newer one.
    let newest = [profile, deps]
        .iter()
        .map(|d| d.join(file))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t);
    if let Some((_, p)) = newest {
        return Ok(p);
    }
    Err(format!(
        "{file} not found in {} or its deps/: build the workspace first (cargo build --workspace)",
        profile.display()
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn nvidia_headers_are_fetched_and_cached() {
        let inc = super::cuda_include_dir().unwrap();
        let cuda = std::fs::read_to_string(inc.join("cuda.h")).unwrap();
        assert!(cuda.contains("cuMemAlloc_v2"));
        assert!(inc.join("cudaTypedefs.h").exists());
        assert_eq!(super::cuda_include_dir().unwrap(), inc);
    }
}
