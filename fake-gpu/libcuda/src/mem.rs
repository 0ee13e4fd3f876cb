//! Memory: allocation of every family, pools, virtual memory management, copies, memsets,
//! pointer attributes.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use tf_cuda_abi::driver::*;
use tf_fake_gpu::{FakeDevice, Fill, MemKind, device::Region};

use crate::ffi::{out, read};
use crate::state::*;

/// The device and allocation that contain `ptr`: (device, base, size, kind).
pub fn find(ptr: u64) -> CuResult<(&'static Arc<FakeDevice>, u64, u64, MemKind)> {
    let d = driver()?;
    for dev in d.gpu.devices() {
        // Any device of the machine: a pointer identifies its own device.
        if let Some((base, size, kind)) = dev.lookup(ptr) {
            return Ok((dev, base, size, kind));
        }
    }
    Err(CUDA_ERROR_INVALID_VALUE)
}

pub fn alloc(dptr: *mut u64, bytes: usize, kind: MemKind) -> CuResult {
    if dptr.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (_, ctx) = current()?;
    let p = hal(ctx.engine.alloc(bytes as u64, kind))?;
    out(dptr, p)
}

pub fn alloc_host(pp: *mut *mut c_void, bytes: usize) -> CuResult {
    if pp.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (_, ctx) = current()?;
    let p = hal(ctx.engine.alloc(bytes as u64, MemKind::Host))?;
    out(pp, p as *mut c_void)
}

pub fn alloc_pitch(
    dptr: *mut u64,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: u32,
) -> CuResult {
    if !matches!(elem, 4 | 8 | 16) || width == 0 || height == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = width.next_multiple_of(512);
    alloc(dptr, p * height, MemKind::Device)?;
    out(pitch, p)
}

