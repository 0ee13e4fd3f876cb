//! The HAL conformance suite: written once against the traits, run by every backend.
//!
//! Each check takes a backend and panics (like a test assertion) when the backend breaks the
//! contract. A backend's test file runs them all with one line:
//!
//! ```ignore
//! tf_hal::hal_conformance_tests!(my_backend_constructor());
//! ```
//!
//! The checks use the test kernels in the form the backend loads ([`crate::test_kernels`]: the
//! PTX in [`crate::conformance::KERNELS_PTX`], which runs on a real NVIDIA GPU and on the
//! simulated one, or the same kernels as SPIR-V for Vulkan) and keep their device memory small,
//! so the suite is safe to run on a shared real GPU.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::*;

pub use crate::TEST_KERNELS_PTX as KERNELS_PTX;

/// A small deterministic byte pattern generator (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes_to_u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn first_context(backend: &dyn Backend) -> (Arc<dyn Device>, Arc<dyn Context>) {
    let devices = backend.devices().expect("enumerate devices");
    assert!(!devices.is_empty(), "the backend reports no devices");
    let dev = backend.device(0).expect("open device 0");
    let ctx = dev.create_context().expect("create a context on device 0");
    (dev, ctx)
}

/// Kernels module loaded into `ctx`, with the four test entries resolved.
pub struct TestKernels {
    pub module: ModuleHandle,
    pub vector_add: FunctionHandle,
    pub saxpy: FunctionHandle,
    pub fill: FunctionHandle,
    pub busy: FunctionHandle,
}

/// Load the test kernels in the form a backend of `kind` takes ([`crate::test_kernels`]).
pub fn load_test_kernels(ctx: &dyn Context, kind: BackendKind) -> TestKernels {
    let module = ctx
        .load_module(crate::test_kernels(kind))
        .expect("load the test kernels");
    let f = |name| {
        ctx.function(module, name)
            .unwrap_or_else(|e| panic!("resolve {name}: {e}"))
    };
    TestKernels {
        module,
        vector_add: f("tf_vector_add_f32"),
        saxpy: f("tf_saxpy_f32"),
        fill: f("tf_fill_u32"),
        busy: f("tf_busy"),
    }
}

/// Enumeration is stable, complete and self-consistent.
pub fn enumeration_is_stable(backend: &dyn Backend) {
    let a = backend.devices().expect("devices");
    let b = backend.devices().expect("devices again");
    assert!(!a.is_empty(), "no devices");
    assert_eq!(a, b, "two enumerations differ");
    let mut uuids = std::collections::HashSet::new();
    for (i, d) in a.iter().enumerate() {
        assert_eq!(d.index as usize, i, "indices must be 0..n in order");
        assert!(uuids.insert(d.uuid.clone()), "duplicate UUID {}", d.uuid);
        assert!(d.total_memory_bytes > 0, "device {i} reports no memory");
        assert!(d.compute_units > 0, "device {i} reports no compute units");
        assert!(!d.model.is_empty(), "device {i} has no model name");
        assert_eq!(d.backend, backend.kind());
        let dev = backend.device(d.index).expect("open by index");
        assert_eq!(dev.info(), d, "device(i).info() differs from devices()[i]");
        let by_uuid = backend.device_by_uuid(&d.uuid).expect("open by UUID");
        assert_eq!(by_uuid.info().index, d.index);
    }
    let err = backend
        .device(a.len() as u32 + 7)
        .err()
        .expect("an index past the end must be an error");
    assert_eq!(err.kind, ErrorKind::InvalidDevice, "{err}");
    for link in backend.topology().expect("topology") {
        assert!(
            link.a < link.b && (link.b as usize) < a.len(),
            "bad link {link:?}"
        );
    }
}

