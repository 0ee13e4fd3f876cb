//! The HAL conformance suite (`tf_hal::conformance`) against [`VulkanBackend`] on whatever
//! Vulkan driver the system's loader finds: in CI that is Mesa's lavapipe (Debian's
//! `mesa-vulkan-drivers`, a Vulkan device on the CPU).
//!
//! Where the loader or every driver is missing, each check is reported as ignored with the
//! reason and the Debian packages to install (never a silent pass). Output and exit status
//! follow libtest: one `test NAME ... ok|FAILED|ignored` line per check and a summary.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tf_backend_vulkan::VulkanBackend;
use tf_hal::conformance as c;
use tf_hal::{Backend, ErrorKind};

type Check = fn(&dyn Backend);

/// This backend's own checks, run after every check of `tf_hal::conformance` ([`c::CHECKS`]).
const VULKAN_CHECKS: &[(&str, Check)] = &[
    ("vulkan_enumeration_details", enumeration_details),
    ("vulkan_rejects_other_images", rejects_other_images),
    ("vulkan_unaligned_copies_and_bounds", unaligned_and_bounds),
];

fn all_checks() -> Vec<(&'static str, Check)> {
    c::CHECKS.iter().chain(VULKAN_CHECKS).copied().collect()
}

fn enumeration_details(backend: &dyn Backend) {
    for d in backend.devices().unwrap() {
        assert!(tf_hal::DeviceUuid::parse(&d.uuid).is_ok(), "{}", d.uuid);
        assert!(!d.driver_version.is_empty(), "{d:?}");
        assert!(d.capabilities.soft_limit);
        let dev = backend.device(d.index).unwrap();
        let m = dev.memory().expect("memory");
        assert!(
            m.total_bytes > 0 && m.used_bytes + m.free_bytes <= m.total_bytes,
            "{m:?}"
        );
        let e = dev.processes().unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotSupported, "{e}");
    }
}

fn rejects_other_images(backend: &dyn Backend) {
    let ctx = backend.device(0).unwrap().create_context().unwrap();
    for image in [
        tf_hal::ModuleImage::Ptx(tf_hal::TEST_KERNELS_PTX),
        tf_hal::ModuleImage::Binary(b"\x7fELF"),
        tf_hal::ModuleImage::SpirV(b"not a SPIR-V module"),
    ] {
        let e = ctx.load_module(image).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidImage, "{e}");
    }
}

fn unaligned_and_bounds(backend: &dyn Backend) {
    let ctx = backend.device(0).unwrap().create_context().unwrap();
    let p = ctx.mem_alloc(20 << 20).unwrap(); // more than one staging piece
    let data = c::pattern(20 << 20, 7);
    ctx.copy_htod(p, &data).unwrap();
    ctx.memset_d8(p.offset(3), 0x5a, 5).unwrap();
    let mut back = vec![0u8; 20 << 20];
    ctx.copy_dtoh(&mut back, p).unwrap();
    assert_eq!(&back[..3], &data[..3]);
    assert!(back[3..8].iter().all(|&b| b == 0x5a));
    assert!(
        back[8..] == data[8..],
        "bytes after an unaligned memset changed"
    );
    let e = ctx
        .copy_htod(p.offset((20 << 20) - 2), &[1, 2, 3])
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::IllegalAddress, "{e}");
    let e = ctx.memset_d32(p.offset(2), 1, 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidValue, "{e}");
    ctx.mem_free(p).unwrap();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected = |name: &str| {
        filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    name == *f
                } else {
                    name.contains(f.as_str())
                }
            })
    };
    if args.iter().any(|a| a == "--list") {
        for (name, _) in all_checks().iter().filter(|(n, _)| selected(n)) {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let all = all_checks();
    let checks: Vec<&(&str, Check)> = all.iter().filter(|(n, _)| selected(n)).collect();
    let filtered = all.len() - checks.len();
    let started = Instant::now();
    if args.iter().any(|a| a == "--ignored") {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out; finished in 0.00s\n",
            all.len()
        );
        return ExitCode::SUCCESS;
    }
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
    let backend = VulkanBackend::new();
    // No loader or no driver on this machine: say so for each check.
    let skip = match &backend {
        Err(e) if matches!(e.kind, ErrorKind::LibraryNotFound | ErrorKind::NoDevice) => {
            Some(e.to_string())
        }
        _ => None,
    };
    if let Ok(b) = &backend {
        for d in b.devices().unwrap_or_default() {
            let x = b.details(d.index).unwrap();
            println!(
                "Vulkan device {}: {} ({}, {} {}), {} bytes, driver {}, Vulkan {}, {} compute queue families, memory budget {}, device clock {}",
                d.index,
                d.model,
                x.device_type,
                d.vendor,
                d.uuid,
                d.total_memory_bytes,
                d.driver_version,
                x.api_version,
                x.compute_queue_families.len(),
                x.memory_budget,
                x.shader_device_clock
            );
        }
    }
    println!("\nrunning {} tests", checks.len());
    let (mut failures, mut ignored) = (Vec::new(), 0);
    for (name, check) in &checks {
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        if let Some(why) = &skip {
            println!("ignored, {why}");
            ignored += 1;
            continue;
        }
        *last_panic.lock().unwrap() = None;
        let outcome = match &backend {
            Ok(b) => catch_unwind(AssertUnwindSafe(|| check(b)))
                .map_err(|_| last_panic.lock().unwrap().take().unwrap_or_default()),
            Err(e) => Err(format!("VulkanBackend::new() failed: {e}")),
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
    }
    let passed = checks.len() - failures.len() - ignored;
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {ignored} ignored; 0 measured; {filtered} filtered out; finished in {:.2}s\n",
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
