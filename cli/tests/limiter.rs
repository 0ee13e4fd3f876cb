//! The vGPU limiter end to end: `tensor-fusion run` with real programs on the simulated GPU —
//! a C program linked with -lcuda, the same program reaching the driver only through
//! cuGetProcAddress, and a cudarc program (dlopen) — under VRAM quotas and compute shares.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tf_fake_gpu::testing::{isolated_config, to_toml};
use tf_test_support::{show, test_kernels_ptx as ptx};

const BIN: &str = env!("CARGO_BIN_EXE_tensor-fusion");

/// Tests that measure rates share the machine with each other; the CPU-heavy memory churn
/// runs alone, so that it cannot starve the programs whose speed is being measured.
static CPU: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn timing() -> std::sync::RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(|p| p.into_inner())
}

/// The probe programs, built once per test binary: (linked with -lcuda, via cuGetProcAddress).
fn probes() -> &'static (PathBuf, PathBuf) {
    static P: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tf_test_support::scratch_dir("limiter-probes");
        let lib = tf_test_support::cdylib("libcuda.so").expect("the simulated libcuda is built");
        std::os::unix::fs::symlink(&lib, dir.join("libcuda.so")).unwrap();
        let inc = tf_test_support::cuda_include_dir().expect("NVIDIA headers");
        let src =
            tf_test_support::workspace_root().join("vgpu/interposer-cuda/tests/c/vgpu_probe.c");
        let build = |name: &str, extra: &[&str]| {
            let exe = dir.join(name);
            let out = Command::new("cc")
                .args(["-O1", "-Wall", "-Werror", "-o"])
                .arg(&exe)
                .arg(&src)
                .arg("-I")
                .arg(&inc)
                .arg("-I")
                .arg(tf_test_support::workspace_root().join("hal/kernels"))
                .arg("-L")
                .arg(&dir)
                .args(extra)
                .args(["-ldl"])
                .output()
                .unwrap();
            assert!(out.status.success(), "building {name}: {}", show(&out));
            exe
        };
        (
            build("probe_link", &["-lcuda"]),
            build("probe_procaddr", &["-DVIA_PROCADDR"]),
        )
    })
}

fn cudarc_probe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/cudarc_probe");
    assert!(
        p.exists(),
        "{} is not built (cargo test --workspace builds it)",
        p.display()
    );
    p
}

/// An isolated simulated machine and a private directory for vGPU regions.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new(tag: &str) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gpu.toml"),
            to_toml(&isolated_config(tag, 1)),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.toml"), "backend = \"fake\"\n").unwrap();
        std::fs::create_dir(dir.path().join("regions")).unwrap();
        Machine { dir }
    }

    fn regions(&self) -> PathBuf {
        self.dir.path().join("regions")
    }

    fn tf(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("TF_FAKE_GPU_CONFIG", self.dir.path().join("gpu.toml"))
            .env("TF_CONFIG", self.dir.path().join("config.toml"))
            .env("TF_VGPU_DIR", self.regions())
            .env_remove("TF_BACKEND")
            .env_remove("LD_PRELOAD");
        c
    }

    /// `tensor-fusion run LIMITS -- PROGRAM ARGS`, returning the program's JSON line.
    fn run_json(&self, limits: &[&str], program: &Path, args: &[&str]) -> serde_json::Value {
        let out = self
            .tf()
            .arg("run")
            .args(limits)
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
    }

    fn busy_rate(&self, limits: &[&str], program: &Path) -> f64 {
        let p = ptx();
        let args: Vec<&str> = if program.ends_with("cudarc_probe") {
            vec!["busy", "4", "2", "1000"]
        } else {
            vec!["busy", p.to_str().unwrap(), "4", "2", "1000"]
        };
        self.run_json(limits, program, &args)["kernels_per_s"]
            .as_f64()
            .unwrap()
    }
}

fn assert_vram_quota(program: &Path, tag: &str) {
    let m = Machine::new(tag);
    let v = m.run_json(&["--vram", "1GiB"], program, &["vram", "64"]);
    let gib = 1u64 << 30;
    assert_eq!(v["allocated"], gib, "{v}");
    assert_eq!(
        v["mem_total"], gib,
        "the quota is the total the program sees: {v}"
    );
    assert_eq!(v["mem_free_before"], gib, "{v}");
    assert_eq!(v["mem_free_after"], gib, "{v}");
    if !v["device_total"].is_null() {
        assert_eq!(v["device_total"], gib, "{v}");
    }
    assert!(
        std::fs::read_dir(m.regions()).unwrap().next().is_none(),
        "region left behind"
    );
}

