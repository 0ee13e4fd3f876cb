//! Modules and libraries, kernel launches, streams, events, graphs and occupancy.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Mutex};

use tf_cuda_abi::driver::*;
use tf_fake_gpu::{Event, Function, Module};
use tf_hal::LaunchConfig;

use crate::ffi::{cstr, out, read};
use crate::state::*;

// --- modules ---

/// Read a module image: PTX text (NUL-terminated) or a binary the simulator cannot run.
fn load_image(image: *const c_void) -> CuResult<Arc<Module>> {
    if image.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // Binary images start with a magic number; read 4 bytes before treating it as text.
    let head: [u8; 4] = read(image as *const [u8; 4])?;
    let magic = u32::from_le_bytes(head);
    if &head == b"\x7fELF" || magic == 0xBA55_ED50 || magic == 0x4662_43B1 {
        tracing::warn!(
            "binary module images (cubin/fatbin) cannot run on the simulated GPU; load PTX"
        );
        return Err(CUDA_ERROR_NO_BINARY_FOR_GPU);
    }
    let text = cstr(image as *const c_char).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
    hal(Module::from_ptx(&text))
}

fn new_module(module: Arc<Module>) -> usize {
    MODULES.insert(ModuleObj {
        module,
        functions: Mutex::new(HashMap::new()),
    })
}

pub fn module_load_data(m: *mut *mut c_void, image: *const c_void) -> CuResult {
    current()?;
    if m.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let module = load_image(image)?;
    out(m, new_module(module) as *mut c_void)
}

pub fn module_load_file(m: *mut *mut c_void, fname: *const c_char) -> CuResult {
    current()?;
    let path = cstr(fname)?;
    let bytes = std::fs::read(path).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
    let text = String::from_utf8(bytes).map_err(|_| CUDA_ERROR_NO_BINARY_FOR_GPU)?;
    let module = hal(Module::from_ptx(&text))?;
    out(m, new_module(module) as *mut c_void)
}

pub fn module_unload(h: *mut c_void) -> CuResult {
    driver()?;
    let m = MODULES.remove(h as usize)?;
    for (_, f) in lock(&m.functions).drain() {
        let _ = FUNCTIONS.remove(f);
    }
    Ok(())
}

fn function_of(module_handle: usize, m: &ModuleObj, name: &str) -> CuResult<usize> {
    let mut cache = lock(&m.functions);
    if let Some(&h) = cache.get(name) {
        return Ok(h);
    }
    let func = hal(m.module.function(name))?;
    let h = FUNCTIONS.insert(FuncObj {
        func,
        module: module_handle,
        name: CString::new(name).map_err(|_| CUDA_ERROR_INVALID_VALUE)?,
    });
    cache.insert(name.to_string(), h);
    Ok(h)
}

pub fn module_get_function(f: *mut *mut c_void, h: *mut c_void, name: *const c_char) -> CuResult {
    driver()?;
    let m = MODULES.get(h as usize)?;
    let name = cstr(name)?;
    out(f, function_of(h as usize, &m, &name)? as *mut c_void)
}

pub fn module_get_global(
    dptr: *mut u64,
    bytes: *mut usize,
    h: *mut c_void,
    name: *const c_char,
) -> CuResult {
    driver()?;
    MODULES.get(h as usize)?;
    let _ = (dptr, bytes, cstr(name)?);
    // The simulator does not model module-scope variables.
    Err(CUDA_ERROR_NOT_FOUND)
}

// --- libraries (context-independent modules) ---

pub fn library_load_data(l: *mut *mut c_void, code: *const c_void) -> CuResult {
    driver()?;
    if l.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let module = load_image(code)?;
    out(l, new_module(module) as *mut c_void)
}

pub fn library_load_file(l: *mut *mut c_void, fname: *const c_char) -> CuResult {
    driver()?;
    let text = std::fs::read_to_string(cstr(fname)?).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
    let module = hal(Module::from_ptx(&text))?;
    out(l, new_module(module) as *mut c_void)
}

pub fn library_get_module(m: *mut *mut c_void, l: *mut c_void) -> CuResult {
    driver()?;
    MODULES.get(l as usize)?;
    out(m, l)
}

pub fn function_module(m: *mut *mut c_void, f: *mut c_void) -> CuResult {
    driver()?;
    out(m, FUNCTIONS.get(f as usize)?.module as *mut c_void)
}

pub fn function_name(name: *mut *const c_char, f: *mut c_void) -> CuResult {
    driver()?;
    let f = FUNCTIONS.get(f as usize)?;
    // The CString lives as long as the function handle (the registry keeps the Arc).
    out(name, f.name.as_ptr())
}

