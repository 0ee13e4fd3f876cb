//! Behaviour of the allocation engine: placement, release, constraints, quotas, preemption,
//! oversubscription and the policies.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use tf_scheduler::{
    Amount, GpuSpec, NodeSpec, Policy, PoolConfig, ProfileEntry, Qos, Quota, Request, SchedError,
    Scheduler, Vendor, WorkloadProfile,
};

const GIB: u64 = 1 << 30;

fn gpu(model: &str) -> GpuSpec {
    GpuSpec::new(model, Vendor::Nvidia, 100, 40)
}

fn node(name: &str, pool: &str, gpus: Vec<GpuSpec>) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        pool: pool.into(),
        cpu_milli: 64_000,
        memory_bytes: 256 * GIB,
        gpus,
    }
}

fn cluster(policy: Policy, nodes: &[(&str, usize)]) -> Scheduler {
    let mut s = Scheduler::new(policy);
    s.add_pool(PoolConfig::new("p")).unwrap();
    for (name, n) in nodes {
        s.add_node(node(name, "p", (0..*n).map(|_| gpu("A100")).collect()))
            .unwrap();
    }
    s
}

fn share(permille: u32) -> Request {
    Request::new("p", "ns", 1).with_share(permille)
}

#[test]
fn reserve_charges_exact_amounts_and_release_restores_them() {
    let mut s = cluster(Policy::default(), &[("n1", 2)]);
    let a = s
        .reserve(&share(300).with_host(2_000, 4 * GIB))
        .expect("fits");
    assert_eq!(a.node, "n1");
    assert_eq!(a.gpus.len(), 1);
    assert_eq!(a.gpus[0].tflops_milli, 30_000);
    assert_eq!(a.gpus[0].vram_bytes, 40 * GIB * 300 / 1000);
    let st = s.node_status("n1").unwrap();
    let g = st.gpus[a.gpus[0].gpu as usize];
    assert_eq!(g.tflops_free, 100_000 - 30_000);
    assert_eq!(g.allocations, 1);
    assert_eq!(st.cpu_free, 62_000);
    assert_eq!(st.memory_free, 252 * GIB);
    assert_eq!(s.usage("ns").tflops_milli, 30_000);

    let released = s.release(a.id).unwrap();
    assert_eq!(released.id, a.id);
    let st = s.node_status("n1").unwrap();
    assert!(
        st.gpus
            .iter()
            .all(|g| g.tflops_free == g.tflops_capacity && g.vram_free == g.vram_capacity)
    );
    assert_eq!((st.cpu_free, st.memory_free), (64_000, 256 * GIB));
    assert_eq!(s.usage("ns"), Default::default());
    assert_eq!(
        s.release(a.id),
        Err(SchedError::UnknownAllocation(a.id)),
        "double release is refused"
    );
}

#[test]
fn absolute_requests_and_shares_summing_to_a_gpu_fit_together() {
    let mut s = cluster(Policy::BestFit, &[("n1", 1)]);
    s.reserve(&share(470)).unwrap();
    s.reserve(&share(530)).unwrap();
    assert!(matches!(
        s.reserve(&share(1)),
        Err(SchedError::Unschedulable { .. })
    ));
    let mut s = cluster(Policy::BestFit, &[("n1", 1)]);
    let r = Request::new("p", "ns", 1).with_resources(60_000, 10 * GIB);
    s.reserve(&r).unwrap();
    assert!(s.reserve(&r).is_err(), "120 TFLOPS do not fit in 100");
}

