//! Timing a few launches with events, so the controller knows how much device time a launch
//! takes (DCMI's utilization has no per-process figure): at most one launch timed at a time, at
//! most every [`INTERVAL_NS`]; an event is recorded before and after it on its stream, and on a
//! later launch from the same context the elapsed time is read and added to the region.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ascend_sys::acl::*;
use tf_vgpu_limiter::Client;

use crate::real::call;

/// How often a launch is timed.
pub const INTERVAL_NS: u64 = 5_000_000;

struct Pending {
    ctx: usize,
    start: usize,
    end: usize,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(0);

fn ok(rc: aclError) -> bool {
    rc == ACL_SUCCESS as aclError
}

fn current() -> usize {
    let mut c: aclrtContext = std::ptr::null_mut();
    if ok(call!(aclrtGetCurrentContext(&mut c))) {
        c as usize
    } else {
        0
    }
}

fn destroy(p: &Pending) {
    call!(aclrtDestroyEvent(p.start as aclrtEvent));
    call!(aclrtDestroyEvent(p.end as aclrtEvent));
}

/// Read a finished sample of this context into the region.
fn collect(c: &Client, ctx: usize) {
    let mut slot = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = slot.as_ref().filter(|p| p.ctx == ctx) else {
        return;
    };
    let mut status = ACL_EVENT_RECORDED_STATUS_NOT_READY;
    if !ok(call!(aclrtQueryEventStatus(
        p.end as aclrtEvent,
        &mut status
    ))) || status != ACL_EVENT_RECORDED_STATUS_COMPLETE
    {
        return;
    }
    let mut ms = 0f32;
    if ok(call!(aclrtEventElapsedTime(
        &mut ms,
        p.start as aclrtEvent,
        p.end as aclrtEvent
    ))) {
        c.region().add_sample((ms.max(0.0) as f64 * 1e6) as u64);
    }
    destroy(p);
    *slot = None;
}

/// Run `launch` on `stream`, timing it when a sample is due.
pub(crate) fn launch(
    c: &Client,
    stream: aclrtStream,
    launch: impl FnOnce() -> aclError,
) -> aclError {
    let ctx = current();
    if ctx == 0 {
        return launch();
    }
    collect(c, ctx);
    let now = tf_os::now_ns();
    let due = now >= NEXT.load(Ordering::Relaxed)
        && PENDING.lock().unwrap_or_else(|p| p.into_inner()).is_none();
    if !due {
        return launch();
    }
    NEXT.store(now + INTERVAL_NS, Ordering::Relaxed);
    let (mut start, mut end): (aclrtEvent, aclrtEvent) =
        (std::ptr::null_mut(), std::ptr::null_mut());
    if !ok(call!(aclrtCreateEvent(&mut start))) {
        return launch();
    }
    if !ok(call!(aclrtCreateEvent(&mut end))) {
        call!(aclrtDestroyEvent(start));
        return launch();
    }
    let p = Pending {
        ctx,
        start: start as usize,
        end: end as usize,
    };
    call!(aclrtRecordEvent(start, stream));
    let rc = launch();
    if rc == ACL_SUCCESS as aclError && ok(call!(aclrtRecordEvent(end, stream))) {
        *PENDING.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
    } else {
        destroy(&p);
    }
    rc
}
