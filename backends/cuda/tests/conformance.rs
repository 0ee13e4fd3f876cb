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
const NEEDS_NVML: &[&str] = &["utilization_rises_under_load"];

type Check = fn(&dyn Backend);

/// Every check of `tf_hal::conformance` (the list `hal_conformance_tests!` expands).
const CHECKS: &[(&str, Check)] = &[
    ("enumeration_is_stable", c::enumeration_is_stable),
    ("memory_round_trips", c::memory_round_trips),
    ("out_of_memory_is_an_error", c::out_of_memory_is_an_error),
    (
        "kernels_compute_correct_results",
        c::kernels_compute_correct_results,
    ),
    (
        "streams_and_events_order_work",
        c::streams_and_events_order_work,
    ),
    (
        "utilization_rises_under_load",
        c::utilization_rises_under_load,
    ),
    (
        "invalid_handles_are_rejected",
        c::invalid_handles_are_rejected,
    ),
];

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

fn main() -> ExitCode {
    let args = parse_args();
    if args.list {
        for (name, _) in CHECKS {
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
    let names: Vec<&str> = CHECKS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| selected(args, n))
        .collect();
    if names.is_empty() || args.ignored {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out; finished in 0.00s\n",
            CHECKS.len()
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

/// `tf_fake_gpu::install::install`, or only libcuda while the fake NVML is not built. Returns
/// whether NVML was installed.
fn install_fake_libraries(dir: &Path) -> tf_hal::Result<bool> {
    match tf_fake_gpu::install::install(dir) {
        Ok(_) => Ok(true),
        Err(e) => {
            let cuda = tf_fake_gpu::install::find_built("libcuda.so")?;
            for name in ["libcuda.so.1", "libcuda.so"] {
                std::fs::copy(&cuda, dir.join(name)).map_err(|io| {
                    tf_hal::Error::new(tf_hal::ErrorKind::Other, format!("copy {name}: {io}"))
                })?;
            }
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

    let selected_checks: Vec<&(&str, Check)> =
        CHECKS.iter().filter(|(n, _)| selected(args, n)).collect();
    let filtered_out = CHECKS.len() - selected_checks.len();
    if args.ignored {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out; finished in 0.00s\n",
            CHECKS.len()
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
