//! A minimal CUDA driver client used by the demo and the limiter bench: it reaches
//! `libcuda.so.1` the way cudarc and the CUDA runtime do (dlopen + dlsym), so the interposer
//! sees it like any application.

use std::ffi::c_void;

use anyhow::{Context as _, Result, ensure};
use tf_cuda_abi::driver_fn;

/// The driver entry points the probes use, each typed by the header's signature.
macro_rules! entry_points {
    ($($field:ident: $name:ident),* $(,)?) => {
        pub struct Cuda {
            _lib: libloading::Library,
            $(pub $field: driver_fn::$name,)*
        }

        impl Cuda {
            pub fn open() -> Result<Cuda> {
                // SAFETY: loading the system's CUDA driver library, whose initialisers are safe
                // to run.
                let lib = unsafe { libloading::Library::new("libcuda.so.1") }
                    .context("loading libcuda.so.1")?;
                $(
                    // SAFETY: the symbol is the driver function of this name, whose type is the
                    // header's (`driver_fn`).
                    let $field = *unsafe {
                        lib.get::<driver_fn::$name>(concat!(stringify!($name), "\0").as_bytes())
                    }
                    .context(concat!("symbol ", stringify!($name)))?;
                )*
                Ok(Cuda { _lib: lib, $($field,)* })
            }
        }
    };
}

entry_points! {
    init: cuInit,
    device_get: cuDeviceGet,
    retain: cuDevicePrimaryCtxRetain,
    set_current: cuCtxSetCurrent,
    total_mem: cuDeviceTotalMem_v2,
    mem_get_info: cuMemGetInfo_v2,
    mem_alloc: cuMemAlloc_v2,
    mem_free: cuMemFree_v2,
    load: cuModuleLoadData,
    get_function: cuModuleGetFunction,
    launch: cuLaunchKernel,
    sync: cuCtxSynchronize,
}

impl Cuda {
    pub fn check(&self, rc: u32, what: &str) -> Result<()> {
        ensure!(rc == 0, "{what} failed: CUresult {rc}");
        Ok(())
    }

    /// Initialise, make device 0's primary context current, load the test kernels: returns the
    /// device and the `tf_busy` function.
    pub fn setup(&self) -> Result<(i32, *mut c_void)> {
        let ptx = std::ffi::CString::new(tf_hal::TEST_KERNELS_PTX)?;
        let (mut dev, mut ctx, mut module, mut func) = (
            0i32,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        // SAFETY: driver calls with valid output pointers and NUL-terminated strings.
        unsafe {
            self.check((self.init)(0), "cuInit")?;
            self.check((self.device_get)(&mut dev, 0), "cuDeviceGet")?;
            self.check((self.retain)(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
            self.check((self.set_current)(ctx), "cuCtxSetCurrent")?;
            self.check(
                (self.load)(&mut module, ptx.as_ptr() as *const c_void),
                "cuModuleLoadData",
            )?;
            self.check(
                (self.get_function)(&mut func, module, c"tf_busy".as_ptr()),
                "cuModuleGetFunction",
            )?;
        }
        Ok((dev, func))
    }

    /// Launch `tf_busy(ns)` on the default stream.
    pub fn launch_busy(&self, busy: *mut c_void, ns: u64) -> u32 {
        let mut ns = ns;
        let mut params = [&mut ns as *mut u64 as *mut c_void];
        // SAFETY: tf_busy(u64 ns) with one parameter, on the default stream; the parameter
        // array lives across the call (the driver copies it).
        unsafe {
            (self.launch)(
                busy,
                1,
                1,
                1,
                1,
                1,
                1,
                0,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    }

    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: plain synchronization of the current context.
        self.check(unsafe { (self.sync)() }, "cuCtxSynchronize")
    }
}

/// `tensor-fusion cuda-probe vram BLOCK_MIB`: allocate blocks until the driver refuses.
pub fn vram(block_mib: u64) -> Result<serde_json::Value> {
    let cuda = Cuda::open()?;
    cuda.setup()?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: valid outputs.
    let rc = unsafe { (cuda.mem_get_info)(&mut free, &mut total) };
    cuda.check(rc, "cuMemGetInfo")?;
    let block = (block_mib << 20) as usize;
    let mut held = Vec::new();
    loop {
        let mut p = 0u64;
        // SAFETY: a valid output.
        if unsafe { (cuda.mem_alloc)(&mut p, block) } != 0 || held.len() > 1_000_000 {
            break;
        }
        held.push(p);
    }
    let allocated = held.len() * block;
    for p in held {
        // SAFETY: freeing what we allocated.
        cuda.check(unsafe { (cuda.mem_free)(p) }, "cuMemFree")?;
    }
    Ok(serde_json::json!({"total": total, "free": free, "allocated": allocated}))
}

/// `tensor-fusion cuda-probe busy SECONDS WARMUP`: back-to-back 1 ms kernels (in batches of 8,
/// so the device rarely waits for the host); kernels per second over [warmup, seconds]. With
/// `hold_mib`, that much device memory is held while it runs.
pub fn busy(seconds: f64, warmup: f64, hold_mib: u64) -> Result<serde_json::Value> {
    let cuda = Cuda::open()?;
    let (_, f) = cuda.setup()?;
    let mut held = 0u64;
    if hold_mib > 0 {
        // SAFETY: a valid output.
        let rc = unsafe { (cuda.mem_alloc)(&mut held, (hold_mib << 20) as usize) };
        cuda.check(rc, "cuMemAlloc")?;
    }
    let start = std::time::Instant::now();
    let (mut counted, mut launched) = (0u64, 0u64);
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..8 {
            cuda.check(cuda.launch_busy(f, 1_000_000), "cuLaunchKernel")?;
        }
        cuda.synchronize()?;
        launched += 8;
        if start.elapsed().as_secs_f64() >= warmup {
            counted += 8;
        }
    }
    if held != 0 {
        // SAFETY: freeing what we allocated.
        cuda.check(unsafe { (cuda.mem_free)(held) }, "cuMemFree")?;
    }
    Ok(
        serde_json::json!({"kernels": launched, "kernels_per_s": counted as f64 / (seconds - warmup)}),
    )
}
