//! Behaviour of the simulated GPU beyond the HAL contract: bad input, partitions, snapshots.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::sync::Arc;

use tf_fake_gpu::{FakeBackend, testing::isolated_config};
use tf_hal::*;

fn backend(tag: &str) -> FakeBackend {
    FakeBackend::with_config(isolated_config(tag, 2)).unwrap()
}

fn ctx(b: &FakeBackend) -> Arc<dyn Context> {
    b.device(0).unwrap().create_context().unwrap()
}

#[test]
fn a_ptx_module_with_no_entries_is_rejected() {
    let b = backend("noentry");
    let c = ctx(&b);
    let err = c
        .load_module(ModuleImage::Ptx(
            ".version 7.0\n.target sm_70\n.address_size 64\n",
        ))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidImage);
    assert!(err.message.contains("no .entry"), "{err}");
    let err = c
        .load_module(ModuleImage::Binary(b"\x7fELF\x02\x01\x01\0\0\0"))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidImage, "{err}");
}

#[test]
fn a_launch_with_the_wrong_arguments_is_rejected() {
    let b = backend("args");
    let c = ctx(&b);
    let m = c.load_module(ModuleImage::Ptx(TEST_KERNELS_PTX)).unwrap();
    let add = c.function(m, "tf_vector_add_f32").unwrap();
    let p = c.mem_alloc(64).unwrap();
    let cfg = LaunchConfig::for_elements(16, 16);
    let err = c
        .launch(
            add,
            &cfg,
            StreamHandle::DEFAULT,
            &KernelArgs::new().ptr(p).ptr(p).u32(16),
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidValue);
    assert!(
        err.message
            .contains("takes 4 arguments, the launch passed 3"),
        "{err}"
    );
    let err = c
        .launch(
            add,
            &cfg,
            StreamHandle::DEFAULT,
            &KernelArgs::new().ptr(p).ptr(p).ptr(p).u64(16),
        )
        .unwrap_err();
    assert!(err.message.contains("argument 3 is 4 bytes"), "{err}");
    let bad_cfg = LaunchConfig {
        grid: [1, 1, 1],
        block: [2048, 1, 1],
        shared_mem_bytes: 0,
    };
    let err = c
        .launch(
            add,
            &bad_cfg,
            StreamHandle::DEFAULT,
            &KernelArgs::new().ptr(p).ptr(p).ptr(p).u32(16),
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidValue);
}

#[test]
fn a_kernel_outside_its_memory_fails_at_synchronize() {
    let b = backend("oob");
    let c = ctx(&b);
    let m = c.load_module(ModuleImage::Ptx(TEST_KERNELS_PTX)).unwrap();
    let fill = c.function(m, "tf_fill_u32").unwrap();
    let p = c.mem_alloc(64).unwrap();
    // 1000 elements into 64 bytes.
    c.launch(
        fill,
        &LaunchConfig::for_elements(1000, 128),
        StreamHandle::DEFAULT,
        &KernelArgs::new().ptr(p).u32(1).u32(1000),
    )
    .expect("the launch itself is accepted, like on a GPU");
    let err = c.synchronize().unwrap_err();
    assert_eq!(err.kind, ErrorKind::IllegalAddress, "{err}");
}

#[test]
fn unknown_kernels_run_for_their_modeled_time() {
    let b = backend("modeled");
    let c = ctx(&b);
    let ptx = ".version 7.0\n.target sm_70\n.address_size 64\n.visible .entry my_gemm(.param .u64 a, .param .u32 n)\n{ ret; }\n";
    let m = c.load_module(ModuleImage::Ptx(ptx)).unwrap();
    let f = c.function(m, "my_gemm").unwrap();
    let (e0, e1) = (c.event_create().unwrap(), c.event_create().unwrap());
    // 132 SMs × 8 blocks of 256 threads per wave: 10 waves × 5 µs + 2 µs overhead = 52 µs.
    let cfg = LaunchConfig {
        grid: [132 * 8 * 10, 1, 1],
        block: [256, 1, 1],
        shared_mem_bytes: 0,
    };
    c.event_record(e0, StreamHandle::DEFAULT).unwrap();
    for _ in 0..100 {
        c.launch(
            f,
            &cfg,
            StreamHandle::DEFAULT,
            &KernelArgs::new().u64(0).u32(1),
        )
        .unwrap();
    }
    c.event_record(e1, StreamHandle::DEFAULT).unwrap();
    c.event_synchronize(e1).unwrap();
    let t = c.event_elapsed(e0, e1).unwrap();
    assert!(t.as_micros() >= 5_200, "100 × 52 µs took {t:?}");
}

#[test]
fn memory_is_shared_device_wide_and_partitions_fit_the_device() {
    let b = backend("mem");
    let dev = b.device(1).unwrap();
    let c1 = dev.create_context().unwrap();
    let c2 = dev.create_context().unwrap();
    let total = dev.info().total_memory_bytes;
    let half = c1.mem_alloc(total / 2).unwrap();
    assert!(
        c2.mem_alloc(total / 2 + (1 << 20)).is_err(),
        "both halves cannot fit"
    );
    let m = dev.memory().unwrap();
    assert_eq!(m.used_bytes, total / 2);
    assert_eq!(dev.processes().unwrap()[0].memory_bytes, total / 2);
    c1.mem_free(half).unwrap();
    assert_eq!(dev.memory().unwrap().used_bytes, 0);

    let templates = dev.partition_templates().unwrap();
    assert!(
        templates.iter().any(|t| t.name == "1g.10gb"),
        "{templates:?}"
    );
    let a = dev.create_partition("3g.40gb").unwrap();
    let _b = dev.create_partition("3g.40gb").unwrap();
    let err = dev.create_partition("3g.40gb").unwrap_err();
    assert_eq!(err.kind, ErrorKind::OutOfMemory, "{err}");
    assert_eq!(
        dev.create_partition("9g.1gb").unwrap_err().kind,
        ErrorKind::NotFound
    );
    dev.destroy_partition(&a.id).unwrap();
    assert_eq!(dev.partitions().unwrap().len(), 1);
}

