//! Replay of the Alibaba GPU trace by the FGD paper's published protocol.
//!
//! Per seed: the GPU nodes in shuffled order; every pod in shuffled order, then pods cloned
//! uniformly at random (with replacement) until the next clone would push the total GPU request
//! past 1.3 x the cluster's GPUs. Pods are submitted one at a time, with no departures, retries
//! or preemption; a pod that does not fit is dropped but counts as arrived. A pod's `gpu_milli`
//! becomes the same share of its GPU's TFLOPS and VRAM; node CPU and memory count.
//!
//! The metric follows the paper's analysis scripts: after every submission, the arrived
//! workload (% of the cluster's GPUs) is rounded to a whole percent, and the unallocated GPU %
//! reported for a percent is the mean over the submissions that round to it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::engine::Scheduler;
use crate::policy::Policy;
use crate::profile::{ProfileEntry, WorkloadProfile};
use crate::sim::trace::{TraceNode, TracePod};
use crate::types::{Amount, GpuSpec, NodeSpec, PoolConfig, Qos, Request, TopologyMode, Vendor};

/// Arrived-workload points the simulator reports, in % of cluster GPUs.
pub const REPORT_POINTS: [u32; 7] = [80, 90, 95, 100, 110, 120, 130];
/// Workload generated, in % of cluster GPUs.
pub const MAX_ARRIVED_PCT: u64 = 130;
const POOL: &str = "openb";

/// (TFLOPS, VRAM GiB) assumed for each trace model. Shares are relative, so these only make
/// the model concrete; G2/G3 are undisclosed and get plausible values.
pub fn model_capacity(model: &str) -> (u64, u64) {
    match model {
        "T4" => (65, 16),
        "P100" => (19, 16),
        "V100M16" => (125, 16),
        "V100M32" => (125, 32),
        "A10" => (125, 24),
        "G2" => (100, 32),
        "G3" => (150, 48),
        _ => (100, 32),
    }
}

/// One seed's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Unallocated GPU % at each of [`REPORT_POINTS`] (NaN when the run never got there).
    pub unalloc_pct: Vec<f64>,
    /// Pods submitted.
    pub submitted: usize,
    /// Pods dropped.
    pub dropped: usize,
    /// Seconds the replay took.
    pub seconds: f64,
}

/// Median and mean over seeds at one arrived-workload point.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Policy name.
    pub policy: String,
    /// Arrived workload, % of cluster GPUs.
    pub arrived_pct: u32,
    /// Median over seeds of the unallocated GPU %.
    pub unalloc_gpu_pct_median: f64,
    /// Mean over seeds of the unallocated GPU %.
    pub unalloc_gpu_pct_mean: f64,
}

/// The request distribution the profile-driven policies are given: every pod shape with its
/// frequency in the pod list (what FGD calls the target workload).
pub fn trace_profile(pods: &[TracePod]) -> WorkloadProfile {
    use std::collections::HashMap;
    let mut counts: HashMap<(u32, u32, u64, u64, Vec<String>), f64> = HashMap::new();
    for p in pods {
        *counts
            .entry((
                p.num_gpu,
                p.gpu_milli,
                p.cpu_milli,
                p.memory_mib << 20,
                p.gpu_spec.clone(),
            ))
            .or_insert(0.0) += 1.0;
    }
    let mut list: Vec<_> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    WorkloadProfile {
        entries: list
            .into_iter()
            .map(|((n, g, cpu, mem, spec), w)| ProfileEntry {
                gpu_count: n,
                tflops: Amount::Permille(g),
                vram: Amount::Permille(g),
                cpu_milli: cpu,
                memory_bytes: mem,
                models: spec,
                vendor: None,
                dedicated: false,
                weight: w,
            })
            .collect(),
    }
}

/// The pool the simulator builds.
pub const POOL_NAME: &str = POOL;

fn request(p: &TracePod) -> Request {
    // Every pod at the lowest QoS: the protocol has no preemption.
    request_as(p, Qos::Low)
}

