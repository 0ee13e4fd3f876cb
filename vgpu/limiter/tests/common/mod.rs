//! Helpers shared by the limiter's integration tests.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tf_vgpu_limiter::{Limits, Region, RegionMap};

pub const GIB: u64 = 1 << 30;

/// Byte offsets of the region header (`#[repr(C)]`: magic u64, version u32, size u32).
pub const MAGIC_OFFSET: u64 = 0;
pub const VERSION_OFFSET: u64 = 8;
pub const SIZE_OFFSET: u64 = 12;

/// A pid that can never exist on Linux (above `PID_MAX_LIMIT`, 2^22).
pub const NEVER_A_PID: u32 = 4_194_305;

pub fn limits(vram_quota: Option<u64>, compute_share: Option<f64>) -> Limits {
    Limits {
        vram_quota,
        compute_share,
    }
}

/// A region file in a fresh temporary directory (the directory lives as long as the guard).
pub struct RegionFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub region: RegionMap,
}

pub fn region_file(uuid: &str, limits: &Limits) -> RegionFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vgpu.region");
    let region = Region::create(&path, uuid, 0, limits).expect("create region");
    RegionFile { dir, path, region }
}

/// A region that lives as long as the test process (for threads that need `'static`).
pub fn leaked(map: RegionMap) -> &'static Region {
    Box::leak(Box::new(map))
}

/// Overwrite `bytes` at `offset` of the file at `path` (what a stray writer would do).
pub fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open region file for writing");
    f.write_all_at(bytes, offset)
        .expect("overwrite region file");
}

/// Zero the magic: every mapping of the file now sees a corrupt header.
pub fn corrupt_magic(path: &Path) {
    overwrite(path, MAGIC_OFFSET, &[0u8; 8]);
}

/// A live child process (`sleep`), killed and reaped when dropped.
pub struct Sleeper {
    pub child: Child,
}

impl Sleeper {
    pub fn spawn() -> Sleeper {
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Sleeper { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the child without reaping it: it stays a zombie until `reap`.
    pub fn kill(&mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().expect("SIGKILL child");
    }

    pub fn reap(&mut self) {
        self.child.wait().expect("wait for child");
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, ...), `None` if the process is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Poll until `cond` holds (or panic after `timeout`).
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A small deterministic PRNG (splitmix64) for the stress tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
