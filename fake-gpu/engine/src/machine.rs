//! A private simulated machine: its own segment folder and profile file, which other processes
//! join through `TF_FAKE_GPU_CONFIG`, removed (segments, profile and all) when dropped. What the
//! demo runs on, so that its figures hold whatever else uses the simulated GPU meanwhile.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use tf_hal::{Error, ErrorKind, Result};

use crate::profile::{CONFIG_ENV, FakeGpuConfig};

/// A simulated machine of this process's own, in `$TMPDIR/tensor-fusion-<uid>/machine-*`.
#[derive(Debug)]
pub struct PrivateMachine {
    dir: PathBuf,
    profile: PathBuf,
    config: FakeGpuConfig,
}

impl PrivateMachine {
    /// A private machine with the devices of `template` (their UUIDs included): only its segment
    /// folder differs.
    pub fn new(template: &FakeGpuConfig) -> Result<PrivateMachine> {
        static N: AtomicU32 = AtomicU32::new(0);
        let io = |what: &str, e: std::io::Error| {
            Error::new(
                ErrorKind::Other,
                format!("a private simulated machine: {what}: {e}"),
            )
        };
        let root = tf_os::user_runtime_dir().map_err(|e| io("runtime folder", e))?;
        let dir = root.join(format!(
            "machine-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(|e| io("create", e))?;
        let config = FakeGpuConfig {
            devices: template.devices.clone(),
            shm_dir: shm,
            shm_dir_is_default: false,
            source: None,
        };
        let profile = dir.join("profile.toml");
        let machine = PrivateMachine {
            dir,
            profile,
            config,
        };
        std::fs::write(&machine.profile, crate::testing::to_toml(&machine.config))
            .map_err(|e| io("write the profile", e))?;
        Ok(machine)
    }

    /// The machine's configuration, for this process.
    pub fn config(&self) -> &FakeGpuConfig {
        &self.config
    }

    /// The profile file: other processes join the machine with `TF_FAKE_GPU_CONFIG` set to it.
    pub fn profile(&self) -> &Path {
        &self.profile
    }

    /// `(TF_FAKE_GPU_CONFIG, profile)`, for a child process's environment.
    pub fn env(&self) -> (&'static str, &Path) {
        (CONFIG_ENV, &self.profile)
    }

    /// A folder of the machine's own for other files (vGPU regions, say).
    pub fn folder(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d)
            .map_err(|e| Error::new(ErrorKind::Other, format!("create {}: {e}", d.display())))?;
        Ok(d)
    }
}

impl Drop for PrivateMachine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
