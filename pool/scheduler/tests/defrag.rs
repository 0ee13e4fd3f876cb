//! The defragmentation planner: it frees whole GPUs and nodes with few moves, never moves
//! protected (critical) work, stays within its budget, and its plan, once applied, leaves every
//! GPU within capacity with exact accounting.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use std::collections::HashMap;

use proptest::prelude::*;
use tf_scheduler::{
    Allocation, AllocationId, DefragOptions, GpuSpec, NodeSpec, Policy, PoolConfig, Qos, Request,
    Scheduler, Vendor,
};

const GIB: u64 = 1 << 30;

fn cluster(policy: Policy, gpus_per_node: &[usize]) -> (Scheduler, Vec<String>) {
    let mut s = Scheduler::new(policy);
    s.add_pool(PoolConfig::new("p")).unwrap();
    let mut names = Vec::new();
    for (i, &n) in gpus_per_node.iter().enumerate() {
        let name = format!("n{i}");
        s.add_node(NodeSpec {
            name: name.clone(),
            pool: "p".into(),
            cpu_milli: 32_000,
            memory_bytes: 128 * GIB,
            gpus: vec![GpuSpec::new("A100", Vendor::Nvidia, 100, 40); n],
        })
        .unwrap();
        names.push(name);
    }
    (s, names)
}

fn share(permille: u32, qos: Qos) -> Request {
    Request::new("p", "ns", 1)
        .with_share(permille)
        .with_host(1000, GIB)
        .with_qos(qos)
}

fn empties(s: &Scheduler, nodes: &[String]) -> (usize, usize) {
    let (mut g, mut n) = (0, 0);
    for name in nodes {
        let st = s.node_status(name).unwrap();
        g += st.gpus.iter().filter(|x| x.allocations == 0).count();
        n +=
            (st.gpus.iter().all(|x| x.allocations == 0) && st.cpu_free == st.cpu_capacity) as usize;
    }
    (g, n)
}

/// Every GPU's and node's used amounts equal the sum of the live grants, none over capacity.
fn check_accounting(s: &Scheduler, nodes: &[String]) {
    let mut gpu_used: HashMap<(String, u32), (u64, u64, u32)> = HashMap::new();
    let mut host: HashMap<String, (u64, u64)> = HashMap::new();
    for id in s.allocation_ids() {
        let a = s.allocation(id).unwrap();
        let h = host.entry(a.node.clone()).or_default();
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
        let (cpu, mem) = host.get(name).copied().unwrap_or_default();
        assert!(
            cpu <= st.cpu_capacity && mem <= st.memory_capacity,
            "{name}: host over"
        );
        assert_eq!(st.cpu_capacity - st.cpu_free, cpu, "{name}: CPU");
        assert_eq!(st.memory_capacity - st.memory_free, mem, "{name}: memory");
        for (i, g) in st.gpus.iter().enumerate() {
            let (t, v, users) = gpu_used
                .get(&(name.clone(), i as u32))
                .copied()
                .unwrap_or_default();
            assert!(
                t <= g.tflops_capacity && v <= g.vram_capacity,
                "{name}/{i} over-allocated"
            );
            assert_eq!(g.tflops_capacity - g.tflops_free, t, "{name}/{i} tflops");
            assert_eq!(g.vram_capacity - g.vram_free, v, "{name}/{i} vram");
            assert_eq!(g.allocations, users, "{name}/{i} users");
        }
    }
}

#[test]
fn the_planner_frees_gpus_and_nodes_with_few_moves_and_leaves_critical_work() {
    // n0: two half-used GPUs; n1: one GPU 0.7 used; n2: a critical half GPU.
    let (mut s, nodes) = cluster(Policy::BestFit, &[2, 2, 2]);
    let a = s
        .reserve(&share(300, Qos::Low).with_pin("n0", &[0]))
        .unwrap();
    let b = s
        .reserve(&share(300, Qos::Medium).with_pin("n0", &[1]))
        .unwrap();
    s.reserve(&share(700, Qos::High).with_pin("n1", &[0]))
        .unwrap();
    let crit = s
        .reserve(&share(400, Qos::Critical).with_pin("n2", &[1]))
        .unwrap();
    let before = empties(&s, &nodes);
    assert_eq!(before, (2, 0));
    let plan = s.plan_defrag(&DefragOptions::new("p", 10)).unwrap();
    // Two moves free two GPUs and a node: the 0.7 joins a 0.3 (n1 empties), the other 0.3
    // joins the critical 0.4 (a GPU of n0 empties).
    assert_eq!(plan.move_count(), 2, "{plan:#?}");
    assert_eq!((plan.gpus_freed(), plan.nodes_freed()), (2, 1), "{plan:#?}");
    assert_eq!(plan.steps[0].empties, "node n1");
    assert!(plan.moves().all(|m| m.allocation != crit.id));
    // A budget of one move can only take one step that fits in it.
    let one = s.plan_defrag(&DefragOptions::new("p", 1)).unwrap();
    assert!(one.move_count() <= 1);
    // Protecting medium and above pins b: n0 can no longer be emptied.
    let strict = s
        .plan_defrag(&DefragOptions::new("p", 10).protecting(Qos::Medium))
        .unwrap();
    assert!(strict.moves().all(|m| m.qos < Qos::Medium));
    assert!(strict.moves().all(|m| m.allocation != b.id));
    // Applying the plan frees what it said, ids survive, critical work did not move.
    let crit_before = s.allocation(crit.id).unwrap();
    assert_eq!(s.apply_defrag(&plan).unwrap(), 2);
    assert_eq!(empties(&s, &nodes), (4, 1));
    assert_eq!(s.allocation(crit.id).unwrap(), crit_before);
    assert!(s.allocation(a.id).is_some() && s.allocation(b.id).is_some());
    check_accounting(&s, &nodes);
}