#[test]
fn snapshot_and_restore_bring_back_memory_at_the_same_addresses() {
    let b = backend("snap");
    let c = ctx(&b);
    let p = c.mem_alloc(10_000).unwrap();
    let q = c.mem_alloc(333).unwrap();
    let data = tf_hal::conformance::pattern(10_000, 3);
    c.copy_htod(p, &data).unwrap();
    c.memset_d8(q, 0x5a, 333).unwrap();
    let snap = c.snapshot().unwrap();
    assert_eq!(snap.total_bytes(), 10_333);
    c.mem_free(p).unwrap();
    c.memset_d8(q, 0, 333).unwrap();
    c.restore(&snap).unwrap();
    let mut back = vec![0; 10_000];
    c.copy_dtoh(&mut back, p).unwrap();
    assert!(back == data);
    let mut qb = vec![0; 333];
    c.copy_dtoh(&mut qb, q).unwrap();
    assert!(qb.iter().all(|&x| x == 0x5a));
}

/// The device segment and the vGPU region share one process table (`tf_os::proctable`): threads
/// of one process registering at once with a device all end up with one slot, as they do with a
/// region (`vgpu/limiter/tests/region_concurrency.rs`).
#[test]
fn threads_registering_with_a_device_at_once_share_one_slot() {
    let config = isolated_config("race", 1);
    let dir = config.shm_dir.clone();
    let uuid = config.devices[0].uuid.clone();
    let memory = config.devices[0].memory_bytes;
    for round in 0..50 {
        // A fresh segment each round (the previous one is unmapped when its last user drops).
        let seg = tf_fake_gpu::shm::DeviceSegment::open(&dir, &format!("{uuid}-{round}"), memory)
            .unwrap();
        let me = std::process::id();
        let slots: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| seg.register(me).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            slots.iter().all(|&x| x == slots[0]),
            "round {round}: {slots:?}"
        );
        assert_eq!(seg.processes().len(), 1, "round {round}");
    }
}

/// No kernel may hold the device for everyone: an endless or overflowing duration is refused at
/// launch, and the device stays free for the next kernel.
#[test]
fn endless_kernels_are_refused_and_the_device_stays_free() {
    let b = backend("endless");
    let c = ctx(&b);
    let m = c.load_module(ModuleImage::Ptx(TEST_KERNELS_PTX)).unwrap();
    let busy = c.function(m, "tf_busy").unwrap();
    for ns in [
        u64::MAX,
        60_000_000_000,
        tf_fake_gpu::kernels::MAX_KERNEL_NS + 1,
    ] {
        let err = c
            .launch(
                busy,
                &LaunchConfig::for_elements(1, 1),
                StreamHandle::DEFAULT,
                &KernelArgs::new().u64(ns),
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidValue, "{ns}: {err}");
        assert!(err.message.contains("limit"), "{err}");
    }
    let t = std::time::Instant::now();
    c.launch(
        busy,
        &LaunchConfig::for_elements(1, 1),
        StreamHandle::DEFAULT,
        &KernelArgs::new().u64(1_000_000),
    )
    .unwrap();
    c.synchronize().unwrap();
    assert!(t.elapsed() < std::time::Duration::from_millis(500));
}

/// The sensor model: an idle device reads its model's idle power and temperature; while kernels
/// run back to back the power rises toward the board limit and the temperature above idle.
#[test]
fn sensors_follow_the_load() {
    let b = backend("sensors");
    let dev = b.device(0).unwrap();
    let idle = dev.sensors().unwrap();
    let spec = tf_fake_gpu::model::spec(&tf_fake_gpu::DeviceProfile::h100_sxm(0));
    assert_eq!(idle.power_w, Some(spec.idle_w as f64), "{idle:?}");
    assert_eq!(
        idle.temperature_c,
        Some(spec.idle_temp_c as f64),
        "{idle:?}"
    );
    let c = ctx(&b);
    let m = c.load_module(ModuleImage::Ptx(TEST_KERNELS_PTX)).unwrap();
    let busy = c.function(m, "tf_busy").unwrap();
    for _ in 0..40 {
        c.launch(
            busy,
            &LaunchConfig::for_elements(1, 1),
            StreamHandle::DEFAULT,
            &KernelArgs::new().u64(25_000_000),
        )
        .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(800));
    let loaded = dev.sensors().unwrap();
    c.synchronize().unwrap();
    let (p, t) = (loaded.power_w.unwrap(), loaded.temperature_c.unwrap());
    assert!(
        p > spec.idle_w as f64 + 0.5 * (spec.tdp_w - spec.idle_w) as f64 && p <= spec.tdp_w as f64,
        "{loaded:?}"
    );
    assert!(
        t > spec.idle_temp_c as f64 && t <= spec.full_temp_c as f64,
        "{loaded:?}"
    );
}
