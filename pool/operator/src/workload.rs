//! A Pod's GPU request, from TensorFusion's annotations (over a WorkloadProfile) or HAMi's
//! resource names, checked value by value. Every refusal names the annotation and the fix.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use tf_pool_api::annotations as ann;
use tf_pool_api::quantity::{parse_bytes, parse_milli};
use tf_pool_api::{Isolation, QosLevel, WorkloadProfileSpec};
use tf_scheduler::{Amount, Qos, Request, Vendor};

/// One refused value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The annotation (or resource name) at fault.
    pub annotation: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}; fix: {}",
            self.annotation, self.problem, self.fix
        )
    }
}

/// Refusals joined for an admission message.
pub fn refusals_message(r: &[Refusal]) -> String {
    r.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Gang scheduling settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gang {
    /// Members needed before any is placed.
    pub min_members: u32,
    /// How long to wait for them, in seconds.
    pub timeout_s: u64,
}

/// A Pod's vGPU request, resolved and checked in form (not yet against the cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRequest {
    /// GPUPool.
    pub pool: String,
    /// milli-TFLOPS requested per GPU (absolute), unless a compute percent is given.
    pub tflops_request: Option<u64>,
    /// milli-TFLOPS limit per GPU.
    pub tflops_limit: Option<u64>,
    /// VRAM bytes requested per GPU.
    pub vram_request: Option<u64>,
    /// VRAM bytes limit per GPU.
    pub vram_limit: Option<u64>,
    /// Compute percent requested per GPU.
    pub compute_percent_request: Option<u32>,
    /// Compute percent limit per GPU.
    pub compute_percent_limit: Option<u32>,
    /// GPUs.
    pub gpu_count: u32,
    /// Model required.
    pub model: Option<String>,
    /// Vendor required.
    pub vendor: Option<Vendor>,
    /// QoS.
    pub qos: QosLevel,
    /// Local GPU (true) or a remote worker (false).
    pub is_local: bool,
    /// Isolation.
    pub isolation: Isolation,
    /// WorkloadProfile named.
    pub profile: Option<String>,
    /// Containers to inject into (`None`: all).
    pub inject_containers: Option<Vec<String>>,
    /// Whole GPUs.
    pub dedicated: bool,
    /// Worker as a sidecar.
    pub sidecar_worker: bool,
    /// Gang settings.
    pub gang: Option<Gang>,
    /// Whether the request came from HAMi's resource names.
    pub from_hami: bool,
}

impl GpuRequest {
    /// The engine's request for this Pod, charged to `namespace`.
    pub fn to_engine(&self, namespace: &str) -> Request {
        let mut r = Request::new(&self.pool, namespace, self.gpu_count);
        r.tflops = match (self.compute_percent_request, self.tflops_request) {
            (Some(p), _) => Amount::Permille(p * 10),
            (None, Some(t)) => Amount::Absolute(t),
            (None, None) => Amount::Absolute(0),
        };
        r.tflops_limit = match (self.compute_percent_limit, self.tflops_limit) {
            (Some(p), _) => Some(Amount::Permille(p * 10)),
            (None, Some(t)) => Some(Amount::Absolute(t)),
            _ => None,
        };
        r.vram = Amount::Absolute(self.vram_request.unwrap_or(0));
        r.vram_limit = self.vram_limit.map(Amount::Absolute);
        r.qos = match self.qos {
            QosLevel::Low => Qos::Low,
            QosLevel::Medium => Qos::Medium,
            QosLevel::High => Qos::High,
            QosLevel::Critical => Qos::Critical,
        };
        if let Some(m) = &self.model {
            r.models = vec![m.clone()];
        }
        r.vendor = self.vendor;
        r.dedicated = self.dedicated;
        r
    }
}

/// Whether the Pod opted in (label `tensor-fusion.ai/enabled: "true"`) or asks for HAMi's
/// `nvidia.com/gpu`.
pub fn wants_gpu(pod: &Pod) -> bool {
    let labelled = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ann::ENABLED_LABEL))
        .is_some_and(|v| v == "true");
    labelled || hami_count(pod).is_some()
}

