//! Helpers shared by the tests that load the built library: an isolated simulated machine, the
//! library laid out under the real driver's names, and child processes (the library reads
//! `TF_FAKE_GPU_CONFIG` when it initialises, so each check runs in a process of its own with the
//! machine in its environment).
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tf_fake_gpu::FakeGpuConfig;
use tf_fake_gpu::load::LoadSpec;
use tf_fake_gpu::testing::{isolated_config, to_toml};

/// Environment variable that tells a child which test body to run.
pub const CHILD_ENV: &str = "TF_NVML_TEST_CHILD";
/// Environment variable that gives a child the path of the installed `libnvidia-ml.so.1`.
pub const LIB_ENV: &str = "TF_NVML_TEST_LIB";

/// An isolated simulated machine with its profile written to a file, and the library installed
/// beside it.
pub struct Machine {
    pub config: FakeGpuConfig,
    pub config_path: PathBuf,
    /// The directory holding `libnvidia-ml.so.1` and `libnvidia-ml.so`.
    pub lib_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Machine {
    pub fn new(tag: &str, devices: u32) -> Machine {
        let config = isolated_config(tag, devices);
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gpu.toml");
        std::fs::write(&config_path, to_toml(&config)).unwrap();
        let lib_dir = dir.path().join("lib");
        install_nvml(&lib_dir);
        Machine {
            config,
            config_path,
            lib_dir,
            dir,
        }
    }

    /// The installed library, by the name programs load.
    pub fn lib(&self) -> PathBuf {
        self.lib_dir.join("libnvidia-ml.so.1")
    }

    /// Environment for a process that uses this machine.
    pub fn env(&self) -> Vec<(String, OsString)> {
        vec![
            (
                "TF_FAKE_GPU_CONFIG".into(),
                self.config_path.clone().into_os_string(),
            ),
            (LIB_ENV.into(), self.lib().into_os_string()),
        ]
    }
}

/// Lay out the built library under NVML's names (links to it: nothing is ever written through
/// them, so the build's own file stays intact).
pub fn install_nvml(dir: &Path) {
    let built = tf_test_support::cdylib("libnvidia_ml.so").expect("libnvidia_ml.so is built");
    std::fs::create_dir_all(dir).unwrap();
    for name in ["libnvidia-ml.so.1", "libnvidia-ml.so"] {
        let to = dir.join(name);
        let _ = std::fs::remove_file(&to);
        std::os::unix::fs::symlink(&built, &to).unwrap();
    }
}

/// Whether this process is the child that runs test body `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(name)
}

/// Run test body `name` of this test binary in a child process with `env`; returns its output
/// after checking it passed.
pub fn run_child(name: &str, env: &[(String, OsString)]) -> Output {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, name)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("start the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    out
}

/// The `tf-fake-gpu-load` binary of this build (cargo builds it for `cargo test --workspace`,
/// beside the test binaries' `deps/`).
pub fn load_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile = exe.parent()?.parent()?;
    let bin = profile.join("tf-fake-gpu-load");
    bin.is_file().then_some(bin)
}

/// A load process: keeps device `spec.device` busy with back-to-back kernels and holds
/// `spec.alloc_bytes`. It is `tf-fake-gpu-load` when built; otherwise this test binary runs the
/// same engine code (`tf_fake_gpu::load::run`) in child mode [`LOAD_CHILD`].
pub fn spawn_load(machine: &Machine, spec: &LoadSpec) -> Child {
    let json = serde_json::to_string(spec).unwrap();
    let mut cmd = match load_bin() {
        Some(bin) => {
            let mut c = Command::new(bin);
            c.arg(json);
            c
        }
        None => {
            eprintln!("tf-fake-gpu-load is not built: running the engine's load loop in a child");
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.args([
                LOAD_CHILD,
                "--exact",
                "--include-ignored",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, LOAD_CHILD)
            .env("TF_NVML_TEST_LOAD_SPEC", json);
            c
        }
    };
    cmd.env("TF_FAKE_GPU_CONFIG", &machine.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the load process")
}

/// The name of the child-mode test that runs a load (each test binary that uses [`spawn_load`]
/// declares it with [`load_child_test!`]).
pub const LOAD_CHILD: &str = "load_child";

/// Declare the `load_child` test body used by [`spawn_load`] when `tf-fake-gpu-load` is not built.
#[macro_export]
macro_rules! load_child_test {
    () => {
        #[test]
        #[ignore = "run in a child process by spawn_load"]
        fn load_child() {
            if !common::is_child(common::LOAD_CHILD) {
                return;
            }
            let spec: tf_fake_gpu::load::LoadSpec =
                serde_json::from_str(&std::env::var("TF_NVML_TEST_LOAD_SPEC").unwrap()).unwrap();
            let gpu = tf_fake_gpu::FakeGpu::global().unwrap();
            tf_fake_gpu::load::run(&gpu, &spec).unwrap();
        }
    };
}

/// Poll `f` until it is true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kill and reap a child.
pub fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}
