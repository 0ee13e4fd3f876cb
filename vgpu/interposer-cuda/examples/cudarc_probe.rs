//! A cudarc program (the driver reached through dlopen + dlsym) that exercises a vGPU's limits;
//! prints one JSON object. Used by the limiter's tests.
//!
//! usage: cudarc_probe vram BLOCK_MIB
//!        cudarc_probe busy SECONDS WARMUP_SECONDS KERNEL_US
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::time::Instant;

use cudarc::driver::{CudaContext, CudaSlice, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let ctx = CudaContext::new(0)?;
    let stream = ctx.default_stream();
    match args.get(1).map(String::as_str) {
        Some("vram") => {
            let block: usize = args[2].parse::<usize>()? << 20;
            let (free0, total0) = ctx.mem_get_info()?;
            let mut held: Vec<CudaSlice<u8>> = Vec::new();
            let err: Option<DriverError> = loop {
                // SAFETY: the memory is never read before being written (it is never read).
                match unsafe { stream.alloc::<u8>(block) } {
                    Ok(s) => held.push(s),
                    Err(e) => break Some(e),
                }
                if held.len() > 100_000 {
                    break None;
                }
            };
            stream.synchronize()?;
            let allocated = held.len() * block;
            drop(held);
            stream.synchronize()?;
            let (free1, _) = ctx.mem_get_info()?;
            println!(
                "{{\"allocated\": {allocated}, \"mem_total\": {total0}, \"mem_free_before\": {free0}, \"mem_free_after\": {free1}, \"error\": {:?}}}",
                err.map(|e| format!("{e:?}")).unwrap_or_default()
            );
        }
        Some("busy") => {
            let seconds: f64 = args[2].parse()?;
            let warmup: f64 = args[3].parse()?;
            let ns: u64 = args[4].parse::<u64>()? * 1000;
            let module = ctx.load_module(Ptx::from_src(tf_hal::TEST_KERNELS_PTX))?;
            let busy = module.load_function("tf_busy")?;
            let start = Instant::now();
            let (mut counted, mut total) = (0u64, 0u64);
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut pending = std::collections::VecDeque::new();
            while start.elapsed().as_secs_f64() < seconds {
                if pending.len() >= 2 {
                    let e: cudarc::driver::CudaEvent = pending.pop_front().expect("two pending");
                    e.synchronize()?;
                    total += 1;
                    if start.elapsed().as_secs_f64() >= warmup {
                        counted += 1;
                    }
                }
                let mut launch = stream.launch_builder(&busy);
                launch.arg(&ns);
                // SAFETY: tf_busy(u64 ns) takes one u64.
                unsafe { launch.launch(cfg) }?;
                pending.push_back(stream.record_event(None)?);
            }
            stream.synchronize()?;
            let window = seconds - warmup;
            println!(
                "{{\"kernels\": {total}, \"counted\": {counted}, \"window_s\": {window:.3}, \"kernels_per_s\": {:.3}}}",
                counted as f64 / window
            );
        }
        _ => {
            return Err(
                "usage: cudarc_probe vram BLOCK_MIB | busy SECONDS WARMUP KERNEL_US".into(),
            );
        }
    }
    Ok(())
}
