//! `tensor-fusion demo`: a tour of tensor-fusion on the simulated GPU.
//!
//! 1. enumerate the simulated devices through the HAL;
//! 2. run a real PTX vector add on device 0 and check every element;
//! 3. start two processes that contend for device 0 and show that the time-slice arbiter splits
//!    it between them, and that device utilization means what NVML means;
//! 4. run a CUDA program on a fraction of device 0 (`tensor-fusion run --vram 1GiB
//!    --compute-percent 30`): it sees 1 GiB and gets 30 % of the device;
//! 5. the whole stack (`demo_node`): a node daemon, three vGPUs with different requests, limits
//!    and QoS, programs through the local limiter and through a remote worker, lending when one
//!    goes idle, and a table of target and achieved shares and VRAM.
//!
//! Everything runs on a private simulated machine (its own segments, removed at the end), so
//! the figures hold whatever else uses the simulated GPU meanwhile — another demo included.
//!
//! `--backend NAME` runs steps 1 and 2 on another backend instead (e.g. `vulkan`: the same
//! vector add as SPIR-V on the first Vulkan device, lavapipe on a machine without a GPU).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use serde::Serialize;
use tf_fake_gpu::load::{LoadReport, LoadSpec};
use tf_hal::{Backend, KernelArgs, LaunchConfig, StreamHandle};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Print one JSON object with the demo's figures instead of prose.
    #[arg(long)]
    pub json: bool,
    /// Seconds of the contention step's measurement window.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Run only the device list and the vector add, on this backend's device 0 (e.g. vulkan);
    /// by default the whole tour runs on a private simulated GPU.
    #[arg(long)]
    pub backend: Option<String>,
}

#[derive(Debug, Serialize)]
struct VectorAdd {
    elements: u32,
    checked: u32,
    device_time_us: f64,
}

#[derive(Debug, Serialize)]
struct Contention {
    window_s: f64,
    process_share_pct: Vec<f64>,
    arbitrated_busy_pct: f64,
    device_utilization_pct: f64,
}

#[derive(Debug, Serialize)]
struct Fraction {
    vram_quota: u64,
    vram_total_seen: u64,
    vram_allocated: u64,
    compute_percent: f64,
    kernels_per_s_alone: f64,
    kernels_per_s_limited: f64,
    achieved_percent: f64,
}

#[derive(Debug, Serialize)]
struct DemoReport {
    devices: Vec<tf_hal::DeviceInfo>,
    vector_add: VectorAdd,
    contention: Contention,
    fraction: Fraction,
    node: crate::demo_node::NodeDemo,
}

macro_rules! say {
    ($json:expr, $($t:tt)*) => { if !$json { println!($($t)*); } };
}

