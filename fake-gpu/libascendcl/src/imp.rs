//! The runtime's operations over the engine: streams, events, memory, copies, kernels.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex};

use ascend_sys::acl::*;
use tf_fake_gpu::kernels::Builtin;
use tf_fake_gpu::{Event, FakeDevice, Fill, MemKind, Module};
use tf_hal::LaunchConfig;

use crate::ffi::{cstr, out};
use crate::state::{self, AclResult, BinObj, FuncObj, StreamObj, hal, lock};

pub fn create_stream() -> AclResult<usize> {
    let (_, ctx) = state::current()?;
    let stream = hal(ctx.engine.create_stream())?;
    Ok(state::STREAMS.insert(StreamObj { stream, _ctx: ctx }))
}

pub fn destroy_stream(h: usize) -> AclResult {
    let s = state::STREAMS.remove(h)?;
    // Work already queued still runs; the stream takes no more.
    s.stream.close();
    Ok(())
}

pub fn create_event() -> AclResult<usize> {
    state::current()?;
    Ok(state::EVENTS.insert(Event::default()))
}

fn event(h: usize) -> AclResult<Arc<Event>> {
    state::EVENTS.get(h)
}

pub fn record_event(e: usize, s: usize) -> AclResult {
    let e = event(e)?;
    hal(state::stream(s)?.record(&e))
}

pub fn stream_wait_event(s: usize, e: usize) -> AclResult {
    let e = event(e)?;
    hal(state::stream(s)?.wait_event(&e))
}

pub fn query_event(e: usize, status: *mut aclrtEventRecordedStatus) -> AclResult {
    let done = event(e)?.query();
    out(
        status,
        if done {
            ACL_EVENT_RECORDED_STATUS_COMPLETE
        } else {
            ACL_EVENT_RECORDED_STATUS_NOT_READY
        },
    )
}

pub fn elapsed(ms: *mut f32, start: usize, end: usize) -> AclResult {
    let d = hal(Event::elapsed(&*event(start)?, &*event(end)?))?;
    out(ms, d.as_secs_f64() as f32 * 1000.0)
}

// --- memory ---

pub fn malloc(p: *mut *mut c_void, size: usize) -> AclResult {
    if p.is_null() || size == 0 {
        return Err(ACL_ERROR_INVALID_PARAM);
    }
    let (_, ctx) = state::current()?;
    let addr = hal(ctx.engine.alloc(size as u64, MemKind::Device))?;
    out(p, addr as *mut c_void)
}

pub fn malloc_host(p: *mut *mut c_void, size: usize) -> AclResult {
    if p.is_null() || size == 0 {
        return Err(ACL_ERROR_INVALID_PARAM);
    }
    let (_, ctx) = state::current()?;
    let addr = hal(ctx.engine.alloc(size as u64, MemKind::Host))?;
    out(p, addr as *mut c_void)
}

/// The visible device holding the allocation that contains `addr`.
fn owner(addr: u64) -> Option<&'static Arc<FakeDevice>> {
    state::machine()
        .ok()?
        .devices
        .iter()
        .find(|d| d.lookup(addr).is_some())
}

pub fn free(ptr: u64) -> AclResult {
    if ptr == 0 {
        return Err(ACL_ERROR_INVALID_PARAM);
    }
    let dev = owner(ptr).ok_or(ACL_ERROR_RT_PARAM_INVALID)?;
    // Like the real runtime, work that may still use it finishes first.
    if let Ok((_, ctx)) = state::current() {
        let _ = ctx.engine.synchronize();
    }
    hal(dev.free(ptr)).map(|_| ())
}

pub fn memset(dst: u64, max: usize, value: i32, count: usize, stream: Option<usize>) -> AclResult {
    if dst == 0 || count > max {
        return Err(ACL_ERROR_INVALID_PARAM);
    }
    let fill = Fill::U8(value as u8);
    match stream {
        None => {
            let (_, ctx) = state::current()?;
            hal(ctx.engine.memset(dst, fill, count as u64))
        }
        Some(s) => {
            let s = state::stream(s)?;
            let dev = owner(dst).ok_or(ACL_ERROR_RT_PARAM_INVALID)?;
            let region = hal(dev.resolve(dst, count as u64))?;
            hal(s.memset_async(region, fill, count as u64))
        }
    }
}