/// Bytes survive every copy direction exactly; memsets write what they should.
pub fn memory_round_trips(backend: &dyn Backend) {
    let (_dev, ctx) = first_context(backend);
    let len = (1 << 20) + 13; // not a multiple of anything convenient
    let data = pattern(len, 0x5eed);
    let a = ctx.mem_alloc(len as u64).expect("alloc a");
    let b = ctx.mem_alloc(len as u64).expect("alloc b");
    assert_ne!(a, b);
    ctx.copy_htod(a, &data).expect("htod");
    let mut back = vec![0u8; len];
    ctx.copy_dtoh(&mut back, a).expect("dtoh");
    assert!(back == data, "host -> device -> host changed the bytes");

    ctx.copy_dtod(b, a, len as u64).expect("dtod");
    let mut back2 = vec![0u8; len];
    ctx.copy_dtoh(&mut back2, b).expect("dtoh b");
    assert!(back2 == data, "device -> device changed the bytes");

    // Offsets inside an allocation.
    ctx.copy_htod(a.offset(100), &[1, 2, 3, 4])
        .expect("htod at offset");
    let mut four = [0u8; 4];
    ctx.copy_dtoh(&mut four, a.offset(100))
        .expect("dtoh at offset");
    assert_eq!(four, [1, 2, 3, 4]);

    ctx.memset_d8(b, 0xab, 4096).expect("memset d8");
    ctx.memset_d32(b.offset(4096), 0xdead_beef, 256)
        .expect("memset d32");
    let mut m = vec![0u8; 4096 + 1024 + 4];
    ctx.copy_dtoh(&mut m, b).expect("dtoh memset");
    assert!(m[..4096].iter().all(|&x| x == 0xab), "memset_d8");
    assert!(
        bytes_to_u32s(&m[4096..4096 + 1024])
            .iter()
            .all(|&x| x == 0xdead_beef),
        "memset_d32"
    );
    assert_eq!(
        &m[4096 + 1024..],
        &data[4096 + 1024..4096 + 1028],
        "memset past its end"
    );

    let info = ctx.mem_info().expect("mem_info");
    assert!(info.total_bytes > 0 && info.free_bytes <= info.total_bytes);
    ctx.mem_free(a).expect("free a");
    ctx.mem_free(b).expect("free b");
}

/// Asking for more memory than exists is an error, and the device still works afterwards.
pub fn out_of_memory_is_an_error(backend: &dyn Backend) {
    let (dev, ctx) = first_context(backend);
    let total = dev.info().total_memory_bytes;
    let err = ctx
        .mem_alloc(total.saturating_mul(2))
        .expect_err("allocating twice the device memory must fail");
    assert_eq!(err.kind, ErrorKind::OutOfMemory, "{err}");
    let p = ctx.mem_alloc(4096).expect("a small allocation after OOM");
    ctx.mem_free(p).expect("free");
}

