//! Models that turn the engine's shared busy-time history into what NVML reports.
//!
//! - GPU utilization: the percent of wall time a kernel ran over the last second (NVML's
//!   definition), read from the device's shared history with no waiting.
//! - Memory utilization: the simulated GPU does not model memory traffic; it reports a fixed
//!   share ([`MEMORY_UTIL_SHARE`]) of the GPU utilization, typical of compute-bound work.
//! - Temperature: rises linearly from the model's idle to its full-load temperature with the
//!   utilization over the last 10 s (a slower signal, like a heat sink).
//! - Power: the model's idle power plus (limit − idle) × utilization over the last second; energy
//!   integrates the same model over the machine's uptime.
//! - Per-process utilization: the device's utilization split by each process's share of the busy
//!   time reserved since the previous reading.

use std::collections::HashMap;
use std::sync::Mutex;

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

/// GPU temperature, °C.
pub fn temperature_c(h: &Handle) -> u32 {
    let u = utilization(h, 10 * SECOND_NS) / 100.0;
    let s = &h.spec;
    s.idle_temp_c + ((s.full_temp_c - s.idle_temp_c) as f64 * u).round() as u32
}

/// Board power draw, milliwatts.
pub fn power_mw(h: &Handle) -> u32 {
    let u = utilization(h, SECOND_NS) / 100.0;
    let s = &h.spec;
    ((s.idle_w as f64 + (s.tdp_w - s.idle_w) as f64 * u) * 1000.0).round() as u32
}

/// Energy used since boot (the model's idle power over the uptime plus the extra power of every
/// busy nanosecond), millijoules.
pub fn energy_mj(h: &Handle) -> u64 {
    let (now_ns, busy_ns) = h.dev.segment().busy_now();
    let s = &h.spec;
    let idle = s.idle_w as u128 * now_ns as u128;
    let extra = (s.tdp_w - s.idle_w) as u128 * busy_ns as u128;
    ((idle + extra) / 1_000_000) as u64
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

/// A (monotonic ns, cumulative busy ns) reading of one process.
type Reading = (u64, u64);

/// The two latest readings of one process at least [`MIN_READING_GAP_NS`] apart: (older, newer).
type Readings = (Option<Reading>, Reading);

/// The readings of each (device, pid), to split utilization between processes.
static READINGS: Mutex<Option<HashMap<(u32, u32), Readings>>> = Mutex::new(None);

/// Readings closer together than this are too noisy to split utilization by.
const MIN_READING_GAP_NS: u64 = 100_000_000;

/// Per-process utilization samples of the processes that ran kernels on the device and still
/// live, over the time since `last_seen_us` (NVML's `lastSeenTimeStamp`; 0 means the last
/// second). Samples are stamped with the current time, so none are returned when `last_seen_us`
/// is now or later.
pub fn process_samples(h: &Handle, last_seen_us: u64) -> Vec<nvmlProcessUtilizationSample_t> {
    let now_us = wall_us();
    if last_seen_us >= now_us {
        return Vec::new();
    }
    let window_ns = if last_seen_us == 0 {
        SECOND_NS
    } else {
        ((now_us - last_seen_us) * 1000).clamp(MIN_READING_GAP_NS, 10 * SECOND_NS)
    };
    let device_util = utilization(h, window_ns);
    let now_ns = sys::now_ns();
    let procs: Vec<_> = h
        .dev
        .segment()
        .processes()
        .into_iter()
        .filter(|p| p.busy_ns > 0)
        .collect();
    let mut guard = READINGS.lock().unwrap_or_else(|p| p.into_inner());
    let readings = guard.get_or_insert_with(HashMap::new);
    // Busy time of each process since its latest reading that is old enough to mean something
    // (its whole life when there is none).
    let deltas: Vec<u64> = procs
        .iter()
        .map(|p| {
            let key = (h.index, p.pid);
            let base = match readings.get_mut(&key) {
                None => {
                    readings.insert(key, (None, (now_ns, p.busy_ns)));
                    None
                }
                Some((older, newer)) => {
                    if now_ns.saturating_sub(newer.0) >= MIN_READING_GAP_NS {
                        let base = *newer;
                        *older = Some(base);
                        *newer = (now_ns, p.busy_ns);
                        Some(base)
                    } else {
                        *older
                    }
                }
            };
            match base {
                Some((_, then)) if then <= p.busy_ns => p.busy_ns - then,
                _ => p.busy_ns,
            }
        })
        .collect();
    readings.retain(|(dev, pid), _| *dev != h.index || procs.iter().any(|p| p.pid == *pid));
    let total: u64 = deltas.iter().sum();
    procs
        .iter()
        .zip(&deltas)
        .map(|(p, &d)| {
            let share = if total == 0 {
                0.0
            } else {
                d as f64 / total as f64
            };
            let sm = (device_util * share).round().clamp(0.0, 100.0);
            nvmlProcessUtilizationSample_t {
                pid: p.pid,
                timeStamp: now_us,
                smUtil: sm as u32,
                memUtil: (sm * MEMORY_UTIL_SHARE).round() as u32,
                encUtil: 0,
                decUtil: 0,
            }
        })
        .collect()
}
