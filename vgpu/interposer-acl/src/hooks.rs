//! The interposed functions, exported under the runtime's names with the signatures of
//! `ascend-sys` (checked at compile time against `ascend_sys::acl_fn`), each under the
//! C-boundary kit's panic guard.

use std::ffi::c_void;

use ascend_sys::AclAbi;
use ascend_sys::acl::*;

use crate::real::call;
use crate::state::{allocations, client};

/// How the interposer names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion ACL interposer";

macro_rules! hooks {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) $body:block)*) => {
        $(
            /// Interposed; see the crate documentation.
            ///
            /// # Safety
            /// The ACL runtime's contract for this function.
            #[unsafe(no_mangle)]
            #[allow(non_snake_case)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> aclError {
                tf_ffi::guard::<AclAbi, u32>(LIBRARY, stringify!($name), || $body as u32)
                    as aclError
            }
            // The signature is the subset's.
            const _: ascend_sys::acl_fn::$name = $name;
        )*
    };
}

/// The thread's current context (0 when there is none or it cannot be asked).
fn current_context() -> usize {
    let mut c: aclrtContext = std::ptr::null_mut();
    if call!(aclrtGetCurrentContext(&mut c)) == ACL_SUCCESS as aclError {
        c as usize
    } else {
        0
    }
}

/// Allocate through `alloc` after charging `size` to the vNPU; past the quota, the runtime's
/// out-of-memory code and nothing allocated. The size is remembered for the free.
fn charged(p: *mut *mut c_void, size: usize, alloc: impl FnOnce() -> aclError) -> aclError {
    let Some(c) = client() else { return alloc() };
    if p.is_null() || size == 0 {
        return alloc();
    }
    let bytes = size as u64;
    if !c.charge(bytes) {
        tracing::debug!(bytes, "allocation refused: over the vNPU's memory quota");
        return ACL_ERROR_RT_MEMORY_ALLOCATION as aclError;
    }
    let rc = alloc();
    if rc != ACL_SUCCESS as aclError {
        c.uncharge(bytes);
        return rc;
    }
    // SAFETY: the runtime just wrote the allocation's address through `p` (non-null: checked).
    let ptr = unsafe { p.read_unaligned() } as u64;
    let ctx = current_context();
    allocations().live.insert(ptr, (bytes, ctx));
    rc
}

/// Give back what the allocations `which` selects held (they were released by the runtime).
fn give_back(which: impl Fn(usize) -> bool) {
    let Some(c) = client() else { return };
    let mut a = allocations();
    let gone: Vec<u64> = a
        .live
        .iter()
        .filter(|(_, (_, ctx))| which(*ctx))
        .map(|(p, _)| *p)
        .collect();
    for p in gone {
        if let Some((bytes, _)) = a.live.remove(&p) {
            c.uncharge(bytes);
        }
    }
}

hooks! {
    fn aclrtMalloc(p: *mut *mut c_void, size: usize, policy: aclrtMemMallocPolicy) {
        charged(p, size, || call!(aclrtMalloc(p, size, policy)))
    }

    fn aclrtMallocCached(p: *mut *mut c_void, size: usize, policy: aclrtMemMallocPolicy) {
        charged(p, size, || call!(aclrtMallocCached(p, size, policy)))
    }

    fn aclrtMallocAlign32(p: *mut *mut c_void, size: usize, policy: aclrtMemMallocPolicy) {
        charged(p, size, || call!(aclrtMallocAlign32(p, size, policy)))
    }

    fn aclrtFree(p: *mut c_void) {
        let rc = call!(aclrtFree(p));
        if rc == ACL_SUCCESS as aclError
            && let Some(c) = client()
            && let Some((bytes, _)) = allocations().live.remove(&(p as u64))
        {
            c.uncharge(bytes);
        }
        rc
    }

    fn aclrtGetMemInfo(attr: aclrtMemAttr, free: *mut usize, total: *mut usize) {
        let rc = call!(aclrtGetMemInfo(attr, free, total));
        if rc == ACL_SUCCESS as aclError
            && !free.is_null()
            && !total.is_null()
            && let Some(c) = client()
            && let Some(quota) = c.vram_quota()
        {
            let quota = quota as usize;
            let left = quota.saturating_sub(c.vram_used() as usize);
            // SAFETY: the runtime just wrote both outputs (non-null: checked).
            unsafe {
                free.write_unaligned(left.min(free.read_unaligned()));
                total.write_unaligned(quota);
            }
        }
        rc
    }

    fn aclrtCreateContext(ctx: *mut aclrtContext, device: i32) {
        let rc = call!(aclrtCreateContext(ctx, device));
        if rc == ACL_SUCCESS as aclError && !ctx.is_null() {
            // SAFETY: the runtime just wrote the new context (non-null: checked).
            let c = unsafe { ctx.read_unaligned() } as usize;
            allocations().user_contexts.insert(c);
        }
        rc
    }

    fn aclrtDestroyContext(ctx: aclrtContext) {
        let rc = call!(aclrtDestroyContext(ctx));
        if rc == ACL_SUCCESS as aclError {
            allocations().user_contexts.remove(&(ctx as usize));
            give_back(|c| c == ctx as usize);
        }
        rc
    }

    fn aclrtResetDevice(device: i32) {
        let rc = call!(aclrtResetDevice(device));
        if rc == ACL_SUCCESS as aclError {
            // The device's default context went, with what was allocated under it (the vNPU's
            // process sees one device).
            let user = allocations().user_contexts.clone();
            give_back(|c| !user.contains(&c));
        }
        rc
    }

    fn aclrtLaunchKernel(
        func: aclrtFuncHandle,
        block_dim: u32,
        args: *const c_void,
        args_size: usize,
        stream: aclrtStream
    ) {
        let launch = || call!(aclrtLaunchKernel(func, block_dim, args, args_size, stream));
        match client() {
            Some(c) if c.region().compute_share().is_some() => {
                c.before_launch();
                crate::sampler::launch(c, stream, launch)
            }
            _ => launch(),
        }
    }
}
