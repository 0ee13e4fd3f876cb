//! The HAL conformance suite (`tf_hal::conformance`) against [`CudaBackend`].
//!
//! By default it runs on the simulated GPU's drop-in driver libraries: `main` installs them into
//! a temporary directory and re-executes this program with `LD_LIBRARY_PATH` pointing there
//! (the dynamic loader reads it only at process start) and `TF_FAKE_GPU_CONFIG` naming an
//! isolated simulated machine; the child runs the checks.
//!
//! With `TF_CONFORMANCE_REAL=1` it runs in-process against whatever driver the loader finds (a
//! real GPU): no re-execution, no fake libraries. The checks keep their memory small and their
//! kernels short, so this is safe on a shared GPU.
//!
//! Output and exit status follow libtest: one `test NAME ... ok|FAILED` line per check, a
//! summary, non-zero exit on failure. Arguments: a substring filter, `--exact`, `--list`,
//! `--skip PATTERN`; other libtest flags are accepted and ignored.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tf_backend_cuda::CudaBackend;
use tf_hal::Backend;
use tf_hal::conformance as c;

const CHILD_ENV: &str = "TF_CUDA_CONFORMANCE_CHILD";
const REAL_ENV: &str = "TF_CONFORMANCE_REAL";
/// Set for the child when the fake NVML library is not built (yet): the checks that need NVML
/// are reported as ignored instead of failing.
const NO_NVML_ENV: &str = "TF_CUDA_CONFORMANCE_NO_NVML";

/// Checks that need NVML (device metrics).
const NEEDS_NVML: &[&str] = &[
    "utilization_rises_under_load",
    "cuda_device_metrics_come_from_nvml",
];

type Check = fn(&dyn Backend);

/// Checks of this backend beyond the HAL suite: NVML metrics, topology, partitions, vendor
/// codes. Safe on a real GPU; a few assertions apply only to the simulated one.
const CUDA_CHECKS: &[(&str, Check)] = &[
    ("cuda_device_metrics_come_from_nvml", device_metrics),
    ("cuda_topology_and_partitions", topology_and_partitions),
    ("cuda_errors_keep_the_vendor_code", vendor_codes),
    ("cuda_one_context_serves_many_threads", many_threads),
];

fn on_fake() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

fn device_metrics(backend: &dyn Backend) {
    let dev = backend.device(0).expect("device 0");
    let total = dev.info().total_memory_bytes;
    let m = dev.memory().expect("device memory");
    assert_eq!(m.used_bytes + m.free_bytes, m.total_bytes, "{m:?}");
    let ratio = m.total_bytes as f64 / total as f64;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "NVML total {m:?} vs driver {total}"
    );
    assert_eq!(dev.busy_sample().expect("busy_sample"), None);

    let ctx = dev.create_context().expect("context");
    let p = ctx.mem_alloc(64 << 20).expect("alloc 64 MiB");
    let procs = dev.processes().expect("processes");
    if on_fake() {
        let me = procs
            .iter()
            .find(|p| p.pid == std::process::id())
            .unwrap_or_else(|| panic!("this process is not listed: {procs:?}"));
        assert!(me.memory_bytes >= 64 << 20, "{me:?}");
        let after = dev.memory().unwrap();
        assert!(
            after.used_bytes >= m.used_bytes + (64 << 20),
            "{m:?} -> {after:?}"
        );
    }
    let u = dev
        .utilization(std::time::Duration::from_millis(200))
        .expect("utilization");
    assert!((0.0..=100.0).contains(&u), "{u}");
    ctx.mem_free(p).unwrap();
}

fn topology_and_partitions(backend: &dyn Backend) {
    let devices = backend.devices().unwrap();
    let links = backend.topology().expect("topology");
    if on_fake() && devices.len() >= 2 {
        // The default simulated devices are NVLink-connected H100s on one NUMA node.
        let l = links
            .iter()
            .find(|l| (l.a, l.b) == (0, 1))
            .unwrap_or_else(|| panic!("no link between devices 0 and 1: {links:?}"));
        assert!(
            matches!(l.kind, tf_hal::LinkKind::NvLink { links } if links > 0),
            "{l:?}"
        );
    }
    for d in &devices {
        let dev = backend.device(d.index).unwrap();
        let templates = dev.partition_templates().expect("partition templates");
        // NVML lists MIG profiles only while MIG mode is on: a capable device may list none.
        assert!(
            templates.is_empty() || d.capabilities.partitioning,
            "{templates:?}"
        );
        for t in &templates {
            assert!(t.name.contains("g."), "{t:?}");
            assert!(
                t.memory_bytes > 0 && t.compute_units > 0 && t.max_instances > 0,
                "{t:?}"
            );
        }
        // Creating MIG instances is not implemented (never attempted on a real GPU here).
        let e = dev.create_partition("no-such-profile").unwrap_err();
        assert_eq!(e.kind, tf_hal::ErrorKind::NotSupported, "{e}");
    }
}