#[test]
fn bad_requests_get_clear_errors() {
    let mut s = cluster(Policy::default(), &[("n1", 2)]);
    let cases: Vec<(Request, &str)> = vec![
        (share(1001), "above a whole GPU"),
        (Request::new("p", "ns", 0).with_share(100), "GPU count of 0"),
        (Request::new("p", "ns", 1), "zero TFLOPS and zero VRAM"),
        (
            share(500).with_limits(Amount::Permille(400), Amount::Permille(600)),
            "limit 400 permille below request 500",
        ),
        (Request::new("p", "ns", 65).with_share(10), "at most 64"),
        (share(100).with_pin("n1", &[0, 1]), "2 pinned GPUs"),
        (share(100).with_pin("n1", &[7]), "out of range"),
        (
            Request::new("p", "ns", 2)
                .with_share(100)
                .with_pin("n1", &[1, 1]),
            "pinned twice",
        ),
    ];
    for (req, msg) in cases {
        match s.reserve(&req) {
            Err(SchedError::InvalidRequest(m)) => assert!(m.contains(msg), "{m:?} lacks {msg:?}"),
            other => panic!("expected InvalidRequest({msg}), got {other:?}"),
        }
    }
    assert_eq!(
        s.reserve(&Request::new("nope", "ns", 1).with_share(10)),
        Err(SchedError::UnknownPool("nope".into()))
    );
    assert_eq!(
        s.reserve(&share(10).with_pin("ghost", &[0])),
        Err(SchedError::UnknownNode("ghost".into()))
    );
    assert!(matches!(
        s.add_node(node("n1", "p", vec![gpu("A100")])),
        Err(SchedError::DuplicateNode(_))
    ));
    assert!(matches!(
        s.add_pool(PoolConfig::new("q").with_oversubscription(900, 1000)),
        Err(SchedError::InvalidPool { .. })
    ));
    assert!(matches!(
        s.reserve(&Request::new("p", "ns", 3).with_share(100)),
        Err(SchedError::Unschedulable { .. })
    ));
    assert_eq!(s.allocation_count(), 0, "nothing was reserved by failures");
}

#[test]
fn model_and_vendor_constraints_filter_nodes() {
    let mut s = Scheduler::new(Policy::default());
    s.add_pool(PoolConfig::new("p")).unwrap();
    s.add_node(node("a100", "p", vec![gpu("A100"); 4])).unwrap();
    s.add_node(node("h100", "p", vec![gpu("H100"); 4])).unwrap();
    let mut ascend = GpuSpec::new("910B", Vendor::Ascend, 300, 64);
    ascend.topology.numa_node = 0;
    s.add_node(node("npu", "p", vec![ascend; 4])).unwrap();
    for _ in 0..6 {
        let a = s.reserve(&share(500).with_models(&["H100"])).unwrap();
        assert_eq!(a.node, "h100");
        let a = s.reserve(&share(500).with_vendor(Vendor::Ascend)).unwrap();
        assert_eq!(a.node, "npu");
    }
    let err = s.reserve(&share(500).with_models(&["B200"])).unwrap_err();
    assert!(matches!(err, SchedError::Unschedulable { .. }), "{err}");
}

#[test]
fn pinned_and_dedicated_requests() {
    let mut s = cluster(Policy::default(), &[("n1", 4), ("n2", 4)]);
    let a = s.reserve(&share(200).with_pin("n2", &[3])).unwrap();
    assert_eq!((a.node.as_str(), a.gpus[0].gpu), ("n2", 3));
    // A dedicated request never lands on a used GPU and takes the GPU whole.
    let d = s
        .reserve(&Request::new("p", "ns", 1).dedicated().with_pin("n2", &[2]))
        .unwrap();
    assert_eq!(d.gpus[0].tflops_milli, 100_000);
    assert!(
        s.reserve(&share(10).with_pin("n2", &[2])).is_err(),
        "nothing shares a dedicated GPU"
    );
    assert!(
        s.reserve(&Request::new("p", "ns", 1).dedicated().with_pin("n2", &[3]))
            .is_err(),
        "a dedicated request needs an unused GPU"
    );
    s.release(d.id).unwrap();
    s.reserve(&share(10).with_pin("n2", &[2]))
        .expect("released dedicated GPU is shareable again");
}

