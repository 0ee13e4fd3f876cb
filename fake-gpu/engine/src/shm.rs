//! The per-device shared-memory segment that makes one simulated device shared by every process
//! on the machine, like a real GPU: memory used per process, the time-slice arbiter (one kernel at
//! a time per device, in arrival order), busy-time counters and a short history of them.
//!
//! Layout is `#[repr(C)]` with a magic and version header; all fields are atomics, so a
//! zero-filled file is a valid (uninitialised) segment. The arbiter is a reservation timeline:
//! a kernel of duration `d` asking at time `now` runs over `[max(now, busy_until), +d)`. Nobody
//! holds a lock while a kernel runs, so a process that dies mid-kernel stalls no one, and the
//! device's busy time is exact: at any instant `t`, the time reserved but not yet elapsed is the
//! contiguous stretch `[t, busy_until)`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tf_hal::{Error, ErrorKind, ProcessUsage, Result};
use tf_os::proctable::{ProcTable, SlotData};
use tf_os::shm::{Shm, ShmSafe};

use crate::sys;

pub const MAGIC: u64 = u64::from_le_bytes(*b"TFFAKGPU");
pub const VERSION: u32 = 2;
pub const MAX_PROCS: usize = 256;
pub const HISTORY: usize = 8192;

/// A reservation pending further ahead than this is checked for a dead owner before queueing
/// behind it.
pub const DEAD_TAIL_CHECK_NS: u64 = 10_000_000;

/// How far in the past a queued kernel may be started (covers the worker's wake-up latency).
pub const MAX_BACKDATE_NS: u64 = 2_000_000;

/// What one process holds in its slot of a device's process table.
#[repr(C)]
pub struct ProcUsage {
    mem_used: AtomicU64,
    busy_ns: AtomicU64,
    kernels: AtomicU64,
}

impl SlotData for ProcUsage {
    fn clear(&self) {
        self.mem_used.store(0, Ordering::Relaxed);
        self.busy_ns.store(0, Ordering::Relaxed);
        self.kernels.store(0, Ordering::Relaxed);
    }
}

// SAFETY: atomics only.
unsafe impl ShmSafe for ProcUsage {}

#[repr(C)]
struct HistEntry {
    at_ns: AtomicU64,
    reserved_total: AtomicU64,
    busy_until: AtomicU64,
    /// The process that made the reservation (0: a release, no reservation).
    pid: AtomicU32,
    _pad: u32,
}

#[repr(C)]
pub struct DeviceSegment {
    magic: AtomicU64,
    version: AtomicU32,
    _pad0: u32,
    total_memory: AtomicU64,
    used_memory: AtomicU64,
    /// pid of the process inside the arbiter's (tiny) critical section, 0 when free.
    lock_owner: AtomicU32,
    _pad1: u32,
    busy_until_ns: AtomicU64,
    reserved_total_ns: AtomicU64,
    /// The last reservation (the one that ends at `busy_until_ns`): its start, and the slot of
    /// the process that made it (`u32::MAX`: none), so that a process that dies with it
    /// pending gives the device back.
    tail_start_ns: AtomicU64,
    tail_slot: AtomicU32,
    _pad2: u32,
    kernels_total: AtomicU64,
    history_len: AtomicU64,
    history: [HistEntry; HISTORY],
    procs: ProcTable<ProcUsage, MAX_PROCS>,
}

// SAFETY: DeviceSegment is made only of atomics, padding, arrays of atomics and the process
// table: every bit pattern is valid, and it is only accessed through atomic operations.
unsafe impl ShmSafe for DeviceSegment {}

/// A mapping of a device's segment, shared by every user of the device in this process and
/// unmapped when the last one lets go.
pub type SegmentMap = Arc<Shm<DeviceSegment>>;

/// A reading of one process's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcReading {
    pub pid: u32,
    pub mem_used: u64,
    pub busy_ns: u64,
    pub kernels: u64,
}

