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
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tf_hal::{Error, ErrorKind, ProcessUsage, Result};

use crate::sys;

pub const MAGIC: u64 = u64::from_le_bytes(*b"TFFAKGPU");
pub const VERSION: u32 = 1;
pub const MAX_PROCS: usize = 256;
pub const HISTORY: usize = 8192;

const PID_RECLAIMING: u32 = u32::MAX;

/// How far in the past a queued kernel may be started (covers the worker's wake-up latency).
pub const MAX_BACKDATE_NS: u64 = 2_000_000;

#[repr(C)]
pub struct ProcSlot {
    pid: AtomicU32,
    _pad: u32,
    /// Start time of the process (clock ticks since boot), to tell a reused pid apart.
    start_time: AtomicU64,
    mem_used: AtomicU64,
    busy_ns: AtomicU64,
    kernels: AtomicU64,
}

#[repr(C)]
struct HistEntry {
    at_ns: AtomicU64,
    reserved_total: AtomicU64,
    busy_until: AtomicU64,
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
    kernels_total: AtomicU64,
    history_len: AtomicU64,
    history: [HistEntry; HISTORY],
    procs: [ProcSlot; MAX_PROCS],
}

/// A reading of one process's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcReading {
    pub pid: u32,
    pub mem_used: u64,
    pub busy_ns: u64,
    pub kernels: u64,
}