#[test]
fn multi_gpu_requests_stay_on_one_numa_node_when_they_can() {
    let mut s = Scheduler::new(Policy::default());
    s.add_pool(PoolConfig::new("p")).unwrap();
    let gpus = (0..8)
        .map(|i| {
            let mut g = gpu("A100");
            g.topology.numa_node = (i / 4) as u8;
            g
        })
        .collect();
    s.add_node(node("n1", "p", gpus)).unwrap();
    s.reserve(&share(500).with_pin("n1", &[0])).unwrap();
    let a = s
        .reserve(&Request::new("p", "ns", 4).with_share(1000))
        .unwrap();
    let idx: Vec<u32> = a.gpus.iter().map(|g| g.gpu).collect();
    assert!(
        idx.iter().all(|&i| i >= 4),
        "4 whole GPUs should come from the untouched NUMA node: {idx:?}"
    );
}

#[test]
fn oversubscription_ratios_raise_capacity_exactly() {
    let mut s = Scheduler::new(Policy::BestFit);
    s.add_pool(PoolConfig::new("p").with_oversubscription(2000, 1500))
        .unwrap();
    s.add_node(node("n1", "p", vec![gpu("A100")])).unwrap();
    let st = s.node_status("n1").unwrap();
    assert_eq!(st.gpus[0].tflops_capacity, 200_000);
    assert_eq!(st.gpus[0].vram_capacity, 60 * GIB);
    let r = Request::new("p", "ns", 1).with_resources(100_000, 30 * GIB);
    s.reserve(&r).unwrap();
    s.reserve(&r).unwrap();
    assert!(s.reserve(&r).is_err(), "3 x 100 TFLOPS exceed 2.0 x 100");
    let st = s.node_status("n1").unwrap();
    assert_eq!((st.gpus[0].tflops_free, st.gpus[0].vram_free), (0, 0));
}

#[test]
fn namespace_quotas_are_enforced_and_released() {
    let mut s = cluster(Policy::default(), &[("n1", 8)]);
    s.set_quota(
        "team",
        Quota {
            tflops_milli: Some(150_000),
            vram_bytes: None,
            gpus: Some(3),
        },
    );
    let r = Request::new("p", "team", 1).with_share(500);
    let a = s.reserve(&r).unwrap();
    let _b = s.reserve(&r).unwrap();
    s.reserve(&r.clone().with_share(400))
        .expect("140 of 150 TFLOPS, 3 of 3 GPUs");
    match s.reserve(&r) {
        Err(SchedError::QuotaExceeded {
            resource, limit, ..
        }) => {
            assert_eq!((resource, limit), ("tflops_milli", 150_000));
        }
        other => panic!("expected a TFLOPS quota error, got {other:?}"),
    }
    s.release(a.id).unwrap();
    s.reserve(&r).expect("release gives quota back");
    let gpus_err = s
        .reserve(&Request::new("p", "team", 2).with_resources(1_000, GIB))
        .unwrap_err();
    assert!(
        matches!(
            gpus_err,
            SchedError::QuotaExceeded {
                resource: "gpus",
                ..
            }
        ),
        "{gpus_err}"
    );
    // Other namespaces are unaffected.
    s.reserve(&Request::new("p", "other", 2).with_share(1000))
        .unwrap();
}

