//! The application side of a vGPU: what an interposer calls on every intercepted call.
//!
//! Configured from the environment that `tensor-fusion run` (or the hypervisor) sets:
//! - `TF_VGPU_REGION`: path of the vGPU region;
//! - `TF_VGPU_DEVICE_UUID`, `TF_VGPU_VRAM` (bytes), `TF_VGPU_COMPUTE` (share in (0, 1]): the
//!   limits, also used when the region cannot be opened;
//! - `TF_VGPU_REGION_POLICY`: what to do when the region is missing or corrupt — `keep`
//!   (default: keep enforcing the last known limits, per process), `open` (stop enforcing),
//!   `closed` (refuse every new allocation).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use crate::region::{Limits, Region};
use crate::sys;

pub const REGION_ENV: &str = "TF_VGPU_REGION";
pub const DEVICE_UUID_ENV: &str = "TF_VGPU_DEVICE_UUID";
pub const VRAM_ENV: &str = "TF_VGPU_VRAM";
pub const COMPUTE_ENV: &str = "TF_VGPU_COMPUTE";
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
    shared: &'static Region,
    /// Replaces `shared` if it is lost (policy `keep`).
    fallback: OnceLock<&'static Region>,
    lost: AtomicBool,
    policy: LossPolicy,
    limits: Limits,
    uuid: String,
    slot: AtomicUsize,
    slot_pid: AtomicU32,
}

impl Client {
    /// The vGPU of this process, from the environment; `None` when the process has none.
    pub fn from_env() -> Option<Client> {
        let region_path = std::env::var_os(REGION_ENV).filter(|v| !v.is_empty());
        let env_limits = Limits {
            vram_quota: std::env::var(VRAM_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&v| v > 0),
            compute_share: std::env::var(COMPUTE_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&v: &f64| v > 0.0),
        };
        let policy = match std::env::var(POLICY_ENV) {
            Ok(v) => LossPolicy::parse(&v).unwrap_or_else(|| {
                tracing::warn!("{POLICY_ENV}={v:?} is not keep, open or closed: using keep");
                LossPolicy::Keep
            }),
            Err(_) => LossPolicy::Keep,
        };
        let env_uuid = std::env::var(DEVICE_UUID_ENV).unwrap_or_default();
        if region_path.is_none()
            && env_limits.vram_quota.is_none()
            && env_limits.compute_share.is_none()
        {
            return None;
        }
        let opened = region_path
            .as_ref()
            .map(|p| Region::open(std::path::Path::new(p)));
        let (shared, lost) = match opened {
            Some(Ok(r)) => (r, false),
            Some(Err(e)) => {
                tracing::error!("{e}; policy {policy:?}");
                (Region::private(&env_uuid, &env_limits), true)
            }
            None => (Region::private(&env_uuid, &env_limits), true),
        };
        let limits = if lost { env_limits } else { shared.limits() };
        let uuid = if lost { env_uuid } else { shared.device_uuid() };
        let c = Client {
            shared,
            fallback: OnceLock::new(),
            lost: AtomicBool::new(lost),
            policy,
            limits,
            uuid,
            slot: AtomicUsize::new(usize::MAX),
            slot_pid: AtomicU32::new(0),
        };
        if lost {
            let _ = c.fallback.set(shared);
        }
        Some(c)
    }

    /// A client on an explicit region (tests, tools).
    pub fn with_region(region: &'static Region, policy: LossPolicy) -> Client {
        Client {
            shared: region,
            fallback: OnceLock::new(),
            lost: AtomicBool::new(false),
            policy,
            limits: region.limits(),
            uuid: region.device_uuid(),
            slot: AtomicUsize::new(usize::MAX),
            slot_pid: AtomicU32::new(0),
        }
    }

    /// UUID of the device this vGPU is on.
    pub fn device_uuid(&self) -> &str {
        &self.uuid
    }

    /// The region in force: the shared one, or the local fallback once the shared one is lost.
    #[inline]
    pub fn region(&self) -> &'static Region {
        if !self.lost.load(Ordering::Relaxed) {
            if self.shared.is_valid() {
                return self.shared;
            }
            self.lose();
        }
        self.fallback.get().copied().unwrap_or(self.shared)
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
            LossPolicy::Keep | LossPolicy::Closed => self.limits.clone(),
            LossPolicy::Open => Limits {
                vram_quota: None,
                compute_share: None,
            },
        };
        let _ = self.fallback.set(Region::private(&self.uuid, &limits));
        self.slot.store(usize::MAX, Ordering::Release);
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
        let pid = sys::pid();
        let s = self.region().register(pid).unwrap_or(0);
        self.slot_pid.store(pid, Ordering::Relaxed);
        self.slot.store(s, Ordering::Release);
        s
    }

    /// Account for a new allocation of `bytes`; false if it must fail (over quota).
    pub fn charge(&self, bytes: u64) -> bool {
        let region = self.region();
        if self.lost.load(Ordering::Relaxed) && self.policy == LossPolicy::Closed {
            return false;
        }
        region.charge(self.slot(), bytes).is_ok()
    }

    pub fn uncharge(&self, bytes: u64) {
        self.region().uncharge(self.slot(), bytes);
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