fn vendor_codes(backend: &dyn Backend) {
    let dev = backend.device(0).unwrap();
    let ctx = dev.create_context().unwrap();
    let e = ctx
        .mem_alloc(dev.info().total_memory_bytes * 2)
        .unwrap_err();
    assert_eq!(
        e.vendor.as_ref().map(|v| v.name.as_str()),
        Some("CUDA_ERROR_OUT_OF_MEMORY"),
        "{e}"
    );
    let m = ctx
        .load_module(tf_hal::ModuleImage::Ptx(c::KERNELS_PTX))
        .unwrap();
    let e = ctx.function(m, "no_such_kernel").unwrap_err();
    assert_eq!(
        e.vendor.as_ref().map(|v| (v.code, v.name.as_str())),
        Some((500, "CUDA_ERROR_NOT_FOUND")),
        "{e}"
    );
    let e = ctx
        .load_module(tf_hal::ModuleImage::Binary(b"not a cubin"))
        .unwrap_err();
    assert_eq!(e.kind, tf_hal::ErrorKind::InvalidImage, "{e}");
    if on_fake() {
        // The simulated driver describes kernel parameters (cuFuncGetParamInfo, CUDA 12.4+):
        // a wrong argument list is rejected before launch. (Not tried on a real driver, which
        // may predate 12.4 and would then read arguments that were never passed.)
        let f = ctx.function(m, "tf_fill_u32").unwrap();
        let e = ctx
            .launch(
                f,
                &tf_hal::LaunchConfig::single(),
                tf_hal::StreamHandle::DEFAULT,
                &tf_hal::KernelArgs::new().u32(1),
            )
            .unwrap_err();
        assert_eq!(e.kind, tf_hal::ErrorKind::InvalidValue, "{e}");
    }
    ctx.synchronize().unwrap();
    ctx.unload_module(m).unwrap();
}

/// Threads share one context: each allocates, fills on its own stream, checks and frees, while
/// the others do the same (the worker will drive contexts like this).
fn many_threads(backend: &dyn Backend) {
    let dev = backend.device(0).unwrap();
    let ctx = dev.create_context().unwrap();
    let m = ctx
        .load_module(tf_hal::ModuleImage::Ptx(c::KERNELS_PTX))
        .unwrap();
    let fill = ctx.function(m, "tf_fill_u32").unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let ctx = &ctx;
            scope.spawn(move || {
                let n: u32 = 4096 + t * 100;
                for round in 0..5u32 {
                    let p = ctx.mem_alloc(n as u64 * 4).unwrap();
                    let s = ctx.stream_create().unwrap();
                    let value = t * 1000 + round;
                    ctx.launch(
                        fill,
                        &tf_hal::LaunchConfig::for_elements(n, 128),
                        s,
                        &tf_hal::KernelArgs::new().ptr(p).u32(value).u32(n),
                    )
                    .unwrap();
                    ctx.stream_synchronize(s).unwrap();
                    let mut out = vec![0u8; n as usize * 4];
                    ctx.copy_dtoh(&mut out, p).unwrap();
                    assert!(
                        out.chunks_exact(4)
                            .all(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) == value),
                        "thread {t} round {round}: wrong values"
                    );
                    ctx.stream_destroy(s).unwrap();
                    ctx.mem_free(p).unwrap();
                }
            });
        }
    });
    ctx.unload_module(m).unwrap();
}

struct Args {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
    ignored: bool,
    raw: Vec<String>,
}

fn parse_args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        filters: Vec::new(),
        skips: Vec::new(),
        exact: false,
        list: false,
        ignored: false,
        raw: raw.clone(),
    };
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--exact" => a.exact = true,
            "--list" => a.list = true,
            "--ignored" => a.ignored = true,
            "--skip" => a.skips.extend(it.next()),
            // libtest flags that take a value.
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" | "--report-time" => {
                let _ = it.next();
            }
            s if s.starts_with('-') => {}
            s => a.filters.push(s.to_string()),
        }
    }
    a
}

fn selected(args: &Args, name: &str) -> bool {
    let matches = |p: &String| {
        if args.exact {
            name == p
        } else {
            name.contains(p.as_str())
        }
    };
    (args.filters.is_empty() || args.filters.iter().any(matches))
        && !args.skips.iter().any(|s| name.contains(s.as_str()))
}

fn all_checks() -> Vec<(&'static str, Check)> {
    c::CHECKS.iter().chain(CUDA_CHECKS).copied().collect()
}

fn main() -> ExitCode {
    let args = parse_args();
    if args.list {
        for (name, _) in all_checks() {
            if selected(&args, name) {
                println!("{name}: test");
            }
        }
        return ExitCode::SUCCESS;
    }
    let real = std::env::var(REAL_ENV).is_ok_and(|v| v == "1");
    if real || std::env::var_os(CHILD_ENV).is_some() {
        run_checks(&args, if real { "real driver" } else { "simulated GPU" })
    } else {
        run_on_fake_libraries(&args)
    }
}