#[test]
fn preemption_takes_the_fewest_lowest_qos_victims_and_never_equal_or_higher() {
    let mut s = cluster(Policy::BestFit, &[("n1", 1), ("n2", 1)]);
    // n1: one Low of 600 and one Medium of 400. n2: four Low of 250.
    s.reserve(&share(600).with_pin("n1", &[0]).with_qos(Qos::Low))
        .unwrap();
    let med = s
        .reserve(&share(400).with_pin("n1", &[0]).with_qos(Qos::Medium))
        .unwrap();
    let mut n2 = Vec::new();
    for _ in 0..4 {
        n2.push(
            s.reserve(&share(250).with_pin("n2", &[0]).with_qos(Qos::Low))
                .unwrap()
                .id,
        );
    }
    // Low cannot preempt anything.
    assert!(s.reserve(&share(500).with_qos(Qos::Low)).is_err());
    // Medium may only evict Low: the single 600 on n1 frees enough (fewest victims).
    let m = s.reserve(&share(500).with_qos(Qos::Medium)).unwrap();
    assert_eq!(m.node, "n1");
    assert_eq!(m.preempted.len(), 1);
    assert!(s.allocation(med.id).is_some(), "equal QoS is never evicted");
    // High needing a whole GPU: n1 would need the Medium and the new Medium (two victims of
    // Medium); n2 needs four Low victims. Lowest QoS wins over fewer victims.
    let h = s.reserve(&share(1000).with_qos(Qos::High)).unwrap();
    assert_eq!(h.node, "n2");
    let mut evicted = h.preempted.iter().map(|a| a.0).collect::<Vec<_>>();
    evicted.sort();
    let mut expect = n2.iter().map(|a| a.0).collect::<Vec<_>>();
    expect.sort();
    assert_eq!(evicted, expect);
    // Critical holds: nothing can evict a Critical allocation.
    let mut s = cluster(Policy::default(), &[("n1", 1)]);
    s.reserve(&share(1000).with_qos(Qos::Critical)).unwrap();
    assert!(s.reserve(&share(100).with_qos(Qos::Critical)).is_err());
}

fn profile(entries: &[(u32, u32, u64, f64)]) -> WorkloadProfile {
    WorkloadProfile {
        entries: entries
            .iter()
            .map(|&(n, share, cpu, w)| ProfileEntry {
                gpu_count: n,
                tflops: Amount::Permille(share),
                vram: Amount::Permille(share),
                cpu_milli: cpu,
                memory_bytes: 0,
                models: vec![],
                vendor: None,
                dedicated: false,
                weight: w,
            })
            .collect(),
    }
}

#[test]
fn tensorfusion_modes_pack_or_spread_as_named() {
    for (policy, same_node, same_gpu) in [
        (Policy::CompactFirst, true, true),
        (Policy::LowLoadFirst, false, false),
        (Policy::NodeCompactGpuLowLoad, true, false),
    ] {
        let mut s = cluster(policy, &[("n1", 4), ("n2", 4)]);
        let a = s.reserve(&share(200)).unwrap();
        let b = s.reserve(&share(200)).unwrap();
        assert_eq!(a.node == b.node, same_node, "{policy}: nodes");
        assert_eq!(
            a.node == b.node && a.gpus[0].gpu == b.gpus[0].gpu,
            same_gpu,
            "{policy}: GPUs"
        );
    }
}

#[test]
fn best_fit_and_frag_policies_fill_the_tightest_gpu() {
    for policy in [Policy::BestFit, Policy::FragLookahead, Policy::Fgd] {
        let mut s = cluster(policy, &[("n1", 2), ("n2", 2)]);
        s.set_workload_profile("p", profile(&[(1, 300, 1000, 1.0), (1, 1000, 1000, 1.0)]))
            .unwrap();
        s.reserve(&share(700).with_pin("n2", &[1])).unwrap();
        let a = s.reserve(&share(300)).unwrap();
        assert_eq!(
            (a.node.as_str(), a.gpus[0].gpu),
            ("n2", 1),
            "{policy} should complete the 700-used GPU"
        );
    }
}

#[test]
fn frag_lookahead_keeps_whole_nodes_for_whole_node_requests() {
    let mut s = cluster(Policy::FragLookahead, &[("a", 8), ("b", 8), ("c", 8)]);
    s.set_workload_profile(
        "p",
        profile(&[
            (1, 1000, 4000, 6.0),
            (1, 500, 4000, 3.0),
            (8, 1000, 32000, 1.0),
        ]),
    )
    .unwrap();
    // Put one small pod on b: later single-GPU pods should join it, not break a or c.
    s.reserve(&share(500).with_pin("b", &[0]).with_host(4000, 0))
        .unwrap();
    for _ in 0..6 {
        let a = s.reserve(&share(1000).with_host(4000, 0)).unwrap();
        assert_eq!(a.node, "b");
    }
    for _ in 0..2 {
        let big = s
            .reserve(
                &Request::new("p", "ns", 8)
                    .with_share(1000)
                    .with_host(32000, 0),
            )
            .expect("two nodes stay whole for 8-GPU requests");
        assert_ne!(big.node, "b");
    }
}

