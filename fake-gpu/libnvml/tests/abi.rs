//! The built library as a C program sees it: loaded with `dlopen` under the real driver's name,
//! every function of `nvml.h` exported, the implemented ones answering like NVML (error paths
//! included), the rest answering NOT_SUPPORTED, and nothing crashing whatever the arguments.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use std::ffi::{CStr, CString, c_char, c_void};
use std::process::Command;

use common::{Machine, is_child, run_child};
use libloading::Library;
use tf_cuda_abi::nvml::*;
use tf_cuda_abi::nvml_types::*;
use tf_fake_gpu::{FakeGpu, MemKind};

/// Open the installed library named by the parent.
fn open_lib() -> Library {
    let path = std::env::var(common::LIB_ENV).expect("the parent names the library");
    // SAFETY: loading our own library, whose initialisers only set up Rust statics.
    unsafe { Library::new(path) }.expect("dlopen libnvidia-ml.so.1")
}

/// Look up a function; `T` must be the function's real signature.
fn sym<T: Copy>(lib: &Library, name: &str) -> T {
    let name = CString::new(name).unwrap();
    // SAFETY: every caller names T as the nvml.h signature of `name`.
    *unsafe { lib.get::<T>(name.as_bytes_with_nul()) }.unwrap_or_else(|e| panic!("{e}"))
}

type Dev = *mut c_void;

macro_rules! nvml {
    ($lib:expr, $name:ident($($arg:expr),*) as fn($($ty:ty),*)) => {{
        let f: unsafe extern "C" fn($($ty),*) -> u32 = sym(&$lib, stringify!($name));
        // SAFETY: arguments follow nvml.h (or are deliberately wrong in ways the library must
        // reject without touching memory: null pointers, bogus handles).
        unsafe { f($($arg),*) }
    }};
}

fn name_of(code: u32) -> &'static str {
    tf_cuda_abi::nvml_error_name(code).unwrap_or("?")
}

macro_rules! assert_code {
    ($got:expr, $want:expr) => {{
        let (got, want) = ($got, $want);
        assert_eq!(
            got,
            want,
            "{} returned {} ({}), expected {} ({})",
            stringify!($got),
            got,
            name_of(got),
            want,
            name_of(want)
        );
    }};
}

fn get_string(f: impl FnOnce(*mut c_char, u32) -> u32) -> String {
    let mut buf = [0 as c_char; 96];
    assert_code!(f(buf.as_mut_ptr(), buf.len() as u32), NVML_SUCCESS);
    // SAFETY: the library NUL-terminated what it wrote into our buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string()
}

const GIB: u64 = 1 << 30;

#[test]
fn nvml_calls_answer_like_nvml_on_an_isolated_machine() {
    let m = Machine::new("nvml-abi", 2);
    // This process holds 1 GiB on device 0 and keeps it busy for a while: the child must see
    // both through the shared segment.
    let gpu = FakeGpu::new(m.config.clone()).unwrap();
    let dev0 = gpu.device(0).unwrap();
    let ptr = dev0.alloc(GIB, MemKind::Device, 1, None).unwrap();
    // NVML's utilization is over the last second: let a full second of busy time pass.
    dev0.reserve(3_000_000_000).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1050));
    let mut env = m.env();
    env.push((
        "TF_NVML_TEST_PARENT".into(),
        std::process::id().to_string().into(),
    ));
    env.push((
        "TF_NVML_TEST_UUIDS".into(),
        format!("{},{}", m.config.devices[0].uuid, m.config.devices[1].uuid).into(),
    ));
    let out = run_child("api_checks", &env);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    dev0.free(ptr).unwrap();
    // An unimplemented function is logged once, however often it is called.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logged = stderr
        .matches("nvmlDeviceGetVgpuUtilization is not supported")
        .count();
    assert_eq!(logged, 1, "{stderr}");
}

#[test]
fn a_broken_profile_fails_init_with_a_clear_log() {
    let m = Machine::new("nvml-broken", 1);
    let mut env = m.env();
    let missing = m.dir.path().join("no-such-profile.toml");
    env[0].1 = missing.clone().into_os_string();
    let out = run_child("broken_profile", &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-profile.toml") && stderr.contains("nvmlInit"),
        "{stderr}"
    );
}

