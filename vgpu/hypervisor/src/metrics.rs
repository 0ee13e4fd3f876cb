//! Prometheus metrics: a fresh registry per scrape, filled from one snapshot of the node (so a
//! removed vGPU's series disappear with it).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::api;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
    uuid: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VgpuLabels {
    vgpu: String,
    device: String,
    qos: String,
}

type G = Family<DeviceLabels, Gauge<f64, AtomicU64>>;
type V = Family<VgpuLabels, Gauge<f64, AtomicU64>>;
type C = Family<VgpuLabels, Counter<f64, AtomicU64>>;

/// The text exposition of `devices` and `vgpus` (OpenMetrics text, which Prometheus reads).
pub fn encode(devices: &[api::Device], vgpus: &[api::Vgpu]) -> String {
    let mut reg = Registry::with_prefix("tf");
    let mut dev = |name: &str, help: &str| {
        let f = G::default();
        reg.register(name, help, f.clone());
        f
    };
    let util = dev(
        "device_utilization_ratio",
        "Share of the last second in which a kernel ran",
    );
    let mem_used = dev("device_memory_used_bytes", "Device memory in use");
    let mem_total = dev("device_memory_total_bytes", "Device memory");
    let c_req = dev(
        "device_compute_requested_ratio",
        "Sum of the compute requests of the device's vGPUs",
    );
    let v_req = dev(
        "device_vram_requested_bytes",
        "Sum of the VRAM requests of the device's vGPUs",
    );
    let temperature = dev(
        "device_temperature_celsius",
        "GPU core temperature (where the backend reads it)",
    );
    let power = dev(
        "device_power_watts",
        "Board power draw (where the backend reads it)",
    );
    for d in devices {
        let l = DeviceLabels {
            device: d.index.to_string(),
            uuid: d.uuid.clone(),
            model: d.model.clone(),
        };
        if let Some(u) = d.utilization {
            util.get_or_create(&l).set(u);
        }
        if let Some(t) = d.temperature_c {
            temperature.get_or_create(&l).set(t);
        }
        if let Some(p) = d.power_w {
            power.get_or_create(&l).set(p);
        }
        mem_used.get_or_create(&l).set(d.used_memory_bytes as f64);
        mem_total.get_or_create(&l).set(d.total_memory_bytes as f64);
        c_req.get_or_create(&l).set(d.compute_requested);
        v_req.get_or_create(&l).set(d.vram_requested_bytes as f64);
    }
    let mut vg = |name: &str, help: &str| {
        let f = V::default();
        reg.register(name, help, f.clone());
        f
    };
    let target = vg(
        "vgpu_target_share_ratio",
        "The share of its device the vGPU is paced at now",
    );
    let achieved = vg(
        "vgpu_achieved_share_ratio",
        "The share of its device the vGPU's processes used over the last 500 ms",
    );
    let request = vg("vgpu_compute_request_ratio", "Guaranteed share");
    let limit = vg("vgpu_compute_limit_ratio", "Share cap");
    let vram_used = vg("vgpu_vram_used_bytes", "VRAM charged to the vGPU");
    let vram_quota = vg("vgpu_vram_quota_bytes", "VRAM limit (quota)");
    let vram_req = vg("vgpu_vram_request_bytes", "Guaranteed VRAM");
    let attached = vg("vgpu_attached_processes", "Attached front ends");
    let qos = vg(
        "vgpu_qos_level",
        "QoS level: 0 low, 1 medium, 2 high, 3 critical",
    );
    let mut ctr = |name: &str, help: &str| {
        let f = C::default();
        reg.register(name, help, f.clone());
        f
    };
    let throttled = ctr(
        "vgpu_throttled_seconds",
        "Time launches of the vGPU were held back by pacing",
    );
    let launches = ctr("vgpu_launches", "Kernel launches admitted");
    let busy = ctr(
        "vgpu_busy_seconds",
        "Device time used by the vGPU's processes while the daemon watched",
    );
    for v in vgpus {
        let l = VgpuLabels {
            vgpu: v.name.clone(),
            device: v.device_index.to_string(),
            qos: v.qos.clone(),
        };
        target.get_or_create(&l).set(v.target_share);
        achieved.get_or_create(&l).set(v.achieved_share);
        request.get_or_create(&l).set(v.compute_request);
        limit.get_or_create(&l).set(v.compute_limit);
        vram_used.get_or_create(&l).set(v.vram_used_bytes as f64);
        vram_quota.get_or_create(&l).set(v.vram_limit_bytes as f64);
        vram_req.get_or_create(&l).set(v.vram_request_bytes as f64);
        attached.get_or_create(&l).set(v.attached_pids.len() as f64);
        let level = match v.qos.as_str() {
            "low" => 0.0,
            "high" => 2.0,
            "critical" => 3.0,
            _ => 1.0,
        };
        qos.get_or_create(&l).set(level);
        throttled
            .get_or_create(&l)
            .inc_by(v.throttled_ns as f64 / 1e9);
        launches.get_or_create(&l).inc_by(v.launches as f64);
        busy.get_or_create(&l).inc_by(v.busy_ns as f64 / 1e9);
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::error!(error = %e, "encoding metrics");
    }
    out
}
