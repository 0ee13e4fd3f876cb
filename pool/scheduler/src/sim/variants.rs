//! Workload variants generated from the default trace, for the kinds of workload the FGD
//! artifact evaluates but `../shared/traces/` does not hold.
//!
//! - **GPU-model-constrained** (`gpuspecNN`): GPU pods drawn at random (seeded) get a
//!   `gpu_spec` until the constrained pods make up `NN` % of the pod list's GPU request
//!   (about a third in Alibaba's production cluster). A pod's spec is drawn from
//!   [`SPEC_MENU`] (single models and the model families seen in Alibaba's production
//!   `gpu_spec` column) with probability proportional to the GPUs of the cluster that the spec
//!   allows *and* that could host the pod on an empty node (enough GPUs, CPU and memory), so
//!   every constrained pod stays placeable and demand follows supply.
//! - **CPU-heavy** (`cpuMMM`): the GPU pods are kept; the CPU-only pods are replaced by CPU-only
//!   pods drawn (seeded, with replacement) from the default trace's CPU-only pods until their
//!   CPU request reaches `MMM / 100` times that of the default trace's CPU-only pods
//!   (`cpu040` = 0.4x ... `cpu300` = 3x).
//!
//! Every variant is a pure function of (pod list, node list, parameter, seed).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::sim::trace::{TraceNode, TracePod};

/// The `gpu_spec` values constrained pods may get: every model alone, and the families of
/// interchangeable models that Alibaba's production trace uses.
pub const SPEC_MENU: &[&str] = &[
    "G2",
    "G3",
    "T4",
    "P100",
    "V100M16",
    "V100M32",
    "A10",
    "V100M16|V100M32",
    "P100|V100M16|V100M32",
    "P100|T4|V100M16|V100M32",
    "G2|P100|T4|V100M16|V100M32",
];

/// One kind of generated workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `percent` % of the GPU request made of pods restricted to named GPU models.
    GpuSpec {
        /// Share of the GPU request that is constrained, in percent (1..=100).
        percent: u32,
    },
    /// CPU-only pods whose CPU request is `multiple_pct / 100` times the default trace's.
    Cpu {
        /// The multiple, in percent (40 = 0.4x, 300 = 3x).
        multiple_pct: u32,
    },
}

impl Variant {
    /// The variants the README's table reports: GPU-model-constrained at 5, 10, 20, 25 and
    /// 33 %, CPU-heavy at 0.4x, 0.5x, 1x, 2x, 2.5x and 3x the default trace's CPU-only demand.
    pub fn standard() -> Vec<Variant> {
        let spec = [5, 10, 20, 25, 33].map(|percent| Variant::GpuSpec { percent });
        let cpu = [40, 50, 100, 200, 250, 300].map(|multiple_pct| Variant::Cpu { multiple_pct });
        spec.into_iter().chain(cpu).collect()
    }

    /// Short name: `gpuspec05`, `cpu250`, ...
    pub fn name(self) -> String {
        match self {
            Variant::GpuSpec { percent } => format!("gpuspec{percent:02}"),
            Variant::Cpu { multiple_pct } => format!("cpu{multiple_pct:03}"),
        }
    }

    /// File name the generator writes (`openb_pod_list_<name>.csv`).
    pub fn file_name(self) -> String {
        format!("openb_pod_list_{}.csv", self.name())
    }

    /// Parses a name as written by [`Variant::name`].
    pub fn parse(s: &str) -> Option<Variant> {
        if let Some(p) = s.strip_prefix("gpuspec") {
            let percent: u32 = p.parse().ok()?;
            return (1..=100)
                .contains(&percent)
                .then_some(Variant::GpuSpec { percent });
        }
        if let Some(m) = s.strip_prefix("cpu") {
            let multiple_pct: u32 = m.parse().ok()?;
            return (multiple_pct <= 10_000).then_some(Variant::Cpu { multiple_pct });
        }
        None
    }

