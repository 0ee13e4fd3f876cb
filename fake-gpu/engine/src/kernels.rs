//! Built-in kernels (entries the engine recognises by name and computes on the CPU) and the
//! duration model for every kernel.
//!
//! Duration model, per launch on a device profile:
//! - `tf_busy(ns)`: exactly `ns`.
//! - the other built-ins: `launch_overhead_ns + bytes moved / memory bandwidth`.
//! - any other entry: `launch_overhead_ns + waves × wave_ns`, where a wave is one block on each
//!   SM times the blocks that fit on an SM (`min(32, 2048 / threads per block)`).

use tf_hal::{Error, ErrorKind, LaunchConfig, Result};

use crate::profile::DeviceProfile;

/// What a kernel does when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    VectorAddF32,
    SaxpyF32,
    FillU32,
    Busy,
    /// Not recognised: only its modeled duration.
    Modeled,
}

impl Builtin {
    /// Recognise an entry by name, checking that its PTX signature matches the built-in.
    pub fn for_entry(name: &str, param_sizes: &[usize]) -> Builtin {
        let (b, sig): (Builtin, &[usize]) = match name {
            "tf_vector_add_f32" => (Builtin::VectorAddF32, &[8, 8, 8, 4]),
            "tf_saxpy_f32" => (Builtin::SaxpyF32, &[4, 4, 8, 8]),
            "tf_fill_u32" => (Builtin::FillU32, &[8, 4, 4]),
            "tf_busy" => (Builtin::Busy, &[8]),
            _ => return Builtin::Modeled,
        };
        if param_sizes == sig {
            b
        } else {
            Builtin::Modeled
        }
    }
}

/// A decoded launch of a built-in, with device addresses still to be resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Job {
    VectorAdd { a: u64, b: u64, c: u64, n: u64 },
    Saxpy { n: u64, alpha: f32, x: u64, y: u64 },
    Fill { p: u64, v: u32, n: u64 },
    Busy { ns: u64 },
    Modeled,
}

fn u32_at(p: &[u8]) -> u32 {
    u32::from_le_bytes(
        p[..4]
            .try_into()
            .expect("4-byte parameter checked at launch"),
    )
}

fn u64_at(p: &[u8]) -> u64 {
    u64::from_le_bytes(
        p[..8]
            .try_into()
            .expect("8-byte parameter checked at launch"),
    )
}