/// The test kernels compute the right answers, element by element.
pub fn kernels_compute_correct_results(backend: &dyn Backend) {
    let (_dev, ctx) = first_context(backend);
    let k = load_test_kernels(&*ctx, backend.kind());
    let n: u32 = 100_003;
    let bytes = n as u64 * 4;
    let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..n).map(|i| 3.0 - i as f32).collect();
    let (da, db, dc) = (
        ctx.mem_alloc(bytes).unwrap(),
        ctx.mem_alloc(bytes).unwrap(),
        ctx.mem_alloc(bytes).unwrap(),
    );
    ctx.copy_htod(da, &f32s_to_bytes(&a)).unwrap();
    ctx.copy_htod(db, &f32s_to_bytes(&b)).unwrap();
    let cfg = LaunchConfig::for_elements(n, 256);
    let args = KernelArgs::new().ptr(da).ptr(db).ptr(dc).u32(n);
    ctx.launch(k.vector_add, &cfg, StreamHandle::DEFAULT, &args)
        .expect("launch vector add");
    ctx.synchronize().expect("synchronize");
    let mut out = vec![0u8; bytes as usize];
    ctx.copy_dtoh(&mut out, dc).unwrap();
    for (i, c) in bytes_to_f32s(&out).iter().enumerate() {
        assert_eq!(*c, a[i] + b[i], "vector add element {i}");
    }

    // saxpy: b = 2.5 * a + b
    let args = KernelArgs::new().u32(n).f32(2.5).ptr(da).ptr(db);
    ctx.launch(k.saxpy, &cfg, StreamHandle::DEFAULT, &args)
        .expect("launch saxpy");
    ctx.synchronize().unwrap();
    ctx.copy_dtoh(&mut out, db).unwrap();
    for (i, y) in bytes_to_f32s(&out).iter().enumerate() {
        assert_eq!(*y, 2.5f32.mul_add(a[i], b[i]), "saxpy element {i}");
    }

    // fill only the first half: the second half keeps its old value
    ctx.memset_d32(dc, 7, n as u64).unwrap();
    let half = n / 2;
    let args = KernelArgs::new().ptr(dc).u32(0xfeed_f00d).u32(half);
    ctx.launch(
        k.fill,
        &LaunchConfig::for_elements(half, 128),
        StreamHandle::DEFAULT,
        &args,
    )
    .expect("launch fill");
    ctx.synchronize().unwrap();
    ctx.copy_dtoh(&mut out, dc).unwrap();
    for (i, v) in bytes_to_u32s(&out).iter().enumerate() {
        let want = if (i as u32) < half { 0xfeed_f00d } else { 7 };
        assert_eq!(*v, want, "fill element {i}");
    }
    for p in [da, db, dc] {
        ctx.mem_free(p).unwrap();
    }
    ctx.unload_module(k.module).unwrap();
}

/// Work on one stream runs in order; another stream waiting on an event sees its results; events
/// measure device time.
pub fn streams_and_events_order_work(backend: &dyn Backend) {
    let (_dev, ctx) = first_context(backend);
    let k = load_test_kernels(&*ctx, backend.kind());
    let n: u32 = 4096;
    let p = ctx.mem_alloc(n as u64 * 4).unwrap();
    ctx.memset_d32(p, 0, n as u64).unwrap();
    let s1 = ctx.stream_create().expect("stream 1");
    let s2 = ctx.stream_create().expect("stream 2");
    let (start, mid, done) = (
        ctx.event_create().unwrap(),
        ctx.event_create().unwrap(),
        ctx.event_create().unwrap(),
    );
    let cfg = LaunchConfig::for_elements(n, 256);
    let busy_ns: u64 = 60_000_000;
    ctx.event_record(start, s1).unwrap();
    ctx.launch(
        k.busy,
        &LaunchConfig::single(),
        s1,
        &KernelArgs::new().u64(busy_ns),
    )
    .unwrap();
    ctx.launch(k.fill, &cfg, s1, &KernelArgs::new().ptr(p).u32(5).u32(n))
        .unwrap();
    ctx.event_record(mid, s1).unwrap();
    // s2 must not start its fill before s1's fill (behind a 60 ms kernel) has finished.
    ctx.stream_wait_event(s2, mid).unwrap();
    ctx.launch(
        k.fill,
        &cfg,
        s2,
        &KernelArgs::new().ptr(p).u32(9).u32(n / 2),
    )
    .unwrap();
    ctx.event_record(done, s2).unwrap();
    assert!(
        !ctx.event_query(mid).expect("query"),
        "an event behind a 60 ms kernel cannot be complete at once"
    );
    ctx.event_synchronize(done).unwrap();
    assert!(ctx.event_query(done).unwrap());
    assert!(ctx.event_query(mid).unwrap());
    let mut out = vec![0u8; n as usize * 4];
    ctx.copy_dtoh(&mut out, p).unwrap();
    for (i, v) in bytes_to_u32s(&out).iter().enumerate() {
        let want = if (i as u32) < n / 2 { 9 } else { 5 };
        assert_eq!(*v, want, "element {i}: stream order was not respected");
    }
    let elapsed = ctx.event_elapsed(start, mid).expect("elapsed");
    assert!(
        elapsed >= Duration::from_nanos(busy_ns * 95 / 100),
        "events measured {elapsed:?} around a 60 ms kernel"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "events measured {elapsed:?}"
    );
    for e in [start, mid, done] {
        ctx.event_destroy(e).unwrap();
    }
    ctx.stream_destroy(s1).unwrap();
    ctx.stream_destroy(s2).unwrap();
    ctx.mem_free(p).unwrap();
}

