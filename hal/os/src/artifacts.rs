//! Finding the files tensor-fusion ships beside its binary (the interposer, the simulated driver
//! libraries), wherever it runs from.
//!
//! Search order, first match wins:
//! 1. the installed layout: `<prefix>/lib/tensor-fusion/` for a binary in `<prefix>/bin/`
//!    (what `tensor-fusion install` lays out);
//! 2. `$TF_LIB_DIR`;
//! 3. the cargo build folder the binary runs from (`target/<profile>/` and its `deps/`; the
//!    newest copy, since cargo refreshes `deps/` on every build of a dependent).
//!
//! A file found nowhere is a [`NotFound`] that says where it looked and how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable naming a directory that holds the libraries.
pub const LIB_DIR_ENV: &str = "TF_LIB_DIR";
/// Where the libraries live under an installation prefix.
pub const INSTALLED_LIB_DIR: &str = "lib/tensor-fusion";

/// Where a file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `<prefix>/lib/tensor-fusion/` beside the installed binary.
    Installed,
    /// `$TF_LIB_DIR`.
    LibDirEnv,
    /// The cargo build folder the binary runs from.
    BuildFolder,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Installed => "installed beside the binary",
            Origin::LibDirEnv => "from $TF_LIB_DIR",
            Origin::BuildFolder => "from the build folder",
        })
    }
}

/// A file that is nowhere to be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    pub file: String,
    pub searched: Vec<PathBuf>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot find {} (looked in {}). Fix: install tensor-fusion with its libraries \
             (`cargo build --release --workspace && target/release/tensor-fusion install`), \
             or set {LIB_DIR_ENV} to the folder that holds {}, or build them in this checkout \
             (`cargo build --release --workspace`)",
            self.file,
            if self.searched.is_empty() {
                "nowhere: the binary's own location is unknown".to_string()
            } else {
                self.searched
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.file
        )
    }
}

impl std::error::Error for NotFound {}

/// The directories searched, in order, with what each is.
pub fn search_dirs() -> Vec<(PathBuf, Origin)> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.canonicalize().ok().or(Some(e)))
        .and_then(|e| e.parent().map(Path::to_path_buf));
    search_dirs_for(
        exe_dir.as_deref(),
        std::env::var_os(LIB_DIR_ENV).map(PathBuf::from),
    )
}

fn search_dirs_for(exe_dir: Option<&Path>, lib_dir_env: Option<PathBuf>) -> Vec<(PathBuf, Origin)> {
    let mut dirs = Vec::new();
    if let Some(prefix) = exe_dir.and_then(Path::parent) {
        dirs.push((prefix.join(INSTALLED_LIB_DIR), Origin::Installed));
    }
    if let Some(d) = lib_dir_env.filter(|d| !d.as_os_str().is_empty()) {
        dirs.push((d, Origin::LibDirEnv));
    }
    if let Some(exe_dir) = exe_dir {
        dirs.push((exe_dir.to_path_buf(), Origin::BuildFolder));
        dirs.push((exe_dir.join("deps"), Origin::BuildFolder));
        if let Some(parent) = exe_dir.parent() {
            // Test binaries run from target/<profile>/deps/.
            dirs.push((parent.join("deps"), Origin::BuildFolder));
        }
    }
    dirs
}

/// Find `file` (as cargo names it, e.g. `libtf_cuda_interposer.so`).
pub fn find(file: &str) -> Result<(PathBuf, Origin), NotFound> {
    find_in(file, &search_dirs())
}

fn find_in(file: &str, dirs: &[(PathBuf, Origin)]) -> Result<(PathBuf, Origin), NotFound> {
    for origin in [Origin::Installed, Origin::LibDirEnv] {
        if let Some((d, _)) = dirs
            .iter()
            .find(|(d, o)| *o == origin && d.join(file).is_file())
        {
            return Ok((d.join(file), origin));
        }
    }
    dirs.iter()
        .filter(|(_, o)| *o == Origin::BuildFolder)
        .map(|(d, _)| d.join(file))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| (p, Origin::BuildFolder))
        .ok_or_else(|| NotFound {
            file: file.to_string(),
            searched: dirs.iter().map(|(d, _)| d.clone()).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_layout_wins_then_the_variable_then_the_build_folder() {
        let root = tempfile::tempdir().unwrap();
        let prefix = root.path().join("prefix");
        let bin = prefix.join("bin");
        let lib = prefix.join(INSTALLED_LIB_DIR);
        let env = root.path().join("env");
        for d in [&bin, &lib, &env] {
            std::fs::create_dir_all(d).unwrap();
        }
        let dirs = search_dirs_for(Some(&bin), Some(env.clone()));
        let e = find_in("libx.so", &dirs).unwrap_err();
        assert_eq!(e.searched.len(), 5);
        let msg = e.to_string();
        assert!(msg.contains("cannot find libx.so"), "{msg}");
        assert!(msg.contains(&lib.display().to_string()), "{msg}");
        assert!(msg.contains("TF_LIB_DIR"), "{msg}");
        assert!(msg.contains("tensor-fusion install"), "{msg}");

        std::fs::write(bin.join("libx.so"), b"build").unwrap();
        assert_eq!(
            find_in("libx.so", &dirs).unwrap(),
            (bin.join("libx.so"), Origin::BuildFolder)
        );
        std::fs::write(env.join("libx.so"), b"env").unwrap();
        assert_eq!(
            find_in("libx.so", &dirs).unwrap(),
            (env.join("libx.so"), Origin::LibDirEnv)
        );
        std::fs::write(lib.join("libx.so"), b"installed").unwrap();
        assert_eq!(
            find_in("libx.so", &dirs).unwrap(),
            (lib.join("libx.so"), Origin::Installed)
        );
    }
}
