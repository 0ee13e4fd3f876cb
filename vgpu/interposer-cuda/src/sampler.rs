//! Timing a few launches with events, so the controller knows how much device time a launch
//! takes on any driver (NVML's utilization is sampled too coarsely to pace on).
//!
//! At most one launch is timed at a time, at most every [`INTERVAL_NS`]: an event is recorded
//! before it and one after it on its stream, and on a later launch the elapsed time is read and
//! added to the region. Streams being captured into a graph are never timed, and the event calls
//! run in relaxed capture mode so they cannot disturb another thread's capture.

use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tf_cuda_abi::driver::*;
use tf_vgpu_limiter::Client;

use crate::real::real;

/// How often a launch is timed.
pub const INTERVAL_NS: u64 = 5_000_000;

struct Sampler {
    /// Id of the context the current pair belongs to (`cuCtxGetId`: unique for the process's
    /// life, unlike the handle, which a new context may reuse).
    ctx: u64,
    start: usize,
    end: usize,
    pending: bool,
    /// An event pair per context seen so far (never destroyed: the context may be gone).
    pairs: Vec<(u64, usize, usize)>,
}

static SAMPLER: Mutex<Sampler> = Mutex::new(Sampler {
    ctx: 0,
    start: 0,
    end: 0,
    pending: false,
    pairs: Vec::new(),
});
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Run `f` with this thread in relaxed stream-capture mode.
fn relaxed<T>(f: impl FnOnce() -> T) -> T {
    let exchange = real!(driver_fn::cuThreadExchangeStreamCaptureMode);
    let mut mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    let swapped = exchange
        // SAFETY: exchanging this thread's capture mode through a valid pointer.
        .is_some_and(|x| unsafe { x(&mut mode) } == CUDA_SUCCESS);
    let r = f();
    if swapped && let Some(x) = exchange {
        // SAFETY: restoring the mode we swapped out.
        unsafe { x(&mut mode) };
    }
    r
}

/// Read a finished sample into the region.
fn collect(s: &mut Sampler, c: &Client) {
    if !s.pending {
        return;
    }
    let (Some(query), Some(elapsed)) = (
        real!(driver_fn::cuEventQuery),
        real!(driver_fn::cuEventElapsedTime),
    ) else {
        return;
    };
    // SAFETY: events we created, in the context that is current for the sampler.
    match unsafe { query(s.end as *mut c_void) } {
        CUDA_ERROR_NOT_READY => {}
        CUDA_SUCCESS => {
            let mut ms = 0f32;
            // SAFETY: two recorded events of ours and a valid output.
            if unsafe { elapsed(&mut ms, s.start as *mut c_void, s.end as *mut c_void) }
                == CUDA_SUCCESS
            {
                c.region().add_sample((ms as f64 * 1e6) as u64);
            }
            s.pending = false;
        }
        _ => s.pending = false,
    }
}

/// Launch through `launch`, timing it if a sample is due.
pub fn launch(c: &Client, stream: *mut c_void, launch: impl FnOnce() -> u32) -> u32 {
    let now = tf_os::now_ns();
    if now < NEXT.load(Ordering::Relaxed) {
        return launch();
    }
    let Ok(mut s) = SAMPLER.try_lock() else {
        return launch();
    };
    NEXT.store(now + INTERVAL_NS, Ordering::Relaxed);
    relaxed(|| collect(&mut s, c));
    if s.pending || !prepare(&mut s, stream) {
        return launch();
    }
    let record = real!(driver_fn::cuEventRecord);
    let started = record.is_some_and(|r| {
        // SAFETY: recording our event on the caller's stream of the current context.
        relaxed(|| unsafe { r(s.start as *mut c_void, stream) }) == CUDA_SUCCESS
    });
    let rc = launch();
    if started && rc == CUDA_SUCCESS {
        s.pending = record.is_some_and(|r| {
            // SAFETY: as above.
            relaxed(|| unsafe { r(s.end as *mut c_void, stream) }) == CUDA_SUCCESS
        });
    }
    rc
}

/// Events in the current context, and the stream not being captured.
fn prepare(s: &mut Sampler, stream: *mut c_void) -> bool {
    let (Some(get_ctx), Some(capturing), Some(create)) = (
        real!(driver_fn::cuCtxGetCurrent),
        real!(driver_fn::cuStreamIsCapturing),
        real!(driver_fn::cuEventCreate),
    ) else {
        return false;
    };
    let mut status = CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: a valid output; the stream is the caller's.
    if unsafe { capturing(stream, &mut status) } != CUDA_SUCCESS
        || status != CU_STREAM_CAPTURE_STATUS_NONE
    {
        return false;
    }
    let Some(get_id) = real!(driver_fn::cuCtxGetId) else {
        return false;
    };
    let mut ctx: *mut c_void = std::ptr::null_mut();
    let mut id = 0u64;
    // SAFETY: a valid output.
    if unsafe { get_ctx(&mut ctx) } != CUDA_SUCCESS
        || ctx.is_null()
        // SAFETY: a valid output; a null context asks for the current one's id.
        || unsafe { get_id(std::ptr::null_mut(), &mut id) } != CUDA_SUCCESS
    {
        return false;
    }
    if s.ctx != id || s.start == 0 {
        let pair = match s.pairs.iter().find(|p| p.0 == id) {
            Some(&(_, a, b)) => (a, b),
            None => {
                if s.pairs.len() >= 64 {
                    return false;
                }
                let (mut a, mut b): (*mut c_void, *mut c_void) =
                    (std::ptr::null_mut(), std::ptr::null_mut());
                // SAFETY: creating two timing events in the current context.
                let ok = unsafe {
                    create(&mut a, CU_EVENT_DEFAULT) == CUDA_SUCCESS
                        && create(&mut b, CU_EVENT_DEFAULT) == CUDA_SUCCESS
                };
                if !ok {
                    return false;
                }
                s.pairs.push((id, a as usize, b as usize));
                (a as usize, b as usize)
            }
        };
        s.ctx = id;
        s.start = pair.0;
        s.end = pair.1;
        s.pending = false;
    }
    true
}