static SEGMENTS: Mutex<Option<HashMap<PathBuf, Weak<Shm<DeviceSegment>>>>> = Mutex::new(None);

/// Path of a device's segment.
pub fn segment_path(dir: &Path, uuid: &str) -> PathBuf {
    dir.join(format!("tf-fake-gpu-{uuid}"))
}

struct ArbiterGuard<'a>(&'a AtomicU32);

impl Drop for ArbiterGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl DeviceSegment {
    /// Open (creating and initialising if needed) the segment for a device. One mapping per
    /// path is shared by the process's users of the device.
    pub fn open(dir: &Path, uuid: &str, total_memory: u64) -> Result<SegmentMap> {
        let path = segment_path(dir, uuid);
        let mut cache = SEGMENTS.lock().unwrap_or_else(|p| p.into_inner());
        let map = cache.get_or_insert_with(HashMap::new);
        if let Some(seg) = map.get(&path).and_then(Weak::upgrade) {
            seg.check(total_memory, &path)?;
            return Ok(seg);
        }
        let seg = Arc::new(Self::map(&path, total_memory)?);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(path, Arc::downgrade(&seg));
        Ok(seg)
    }

    fn map(path: &Path, total_memory: u64) -> Result<Shm<DeviceSegment>> {
        let io = |what: &str, e: std::io::Error| {
            let fix = if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    " (another user's simulated GPU lives there: use a folder of your own with                      `shm_dir` in the profile named by ${})",
                    crate::profile::CONFIG_ENV
                )
            } else {
                String::new()
            };
            Error::new(
                ErrorKind::NotInitialized,
                format!("simulated GPU segment {}: {what}: {e}{fix}", path.display()),
            )
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("open", e))?;
        let _lock = sys::FileLock::exclusive(file.as_raw_fd()).map_err(|e| io("lock", e))?;
        let seg = Shm::<DeviceSegment>::map_file(&file).map_err(|e| io("map", e))?;
        let magic = seg.magic.load(Ordering::Acquire);
        let fresh = magic == 0;
        let stale = !fresh
            && (magic != MAGIC
                || seg.version.load(Ordering::Acquire) != VERSION
                || seg.total_memory.load(Ordering::Acquire) != total_memory);
        if stale && seg.procs.any_alive() {
            seg.check(total_memory, path)?;
        }
        if fresh || stale {
            // We hold the file lock: no other process is initialising. Nobody live uses it.
            seg.reset(total_memory);
        }
        Ok(seg)
    }

    fn reset(&self, total_memory: u64) {
        self.total_memory.store(total_memory, Ordering::Relaxed);
        self.used_memory.store(0, Ordering::Relaxed);
        self.lock_owner.store(0, Ordering::Relaxed);
        self.busy_until_ns.store(0, Ordering::Relaxed);
        self.reserved_total_ns.store(0, Ordering::Relaxed);
        self.tail_start_ns.store(0, Ordering::Relaxed);
        self.tail_slot.store(u32::MAX, Ordering::Relaxed);
        self.kernels_total.store(0, Ordering::Relaxed);
        self.history_len.store(0, Ordering::Relaxed);
        self.procs.reset();
        self.version.store(VERSION, Ordering::Release);
        self.magic.store(MAGIC, Ordering::Release);
    }

    fn check(&self, total_memory: u64, path: &Path) -> Result<()> {
        let magic = self.magic.load(Ordering::Acquire);
        let version = self.version.load(Ordering::Acquire);
        let total = self.total_memory.load(Ordering::Acquire);
        if magic != MAGIC || version != VERSION {
            return Err(Error::new(
                ErrorKind::DeviceLost,
                format!(
                    "simulated GPU segment {} has magic {magic:#x} version {version}, expected version {VERSION}; processes of another tensor-fusion version are using it",
                    path.display()
                ),
            ));
        }
        if total != total_memory {
            return Err(Error::new(
                ErrorKind::DeviceLost,
                format!(
                    "simulated GPU segment {} was created with {total} bytes of memory but this profile says {total_memory}; live processes are still using it",
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    fn lock(&self) -> ArbiterGuard<'_> {
        let me = sys::pid();
        let mut spins: u32 = 0;
        loop {
            if self
                .lock_owner
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return ArbiterGuard(&self.lock_owner);
            }
            spins = spins.wrapping_add(1);
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
                if spins.is_multiple_of(4096) {
                    // The holder may have died inside the critical section.
                    let owner = self.lock_owner.load(Ordering::Relaxed);
                    if owner != 0 && owner != me && sys::process_start_time(owner).is_none() {
                        let _ = self.lock_owner.compare_exchange(
                            owner,
                            0,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        );
                    }
                }
            }
        }
    }

    pub fn total_memory(&self) -> u64 {
        self.total_memory.load(Ordering::Relaxed)
    }

    pub fn used_memory(&self) -> u64 {
        self.used_memory.load(Ordering::Relaxed)
    }

    /// Give back what a dead process held (its slot is being emptied): its memory, and the
    /// device time it reserved and has not used yet when its reservation is the last one (a
    /// reservation followed by others cannot move: theirs are already scheduled).
    fn forget(&self, slot: usize, usage: &ProcUsage) {
        let mem = usage.mem_used.swap(0, Ordering::AcqRel);
        self.used_memory.fetch_sub(mem, Ordering::AcqRel);
        let _g = self.lock();
        if self.tail_slot.load(Ordering::Relaxed) != slot as u32 {
            return;
        }
        self.tail_slot.store(u32::MAX, Ordering::Relaxed);
        let now = sys::now_ns();
        let until = self.busy_until_ns.load(Ordering::Relaxed);
        let from = now.max(self.tail_start_ns.load(Ordering::Relaxed));
        if until <= from {
            return;
        }
        let total = self
            .reserved_total_ns
            .load(Ordering::Relaxed)
            .saturating_sub(until - from);
        self.reserved_total_ns.store(total, Ordering::Relaxed);
        self.busy_until_ns.store(from, Ordering::Relaxed);
        self.record(now, total, from, 0);
    }

    /// Append a history entry (under the arbiter lock).
    fn record(&self, at: u64, reserved_total: u64, busy_until: u64, pid: u32) {
        let n = self.history_len.load(Ordering::Relaxed);
        let h = &self.history[(n % HISTORY as u64) as usize];
        h.at_ns.store(at, Ordering::Relaxed);
        h.reserved_total.store(reserved_total, Ordering::Relaxed);
        h.busy_until.store(busy_until, Ordering::Relaxed);
        h.pid.store(pid, Ordering::Relaxed);
        self.history_len.store(n + 1, Ordering::Release);
    }

    /// Device time each process's kernels held the device within `[from, to)` (monotonic ns),
    /// from the reservation history (as far back as it reaches): `(pid, busy ns)`, processes
    /// with none left out. What NVML's per-process utilization over a caller's window means.
    pub fn busy_by_process(&self, from: u64, to: u64) -> Vec<(u32, u64)> {
        let _g = self.lock();
        let len = self.history_len.load(Ordering::Relaxed);
        let oldest = len.saturating_sub(HISTORY as u64);
        let mut busy: Vec<(u32, u64)> = Vec::new();
        // Each entry's reservation is its growth of the reserved total (the first entry's, from
        // zero, when the history has not wrapped yet).
        let mut prev_total: Option<u64> = (oldest == 0).then_some(0);
        for i in oldest..len {
            let h = &self.history[(i % HISTORY as u64) as usize];
            let total = h.reserved_total.load(Ordering::Relaxed);
            let (end, pid) = (
                h.busy_until.load(Ordering::Relaxed),
                h.pid.load(Ordering::Relaxed),
            );
            if let Some(pt) = prev_total
                && total > pt
                && pid != 0
            {
                let start = end.saturating_sub(total - pt);
                let overlap = end.min(to).saturating_sub(start.max(from));
                if overlap > 0 {
                    match busy.iter_mut().find(|(p, _)| *p == pid) {
                        Some((_, b)) => *b += overlap,
                        None => busy.push((pid, overlap)),
                    }
                }
            }
            prev_total = Some(total);
        }
        busy
    }

    /// Find or claim the slot of process `pid` (threads of one process racing to register all
    /// get the same slot).
    pub fn register(&self, pid: u32) -> Result<usize> {
        self.procs
            .register(pid, |slot, u| self.forget(slot, u))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::OutOfMemory,
                    format!("simulated GPU: more than {MAX_PROCS} processes use this device"),
                )
            })
    }

    /// Return the memory of processes that have exited (or were killed). Returns how many.
    pub fn reclaim_dead(&self) -> usize {
        self.procs.reclaim_dead(|slot, u| self.forget(slot, u))
    }

    /// Charge `bytes` of device memory to the process in `slot`.
    pub fn charge(&self, slot: usize, bytes: u64) -> Result<()> {
        let total = self.total_memory();
        let mut reclaimed = false;
        let mut cur = self.used_memory.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(bytes).filter(|&n| n <= total);
            match next {
                Some(n) => match self.used_memory.compare_exchange_weak(
                    cur,
                    n,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => cur = actual,
                },
                None if !reclaimed => {
                    reclaimed = true;
                    self.reclaim_dead();
                    cur = self.used_memory.load(Ordering::Relaxed);
                }
                None => {
                    return Err(Error::out_of_memory(format!(
                        "cannot allocate {bytes} bytes: {cur} of {total} bytes in use"
                    )));
                }
            }
        }
        self.procs
            .data(slot)
            .mem_used
            .fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    pub fn uncharge(&self, slot: usize, bytes: u64) {
        self.procs
            .data(slot)
            .mem_used
            .fetch_sub(bytes, Ordering::AcqRel);
        self.used_memory.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Reserve the device for a kernel of `duration_ns` for the process in `slot`. Returns the
    /// `[start, end)` interval (monotonic ns) during which the kernel holds the device.
    ///
    /// `ready_ns` is when the kernel became ready in its stream's order (its predecessor's end,
    /// or when it was queued): a GPU starts a queued kernel as soon as the previous one ends,
    /// so a kernel may start slightly in the past (up to [`MAX_BACKDATE_NS`]), but never before
    /// the device is free.
    pub fn reserve(&self, slot: usize, duration_ns: u64, ready_ns: u64) -> (u64, u64) {
        // The device held far ahead by another process that has died: give it back first (a
        // dead process's reservation never blocks the living; checked only then, so the
        // common path pays one load).
        let tail = self.tail_slot.load(Ordering::Relaxed) as usize;
        if tail != slot
            && tail < MAX_PROCS
            && self.busy_until_ns.load(Ordering::Relaxed) > sys::now_ns() + DEAD_TAIL_CHECK_NS
            && !self.procs.alive(tail)
        {
            self.reclaim_dead();
        }
        let (start, end) = {
            let _g = self.lock();
            let now = sys::now_ns();
            let ready = ready_ns.clamp(now.saturating_sub(MAX_BACKDATE_NS), now);
            let start = ready.max(self.busy_until_ns.load(Ordering::Relaxed));
            let end = start.saturating_add(duration_ns);
            self.busy_until_ns.store(end, Ordering::Relaxed);
            self.tail_start_ns.store(start, Ordering::Relaxed);
            self.tail_slot.store(slot as u32, Ordering::Relaxed);
            let total = self
                .reserved_total_ns
                .load(Ordering::Relaxed)
                .saturating_add(end - start);
            self.reserved_total_ns.store(total, Ordering::Relaxed);
            self.kernels_total.fetch_add(1, Ordering::Relaxed);
            self.record(now, total, end, self.procs.pid(slot));
            (start, end)
        };
        let p = self.procs.data(slot);
        p.busy_ns.fetch_add(duration_ns, Ordering::Relaxed);
        p.kernels.fetch_add(1, Ordering::Relaxed);
        (start, end)
    }

    /// Busy time elapsed by `t` according to history entry `i` (the last reservation before `t`).
    fn elapsed_from(&self, i: u64, t: u64) -> u64 {
        let h = &self.history[(i % HISTORY as u64) as usize];
        let total = h.reserved_total.load(Ordering::Relaxed);
        let until = h.busy_until.load(Ordering::Relaxed);
        total - until.saturating_sub(t).min(total)
    }

    /// Under the lock: busy time elapsed by `t`, or `None` if `t` is older than the history.
    fn elapsed_at_locked(&self, t: u64) -> Option<u64> {
        let len = self.history_len.load(Ordering::Relaxed);
        let oldest = len.saturating_sub(HISTORY as u64);
        // Find the last entry with at_ns <= t (entries are in time order).
        let (mut lo, mut hi) = (oldest, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.history[(mid % HISTORY as u64) as usize]
                .at_ns
                .load(Ordering::Relaxed);
            if at <= t { lo = mid + 1 } else { hi = mid }
        }
        if lo == oldest {
            // No entry at or before t: if nothing was ever overwritten, nothing was reserved
            // before t; otherwise t is beyond our memory.
            return (oldest == 0).then_some(0);
        }
        Some(self.elapsed_from(lo - 1, t))
    }

    /// Cumulative busy time now: `(now_ns, busy_ns)`.
    pub fn busy_now(&self) -> (u64, u64) {
        let _g = self.lock();
        let t = sys::now_ns();
        (t, self.elapsed_at_locked(t).unwrap_or(0))
    }

    /// Utilization (percent) over the last `window_ns`, from history (no waiting). When the
    /// history is shorter than the window, the window is shortened to what is known.
    pub fn utilization(&self, window_ns: u64) -> f64 {
        let _g = self.lock();
        let t = sys::now_ns();
        let mut s = t.saturating_sub(window_ns);
        let now_busy = self.elapsed_at_locked(t).unwrap_or(0);
        let then_busy = match self.elapsed_at_locked(s) {
            Some(b) => b,
            None => {
                let len = self.history_len.load(Ordering::Relaxed);
                let oldest = len.saturating_sub(HISTORY as u64);
                s = self.history[(oldest % HISTORY as u64) as usize]
                    .at_ns
                    .load(Ordering::Relaxed);
                self.elapsed_from(oldest, s)
            }
        };
        if t <= s {
            return 0.0;
        }
        ((now_busy.saturating_sub(then_busy)) as f64 * 100.0 / (t - s) as f64).clamp(0.0, 100.0)
    }

    pub fn kernels_total(&self) -> u64 {
        self.kernels_total.load(Ordering::Relaxed)
    }

    /// Live processes using the device (dead ones are reclaimed first).
    pub fn processes(&self) -> Vec<ProcReading> {
        self.reclaim_dead();
        self.procs
            .occupants()
            .into_iter()
            .map(|o| self.reading(o.slot, o.pid))
            .collect()
    }

    pub fn slot_reading(&self, slot: usize) -> ProcReading {
        self.reading(slot, self.procs.pid(slot))
    }

    fn reading(&self, slot: usize, pid: u32) -> ProcReading {
        let p = self.procs.data(slot);
        ProcReading {
            pid,
            mem_used: p.mem_used.load(Ordering::Relaxed),
            busy_ns: p.busy_ns.load(Ordering::Relaxed),
            kernels: p.kernels.load(Ordering::Relaxed),
        }
    }
}

impl From<ProcReading> for ProcessUsage {
    fn from(r: ProcReading) -> Self {
        ProcessUsage {
            pid: r.pid,
            memory_bytes: r.mem_used,
            busy_ns: Some(r.busy_ns),
        }
    }
}
