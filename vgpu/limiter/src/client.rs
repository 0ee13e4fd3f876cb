//! The application side of a vGPU: what an interposer calls on every intercepted call.
//!
//! Configured from the environment that the vGPU session ([`crate::Vgpu`]) produces:
//! - `TF_VGPU_REGION`: path of the vGPU region. The limits and the device reach the process
//!   this one way only: they are read from the region, never from the environment;
//! - `TF_VGPU_REGION_POLICY`: what to do when the region is missing or corrupt — `keep`
//!   (default: keep enforcing the last known limits, per process; a process that never saw its
//!   region knows none, so it refuses new allocations), `open` (stop enforcing), `closed`
//!   (refuse every new allocation).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::region::{Limits, Region, RegionMap};
use crate::sys;

pub const REGION_ENV: &str = "TF_VGPU_REGION";
pub const POLICY_ENV: &str = "TF_VGPU_REGION_POLICY";

/// What to do when the shared region is missing or corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossPolicy {
    Keep,
    Open,
    Closed,
}

impl LossPolicy {
    pub fn parse(s: &str) -> Option<LossPolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "keep" => Some(LossPolicy::Keep),
            "open" => Some(LossPolicy::Open),
            "closed" => Some(LossPolicy::Closed),
            _ => None,
        }
    }
}

/// A process's handle on its vGPU.
pub struct Client {
    shared: RegionMap,
    /// Replaces `shared` once it is lost.
    fallback: OnceLock<RegionMap>,
    lost: AtomicBool,
    policy: LossPolicy,
    /// Refuse every new allocation: the policy is `closed` and the region is lost, or the
    /// process never saw its region and so knows no limits to keep.
    refuse: AtomicBool,
    /// The last limits and pacing seen in the shared region (what `keep` keeps enforcing).
    last: LastKnown,
    /// What this process holds (what `keep` still counts after a loss).
    held: AtomicU64,
    uuid: String,
    slot: AtomicUsize,
    slot_pid: AtomicU32,
    register_lock: Mutex<()>,
}

/// Limits and pacing as last seen in the shared region; refreshed on use (loads, and a store
/// only when something changed).
struct LastKnown {
    quota: AtomicU64,
    share_ppm: AtomicU64,
    interval_ns: AtomicU64,
    burst_ns: AtomicU64,
}

impl LastKnown {
    fn new(limits: &Limits) -> Self {
        LastKnown {
            quota: AtomicU64::new(limits.vram_quota.unwrap_or(0)),
            share_ppm: AtomicU64::new(
                limits
                    .compute_share
                    .map_or(0, |s| (s.clamp(0.0, 1.0) * 1e6).round() as u64),
            ),
            interval_ns: AtomicU64::new(0),
            burst_ns: AtomicU64::new(crate::region::DEFAULT_BURST_NS),
        }
    }

    #[inline]
    fn refresh(&self, r: &Region) {
        let (quota, share, interval, burst) = r.limit_words();
        for (cell, v) in [
            (&self.quota, quota),
            (&self.share_ppm, share),
            (&self.interval_ns, interval),
            (&self.burst_ns, burst),
        ] {
            if cell.load(Ordering::Relaxed) != v {
                cell.store(v, Ordering::Relaxed);
            }
        }
    }

    fn limits(&self) -> Limits {
        let q = self.quota.load(Ordering::Relaxed);
        let s = self.share_ppm.load(Ordering::Relaxed);
        Limits {
            vram_quota: (q > 0).then_some(q),
            compute_share: (s > 0).then(|| s as f64 / 1e6),
        }
    }
}

impl Client {
    /// The vGPU of this process, from the environment; `None` when the process has none.
    pub fn from_env() -> Option<Client> {
        let region_path = std::env::var_os(REGION_ENV).filter(|v| !v.is_empty())?;
        let policy = match std::env::var(POLICY_ENV) {
            Ok(v) => LossPolicy::parse(&v).unwrap_or_else(|| {
                tracing::warn!("{POLICY_ENV}={v:?} is not keep, open or closed: using keep");
                LossPolicy::Keep
            }),
            Err(_) => LossPolicy::Keep,
        };
        match Region::open(std::path::Path::new(&region_path)) {
            Ok(r) => Some(Client::with_region(r, policy)),
            Err(e) => {
                tracing::error!(
                    "{e}; policy {policy:?}: {}",
                    match policy {
                        LossPolicy::Open => "limits are not enforced in this process",
                        _ => "no limits are known, so new allocations are refused",
                    }
                );
                let none = Limits {
                    vram_quota: None,
                    compute_share: None,
                };
                let c = Client::new(Region::private("", &none), policy, true);
                let _ = c.fallback.set(Region::private("", &none));
                Some(c)
            }
        }
    }

    /// A client on an explicit region (tests, tools).
    pub fn with_region(region: RegionMap, policy: LossPolicy) -> Client {
        Client::new(region, policy, false)
    }

