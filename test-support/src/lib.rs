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
//! - [`cdylib`]: the path of a cdylib built by cargo in this workspace;
//! - [`scratch_dir`]: a folder under `target/` that a test rebuilds on every run (instead of a
//!   temporary folder that outlives the run).
//!
//! What is fetched, once (about 115 MB, from PyPI; the README lists it): the wheels
//! `nvidia-cuda-runtime-cu12` and `nvidia-nvml-dev-cu12` (headers only are unpacked), and the
//! clients `cuda-bindings` (about 107 MB installed) and `nvidia-ml-py`. A fetch that fails is a
//! [`FetchError`] whose message says what was fetched, from where, what pip said and how to fix
//! it (network access to PyPI, or `PIP_INDEX_URL` for a mirror).
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

/// A fetch that failed, readable as it is printed (also by `.expect()`, which prints `Debug`).
pub struct FetchError(String);

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\n{}", self.0)
    }
}

impl std::error::Error for FetchError {}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> Self {
        FetchError(e.to_string())
    }
}

/// Run `cmd` (a fetch of `what`); a failure says what, the command line as one would type it,
/// the end of what it printed, and the fix.
fn fetch(what: &str, cmd: &mut Command) -> Result<(), FetchError> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let fix = "The tests fetch this from PyPI once (into target/tf-test-deps/): give this machine \
               access to https://pypi.org, or set PIP_INDEX_URL to a mirror, then run the tests \
               again.";
    let out = cmd.output().map_err(|e| {
        FetchError(format!(
            "cannot fetch {what}: `{line}` did not start: {e}. {fix}"
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = said.lines().rev().take(6).collect();
    Err(FetchError(format!(
        "cannot fetch {what}: `{line}` failed ({}):\n  {}\n{fix}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
    )))
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
pub fn python_packages(specs: &[&str]) -> Result<PathBuf, FetchError> {
    let root = deps_dir();
    let _lock = Lock::take(&root.join("python.lock"));
    let dir = root.join("py").join(key(specs));
    let done = dir.join(".installed");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir); // a half-finished earlier attempt
    fetch(
        &specs.join(" "),
        Command::new(python())
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
            .args(specs),
    )?;
    std::fs::write(&done, specs.join("\n"))?;
    Ok(dir)
}

/// The Python interpreter the tests use (`$PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A directory holding NVIDIA's `cuda.h`, `cudaTypedefs.h` and `nvml.h`, fetched from PyPI.
pub fn cuda_include_dir() -> Result<PathBuf, FetchError> {
    let root = deps_dir();
    let _lock = Lock::take(&root.join("headers.lock"));
    let inc = root.join("cuda-include");
    if inc.join("cuda.h").exists() && inc.join("nvml.h").exists() {
        return Ok(inc);
    }
    let wheels = root.join("wheels");
    fetch(
        "NVIDIA's cuda.h and nvml.h (PyPI wheels)",
        Command::new(python())
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
            .args([CUDA_RUNTIME_WHEEL, NVML_DEV_WHEEL]),
    )?;
    std::fs::create_dir_all(&inc)?;
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
    fetch(
        "the headers out of the wheels",
        Command::new(python())
            .args(["-c", script])
            .arg(&wheels)
            .arg(&inc),
    )?;
    if !inc.join("cuda.h").exists() || !inc.join("nvml.h").exists() {
        return Err(FetchError(format!(
            "cuda.h or nvml.h missing after unpacking the wheels in {} into {}",
            wheels.display(),
            inc.display()
        )));
    }
    Ok(inc)
}

/// A finished process's exit status, stdout and stderr, for an assertion's message.
pub fn show(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The test kernels' PTX (`hal/kernels/tf_kernels.ptx`), for programs that load it by path.
pub fn test_kernels_ptx() -> PathBuf {
    workspace_root().join("hal/kernels/tf_kernels.ptx")
}

/// A folder for files a test makes on every run (programs it compiles, say):
/// `target/tf-test-work/<name>`, emptied first. Unlike a temporary folder kept for the life of
/// a test binary, it is reused by the next run rather than left behind.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = target_dir().join("tf-test-work").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch folder under target/");
    d
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
    fn an_unreachable_index_is_a_readable_error_that_names_the_fix() {
        let dir = std::env::temp_dir().join(format!("tf-fetch-test-{}", std::process::id()));
        let e = super::fetch(
            "a package",
            std::process::Command::new(super::python()).args([
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--retries",
                "0",
                "--timeout",
                "1",
                "--no-deps",
                "--index-url",
                "http://127.0.0.1:9/simple",
                "-d",
                dir.to_str().unwrap(),
                "tf-no-such-package==1.0",
            ]),
        )
        .unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let msg = format!("{e:?}");
        assert!(msg.contains("cannot fetch a package"), "{msg}");
        assert!(
            msg.contains("pip download"),
            "the command as one types it: {msg}"
        );
        assert!(!msg.contains("\""), "no escaped quoting: {msg}");
        assert!(msg.contains("PIP_INDEX_URL"), "names the fix: {msg}");
    }

    #[test]
    fn nvidia_headers_are_fetched_and_cached() {
        let inc = super::cuda_include_dir().unwrap();
        let cuda = std::fs::read_to_string(inc.join("cuda.h")).unwrap();
        assert!(cuda.contains("cuMemAlloc_v2"));
        assert!(inc.join("cudaTypedefs.h").exists());
        assert_eq!(super::cuda_include_dir().unwrap(), inc);
    }
}