#[test]
fn vram_quota_holds_for_a_program_linked_with_libcuda() {
    assert_vram_quota(&probes().0, "vlink");
}

#[test]
fn vram_quota_holds_through_cu_get_proc_address() {
    assert_vram_quota(&probes().1, "vproc");
}

#[test]
fn vram_quota_holds_for_cudarc() {
    assert_vram_quota(&cudarc_probe(), "vcudarc");
}

#[test]
fn vmm_allocations_count_until_their_last_mapping_goes() {
    // Create, map, release at once: the mapping keeps the memory, so it stays charged.
    for (program, tag) in [(&probes().0, "vmmlink"), (&probes().1, "vmmproc")] {
        let m = Machine::new(tag);
        let v = m.run_json(&["--vram", "1GiB"], program, &["vmm", "64"]);
        assert_eq!(v["mapped"], 1u64 << 30, "{v}");
        assert_eq!(
            v["last_error"], 2,
            "CUDA_ERROR_OUT_OF_MEMORY past the quota: {v}"
        );
        assert_eq!(v["mem_free_full"], 0, "{v}");
        assert_eq!(
            v["mem_free_after"],
            1u64 << 30,
            "unmapping gave it all back: {v}"
        );
    }
}

/// The share a limited run achieves against the program's rate alone, measured before and after
/// it (their mean). On a machine shared with other work the rates drift with its load, so a
/// measurement more than `tolerance` points off is taken again, once, before it counts: the
/// assertion is on a measurement, never retried itself.
fn measured_share(
    percent: f64,
    tolerance: f64,
    alone: impl Fn() -> f64,
    limited: impl Fn() -> f64,
) -> (f64, String) {
    let mut last = (0.0, String::new());
    for attempt in 1..=2 {
        let before = alone();
        let with = limited();
        let after = alone();
        let base = (before + after) / 2.0;
        let achieved = with / base * 100.0;
        let what = format!(
            "attempt {attempt}: alone {before:.1}/s and {after:.1}/s, at {percent}%: {with:.1}/s = {achieved:.2}%"
        );
        eprintln!("{what}");
        last = (achieved, what);
        if (achieved - percent).abs() <= tolerance {
            break;
        }
    }
    last
}

fn assert_share(program: &Path, percent: f64, tag: &str) {
    let _cpu = timing();
    let m = Machine::new(tag);
    let (achieved, what) = measured_share(
        percent,
        3.0,
        || m.busy_rate(&[], program),
        || m.busy_rate(&["--compute-percent", &percent.to_string()], program),
    );
    assert!(
        (achieved - percent).abs() <= 3.0,
        "{tag}: asked for {percent}%, got {achieved:.2}% ({what})"
    );
}

#[test]
fn compute_share_10_percent() {
    assert_share(&probes().0, 10.0, "c10");
}

#[test]
fn compute_share_25_percent() {
    assert_share(&probes().0, 25.0, "c25");
}

#[test]
fn compute_share_50_percent() {
    assert_share(&probes().0, 50.0, "c50");
}

#[test]
fn compute_share_75_percent() {
    assert_share(&probes().0, 75.0, "c75");
}

#[test]
fn compute_share_holds_through_cu_get_proc_address() {
    assert_share(&probes().1, 40.0, "cproc");
}

#[test]
fn compute_share_holds_for_cudarc() {
    assert_share(&cudarc_probe(), 40.0, "ccudarc");
}