    fn new(region: RegionMap, policy: LossPolicy, lost: bool) -> Client {
        let c = Client {
            last: LastKnown::new(&region.limits()),
            uuid: region.device_uuid(),
            shared: region,
            fallback: OnceLock::new(),
            lost: AtomicBool::new(lost),
            policy,
            refuse: AtomicBool::new(lost && policy != LossPolicy::Open),
            held: AtomicU64::new(0),
            slot: AtomicUsize::new(usize::MAX),
            slot_pid: AtomicU32::new(0),
            register_lock: Mutex::new(()),
        };
        if !lost {
            c.last.refresh(&c.shared);
        }
        c
    }

    /// UUID of the device this vGPU is on.
    pub fn device_uuid(&self) -> &str {
        &self.uuid
    }

    /// The region in force: the shared one, or the local fallback once the shared one is lost.
    #[inline]
    pub fn region(&self) -> &Region {
        if !self.lost.load(Ordering::Relaxed) {
            if self.shared.is_valid() {
                self.last.refresh(&self.shared);
                return &self.shared;
            }
            self.lose();
        }
        match self.fallback.get() {
            Some(r) => r,
            // Another thread is installing the fallback right now.
            None => self.wait_for_fallback(),
        }
    }

    #[cold]
    fn wait_for_fallback(&self) -> &Region {
        loop {
            if let Some(r) = self.fallback.get() {
                return r;
            }
            std::thread::yield_now();
        }
    }

    #[cold]
    fn lose(&self) {
        if self.lost.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(
            "vGPU region is corrupt (bad header); policy {:?}: {}",
            self.policy,
            match self.policy {
                LossPolicy::Keep => "keeping the last known limits in this process",
                LossPolicy::Open => "no longer enforcing limits",
                LossPolicy::Closed => "refusing new allocations",
            }
        );
        let limits = match self.policy {
            LossPolicy::Keep | LossPolicy::Closed => self.last.limits(),
            LossPolicy::Open => Limits {
                vram_quota: None,
                compute_share: None,
            },
        };
        let r = Region::private(&self.uuid, &limits);
        let slot = r.register(sys::pid()).unwrap_or(0);
        if self.policy != LossPolicy::Open {
            // What this process holds still counts, and launches stay paced as they were.
            r.seed_usage(slot, self.held.load(Ordering::Acquire));
            r.set_pacing(
                self.last.interval_ns.load(Ordering::Relaxed),
                self.last.burst_ns.load(Ordering::Relaxed),
                0,
                0.0,
            );
        }
        self.slot_pid.store(cached_pid(), Ordering::Relaxed);
        self.slot.store(slot, Ordering::Release);
        if self.policy == LossPolicy::Closed {
            self.refuse.store(true, Ordering::Release);
        }
        let _ = self.fallback.set(r);
    }

    /// This process's entry in the region in force (registered on first use and after fork).
    #[inline]
    pub fn slot(&self) -> usize {
        let s = self.slot.load(Ordering::Acquire);
        if s != usize::MAX && self.slot_pid.load(Ordering::Relaxed) == cached_pid() {
            return s;
        }
        self.register()
    }

    #[cold]
    fn register(&self) -> usize {
        let _one_at_a_time = self.register_lock.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.slot.load(Ordering::Acquire);
        if s != usize::MAX && self.slot_pid.load(Ordering::Relaxed) == cached_pid() {
            return s;
        }
        let pid = sys::pid();
        let s = self.region().register(pid).unwrap_or(0);
        self.slot_pid.store(pid, Ordering::Relaxed);
        self.slot.store(s, Ordering::Release);
        s
    }

    /// Account for a new allocation of `bytes`; false if it must fail (over quota).
    pub fn charge(&self, bytes: u64) -> bool {
        let region = self.region();
        if self.refuse.load(Ordering::Acquire) {
            return false;
        }
        let ok = region.charge(self.slot(), bytes).is_ok();
        if ok {
            self.held.fetch_add(bytes, Ordering::AcqRel);
        }
        ok
    }

    pub fn uncharge(&self, bytes: u64) {
        self.region().uncharge(self.slot(), bytes);
        let mut cur = self.held.load(Ordering::Relaxed);
        while let Err(actual) = self.held.compare_exchange_weak(
            cur,
            cur.saturating_sub(bytes),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            cur = actual;
        }
    }

    /// Called before every kernel launch: waits if the vGPU is over its compute share.
    #[inline]
    pub fn before_launch(&self) {
        let region = self.region();
        if !region.pacing() {
            return;
        }
        let wait = region.admit_launch(self.slot(), sys::now_ns());
        if wait > 0 {
            sys::sleep_ns(wait);
        }
    }

    /// The memory total this vGPU shows the application, if limited.
    pub fn vram_quota(&self) -> Option<u64> {
        self.region().vram_quota()
    }

    pub fn vram_used(&self) -> u64 {
        self.region().vram_used()
    }
}

/// The pid, cached (getpid is a system call); refreshed in a fork's child.
fn cached_pid() -> u32 {
    static PID: AtomicU32 = AtomicU32::new(0);
    static HOOKED: std::sync::Once = std::sync::Once::new();
    HOOKED.call_once(|| {
        extern "C" fn child() {
            PID.store(0, Ordering::Relaxed);
        }
        // SAFETY: registers a handler that only stores to an atomic; valid for the process life.
        unsafe { libc::pthread_atfork(None, None, Some(child)) };
    });
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    let p = sys::pid();
    PID.store(p, Ordering::Relaxed);
    p
}
