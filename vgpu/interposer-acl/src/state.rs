//! The process's vNPU (from the environment, through `tf_vgpu_limiter::Client`) and the sizes of
//! its live allocations (ACL has no call that tells an allocation's size from its address).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tf_vgpu_limiter::Client;

/// The process's vNPU, if it has one.
pub fn client() -> Option<&'static Client> {
    static C: OnceLock<Option<Client>> = OnceLock::new();
    C.get_or_init(|| {
        tf_os::init_logging();
        let c = Client::from_env();
        if let Some(c) = &c {
            let l = c.region().limits();
            tracing::info!(
                device = c.device_uuid(),
                vram_quota = ?l.vram_quota,
                compute_share = ?l.compute_share,
                "tensor-fusion vNPU limits in force (ACL)"
            );
        }
        c
    })
    .as_ref()
}

/// Live allocations: address -> (bytes, context current when it was made).
#[derive(Default)]
pub struct Allocations {
    pub live: HashMap<u64, (u64, usize)>,
    /// Contexts the program made with aclrtCreateContext (the others are devices' defaults).
    pub user_contexts: HashSet<usize>,
}

pub fn allocations() -> MutexGuard<'static, Allocations> {
    static A: OnceLock<Mutex<Allocations>> = OnceLock::new();
    A.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}