    /// Generates the variant from the default pod list and the node list with `seed`.
    pub fn generate(self, pods: &[TracePod], nodes: &[TraceNode], seed: u64) -> Vec<TracePod> {
        match self {
            Variant::GpuSpec { percent } => gpu_spec_variant(pods, nodes, percent, seed),
            Variant::Cpu { multiple_pct } => cpu_variant(pods, multiple_pct, seed),
        }
    }
}

/// Mixes the variant's parameter into the seed so that variants drawn with one seed are
/// independent of each other.
fn rng_for(seed: u64, tag: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ tag)
}

/// GPUs of the cluster that `spec` allows and that could host `pod` on an empty node.
fn spec_weight(spec: &[&str], pod: &TracePod, nodes: &[TraceNode]) -> u64 {
    nodes
        .iter()
        .filter(|n| {
            n.gpus >= pod.num_gpu
                && n.cpu_milli >= pod.cpu_milli
                && n.memory_mib >= pod.memory_mib
                && spec.contains(&n.model.as_str())
        })
        .map(|n| n.gpus as u64)
        .sum()
}

/// GPU pods (drawn in a seeded random order) get a model constraint until constrained pods
/// hold `percent` % of the GPU request. Pods that already have one keep it and count.
pub fn gpu_spec_variant(
    pods: &[TracePod],
    nodes: &[TraceNode],
    percent: u32,
    seed: u64,
) -> Vec<TracePod> {
    let mut rng = rng_for(seed, 0x5ec0_0000 + percent as u64);
    let mut out = pods.to_vec();
    let total: u64 = out.iter().map(TracePod::gpu_demand_milli).sum();
    let target = total * percent.min(100) as u64 / 100;
    let mut constrained: u64 = out
        .iter()
        .filter(|p| !p.gpu_spec.is_empty())
        .map(TracePod::gpu_demand_milli)
        .sum();
    let mut order: Vec<usize> = (0..out.len())
        .filter(|&i| out[i].num_gpu > 0 && out[i].gpu_spec.is_empty())
        .collect();
    order.shuffle(&mut rng);
    let menu: Vec<Vec<&str>> = SPEC_MENU.iter().map(|s| s.split('|').collect()).collect();
    let mut weights_cache: HashMap<(u32, u64, u64), Vec<u64>> = HashMap::new();
    for i in order {
        if constrained >= target {
            break;
        }
        let pod = &out[i];
        let weights = weights_cache
            .entry((pod.num_gpu, pod.cpu_milli, pod.memory_mib))
            .or_insert_with(|| menu.iter().map(|s| spec_weight(s, pod, nodes)).collect());
        let sum: u64 = weights.iter().sum();
        if sum == 0 {
            continue;
        }
        let mut x = rng.random_range(0..sum);
        let mut pick = 0;
        for (k, &w) in weights.iter().enumerate() {
            if x < w {
                pick = k;
                break;
            }
            x -= w;
        }
        constrained += pod.gpu_demand_milli();
        out[i].gpu_spec = menu[pick].iter().map(|m| m.to_string()).collect();
    }
    out
}

/// Keeps the GPU pods and replaces the CPU-only pods by CPU-only pods drawn from them (with
/// replacement) until their CPU request reaches `multiple_pct / 100` times the original's.
pub fn cpu_variant(pods: &[TracePod], multiple_pct: u32, seed: u64) -> Vec<TracePod> {
    let mut rng = rng_for(seed, 0xc900_0000 + multiple_pct as u64);
    let cpu_only: Vec<&TracePod> = pods.iter().filter(|p| p.num_gpu == 0).collect();
    let mut out: Vec<TracePod> = pods.iter().filter(|p| p.num_gpu > 0).cloned().collect();
    if cpu_only.is_empty() {
        return out;
    }
    let base: u64 = cpu_only.iter().map(|p| p.cpu_milli).sum();
    let target = base * multiple_pct as u64 / 100;
    let mut added = 0u64;
    let mut k = 0usize;
    while added < target {
        let p = cpu_only[rng.random_range(0..cpu_only.len())];
        let mut q = p.clone();
        q.name = format!("{}-c{k:05}", p.name);
        k += 1;
        added += p.cpu_milli.max(1);
        out.push(q);
    }
    out
}