#[test]
fn frag_lookahead_sends_cpu_heavy_requests_where_they_strand_no_gpu() {
    let mut s = Scheduler::new(Policy::FragLookahead);
    s.add_pool(PoolConfig::new("p")).unwrap();
    // gpu-rich: 8 GPUs and 96 cores; cpu-rich: 2 GPUs and 104 cores.
    let mut rich = node("gpu-rich", "p", vec![gpu("A100"); 8]);
    rich.cpu_milli = 96_000;
    s.add_node(rich).unwrap();
    let mut cpu = node("cpu-rich", "p", vec![gpu("A100"); 2]);
    cpu.cpu_milli = 104_000;
    s.add_node(cpu).unwrap();
    s.set_workload_profile("p", profile(&[(1, 1000, 12_000, 4.0), (0, 0, 32_000, 1.0)]))
        .unwrap();
    let a = s
        .reserve(&Request::new("p", "ns", 0).with_host(32_000, GIB))
        .unwrap();
    assert_eq!(
        a.node, "cpu-rich",
        "CPU-only work should not eat the 8-GPU node's CPU"
    );
}

#[test]
fn a_pool_without_a_profile_learns_one_and_still_places_validly() {
    let mut s = cluster(Policy::FragLookahead, &[("a", 8), ("b", 8)]);
    let mut ids = Vec::new();
    for i in 0..60u32 {
        let r = if i % 3 == 0 {
            share(1000)
        } else {
            share(250 + (i % 2) * 250)
        };
        match s.reserve(&r.with_host(1000, GIB)) {
            Ok(a) => ids.push(a.id),
            Err(e) => assert!(matches!(e, SchedError::Unschedulable { .. }), "{e}"),
        }
    }
    assert!(ids.len() >= 20, "placed {}", ids.len());
    for id in ids {
        s.release(id).unwrap();
    }
    for n in ["a", "b"] {
        let st = s.node_status(n).unwrap();
        assert!(st.gpus.iter().all(|g| g.tflops_free == g.tflops_capacity));
    }
}

#[test]
fn policy_names_round_trip() {
    for p in Policy::ALL {
        assert_eq!(p.name().parse::<Policy>().unwrap(), p);
    }
    assert_eq!("best_fit".parse::<Policy>().unwrap(), Policy::BestFit);
    assert_eq!(Policy::default(), Policy::FragLookahead);
    assert!("nope".parse::<Policy>().is_err());
    assert_eq!("BE".parse::<Qos>().unwrap(), Qos::Low);
    assert!("gold".parse::<Qos>().is_err());
}

#[test]
fn without_preemption_qos_is_a_label_and_a_full_pool_refuses() {
    let mut s = cluster(Policy::default(), &[("n1", 1)]);
    s.reserve(&share(1000).with_qos(Qos::Low)).unwrap();
    s.set_preemption(false);
    let e = s.reserve(&share(500).with_qos(Qos::Critical)).unwrap_err();
    assert!(matches!(e, SchedError::Unschedulable { .. }), "{e}");
    assert_eq!(s.allocation_count(), 1);
    s.set_preemption(true);
    let a = s.reserve(&share(500).with_qos(Qos::Critical)).unwrap();
    assert_eq!(a.preempted.len(), 1);
}

