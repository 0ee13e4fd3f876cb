//! A cudarc program (the Rust CUDA driver bindings, loading libcuda with dlopen): context,
//! copies both ways, a PTX module, launches, events. It checks every result and prints one
//! JSON line. Run it with LD_LIBRARY_PATH pointing at a real driver or at the simulated GPU's
//! libraries (`tensor-fusion fake-gpu install DIR`).
//!
//! usage: cudarc_vector_add [N]
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let ctx = CudaContext::new(0)?;
    let name = ctx.name()?;
    let stream = ctx.default_stream();
    let module = ctx.load_module(Ptx::from_src(tf_hal::TEST_KERNELS_PTX))?;
    let add = module.load_function("tf_vector_add_f32")?;
    let saxpy = module.load_function("tf_saxpy_f32")?;

    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 2.0 * i as f32 + 1.0).collect();
    let da = stream.clone_htod(&a)?;
    let db = stream.clone_htod(&b)?;
    let mut dc = stream.alloc_zeros::<f32>(n as usize)?;

    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = ctx.new_event(timing)?;
    let end = ctx.new_event(timing)?;
    start.record(&stream)?;
    let cfg = LaunchConfig::for_num_elems(n);
    let mut launch = stream.launch_builder(&add);
    launch.arg(&da).arg(&db).arg(&mut dc).arg(&n);
    // SAFETY: tf_vector_add_f32(const float*, const float*, float*, u32) with n elements each.
    unsafe { launch.launch(cfg) }?;
    // c = 0.5 * a + c
    let alpha = 0.5f32;
    let mut launch = stream.launch_builder(&saxpy);
    launch.arg(&n).arg(&alpha).arg(&da).arg(&mut dc);
    // SAFETY: tf_saxpy_f32(u32, float, const float*, float*) with n elements each.
    unsafe { launch.launch(cfg) }?;
    end.record(&stream)?;
    let c = stream.clone_dtoh(&dc)?;
    let ms = start.elapsed_ms(&end)?;

    for i in 0..n as usize {
        let want = 0.5f32.mul_add(a[i], a[i] + b[i]);
        if c[i] != want {
            return Err(format!("element {i}: {} != {want}", c[i]).into());
        }
    }
    let (free, total) = ctx.mem_get_info()?;
    println!(
        "{{\"device\": {name:?}, \"elements\": {n}, \"checked\": {n}, \"kernel_ms\": {ms:.3}, \"free\": {free}, \"total\": {total}}}"
    );
    Ok(())
}
