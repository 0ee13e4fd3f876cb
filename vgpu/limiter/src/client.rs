//! The application side of a vGPU: what an interposer calls on every intercepted call.
//!
//! Configured from the environment that the vGPU session ([`crate::Vgpu`]) produces:
//! - `TF_VGPU_LIMITS`: the vGPU's limits page ([`crate::limits`]): quota, share, pacing and
//!   device, sealed so that no process can change them. Limits reach the process this one way
//!   only, never from the environment;
//! - `TF_VGPU_REGION`: the vGPU region, the state its processes share (usage, launch admission,
//!   counters). Nothing read from it is trusted: the quota and pacing come from the limits page,
//!   a launch never waits longer than [`MAX_LAUNCH_WAIT_NS`], and a process never holds more
//!   than the quota by its own count, whatever the shared total says;
//! - `TF_VGPU_REGION_POLICY`: what to do when the region is missing or corrupt — `keep`
//!   (default: keep enforcing the last known limits, per process; a process that never saw its
//!   region knows none, so it refuses new allocations), `open` (stop enforcing), `closed`
//!   (refuse every new allocation).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::limits::{LimitsView, MAX_BURST_NS, MAX_INTERVAL_NS, Pacing};
use crate::region::{Limits, Region, RegionMap};
use crate::sys;

pub const REGION_ENV: &str = "TF_VGPU_REGION";
pub const LIMITS_ENV: &str = "TF_VGPU_LIMITS";
pub const POLICY_ENV: &str = "TF_VGPU_REGION_POLICY";

/// The longest a launch waits for admission: a longer wait means the shared admission state is
/// corrupt (or forged), and is treated as such.
pub const MAX_LAUNCH_WAIT_NS: u64 = 2_000_000_000;

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
    /// The trusted source of limits and pacing (a limits page); `None`: the region's own words
    /// (a region without a page: tests and tools).
    page: Option<LimitsView>,
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
    /// This process's own admission time (GCRA), a floor under the shared one: a process never
    /// launches faster than the vGPU's pacing, whatever another process writes into the region.
    own_tat: AtomicU64,
}

