//! `tensor-fusion bench limiter`: what the CUDA interposer adds to each driver call.
//!
//! Runs the same probe process twice — once plain, once with the interposer preloaded on an
//! unlimited vGPU — alternating several rounds, and prints one JSON object per measured call:
//! the median time per call with and without the interposer and the difference. The probe
//! reaches the driver the way cudarc and the CUDA runtime do (dlopen + dlsym), so the numbers
//! include the interposer's dispatch.

use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchWhat {
    /// Overhead of the interposer per call (median ns) on a cheap query and a kernel launch.
    Limiter {
        /// Backend whose driver library to measure (default: $TF_BACKEND, config, or fake).
        #[arg(long)]
        backend: Option<String>,
        /// Calls timed per measurement.
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
        /// Alternating rounds (plain, interposed, plain, ...).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Print JSON lines (the default output is also JSON lines; this flag is accepted for
        /// symmetry with other commands).
        #[arg(long)]
        json: bool,
    },
    /// A remote vGPU over one transport: synchronous round trip, pipelined launches, 64 MiB
    /// copies each way, and the same run's raw floors of the transport.
    Remote(crate::remote::BenchRemoteArgs),
}

/// What one probe run measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeResult {
    pub query_median_ns: f64,
    pub launch_median_ns: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (backend, iterations, rounds) = match args.what {
        BenchWhat::Limiter {
            backend,
            iterations,
            rounds,
            json: _,
        } => (backend, iterations, rounds),
        BenchWhat::Remote(a) => return crate::remote::bench(a),
    };
    ensure!(iterations >= 100, "--iterations must be at least 100");
    ensure!(rounds >= 1, "--rounds must be at least 1");
    let kind = crate::config::select_backend(backend.as_deref())?;
    let be = crate::backends::open_kind(kind)?;
    let info = be.device(0)?.info().clone();
    let dir = tempfile::tempdir().context("a folder for the bench's vGPU region")?;
    let unlimited = tf_vgpu_limiter::Limits {
        vram_quota: None,
        compute_share: None,
    };
    let vgpu = tf_vgpu_limiter::Vgpu::create(dir.path(), &info, &unlimited)?;
    let env = vgpu.environment(&crate::run::injection(kind)?, |_| None);
    let exe = std::env::current_exe()?;
    let probe = |interposed: bool| -> Result<ProbeResult> {
        let mut c = Command::new(&exe);
        c.args(["bench-probe", &iterations.to_string()])
            .env_remove("LD_PRELOAD");
        // The plain run gets the same device and libraries, without the interposer.
        for (k, v) in &env {
            let vgpu_only = k == "LD_PRELOAD" || k == tf_vgpu_limiter::client::REGION_ENV;
            if interposed || !vgpu_only {
                c.env(k, v);
            }
        }
        let out = c.output().context("running the probe")?;
        if !out.status.success() {
            bail!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let (mut plain, mut inter) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(probe(false)?);
        inter.push(probe(true)?);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (call, pick) in [
        (
            "cuDeviceTotalMem_v2",
            (|r: &ProbeResult| r.query_median_ns) as fn(&ProbeResult) -> f64,
        ),
        ("cuLaunchKernel", |r: &ProbeResult| r.launch_median_ns),
    ] {
        let base = med(&mut plain.iter().map(pick).collect());
        let with = med(&mut inter.iter().map(pick).collect());
        println!(
            "{}",
            serde_json::json!({
                "bench": "limiter",
                "backend": kind.as_str(),
                "device": info.model,
                "call": call,
                "iterations": iterations,
                "rounds": rounds,
                "baseline_median_ns": (base * 10.0).round() / 10.0,
                "interposed_median_ns": (with * 10.0).round() / 10.0,
                "overhead_median_ns": ((with - base) * 10.0).round() / 10.0,
            })
        );
    }
    Ok(())
}

fn now_ns() -> u64 {
    tf_vgpu_limiter::sys::now_ns()
}

/// The probe: time `n` calls of a cheap query and `n` kernel launches; prints one JSON object.
pub fn probe(n: u32) -> Result<()> {
    let cuda = crate::cudaprobe::Cuda::open()?;
    let (dev, busy) = cuda.setup()?;
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2] as f64
    };
    let mut q = Vec::with_capacity(n as usize);
    let mut bytes = 0usize;
    for _ in 0..n {
        let t0 = now_ns();
        // SAFETY: a valid output pointer and device.
        let rc = unsafe { (cuda.total_mem)(&mut bytes, dev) };
        let t1 = now_ns();
        cuda.check(rc, "cuDeviceTotalMem_v2")?;
        q.push(t1 - t0);
    }
    let mut l = Vec::with_capacity(n as usize);
    for i in 0..n {
        if i % 256 == 0 {
            cuda.synchronize()?;
        }
        let t0 = now_ns();
        let rc = cuda.launch_busy(busy, 0);
        let t1 = now_ns();
        cuda.check(rc, "cuLaunchKernel")?;
        l.push(t1 - t0);
    }
    cuda.synchronize()?;
    println!(
        "{}",
        serde_json::to_string(&ProbeResult {
            query_median_ns: median(q),
            launch_median_ns: median(l),
        })?
    );
    Ok(())
}