/// Device utilization rises while kernels run.
pub fn utilization_rises_under_load(backend: &dyn Backend) {
    let (dev, ctx) = first_context(backend);
    let k = load_test_kernels(&*ctx, backend.kind());
    let s = ctx.stream_create().unwrap();
    // 1 s of back-to-back 25 ms kernels. The window lies inside it whether the backend reads
    // history (the last 300 ms) or samples forward (the next 300 ms).
    for _ in 0..40 {
        ctx.launch(
            k.busy,
            &LaunchConfig::single(),
            s,
            &KernelArgs::new().u64(25_000_000),
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let util = dev
        .utilization(Duration::from_millis(300))
        .expect("utilization");
    assert!(
        t0.elapsed() < Duration::from_millis(650),
        "utilization() took too long to measure a 300 ms window"
    );
    assert!(
        util >= 50.0,
        "utilization {util:.1}% while a kernel runs back to back"
    );
    ctx.stream_synchronize(s).unwrap();
    ctx.stream_destroy(s).unwrap();
}

/// Sensors read without error, and what a backend reads is physically plausible (a core between
/// 0 and 150 °C, a board drawing between 0 and 2 kW). The simulated GPU reads both.
pub fn sensors_read_plausible_values(backend: &dyn Backend) {
    for info in backend.devices().unwrap() {
        let dev = backend.device(info.index).unwrap();
        let s = dev.sensors().expect("sensors");
        if let Some(t) = s.temperature_c {
            assert!((0.0..=150.0).contains(&t), "device {}: {t} °C", info.index);
        }
        if let Some(p) = s.power_w {
            assert!((0.0..=2000.0).contains(&p), "device {}: {p} W", info.index);
        }
        if backend.kind() == BackendKind::Fake {
            assert!(
                s.temperature_c.is_some() && s.power_w.is_some(),
                "the simulated GPU reads both sensors: {s:?}"
            );
        }
    }
}

/// Bad handles are errors, never crashes.
pub fn invalid_handles_are_rejected(backend: &dyn Backend) {
    let (_dev, ctx) = first_context(backend);
    let k = load_test_kernels(&*ctx, backend.kind());
    let p = ctx.mem_alloc(1024).unwrap();
    ctx.mem_free(p).unwrap();
    let bad_kinds = [ErrorKind::InvalidHandle, ErrorKind::InvalidValue];
    let e = ctx.mem_free(p).expect_err("double free must fail");
    assert!(bad_kinds.contains(&e.kind), "double free: {e}");
    let e = ctx
        .mem_free(DevicePtr(0xdead_0000))
        .expect_err("free of a pointer never allocated must fail");
    assert!(bad_kinds.contains(&e.kind), "bogus free: {e}");
    let e = ctx
        .function(k.module, "no_such_kernel")
        .expect_err("an unknown entry name must fail");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = ctx
        .function(ModuleHandle(0xbad), "tf_busy")
        .expect_err("an unknown module must fail");
    assert!(bad_kinds.contains(&e.kind), "bogus module: {e}");
    let e = ctx
        .launch(
            FunctionHandle(0xbad),
            &LaunchConfig::single(),
            StreamHandle::DEFAULT,
            &KernelArgs::new().u64(1),
        )
        .expect_err("launching an unknown function must fail");
    assert!(bad_kinds.contains(&e.kind), "bogus function: {e}");
    let e = ctx
        .stream_synchronize(StreamHandle(0xbad))
        .expect_err("an unknown stream must fail");
    assert!(bad_kinds.contains(&e.kind), "bogus stream: {e}");
    let e = ctx
        .event_record(EventHandle(0xbad), StreamHandle::DEFAULT)
        .expect_err("an unknown event must fail");
    assert!(bad_kinds.contains(&e.kind), "bogus event: {e}");
    let s = ctx.stream_create().unwrap();
    ctx.stream_destroy(s).unwrap();
    let e = ctx
        .stream_destroy(s)
        .expect_err("destroying a stream twice must fail");
    assert!(bad_kinds.contains(&e.kind), "stream double destroy: {e}");
    ctx.unload_module(k.module).unwrap();
    let e = ctx
        .function(k.module, "tf_busy")
        .expect_err("an unloaded module must fail");
    assert!(bad_kinds.contains(&e.kind), "unloaded module: {e}");
    // The context still works.
    let q = ctx.mem_alloc(16).unwrap();
    ctx.mem_free(q).unwrap();
}

/// Stream-ordered copies and memsets run after the work queued before them on their stream,
/// take pageable bytes at once, and move the right bytes; `stream_query` tells a busy stream
/// from an idle one; `memset_d16` writes 16-bit words; a kernel's parameter sizes are those of
/// its signature where the backend can tell.
pub fn async_copies_follow_stream_order(backend: &dyn Backend) {
    let (_dev, ctx) = first_context(backend);
    let k = load_test_kernels(&*ctx, backend.kind());
    let n: u32 = 8192;
    let bytes = n as u64 * 4;
    let (p, q) = (ctx.mem_alloc(bytes).unwrap(), ctx.mem_alloc(bytes).unwrap());
    ctx.memset_d32(p, 0, n as u64).unwrap();
    ctx.memset_d32(q, 0, n as u64).unwrap();
    let s = ctx.stream_create().unwrap();
    // A 50 ms kernel, then a fill of p with 3: everything below is queued behind them.
    ctx.launch(
        k.busy,
        &LaunchConfig::single(),
        s,
        &KernelArgs::new().u64(50_000_000),
    )
    .unwrap();
    ctx.launch(
        k.fill,
        &LaunchConfig::for_elements(n, 256),
        s,
        &KernelArgs::new().ptr(p).u32(3).u32(n),
    )
    .unwrap();
    assert!(
        !ctx.stream_query(s).expect("stream_query"),
        "a stream behind a 50 ms kernel cannot be idle at once"
    );
    // The first half of p from the host (the buffer is reused at once), ...
    let mut host = pattern(bytes as usize / 2, 0xa5);
    ctx.copy_htod_async(p, &host, s).expect("copy_htod_async");
    let sent = host.clone();
    host.fill(0);
    // ... 16 bytes of p set to 0x7f, then p copied to q, then q's tail set to 0x55667788.
    ctx.memset_d8_async(p.offset(16), 0x7f, 16, s)
        .expect("memset_d8_async");
    ctx.copy_dtod_async(q, p, bytes, s)
        .expect("copy_dtod_async");
    ctx.memset_d32_async(q.offset(bytes - 64), 0x5566_7788, 16, s)
        .expect("memset_d32_async");
    ctx.memset_d16_async(q.offset(bytes - 96), 0xbeef, 16, s)
        .expect("memset_d16_async");
    let mut out = vec![0u8; bytes as usize];
    ctx.copy_dtoh_async(&mut out, q, s)
        .expect("copy_dtoh_async");
    let mut want = sent.clone();
    want[16..32].fill(0x7f);
    want.extend(std::iter::repeat_n(3u32.to_le_bytes(), n as usize / 2).flatten());
    let len = want.len();
    for i in 0..16 {
        want[len - 96 + 2 * i..len - 96 + 2 * i + 2].copy_from_slice(&0xbeefu16.to_le_bytes());
    }
    for i in 0..16 {
        want[len - 64 + 4 * i..len - 60 + 4 * i].copy_from_slice(&0x5566_7788u32.to_le_bytes());
    }
    if let Some(i) = (0..len).find(|&i| out[i] != want[i]) {
        panic!(
            "stream-ordered copies and memsets: byte {i} is {:#x}, want {:#x}",
            out[i], want[i]
        );
    }
    ctx.stream_synchronize(s).unwrap();
    assert!(ctx.stream_query(s).unwrap(), "an idle stream reports busy");
    // The same bytes handed over in place, in order, and a sink's error stops the read.
    let mut seen = Vec::new();
    ctx.read_device(q, bytes, &mut |off, piece| {
        assert_eq!(off as usize, seen.len(), "read_device pieces out of order");
        seen.extend_from_slice(piece);
        Ok(())
    })
    .expect("read_device");
    assert!(seen == want, "read_device gave other bytes than copy_dtoh");
    let e = ctx
        .read_device(q, bytes, &mut |_, _| Err(Error::invalid_value("enough")))
        .expect_err("a sink's error must stop the read");
    assert_eq!(e.message, "enough");
    // Written in place from a source, in order.
    let mut at = 0u64;
    ctx.write_device(p, bytes, &mut |off, piece| {
        assert_eq!(off, at, "write_device pieces out of order");
        for (i, b) in piece.iter_mut().enumerate() {
            *b = ((off as usize + i) % 251) as u8;
        }
        at += piece.len() as u64;
        Ok(())
    })
    .expect("write_device");
    let mut wrote = vec![0u8; bytes as usize];
    ctx.copy_dtoh(&mut wrote, p).unwrap();
    assert!(
        wrote.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "write_device wrote other bytes"
    );
    ctx.copy_htod(p, &sent[..]).unwrap();

    ctx.memset_d16(p, 0x1234, 5).expect("memset_d16");
    let mut w = [0u8; 12];
    ctx.copy_dtoh(&mut w, p).unwrap();
    assert_eq!(
        &w[..10],
        &0x1234u16.to_le_bytes().repeat(5)[..],
        "memset_d16"
    );
    assert_eq!(&w[10..], &sent[10..12], "memset_d16 past its end");

    match ctx.function_param_sizes(k.vector_add) {
        Ok(sizes) => assert_eq!(sizes, [8, 8, 8, 4], "tf_vector_add_f32's parameters"),
        Err(e) => assert_eq!(e.kind, ErrorKind::NotSupported, "{e}"),
    }
    ctx.stream_destroy(s).unwrap();
    for x in [p, q] {
        ctx.mem_free(x).unwrap();
    }
    ctx.unload_module(k.module).unwrap();
}

/// The suite's one list of checks: invokes the macro named first (by path) with any tokens after
/// the comma, a `;`, then every check's name. [`hal_conformance_tests!`] and [`CHECKS`] are both
/// made from it, so a check added here runs on every backend.
#[doc(hidden)]
#[macro_export]
macro_rules! __hal_conformance_checks {
    ($($m:ident)::+ $(, $($extra:tt)*)?) => {
        $($m)::+!($($($extra)*)? ;
            enumeration_is_stable,
            memory_round_trips,
            out_of_memory_is_an_error,
            kernels_compute_correct_results,
            streams_and_events_order_work,
            utilization_rises_under_load,
            sensors_read_plausible_values,
            invalid_handles_are_rejected,
            async_copies_follow_stream_order
        );
    };
}

macro_rules! checks_table {
    (; $($check:ident),*) => {
        /// Every check of the suite by name, for test harnesses that run them their own way
        /// (in child processes, or with a filter of their own).
        pub const CHECKS: &[(&str, fn(&dyn Backend))] = &[$((stringify!($check), $check)),*];
    };
}

crate::__hal_conformance_checks!(checks_table);

/// Generate one `#[test]` per conformance check for a backend constructor expression
/// (evaluated once per test; it must yield something that derefs to `dyn Backend`).
#[macro_export]
macro_rules! hal_conformance_tests {
    ($make:expr) => {
        $crate::__hal_conformance_checks!($crate::hal_conformance_tests, @each $make);
    };
    (@each $make:expr ; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                let backend = $make;
                $crate::conformance::$check(&*backend);
            }
        )*
    };
}