static SEGMENTS: Mutex<Option<HashMap<PathBuf, &'static DeviceSegment>>> = Mutex::new(None);

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
    /// Open (creating and initialising if needed) the segment for a device. Mappings are cached
    /// per path for the life of the process.
    pub fn open(dir: &Path, uuid: &str, total_memory: u64) -> Result<&'static DeviceSegment> {
        let path = segment_path(dir, uuid);
        let mut cache = SEGMENTS.lock().unwrap_or_else(|p| p.into_inner());
        let map = cache.get_or_insert_with(HashMap::new);
        if let Some(seg) = map.get(&path) {
            seg.check(total_memory, &path)?;
            return Ok(seg);
        }
        let seg = Self::map(&path, total_memory)?;
        map.insert(path, seg);
        Ok(seg)
    }

    fn map(path: &Path, total_memory: u64) -> Result<&'static DeviceSegment> {
        let io = |what: &str, e: std::io::Error| {
            Error::new(
                ErrorKind::NotInitialized,
                format!("simulated GPU segment {}: {what}: {e}", path.display()),
            )
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("create directory", e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o666)
            .open(path)
            .map_err(|e| io("open", e))?;
        let fd = file.as_raw_fd();
        let _lock = sys::FileLock::exclusive(fd).map_err(|e| io("lock", e))?;
        let size = std::mem::size_of::<DeviceSegment>();
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        if len < size as u64 {
            file.set_len(size as u64).map_err(|e| io("resize", e))?;
        }
        let ptr = sys::map_shared(fd, size).map_err(|e| io("map", e))?;
        // SAFETY: `ptr` is a fresh shared mapping of `size` bytes, page aligned (so aligned for
        // DeviceSegment), never unmapped (it is cached for the life of the process). Every field
        // is an atomic or padding, for which any bit pattern (including the zero fill of a new
        // file) is valid, and all access from here on goes through atomics.
        let seg: &'static DeviceSegment = unsafe { &*(ptr as *const DeviceSegment) };
        let magic = seg.magic.load(Ordering::Acquire);
        let fresh = magic == 0;
        let stale = !fresh
            && (magic != MAGIC
                || seg.version.load(Ordering::Acquire) != VERSION
                || seg.total_memory.load(Ordering::Acquire) != total_memory);
        if stale && seg.live_processes() > 0 {
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
        self.kernels_total.store(0, Ordering::Relaxed);
        self.history_len.store(0, Ordering::Relaxed);
        for p in &self.procs {
            p.pid.store(0, Ordering::Relaxed);
            p.start_time.store(0, Ordering::Relaxed);
            p.mem_used.store(0, Ordering::Relaxed);
            p.busy_ns.store(0, Ordering::Relaxed);
            p.kernels.store(0, Ordering::Relaxed);
        }
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

    /// Find or claim the slot of process `pid`.
    pub fn register(&self, pid: u32) -> Result<usize> {
        let start = sys::process_start_time(pid).unwrap_or(1);
        for attempt in 0..2 {
            for (i, p) in self.procs.iter().enumerate() {
                if p.pid.load(Ordering::Acquire) == pid {
                    if p.start_time.load(Ordering::Acquire) == start {
                        return Ok(i);
                    }
                    // A previous process with the same pid: its memory is gone.
                    self.reclaim_slot(i, pid);
                }
            }
            for (i, p) in self.procs.iter().enumerate() {
                if p.pid
                    .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    p.mem_used.store(0, Ordering::Relaxed);
                    p.busy_ns.store(0, Ordering::Relaxed);
                    p.kernels.store(0, Ordering::Relaxed);
                    p.start_time.store(start, Ordering::Release);
                    return Ok(i);
                }
            }
            if attempt == 0 {
                self.reclaim_dead();
            }
        }
        Err(Error::new(
            ErrorKind::OutOfMemory,
            format!("simulated GPU: more than {MAX_PROCS} processes use this device"),
        ))
    }

    fn reclaim_slot(&self, i: usize, pid: u32) -> bool {
        let p = &self.procs[i];
        if p.pid
            .compare_exchange(pid, PID_RECLAIMING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let mem = p.mem_used.swap(0, Ordering::AcqRel);
        self.used_memory.fetch_sub(mem, Ordering::AcqRel);
        p.busy_ns.store(0, Ordering::Relaxed);
        p.kernels.store(0, Ordering::Relaxed);
        p.start_time.store(0, Ordering::Relaxed);
        p.pid.store(0, Ordering::Release);
        true
    }

    /// Return the memory of processes that have exited (or were killed). Returns how many.
    pub fn reclaim_dead(&self) -> usize {
        let mut n = 0;
        for (i, p) in self.procs.iter().enumerate() {
            let pid = p.pid.load(Ordering::Acquire);
            if pid == 0 || pid == PID_RECLAIMING {
                continue;
            }
            let start = p.start_time.load(Ordering::Acquire);
            if start == 0 {
                continue; // being registered right now
            }
            let alive = sys::process_start_time(pid) == Some(start);
            if !alive && self.reclaim_slot(i, pid) {
                n += 1;
            }
        }
        n
    }

    fn live_processes(&self) -> usize {
        self.procs
            .iter()
            .filter(|p| {
                let pid = p.pid.load(Ordering::Acquire);
                pid != 0
                    && pid != PID_RECLAIMING
                    && sys::process_start_time(pid) == Some(p.start_time.load(Ordering::Acquire))
            })
            .count()
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
        self.procs[slot].mem_used.fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    pub fn uncharge(&self, slot: usize, bytes: u64) {
        self.procs[slot].mem_used.fetch_sub(bytes, Ordering::AcqRel);
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
        let (start, end) = {
            let _g = self.lock();
            let now = sys::now_ns();
            let ready = ready_ns.clamp(now.saturating_sub(MAX_BACKDATE_NS), now);
            let start = ready.max(self.busy_until_ns.load(Ordering::Relaxed));
            let end = start + duration_ns;
            self.busy_until_ns.store(end, Ordering::Relaxed);
            let total = self.reserved_total_ns.load(Ordering::Relaxed) + duration_ns;
            self.reserved_total_ns.store(total, Ordering::Relaxed);
            self.kernels_total.fetch_add(1, Ordering::Relaxed);
            let n = self.history_len.load(Ordering::Relaxed);
            let h = &self.history[(n % HISTORY as u64) as usize];
            h.at_ns.store(now, Ordering::Relaxed);
            h.reserved_total.store(total, Ordering::Relaxed);
            h.busy_until.store(end, Ordering::Relaxed);
            self.history_len.store(n + 1, Ordering::Release);
            (start, end)
        };
        let p = &self.procs[slot];
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
            .iter()
            .filter_map(|p| {
                let pid = p.pid.load(Ordering::Acquire);
                (pid != 0 && pid != PID_RECLAIMING).then(|| ProcReading {
                    pid,
                    mem_used: p.mem_used.load(Ordering::Relaxed),
                    busy_ns: p.busy_ns.load(Ordering::Relaxed),
                    kernels: p.kernels.load(Ordering::Relaxed),
                })
            })
            .collect()
    }

    pub fn slot_reading(&self, slot: usize) -> ProcReading {
        let p = &self.procs[slot];
        ProcReading {
            pid: p.pid.load(Ordering::Acquire),
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