pub fn run(args: DemoArgs) -> Result<()> {
    ensure!(
        args.seconds >= 0.2 && args.seconds <= 600.0,
        "--seconds must be between 0.2 and 600"
    );
    let json = args.json;
    if let Some(name) = args.backend.as_deref()
        && crate::config::select_backend(Some(name))? != tf_hal::BackendKind::Fake
    {
        return other_backend(name, json);
    }
    let template =
        tf_fake_gpu::FakeGpuConfig::from_env().context("reading the simulated GPU's profile")?;
    let machine = Machine {
        gpu: tf_fake_gpu::machine::PrivateMachine::new(&template)?,
    };
    let backend: Arc<dyn Backend> = Arc::new(
        tf_fake_gpu::FakeBackend::with_config(machine.gpu.config().clone())
            .context("opening the simulated GPU")?,
    );
    say!(
        json,
        "tensor-fusion demo, on a private simulated machine of its own (removed when the demo ends)\n"
    );

    let devices = backend.devices()?;
    say!(json, "1. devices seen through the HAL:");
    for d in &devices {
        say!(
            json,
            "   [{}] {} {}, {}, {} SMs, {:.1} FP16 TFLOPS",
            d.index,
            d.model,
            d.uuid,
            tf_hal::units::format_bytes(d.total_memory_bytes),
            d.compute_units,
            d.fp16_tflops
        );
    }

    let vector_add = vector_add(&*backend)?;
    say!(
        json,
        "\n2. vector add of {} floats through real PTX on device 0: every element checked, {:.1} µs of device time",
        vector_add.elements,
        vector_add.device_time_us
    );

    say!(
        json,
        "\n3. two processes running back-to-back 1 ms kernels on device 0 for {:.1} s ...",
        args.seconds
    );
    let contention = contention(&*backend, &machine, args.seconds)?;
    for (i, s) in contention.process_share_pct.iter().enumerate() {
        say!(json, "   process {}: {:.1}% of the device", i + 1, s);
    }
    say!(
        json,
        "   device utilization (NVML's meaning) {:.1}%, arbitrated busy time {:.1}%",
        contention.device_utilization_pct,
        contention.arbitrated_busy_pct
    );
    say!(
        json,
        "\n4. a fraction of device 0: a CUDA program under `tensor-fusion run --vram 1GiB --compute-percent 30` ..."
    );
    let fraction = fraction(&machine, args.seconds)?;
    say!(
        json,
        "   it sees {} of memory and gets {} before CUDA_ERROR_OUT_OF_MEMORY",
        tf_hal::units::format_bytes(fraction.vram_total_seen),
        tf_hal::units::format_bytes(fraction.vram_allocated)
    );
    say!(
        json,
        "   its kernels run at {:.0}/s alone and {:.0}/s on 30 % of the device: {:.1} %",
        fraction.kernels_per_s_alone,
        fraction.kernels_per_s_limited,
        fraction.achieved_percent
    );
    say!(
        json,
        "\n5. the whole stack: a node daemon, three vGPUs, and lending when one goes idle ..."
    );
    let node = crate::demo_node::run(&machine, args.seconds.min(3.0), &|line: &str| {
        say!(json, "{line}")
    })?;
    say!(json, "{}", crate::demo_node::table(&node));
    if json {
        println!(
            "{}",
            serde_json::to_string(&DemoReport {
                devices,
                vector_add,
                contention,
                fraction,
                node,
            })?
        );
    } else {
        println!("\nnext: `tensor-fusion devices`, `tensor-fusion --help`");
    }
    Ok(())
}

/// Steps 1 and 2 on another backend.
fn other_backend(name: &str, json: bool) -> Result<()> {
    let backend = crate::backends::open(Some(name))?;
    let devices = backend.devices()?;
    say!(json, "1. {} devices seen through the HAL:", backend.kind());
    for d in &devices {
        say!(
            json,
            "   [{}] {} {} ({}), {}, driver {}",
            d.index,
            d.model,
            d.uuid,
            d.vendor,
            tf_hal::units::format_bytes(d.total_memory_bytes),
            d.driver_version
        );
    }
    let vector_add = vector_add(&*backend)?;
    say!(
        json,
        "\n2. vector add of {} floats on device 0 ({}): every element checked, {:.1} µs of device time",
        vector_add.elements,
        match backend.kind() {
            tf_hal::BackendKind::Vulkan => "SPIR-V",
            _ => "PTX",
        },
        vector_add.device_time_us
    );
    if json {
        println!(
            "{}",
            serde_json::json!({ "devices": devices, "vector_add": vector_add })
        );
    }
    Ok(())
}

/// The demo's private simulated machine.
pub(crate) struct Machine {
    gpu: tf_fake_gpu::machine::PrivateMachine,
}

impl Machine {
    /// A folder of the machine's own (removed with it).
    pub(crate) fn folder(&self, name: &str) -> Result<std::path::PathBuf> {
        Ok(self.gpu.folder(name)?)
    }

    /// A `tensor-fusion` subcommand on the private machine.
    pub(crate) fn tensor_fusion(&self) -> Result<Command> {
        let exe = std::env::current_exe().context("locating the tensor-fusion binary")?;
        let mut c = Command::new(exe);
        let (var, profile) = self.gpu.env();
        c.env(var, profile)
            .env("TF_BACKEND", "fake")
            .env("TF_VGPU_DIR", self.gpu.folder("regions")?);
        Ok(c)
    }
}

/// Run `tensor-fusion [run LIMITS --] tensor-fusion cuda-probe ARGS` and read its JSON line.
fn probe(machine: &Machine, limits: &[&str], args: &[&str]) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("locating the tensor-fusion binary")?;
    let out = machine
        .tensor_fusion()?
        .arg("run")
        .args(limits)
        .arg("--")
        .arg(&exe)
        .arg("cuda-probe")
        .args(args)
        .output()
        .context("running a probe on a vGPU")?;
    ensure!(
        out.status.success(),
        "the probe failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("reading the probe's output")
}