#[test]
#[ignore = "run in a child process by a_broken_profile_fails_init_with_a_clear_log"]
fn broken_profile() {
    if !is_child("broken_profile") {
        return;
    }
    let lib = open_lib();
    assert_code!(
        nvml!(lib, nvmlInit_v2() as fn()),
        NVML_ERROR_DRIVER_NOT_LOADED
    );
    let mut n = 0u32;
    assert_code!(
        nvml!(lib, nvmlDeviceGetCount_v2(&mut n) as fn(*mut u32)),
        NVML_ERROR_UNINITIALIZED
    );
    assert_code!(nvml!(lib, nvmlShutdown() as fn()), NVML_ERROR_UNINITIALIZED);
}

#[test]
#[ignore = "run in a child process by nvml_calls_answer_like_nvml_on_an_isolated_machine"]
fn api_checks() {
    if !is_child("api_checks") {
        return;
    }
    let parent: u32 = std::env::var("TF_NVML_TEST_PARENT")
        .unwrap()
        .parse()
        .unwrap();
    let uuids: Vec<String> = std::env::var("TF_NVML_TEST_UUIDS")
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    let lib = open_lib();
    let mut n = 0u32;

    // Before init.
    assert_code!(
        nvml!(lib, nvmlDeviceGetCount_v2(&mut n) as fn(*mut u32)),
        NVML_ERROR_UNINITIALIZED
    );
    assert_code!(nvml!(lib, nvmlShutdown() as fn()), NVML_ERROR_UNINITIALIZED);
    let err_str: unsafe extern "C" fn(u32) -> *const c_char = sym(&lib, "nvmlErrorString");
    let text = |code| {
        // SAFETY: nvmlErrorString returns a static NUL-terminated string for any code.
        unsafe { CStr::from_ptr(err_str(code)) }
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(text(NVML_ERROR_UNINITIALIZED), "Uninitialized");
    assert_eq!(text(NVML_ERROR_INSUFFICIENT_SIZE), "Insufficient Size");
    assert_eq!(text(0xdead), "Unknown Error");

    // Init is reference counted.
    assert_code!(nvml!(lib, nvmlInit_v2() as fn()), NVML_SUCCESS);
    assert_code!(nvml!(lib, nvmlInitWithFlags(0) as fn(u32)), NVML_SUCCESS);

    // System.
    let driver = get_string(|b, l| {
        nvml!(
            lib,
            nvmlSystemGetDriverVersion(b, l) as fn(*mut c_char, u32)
        )
    });
    assert_eq!(driver.split('.').count(), 3, "{driver}");
    let nvml_version =
        get_string(|b, l| nvml!(lib, nvmlSystemGetNVMLVersion(b, l) as fn(*mut c_char, u32)));
    assert!(nvml_version.ends_with(&driver), "{nvml_version}");
    let mut small = [0 as c_char; 4];
    assert_code!(
        nvml!(
            lib,
            nvmlSystemGetDriverVersion(small.as_mut_ptr(), 4) as fn(*mut c_char, u32)
        ),
        NVML_ERROR_INSUFFICIENT_SIZE
    );
    let mut cuda = 0i32;
    assert_code!(
        nvml!(
            lib,
            nvmlSystemGetCudaDriverVersion_v2(&mut cuda) as fn(*mut i32)
        ),
        NVML_SUCCESS
    );
    assert_eq!(cuda, 12090);
    let me = std::process::id();
    let pname = get_string(|b, l| {
        nvml!(
            lib,
            nvmlSystemGetProcessName(me, b, l) as fn(u32, *mut c_char, u32)
        )
    });
    let exe = std::env::current_exe().unwrap();
    assert!(
        pname.contains(exe.file_name().unwrap().to_str().unwrap().get(..8).unwrap()),
        "{pname}"
    );

    // Enumeration.
    assert_code!(
        nvml!(lib, nvmlDeviceGetCount_v2(&mut n) as fn(*mut u32)),
        NVML_SUCCESS
    );
    assert_eq!(n, 2);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetCount_v2(std::ptr::null_mut()) as fn(*mut u32)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );
    let handle = |i: u32| {
        let mut h: Dev = std::ptr::null_mut();
        assert_code!(
            nvml!(
                lib,
                nvmlDeviceGetHandleByIndex_v2(i, &mut h) as fn(u32, *mut Dev)
            ),
            NVML_SUCCESS
        );
        h
    };
    let (d0, d1) = (handle(0), handle(1));
    assert_ne!(d0, d1);
    let mut h: Dev = std::ptr::null_mut();
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetHandleByIndex_v2(2, &mut h) as fn(u32, *mut Dev)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetHandleByIndex_v2(0, std::ptr::null_mut()) as fn(u32, *mut Dev)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );

    // Identity, and lookups by UUID, PCI bus id and serial.
    let name = get_string(|b, l| {
        nvml!(
            lib,
            nvmlDeviceGetName(d0, b, l) as fn(Dev, *mut c_char, u32)
        )
    });
    assert_eq!(name, "NVIDIA H100 80GB HBM3");
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetName(d0, small.as_mut_ptr(), 4) as fn(Dev, *mut c_char, u32)
        ),
        NVML_ERROR_INSUFFICIENT_SIZE
    );
    for (i, d) in [d0, d1].into_iter().enumerate() {
        let uuid =
            get_string(|b, l| nvml!(lib, nvmlDeviceGetUUID(d, b, l) as fn(Dev, *mut c_char, u32)));
        assert_eq!(uuid, uuids[i]);
        let c = CString::new(uuid).unwrap();
        assert_code!(
            nvml!(
                lib,
                nvmlDeviceGetHandleByUUID(c.as_ptr(), &mut h) as fn(*const c_char, *mut Dev)
            ),
            NVML_SUCCESS
        );
        assert_eq!(h, d);
        let mut index = 99;
        assert_code!(
            nvml!(lib, nvmlDeviceGetIndex(d, &mut index) as fn(Dev, *mut u32)),
            NVML_SUCCESS
        );
        assert_eq!(index, i as u32);
        let serial = get_string(|b, l| {
            nvml!(
                lib,
                nvmlDeviceGetSerial(d, b, l) as fn(Dev, *mut c_char, u32)
            )
        });
        let c = CString::new(serial).unwrap();
        assert_code!(
            nvml!(
                lib,
                nvmlDeviceGetHandleBySerial(c.as_ptr(), &mut h) as fn(*const c_char, *mut Dev)
            ),
            NVML_SUCCESS
        );
        assert_eq!(h, d);
    }
    let unknown = c"GPU-00000000-0000-0000-0000-000000000000";
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetHandleByUUID(unknown.as_ptr(), &mut h) as fn(*const c_char, *mut Dev)
        ),
        NVML_ERROR_NOT_FOUND
    );
    for (bus_id, want) in [
        (c"00000000:18:00.0", d0),
        (c"0000:28:00.0", d1),
        (c"28:00.0", d1),
    ] {
        assert_code!(
            nvml!(
                lib,
                nvmlDeviceGetHandleByPciBusId_v2(bus_id.as_ptr(), &mut h)
                    as fn(*const c_char, *mut Dev)
            ),
            NVML_SUCCESS
        );
        assert_eq!(h, want, "{bus_id:?}");
    }
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetHandleByPciBusId_v2(c"0000:99:00.0".as_ptr(), &mut h)
                as fn(*const c_char, *mut Dev)
        ),
        NVML_ERROR_NOT_FOUND
    );

    // Bogus handles are rejected without being read.
    let mut local = 0u64;
    for bogus in [
        std::ptr::null_mut(),
        0x1234 as Dev,
        &mut local as *mut u64 as Dev,
    ] {
        let mut mem = nvmlMemory_t::default();
        assert_code!(
            nvml!(
                lib,
                nvmlDeviceGetMemoryInfo(bogus, &mut mem as *mut _ as *mut c_void)
                    as fn(Dev, *mut c_void)
            ),
            NVML_ERROR_INVALID_ARGUMENT
        );
        assert_code!(
            nvml!(
                lib,
                nvmlDeviceGetName(bogus, small.as_mut_ptr(), 4) as fn(Dev, *mut c_char, u32)
            ),
            NVML_ERROR_INVALID_ARGUMENT
        );
    }

    // PCI: the current struct, and the first version writing only the common prefix.
    // SAFETY: nvmlPciInfo_t is integers and char arrays, valid when zeroed.
    let mut pci: nvmlPciInfo_t = unsafe { std::mem::zeroed() };
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetPciInfo_v3(d0, &mut pci as *mut _ as *mut c_void) as fn(Dev, *mut c_void)
        ),
        NVML_SUCCESS
    );
    // SAFETY: the library NUL-terminated both ids.
    let bus_id = unsafe { CStr::from_ptr(pci.busId.as_ptr()) }
        .to_str()
        .unwrap();
    assert_eq!(bus_id, "00000000:18:00.0");
    // SAFETY: as above.
    let legacy = unsafe { CStr::from_ptr(pci.busIdLegacy.as_ptr()) }
        .to_str()
        .unwrap();
    assert_eq!(legacy, "0000:18:00.0");
    assert_eq!((pci.bus, pci.pciDeviceId), (0x18, 0x2330_10de));
    let mut raw = [0xaau8; std::mem::size_of::<nvmlPciInfo_t>()];
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetPciInfo(d0, raw.as_mut_ptr() as *mut c_void) as fn(Dev, *mut c_void)
        ),
        NVML_SUCCESS
    );
    let prefix = std::mem::size_of::<nvmlPciInfoLegacyPrefix>();
    assert!(
        raw[prefix..].iter().all(|&b| b == 0xaa),
        "v1 wrote past the common prefix"
    );
    assert_eq!(&raw[..12], b"0000:18:00.0");

    // Memory: device-wide, the parent's 1 GiB included; versioned v2.
    let mut mem = nvmlMemory_t::default();
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetMemoryInfo(d0, &mut mem as *mut _ as *mut c_void) as fn(Dev, *mut c_void)
        ),
        NVML_SUCCESS
    );
    assert_eq!(mem.total, 81559 << 20);
    assert_eq!(mem.used, GIB);
    assert_eq!(mem.free, mem.total - GIB);
    let mut mem2 = nvmlMemory_v2_t {
        version: NVML_MEMORY_V2,
        ..Default::default()
    };
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetMemoryInfo_v2(d1, &mut mem2 as *mut _ as *mut c_void)
                as fn(Dev, *mut c_void)
        ),
        NVML_SUCCESS
    );
    assert_eq!((mem2.total, mem2.used, mem2.reserved), (81559 << 20, 0, 0));
    mem2.version = 1;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetMemoryInfo_v2(d1, &mut mem2 as *mut _ as *mut c_void)
                as fn(Dev, *mut c_void)
        ),
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    );
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetMemoryInfo(d0, std::ptr::null_mut()) as fn(Dev, *mut c_void)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );
    let mut bar1 = nvmlBAR1Memory_t::default();
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetBAR1MemoryInfo(d0, &mut bar1 as *mut _ as *mut c_void)
                as fn(Dev, *mut c_void)
        ),
        NVML_SUCCESS
    );
    assert_eq!(bar1.bar1Total, 128 * GIB);
    assert_eq!(bar1.bar1Free + bar1.bar1Used, bar1.bar1Total);

    // Processes: the insufficient-size protocol, the v1 and v2/v3 structs.
    let mut count = 0u32;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetComputeRunningProcesses_v3(d0, &mut count, std::ptr::null_mut())
                as fn(Dev, *mut u32, *mut c_void)
        ),
        NVML_ERROR_INSUFFICIENT_SIZE
    );
    assert_eq!(count, 1);
    let mut infos = [nvmlProcessInfo_t::default(); 4];
    count = 4;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetComputeRunningProcesses_v3(
                d0,
                &mut count,
                infos.as_mut_ptr() as *mut c_void
            ) as fn(Dev, *mut u32, *mut c_void)
        ),
        NVML_SUCCESS
    );
    assert_eq!(count, 1);
    assert_eq!(
        infos[0],
        nvmlProcessInfo_t {
            pid: parent,
            usedGpuMemory: GIB,
            gpuInstanceId: u32::MAX,
            computeInstanceId: u32::MAX
        }
    );
    let mut v1 = [nvmlProcessInfo_v1_t::default(); 2];
    count = 2;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetComputeRunningProcesses(d0, &mut count, v1.as_mut_ptr() as *mut c_void)
                as fn(Dev, *mut u32, *mut c_void)
        ),
        NVML_SUCCESS
    );
    assert_eq!((count, v1[0].pid, v1[0].usedGpuMemory), (1, parent, GIB));
    count = 0;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetComputeRunningProcesses_v2(
                d0,
                &mut count,
                infos.as_mut_ptr() as *mut c_void
            ) as fn(Dev, *mut u32, *mut c_void)
        ),
        NVML_ERROR_INSUFFICIENT_SIZE
    );
    assert_eq!(count, 1);
    for f in [
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
    ] {
        let call: unsafe extern "C" fn(Dev, *mut u32, *mut c_void) -> u32 = sym(&lib, f);
        count = 0;
        assert_code!(
            // SAFETY: the nvml.h signature, with a count of 0 and no buffer.
            unsafe { call(d1, &mut count, std::ptr::null_mut()) },
            NVML_SUCCESS
        );
        assert_eq!(count, 0, "{f} on the idle device");
        // SAFETY: a null count must be rejected.
        let r = unsafe { call(d1, std::ptr::null_mut(), std::ptr::null_mut()) };
        assert_code!(r, NVML_ERROR_INVALID_ARGUMENT);
    }

    // Utilization: the parent keeps device 0 busy; device 1 is idle.
    let mut util = nvmlUtilization_t::default();
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetUtilizationRates(d0, &mut util as *mut _ as *mut c_void)
                as fn(Dev, *mut c_void)
        ),
        NVML_SUCCESS
    );
    assert!(util.gpu >= 90 && util.gpu <= 100, "{util:?}");
    assert!(util.memory > 0 && util.memory < util.gpu, "{util:?}");
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetUtilizationRates(d1, &mut util as *mut _ as *mut c_void)
                as fn(Dev, *mut c_void)
        ),
        NVML_SUCCESS
    );
    assert_eq!((util.gpu, util.memory), (0, 0));
    count = 0;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetProcessUtilization(d0, std::ptr::null_mut(), &mut count, 0)
                as fn(Dev, *mut c_void, *mut u32, u64)
        ),
        NVML_ERROR_INSUFFICIENT_SIZE
    );
    assert_eq!(count, 1);
    let mut samples = [nvmlProcessUtilizationSample_t::default(); 2];
    count = 2;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetProcessUtilization(d0, samples.as_mut_ptr() as *mut c_void, &mut count, 0)
                as fn(Dev, *mut c_void, *mut u32, u64)
        ),
        NVML_SUCCESS
    );
    assert_eq!((count, samples[0].pid), (1, parent));
    assert!(samples[0].smUtil >= 90, "{:?}", samples[0]);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetProcessUtilization(d1, samples.as_mut_ptr() as *mut c_void, &mut count, 0)
                as fn(Dev, *mut c_void, *mut u32, u64)
        ),
        NVML_ERROR_NOT_FOUND
    );

    // Thermals and power: plausible, and hotter and hungrier under load.
    let u32_of = |f: &str, d: Dev| {
        let call: unsafe extern "C" fn(Dev, *mut u32) -> u32 = sym(&lib, f);
        let mut v = 0u32;
        // SAFETY: the nvml.h signature of these getters.
        assert_code!(unsafe { call(d, &mut v) }, NVML_SUCCESS);
        assert_code!(
            // SAFETY: a null output must be rejected.
            unsafe { call(d, std::ptr::null_mut()) },
            NVML_ERROR_INVALID_ARGUMENT
        );
        v
    };
    let (p0, p1) = (
        u32_of("nvmlDeviceGetPowerUsage", d0),
        u32_of("nvmlDeviceGetPowerUsage", d1),
    );
    assert!((600_000..=700_000).contains(&p0), "busy power {p0} mW");
    assert_eq!(p1, 70_000, "idle power");
    assert_eq!(u32_of("nvmlDeviceGetEnforcedPowerLimit", d0), 700_000);
    assert_eq!(u32_of("nvmlDeviceGetPowerManagementLimit", d0), 700_000);
    let (mut lo, mut hi) = (0, 0);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetPowerManagementLimitConstraints(d0, &mut lo, &mut hi)
                as fn(Dev, *mut u32, *mut u32)
        ),
        NVML_SUCCESS
    );
    assert!(lo < hi && hi == 700_000);
    let (mut t0, mut t1) = (0u32, 0u32);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetTemperature(d0, NVML_TEMPERATURE_GPU, &mut t0) as fn(Dev, u32, *mut u32)
        ),
        NVML_SUCCESS
    );
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetTemperature(d1, NVML_TEMPERATURE_GPU, &mut t1) as fn(Dev, u32, *mut u32)
        ),
        NVML_SUCCESS
    );
    assert!(
        t0 > t1 && (25..=90).contains(&t0) && (25..=90).contains(&t1),
        "{t0} {t1}"
    );
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetTemperature(d0, 7, &mut t0) as fn(Dev, u32, *mut u32)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );
    assert_code!(
        nvml!(lib, nvmlDeviceGetFanSpeed(d0, &mut t0) as fn(Dev, *mut u32)),
        NVML_ERROR_NOT_SUPPORTED
    );
    let mut mhz = 0;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetMaxClockInfo(d0, NVML_CLOCK_SM, &mut mhz) as fn(Dev, u32, *mut u32)
        ),
        NVML_SUCCESS
    );
    assert_eq!(mhz, 1980);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetClockInfo(d1, NVML_CLOCK_SM, &mut mhz) as fn(Dev, u32, *mut u32)
        ),
        NVML_SUCCESS
    );
    assert!(mhz < 1980, "idle clock {mhz}");
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetClockInfo(d0, 99, &mut mhz) as fn(Dev, u32, *mut u32)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );

    // Modes and capabilities.
    let (mut a, mut b) = (9u32, 9u32);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetMigMode(d0, &mut a, &mut b) as fn(Dev, *mut u32, *mut u32)
        ),
        NVML_SUCCESS
    );
    assert_eq!((a, b), (NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_DISABLE));
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetMigMode(d0, &mut a, std::ptr::null_mut()) as fn(Dev, *mut u32, *mut u32)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );
    let (mut major, mut minor) = (0i32, 0i32);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetCudaComputeCapability(d0, &mut major, &mut minor)
                as fn(Dev, *mut i32, *mut i32)
        ),
        NVML_SUCCESS
    );
    assert_eq!((major, minor), (9, 0));
    assert_eq!(
        u32_of("nvmlDeviceGetArchitecture", d0),
        NVML_DEVICE_ARCH_HOPPER
    );
    assert_eq!(u32_of("nvmlDeviceGetNumGpuCores", d0), 16896);
    assert_eq!(u32_of("nvmlDeviceGetBrand", d0), NVML_BRAND_NVIDIA);
    assert_eq!(u32_of("nvmlDeviceGetMinorNumber", d1), 1);
    assert_eq!(u32_of("nvmlDeviceGetPerformanceState", d0), NVML_PSTATE_0);
    assert_eq!(
        u32_of("nvmlDeviceGetPersistenceMode", d0),
        NVML_FEATURE_ENABLED
    );
    assert_eq!(
        u32_of("nvmlDeviceGetComputeMode", d0),
        NVML_COMPUTEMODE_DEFAULT
    );
    assert_eq!(
        u32_of("nvmlDeviceGetDisplayMode", d0),
        NVML_FEATURE_DISABLED
    );
    assert_eq!(
        u32_of("nvmlDeviceGetDisplayActive", d0),
        NVML_FEATURE_DISABLED
    );
    assert_eq!(u32_of("nvmlDeviceGetMultiGpuBoard", d0), 0);
    assert_eq!(u32_of("nvmlDeviceGetCurrPcieLinkGeneration", d0), 5);
    assert_eq!(u32_of("nvmlDeviceGetCurrPcieLinkWidth", d0), 16);
    assert_eq!(u32_of("nvmlDeviceGetNumaNodeId", d0), 0);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetEccMode(d0, &mut a, &mut b) as fn(Dev, *mut u32, *mut u32)
        ),
        NVML_SUCCESS
    );
    assert_eq!((a, b), (NVML_FEATURE_ENABLED, NVML_FEATURE_ENABLED));
    let mut errors = 7u64;
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetTotalEccErrors(
                d0,
                NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                NVML_VOLATILE_ECC,
                &mut errors
            ) as fn(Dev, u32, u32, *mut u64)
        ),
        NVML_SUCCESS
    );
    assert_eq!(errors, 0);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetNvLinkState(d0, 0, &mut a) as fn(Dev, u32, *mut u32)
        ),
        NVML_SUCCESS
    );
    assert_eq!(a, NVML_FEATURE_ENABLED);
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetNvLinkState(d0, NVML_NVLINK_MAX_LINKS, &mut a) as fn(Dev, u32, *mut u32)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );
    for (x, y, want) in [
        (d0, d1, NVML_TOPOLOGY_NODE),
        (d0, d0, NVML_TOPOLOGY_INTERNAL),
    ] {
        assert_code!(
            nvml!(
                lib,
                nvmlDeviceGetTopologyCommonAncestor(x, y, &mut a) as fn(Dev, Dev, *mut u32)
            ),
            NVML_SUCCESS
        );
        assert_eq!(a, want);
    }
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetTopologyCommonAncestor(d0, 0x10 as Dev, &mut a) as fn(Dev, Dev, *mut u32)
        ),
        NVML_ERROR_INVALID_ARGUMENT
    );
    for (index, want) in [
        (NVML_P2P_CAPS_INDEX_NVLINK, NVML_P2P_STATUS_OK),
        (NVML_P2P_CAPS_INDEX_READ, NVML_P2P_STATUS_OK),
    ] {
        let f: unsafe extern "C" fn(Dev, Dev, u32, *mut u32) -> u32 =
            sym(&lib, "nvmlDeviceGetP2PStatus");
        // SAFETY: the nvml.h signature.
        assert_code!(unsafe { f(d0, d1, index, &mut a) }, NVML_SUCCESS);
        assert_eq!(a, want);
    }

    // MIG GPU-instance profiles (MIG is off, the profiles are listed as on an H100).
    let mut gip = nvmlGpuInstanceProfileInfo_v3_t {
        version: NVML_GPU_INSTANCE_PROFILE_INFO_V3,
        id: 0,
        sliceCount: 0,
        instanceCount: 0,
        multiprocessorCount: 0,
        copyEngineCount: 0,
        decoderCount: 0,
        encoderCount: 0,
        jpegCount: 0,
        ofaCount: 0,
        memorySizeMB: 0,
        name: [0; 96],
        capabilities: 0,
    };
    let profile_v: unsafe extern "C" fn(Dev, u32, *mut c_void) -> u32 =
        sym(&lib, "nvmlDeviceGetGpuInstanceProfileInfoV");
    let gip_ptr = &mut gip as *mut _ as *mut c_void;
    // SAFETY: the nvml.h signature with a versioned v3 struct.
    let r = unsafe { profile_v(d0, NVML_GPU_INSTANCE_PROFILE_7_SLICE, gip_ptr) };
    assert_code!(r, NVML_SUCCESS);
    // SAFETY: the library NUL-terminated the name.
    let gip_name = unsafe { CStr::from_ptr(gip.name.as_ptr()) }
        .to_str()
        .unwrap();
    assert_eq!(
        (gip_name, gip.sliceCount, gip.instanceCount),
        ("MIG 7g.80gb", 7, 1)
    );
    // SAFETY: as above.
    let r = unsafe { profile_v(d0, NVML_GPU_INSTANCE_PROFILE_1_SLICE, gip_ptr) };
    assert_code!(r, NVML_SUCCESS);
    // SAFETY: as above.
    let gip_name = unsafe { CStr::from_ptr(gip.name.as_ptr()) }
        .to_str()
        .unwrap();
    assert_eq!(
        (gip_name, gip.instanceCount, gip.memorySizeMB),
        ("MIG 1g.10gb", 7, 81559 / 8)
    );
    // SAFETY: as above; profile 6 (6 slices) is not offered, 0x11 is past the last profile.
    let r = unsafe { profile_v(d0, 6, gip_ptr) };
    assert_code!(r, NVML_ERROR_NOT_SUPPORTED);
    // SAFETY: as above.
    let r = unsafe { profile_v(d0, NVML_GPU_INSTANCE_PROFILE_COUNT, gip_ptr) };
    assert_code!(r, NVML_ERROR_INVALID_ARGUMENT);
    gip.version = 1;
    let gip_ptr = &mut gip as *mut _ as *mut c_void;
    // SAFETY: as above, with a wrong version that must be rejected.
    let r = unsafe { profile_v(d0, NVML_GPU_INSTANCE_PROFILE_1_SLICE, gip_ptr) };
    assert_code!(r, NVML_ERROR_ARGUMENT_VERSION_MISMATCH);

    // A function the simulated GPU does not implement.
    let (mut kind, mut samples_n) = (0u32, 0u32);
    for _ in 0..3 {
        assert_code!(
            nvml!(
                lib,
                nvmlDeviceGetVgpuUtilization(d0, 0, &mut kind, &mut samples_n, std::ptr::null_mut())
                    as fn(Dev, u64, *mut u32, *mut u32, *mut c_void)
            ),
            NVML_ERROR_NOT_SUPPORTED
        );
    }

    // Shutdown is reference counted; handles survive a re-init.
    assert_code!(nvml!(lib, nvmlShutdown() as fn()), NVML_SUCCESS);
    assert_code!(
        nvml!(lib, nvmlDeviceGetCount_v2(&mut n) as fn(*mut u32)),
        NVML_SUCCESS
    );
    assert_code!(nvml!(lib, nvmlShutdown() as fn()), NVML_SUCCESS);
    assert_code!(
        nvml!(lib, nvmlDeviceGetCount_v2(&mut n) as fn(*mut u32)),
        NVML_ERROR_UNINITIALIZED
    );
    assert_code!(
        nvml!(
            lib,
            nvmlDeviceGetMemoryInfo(d0, &mut mem as *mut _ as *mut c_void) as fn(Dev, *mut c_void)
        ),
        NVML_ERROR_UNINITIALIZED
    );
    assert_code!(nvml!(lib, nvmlShutdown() as fn()), NVML_ERROR_UNINITIALIZED);
    assert_code!(nvml!(lib, nvmlInit() as fn()), NVML_SUCCESS);
    assert_eq!(handle(0), d0);
    assert_code!(nvml!(lib, nvmlShutdown() as fn()), NVML_SUCCESS);
    println!(
        "api checks passed: {name}, {n} devices, driver {driver}, power {p0} mW busy / {p1} mW idle, {t0} °C"
    );
}