/// A pod as a request with the given QoS. The trace says nothing about topology, so the pod
/// ignores it (as the FGD simulator does).
pub fn request_as(p: &TracePod, qos: Qos) -> Request {
    let mut r = Request::new(POOL, "default", p.num_gpu).with_host(p.cpu_milli, p.memory_mib << 20);
    if p.num_gpu > 0 {
        r = r.with_share(p.gpu_milli).with_models(&p.gpu_spec);
    }
    r.with_qos(qos).with_topology(TopologyMode::Ignore)
}

/// The trace's QoS class as the engine's (`BE` low, `Burstable` medium, `LS` high,
/// `Guaranteed` critical; absent: low).
pub fn trace_qos(p: &TracePod) -> Qos {
    p.qos
        .as_deref()
        .and_then(|q| q.parse().ok())
        .unwrap_or(Qos::Low)
}

/// The protocol's submission order for one seed: the GPU nodes shuffled, then all pods
/// shuffled and clones appended until the next would pass 1.3 x the cluster's GPUs.
pub fn protocol_order<'a>(
    nodes: &'a [TraceNode],
    pods: &'a [TracePod],
    seed: u64,
) -> (Vec<&'a TraceNode>, Vec<&'a TracePod>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<&TraceNode> = nodes.iter().filter(|n| n.gpus > 0).collect();
    order.shuffle(&mut rng);
    let total_gpus: u64 = order.iter().map(|n| n.gpus as u64).sum();
    let mut workload: Vec<&TracePod> = pods.iter().collect();
    workload.shuffle(&mut rng);
    let cap = MAX_ARRIVED_PCT * total_gpus * 1000 / 100;
    let mut total: u64 = workload.iter().map(|p| p.gpu_demand_milli()).sum();
    loop {
        let p = &pods[rng.random_range(0..pods.len())];
        if total + p.gpu_demand_milli() > cap {
            break;
        }
        total += p.gpu_demand_milli();
        workload.push(p);
    }
    (order, workload)
}

/// A cluster replayed up to an arrived workload.
pub struct Replay {
    /// The scheduler, as the replay left it.
    pub scheduler: Scheduler,
    /// GPUs in the cluster.
    pub total_gpus: u64,
    /// Arrived GPU demand, milli-GPU.
    pub arrived_milli: u64,
    /// Allocated GPU demand, milli-GPU.
    pub allocated_milli: u64,
    /// Pods submitted.
    pub submitted: usize,
    /// Pods dropped.
    pub dropped: usize,
}

/// Replays one seed by the protocol until the arrived workload reaches `arrived_pct` % of the
/// cluster's GPUs. With `qos_from_trace`, pods keep the trace's QoS class (preemption stays
/// off, so placements are those of the protocol).
pub fn replay_to(
    nodes: &[TraceNode],
    pods: &[TracePod],
    policy: Policy,
    seed: u64,
    arrived_pct: u32,
    qos_from_trace: bool,
) -> Replay {
    let (order, workload) = protocol_order(nodes, pods, seed);
    let total_gpus: u64 = order.iter().map(|n| n.gpus as u64).sum();
    let mut sched = build_cluster(&order, policy, seed);
    sched.set_preemption(false);
    if policy.uses_profile() {
        sched
            .set_workload_profile(POOL, trace_profile(pods))
            .expect("pool exists");
    }
    let stop = arrived_pct as u64 * total_gpus * 1000 / 100;
    let (mut arrived, mut allocated, mut submitted, mut dropped) = (0u64, 0u64, 0usize, 0usize);
    for p in workload {
        if arrived >= stop {
            break;
        }
        arrived += p.gpu_demand_milli();
        submitted += 1;
        let qos = if qos_from_trace {
            trace_qos(p)
        } else {
            Qos::Low
        };
        match sched.reserve(&request_as(p, qos)) {
            Ok(_) => allocated += p.gpu_demand_milli(),
            Err(_) => dropped += 1,
        }
    }
    Replay {
        scheduler: sched,
        total_gpus,
        arrived_milli: arrived,
        allocated_milli: allocated,
        submitted,
        dropped,
    }
}