#[derive(Debug, Clone)]
enum Work {
    Share(u32),
    Whole(u32),
    CpuOnly(u64),
}

fn work() -> impl Strategy<Value = (Work, usize)> {
    (
        prop_oneof![
            6 => (50u32..=900).prop_map(Work::Share),
            2 => (1u32..=3).prop_map(Work::Whole),
            1 => (500u64..=8000).prop_map(Work::CpuOnly),
        ],
        0usize..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn plans_never_move_protected_work_and_leave_no_gpu_over_allocated(
        node_gpus in prop::collection::vec(1usize..=4, 2..=6),
        load in prop::collection::vec(work(), 1..=40),
        releases in prop::collection::vec(0usize..1000, 0..=10),
        budget in 0usize..=30,
        protect in 1usize..4,
        policy in prop::sample::select(vec![Policy::Random, Policy::LowLoadFirst, Policy::FragLookahead]),
    ) {
        let (mut s, nodes) = cluster(policy, &node_gpus);
        let mut ids = Vec::new();
        for (w, q) in &load {
            let qos = Qos::ALL[*q];
            let req = match *w {
                Work::Share(p) => share(p, qos),
                Work::Whole(n) => Request::new("p", "ns", n).with_share(1000).with_host(2000, GIB).with_qos(qos),
                Work::CpuOnly(c) => Request::new("p", "ns", 0).with_host(c, GIB).with_qos(qos),
            };
            if let Ok(a) = s.reserve(&req) {
                ids.push(a.id);
            }
        }
        // Holes: release some allocations (those preempted are gone already).
        for r in releases {
            if !ids.is_empty() {
                let id = ids.swap_remove(r % ids.len());
                let _ = s.release(id);
            }
        }
        let protect = Qos::ALL[protect];
        let before: HashMap<AllocationId, Allocation> = s
            .allocation_ids()
            .into_iter()
            .map(|id| (id, s.allocation(id).unwrap()))
            .collect();
        let (g0, n0) = empties(&s, &nodes);
        let plan = s
            .plan_defrag(&DefragOptions::new("p", budget).protecting(protect))
            .unwrap();
        prop_assert!(plan.move_count() <= budget);
        prop_assert_eq!((plan.empty_gpus_before, plan.empty_nodes_before), (g0, n0));
        for m in plan.moves() {
            prop_assert!(before[&m.allocation].qos < protect, "moved {:?}", m);
            prop_assert!(m.qos < protect);
        }
        for step in &plan.steps {
            prop_assert!(step.gpus_freed + step.nodes_freed > 0, "{:?}", step);
        }
        let mut moved: Vec<AllocationId> = plan.moves().map(|m| m.allocation).collect();
        moved.sort();
        let n = moved.len();
        moved.dedup();
        prop_assert_eq!(moved.len(), n, "an allocation moves at most once");
        prop_assert_eq!(s.apply_defrag(&plan).unwrap(), plan.move_count());
        check_accounting(&s, &nodes);
        let (g1, n1) = empties(&s, &nodes);
        prop_assert_eq!(g1 as i64, g0 as i64 + plan.gpus_freed());
        prop_assert_eq!(n1 as i64, n0 as i64 + plan.nodes_freed());
        // Same allocations; protected ones exactly where they were; moved ones keep their
        // QoS, host resources and GPU count.
        let mut live = s.allocation_ids();
        live.sort();
        let mut was: Vec<AllocationId> = before.keys().copied().collect();
        was.sort();
        prop_assert_eq!(live, was);
        for (id, a) in &before {
            let now = s.allocation(*id).unwrap();
            if a.qos >= protect {
                prop_assert_eq!(&now, a);
            }
            prop_assert_eq!((now.qos, now.cpu_milli, now.gpus.len()), (a.qos, a.cpu_milli, a.gpus.len()));
        }
    }
}