/// Every function name in nvml.h.
macro_rules! names {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        &[$(stringify!($name)),*]
    };
}
const ALL: &[&str] = tf_cuda_abi::nvml_functions!(names);

#[test]
fn every_nvml_h_function_is_exported() {
    let lib = tf_test_support::cdylib("libnvidia_ml.so").unwrap();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("run nm (binutils)");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (_, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
            (kind == "T").then_some(name)
        })
        .filter(|n| n.starts_with("nvml"))
        .collect();
    let missing: Vec<_> = ALL.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    let extra: Vec<_> = exported.iter().filter(|n| !ALL.contains(n)).collect();
    assert!(extra.is_empty(), "exported but not in nvml.h: {extra:?}");
    assert_eq!(ALL.len(), 387);
    for name in nvidia_ml::IMPLEMENTED {
        assert!(
            ALL.contains(name),
            "{name} is implemented but not in nvml.h"
        );
    }
    let soname = Command::new("readelf").arg("-d").arg(&lib).output();
    if let Ok(o) = soname {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("[libnvidia-ml.so.1]"), "SONAME:\n{text}");
    }
}

/// A zero of any argument type in nvml.h: 0, or a null pointer.
trait Zero {
    fn zero() -> Self;
}
impl Zero for u32 {
    fn zero() -> Self {
        0
    }
}
impl Zero for i32 {
    fn zero() -> Self {
        0
    }
}
impl Zero for u64 {
    fn zero() -> Self {
        0
    }
}
impl<T> Zero for *mut T {
    fn zero() -> Self {
        std::ptr::null_mut()
    }
}
impl<T> Zero for *const T {
    fn zero() -> Self {
        std::ptr::null()
    }
}