/// Builds the cluster (GPU nodes only, in the given order) in a fresh scheduler.
pub fn build_cluster(nodes: &[&TraceNode], policy: Policy, seed: u64) -> Scheduler {
    let mut s = Scheduler::with_seed(policy, seed);
    s.add_pool(PoolConfig::new(POOL)).expect("fresh scheduler");
    for n in nodes {
        let (tf, vram) = model_capacity(&n.model);
        let gpus = (0..n.gpus)
            .map(|i| {
                let mut g = GpuSpec::new(&n.model, Vendor::Nvidia, tf, vram);
                g.topology.numa_node = (i * 2 / n.gpus.max(1)) as u8;
                g
            })
            .collect();
        s.add_node(NodeSpec {
            name: n.name.clone(),
            pool: POOL.into(),
            cpu_milli: n.cpu_milli,
            memory_bytes: n.memory_mib << 20,
            gpus,
        })
        .expect("trace node names are unique");
    }
    s
}

/// Replays one seed.
pub fn run_seed(nodes: &[TraceNode], pods: &[TracePod], policy: Policy, seed: u64) -> SeedResult {
    let start = Instant::now();
    let (order, workload) = protocol_order(nodes, pods, seed);
    let total_gpus: u64 = order.iter().map(|n| n.gpus as u64).sum();
    let mut sched = build_cluster(&order, policy, seed);
    if policy.uses_profile() {
        sched
            .set_workload_profile(POOL, trace_profile(pods))
            .expect("pool exists");
    }

    let denom = (total_gpus * 1000) as f64;
    let mut sums = vec![0.0f64; MAX_ARRIVED_PCT as usize + 2];
    let mut counts = vec![0u32; MAX_ARRIVED_PCT as usize + 2];
    let (mut arrived, mut allocated) = (0u64, 0u64);
    let mut dropped = 0;
    for p in &workload {
        arrived += p.gpu_demand_milli();
        match sched.reserve(&request(p)) {
            Ok(_) => allocated += p.gpu_demand_milli(),
            Err(_) => dropped += 1,
        }
        let a = arrived as f64 * 100.0 / denom;
        let bucket = a.round() as usize;
        if bucket < sums.len() {
            sums[bucket] += 100.0 - allocated as f64 * 100.0 / denom;
            counts[bucket] += 1;
        }
    }
    let at = |x: usize| -> f64 {
        if counts[x] > 0 {
            return sums[x] / counts[x] as f64;
        }
        let (lo, hi) = (x.saturating_sub(1), (x + 1).min(sums.len() - 1));
        let (s, c) = (lo..=hi).fold((0.0, 0u32), |(s, c), i| (s + sums[i], c + counts[i]));
        if c > 0 { s / c as f64 } else { f64::NAN }
    };
    SeedResult {
        seed,
        unalloc_pct: REPORT_POINTS.iter().map(|&x| at(x as usize)).collect(),
        submitted: workload.len(),
        dropped,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Median of a slice (NaNs removed); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Replays seeds `0..seeds` on up to `threads` threads; `progress` hears about each seed.
pub fn run(
    nodes: &[TraceNode],
    pods: &[TracePod],
    policy: Policy,
    seeds: u64,
    threads: usize,
    progress: &(dyn Fn(&SeedResult) + Sync),
) -> (Vec<Summary>, Vec<SeedResult>) {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, seeds.max(1) as usize) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed) as u64;
                    if seed >= seeds {
                        break;
                    }
                    let r = run_seed(nodes, pods, policy, seed);
                    progress(&r);
                    results.lock().expect("no panics while held").push(r);
                }
            });
        }
    });
    let mut results = results.into_inner().expect("threads joined");
    results.sort_by_key(|r| r.seed);
    let summaries = REPORT_POINTS
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let vals: Vec<f64> = results.iter().map(|r| r.unalloc_pct[i]).collect();
            let finite: Vec<f64> = vals.iter().copied().filter(|v| !v.is_nan()).collect();
            Summary {
                policy: policy.name().to_string(),
                arrived_pct: x,
                unalloc_gpu_pct_median: median(&vals),
                unalloc_gpu_pct_mean: if finite.is_empty() {
                    f64::NAN
                } else {
                    finite.iter().sum::<f64>() / finite.len() as f64
                },
            }
        })
        .collect();
    (summaries, results)
}
