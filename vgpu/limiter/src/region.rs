//! The vGPU region: one shared-memory file per vGPU, mapped by the process that owns the vGPU
//! (`tensor-fusion run`, or the hypervisor) and by every application process using it (through
//! the interposer).
//!
//! Layout is `#[repr(C)]` with a magic + version + size header, validated on open and never
//! trusted blindly; every field is an atomic, so a zero-filled file is a valid (empty) region
//! and either side may restart. It holds:
//! - the limits: VRAM quota in bytes and compute share in parts per million of device time;
//! - VRAM usage, exact: total and per process (a dead process's usage is reclaimed);
//! - the launch admission state: a GCRA (generic cell rate algorithm) "theoretical arrival time"
//!   and the wall-clock spacing per launch that the controller sets, so admitting a launch is one
//!   atomic load when unlimited and one compare-and-swap when limited — no lock;
//! - counters the controller and users read (launches, throttled time, peak usage, OOMs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tf_os::proctable::{ProcTable, SlotData};
use tf_os::shm::{Shm, ShmSafe};

use crate::limits::Pacing;
use crate::sys;

pub const MAGIC: u64 = u64::from_le_bytes(*b"TFVGPU\0\x01");
pub const VERSION: u32 = 1;
pub const MAX_PROCS: usize = 128;
pub const UUID_LEN: usize = 96;

/// Errors opening or creating a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("vGPU region {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vGPU region {path} is not valid: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// What one process holds in its slot of the region's process table.
#[repr(C)]
pub struct ProcUsage {
    vram_used: AtomicU64,
    launches: AtomicU64,
}

impl SlotData for ProcUsage {
    fn clear(&self) {
        self.vram_used.store(0, Ordering::Relaxed);
        self.launches.store(0, Ordering::Relaxed);
    }
}

// SAFETY: atomics only.
unsafe impl ShmSafe for ProcUsage {}

/// A mapping of a region: the shared file's, or memory private to this process. Unmapped when
/// dropped.
pub type RegionMap = Shm<Region>;

/// The shared region. Only ever seen through `&Region` pointing into a mapping ([`RegionMap`]).
#[repr(C)]
pub struct Region {
    magic: AtomicU64,
    version: AtomicU32,
    size: AtomicU32,
    owner_pid: AtomicU32,
    device_index: AtomicU32,
    created_ns: AtomicU64,
    device_uuid: [AtomicU64; UUID_LEN / 8],
    /// 0 = unlimited.
    vram_quota: AtomicU64,
    vram_used: AtomicU64,
    vram_peak: AtomicU64,
    oom_events: AtomicU64,
    /// Target share of device time in parts per million; 0 = unlimited.
    compute_share_ppm: AtomicU32,
    _pad0: u32,
    /// Wall-clock nanoseconds each admitted launch consumes (set by the controller); 0 = admit
    /// every launch at once.
    launch_interval_ns: AtomicU64,
    /// How far ahead of schedule launches may run (burst tolerance), ns.
    burst_ns: AtomicU64,
    /// GCRA theoretical arrival time (CLOCK_MONOTONIC ns).
    tat_ns: AtomicU64,
    launches: AtomicU64,
    throttled_launches: AtomicU64,
    throttled_ns: AtomicU64,
    /// Controller's latest estimate of device time per launch, ns (informational).
    est_launch_ns: AtomicU64,
    /// Device time of sampled launches, measured by the interposers (events around a launch).
    sampled_ns: AtomicU64,
    samples: AtomicU64,
    /// Controller's latest measured share, ppm (informational).
    measured_share_ppm: AtomicU32,
    _pad1: u32,
    procs: ProcTable<ProcUsage, MAX_PROCS>,
}

// SAFETY: Region is made only of atomics, padding and the process table (atomics): every bit
// pattern is a valid value, and it is only accessed through atomic operations.
unsafe impl ShmSafe for Region {}

/// What a vGPU is allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Bytes of device memory; `None` = unlimited.
    pub vram_quota: Option<u64>,
    /// Share of device time in (0, 1]; `None` = unlimited.
    pub compute_share: Option<f64>,
}

