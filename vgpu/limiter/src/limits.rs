//! The limits page: what a vGPU is allowed and how its launches are paced — written by the
//! vGPU's owner (the session and its controller), read by its processes, and impossible for them
//! to change.
//!
//! It is a small `#[repr(C)]` page of atomics in a sealed `memfd`: the owner maps it writable,
//! then seals it with `F_SEAL_FUTURE_WRITE` (and against resizing), so that no process —
//! the tenant included, whatever it opens or maps — can ever write it again, while the owner's
//! own mapping stays writable. Processes reach it by path (`/proc/<owner pid>/fd/<n>`, named by
//! `TF_VGPU_LIMITS`) and map it read-only. The tenant-writable state (usage, launch admission,
//! counters) lives in the region (`crate::region`), whose limit words are only a copy for
//! people and tools.
//!
//! Invariants: a page whose magic, version or size is wrong is never used; only
//! [`LimitsOwner`] can store into a page; a reader validates what it loads ([`Pacing`] values
//! out of range are treated as corruption by the client).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tf_os::shm::{Shm, ShmSafe};

use crate::region::{Limits, UUID_LEN};

pub const LIMITS_MAGIC: u64 = u64::from_le_bytes(*b"TFLIMIT1");
pub const LIMITS_VERSION: u32 = 1;

/// The page, as it lies in memory.
#[repr(C)]
pub struct LimitsPage {
    magic: AtomicU64,
    version: AtomicU32,
    size: AtomicU32,
    owner_pid: AtomicU32,
    device_index: AtomicU32,
    device_uuid: [AtomicU64; UUID_LEN / 8],
    /// Bytes; 0 = unlimited.
    vram_quota: AtomicU64,
    /// Parts per million of device time; 0 = unlimited.
    compute_share_ppm: AtomicU32,
    _pad: u32,
    /// Wall-clock ns each admitted launch consumes; 0 = unpaced.
    launch_interval_ns: AtomicU64,
    /// How far ahead of schedule launches may run, ns.
    burst_ns: AtomicU64,
    /// When the controller last ticked (CLOCK_MONOTONIC ns; 0 = never).
    heartbeat_ns: AtomicU64,
    /// The controller's estimate of device time per launch, and its measured share (ppm).
    est_launch_ns: AtomicU64,
    measured_share_ppm: AtomicU64,
}

// SAFETY: atomics and padding only: every bit pattern is valid, and it is only accessed through
// atomic operations (stores only through LimitsOwner's writable mapping).
unsafe impl ShmSafe for LimitsPage {}

/// Launch pacing as the controller set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pacing {
    pub interval_ns: u64,
    pub burst_ns: u64,
}

/// The largest pacing values a valid page holds: anything beyond is corruption.
pub const MAX_INTERVAL_NS: u64 = 10_000_000_000;
pub const MAX_BURST_NS: u64 = 1_000_000_000;

