//! Laying out the simulated GPU's drop-in driver libraries so that unmodified programs load them
//! with `LD_LIBRARY_PATH=<dir>`: under the real drivers' names, as symbolic links to the
//! libraries tensor-fusion ships (installed, `$TF_LIB_DIR`, or the build folder; see
//! `tf_os::artifacts`), or as copies.

use std::path::{Path, PathBuf};

use tf_hal::{Error, ErrorKind, Result};

/// (file cargo builds, names the real driver uses)
pub const DRIVER_LIBS: &[(&str, &[&str])] = &[
    ("libcuda.so", &["libcuda.so.1", "libcuda.so"]),
    ("libnvidia_ml.so", &["libnvidia-ml.so.1", "libnvidia-ml.so"]),
    ("libascendcl.so", &["libascendcl.so"]),
    ("libdcmi.so", &["libdcmi.so"]),
];

/// The NVIDIA ones among [`DRIVER_LIBS`]: what CUDA programs and NVML clients load.
pub const NVIDIA_LIBS: &[(&str, &[&str])] = &[DRIVER_LIBS[0], DRIVER_LIBS[1]];

/// The folder, inside the installed library folder, that holds the drop-in libraries under the
/// real drivers' names (laid out by `tensor-fusion install`).
pub const INSTALLED_DRIVER_DIR: &str = "driver";

/// How [`install`] lays the libraries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallMode {
    /// Symbolic links to the shipped libraries (small, and they follow a rebuild).
    Link,
    /// Copies (survive the shipped libraries being removed).
    Copy,
}

/// Find a library tensor-fusion ships (e.g. `libcuda.so`, as cargo names it).
pub fn find_built(file: &str) -> Result<PathBuf> {
    tf_os::artifacts::find(file)
        .map(|(p, _)| p)
        .map_err(|e| Error::new(ErrorKind::LibraryNotFound, e.to_string()))
}

fn io(what: String, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Other, format!("{what}: {e}"))
}

/// Lay the libraries out in `dest` under the real drivers' names. Returns the files written.
pub fn install(dest: &Path, mode: InstallMode) -> Result<Vec<PathBuf>> {
    install_libs(dest, mode, DRIVER_LIBS)
}

/// Lay out `libs` (entries of [`DRIVER_LIBS`]) in `dest`. Every library is found before anything
/// is written, so a missing one changes nothing.
pub fn install_libs(
    dest: &Path,
    mode: InstallMode,
    libs: &[(&str, &[&str])],
) -> Result<Vec<PathBuf>> {
    let sources = libs
        .iter()
        .map(|(built, names)| {
            let src = find_built(built)?;
            Ok((src.canonicalize().unwrap_or(src), *names))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(dest).map_err(|e| io(format!("create {}", dest.display()), e))?;
    let mut written = Vec::new();
    for (src, names) in sources {
        for name in names {
            let to = dest.join(name);
            // Replace atomically, so that a running program that has the old file mapped is
            // unharmed and a concurrent install never sees a half-written file.
            let tmp = dest.join(format!(".{name}.{}.tmp", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            let made = match mode {
                InstallMode::Link => std::os::unix::fs::symlink(&src, &tmp),
                InstallMode::Copy => std::fs::copy(&src, &tmp).map(|_| ()),
            };
            made.and_then(|()| std::fs::rename(&tmp, &to))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    io(
                        format!("write {} (from {})", to.display(), src.display()),
                        e,
                    )
                })?;
            written.push(to);
        }
    }
    Ok(written)
}

/// A folder holding the simulated NVIDIA libraries under the real drivers' names, for
/// `LD_LIBRARY_PATH`: the installed layout's own when tensor-fusion is installed, else one per
/// user (`$TMPDIR/tensor-fusion-<uid>/fake-driver`, links refreshed when they point elsewhere).
pub fn driver_dir() -> Result<PathBuf> {
    driver_dir_of(NVIDIA_LIBS, "fake-driver")
}

/// [`driver_dir`] for `libs`, in the per-user folder `name` when not installed.
pub fn driver_dir_of(libs: &[(&str, &[&str])], name: &str) -> Result<PathBuf> {
    if let Some((first, _)) = libs.first()
        && let Ok((lib, tf_os::artifacts::Origin::Installed)) = tf_os::artifacts::find(first)
        && let Some(dir) = lib.parent().map(|d| d.join(INSTALLED_DRIVER_DIR))
        && libs
            .iter()
            .flat_map(|(_, names)| names.iter())
            .all(|n| dir.join(n).exists())
    {
        return Ok(dir);
    }
    let dir = tf_os::user_runtime_dir()
        .map_err(|e| io("the per-user runtime folder".into(), e))?
        .join(name);
    let stale = libs.iter().any(|(built, names)| {
        let want = find_built(built).ok().and_then(|p| p.canonicalize().ok());
        names
            .iter()
            .any(|n| std::fs::read_link(dir.join(n)).ok() != want)
    });
    if stale {
        install_libs(&dir, InstallMode::Link, libs)?;
    }
    Ok(dir)
}
