//! Models that turn the engine's shared busy-time history into what NVML reports.
//!
//! - GPU utilization: the percent of wall time a kernel ran over the last second (NVML's
//!   definition), read from the device's shared history with no waiting.
//! - Memory utilization: the simulated GPU does not model memory traffic; it reports a fixed
//!   share ([`MEMORY_UTIL_SHARE`]) of the GPU utilization, typical of compute-bound work.
//! - Temperature, power and energy: the engine's sensor model (`tf_fake_gpu::model`), which the
//!   HAL backend reports too.
//! - Per-process utilization: the share of the caller's window (NVML's `lastSeenTimeStamp` to
//!   now) during which each process's kernels held the device, from the device's reservation
//!   history — the same for every caller, however often it asks.

use tf_fake_gpu::sys;

use crate::state::Handle;
use tf_cuda_abi::nvml_types::nvmlProcessUtilizationSample_t;

/// One second, in ns: NVML's sample period for utilization and power.
pub const SECOND_NS: u64 = 1_000_000_000;
/// Memory-controller utilization as a share of GPU utilization.
pub const MEMORY_UTIL_SHARE: f64 = 0.35;

/// Percent of the last `window_ns` during which a kernel ran on the device.
pub fn utilization(h: &Handle, window_ns: u64) -> f64 {
    h.dev.segment().utilization(window_ns).clamp(0.0, 100.0)
}

/// `nvmlUtilization_t` values: (gpu %, memory %).
pub fn utilization_rates(h: &Handle) -> (u32, u32) {
    let gpu = utilization(h, SECOND_NS);
    (gpu.round() as u32, (gpu * MEMORY_UTIL_SHARE).round() as u32)
}

/// GPU temperature, °C (the engine's sensor model).
pub fn temperature_c(h: &Handle) -> u32 {
    h.dev.temperature_c()
}

/// Board power draw, milliwatts (the engine's sensor model).
pub fn power_mw(h: &Handle) -> u32 {
    h.dev.power_mw()
}

/// Energy used since boot, millijoules (the engine's sensor model).
pub fn energy_mj(h: &Handle) -> u64 {
    h.dev.energy_mj()
}

/// Whether a kernel ran on the device during the last second.
pub fn busy(h: &Handle) -> bool {
    utilization(h, SECOND_NS) > 0.0
}

/// Microseconds since the epoch (NVML's sample timestamps are CPU time in µs).
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The longest window a per-process query looks back over.
const MAX_WINDOW_NS: u64 = 10 * SECOND_NS;

/// Per-process utilization samples of the live processes whose kernels ran on the device since
/// `last_seen_us` (NVML's `lastSeenTimeStamp`, CPU time in µs; 0 means the last second), each
/// the share of that window its kernels held the device. Samples are stamped with the current
/// time, so none are returned when `last_seen_us` is now or later.
pub fn process_samples(h: &Handle, last_seen_us: u64) -> Vec<nvmlProcessUtilizationSample_t> {
    let now_us = wall_us();
    if last_seen_us >= now_us {
        return Vec::new();
    }
    let window_ns = if last_seen_us == 0 {
        SECOND_NS
    } else {
        (now_us - last_seen_us)
            .saturating_mul(1000)
            .clamp(1, MAX_WINDOW_NS)
    };
    let seg = h.dev.segment();
    let live: Vec<u32> = seg.processes().iter().map(|p| p.pid).collect();
    let now_ns = sys::now_ns();
    seg.busy_by_process(now_ns.saturating_sub(window_ns), now_ns)
        .into_iter()
        .filter(|(pid, _)| live.contains(pid))
        .map(|(pid, busy)| {
            let sm = (busy as f64 * 100.0 / window_ns as f64)
                .round()
                .clamp(0.0, 100.0);
            nvmlProcessUtilizationSample_t {
                pid,
                timeStamp: now_us,
                smUtil: sm as u32,
                memUtil: (sm * MEMORY_UTIL_SHARE).round() as u32,
                encUtil: 0,
                decUtil: 0,
            }
        })
        .collect()
}