#[test]
fn migrate_moves_an_allocation_whole_keeping_its_id_or_changes_nothing() {
    let mut s = cluster(Policy::default(), &[("n1", 2), ("n2", 2)]);
    s.set_quota(
        "ns",
        Quota {
            gpus: Some(4),
            ..Quota::default()
        },
    );
    let a = s
        .reserve(&share(600).with_pin("n1", &[0]).with_host(2000, GIB))
        .unwrap();
    let b = s.reserve(&share(600).with_pin("n2", &[1])).unwrap();
    // Does not fit (0.6 + 0.6 on one GPU), wrong GPU count, unknown node: nothing changes.
    assert!(matches!(
        s.migrate(a.id, "n2", &[1]),
        Err(SchedError::Unschedulable { .. })
    ));
    assert!(matches!(
        s.migrate(a.id, "n2", &[0, 1]),
        Err(SchedError::InvalidRequest(_))
    ));
    assert!(matches!(
        s.migrate(a.id, "n9", &[0]),
        Err(SchedError::UnknownNode(_))
    ));
    assert_eq!(s.allocation(a.id).unwrap(), a);
    let moved = s.migrate(a.id, "n2", &[0]).unwrap();
    assert_eq!((moved.id, moved.node.as_str()), (a.id, "n2"));
    assert_eq!(moved.gpus[0].gpu, 0);
    let n1 = s.node_status("n1").unwrap();
    assert_eq!(n1.cpu_free, n1.cpu_capacity);
    assert!(n1.gpus.iter().all(|g| g.allocations == 0));
    assert_eq!(s.usage("ns").gpus, 2);
    s.release(moved.id).unwrap();
    s.release(b.id).unwrap();
    assert_eq!(s.usage("ns"), Default::default());
}

#[test]
fn score_nodes_scores_fitting_nodes_and_refuses_the_rest() {
    let mut s = Scheduler::new(Policy::default());
    s.add_pool(PoolConfig::new("p")).unwrap();
    s.add_pool(PoolConfig::new("q")).unwrap();
    s.add_node(node("n1", "p", vec![gpu("A100")])).unwrap();
    s.add_node(node("n2", "p", vec![gpu("A100"), gpu("A100")]))
        .unwrap();
    s.add_node(node("other", "q", vec![gpu("A100")])).unwrap();
    // n1's only GPU is 80 % taken: a 50 % request fits n2 only.
    s.reserve(&share(800).with_pin("n1", &[0])).unwrap();
    let scores = s
        .score_nodes(&share(500), &["n1", "n2", "other", "unknown"])
        .unwrap();
    assert_eq!(scores.len(), 4);
    assert!(scores[0].is_none(), "n1 is too full: {scores:?}");
    assert!(scores[1].is_some(), "n2 fits: {scores:?}");
    assert!(scores[2].is_none(), "a node of another pool is refused");
    assert!(scores[3].is_none(), "an unknown node is refused");
    // Scoring reserves nothing.
    assert_eq!(s.allocation_count(), 1);
    // A malformed request is an error, not a list of Nones.
    assert!(
        s.score_nodes(&share(500).with_models(&["nope"]), &["n2"])
            .unwrap()[0]
            .is_none()
    );
    assert!(
        s.score_nodes(&Request::new("missing", "ns", 1), &["n2"])
            .is_err()
    );
}

#[test]
fn reserve_on_places_on_the_named_node_or_refuses() {
    let mut s = cluster(Policy::default(), &[("n1", 1), ("n2", 2)]);
    let a = s.reserve_on(&share(600), "n2").unwrap();
    assert_eq!(a.node, "n2");
    assert_eq!(a.gpus.len(), 1);
    assert_eq!(a.gpus[0].tflops_milli, 60_000);
    let b = s.reserve_on(&share(600), "n2").unwrap();
    assert_ne!(
        a.gpus[0].gpu, b.gpus[0].gpu,
        "the second goes to the other GPU"
    );
    // n2 is now 60 % + 60 %: a third 60 % does not fit there, and reserve_on never moves it.
    match s.reserve_on(&share(600), "n2") {
        Err(SchedError::Unschedulable { reason, .. }) => assert!(reason.contains("n2"), "{reason}"),
        other => panic!("expected Unschedulable, got {other:?}"),
    }
    assert!(matches!(
        s.reserve_on(&share(100), "nowhere"),
        Err(SchedError::UnknownNode(_))
    ));
    assert_eq!(s.allocation_count(), 2);
    s.release(a.id).unwrap();
    s.release(b.id).unwrap();
    let st = s.node_status("n2").unwrap();
    assert!(st.gpus.iter().all(|g| g.tflops_free == g.tflops_capacity));
}
