//! Laying out the simulated GPU's drop-in driver libraries so that unmodified programs load them
//! with `LD_LIBRARY_PATH=<dir>`.

use std::path::{Path, PathBuf};

use tf_hal::{Error, ErrorKind, Result};

/// (file cargo builds, names the real driver uses)
pub const DRIVER_LIBS: &[(&str, &[&str])] = &[
    ("libcuda.so", &["libcuda.so.1", "libcuda.so"]),
    ("libnvidia_ml.so", &["libnvidia-ml.so.1", "libnvidia-ml.so"]),
];

pub use tf_hal::artifacts::{LIB_DIR_ENV, find_built, search_dirs};

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
            let tmp = dest.join(format!(".{name}.{}.tmp", std::process::id()));
            std::fs::copy(&src, &tmp)
                .map_err(|e| io(format!("copy {} to {}", src.display(), tmp.display()), e))?;
            std::fs::rename(&tmp, &to).map_err(|e| io(format!("rename to {}", to.display()), e))?;
            written.push(to);
        }
    }
    Ok(written)
}
