//! Laying out the simulated GPU's drop-in driver libraries so that unmodified programs load them
//! with `LD_LIBRARY_PATH=<dir>`.

use std::path::{Path, PathBuf};

use tf_hal::{Error, ErrorKind, Result};

/// (file cargo builds, names the real driver uses)
pub const DRIVER_LIBS: &[(&str, &[&str])] = &[
    ("libcuda.so", &["libcuda.so.1", "libcuda.so"]),
    ("libnvidia_ml.so", &["libnvidia-ml.so.1", "libnvidia-ml.so"]),
];

/// Environment variable naming a directory that holds the built libraries.
pub const LIB_DIR_ENV: &str = "TF_FAKE_GPU_LIB_DIR";

/// Directories searched for the built libraries: `$TF_FAKE_GPU_LIB_DIR`, then beside the running
/// executable and its `deps/` (a cargo target directory), then `../lib/tensor-fusion` (an
/// installed layout).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os(LIB_DIR_ENV).filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.clone());
        dirs.push(exe_dir.join("deps"));
        if let Some(parent) = exe_dir.parent() {
            dirs.push(parent.join("deps"));
            dirs.push(parent.join("lib").join("tensor-fusion"));
        }
    }
    dirs
}

/// Find a built library by its cargo file name.
pub fn find_built(file: &str) -> Result<PathBuf> {
    let dirs = search_dirs();
    // An explicit directory wins; otherwise take the newest build (cargo refreshes deps/ on
    // every build of a dependent, the profile directory only on `cargo build` of the library).
    if let Some(d) = std::env::var_os(LIB_DIR_ENV).filter(|d| !d.is_empty()) {
        let p = PathBuf::from(d).join(file);
        if p.is_file() {
            return Ok(p);
        }
    }
    dirs.iter()
        .map(|d| d.join(file))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::LibraryNotFound,
                format!(
                    "{file} is not built: run `cargo build --release --workspace` (searched {})",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// Copy the libraries into `dest` under the real drivers' names. Returns the files written.
pub fn install(dest: &Path) -> Result<Vec<PathBuf>> {
    let io = |what: String, e: std::io::Error| Error::new(ErrorKind::Other, format!("{what}: {e}"));
    std::fs::create_dir_all(dest).map_err(|e| io(format!("create {}", dest.display()), e))?;
    let mut written = Vec::new();
    for (built, names) in DRIVER_LIBS {
        let src = find_built(built)?;
        for name in *names {
            let to = dest.join(name);
            // Replace atomically so a running program that has the old file mapped is unharmed.
            let tmp = dest.join(format!(".{name}.tmp"));
            std::fs::copy(&src, &tmp)
                .map_err(|e| io(format!("copy {} to {}", src.display(), tmp.display()), e))?;
            std::fs::rename(&tmp, &to).map_err(|e| io(format!("rename to {}", to.display()), e))?;
            written.push(to);
        }
    }
    Ok(written)
}