fn fraction(machine: &Machine, seconds: f64) -> Result<Fraction> {
    let quota = 1u64 << 30;
    let v = probe(machine, &["--vram", "1GiB"], &["vram", "64"])?;
    let window = format!("{}", seconds + 1.0);
    let alone = probe(machine, &[], &["busy", &window, "1"])?["kernels_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let limited = probe(
        machine,
        &["--compute-percent", "30"],
        &["busy", &window, "1"],
    )?["kernels_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    Ok(Fraction {
        vram_quota: quota,
        vram_total_seen: v["total"].as_u64().unwrap_or(0),
        vram_allocated: v["allocated"].as_u64().unwrap_or(0),
        compute_percent: 30.0,
        kernels_per_s_alone: alone,
        kernels_per_s_limited: limited,
        achieved_percent: if alone > 0.0 {
            limited / alone * 100.0
        } else {
            0.0
        },
    })
}

fn vector_add(backend: &dyn Backend) -> Result<VectorAdd> {
    let dev = backend.device(0)?;
    let ctx = dev.create_context()?;
    let module = ctx.load_module(tf_hal::test_kernels(backend.kind()))?;
    let add = ctx.function(module, "tf_vector_add_f32")?;
    let n: u32 = 1 << 20;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| (n - i) as f32 * 0.25).collect();
    let to_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let bytes = n as u64 * 4;
    let (da, db, dc) = (
        ctx.mem_alloc(bytes)?,
        ctx.mem_alloc(bytes)?,
        ctx.mem_alloc(bytes)?,
    );
    ctx.copy_htod(da, &to_bytes(&a))?;
    ctx.copy_htod(db, &to_bytes(&b))?;
    let (start, end) = (ctx.event_create()?, ctx.event_create()?);
    ctx.event_record(start, StreamHandle::DEFAULT)?;
    ctx.launch(
        add,
        &LaunchConfig::for_elements(n, 256),
        StreamHandle::DEFAULT,
        &KernelArgs::new().ptr(da).ptr(db).ptr(dc).u32(n),
    )?;
    ctx.event_record(end, StreamHandle::DEFAULT)?;
    ctx.synchronize()?;
    let mut out = vec![0u8; bytes as usize];
    ctx.copy_dtoh(&mut out, dc)?;
    for (i, c) in out.chunks_exact(4).enumerate() {
        let got = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        ensure!(
            got == a[i] + b[i],
            "vector add element {i}: got {got}, expected {}",
            a[i] + b[i]
        );
    }
    let t = ctx.event_elapsed(start, end)?;
    for p in [da, db, dc] {
        ctx.mem_free(p)?;
    }
    Ok(VectorAdd {
        elements: n,
        checked: n,
        device_time_us: t.as_secs_f64() * 1e6,
    })
}

fn contention(backend: &dyn Backend, machine: &Machine, seconds: f64) -> Result<Contention> {
    let dev = backend.device(0)?;
    let now = tf_fake_gpu::sys::now_ns();
    let window_ns = (seconds * 1e9) as u64;
    let window_start = now + 500_000_000;
    let window_end = window_start + window_ns;
    let spec = LoadSpec {
        device: 0,
        kernel_ns: 1_000_000,
        until_ns: window_end + 100_000_000,
        window_start_ns: window_start,
        window_end_ns: window_end,
        alloc_bytes: 0,
        depth: 2,
    };
    let spec_json = serde_json::to_string(&spec)?;
    let started = Instant::now();
    let children = (0..2)
        .map(|_| {
            machine
                .tensor_fusion()?
                .args(["fake-gpu", "load", &spec_json])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a load process")
        })
        .collect::<Result<Vec<_>>>()?;
    tf_fake_gpu::sys::sleep_until(window_end);
    let util = dev.utilization(std::time::Duration::from_nanos(window_ns))?;
    let mut shares = Vec::new();
    for c in children {
        let out = c.wait_with_output()?;
        ensure!(
            out.status.success(),
            "a load process failed ({})",
            out.status
        );
        let r: LoadReport = serde_json::from_slice(&out.stdout).context("reading a load report")?;
        shares.push(r.share_pct);
    }
    tracing::debug!(elapsed = ?started.elapsed(), "contention step done");
    Ok(Contention {
        window_s: seconds,
        arbitrated_busy_pct: shares.iter().sum(),
        process_share_pct: shares,
        device_utilization_pct: util,
    })
}