/// Check the packed arguments against the entry's signature.
pub fn check_args(entry: &str, param_sizes: &[usize], params: &[Vec<u8>]) -> Result<()> {
    if params.len() != param_sizes.len() {
        return Err(Error::new(
            ErrorKind::InvalidValue,
            format!(
                "kernel {entry} takes {} arguments, the launch passed {}",
                param_sizes.len(),
                params.len()
            ),
        ));
    }
    for (i, (want, got)) in param_sizes.iter().zip(params).enumerate() {
        if *want != got.len() {
            return Err(Error::new(
                ErrorKind::InvalidValue,
                format!(
                    "kernel {entry}: argument {i} is {want} bytes, the launch passed {}",
                    got.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Decode a launch of `builtin` (arguments already checked). Element counts are clipped to the
/// threads the grid launches, as a real one-element-per-thread kernel would be.
pub fn decode(builtin: Builtin, params: &[Vec<u8>], cfg: &LaunchConfig) -> Job {
    let threads = cfg.total_threads();
    match builtin {
        Builtin::VectorAddF32 => Job::VectorAdd {
            a: u64_at(&params[0]),
            b: u64_at(&params[1]),
            c: u64_at(&params[2]),
            n: (u32_at(&params[3]) as u64).min(threads),
        },
        Builtin::SaxpyF32 => Job::Saxpy {
            n: (u32_at(&params[0]) as u64).min(threads),
            alpha: f32::from_bits(u32_at(&params[1])),
            x: u64_at(&params[2]),
            y: u64_at(&params[3]),
        },
        Builtin::FillU32 => Job::Fill {
            p: u64_at(&params[0]),
            v: u32_at(&params[1]),
            n: (u32_at(&params[2]) as u64).min(threads),
        },
        Builtin::Busy => Job::Busy {
            ns: u64_at(&params[0]),
        },
        Builtin::Modeled => Job::Modeled,
    }
}

/// The longest kernel the simulated GPU runs: a launch whose modeled duration is longer is
/// refused, so that no process — dead or alive — can hold a device for everyone else for
/// longer than this (a real GPU's compute preemption and watchdogs bound kernels too).
pub const MAX_KERNEL_NS: u64 = 10_000_000_000;

/// Modeled device time of a launch; refused (no wrap-around, no hour-long kernels) above
/// [`MAX_KERNEL_NS`].
pub fn duration_ns(job: &Job, cfg: &LaunchConfig, profile: &DeviceProfile) -> Result<u64> {
    let d = match job {
        Job::Busy { ns } => Some(*ns),
        Job::VectorAdd { n, .. } | Job::Saxpy { n, .. } => {
            transfer_ns(n.saturating_mul(12), profile)
        }
        Job::Fill { n, .. } => transfer_ns(n.saturating_mul(4), profile),
        Job::Modeled => {
            let threads_per_block = cfg.block.iter().map(|&d| d as u64).product::<u64>().max(1);
            let blocks_per_sm = (2048 / threads_per_block).clamp(1, 32);
            let per_wave = (profile.sms as u64 * blocks_per_sm).max(1);
            let waves = cfg.total_blocks().div_ceil(per_wave).max(1);
            waves
                .checked_mul(profile.wave_ns)
                .and_then(|w| w.checked_add(profile.launch_overhead_ns))
        }
    };
    match d {
        Some(d) if d <= MAX_KERNEL_NS => Ok(d),
        _ => Err(Error::new(
            ErrorKind::InvalidValue,
            format!(
                "the kernel would run for {} ns, longer than the simulated GPU's limit of {} s per kernel",
                d.map_or("more than 2^64".to_string(), |d| d.to_string()),
                MAX_KERNEL_NS / 1_000_000_000
            ),
        )),
    }
}

/// Time to move `bytes` through device memory, plus the launch overhead (GB/s is bytes per ns).
fn transfer_ns(bytes: u64, profile: &DeviceProfile) -> Option<u64> {
    let t = bytes as f64 / profile.memory_bandwidth_gbps;
    (t.is_finite() && t < u64::MAX as f64)
        .then(|| (t as u64).saturating_add(profile.launch_overhead_ns))
}

/// A resolved view of device memory for a job: `(address, bytes needed)` pairs to validate.
pub fn regions(job: &Job) -> Vec<(u64, u64)> {
    match *job {
        Job::VectorAdd { a, b, c, n } if n > 0 => vec![(a, n * 4), (b, n * 4), (c, n * 4)],
        Job::Saxpy { n, x, y, .. } if n > 0 => vec![(x, n * 4), (y, n * 4)],
        Job::Fill { p, n, .. } if n > 0 => vec![(p, n * 4)],
        _ => Vec::new(),
    }
}

/// Run a built-in on the CPU.
///
/// # Safety
/// Every region returned by [`regions`] for this job must be valid, writable memory for the
/// duration of the call (the engine resolves them against live allocations and holds those
/// mappings while this runs). Regions may overlap, as on a GPU; accesses are unaligned-safe.
pub unsafe fn execute(job: &Job) {
    match *job {
        Job::VectorAdd { a, b, c, n } => {
            let (a, b, c) = (a as *const f32, b as *const f32, c as *mut f32);
            for i in 0..n as usize {
                // SAFETY: i < n and each of a, b, c spans n f32s (caller's contract).
                unsafe {
                    let v = a.add(i).read_unaligned() + b.add(i).read_unaligned();
                    c.add(i).write_unaligned(v);
                }
            }
        }
        Job::Saxpy { n, alpha, x, y } => {
            let (x, y) = (x as *const f32, y as *mut f32);
            for i in 0..n as usize {
                // SAFETY: i < n and x, y span n f32s (caller's contract).
                unsafe {
                    let v = alpha.mul_add(x.add(i).read_unaligned(), y.add(i).read_unaligned());
                    y.add(i).write_unaligned(v);
                }
            }
        }
        Job::Fill { p, v, n } => {
            let p = p as *mut u32;
            for i in 0..n as usize {
                // SAFETY: i < n and p spans n u32s (caller's contract).
                unsafe { p.add(i).write_unaligned(v) };
            }
        }
        Job::Busy { .. } | Job::Modeled => {}
    }
}