/// Install the fake driver libraries, then run this program again against them.
fn run_on_fake_libraries(args: &Args) -> ExitCode {
    let names: Vec<&str> = all_checks()
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| selected(args, n))
        .collect();
    if names.is_empty() || args.ignored {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out; finished in 0.00s\n",
            all_checks().len()
        );
        return ExitCode::SUCCESS;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let with_nvml = match install_fake_libraries(dir.path()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot lay out the simulated GPU's driver libraries: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = dir.path().join("gpu.toml");
    let machine = tf_fake_gpu::testing::isolated_config("cudaconf", 2);
    std::fs::write(&config, tf_fake_gpu::testing::to_toml(&machine)).expect("write the config");
    let exe = std::env::current_exe().expect("the test executable");
    let mut child = Command::new(exe);
    if std::env::var_os("TF_LOG").is_none() {
        // The simulated libraries log each unimplemented entry point once; keep the report
        // readable.
        child.env("TF_LOG", "error");
    }
    if !with_nvml {
        child.env(NO_NVML_ENV, "1");
    }
    let status = child
        .args(&args.raw)
        .env(CHILD_ENV, "1")
        .env("LD_LIBRARY_PATH", dir.path())
        .env("TF_FAKE_GPU_CONFIG", &config)
        .env_remove(tf_backend_cuda::CUDA_LIBRARY_ENV)
        .env_remove(tf_backend_cuda::NVML_LIBRARY_ENV)
        .status()
        .expect("re-execute the conformance suite");
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The simulated NVIDIA libraries (`tf_fake_gpu::install::install_libs`), or only libcuda
/// while the fake NVML is not built. Returns whether NVML was installed.
fn install_fake_libraries(dir: &Path) -> tf_hal::Result<bool> {
    use tf_fake_gpu::install::{DRIVER_LIBS, InstallMode, NVIDIA_LIBS, install_libs};
    match install_libs(dir, InstallMode::Link, NVIDIA_LIBS) {
        Ok(_) => Ok(true),
        Err(e) => {
            install_libs(dir, InstallMode::Link, &DRIVER_LIBS[..1])?;
            eprintln!("note: {e}\nnote: running with the fake libcuda only (no NVML)");
            Ok(false)
        }
    }
}

fn run_checks(args: &Args, target: &str) -> ExitCode {
    let started = Instant::now();
    let last_panic: Arc<Mutex<Option<String>>> = Arc::default();
    {
        let last_panic = last_panic.clone();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            *last_panic.lock().unwrap() = Some(format!("{msg}{at}"));
        }));
    }

    let backend: Result<Arc<dyn Backend>, tf_hal::Error> = CudaBackend::new().map(|b| {
        println!(
            "CUDA backend on the {target}: driver {}, NVML {}",
            b.driver_library()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            if b.has_nvml() {
                "loaded"
            } else {
                "not available"
            }
        );
        Arc::new(b) as Arc<dyn Backend>
    });
    if let Ok(b) = &backend {
        for d in b.devices().unwrap_or_default() {
            println!(
                "  device {}: {} {} ({} bytes, {} SMs, {} TFLOPS)",
                d.index, d.uuid, d.model, d.total_memory_bytes, d.compute_units, d.fp16_tflops
            );
        }
    }

    let checks = all_checks();
    let selected_checks: Vec<&(&str, Check)> =
        checks.iter().filter(|(n, _)| selected(args, n)).collect();
    let filtered_out = checks.len() - selected_checks.len();
    if args.ignored {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out; finished in 0.00s\n",
            all_checks().len()
        );
        return ExitCode::SUCCESS;
    }
    println!("\nrunning {} tests", selected_checks.len());
    let no_nvml = std::env::var_os(NO_NVML_ENV).is_some();
    let mut failures = Vec::new();
    let mut ignored = 0;
    for (name, check) in &selected_checks {
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        if no_nvml && NEEDS_NVML.contains(name) {
            println!("ignored, the simulated GPU's libnvidia-ml is not built");
            ignored += 1;
            continue;
        }
        *last_panic.lock().unwrap() = None;
        let outcome = match &backend {
            Ok(b) => catch_unwind(AssertUnwindSafe(|| check(&**b)))
                .map_err(|_| last_panic.lock().unwrap().take().unwrap_or_default()),
            Err(e) => Err(format!("CudaBackend::new() failed: {e}")),
        };
        match outcome {
            Ok(()) => println!("ok"),
            Err(msg) => {
                println!("FAILED");
                failures.push((name.to_string(), msg));
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:\n");
        for (name, msg) in &failures {
            println!("---- {name} ----\n{msg}\n");
        }
        println!("failures:");
        for (name, _) in &failures {
            println!("    {name}");
        }
    }
    let passed = selected_checks.len() - failures.len() - ignored;
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {ignored} ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
        if failures.is_empty() { "ok" } else { "FAILED" },
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