/// Which side of a copy is device memory: `ACL_MEMCPY_DEFAULT` asks the runtime to tell.
fn direction(dst: usize, src: usize, kind: aclrtMemcpyKind) -> AclResult<(bool, bool)> {
    let on_device = |a: usize| owner(a as u64).is_some();
    match kind {
        ACL_MEMCPY_HOST_TO_HOST => Ok((false, false)),
        ACL_MEMCPY_HOST_TO_DEVICE => Ok((true, false)),
        ACL_MEMCPY_DEVICE_TO_HOST => Ok((false, true)),
        ACL_MEMCPY_DEVICE_TO_DEVICE => Ok((true, true)),
        ACL_MEMCPY_DEFAULT => Ok((on_device(dst), on_device(src))),
        _ => Err(ACL_ERROR_INVALID_PARAM),
    }
}

pub fn memcpy(
    dst: usize,
    max: usize,
    src: usize,
    count: usize,
    kind: aclrtMemcpyKind,
    stream: Option<usize>,
) -> AclResult {
    if count > max {
        return Err(ACL_ERROR_INVALID_PARAM);
    }
    if count == 0 {
        return Ok(());
    }
    if dst == 0 || src == 0 {
        return Err(ACL_ERROR_INVALID_PARAM);
    }
    let (d_dev, s_dev) = direction(dst, src, kind)?;
    let region = |a: usize| {
        let dev = owner(a as u64).ok_or(ACL_ERROR_RT_PARAM_INVALID)?;
        hal(dev.resolve(a as u64, count as u64))
    };
    match stream {
        None => {
            let (_, ctx) = state::current()?;
            let e = &ctx.engine;
            match (d_dev, s_dev) {
                (true, false) => {
                    // Host to device does not wait for queued work (a fresh argument block is
                    // written while kernels run); reads of device memory below do.
                    let r = region(dst)?;
                    // SAFETY: `r` pins `count` bytes of live device memory at `r.ptr`; the
                    // caller's source buffer holds `count` bytes (ACL's contract).
                    unsafe { std::ptr::copy(src as *const u8, r.ptr, count) };
                    Ok(())
                }
                (false, true) => {
                    // SAFETY: the caller's destination buffer holds `destMax >= count` bytes.
                    let data = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, count) };
                    hal(e.copy_from_device(data, src as u64))
                }
                (true, true) => hal(e.copy_device_to_device(dst as u64, src as u64, count as u64)),
                (false, false) => {
                    hal(e.synchronize())?;
                    // SAFETY: both host buffers hold `count` bytes (ACL's contract); they may
                    // overlap, so memmove.
                    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, count) };
                    Ok(())
                }
            }
        }
        Some(s) => {
            let s = state::stream(s)?;
            match (d_dev, s_dev) {
                (true, false) => {
                    let r = region(dst)?;
                    // SAFETY: the caller's source buffer holds `count` bytes; its bytes are
                    // taken now, so the caller may reuse it at once.
                    let data = unsafe { std::slice::from_raw_parts(src as *const u8, count) };
                    hal(s.write_async(r, data.to_vec()))
                }
                (false, true) => {
                    let r = region(src)?;
                    // SAFETY: the destination is host memory the caller keeps valid until the
                    // stream has run the copy (ACL's contract for asynchronous copies); the
                    // source range is pinned by `r`.
                    hal(unsafe { s.copy_async(dst, src, count, vec![r]) })
                }
                (true, true) => {
                    let keep = vec![region(dst)?, region(src)?];
                    // SAFETY: both ranges are device memory pinned by `keep`.
                    hal(unsafe { s.copy_async(dst, src, count, keep) })
                }
                (false, false) => {
                    // SAFETY: host memory the caller keeps valid until the copy has run.
                    hal(unsafe { s.copy_async(dst, src, count, Vec::new()) })
                }
            }
        }
    }
}

pub fn mem_info(free: *mut usize, total: *mut usize) -> AclResult {
    let (_, ctx) = state::current()?;
    let m = ctx.engine.device().memory();
    out(free, m.free_bytes as usize)?;
    out(total, m.total_bytes as usize)
}

// --- kernels ---

fn new_binary(module: Arc<Module>) -> usize {
    state::BINARIES.insert(BinObj {
        module,
        functions: Mutex::new(Default::default()),
    })
}

