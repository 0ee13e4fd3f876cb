//! Finding files this build produced (driver libraries, the interposer) next to the running
//! executable, so that `cargo build` output and an installed layout both work.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Environment variable naming a directory that holds the built libraries.
pub const LIB_DIR_ENV: &str = "TF_LIB_DIR";

/// Directories searched for built files: `$TF_LIB_DIR`, then beside the running executable and
/// its `deps/` (a cargo target directory), then `../lib/tensor-fusion` (an installed layout).
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

/// Find a built file (e.g. `libcuda.so`) by its cargo file name. `$TF_LIB_DIR` wins; otherwise
/// the newest copy (cargo refreshes `deps/` on every build of a dependent, the profile directory
/// only on `cargo build` of the library itself).
pub fn find_built(file: &str) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(LIB_DIR_ENV).filter(|d| !d.is_empty()) {
        let p = PathBuf::from(d).join(file);
        if p.is_file() {
            return Ok(p);
        }
    }
    let dirs = search_dirs();
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
