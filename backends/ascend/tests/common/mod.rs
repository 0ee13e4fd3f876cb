//! The Ascend backend over the simulated driver: the built libascendcl.so and libdcmi.so and an
//! isolated machine (a 910B3 and a 310P3), named for this test process through the environment
//! before the backend loads them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use tf_fake_gpu::profile::DeviceProfile;
use tf_fake_gpu::testing::{isolated_ascend_config, to_toml};

/// The folder with the simulated libraries and the machine's profile, set up once per process.
pub fn simulated_driver() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tf_test_support::scratch_dir(&format!("ascend-backend-{}", std::process::id()));
        for lib in ["libascendcl.so", "libdcmi.so"] {
            let built = tf_test_support::cdylib(lib).expect("the simulated Ascend driver is built");
            std::fs::copy(&built, dir.join(lib)).unwrap();
        }
        let config = dir.join("npu.toml");
        let machine = isolated_ascend_config(
            "ascend-backend",
            &[DeviceProfile::ascend_910b3, DeviceProfile::ascend_310p3],
        );
        std::fs::write(&config, to_toml(&machine)).unwrap();
        // SAFETY: set once, before any thread of this test process reads these variables (the
        // simulated libraries read them when the backend first loads them, after this).
        unsafe {
            std::env::set_var("TF_FAKE_GPU_CONFIG", &config);
            std::env::set_var("TF_ASCEND_LIBRARY", dir.join("libascendcl.so"));
            std::env::set_var("TF_DCMI_LIBRARY", dir.join("libdcmi.so"));
        }
        dir
    })
}

pub fn simulated_backend() -> tf_backend_ascend::AscendBackend {
    simulated_driver();
    tf_backend_ascend::AscendBackend::new().expect("the Ascend backend over the simulated driver")
}
