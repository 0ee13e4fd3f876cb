//! Property tests over random request streams: capacity is never exceeded (with the pool's
//! oversubscription), release restores capacity exactly, preemption only ever evicts
//! strictly lower QoS, a required topology tier holds on the GPUs granted, and a migration
//! either moves an allocation whole or changes nothing.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use std::collections::HashMap;

use proptest::prelude::*;
use tf_scheduler::{
    AllocationId, Amount, GpuSpec, NodeSpec, Policy, PoolConfig, Qos, Request, Scheduler,
    TopologyMode, TopologyTier, Vendor,
};

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        gpus: u32,
        tflops: Amount,
        vram: Amount,
        dedicated: bool,
        qos: usize,
        cpu: u64,
        pin: Option<(usize, u32)>,
        topo: usize,
    },
    Release(usize),
    /// Move live allocation k to node n, starting at GPU g.
    Migrate(usize, usize, u32),
}

fn amount(max_abs: u64) -> impl Strategy<Value = Amount> {
    prop_oneof![
        (1u32..=1000).prop_map(Amount::Permille),
        (1u64..=max_abs).prop_map(Amount::Absolute),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            0u32..=3,
            amount(120_000),
            amount(50 << 30),
            prop::bool::weighted(0.1),
            0usize..4,
            0u64..40_000,
            prop::option::weighted(0.15, (0usize..4, 0u32..4)),
            0usize..4,
        )
            .prop_map(|(gpus, tflops, vram, dedicated, qos, cpu, pin, topo)| Op::Reserve {
                gpus,
                tflops,
                vram,
                dedicated,
                qos,
                cpu,
                pin,
                topo,
            }),
        1 => (0usize..1000).prop_map(Op::Release),
        1 => (0usize..1000, 0usize..4, 0u32..4).prop_map(|(k, n, g)| Op::Migrate(k, n, g)),
    ]
}