impl LimitsPage {
    /// Check magic, version and size.
    pub fn validate(&self) -> Result<(), String> {
        let magic = self.magic.load(Ordering::Acquire);
        if magic != LIMITS_MAGIC {
            return Err(format!("bad magic {magic:#x}"));
        }
        let v = self.version.load(Ordering::Relaxed);
        if v != LIMITS_VERSION {
            return Err(format!(
                "version {v}, this build understands {LIMITS_VERSION}"
            ));
        }
        let s = self.size.load(Ordering::Relaxed) as usize;
        if s != size_of::<LimitsPage>() {
            return Err(format!("size {s}, expected {}", size_of::<LimitsPage>()));
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        let q = self.vram_quota.load(Ordering::Relaxed);
        let s = self.compute_share_ppm.load(Ordering::Relaxed);
        Limits {
            vram_quota: (q > 0).then_some(q),
            compute_share: (s > 0 && s < 1_000_000).then(|| s as f64 / 1e6),
        }
    }

    /// The quota in bytes, 0 = unlimited.
    #[inline]
    pub fn quota_word(&self) -> u64 {
        self.vram_quota.load(Ordering::Relaxed)
    }

    /// The pacing in force.
    #[inline]
    pub fn pacing(&self) -> Pacing {
        Pacing {
            interval_ns: self.launch_interval_ns.load(Ordering::Relaxed),
            burst_ns: self.burst_ns.load(Ordering::Relaxed),
        }
    }

    /// When the controller last ticked (0: never).
    pub fn heartbeat_ns(&self) -> u64 {
        self.heartbeat_ns.load(Ordering::Relaxed)
    }

    pub fn device_uuid(&self) -> String {
        let bytes: Vec<u8> = self
            .device_uuid
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .collect();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }

    pub fn device_index(&self) -> u32 {
        self.device_index.load(Ordering::Relaxed)
    }

    pub fn owner_pid(&self) -> u32 {
        self.owner_pid.load(Ordering::Relaxed)
    }

    /// (estimated device time per launch, measured share) as the controller last saw them.
    pub fn estimates(&self) -> (u64, f64) {
        (
            self.est_launch_ns.load(Ordering::Relaxed),
            self.measured_share_ppm.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// The initial pacing for a share: what the controller would start from, so that launches are
/// paced from the first one, before the controller's first tick.
pub fn initial_pacing(share: Option<f64>) -> Pacing {
    match share {
        Some(s) if s > 0.0 && s < 1.0 => {
            let interval =
                ((crate::controller::INITIAL_LAUNCH_NS / s) as u64).clamp(1, MAX_INTERVAL_NS);
            Pacing {
                interval_ns: interval,
                burst_ns: crate::region::DEFAULT_BURST_NS.min(interval.saturating_mul(4)),
            }
        }
        _ => Pacing::default(),
    }
}

/// The owner's writable page: the only way to change a vGPU's limits and pacing.
#[derive(Debug)]
pub struct LimitsOwner {
    map: Shm<LimitsPage>,
    /// The sealed memfd, kept open so that processes can open it through `/proc`.
    file: Option<File>,
}

impl LimitsOwner {
    /// A sealed page in a new memfd for a vGPU on device `uuid` with `limits`.
    pub fn create(uuid: &str, device_index: u32, limits: &Limits) -> io::Result<LimitsOwner> {
        // SAFETY: memfd_create with a NUL-terminated name and valid flags; the returned fd is
        // owned by the File below.
        let fd = unsafe {
            libc::memfd_create(
                c"tf-vgpu-limits".as_ptr(),
                libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let map = Shm::<LimitsPage>::map_file(&file)?;
        let owner = LimitsOwner {
            map,
            file: Some(file),
        };
        owner.init(uuid, device_index, limits);
        // From now on nobody can write the file or map it writable again; our mapping stays.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE;
        let file = owner.file.as_ref().expect("just set");
        // SAFETY: fcntl on a memfd we own, adding seals it was created to allow.
        if unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                seals | libc::F_SEAL_SEAL,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(owner)
    }

    /// A page in memory private to this process (tests, and a client that lost its page).
    pub fn private(uuid: &str, limits: &Limits) -> LimitsOwner {
        let map = Shm::<LimitsPage>::anonymous()
            .unwrap_or_else(|e| panic!("cannot map {} bytes: {e}", size_of::<LimitsPage>()));
        let owner = LimitsOwner { map, file: None };
        owner.init(uuid, 0, limits);
        owner
    }

    fn init(&self, uuid: &str, device_index: u32, limits: &Limits) {
        let p = &*self.map;
        p.magic.store(0, Ordering::Release);
        p.version.store(LIMITS_VERSION, Ordering::Relaxed);
        p.size
            .store(size_of::<LimitsPage>() as u32, Ordering::Relaxed);
        p.owner_pid.store(std::process::id(), Ordering::Relaxed);
        p.device_index.store(device_index, Ordering::Relaxed);
        let mut bytes = [0u8; UUID_LEN];
        let n = uuid.len().min(UUID_LEN - 1);
        bytes[..n].copy_from_slice(&uuid.as_bytes()[..n]);
        for (i, w) in p.device_uuid.iter().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        self.set_limits(limits);
        let pacing = initial_pacing(limits.compute_share);
        self.set_pacing(pacing, 0, 0.0);
        p.heartbeat_ns.store(0, Ordering::Relaxed);
        p.magic.store(LIMITS_MAGIC, Ordering::Release);
    }

    /// The page (for reading).
    pub fn page(&self) -> &LimitsPage {
        &self.map
    }

    /// The page's descriptor (`None` for a private page).
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.file.as_ref().map(|f| f.as_fd())
    }

    /// The path processes open the page by (`/proc/<pid>/fd/<n>`); `None` for a private page.
    pub fn path(&self) -> Option<PathBuf> {
        self.file
            .as_ref()
            .map(|f| PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd())))
    }

    pub fn set_limits(&self, limits: &Limits) {
        let p = &*self.map;
        p.vram_quota
            .store(limits.vram_quota.unwrap_or(0), Ordering::Relaxed);
        let ppm = limits
            .compute_share
            .map(|s| (s.clamp(0.0, 1.0) * 1e6).round() as u32)
            .filter(|&p| p > 0 && p < 1_000_000)
            .unwrap_or(0);
        p.compute_share_ppm.store(ppm, Ordering::Relaxed);
        if ppm == 0 {
            p.launch_interval_ns.store(0, Ordering::Relaxed);
        }
    }

    /// Set the pacing, with the controller's estimates.
    pub fn set_pacing(&self, pacing: Pacing, est_launch_ns: u64, measured: f64) {
        let p = &*self.map;
        p.burst_ns
            .store(pacing.burst_ns.min(MAX_BURST_NS), Ordering::Relaxed);
        p.launch_interval_ns
            .store(pacing.interval_ns.min(MAX_INTERVAL_NS), Ordering::Relaxed);
        p.est_launch_ns.store(est_launch_ns, Ordering::Relaxed);
        p.measured_share_ppm
            .store((measured.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// The controller is alive: record the time.
    pub fn heartbeat(&self, now_ns: u64) {
        self.map.heartbeat_ns.store(now_ns, Ordering::Relaxed);
    }
}

/// A process's read-only view of a page.
#[derive(Debug)]
pub struct LimitsView {
    map: ReadOnly,
}

#[derive(Debug)]
enum ReadOnly {
    Mapped(Shm<LimitsPage>),
    Private(LimitsOwner),
}

impl LimitsView {
    /// Open the page at `path` read-only and validate it.
    pub fn open(path: &Path) -> io::Result<LimitsView> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len < size_of::<LimitsPage>() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "limits page is {len} bytes, expected {}",
                    size_of::<LimitsPage>()
                ),
            ));
        }
        let map = Shm::<LimitsPage>::map_file_read_only(&file)?;
        map.validate()
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
        Ok(LimitsView {
            map: ReadOnly::Mapped(map),
        })
    }

    /// A view of a page private to this process.
    pub fn private(owner: LimitsOwner) -> LimitsView {
        LimitsView {
            map: ReadOnly::Private(owner),
        }
    }
}

impl std::ops::Deref for LimitsView {
    type Target = LimitsPage;
    fn deref(&self) -> &LimitsPage {
        match &self.map {
            ReadOnly::Mapped(m) => m,
            ReadOnly::Private(o) => o.page(),
        }
    }
}