/// What a function returned, as a code (nvmlErrorString's string is not a code).
trait Code {
    fn code(self) -> Option<u32>;
}
impl Code for u32 {
    fn code(self) -> Option<u32> {
        Some(self)
    }
}
impl Code for *const c_char {
    fn code(self) -> Option<u32> {
        assert!(!self.is_null());
        None
    }
}

/// Call every function of nvml.h (but init and shutdown) with zeros and null pointers.
macro_rules! call_all {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        fn call_all(lib: &Library) -> Vec<(&'static str, Option<u32>)> {
            let mut results = Vec::new();
            $(
                if !matches!(stringify!($name), "nvmlInit" | "nvmlInit_v2" | "nvmlInitWithFlags" | "nvmlShutdown") {
                    let f: unsafe extern "C" fn($($ty),*) -> $ret = sym(lib, stringify!($name));
                    // SAFETY: the nvml.h signature; zeros and null pointers are arguments the
                    // library must reject (or ignore) without touching memory.
                    let r = unsafe { f($(<$ty as Zero>::zero()),*) };
                    results.push((stringify!($name), Code::code(r)));
                }
            )*
            results
        }
    };
}
tf_cuda_abi::nvml_functions!(call_all);

#[test]
fn every_function_answers_null_arguments_without_crashing() {
    let m = Machine::new("nvml-null", 1);
    let mut env = m.env();
    env.push(("TF_LOG".into(), "error".into()));
    let out = run_child("null_arguments", &env);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
#[ignore = "run in a child process by every_function_answers_null_arguments_without_crashing"]
fn null_arguments() {
    if !is_child("null_arguments") {
        return;
    }
    let lib = open_lib();
    let implemented = |n: &str| nvidia_ml::IMPLEMENTED.contains(&n);
    let check = |results: Vec<(&'static str, Option<u32>)>, initialised: bool| {
        let mut wrong = Vec::new();
        for (name, code) in &results {
            let Some(code) = *code else { continue };
            let want = if !implemented(name) {
                NVML_ERROR_NOT_SUPPORTED
            } else if initialised {
                NVML_ERROR_INVALID_ARGUMENT
            } else {
                NVML_ERROR_UNINITIALIZED
            };
            if code != want {
                wrong.push(format!(
                    "{name}: {} (expected {})",
                    name_of(code),
                    name_of(want)
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "initialised={initialised}:\n{}",
            wrong.join("\n")
        );
        results.len()
    };
    let n = check(call_all(&lib), false);
    assert_code!(nvml!(lib, nvmlInit_v2() as fn()), NVML_SUCCESS);
    check(call_all(&lib), true);
    assert_code!(nvml!(lib, nvmlShutdown() as fn()), NVML_SUCCESS);
    println!(
        "{n} functions called with null arguments before and after init: {} implemented answered UNINITIALIZED then INVALID_ARGUMENT, {} others NOT_SUPPORTED",
        nvidia_ml::IMPLEMENTED.len() - 5,
        n - (nvidia_ml::IMPLEMENTED.len() - 4)
    );
}