/// Checks every GPU and node against the live allocations.
fn check_accounting(s: &Scheduler, nodes: &[String], ratios: (u32, u32)) {
    let mut gpu_used: HashMap<(String, u32), (u64, u64, u32)> = HashMap::new();
    let mut host_used: HashMap<String, (u64, u64)> = HashMap::new();
    for id in s.allocation_ids() {
        let a = s.allocation(id).expect("listed ids are live");
        let h = host_used.entry(a.node.clone()).or_default();
        h.0 += a.cpu_milli;
        h.1 += a.memory_bytes;
        for g in &a.gpus {
            let e = gpu_used.entry((a.node.clone(), g.gpu)).or_default();
            e.0 += g.tflops_milli;
            e.1 += g.vram_bytes;
            e.2 += 1;
        }
    }
    for name in nodes {
        let st = s.node_status(name).unwrap();
        let (cpu, mem) = host_used.get(name).copied().unwrap_or_default();
        assert!(st.cpu_free <= st.cpu_capacity && st.memory_free <= st.memory_capacity);
        assert_eq!(st.cpu_capacity - st.cpu_free, cpu, "{name}: CPU accounting");
        assert_eq!(st.memory_capacity - st.memory_free, mem, "{name}: memory");
        for (i, g) in st.gpus.iter().enumerate() {
            assert_eq!(
                g.tflops_capacity,
                g.tflops_physical * ratios.0 as u64 / 1000
            );
            assert_eq!(g.vram_capacity, g.vram_physical * ratios.1 as u64 / 1000);
            assert!(
                g.tflops_free <= g.tflops_capacity,
                "{name}/{i}: TFLOPS over capacity"
            );
            assert!(
                g.vram_free <= g.vram_capacity,
                "{name}/{i}: VRAM over capacity"
            );
            let (t, v, n) = gpu_used
                .get(&(name.clone(), i as u32))
                .copied()
                .unwrap_or_default();
            assert_eq!(g.tflops_capacity - g.tflops_free, t, "{name}/{i}: TFLOPS");
            assert_eq!(g.vram_capacity - g.vram_free, v, "{name}/{i}: VRAM");
            assert_eq!(g.allocations, n, "{name}/{i}: allocation count");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_respect_capacity_release_and_qos(
        policy in 0usize..Policy::ALL.len(),
        ratios in (1000u32..=3000, 1000u32..=2000),
        shape in prop::collection::vec((1usize..=4, 8_000u64..=64_000), 1..=4),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let policy = Policy::ALL[policy];
        let mut s = Scheduler::with_seed(policy, 7);
        s.add_pool(PoolConfig::new("p").with_oversubscription(ratios.0, ratios.1)).unwrap();
        let mut names = Vec::new();
        for (i, &(gpus, cpu)) in shape.iter().enumerate() {
            let name = format!("n{i}");
            let models = ["A", "B"];
            s.add_node(NodeSpec {
                name: name.clone(),
                pool: "p".into(),
                cpu_milli: cpu,
                memory_bytes: 64 << 30,
                gpus: (0..gpus)
                    .map(|k| {
                        let mut g = GpuSpec::new(models[i % 2], Vendor::Nvidia, 80 + 20 * k as u64, 24 + 8 * k as u64);
                        g.topology.numa_node = (k % 2) as u8;
                        // Even nodes: NVLink pairs (0,1) and (2,3); odd nodes: none.
                        g.topology.nvlink_domain = i.is_multiple_of(2).then_some((k / 2) as u16);
                        g
                    })
                    .collect(),
            }).unwrap();
            names.push(name);
        }
        let mut live: Vec<(AllocationId, Qos)> = Vec::new();
        for op in ops {
            match op {
                Op::Reserve { gpus, tflops, vram, dedicated, qos, cpu, pin, topo } => {
                    let qos = Qos::ALL[qos];
                    let topo = [
                        TopologyMode::Prefer,
                        TopologyMode::Ignore,
                        TopologyMode::Require(TopologyTier::NvLink),
                        TopologyMode::Require(TopologyTier::Numa),
                    ][topo];
                    let mut r = Request::new("p", "ns", gpus)
                        .with_host(cpu, 1 << 30)
                        .with_qos(qos)
                        .with_topology(topo);
                    if gpus > 0 {
                        r.tflops = tflops;
                        r.vram = vram;
                        r.dedicated = dedicated;
                        if let Some((node, gpu)) = pin {
                            r = r.with_pin(&format!("n{}", node % names.len()), &[gpu]);
                            r.gpu_count = 1;
                        }
                    }
                    let before: HashMap<AllocationId, Qos> = live.iter().copied().collect();
                    if let Ok(a) = s.reserve(&r) {
                        for v in &a.preempted {
                            let vq = before.get(v).copied().expect("victims were live");
                            prop_assert!(vq < qos, "{policy}: {qos} preempted {vq}");
                            prop_assert!(s.allocation(*v).is_none(), "victim still live");
                        }
                        live.retain(|(id, _)| !a.preempted.contains(id));
                        live.push((a.id, qos));
                        // A required tier holds on the GPUs granted (node i: NUMA k % 2,
                        // NVLink pair k / 2 on even nodes).
                        if let (TopologyMode::Require(t), true) = (topo, a.gpus.len() > 1) {
                            let node: usize = a.node[1..].parse().unwrap();
                            let ks: Vec<u32> = a.gpus.iter().map(|g| g.gpu).collect();
                            let numa = ks.iter().all(|k| k % 2 == ks[0] % 2);
                            let link = node.is_multiple_of(2) && ks.iter().all(|k| k / 2 == ks[0] / 2);
                            let tier = if link {
                                TopologyTier::NvLink
                            } else if numa {
                                TopologyTier::Numa
                            } else {
                                TopologyTier::Node
                            };
                            prop_assert!(tier >= t, "{policy}: {t} required, got {tier} ({ks:?} on {})", a.node);
                        }
                    }
                }
                Op::Migrate(k, n, g) => {
                    if !live.is_empty() {
                        let (id, _) = live[k % live.len()];
                        let before = s.allocation(id).unwrap();
                        let node = &names[n % names.len()];
                        let width = s.node_status(node).unwrap().gpus.len() as u32;
                        let count = before.gpus.len() as u32;
                        if count <= width {
                            let gpus: Vec<u32> = (0..count).map(|j| (g + j) % width).collect();
                            match s.migrate(id, node, &gpus) {
                                Ok(a) => {
                                    prop_assert_eq!(&a.node, node);
                                    prop_assert_eq!((a.id, a.qos, a.cpu_milli), (id, before.qos, before.cpu_milli));
                                }
                                Err(_) => prop_assert_eq!(s.allocation(id).unwrap(), before),
                            }
                        }
                    }
                }
                Op::Release(k) => {
                    if !live.is_empty() {
                        let (id, _) = live.swap_remove(k % live.len());
                        s.release(id).unwrap();
                    }
                }
            }
            prop_assert_eq!(s.allocation_count(), live.len());
            check_accounting(&s, &names, ratios);
        }
        for (id, _) in live {
            s.release(id).unwrap();
        }
        for name in &names {
            let st = s.node_status(name).unwrap();
            prop_assert_eq!(st.cpu_free, st.cpu_capacity);
            prop_assert_eq!(st.memory_free, st.memory_capacity);
            for g in &st.gpus {
                prop_assert_eq!(g.tflops_free, g.tflops_capacity);
                prop_assert_eq!(g.vram_free, g.vram_capacity);
                prop_assert_eq!(g.allocations, 0);
                prop_assert!(!g.dedicated);
            }
        }
        prop_assert_eq!(s.usage("ns"), Default::default());
    }
}