pub fn load_binary_data(data: *const c_void, len: usize) -> AclResult<usize> {
    if data.is_null() || len == 0 {
        return Err(ACL_ERROR_INVALID_PARAM);
    }
    // SAFETY: the caller's buffer holds `len` bytes (ACL's contract).
    let bytes = unsafe { std::slice::from_raw_parts(data as *const u8, len) };
    Ok(new_binary(hal(Module::from_image(bytes))?))
}

pub fn load_binary_file(path: *const c_char) -> AclResult<usize> {
    let path = cstr(path)?;
    let bytes = std::fs::read(path).map_err(|e| {
        tracing::debug!("aclrtBinaryLoadFromFile {path}: {e}");
        ACL_ERROR_INVALID_FILE
    })?;
    Ok(new_binary(hal(Module::from_image(&bytes))?))
}

pub fn get_function(bin: usize, name: *const c_char) -> AclResult<usize> {
    let b = state::BINARIES.get(bin)?;
    let name = cstr(name)?;
    let mut fns = lock(&b.functions);
    if let Some(&h) = fns.get(name)
        && state::FUNCTIONS.get(h).is_ok()
    {
        return Ok(h);
    }
    let func = hal(b.module.function(name))?;
    let h = state::FUNCTIONS.insert(FuncObj { func, binary: bin });
    fns.insert(name.to_string(), h);
    Ok(h)
}

/// Split an argument block into the entry's parameters: in order, each aligned to its own size
/// (at most 8), as a C struct of them is laid out.
pub fn split_args(block: &[u8], sizes: &[usize]) -> AclResult<Vec<Vec<u8>>> {
    let mut at = 0usize;
    let mut params = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let align = size.clamp(1, 8).next_power_of_two();
        at = at.div_ceil(align) * align;
        let p = block.get(at..at + size).ok_or(ACL_ERROR_RT_PARAM_INVALID)?;
        params.push(p.to_vec());
        at += size;
    }
    Ok(params)
}

pub fn launch(
    func: usize,
    block_dim: u32,
    args: u64,
    args_size: usize,
    stream: usize,
) -> AclResult {
    let f = state::FUNCTIONS.get(func)?;
    state::BINARIES.get(f.binary)?;
    if block_dim == 0 {
        return Err(ACL_ERROR_INVALID_PARAM);
    }
    let s = state::stream(stream)?;
    let params = if f.func.param_sizes.is_empty() {
        Vec::new()
    } else {
        if args == 0 {
            return Err(ACL_ERROR_INVALID_PARAM);
        }
        let dev = owner(args).ok_or(ACL_ERROR_RT_PARAM_INVALID)?;
        let r = hal(dev.resolve(args, args_size as u64))?;
        // SAFETY: `r` pins `args_size` bytes of live device memory at `r.ptr`.
        let block = unsafe { std::slice::from_raw_parts(r.ptr as *const u8, args_size) };
        split_args(block, &f.func.param_sizes)?
    };
    // blockDim cores share the work: a built-in covers every element its count names, so the
    // launch shape only needs enough threads; other kernels are modeled from blockDim blocks.
    let cfg = if f.func.builtin == Builtin::Modeled {
        LaunchConfig {
            grid: [block_dim, 1, 1],
            block: [1, 1, 1],
            shared_mem_bytes: 0,
        }
    } else {
        LaunchConfig {
            grid: [block_dim, u16::MAX as u32, u16::MAX as u32],
            block: [1, 1, 1],
            shared_mem_bytes: 0,
        }
    };
    hal(s.launch(&f.func, &cfg, &params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_blocks_split_like_c_structs() {
        // tf_vector_add_f32(u64 a, u64 b, u64 c, u32 n): 28 bytes (32 with the struct's tail).
        let mut block = vec![0u8; 32];
        block[24..28].copy_from_slice(&7u32.to_le_bytes());
        let p = split_args(&block, &[8, 8, 8, 4]).unwrap();
        assert_eq!(p[3], 7u32.to_le_bytes());
        // tf_fill_u32(u64, u32, u32): 16 bytes, no padding.
        assert_eq!(split_args(&[0; 16], &[8, 4, 4]).unwrap().len(), 3);
        // (u32, u64): the u64 starts at 8.
        let mut b = vec![0u8; 16];
        b[8] = 9;
        assert_eq!(split_args(&b, &[4, 8]).unwrap()[1][0], 9);
        assert!(
            split_args(&[0; 12], &[4, 8]).is_err(),
            "a short block is refused"
        );
    }
}