pub fn func_attribute(pi: *mut i32, attrib: u32, f: *mut c_void) -> CuResult {
    driver()?;
    let f = FUNCTIONS.get(f as usize)?;
    let v = match attrib {
        CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK => 1024,
        CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES => 0,
        CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES => 0,
        CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES => 0,
        CU_FUNC_ATTRIBUTE_NUM_REGS => 32,
        CU_FUNC_ATTRIBUTE_PTX_VERSION => 70,
        CU_FUNC_ATTRIBUTE_BINARY_VERSION => 90,
        CU_FUNC_ATTRIBUTE_CACHE_MODE_CA => 0,
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => 49152,
        CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => -1,
        a if a < CU_FUNC_ATTRIBUTE_MAX => 0,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    let _ = &f.func;
    out(pi, v)
}

pub fn param_info(f: *mut c_void, index: usize, offset: *mut usize, size: *mut usize) -> CuResult {
    driver()?;
    let f = FUNCTIONS.get(f as usize)?;
    tf_cuda_abi::facade::param_info(&f.func.param_sizes, index, offset, size)
}

// --- launches ---

/// Read the arguments of a launch from `kernelParams` or `extra`, with sizes from the kernel's
/// PTX signature. Every pointer is checked as it is read.
fn read_params(
    func: &Function,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult<Vec<Vec<u8>>> {
    tf_cuda_abi::facade::read_kernel_args(&func.param_sizes, params, extra)
}

#[allow(clippy::too_many_arguments)]
pub fn launch(
    f: *mut c_void,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    driver()?;
    let fo = FUNCTIONS.get(f as usize)?;
    let config = LaunchConfig {
        grid,
        block,
        shared_mem_bytes: shared,
    };
    let args = read_params(&fo.func, params, extra)?;
    let (s, obj) = crate::state::stream(stream)?;
    if let Some(o) = &obj {
        let mut cap = lock(&o.capture);
        if let Some(nodes) = cap.as_mut() {
            hal(tf_fake_gpu::kernels::check_args(
                &fo.func.name,
                &fo.func.param_sizes,
                &args,
            ))?;
            nodes.push(GraphNode {
                func: fo.func.clone(),
                config,
                params: args,
            });
            return Ok(());
        }
    }
    hal(s.launch(&fo.func, &config, &args))
}

pub fn launch_ex(
    config: *const c_void,
    f: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    let c = read(config as *const tf_cuda_abi::CUlaunchConfig)?;
    launch(
        f,
        [c.gridDimX, c.gridDimY, c.gridDimZ],
        [c.blockDimX, c.blockDimY, c.blockDimZ],
        c.sharedMemBytes,
        c.hStream,
        params,
        extra,
    )
}

// --- streams ---

pub fn stream_create(ph: *mut *mut c_void, flags: u32, priority: i32) -> CuResult {
    let (ctx, c) = current()?;
    if ph.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let stream = hal(c.engine.create_stream())?;
    let h = STREAMS.insert(StreamObj {
        stream,
        ctx,
        flags,
        priority: priority.clamp(-5, 0),
        capture: Mutex::new(None),
    });
    out(ph, h as *mut c_void)
}

pub fn stream_destroy(h: *mut c_void) -> CuResult {
    driver()?;
    let s = STREAMS.remove(h as usize)?;
    s.stream.close();
    Ok(())
}

pub fn stream_synchronize(h: *mut c_void) -> CuResult {
    let (s, _) = crate::state::stream(h)?;
    hal(s.synchronize())
}

pub fn stream_query(h: *mut c_void) -> CuResult {
    let (s, _) = crate::state::stream(h)?;
    if s.query() {
        Ok(())
    } else {
        Err(CUDA_ERROR_NOT_READY)
    }
}

pub fn stream_wait_event(h: *mut c_void, e: *mut c_void) -> CuResult {
    let (s, _) = crate::state::stream(h)?;
    let e = EVENTS.get(e as usize)?;
    hal(s.wait_event(&e.event))
}

pub fn stream_flags(h: *mut c_void, flags: *mut u32) -> CuResult {
    let (_, o) = crate::state::stream(h)?;
    out(flags, o.map_or(0, |o| o.flags))
}

pub fn stream_priority(h: *mut c_void, p: *mut i32) -> CuResult {
    let (_, o) = crate::state::stream(h)?;
    out(p, o.map_or(0, |o| o.priority))
}

pub fn stream_ctx(h: *mut c_void, pctx: *mut *mut c_void) -> CuResult {
    let (_, o) = crate::state::stream(h)?;
    let ctx = match o {
        Some(o) => o.ctx,
        None => current()?.0,
    };
    out(pctx, ctx as *mut c_void)
}

pub fn stream_device(h: *mut c_void, dev: *mut i32) -> CuResult {
    let (_, o) = crate::state::stream(h)?;
    let ctx = match o {
        Some(o) => CONTEXTS.get(o.ctx)?,
        None => current()?.1,
    };
    out(dev, ctx.device)
}

pub fn stream_id(h: *mut c_void, id: *mut u64) -> CuResult {
    let (s, _) = crate::state::stream(h)?;
    out(id, s.id())
}

/// A host function to call in stream order: `void fn(void* userData)`.
pub fn host_func(h: *mut c_void, f: *mut c_void, user: *mut c_void) -> CuResult {
    if f.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (s, _) = crate::state::stream(h)?;
    // SAFETY: the caller passes a CUhostFn, `void (*)(void*)` (API contract).
    let func: extern "C" fn(*mut c_void) = unsafe { std::mem::transmute(f) };
    let user = user as usize;
    hal(s.host_fn(Box::new(move || func(user as *mut c_void))))
}

/// A stream callback: `void fn(CUstream, CUresult, void* userData)`.
pub fn add_callback(h: *mut c_void, f: *mut c_void, user: *mut c_void) -> CuResult {
    if f.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (s, _) = crate::state::stream(h)?;
    // SAFETY: the caller passes a CUstreamCallback (API contract).
    let func: extern "C" fn(*mut c_void, u32, *mut c_void) = unsafe { std::mem::transmute(f) };
    let (hs, user) = (h as usize, user as usize);
    hal(s.host_fn(Box::new(move || {
        func(hs as *mut c_void, CUDA_SUCCESS, user as *mut c_void)
    })))
}

// --- graphs (stream capture of kernel launches) ---

pub fn begin_capture(h: *mut c_void) -> CuResult {
    let (_, o) = crate::state::stream(h)?;
    let o = o.ok_or(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)?;
    let mut cap = lock(&o.capture);
    if cap.is_some() {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    }
    *cap = Some(Vec::new());
    Ok(())
}

pub fn end_capture(h: *mut c_void, graph: *mut *mut c_void) -> CuResult {
    let (_, o) = crate::state::stream(h)?;
    let o = o.ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    let nodes = lock(&o.capture).take().ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    out(graph, GRAPHS.insert(GraphObj { nodes }) as *mut c_void)
}

pub fn is_capturing(h: *mut c_void, status: *mut u32) -> CuResult {
    let (_, o) = crate::state::stream(h)?;
    let active = o.is_some_and(|o| lock(&o.capture).is_some());
    out(
        status,
        if active {
            CU_STREAM_CAPTURE_STATUS_ACTIVE
        } else {
            CU_STREAM_CAPTURE_STATUS_NONE
        },
    )
}

pub fn graph_instantiate(exec: *mut *mut c_void, graph: *mut c_void) -> CuResult {
    driver()?;
    let g = GRAPHS.get(graph as usize)?;
    out(
        exec,
        GRAPH_EXECS.insert(GraphExecObj {
            nodes: g.nodes.clone(),
        }) as *mut c_void,
    )
}

pub fn graph_launch(exec: *mut c_void, h: *mut c_void) -> CuResult {
    driver()?;
    let g = GRAPH_EXECS.get(exec as usize)?;
    let (s, _) = crate::state::stream(h)?;
    for n in &g.nodes {
        hal(s.launch(&n.func, &n.config, &n.params))?;
    }
    Ok(())
}

// --- events ---

pub fn event_create(ph: *mut *mut c_void, flags: u32) -> CuResult {
    driver()?;
    if ph.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    out(
        ph,
        EVENTS.insert(EventObj {
            event: Event::new(),
            flags,
        }) as *mut c_void,
    )
}

pub fn event_destroy(e: *mut c_void) -> CuResult {
    driver()?;
    EVENTS.remove(e as usize).map(|_| ())
}

pub fn event_record(e: *mut c_void, h: *mut c_void) -> CuResult {
    let ev = EVENTS.get(e as usize)?;
    let (s, _) = crate::state::stream(h)?;
    hal(s.record(&ev.event))
}

pub fn event_query(e: *mut c_void) -> CuResult {
    driver()?;
    if EVENTS.get(e as usize)?.event.query() {
        Ok(())
    } else {
        Err(CUDA_ERROR_NOT_READY)
    }
}

pub fn event_synchronize(e: *mut c_void) -> CuResult {
    driver()?;
    EVENTS.get(e as usize)?.event.synchronize();
    Ok(())
}

pub fn event_elapsed(ms: *mut f32, a: *mut c_void, b: *mut c_void) -> CuResult {
    driver()?;
    let (a, b) = (EVENTS.get(a as usize)?, EVENTS.get(b as usize)?);
    if (a.flags | b.flags) & CU_EVENT_DISABLE_TIMING != 0 {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    let d = hal(Event::elapsed(&a.event, &b.event))?;
    out(ms, (d.as_secs_f64() * 1e3) as f32)
}

// --- occupancy ---

pub fn max_active_blocks(n: *mut i32, f: *mut c_void, block: i32) -> CuResult {
    driver()?;
    FUNCTIONS.get(f as usize)?;
    if block <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    out(n, (2048 / block).clamp(0, 32))
}

pub fn max_potential_block_size(
    min_grid: *mut i32,
    block: *mut i32,
    f: *mut c_void,
    limit: i32,
) -> CuResult {
    driver()?;
    FUNCTIONS.get(f as usize)?;
    let b = if limit > 0 { limit.min(1024) } else { 1024 };
    let sms = current()?.1.engine.device().profile().sms as i32;
    out(block, b)?;
    out(min_grid, sms * (2048 / b).clamp(1, 32))
}
