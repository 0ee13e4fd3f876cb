//! A load generator for the simulated GPU: back-to-back `tf_busy` kernels from this process,
//! counted by their device completion times. Used by the demo, by multi-process tests, and by
//! the `tf-fake-gpu-load` tool.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tf_hal::{KernelArgs, LaunchConfig, Result};

use crate::exec::{Event, FakeContext, Module};
use crate::{FakeGpu, MemKind, sys};

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    pub device: u32,
    /// Duration of each `tf_busy` kernel.
    pub kernel_ns: u64,
    /// Stop launching at this CLOCK_MONOTONIC time.
    pub until_ns: u64,
    /// Count kernels that complete inside `[window_start_ns, window_end_ns)`.
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    /// Device memory to allocate (and hold) before starting.
    pub alloc_bytes: u64,
    /// Kernels kept in flight (2 keeps the device fed with no host gap).
    pub depth: usize,
}

/// What happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub pid: u32,
    pub device: u32,
    pub kernels_total: u64,
    pub kernels_in_window: u64,
    /// Kernel time that completed in the window.
    pub busy_ns_in_window: u64,
    pub window_ns: u64,
    /// Share of the window this process's kernels held the device, in percent.
    pub share_pct: f64,
}

/// Run the load described by `spec_json` (a [`LoadSpec`] as JSON) on the machine of
/// `TF_FAKE_GPU_CONFIG`, and return the report as one line of JSON: the command-line entry of
/// the `tf-fake-gpu-load` tool and `tensor-fusion fake-gpu load`.
pub fn run_json(spec_json: &str) -> Result<String> {
    let spec: LoadSpec = serde_json::from_str(spec_json).map_err(|e| {
        tf_hal::Error::new(
            tf_hal::ErrorKind::InvalidValue,
            format!("bad load specification: {e}"),
        )
    })?;
    let report = run(&FakeGpu::global()?, &spec)?;
    serde_json::to_string(&report)
        .map_err(|e| tf_hal::Error::new(tf_hal::ErrorKind::Other, e.to_string()))
}

pub fn run(gpu: &Arc<FakeGpu>, spec: &LoadSpec) -> Result<LoadReport> {
    let dev = gpu.device(spec.device)?.clone();
    let ctx = FakeContext::new(dev)?;
    let _held = if spec.alloc_bytes > 0 {
        Some(ctx.alloc(spec.alloc_bytes, MemKind::Device)?)
    } else {
        None
    };
    let module = Module::from_ptx(tf_hal::TEST_KERNELS_PTX)?;
    let busy = module.function("tf_busy")?;
    let args = KernelArgs::new().u64(spec.kernel_ns);
    let stream = ctx.default_stream().clone();
    let mut inflight: std::collections::VecDeque<Arc<Event>> = Default::default();
    let (mut total, mut in_window) = (0u64, 0u64);
    let depth = spec.depth.max(1);
    let mut count = |e: &Event| {
        let t = e.timestamp_ns();
        total += 1;
        if t >= spec.window_start_ns && t < spec.window_end_ns {
            in_window += 1;
        }
    };
    while sys::now_ns() < spec.until_ns {
        while inflight.len() < depth {
            stream.launch(&busy, &LaunchConfig::single(), args.params())?;
            let e = Event::new();
            stream.record(&e)?;
            inflight.push_back(e);
        }
        if let Some(e) = inflight.pop_front() {
            e.synchronize();
            count(&e);
        }
    }
    for e in inflight {
        e.synchronize();
        count(&e);
    }
    stream.synchronize()?;
    let window_ns = spec.window_end_ns.saturating_sub(spec.window_start_ns);
    let busy = in_window * spec.kernel_ns;
    Ok(LoadReport {
        pid: sys::pid(),
        device: spec.device,
        kernels_total: total,
        kernels_in_window: in_window,
        busy_ns_in_window: busy,
        window_ns,
        share_pct: if window_ns == 0 {
            0.0
        } else {
            busy as f64 * 100.0 / window_ns as f64
        },
    })
}
