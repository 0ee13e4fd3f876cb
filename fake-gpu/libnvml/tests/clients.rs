//! Third-party NVML clients the project did not write, unmodified, against the simulated GPU:
//!
//! - NVIDIA's Python bindings (`nvidia-ml-py`, `import pynvml`) loading `libnvidia-ml.so.1` from
//!   `LD_LIBRARY_PATH`, while a `tf-fake-gpu-load` process holds memory and keeps a device busy;
//! - the `nvml-wrapper` crate (which the CUDA backend uses), pointed at the installed library.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Machine, is_child, kill, run_child, spawn_load, wait_for};
use serde_json::Value;
use tf_fake_gpu::load::LoadSpec;
use tf_fake_gpu::{FakeGpu, MemKind, sys};

/// The pinned client: the bindings of the R575 driver branch (CUDA 12.9, the headers the ABI
/// comes from).
const PYNVML: &str = "nvidia-ml-py==12.575.51";

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

load_child_test!();

#[test]
fn pynvml_sees_devices_processes_and_utilization() {
    let pythonpath = tf_test_support::python_packages(&[PYNVML]).expect("install nvidia-ml-py");
    let m = Machine::new("pynvml", 2);
    let gpu = FakeGpu::new(m.config.clone()).unwrap();
    let dev0 = gpu.device(0).unwrap();

    // A load process holding 2 GiB on device 0 and running back-to-back kernels for long enough.
    let spec = LoadSpec {
        device: 0,
        // Long kernels, several in flight: the device stays fed even when this shared machine
        // is slow to schedule the load process.
        kernel_ns: 10_000_000,
        until_ns: sys::now_ns() + 30_000_000_000,
        window_start_ns: 0,
        window_end_ns: 0,
        alloc_bytes: 2 * GIB,
        depth: 4,
    };
    let load = spawn_load(&m, &spec);
    let load_pid = load.id();
    wait_for("the load to allocate", Duration::from_secs(20), || {
        dev0.memory().used_bytes == 2 * GIB
    });
    // NVML's utilization is over the last second: wait for a full busy second.
    wait_for(
        "a second of back-to-back kernels",
        Duration::from_secs(20),
        || dev0.segment().utilization(1_000_000_000) > 95.0,
    );

    let out = Command::new(tf_test_support::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/pynvml_client.py"
        ))
        .env("PYTHONPATH", &pythonpath)
        .env("LD_LIBRARY_PATH", &m.lib_dir)
        .env("TF_FAKE_GPU_CONFIG", &m.config_path)
        .output()
        .expect("run python");
    kill(load);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pynvml client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .expect("the client's report");
    let r: Value = serde_json::from_str(json).unwrap();

    assert_eq!(r["driver"], "575.57.08");
    assert_eq!(r["cuda"], 12090);
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    for (d, p) in devices.iter().zip(&m.config.devices) {
        assert_eq!(d["name"], p.model.as_str());
        assert_eq!(d["uuid"], p.uuid.as_str());
        assert_eq!(d["bus_id"], p.pci_bus_id.as_str());
        assert_eq!(d["total"], p.memory_bytes);
        assert_eq!(d["total_v2"], p.memory_bytes);
        assert_eq!(d["total"].as_u64(), Some(81559 * MIB));
        assert_eq!(d["mig"], serde_json::json!([0, 0]));
        assert_eq!(d["cc"], serde_json::json!([9, 0]));
        assert_eq!(d["fan"], Value::Null);
        assert_eq!(d["power_limit_mw"], 700_000);
    }
    let (busy, idle) = (&devices[0], &devices[1]);

    // The load process, with its memory, in the process list of device 0 only.
    let procs = busy["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert_eq!(procs[0]["pid"], load_pid);
    assert_eq!(procs[0]["used"], 2 * GIB);
    assert!(
        procs[0]["name"]
            .as_str()
            .unwrap()
            .contains("tf-fake-gpu-load")
            || procs[0]["name"].as_str().unwrap().contains("clients"),
        "{procs:?}"
    );
    assert_eq!(busy["used"], 2 * GIB);
    assert_eq!(idle["processes"], serde_json::json!([]));
    assert_eq!(idle["used"], 0);

    // Utilization near 100 % on the busy device, 0 on the idle one; power and temperature follow.
    let util = busy["gpu_util"].as_u64().unwrap();
    assert!((90..=100).contains(&util), "gpu utilization {util}%");
    assert_eq!(idle["gpu_util"], 0);
    let samples = busy["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0]["pid"], load_pid);
    assert!(samples[0]["sm"].as_u64().unwrap() >= 90, "{samples:?}");
    assert_eq!(idle["samples"], serde_json::json!([]));
    let (p_busy, p_idle) = (
        busy["power_mw"].as_u64().unwrap(),
        idle["power_mw"].as_u64().unwrap(),
    );
    assert!(p_busy > 600_000 && p_idle == 70_000, "{p_busy} {p_idle}");
    assert!(busy["temperature"].as_u64() > idle["temperature"].as_u64());
    assert_eq!(busy["sm_clock"], busy["max_sm_clock"]);

    // NVIDIA's own sample that ships in the wheel (an `nvidia-smi -q`-like XML report).
    let out = Command::new(tf_test_support::python())
        .arg(pythonpath.join("example.py"))
        .env("PYTHONPATH", &pythonpath)
        .env("LD_LIBRARY_PATH", &m.lib_dir)
        .env("TF_FAKE_GPU_CONFIG", &m.config_path)
        .output()
        .expect("run python");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example.py failed:\n{report}");
    eprintln!("{report}");
    assert!(
        !report.contains("example.py:"),
        "example.py hit an NVML error:\n{report}"
    );
    assert!(
        report.contains("<attached_gpus>2</attached_gpus>"),
        "{report}"
    );
    for p in &m.config.devices {
        assert!(
            report.contains(&format!("<uuid>{}</uuid>", p.uuid)),
            "{report}"
        );
        assert!(
            report.contains(&format!("<gpu id=\"{}\">", p.pci_bus_id)),
            "{report}"
        );
    }
    assert!(report.contains("<product_name>NVIDIA H100 80GB HBM3</product_name>"));
    assert!(report.contains("<virtualization_mode>None</virtualization_mode>"));
}

#[test]
fn nvml_wrapper_reads_the_simulated_machine() {
    let m = Machine::new("nvml-wrapper", 2);
    // This process holds 512 MiB on device 1 and keeps it busy.
    let gpu = FakeGpu::new(m.config.clone()).unwrap();
    let dev1 = gpu.device(1).unwrap();
    let ptr = dev1.alloc(512 * MIB, MemKind::Device, 1, None).unwrap();
    dev1.reserve(3_000_000_000).unwrap();
    std::thread::sleep(Duration::from_millis(1050));
    let mut env = m.env();
    env.push((
        "TF_NVML_TEST_PARENT".into(),
        std::process::id().to_string().into(),
    ));
    let out = run_child("nvml_wrapper_child", &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .expect("the child's report");
    let r: Value = serde_json::from_str(json).unwrap();
    assert_eq!(r["count"], 2);
    assert_eq!(r["driver"], "575.57.08");
    assert_eq!(r["cuda"], 12090);
    let devices = r["devices"].as_array().unwrap();
    for (d, p) in devices.iter().zip(&m.config.devices) {
        assert_eq!(d["name"], p.model.as_str());
        assert_eq!(d["uuid"], p.uuid.as_str());
        assert_eq!(d["bus_id"], p.pci_bus_id.as_str());
        assert_eq!(d["total"], p.memory_bytes);
        assert_eq!(d["cc"], serde_json::json!([9, 0]));
        assert_eq!(d["by_uuid_index"], d["index"]);
    }
    assert_eq!(devices[0]["processes"], serde_json::json!([]));
    assert_eq!(
        devices[1]["processes"],
        serde_json::json!([[std::process::id(), 512 * MIB]])
    );
    assert_eq!(devices[1]["used"], 512 * MIB);
    assert!(devices[1]["gpu_util"].as_u64().unwrap() >= 90, "{r}");
    assert_eq!(devices[0]["gpu_util"], 0);
    // The MIG profiles are the engine's partition templates.
    let mut want: Vec<Value> = dev1
        .partition_templates()
        .iter()
        .map(|t| {
            let slices: u32 = t.name.split('g').next().unwrap().parse().unwrap();
            serde_json::json!([
                slices,
                t.memory_bytes >> 20,
                t.compute_units,
                t.max_instances
            ])
        })
        .collect();
    let mut got = devices[1]["mig_profiles"].as_array().unwrap().clone();
    let key = |v: &Value| v.to_string();
    want.sort_by_key(key);
    got.sort_by_key(key);
    assert_eq!(got, want);
    dev1.free(ptr).unwrap();
}

#[test]
#[ignore = "run in a child process by nvml_wrapper_reads_the_simulated_machine"]
fn nvml_wrapper_child() {
    use nvml_wrapper::Nvml;
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    use nvml_wrapper::enums::device::UsedGpuMemory;

    if !is_child("nvml_wrapper_child") {
        return;
    }
    let lib = std::env::var_os(common::LIB_ENV).unwrap();
    let nvml = Nvml::builder()
        .lib_path(&lib)
        .init()
        .expect("nvml-wrapper init");
    let count = nvml.device_count().unwrap();
    let mut devices = Vec::new();
    for i in 0..count {
        let d = nvml.device_by_index(i).unwrap();
        let uuid = d.uuid().unwrap();
        let mem = d.memory_info().unwrap();
        let util = d.utilization_rates().unwrap();
        let pci = d.pci_info().unwrap();
        let cc = d.cuda_compute_capability().unwrap();
        let processes: Vec<(u32, u64)> = d
            .running_compute_processes()
            .unwrap()
            .into_iter()
            .map(|p| {
                let used = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => b,
                    UsedGpuMemory::Unavailable => u64::MAX,
                };
                (p.pid, used)
            })
            .collect();
        let line = serde_json::json!({
            "index": d.index().unwrap(),
            "by_uuid_index": nvml.device_by_uuid(uuid.as_str()).unwrap().index().unwrap(),
            "name": d.name().unwrap(),
            "uuid": uuid,
            "bus_id": pci.bus_id,
            "total": mem.total,
            "used": mem.used,
            "gpu_util": util.gpu,
            "cc": [cc.major, cc.minor],
            "temperature": d.temperature(TemperatureSensor::Gpu).unwrap(),
            "power_mw": d.power_usage().unwrap(),
            "power_limit_mw": d.enforced_power_limit().unwrap(),
            "sm_clock": d.clock_info(Clock::SM).unwrap(),
            "processes": processes,
            // MIG is off, but the GPU-instance profiles are there, as on an H100.
            "mig_profiles": (0..nvml_wrapper_sys::bindings::NVML_GPU_INSTANCE_PROFILE_COUNT)
                .filter_map(|p| d.profile_info(p).ok())
                .map(|i| (i.slice_count, i.memory_size_mb, i.multiprocessor_count, i.instance_count))
                .collect::<Vec<_>>(),
        });
        println!(
            "nvml-wrapper GPU {i}: {} {} {} MiB used of {} MiB, util {}%, {} C, {} mW, processes {:?}",
            line["name"],
            line["uuid"],
            mem.used >> 20,
            mem.total >> 20,
            util.gpu,
            line["temperature"],
            line["power_mw"],
            line["processes"]
        );
        devices.push(line);
    }
    let report = serde_json::json!({
        "count": count,
        "driver": nvml.sys_driver_version().unwrap(),
        "cuda": nvml.sys_cuda_driver_version().unwrap(),
        "devices": devices,
    });
    nvml.shutdown().unwrap();
    println!("JSON {report}");
}