/// A point-in-time reading of a region, for people and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionStats {
    pub device_uuid: String,
    pub vram_quota: Option<u64>,
    pub vram_used: u64,
    pub vram_peak: u64,
    pub oom_events: u64,
    pub compute_share: Option<f64>,
    pub launches: u64,
    pub throttled_launches: u64,
    pub throttled_ns: u64,
    pub launch_interval_ns: u64,
    pub est_launch_ns: u64,
    pub measured_share: f64,
    /// Launches timed by the interposers, and their total device time.
    pub samples: u64,
    pub sampled_ns: u64,
    /// (pid, vram bytes, launches) of each live process.
    pub processes: Vec<(u32, u64, u64)>,
}

/// The outcome of asking to charge memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverQuota {
    pub requested: u64,
    pub used: u64,
    pub quota: u64,
}

impl Region {
    /// Create the region file at `path` (which must not exist; created readable and writable by
    /// its owner only) for a vGPU on device `uuid`.
    pub fn create(
        path: &Path,
        uuid: &str,
        device_index: u32,
        limits: &Limits,
    ) -> Result<RegionMap, RegionError> {
        let (r, _file) =
            Shm::<Region>::create_new(path, 0o600).map_err(|source| RegionError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        r.init(uuid, device_index, limits);
        Ok(r)
    }

    /// Open an existing region, validating its size and header.
    pub fn open(path: &Path) -> Result<RegionMap, RegionError> {
        let io = |source| RegionError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |why: String| RegionError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        let size = size_of::<Region>();
        if len < size as u64 {
            return Err(invalid(format!("file is {len} bytes, a region is {size}")));
        }
        let (r, _file) = Shm::<Region>::open(path).map_err(io)?;
        r.validate().map_err(invalid)?;
        Ok(r)
    }

    /// A region that lives only in this process (used when the shared one is lost, and in
    /// tests).
    pub fn private(uuid: &str, limits: &Limits) -> RegionMap {
        let r = Shm::<Region>::anonymous()
            .unwrap_or_else(|e| panic!("cannot map {} bytes: {e}", size_of::<Region>()));
        r.init(uuid, 0, limits);
        r
    }

    fn init(&self, uuid: &str, device_index: u32, limits: &Limits) {
        self.magic.store(0, Ordering::Release);
        self.version.store(VERSION, Ordering::Relaxed);
        self.size
            .store(std::mem::size_of::<Region>() as u32, Ordering::Relaxed);
        self.owner_pid.store(sys::pid(), Ordering::Relaxed);
        self.device_index.store(device_index, Ordering::Relaxed);
        self.created_ns.store(sys::now_ns(), Ordering::Relaxed);
        let mut bytes = [0u8; UUID_LEN];
        let n = uuid.len().min(UUID_LEN - 1);
        bytes[..n].copy_from_slice(&uuid.as_bytes()[..n]);
        for (i, w) in self.device_uuid.iter().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        for f in [
            &self.vram_used,
            &self.vram_peak,
            &self.oom_events,
            &self.launch_interval_ns,
            &self.tat_ns,
            &self.launches,
            &self.throttled_launches,
            &self.throttled_ns,
            &self.est_launch_ns,
            &self.sampled_ns,
            &self.samples,
        ] {
            f.store(0, Ordering::Relaxed);
        }
        self.burst_ns.store(DEFAULT_BURST_NS, Ordering::Relaxed);
        self.measured_share_ppm.store(0, Ordering::Relaxed);
        self.procs.reset();
        self.set_limits(limits);
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Check the header: magic, version and size.
    pub fn validate(&self) -> Result<(), String> {
        let magic = self.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#x}"));
        }
        let v = self.version.load(Ordering::Relaxed);
        if v != VERSION {
            return Err(format!("version {v}, this build understands {VERSION}"));
        }
        let s = self.size.load(Ordering::Relaxed);
        if s as usize != std::mem::size_of::<Region>() {
            return Err(format!(
                "size {s}, expected {}",
                std::mem::size_of::<Region>()
            ));
        }
        Ok(())
    }

    /// Whether the header still looks right (cheap; one load).
    pub fn is_valid(&self) -> bool {
        self.magic.load(Ordering::Relaxed) == MAGIC
    }

    pub fn set_limits(&self, limits: &Limits) {
        self.vram_quota
            .store(limits.vram_quota.unwrap_or(0), Ordering::Relaxed);
        let ppm = limits
            .compute_share
            .map(|s| (s.clamp(0.0, 1.0) * 1e6).round() as u32)
            .filter(|&p| p > 0 && p < 1_000_000)
            .unwrap_or(0);
        self.compute_share_ppm.store(ppm, Ordering::Relaxed);
        if ppm == 0 {
            self.launch_interval_ns.store(0, Ordering::Relaxed);
        }
    }

    /// (quota, share ppm, launch interval, burst) as stored (0 = unlimited / unpaced).
    #[inline]
    pub fn limit_words(&self) -> (u64, u64, u64, u64) {
        (
            self.vram_quota.load(Ordering::Relaxed),
            self.compute_share_ppm.load(Ordering::Relaxed) as u64,
            self.launch_interval_ns.load(Ordering::Relaxed),
            self.burst_ns.load(Ordering::Relaxed),
        )
    }

    /// Start a (private) region with `bytes` already held by process entry `slot`.
    pub fn seed_usage(&self, slot: usize, bytes: u64) {
        self.procs
            .data(slot)
            .vram_used
            .fetch_add(bytes, Ordering::AcqRel);
        let used = self
            .vram_used
            .fetch_add(bytes, Ordering::AcqRel)
            .wrapping_add(bytes);
        self.vram_peak.fetch_max(used, Ordering::Relaxed);
    }

    pub fn limits(&self) -> Limits {
        let q = self.vram_quota.load(Ordering::Relaxed);
        let s = self.compute_share_ppm.load(Ordering::Relaxed);
        Limits {
            vram_quota: (q > 0).then_some(q),
            compute_share: (s > 0).then(|| s as f64 / 1e6),
        }
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

    /// Make this process the region's owner (a restarted daemon recovering its vGPUs).
    pub fn adopt(&self) {
        self.owner_pid.store(sys::pid(), Ordering::Relaxed);
    }

    pub fn owner_pid(&self) -> u32 {
        self.owner_pid.load(Ordering::Relaxed)
    }

    /// Whether anyone still uses the region: its owner or any registered process is alive.
    pub fn in_use(&self) -> bool {
        sys::process_start_time(self.owner_pid()).is_some() || self.procs.any_alive()
    }

    // ----- processes -----

    /// Give back what a dead process held (its slot is being emptied).
    fn forget(&self, usage: &ProcUsage) -> u64 {
        let bytes = usage.vram_used.swap(0, Ordering::AcqRel);
        self.vram_used.fetch_sub(bytes, Ordering::AcqRel);
        bytes
    }

    /// Find or claim the entry of process `pid`. Several threads of one process may call this at
    /// once: they all end up with the same entry. `None` when the table is full of live
    /// processes.
    pub fn register(&self, pid: u32) -> Option<usize> {
        self.procs.register(pid, |_, u| {
            self.forget(u);
        })
    }

    /// Give back the memory of processes that have exited or were killed. Returns the bytes.
    pub fn reclaim_dead(&self) -> u64 {
        let mut bytes = 0;
        // Wrapping: the counts are shared memory a process can overwrite with anything.
        self.procs
            .reclaim_dead(|_, u| bytes = u64::wrapping_add(bytes, self.forget(u)));
        bytes
    }

    /// Give back what every registered process holds and empty the table (their owner knows
    /// they are all gone: the node daemon when the last front end of a vGPU whose processes live
    /// in another pid namespace has detached). Returns the bytes given back.
    pub fn reclaim_all(&self) -> u64 {
        let mut bytes = 0;
        for o in self.procs.occupants() {
            self.procs.reclaim(o.slot, o.pid, &mut |_, u| {
                bytes = u64::wrapping_add(bytes, self.forget(u))
            });
        }
        bytes
    }

    /// Live processes: (pid, vram bytes, launches).
    pub fn processes(&self) -> Vec<(u32, u64, u64)> {
        self.procs
            .occupants()
            .into_iter()
            .map(|o| {
                let u = self.procs.data(o.slot);
                (
                    o.pid,
                    u.vram_used.load(Ordering::Relaxed),
                    u.launches.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    // ----- VRAM fast path -----

    /// Charge `bytes` to process entry `slot`; fails (changing nothing) past the region's own
    /// quota word.
    pub fn charge(&self, slot: usize, bytes: u64) -> Result<(), OverQuota> {
        self.charge_within(slot, bytes, self.vram_quota.load(Ordering::Relaxed))
    }

    /// Charge `bytes` to process entry `slot` against `quota` (0 = unlimited; from the trusted
    /// limits page); fails, changing nothing, past it.
    pub fn charge_within(&self, slot: usize, bytes: u64, quota: u64) -> Result<(), OverQuota> {
        let mut cur = self.vram_used.load(Ordering::Relaxed);
        let mut reclaimed = false;
        loop {
            let next = cur.saturating_add(bytes);
            if quota != 0 && next > quota {
                if !reclaimed {
                    reclaimed = true;
                    if self.reclaim_dead() > 0 {
                        cur = self.vram_used.load(Ordering::Relaxed);
                        continue;
                    }
                }
                self.oom_events.fetch_add(1, Ordering::Relaxed);
                return Err(OverQuota {
                    requested: bytes,
                    used: cur,
                    quota,
                });
            }
            match self.vram_used.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.vram_peak.fetch_max(next, Ordering::Relaxed);
                    self.procs
                        .data(slot)
                        .vram_used
                        .fetch_add(bytes, Ordering::AcqRel);
                    return Ok(());
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Count an allocation refused for the quota before it reached [`Region::charge_within`].
    pub fn note_oom(&self) {
        self.oom_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Give back `bytes` charged to `slot` (never below zero).
    pub fn uncharge(&self, slot: usize, bytes: u64) {
        let p = &self.procs.data(slot).vram_used;
        let mut mine = p.load(Ordering::Relaxed);
        // Only return what this process holds: a double free cannot steal others' usage.
        let take = loop {
            let take = bytes.min(mine);
            match p.compare_exchange_weak(mine, mine - take, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break take,
                Err(actual) => mine = actual,
            }
        };
        self.vram_used.fetch_sub(take, Ordering::AcqRel);
    }

    pub fn vram_quota(&self) -> Option<u64> {
        let q = self.vram_quota.load(Ordering::Relaxed);
        (q > 0).then_some(q)
    }

    pub fn vram_used(&self) -> u64 {
        self.vram_used.load(Ordering::Relaxed)
    }

    // ----- launch fast path -----

    /// Whether launches are being paced at all (one load).
    #[inline]
    pub fn pacing(&self) -> bool {
        self.launch_interval_ns.load(Ordering::Relaxed) != 0
    }

    /// Admit one launch at time `now` for process entry `slot` with the region's own pacing
    /// words: returns how long the caller must wait before launching (0 = go now).
    #[inline]
    pub fn admit_launch(&self, slot: usize, now: u64) -> u64 {
        let pacing = Pacing {
            interval_ns: self.launch_interval_ns.load(Ordering::Relaxed),
            burst_ns: self.burst_ns.load(Ordering::Relaxed),
        };
        self.admit_launch_with(Some(slot), now, pacing, u64::MAX)
    }

    /// Admit one launch at time `now` with `pacing` (from the trusted limits page), counted for
    /// entry `slot` when the process has one: how long to wait (0 = go now). Lock-free (GCRA:
    /// one compare-and-swap). A wait longer than `max_wait_ns` can only come from a corrupt or
    /// forged admission time: it is reset, and the launch waits one interval.
    #[inline]
    pub fn admit_launch_with(
        &self,
        slot: Option<usize>,
        now: u64,
        pacing: Pacing,
        max_wait_ns: u64,
    ) -> u64 {
        if pacing.interval_ns == 0 {
            return 0;
        }
        self.launches.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = slot {
            self.procs
                .data(slot)
                .launches
                .fetch_add(1, Ordering::Relaxed);
        }
        let wait = gcra(&self.tat_ns, now, pacing, max_wait_ns);
        if wait > 0 {
            self.throttled_launches.fetch_add(1, Ordering::Relaxed);
            self.throttled_ns.fetch_add(wait, Ordering::Relaxed);
        }
        wait
    }

    /// Record the measured device time of one sampled launch.
    pub fn add_sample(&self, ns: u64) {
        self.sampled_ns.fetch_add(ns, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// (total sampled device time, number of samples).
    pub fn sample_counters(&self) -> (u64, u64) {
        (
            self.sampled_ns.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }

    /// Counters the controller needs: (launches, throttled launches).
    pub fn launch_counters(&self) -> (u64, u64) {
        (
            self.launches.load(Ordering::Relaxed),
            self.throttled_launches.load(Ordering::Relaxed),
        )
    }

    /// Set by the controller.
    pub fn set_pacing(&self, interval_ns: u64, burst_ns: u64, est_launch_ns: u64, measured: f64) {
        self.burst_ns.store(burst_ns, Ordering::Relaxed);
        self.launch_interval_ns
            .store(interval_ns, Ordering::Relaxed);
        self.est_launch_ns.store(est_launch_ns, Ordering::Relaxed);
        self.measured_share_ppm
            .store((measured.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }

    pub fn compute_share(&self) -> Option<f64> {
        let s = self.compute_share_ppm.load(Ordering::Relaxed);
        (s > 0).then(|| s as f64 / 1e6)
    }

    pub fn stats(&self) -> RegionStats {
        let l = self.limits();
        RegionStats {
            device_uuid: self.device_uuid(),
            vram_quota: l.vram_quota,
            vram_used: self.vram_used(),
            vram_peak: self.vram_peak.load(Ordering::Relaxed),
            oom_events: self.oom_events.load(Ordering::Relaxed),
            compute_share: l.compute_share,
            launches: self.launches.load(Ordering::Relaxed),
            throttled_launches: self.throttled_launches.load(Ordering::Relaxed),
            throttled_ns: self.throttled_ns.load(Ordering::Relaxed),
            launch_interval_ns: self.launch_interval_ns.load(Ordering::Relaxed),
            est_launch_ns: self.est_launch_ns.load(Ordering::Relaxed),
            measured_share: self.measured_share_ppm.load(Ordering::Relaxed) as f64 / 1e6,
            samples: self.samples.load(Ordering::Relaxed),
            sampled_ns: self.sampled_ns.load(Ordering::Relaxed),
            processes: self.processes(),
        }
    }
}

/// The generic cell rate algorithm on one "theoretical arrival time" (`tat`, monotonic ns):
/// admit a launch at `now` with `pacing`; returns how long to wait. One compare-and-swap, no
/// lock. A `tat` so far ahead that the wait would pass `max_wait_ns` is corrupt (or forged): it
/// restarts from `now`, and the launch waits one interval.
#[inline]
pub fn gcra(tat_ns: &AtomicU64, now: u64, pacing: Pacing, max_wait_ns: u64) -> u64 {
    let Pacing {
        interval_ns: interval,
        burst_ns: burst,
    } = pacing;
    let mut tat = tat_ns.load(Ordering::Relaxed);
    loop {
        let mut start = tat.max(now);
        if start.saturating_sub(now.saturating_add(burst)) > max_wait_ns {
            start = now.saturating_add(interval).saturating_add(burst);
        }
        match tat_ns.compare_exchange_weak(
            tat,
            start.saturating_add(interval),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return start.saturating_sub(now.saturating_add(burst)),
            Err(actual) => tat = actual,
        }
    }
}

/// Default burst tolerance: launches may run up to 5 ms ahead of their schedule.
pub const DEFAULT_BURST_NS: u64 = 5_000_000;