fn container_limit(pod: &Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.containers.iter().find_map(|c| {
        let res = c.resources.as_ref()?;
        res.limits
            .as_ref()
            .and_then(|l| l.get(name))
            .or_else(|| res.requests.as_ref().and_then(|r| r.get(name)))
            .map(|q| q.0.clone())
    })
}

fn hami_count(pod: &Pod) -> Option<String> {
    container_limit(pod, ann::hami::GPU)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A Go duration (`30s`, `5m`, `1h30m`, `500ms`) in whole seconds (rounded up).
pub fn parse_duration_s(v: &str) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut total_ms: u128 = 0;
    let mut rest = v;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let ms = match &rest[..u] {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return None,
        };
        rest = &rest[u..];
        total_ms += (num * ms).ceil() as u128;
    }
    u64::try_from(total_ms.div_ceil(1000)).ok()
}

/// Parses a Pod's request: annotations first, then the named WorkloadProfile's values
/// (`profile`, looked up by the caller), then HAMi's resource names, then defaults.
/// `default_pool` is used when neither the annotations nor the profile name a pool.
pub fn parse(
    pod: &Pod,
    profile: Option<&WorkloadProfileSpec>,
    default_pool: Option<&str>,
) -> Result<GpuRequest, Vec<Refusal>> {
    let empty = BTreeMap::new();
    let a = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut bad = Vec::new();
    let mut refuse = |annotation: &str, problem: String, fix: &str| {
        bad.push(Refusal {
            annotation: annotation.to_string(),
            problem,
            fix: fix.to_string(),
        })
    };
    let get = |k: &str| a.get(k).map(|s| s.trim().to_string());
    let p = profile.cloned().unwrap_or_default();
    let (p_req, p_lim) = match &p.resources {
        Some(r) => (Some(r.requests.clone()), Some(r.limits.clone())),
        None => (None, None),
    };

    let milli =
        |key: &str, fallback: Option<String>, refuse: &mut dyn FnMut(&str, String, &str)| {
            let v = get(key).or(fallback)?;
            match parse_milli(&v) {
                Ok(x) => Some(x),
                Err(e) => {
                    refuse(
                        key,
                        e.to_string(),
                        "write TFLOPS as a quantity, e.g. \"10\" or \"12.5\"",
                    );
                    None
                }
            }
        };
    let bytes =
        |key: &str, fallback: Option<String>, refuse: &mut dyn FnMut(&str, String, &str)| {
            let v = get(key).or(fallback)?;
            match parse_bytes(&v) {
                Ok(x) => Some(x),
                Err(e) => {
                    refuse(
                        key,
                        e.to_string(),
                        "write VRAM as a byte quantity, e.g. \"4Gi\" or \"512Mi\"",
                    );
                    None
                }
            }
        };
    let percent =
        |key: &str, fallback: Option<u32>, refuse: &mut dyn FnMut(&str, String, &str)| match get(
            key,
        ) {
            None => fallback,
            Some(v) => match v.parse::<u32>() {
                Ok(x) if (1..=100).contains(&x) => Some(x),
                _ => {
                    refuse(
                        key,
                        format!("{v:?} is not a percent from 1 to 100"),
                        "write a whole number of percent, e.g. \"25\"",
                    );
                    None
                }
            },
        };
    let boolean = |key: &str,
                   fallback: Option<bool>,
                   refuse: &mut dyn FnMut(&str, String, &str)| match get(key) {
        None => fallback.unwrap_or(false),
        Some(v) => parse_bool(&v).unwrap_or_else(|| {
            refuse(
                key,
                format!("{v:?} is not a boolean"),
                "write \"true\" or \"false\"",
            );
            false
        }),
    };

    let tflops_request = milli(
        ann::TFLOPS_REQUEST,
        p_req.as_ref().map(|r| r.tflops.clone()),
        &mut refuse,
    );
    let tflops_limit = milli(
        ann::TFLOPS_LIMIT,
        p_lim.as_ref().map(|r| r.tflops.clone()),
        &mut refuse,
    );
    let mut vram_request = bytes(
        ann::VRAM_REQUEST,
        p_req.as_ref().map(|r| r.vram.clone()),
        &mut refuse,
    );
    let vram_limit = bytes(
        ann::VRAM_LIMIT,
        p_lim.as_ref().map(|r| r.vram.clone()),
        &mut refuse,
    );
    let mut compute_percent_request = percent(
        ann::COMPUTE_PERCENT_REQUEST,
        p.compute_percent_request,
        &mut refuse,
    );
    let compute_percent_limit = percent(
        ann::COMPUTE_PERCENT_LIMIT,
        p.compute_percent_limit,
        &mut refuse,
    );

    let mut from_hami = false;
    let mut gpu_count = match get(ann::GPU_COUNT) {
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                refuse(
                    ann::GPU_COUNT,
                    format!("{v:?} is not a GPU count from 1 to 64"),
                    "write a positive whole number, e.g. \"1\"",
                );
                1
            }
        },
        None => p.gpu_count.unwrap_or(1),
    };
    if let Some(v) = hami_count(pod) {
        from_hami = true;
        match v.parse::<u32>() {
            Ok(n) if (1..=64).contains(&n) => gpu_count = n,
            _ => refuse(
                ann::hami::GPU,
                format!("{v:?} is not a GPU count from 1 to 64"),
                "set the container limit nvidia.com/gpu to a positive whole number",
            ),
        }
        if let Some(m) = container_limit(pod, ann::hami::GPU_MEM) {
            match m.parse::<u64>() {
                Ok(mib) if mib > 0 => vram_request = vram_request.or(Some(mib << 20)),
                _ => refuse(
                    ann::hami::GPU_MEM,
                    format!("{m:?} is not a whole number of MiB"),
                    "set nvidia.com/gpumem to VRAM in MiB, e.g. \"4096\"",
                ),
            }
        }
        if let Some(c) = container_limit(pod, ann::hami::GPU_CORES) {
            match c.parse::<u32>() {
                Ok(x) if (1..=100).contains(&x) => {
                    compute_percent_request = compute_percent_request.or(Some(x))
                }
                _ => refuse(
                    ann::hami::GPU_CORES,
                    format!("{c:?} is not a percent from 1 to 100"),
                    "set nvidia.com/gpucores to a whole percent, e.g. \"30\"",
                ),
            }
        }
    }

    // Limits below requests.
    if let (Some(r), Some(l)) = (tflops_request, tflops_limit)
        && l < r
    {
        refuse(
            ann::TFLOPS_LIMIT,
            format!("the limit {l} mTFLOPS is below the request {r} mTFLOPS"),
            "raise tflops-limit to at least tflops-request (or lower the request)",
        );
    }
    if let (Some(r), Some(l)) = (vram_request, vram_limit)
        && l < r
    {
        refuse(
            ann::VRAM_LIMIT,
            format!("the limit {l} bytes is below the request {r} bytes"),
            "raise vram-limit to at least vram-request (or lower the request)",
        );
    }
    if let (Some(r), Some(l)) = (compute_percent_request, compute_percent_limit)
        && l < r
    {
        refuse(
            ann::COMPUTE_PERCENT_LIMIT,
            format!("the limit {l} % is below the request {r} %"),
            "raise compute-percent-limit to at least compute-percent-request",
        );
    }

    let qos = match get(ann::QOS) {
        Some(v) => match v.as_str() {
            "low" => QosLevel::Low,
            "medium" => QosLevel::Medium,
            "high" => QosLevel::High,
            "critical" => QosLevel::Critical,
            _ => {
                refuse(
                    ann::QOS,
                    format!("{v:?} is not a QoS level"),
                    "write one of low, medium, high, critical",
                );
                QosLevel::Medium
            }
        },
        None => p.qos.unwrap_or_default(),
    };
    let isolation = match get(ann::ISOLATION) {
        Some(v) => match v.as_str() {
            "shared" => Isolation::Shared,
            "soft" => Isolation::Soft,
            "hard" => Isolation::Hard,
            "partitioned" => Isolation::Partitioned,
            _ => {
                refuse(
                    ann::ISOLATION,
                    format!("{v:?} is not an isolation mode"),
                    "write one of shared, soft, hard, partitioned",
                );
                Isolation::Soft
            }
        },
        None => p.isolation.unwrap_or_default(),
    };
    let vendor = match get(ann::VENDOR).or(p.vendor.clone()) {
        Some(v) => {
            let known = v.parse::<Vendor>().ok().filter(|v| *v != Vendor::Other);
            if known.is_none() {
                refuse(
                    ann::VENDOR,
                    format!("{v:?} is not a vendor tensor-fusion knows"),
                    "write e.g. nvidia, amd, ascend or intel",
                );
            }
            known
        }
        None => None,
    };
    let model = get(ann::GPU_MODEL).or(p.gpu_model.clone());
    if model.as_deref() == Some("") {
        refuse(
            ann::GPU_MODEL,
            "empty".into(),
            "name a GPU model of the pool, or leave it out",
        );
    }
    let is_local = boolean(
        ann::IS_LOCAL_GPU,
        p.is_local_gpu.or(Some(true)),
        &mut refuse,
    );
    let dedicated = boolean(ann::DEDICATED_GPU, p.dedicated_gpu, &mut refuse);
    let sidecar_worker = boolean(ann::SIDECAR_WORKER, p.sidecar_worker, &mut refuse);
    let gang_enabled = boolean(ann::GANG_ENABLED, None, &mut refuse);
    let min_members = match get(ann::GANG_MIN_MEMBERS) {
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                refuse(
                    ann::GANG_MIN_MEMBERS,
                    format!("{v:?} is not a positive whole number"),
                    "write the gang's size, e.g. \"4\"",
                );
                None
            }
        },
        None => None,
    };
    let timeout_s = match get(ann::GANG_TIMEOUT) {
        Some(v) => match parse_duration_s(&v) {
            Some(s) => Some(s),
            None => {
                refuse(
                    ann::GANG_TIMEOUT,
                    format!("{v:?} is not a duration"),
                    "write a duration such as \"30s\", \"5m\" or \"1h30m\"",
                );
                None
            }
        },
        None => None,
    };
    let gang = gang_enabled.then(|| Gang {
        min_members: min_members.unwrap_or(1),
        timeout_s: timeout_s.unwrap_or(300),
    });

    let container_names: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let inject_containers = match get(ann::INJECT_CONTAINER) {
        Some(v) => {
            let names: Vec<String> = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let unknown: Vec<&String> = names
                .iter()
                .filter(|n| !container_names.contains(n))
                .collect();
            if names.is_empty() || !unknown.is_empty() {
                refuse(
                    ann::INJECT_CONTAINER,
                    format!(
                        "{unknown:?} are not containers of the Pod (it has {container_names:?})"
                    ),
                    "list container names of this Pod, separated by commas",
                );
            }
            Some(names)
        }
        None => None,
    };
    let profile_name = get(ann::WORKLOAD_PROFILE);
    let pool = get(ann::GPU_POOL)
        .or(p.pool_name.clone())
        .or(default_pool.map(str::to_string));
    let pool = match pool {
        Some(p) if !p.is_empty() => p,
        _ => {
            refuse(
                ann::GPU_POOL,
                "no pool named and the cluster has no default pool".into(),
                "set tensor-fusion.ai/gpupool to a GPUPool's name",
            );
            String::new()
        }
    };
    if tflops_request.is_some() && compute_percent_request.is_some() && !from_hami {
        refuse(
            ann::COMPUTE_PERCENT_REQUEST,
            "both tflops-request and compute-percent-request are set".into(),
            "set one of them",
        );
    }
    if isolation == Isolation::Partitioned && model.is_none() {
        refuse(
            ann::ISOLATION,
            "partitioned isolation needs a GPU model to pick a partition template".into(),
            "set tensor-fusion.ai/gpu-model too",
        );
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(GpuRequest {
        pool,
        tflops_request,
        tflops_limit,
        vram_request,
        vram_limit,
        compute_percent_request,
        compute_percent_limit,
        gpu_count,
        model,
        vendor,
        qos,
        is_local,
        isolation,
        profile: profile_name,
        inject_containers,
        dedicated,
        sidecar_worker,
        gang,
        from_hami,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("30s"), Some(30));
        assert_eq!(parse_duration_s("5m"), Some(300));
        assert_eq!(parse_duration_s("1h30m"), Some(5400));
        assert_eq!(parse_duration_s("500ms"), Some(1));
        for bad in ["", "5", "m", "5x", "-1s"] {
            assert_eq!(parse_duration_s(bad), None, "{bad}");
        }
    }
}
