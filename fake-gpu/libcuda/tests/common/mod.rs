//! Shared by the libcuda integration tests: a directory holding the built libcuda.so under the
//! real driver's names, an isolated simulated machine, and helpers to build and run programs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tf_fake_gpu::testing::{isolated_config, to_toml};

pub struct FakeDriverDir {
    dir: tempfile::TempDir,
    config: PathBuf,
}

pub fn ptx_path() -> PathBuf {
    tf_test_support::workspace_root().join("hal/kernels/tf_kernels.ptx")
}

pub fn show(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl FakeDriverDir {
    /// libcuda.so and libcuda.so.1 (links to the built library), and the simulated NVML under
    /// its names, in a fresh directory, with an isolated simulated machine of two devices.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (built, names) in [
            ("libcuda.so", ["libcuda.so", "libcuda.so.1"]),
            ("libnvidia_ml.so", ["libnvidia-ml.so", "libnvidia-ml.so.1"]),
        ] {
            let built = tf_test_support::cdylib(built).expect("the simulated libraries are built");
            for name in names {
                std::os::unix::fs::symlink(&built, dir.path().join(name)).unwrap();
            }
        }
        let config = dir.path().join("gpu.toml");
        std::fs::write(&config, to_toml(&isolated_config("libcuda", 2))).unwrap();
        FakeDriverDir { dir, config }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Compile a C program from tests/c/ against NVIDIA's cuda.h, linked with -lcuda.
    pub fn compile_c(&self, source: &str, extra: &[&str]) -> PathBuf {
        let inc = tf_test_support::cuda_include_dir().expect("NVIDIA headers");
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/c")
            .join(source);
        let exe = self.dir().join(source.trim_end_matches(".c"));
        let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-O1", "-Wall", "-Werror", "-o"])
            .arg(&exe)
            .arg(&src)
            .arg("-I")
            .arg(&inc)
            .arg("-I")
            .arg(tf_test_support::workspace_root().join("hal/kernels"))
            .arg("-L")
            .arg(self.dir())
            .args(extra)
            .args(["-lcuda", "-ldl", "-lpthread"])
            .output()
            .expect("run the C compiler");
        assert!(out.status.success(), "compiling {source}: {}", show(&out));
        exe
    }

    /// Run a program against the fake driver.
    pub fn command(&self, exe: &Path) -> Command {
        let mut c = Command::new(exe);
        c.env("LD_LIBRARY_PATH", self.dir())
            .env("TF_FAKE_GPU_CONFIG", &self.config);
        c
    }

    pub fn run(&self, exe: &Path, args: &[&str]) -> Output {
        self.command(exe).args(args).output().unwrap()
    }
}