#[test]
fn compute_share_holds_with_launches_timed_by_the_interposer() {
    // The estimator used on real drivers: device time learned from events around sampled
    // launches rather than from the backend's per-process busy time.
    let _cpu = timing();
    let m = Machine::new("csamples");
    let probe = &probes().0;
    let p = ptx();
    let limited = || {
        let out = m
            .tf()
            .env("TF_VGPU_ESTIMATOR", "samples")
            .args(["run", "--compute-percent", "30", "--"])
            .arg(probe)
            .args(["busy", p.to_str().unwrap(), "4", "2", "1000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["kernels_per_s"].as_f64().unwrap()
    };
    let (achieved, what) = measured_share(30.0, 3.0, || m.busy_rate(&[], probe), limited);
    assert!(
        (achieved - 30.0).abs() <= 3.0,
        "samples estimator at 30%: {achieved:.2}% ({what})"
    );
}

#[test]
fn graph_launches_are_paced_too() {
    let _cpu = timing();
    let m = Machine::new("cgraph");
    let p = ptx();
    let args = ["graph", p.to_str().unwrap(), "4", "2", "1000"];
    let alone = m.run_json(&[], &probes().0, &args)["kernels_per_s"]
        .as_f64()
        .unwrap();
    let limited = m.run_json(&["--compute-percent", "30"], &probes().0, &args)["kernels_per_s"]
        .as_f64()
        .unwrap();
    let achieved = limited / alone * 100.0;
    assert!(
        (achieved - 30.0).abs() <= 3.0,
        "graphs at 30%: {achieved:.2}%"
    );
}

#[test]
fn two_programs_at_30_and_60_percent_share_one_device() {
    let _cpu = timing();
    let m = Machine::new("c3060");
    let probe = &probes().0;
    let alone = m.busy_rate(&[], probe);
    let p = ptx();
    let spawn = |percent: &str| {
        m.tf()
            .args(["run", "--compute-percent", percent, "--"])
            .arg(probe)
            .args(["busy", p.to_str().unwrap(), "4", "2", "1000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("30"), spawn("60"));
    let rate = |c: std::process::Child| {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["kernels_per_s"].as_f64().unwrap() / alone * 100.0
    };
    let (ra, rb) = (rate(a), rate(b));
    eprintln!("together: {ra:.2}% and {rb:.2}%");
    assert!((ra - 30.0).abs() <= 3.0, "30% program got {ra:.2}%");
    assert!((rb - 60.0).abs() <= 3.0, "60% program got {rb:.2}%");
}

#[test]
fn four_processes_churning_memory_stay_under_the_quota_and_end_at_zero() {
    let _alone = CPU.write().unwrap_or_else(|p| p.into_inner());
    let m = Machine::new("churn");
    let report = m.dir.path().join("report.json");
    let probe = probes().0.to_str().unwrap().to_string();
    let script = format!(
        "for s in 1 2 3 4; do {probe} churn 100000 $s > {dir}/churn$s.json || exit 1 & done; wait",
        dir = m.dir.path().display()
    );
    let out = m
        .tf()
        .args(["run", "--vram", "512MiB", "--report"])
        .arg(&report)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["vram_used"], 0, "usage must end at exactly 0: {r}");
    assert!(
        r["vram_peak"].as_u64().unwrap() <= 512 << 20,
        "over the quota together: {r}"
    );
    assert!(
        r["oom_events"].as_u64().unwrap() > 0,
        "the quota was never reached: {r}"
    );
    for s in 1..=4 {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(m.dir.path().join(format!("churn{s}.json"))).unwrap(),
        )
        .unwrap();
        let (ok, oom) = (v["allocs"].as_u64().unwrap(), v["ooms"].as_u64().unwrap());
        assert_eq!(ok + oom, 100_000, "process {s}: {v}");
        assert!(ok > 50_000, "process {s} mostly failed: {v}");
    }
}

#[test]
fn a_killed_process_returns_its_memory_to_the_quota_within_a_second() {
    let m = Machine::new("kill");
    let mut run = m
        .tf()
        .args(["run", "--vram", "1GiB", "--"])
        .arg(&probes().0)
        .args(["hold", "768", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (region, pid) = loop {
        assert!(
            Instant::now() < deadline,
            "the program never held its memory"
        );
        if let Some(e) = std::fs::read_dir(m.regions()).unwrap().flatten().next()
            && let Ok(r) =
                tf_vgpu_limiter::Region::open(&e.path().join(tf_vgpu_limiter::vgpu::REGION_FILE))
            && r.vram_used() == 768 << 20
        {
            let pid = r.processes()[0].0;
            break (r, pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: SIGKILL to the probe process, a descendant of ours that is still running.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let killed = Instant::now();
    while region.vram_used() != 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "memory not returned within 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = run.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "run exits like its command (killed by SIGKILL)"
    );
    assert!(
        std::fs::read_dir(m.regions()).unwrap().next().is_none(),
        "region left behind"
    );
}

#[test]
fn run_exits_with_the_commands_code_and_cleans_up() {
    let m = Machine::new("exit");
    let o = m
        .tf()
        .args(["run", "--vram", "1GiB", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", show(&o));
    let o = m
        .tf()
        .args(["run", "--", "/no/such/program"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/program"));
    // The command and its children see the vGPU: a grandchild finds the region in its
    // environment and the quota through the driver (the region is the one way limits arrive).
    let o = m
        .tf()
        .args([
            "run",
            "--vram",
            "2GiB",
            "--compute-percent",
            "50",
            "--",
            "sh",
            "-c",
            &format!("sh -c 'echo region=$TF_VGPU_REGION; {BIN} cuda-probe vram 512'"),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("region=/"), "{}", show(&o));
    let probe: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {}", show(&o)));
    assert_eq!(probe["total"], 2147483648u64, "{}", show(&o));
    assert_eq!(probe["allocated"], 2147483648u64, "{}", show(&o));
    assert!(
        std::fs::read_dir(m.regions()).unwrap().next().is_none(),
        "region left behind"
    );
}

#[test]
fn bad_limits_are_clear_errors() {
    let m = Machine::new("bad");
    for (args, needle) in [
        (vec!["--compute-percent", "0"], "--compute-percent"),
        (vec!["--compute-percent", "150"], "--compute-percent"),
        (vec!["--vram", "lots"], "invalid size"),
        (vec!["--vram", "1000TiB"], "more than device"),
        (vec!["--tflops", "5000"], "--tflops"),
        (vec!["--device", "9"], "device 9"),
    ] {
        let o = m
            .tf()
            .arg("run")
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn nvml_memory_queries_report_the_quota() {
    // pynvml (NVIDIA's NVML bindings) through dlopen + dlsym, like monitoring tools.
    let site = tf_test_support::python_packages(&["nvidia-ml-py==12.575.51"])
        .expect("pip install nvidia-ml-py");
    let m = Machine::new("nvmlq");
    let script = "import json, pynvml as n\n\
        n.nvmlInit()\n\
        h = n.nvmlDeviceGetHandleByIndex(0)\n\
        m1 = n.nvmlDeviceGetMemoryInfo(h)\n\
        m2 = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)\n\
        print(json.dumps({'v1': [m1.total, m1.free, m1.used], 'v2': [m2.total, m2.free, m2.used]}))\n";
    let out = m
        .tf()
        .args([
            "run",
            "--vram",
            "3GiB",
            "--",
            &tf_test_support::python(),
            "-c",
            script,
        ])
        .env("PYTHONPATH", &site)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gib3 = 3u64 << 30;
    assert_eq!(v["v1"][0], gib3, "{v}");
    assert_eq!(v["v1"][1], gib3, "nothing used yet: {v}");
    assert_eq!(v["v2"][0], gib3, "{v}");
    assert_eq!(v["v2"][2], 0, "{v}");
}

// ----- hostile tenants (issue: limits that hold against a hostile tenant) -----

/// The tenant program (`vgpu/interposer-cuda/tests/c/tenant.c`), linked with -lcuda.
fn tenant() -> &'static PathBuf {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tf_test_support::scratch_dir("limiter-tenant");
        let lib = tf_test_support::cdylib("libcuda.so").expect("the simulated libcuda is built");
        std::os::unix::fs::symlink(&lib, dir.join("libcuda.so")).unwrap();
        let inc = tf_test_support::cuda_include_dir().expect("NVIDIA headers");
        let src = tf_test_support::workspace_root().join("vgpu/interposer-cuda/tests/c/tenant.c");
        let exe = dir.join("tenant");
        let out = Command::new("cc")
            .args(["-O1", "-Wall", "-Werror", "-o"])
            .arg(&exe)
            .arg(&src)
            .arg("-I")
            .arg(&inc)
            .arg("-L")
            .arg(&dir)
            .args(["-lcuda", "-ldl"])
            .output()
            .unwrap();
        assert!(out.status.success(), "building tenant: {}", show(&out));
        exe
    })
}

/// The region file of the one vGPU running on `m` (waits for it to appear).
fn the_region(m: &Machine) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no vGPU appeared");
        if let Some(e) = std::fs::read_dir(m.regions()).unwrap().flatten().next() {
            let r = e.path().join(tf_vgpu_limiter::vgpu::REGION_FILE);
            if r.exists() {
                return r;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// 10^4 rounds of double frees, frees of unknown pointers, and contexts destroyed or reset with
/// memory in them: the region's usage ends equal to what the driver says is allocated.
#[test]
fn misuse_never_makes_the_bookkeeping_drift() {
    let m = Machine::new("misuse");
    let mut run = m
        .tf()
        .args(["run", "--vram", "1GiB", "--"])
        .arg(tenant())
        .args(["misuse", "10000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(run.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let region = tf_vgpu_limiter::Region::open(&the_region(&m)).unwrap();
    let config =
        tf_fake_gpu::FakeGpuConfig::load(&m.dir.path().join("gpu.toml")).expect("the machine");
    let gpu = tf_fake_gpu::FakeGpu::new(config).unwrap();
    let driver: u64 = gpu.devices()[0]
        .segment()
        .processes()
        .iter()
        .map(|p| p.mem_used)
        .sum();
    let _ = run.kill();
    let _ = run.wait();
    assert_eq!(v["holding"], 12u64 << 20, "{v}");
    assert_eq!(
        driver,
        12 << 20,
        "the driver holds the 12 MiB the tenant kept: {v}"
    );
    assert_eq!(
        region.vram_used(),
        driver,
        "the region agrees with the driver: {v}"
    );
    assert!(v["refused"].as_u64().unwrap() >= 30_000, "{v}");
}

/// Driver functions found through glibc's versioned `dlvsym`, and a `dlsym` found through it,
/// are the interposer's: the quota holds.
#[test]
fn dlvsym_is_no_way_around_the_quota() {
    let m = Machine::new("dlvsym");
    let v = m.run_json(&["--vram", "256MiB"], tenant(), &["dlvsym", "64"]);
    let total = v["via_dlvsym"].as_u64().unwrap() + v["via_dlsym_from_dlvsym"].as_u64().unwrap();
    assert_eq!(total, 256 << 20, "{v}");
}

/// The limits page cannot be changed by the tenant: not written, not mapped writable, not made
/// writable after mapping it read-only.
#[test]
fn the_limits_page_cannot_be_written_by_the_tenant() {
    let m = Machine::new("limits");
    let out = m
        .tf()
        .args([
            "run",
            "--vram",
            "256MiB",
            "--compute-percent",
            "30",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("{} limits \"$TF_VGPU_LIMITS\"", tenant().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["mmap_write_errno", "write_errno", "mprotect_errno"] {
        assert_ne!(v[key], 0, "{key}: {v}");
    }
}

/// A tenant that writes garbage and extreme values over every byte of its own region, again and
/// again while it runs, keeps its quota and its share (the share once the controller, pacing on
/// the driver's count alone, has settled: measured over the last 4 of 8 seconds).
#[test]
fn garbage_over_its_own_region_leaves_the_quota_and_share_in_force() {
    let _cpu = timing();
    let m = Machine::new("scribble");
    let t = tenant().display().to_string();
    let p = ptx();
    let out = m
        .tf()
        .args(["run", "--vram", "256MiB", "--", "sh", "-c"])
        .arg(format!(
            "{t} scribble \"$TF_VGPU_REGION\" 0.5 >/dev/null && {} vram 64",
            probes().0.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allocated"], 256u64 << 20, "{v}");
    let alone = m.busy_rate(&[], &probes().0);
    let out = m
        .tf()
        .args(["run", "--compute-percent", "30", "--", "sh", "-c"])
        .arg(format!(
            "{t} scribble \"$TF_VGPU_REGION\" 8 >/dev/null & {} busy {} 8 4 1000",
            probes().0.display(),
            p.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pct = v["kernels_per_s"].as_f64().unwrap() / alone * 100.0;
    eprintln!("scribbling tenant at 30 %: {pct:.2} % of {alone:.1}/s");
    assert!((pct - 30.0).abs() <= 3.0, "{pct:.2} % ({v})");
}

/// A tenant that writes garbage into another run's region: the other tenant's limits and
/// progress stay as they were.
#[test]
fn garbage_in_another_runs_region_leaves_that_tenant_untouched() {
    let _cpu = timing();
    let victim_machine = Machine::new("victim");
    let alone = victim_machine.busy_rate(&[], &probes().0);
    let p = ptx();
    let victim = victim_machine
        .tf()
        .args(["run", "--vram", "256MiB", "--compute-percent", "30", "--"])
        .arg(&probes().0)
        .args(["busy", p.to_str().unwrap(), "8", "4", "1000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let region = the_region(&victim_machine);
    let attacker = Machine::new("attacker");
    let a = attacker
        .tf()
        .args(["run", "--"])
        .arg(tenant())
        .arg("scribble")
        .arg(&region)
        .arg("8")
        .output()
        .unwrap();
    assert!(a.status.success(), "{}", show(&a));
    let attack: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let out = victim.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pct = v["kernels_per_s"].as_f64().unwrap() / alone * 100.0;
    eprintln!("victim at 30 % under attack ({attack}): {pct:.2} %");
    assert!((pct - 30.0).abs() <= 3.0, "{pct:.2} % ({v})");
}

/// The controller stopped (SIGSTOP) or killed (SIGKILL, with --keep-running) by the tenant: the
/// command keeps its share, paced from the last pacing its sealed page holds.
#[test]
fn a_stopped_or_killed_controller_leaves_the_share_in_force() {
    let _cpu = timing();
    let m = Machine::new("stopctl");
    let alone = m.busy_rate(&[], &probes().0);
    let p = ptx();
    for signal in [libc::SIGSTOP, libc::SIGKILL] {
        // The command's output goes to a file: run (stopped or dead) holds no pipe to wait on.
        let out_path = tf_test_support::scratch_dir("stopctl-out").join(format!("{signal}.json"));
        let mut run = m
            .tf()
            .args(["run", "--compute-percent", "30", "--keep-running", "--"])
            .arg(&probes().0)
            .args(["busy", p.to_str().unwrap(), "5", "2", "1000"])
            .stdout(std::fs::File::create(&out_path).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(run.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let out = loop {
            let out = std::fs::read_to_string(&out_path).unwrap();
            if out.ends_with('\n') {
                break out;
            }
            assert!(
                Instant::now() < deadline,
                "the command never finished: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // SAFETY: as above.
        unsafe { libc::kill(run.id() as i32, libc::SIGKILL) };
        let _ = run.wait();
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        let pct = v["kernels_per_s"].as_f64().unwrap() / alone * 100.0;
        eprintln!("controller signalled {signal}: {pct:.2} %");
        assert!(
            (pct - 30.0).abs() <= 5.0,
            "signal {signal}: {pct:.2} % ({v})"
        );
    }
}

/// Killing `run` stops its command within a second (unless --keep-running).
#[test]
fn killing_run_stops_its_command_within_a_second() {
    let m = Machine::new("pdeath");
    let mut run = m
        .tf()
        .args(["run", "--"])
        .arg(&probes().0)
        .args(["hold", "16", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(run.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let region = tf_vgpu_limiter::Region::open(&the_region(&m)).unwrap();
    let pid = region.processes()[0].0;
    run.kill().unwrap();
    let killed = Instant::now();
    run.wait().unwrap();
    while proc_alive(pid) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "the command outlived run"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn proc_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A child that drops LD_PRELOAD and allocates past the quota is seen in the driver's own count:
/// reported (--report), and killed with --on-escape kill.
#[test]
fn a_child_that_escapes_the_interposer_is_reported_and_killed() {
    let m = Machine::new("escape");
    let report = m.dir.path().join("report.json");
    let out = m
        .tf()
        .args(["run", "--vram", "256MiB", "--on-escape", "kill", "--report"])
        .arg(&report)
        .args(["--", "sh", "-c"])
        .arg(format!(
            "env -u LD_PRELOAD {} hold 512 30",
            probes().0.display()
        ))
        .output()
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let escapes = r["escapes"].as_array().unwrap();
    assert!(
        escapes.iter().any(|e| e["killed"] == true),
        "{r}\n{}",
        show(&out)
    );
    assert!(
        escapes
            .iter()
            .any(|e| e["kind"] == "unregistered" || e["kind"] == "over-quota"),
        "{r}"
    );
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
}