/// `usize::MAX`: not registered yet; `FULL`: the region's process table is full.
const FULL: usize = usize::MAX - 1;

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
    fn refresh(&self, (quota, share, interval, burst): (u64, u64, u64, u64)) {
        // Out-of-range pacing is corruption: the last good values stay.
        if share > 1_000_000 || interval > MAX_INTERVAL_NS || burst > MAX_BURST_NS {
            return;
        }
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
        let lost = |what: String| {
            tracing::error!(
                "{what}; policy {policy:?}: {}",
                match policy {
                    LossPolicy::Open => "limits are not enforced in this process",
                    _ => "no limits are known, so new allocations are refused",
                }
            );
            let none = Limits {
                vram_quota: None,
                compute_share: None,
            };
            let c = Client::new(None, Region::private("", &none), policy, true);
            let _ = c.fallback.set(Region::private("", &none));
            Some(c)
        };
        let page = match std::env::var_os(LIMITS_ENV).filter(|v| !v.is_empty()) {
            Some(p) => match LimitsView::open(std::path::Path::new(&p)) {
                Ok(v) => Some(v),
                Err(e) => return lost(format!("vGPU limits page {}: {e}", p.to_string_lossy())),
            },
            None => None,
        };
        match (Region::open(std::path::Path::new(&region_path)), page) {
            (Ok(r), page) => Some(Client::new(page, r, policy, false)),
            // The shared region is unreadable (overwritten, say), but the limits page cannot be:
            // its limits and pacing rule this process, counted in a region of its own.
            (Err(e), Some(page)) if policy != LossPolicy::Open => {
                tracing::error!(
                    "{e}; enforcing the vGPU's limits page in this process alone (policy {policy:?})"
                );
                let own = Region::private(&page.device_uuid(), &page.limits());
                Some(Client::new(Some(page), own, policy, false))
            }
            (Err(e), _) => lost(e.to_string()),
        }
    }

    /// A client on an explicit region whose own words hold the limits (tests, tools).
    pub fn with_region(region: RegionMap, policy: LossPolicy) -> Client {
        Client::new(None, region, policy, false)
    }

    /// A client on a region and the limits page that governs it.
    pub fn with_page(page: LimitsView, region: RegionMap, policy: LossPolicy) -> Client {
        Client::new(Some(page), region, policy, false)
    }

    fn new(page: Option<LimitsView>, region: RegionMap, policy: LossPolicy, lost: bool) -> Client {
        let (limits, uuid) = match &page {
            Some(p) => (p.limits(), p.device_uuid()),
            None => (region.limits(), region.device_uuid()),
        };
        let c = Client {
            last: LastKnown::new(&limits),
            uuid,
            page,
            shared: region,
            fallback: OnceLock::new(),
            lost: AtomicBool::new(lost),
            policy,
            refuse: AtomicBool::new(lost && policy != LossPolicy::Open),
            held: AtomicU64::new(0),
            slot: AtomicUsize::new(usize::MAX),
            slot_pid: AtomicU32::new(0),
            register_lock: Mutex::new(()),
            own_tat: AtomicU64::new(0),
        };
        if !lost {
            c.last.refresh(c.words());
        }
        c
    }

    /// (quota, share ppm, interval, burst) from the trusted source.
    #[inline]
    fn words(&self) -> (u64, u64, u64, u64) {
        match &self.page {
            Some(p) => {
                let l = p.limits();
                let Pacing {
                    interval_ns,
                    burst_ns,
                } = p.pacing();
                (
                    p.quota_word(),
                    l.compute_share.map_or(0, |s| (s * 1e6).round() as u64),
                    interval_ns,
                    burst_ns,
                )
            }
            None => self.shared.limit_words(),
        }
    }

    /// The limits in force (the last known ones once the region is lost).
    pub fn limits(&self) -> Limits {
        self.region();
        self.last.limits()
    }

    /// The share of device time, if limited.
    pub fn compute_share(&self) -> Option<f64> {
        self.limits().compute_share
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
                self.last.refresh(self.words());
                return &self.shared;
            }
            self.lose();
        }
        // The region is lost, but a limits page cannot be: its limits and pacing still rule
        // (unless the policy stopped enforcing).
        if self.policy != LossPolicy::Open && self.page.is_some() {
            self.last.refresh(self.words());
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
            LossPolicy::Open => {
                // Nothing is enforced from now on.
                self.last
                    .refresh((0, 0, 0, self.last.burst_ns.load(Ordering::Relaxed)));
                Limits {
                    vram_quota: None,
                    compute_share: None,
                }
            }
        };
        let r = Region::private(&self.uuid, &limits);
        let slot = r.register(sys::pid()).unwrap_or(0); // a private region has room
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

    /// This process's entry in the region in force (registered on first use and after fork);
    /// `None` when the region's process table is full (the process is then refused memory:
    /// it is never charged to another process's entry).
    #[inline]
    pub fn slot(&self) -> Option<usize> {
        let s = self.slot.load(Ordering::Acquire);
        if s != usize::MAX && self.slot_pid.load(Ordering::Relaxed) == cached_pid() {
            return (s != FULL).then_some(s);
        }
        self.register()
    }

    #[cold]
    fn register(&self) -> Option<usize> {
        let _one_at_a_time = self.register_lock.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.slot.load(Ordering::Acquire);
        if s != usize::MAX && self.slot_pid.load(Ordering::Relaxed) == cached_pid() {
            return (s != FULL).then_some(s);
        }
        let pid = sys::pid();
        let s = self.region().register(pid);
        if s.is_none() {
            tracing::error!(
                "the vGPU's process table is full ({} processes): this process is refused device memory",
                crate::region::MAX_PROCS
            );
        }
        self.slot_pid.store(pid, Ordering::Relaxed);
        self.slot.store(s.unwrap_or(FULL), Ordering::Release);
        s
    }

    /// Account for a new allocation of `bytes`; false if it must fail (over quota, or this
    /// process has no entry in the region).
    pub fn charge(&self, bytes: u64) -> bool {
        let region = self.region();
        if self.refuse.load(Ordering::Acquire) {
            return false;
        }
        let Some(slot) = self.slot() else {
            return false;
        };
        let quota = self.last.quota.load(Ordering::Relaxed);
        // By this process's own count first: the shared total can be forged, this cannot.
        if quota != 0
            && self
                .held
                .load(Ordering::Acquire)
                .checked_add(bytes)
                .is_none_or(|h| h > quota)
        {
            region.note_oom();
            return false;
        }
        let ok = region.charge_within(slot, bytes, quota).is_ok();
        if ok {
            self.held.fetch_add(bytes, Ordering::AcqRel);
        }
        ok
    }

    pub fn uncharge(&self, bytes: u64) {
        if let Some(slot) = self.slot() {
            self.region().uncharge(slot, bytes);
        }
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

    /// Called before every kernel launch: waits if the vGPU is over its compute share. The
    /// pacing comes from the trusted source; the wait is bounded ([`MAX_LAUNCH_WAIT_NS`]); and
    /// this process's own admission time is a floor under the shared one.
    #[inline]
    pub fn before_launch(&self) {
        let region = self.region();
        let pacing = Pacing {
            interval_ns: self.last.interval_ns.load(Ordering::Relaxed),
            burst_ns: self.last.burst_ns.load(Ordering::Relaxed),
        };
        if pacing.interval_ns == 0 {
            return;
        }
        let now = sys::now_ns();
        let shared = region.admit_launch_with(self.slot(), now, pacing, MAX_LAUNCH_WAIT_NS);
        let own = crate::region::gcra(&self.own_tat, now, pacing, MAX_LAUNCH_WAIT_NS);
        let wait = shared.max(own).min(MAX_LAUNCH_WAIT_NS);
        if wait > 0 {
            sys::sleep_ns(wait);
        }
    }

    /// The memory total this vGPU shows the application, if limited.
    pub fn vram_quota(&self) -> Option<u64> {
        self.region();
        let q = self.last.quota.load(Ordering::Relaxed);
        (q > 0).then_some(q)
    }

    pub fn vram_used(&self) -> u64 {
        self.region().vram_used()
    }

    /// What this process holds by its own count.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
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