pub fn free(ptr: u64) -> CuResult {
    if ptr == 0 {
        driver()?;
        return Ok(());
    }
    let (dev, base, _, kind) = find(ptr)?;
    if base != ptr || kind == MemKind::Host || kind == MemKind::Mapped {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if let Ok((_, ctx)) = current() {
        let _ = ctx.engine.synchronize();
    }
    hal(dev.free(ptr)).map(|_| ())
}

pub fn free_host(p: *mut c_void) -> CuResult {
    let (dev, base, _, kind) = find(p as u64)?;
    if base != p as u64 || kind != MemKind::Host {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    hal(dev.free(base)).map(|_| ())
}

pub fn free_async(ptr: u64, stream: *mut c_void) -> CuResult {
    let (dev, base, _, kind) = find(ptr)?;
    if base != ptr || !kind.is_counted() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (s, _) = crate::state::stream(stream)?;
    let dev = dev.clone();
    hal(s.host_fn(Box::new(move || {
        let _ = dev.free(ptr);
    })))
}

pub fn mem_info(free: *mut usize, total: *mut usize) -> CuResult {
    let (_, ctx) = current()?;
    let m = ctx.engine.device().memory();
    out(free, m.free_bytes as usize)?;
    out(total, m.total_bytes as usize)
}

pub fn address_range(pbase: *mut u64, psize: *mut usize, ptr: u64) -> CuResult {
    let (_, base, size, _) = find(ptr)?;
    if !pbase.is_null() {
        out(pbase, base)?;
    }
    if !psize.is_null() {
        out(psize, size as usize)?;
    }
    Ok(())
}

/// What a copy's argument must be, by the entry point's name (`HtoD`: a device destination and
/// a host source, ...); `cuMemcpy` takes either (unified addressing).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Device,
    Host,
    Any,
}

/// A side of a copy: device memory or page-locked host memory of ours (checked, and pinned
/// while the copy is queued), or the caller's own host memory (which we cannot vouch for).
enum Side {
    Device(Region),
    Pinned(usize),
    Host(usize),
}

impl Side {
    fn addr(&self) -> usize {
        match self {
            Side::Device(r) => r.ptr as usize,
            Side::Pinned(a) | Side::Host(a) => *a,
        }
    }

    fn trusted(&self) -> bool {
        !matches!(self, Side::Host(_))
    }
}

/// Check one side of a copy of `len` bytes: a device pointer must lie in one live allocation
/// (a freed, foreign or short one is `CUDA_ERROR_INVALID_VALUE`, as the driver answers).
fn side(ptr: u64, len: usize, expect: Expect) -> CuResult<Side> {
    if ptr == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    match find(ptr) {
        Ok((_, base, size, MemKind::Host)) => {
            let end = ptr
                .checked_add(len as u64)
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if expect == Expect::Device || end > base + size {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            Ok(Side::Pinned(ptr as usize))
        }
        Ok((dev, _, _, _)) if expect != Expect::Host => Ok(Side::Device(
            dev.resolve(ptr, len as u64)
                .map_err(|_| CUDA_ERROR_INVALID_VALUE)?,
        )),
        Ok(_) => Err(CUDA_ERROR_INVALID_VALUE),
        Err(_) if expect == Expect::Device => Err(CUDA_ERROR_INVALID_VALUE),
        Err(_) => Ok(Side::Host(ptr as usize)),
    }
}

/// Copy `len` bytes now. When either side is the caller's own host memory, the bytes move
/// through `tf_os::copy_checked`, so an unmapped or read-only address is
/// `CUDA_ERROR_INVALID_VALUE` rather than a crash (the simulated GPU never faults on a bad
/// pointer; a real driver may).
fn copy_now(d: &Side, s: &Side, len: usize) -> CuResult {
    if d.trusted() && s.trusted() {
        // SAFETY: both sides were checked against live allocations of ours covering `len`
        // bytes and are pinned by the `Side`s; ranges may overlap (memmove semantics).
        unsafe { std::ptr::copy(s.addr() as *const u8, d.addr() as *mut u8, len) };
        return Ok(());
    }
    tf_os::copy_checked(d.addr(), s.addr(), len).map_err(|_| CUDA_ERROR_INVALID_VALUE)
}

/// Copy `len` bytes from `src` to `dst`, each checked against what the entry point expects.
/// Synchronous when `stream` is None.
pub fn copy(
    dst: u64,
    dst_is: Expect,
    src: u64,
    src_is: Expect,
    len: usize,
    stream: Option<*mut c_void>,
) -> CuResult {
    if len == 0 {
        driver()?;
        return Ok(());
    }
    let (d, s) = (side(dst, len, dst_is)?, side(src, len, src_is)?);
    match stream {
        None => {
            let (_, ctx) = current()?;
            hal(ctx.engine.synchronize())?;
            copy_now(&d, &s, len)
        }
        Some(h) => {
            let (st, obj) = crate::state::stream(h)?;
            if obj.as_ref().is_some_and(|o| lock(&o.capture).is_some()) {
                return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
            }
            match (d, s) {
                // From pageable host memory: like the real driver, take the bytes now (the
                // caller may reuse its buffer as soon as the call returns).
                (Side::Device(dst), src @ Side::Host(_)) => {
                    let mut data = vec![0u8; len];
                    let staging = Side::Pinned(data.as_mut_ptr() as usize);
                    copy_now(&staging, &src, len)?;
                    hal(st.write_async(dst, data))
                }
                // To pageable host memory: the real driver returns once the copy is done.
                (d @ Side::Host(_), s) | (d, s @ Side::Host(_)) => {
                    hal(st.synchronize())?;
                    copy_now(&d, &s, len)
                }
                (d, s) => {
                    let (da, sa) = (d.addr(), s.addr());
                    // SAFETY: both sides are checked allocations of ours: device sides are
                    // pinned by `keep`, pinned host memory stays until freed (and
                    // cuMemFreeHost synchronizes).
                    hal(unsafe { st.copy_async(da, sa, len, keep_of([d, s])) })
                }
            }
        }
    }
}

fn keep_of(sides: [Side; 2]) -> Vec<Region> {
    sides
        .into_iter()
        .filter_map(|x| match x {
            Side::Device(r) => Some(r),
            Side::Pinned(_) | Side::Host(_) => None,
        })
        .collect()
}

pub fn copy_2d(p: *const c_void, stream: Option<*mut c_void>) -> CuResult {
    let c: tf_cuda_abi::CUDA_MEMCPY2D = read(p as *const tf_cuda_abi::CUDA_MEMCPY2D)?;
    if c.Height > 1 && (c.srcPitch < c.WidthInBytes || c.dstPitch < c.WidthInBytes) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let side = |ty: u32, host: usize, dev: u64| -> CuResult<(u64, Expect)> {
        match ty {
            CU_MEMORYTYPE_HOST => Ok((host as u64, Expect::Host)),
            CU_MEMORYTYPE_DEVICE => Ok((dev, Expect::Device)),
            CU_MEMORYTYPE_UNIFIED => Ok((dev, Expect::Any)),
            _ => Err(CUDA_ERROR_NOT_SUPPORTED),
        }
    };
    // Every offset with checked arithmetic: an overflowing y × pitch is an invalid value.
    let at = |base: u64, x: usize, y: usize, pitch: usize| -> CuResult<u64> {
        y.checked_mul(pitch)
            .and_then(|o| o.checked_add(x))
            .and_then(|o| base.checked_add(o as u64))
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    };
    let (sbase, s_is) = side(c.srcMemoryType, c.srcHost as usize, c.srcDevice)?;
    let (dbase, d_is) = side(c.dstMemoryType, c.dstHost as usize, c.dstDevice)?;
    if let Some(h) = stream {
        let (st, _) = crate::state::stream(h)?;
        hal(st.synchronize())?;
    }
    for row in 0..c.Height {
        let sy = c.srcY.checked_add(row).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let dy = c.dstY.checked_add(row).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let s = at(sbase, c.srcXInBytes, sy, c.srcPitch)?;
        let d = at(dbase, c.dstXInBytes, dy, c.dstPitch)?;
        copy(d, d_is, s, s_is, c.WidthInBytes, None)?;
    }
    Ok(())
}

pub fn memset(dst: u64, fill: Fill, count: usize, stream: Option<*mut c_void>) -> CuResult {
    if count == 0 {
        driver()?;
        return Ok(());
    }
    let width = match fill {
        Fill::U8(_) => 1,
        Fill::U16(_) => 2,
        Fill::U32(_) => 4,
    };
    let bytes = count.checked_mul(width).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let (dev, _, _, _) = find(dst)?;
    let region = dev
        .resolve(dst, bytes as u64)
        .map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    match stream {
        None => {
            let (_, ctx) = current()?;
            hal(ctx.engine.synchronize())?;
            // SAFETY: resolved for count × width bytes of live device memory.
            unsafe { tf_fake_gpu::exec::memset(region.ptr, fill, count as u64) };
            Ok(())
        }
        Some(h) => {
            let (st, _) = crate::state::stream(h)?;
            hal(st.memset_async(region, fill, count as u64))
        }
    }
}

pub fn host_get_device_pointer(pdptr: *mut u64, p: *mut c_void) -> CuResult {
    driver()?;
    out(pdptr, p as u64)
}

// --- pointer attributes ---

pub fn pointer_attribute(data: *mut c_void, attr: u32, ptr: u64) -> CuResult {
    let (dev, base, size, kind) = find(ptr)?;
    match attr {
        CU_POINTER_ATTRIBUTE_CONTEXT => {
            let h = current_handle().unwrap_or(0);
            out(data as *mut *mut c_void, h as *mut c_void)
        }
        CU_POINTER_ATTRIBUTE_MEMORY_TYPE => out(
            data as *mut u32,
            if kind == MemKind::Host {
                CU_MEMORYTYPE_HOST
            } else {
                CU_MEMORYTYPE_DEVICE
            },
        ),
        CU_POINTER_ATTRIBUTE_DEVICE_POINTER => out(data as *mut u64, ptr),
        CU_POINTER_ATTRIBUTE_HOST_POINTER => match kind {
            MemKind::Host | MemKind::Managed => out(data as *mut *mut c_void, ptr as *mut c_void),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        },
        CU_POINTER_ATTRIBUTE_IS_MANAGED => out(data as *mut u32, (kind == MemKind::Managed) as u32),
        CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL => {
            let ordinal = driver()?
                .visible
                .iter()
                .position(|v| Arc::ptr_eq(v, dev))
                .map_or(-1, |i| i as i32);
            out(data as *mut i32, ordinal)
        }
        CU_POINTER_ATTRIBUTE_RANGE_START_ADDR => out(data as *mut u64, base),
        CU_POINTER_ATTRIBUTE_RANGE_SIZE => out(data as *mut usize, size as usize),
        CU_POINTER_ATTRIBUTE_MAPPED => out(data as *mut u32, 1),
        CU_POINTER_ATTRIBUTE_BUFFER_ID => out(data as *mut u64, base),
        CU_POINTER_ATTRIBUTE_SYNC_MEMOPS => out(data as *mut u32, 0),
        _ => Err(CUDA_ERROR_NOT_SUPPORTED),
    }
}

pub fn pointer_attributes(n: u32, attrs: *mut u32, data: *mut *mut c_void, ptr: u64) -> CuResult {
    if attrs.is_null() || data.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for i in 0..n as usize {
        // The caller passes arrays of n attributes and n data pointers; each is read checked.
        let (a, d) = (read(attrs.wrapping_add(i))?, read(data.wrapping_add(i))?);
        pointer_attribute(d, a, ptr)?;
    }
    Ok(())
}

// --- pools ---

pub fn pool_create(pool: *mut *mut c_void, props: *const c_void) -> CuResult {
    driver()?;
    let head = read(props as *const tf_cuda_abi::CUmemPoolProps)?;
    device(head.location.id)?;
    let h = POOLS.insert(PoolObj {
        device: head.location.id,
        release_threshold: Default::default(),
    });
    out(pool, h as *mut c_void)
}

pub fn pool_destroy(pool: *mut c_void) -> CuResult {
    let d = driver()?;
    if d.default_pools.contains(&(pool as usize)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    POOLS.remove(pool as usize).map(|_| ())
}

pub fn pool_attribute(pool: *mut c_void, attr: u32, value: *mut c_void, set: bool) -> CuResult {
    driver()?;
    let p = POOLS.get(pool as usize)?;
    let reading = |dev: i32| {
        device(dev).map(|d| {
            d.segment()
                .processes()
                .into_iter()
                .find(|r| r.pid == std::process::id())
                .map_or(0, |r| r.mem_used)
        })
    };
    use std::sync::atomic::Ordering::Relaxed;
    match attr {
        CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC
        | CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES => {
            if set {
                read(value as *const i32).map(|_| ())
            } else {
                out(value as *mut i32, 1)
            }
        }
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => {
            if set {
                p.release_threshold
                    .store(read(value as *const u64)?, Relaxed);
                Ok(())
            } else {
                out(value as *mut u64, p.release_threshold.load(Relaxed))
            }
        }
        CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT
        | CU_MEMPOOL_ATTR_USED_MEM_CURRENT
        | CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH
        | CU_MEMPOOL_ATTR_USED_MEM_HIGH => {
            if set {
                Ok(())
            } else {
                out(value as *mut u64, reading(p.device)?)
            }
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

// --- virtual memory management ---

static RESERVED: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());

pub fn mem_create(handle: *mut u64, size: usize, prop: *const c_void) -> CuResult {
    if handle.is_null() || size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let p = read(prop as *const tf_cuda_abi::CUmemAllocationProp)?;
    if p.type_ != CU_MEM_ALLOCATION_TYPE_PINNED || p.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let dev = device(p.location.id)?;
    let phys = hal(tf_fake_gpu::vmm::Physical::create(dev, size as u64))?;
    // The registry holds the physical allocation by value; unwrap the fresh Arc.
    let phys = Arc::try_unwrap(phys).map_err(|_| CUDA_ERROR_UNKNOWN)?;
    out(handle, PHYSICAL.insert(phys) as u64)
}

pub fn mem_release(handle: u64) -> CuResult {
    driver()?;
    PHYSICAL.remove(handle as usize).map(|_| ())
}

pub fn address_reserve(ptr: *mut u64, size: usize, align: usize) -> CuResult {
    driver()?;
    if ptr.is_null() || size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let a = hal(tf_fake_gpu::vmm::reserve(size as u64, align as u64))?;
    lock(&RESERVED).insert(a, size as u64);
    out(ptr, a)
}

pub fn address_free(ptr: u64, size: usize) -> CuResult {
    driver()?;
    let mut r = lock(&RESERVED);
    match r.get(&ptr) {
        Some(&s) if s == size as u64 => {
            r.remove(&ptr);
            // SAFETY: the range was reserved by address_reserve and is now forgotten by us.
            unsafe { tf_fake_gpu::vmm::release(ptr, size as u64) };
            Ok(())
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

fn inside_reservation(ptr: u64, size: u64) -> bool {
    lock(&RESERVED)
        .range(..=ptr)
        .next_back()
        .is_some_and(|(&b, &s)| ptr + size <= b + s)
}

pub fn mem_map(ptr: u64, size: usize, offset: usize, handle: u64) -> CuResult {
    driver()?;
    if !inside_reservation(ptr, size as u64) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let phys = PHYSICAL.get(handle as usize)?;
    let owner = current().map(|(_, c)| c.engine.id()).unwrap_or(0);
    // SAFETY: the range lies inside a reservation of ours; register_mapped (inside map) refuses
    // ranges that overlap a live mapping.
    hal(unsafe { tf_fake_gpu::vmm::map(ptr, size as u64, &phys, offset as u64, owner) })
}

pub fn mem_unmap(ptr: u64, size: usize) -> CuResult {
    let (dev, base, len, kind) = find(ptr)?;
    if base != ptr || kind != MemKind::Mapped || len != size as u64 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: `ptr` starts a range we mapped with vmm::map on `dev`.
    hal(unsafe { tf_fake_gpu::vmm::unmap(dev, ptr) })
}

pub fn granularity(g: *mut usize) -> CuResult {
    driver()?;
    out(g, 2 << 20)
}
