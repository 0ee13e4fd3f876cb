//! Single-threaded placement throughput on a synthetic pool.
//!
//! The pool has `nodes` nodes of 8 GPUs (96 cores, 384 GiB, like the trace's G2 nodes). Requests
//! are drawn from the trace's most common shapes (below). The pool is first filled to 85 % of
//! its GPUs (untimed); then each timed decision is followed by untimed releases of random live
//! allocations that bring the pool back under 85 %, so decisions are measured on a busy,
//! fragmented pool with every node's state different.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::Scheduler;
use crate::policy::Policy;
use crate::profile::{ProfileEntry, WorkloadProfile};
use crate::types::{AllocationId, Amount, GpuSpec, NodeSpec, PoolConfig, Request, Vendor};

/// (num_gpu, gpu_milli, cpu_milli, memory_mib, count): the 48 most common pod shapes of
/// `openb_pod_list_default.csv` (94 % of its pods) and its most common multi-GPU shapes.
pub const TRACE_SHAPES: &[(u32, u32, u64, u64, u32)] = &[
    (1, 810, 3152, 5600, 1047),
    (1, 1000, 11300, 49152, 857),
    (1, 1000, 11400, 48128, 534),
    (1, 1000, 3152, 5600, 470),
    (1, 470, 11908, 47104, 388),
    (0, 0, 12500, 57344, 364),
    (1, 470, 8000, 30517, 360),
    (0, 0, 32000, 49152, 284),
    (1, 1000, 18708, 64512, 255),
    (1, 650, 11908, 47104, 237),
    (1, 1000, 9810, 41560, 195),
    (0, 0, 8000, 30517, 163),
    (1, 1000, 12000, 24576, 158),
    (1, 1000, 15700, 58368, 158),
    (1, 1000, 11908, 47104, 153),
    (0, 0, 15400, 51200, 120),
    (1, 320, 4000, 22888, 111),
    (1, 1000, 16000, 32768, 108),
    (1, 1000, 8000, 16384, 104),
    (1, 1000, 4000, 24576, 104),
    (1, 1000, 12000, 16384, 99),
    (0, 0, 16500, 51200, 95),
    (1, 1000, 14200, 58368, 93),
    (1, 230, 4000, 30517, 84),
    (1, 1000, 24200, 93184, 84),
    (1, 320, 4000, 15258, 78),
    (1, 590, 3152, 5600, 75),
    (1, 320, 8000, 30517, 72),
    (1, 550, 4152, 10600, 72),
    (1, 1000, 11400, 77824, 65),
    (1, 1000, 8000, 32768, 55),
    (1, 160, 4000, 15258, 53),
    (1, 460, 6000, 6144, 51),
    (1, 1000, 11900, 77824, 51),
    (1, 370, 4152, 10600, 45),
    (1, 1000, 12000, 15360, 44),
    (1, 320, 4000, 30517, 43),
    (1, 1000, 8200, 33792, 41),
    (1, 1000, 4000, 31250, 40),
    (1, 1000, 15200, 80896, 36),
    (1, 1000, 16000, 65536, 33),
    (1, 810, 4152, 10600, 31),
    (1, 460, 6000, 12288, 29),
    (1, 1000, 16400, 125952, 27),
    (1, 230, 4000, 22888, 26),
    (1, 220, 4000, 15258, 24),
    (1, 320, 1000, 2048, 22),
    (1, 160, 6000, 22888, 20),
    (8, 1000, 88000, 327680, 18),
    (8, 1000, 64200, 263168, 18),
    (4, 1000, 32200, 132096, 9),
    (2, 1000, 16200, 66560, 7),
];

/// What the bench measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchResult {
    /// Nodes in the pool.
    pub nodes: usize,
    /// GPUs in the pool.
    pub gpus: usize,
    /// Timed decisions.
    pub decisions: usize,
    /// Of which placed.
    pub placed: usize,
    /// Seconds spent in timed decisions.
    pub seconds: f64,
    /// Decisions per second.
    pub decisions_per_s: f64,
}

/// The bench's request distribution as a profile.
pub fn shapes_profile() -> WorkloadProfile {
    WorkloadProfile {
        entries: TRACE_SHAPES
            .iter()
            .map(|&(n, g, cpu, mem, count)| ProfileEntry {
                gpu_count: n,
                tflops: Amount::Permille(g),
                vram: Amount::Permille(g),
                cpu_milli: cpu,
                memory_bytes: mem << 20,
                models: Vec::new(),
                vendor: None,
                dedicated: false,
                weight: count as f64,
            })
            .collect(),
    }
}

fn draw(rng: &mut StdRng, cum: &[u32]) -> (Request, u64) {
    let x = rng.random_range(0..*cum.last().expect("shapes"));
    let i = cum.partition_point(|&c| c <= x);
    let (n, g, cpu, mem, _) = TRACE_SHAPES[i];
    let mut r = Request::new("bench", "default", n).with_host(cpu, mem << 20);
    if n > 0 {
        r = r.with_share(g);
    }
    (r, n as u64 * g as u64)
}

/// Runs the bench: `decisions` timed decisions on `nodes` nodes with `policy`.
pub fn throughput(nodes: usize, decisions: usize, policy: Policy, seed: u64) -> BenchResult {
    let mut s = Scheduler::with_seed(policy, seed);
    s.add_pool(PoolConfig::new("bench")).expect("fresh");
    for i in 0..nodes {
        let gpus = (0..8)
            .map(|k| {
                let mut g = GpuSpec::new("G2", Vendor::Nvidia, 100, 32);
                g.topology.numa_node = (k / 4) as u8;
                g
            })
            .collect();
        s.add_node(NodeSpec {
            name: format!("node-{i:05}"),
            pool: "bench".into(),
            cpu_milli: 96_000,
            memory_bytes: 384 << 30,
            gpus,
        })
        .expect("unique names");
    }
    if policy.uses_profile() {
        s.set_workload_profile("bench", shapes_profile())
            .expect("pool exists");
    }
    let mut cum = Vec::with_capacity(TRACE_SHAPES.len());
    let mut acc = 0;
    for &(_, _, _, _, c) in TRACE_SHAPES {
        acc += c;
        cum.push(acc);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let gpus = nodes * 8;
    let target = gpus as u64 * 1000 * 85 / 100;
    let mut live: Vec<(AllocationId, u64)> = Vec::new();
    let mut used = 0u64;
    // Untimed fill; stop after a run of failures (the pool is as full as it gets).
    let mut failures = 0;
    while used < target && failures < 64 {
        let (r, d) = draw(&mut rng, &cum);
        match s.reserve(&r) {
            Ok(a) => {
                used += d;
                live.push((a.id, d));
                failures = 0;
            }
            Err(_) => failures += 1,
        }
    }
    let mut spent = Duration::ZERO;
    let mut placed = 0;
    for _ in 0..decisions {
        let (r, d) = draw(&mut rng, &cum);
        let t0 = Instant::now();
        let res = s.reserve(&r);
        spent += t0.elapsed();
        if let Ok(a) = res {
            placed += 1;
            used += d;
            live.push((a.id, d));
        }
        while used > target && !live.is_empty() {
            let k = rng.random_range(0..live.len());
            let (id, d) = live.swap_remove(k);
            s.release(id).expect("live allocation");
            used -= d;
        }
    }
    let seconds = spent.as_secs_f64();
    BenchResult {
        nodes,
        gpus,
        decisions,
        placed,
        seconds,
        decisions_per_s: decisions as f64 / seconds.max(1e-9),
    }
}
