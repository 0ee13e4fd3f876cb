//! Topology-aware multi-GPU placement: NVLink domain first, then NUMA node, from the HAL's
//! `topology()`; soft (score) and hard (filter) modes.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use tf_hal::{Backend, DeviceInfo, Link, LinkKind};
use tf_scheduler::topology::{gpu_topology, node_from_hal, tier_of};
use tf_scheduler::{
    NodeSpec, Policy, PoolConfig, Request, SchedError, Scheduler, TopologyMode, TopologyTier,
};

const GIB: u64 = 1 << 30;

/// The simulated GPU with a profile of two NVLink domains: GPUs 0-3 linked on NUMA node 0,
/// GPUs 4-7 linked on NUMA node 1.
fn two_domain_machine() -> (Vec<DeviceInfo>, Vec<Link>) {
    let mut config = tf_fake_gpu::testing::isolated_config("sched-topology", 8);
    for (i, d) in config.devices.iter_mut().enumerate() {
        d.numa_node = (i / 4) as u32;
        d.nvlink = true;
    }
    let backend = tf_fake_gpu::FakeBackend::with_config(config).expect("simulated GPU");
    (backend.devices().unwrap(), backend.topology().unwrap())
}

fn node(name: &str, devices: &[DeviceInfo], links: &[Link]) -> NodeSpec {
    node_from_hal(name, "p", 128_000, 1024 * GIB, devices, links)
}

fn scheduler(policy: Policy, nodes: Vec<NodeSpec>) -> Scheduler {
    let mut s = Scheduler::new(policy);
    s.add_pool(PoolConfig::new("p")).unwrap();
    for n in nodes {
        s.add_node(n).unwrap();
    }
    s
}

fn whole(n: u32) -> Request {
    Request::new("p", "ns", n).with_share(1000)
}

fn gpus_of(a: &tf_scheduler::Allocation) -> Vec<u32> {
    a.gpus.iter().map(|g| g.gpu).collect()
}

#[test]
fn the_hal_topology_of_two_nvlink_domains_becomes_two_domains_on_two_numa_nodes() {
    let (devices, links) = two_domain_machine();
    assert_eq!(devices.len(), 8);
    let t = gpu_topology(&devices, &links);
    for (i, g) in t.iter().enumerate() {
        assert_eq!(g.nvlink_domain, Some((i / 4) as u16), "GPU {i}");
        assert_eq!(g.numa_node, (i / 4) as u8, "GPU {i}");
    }
    assert_eq!(tier_of(&t[0..4]), TopologyTier::NvLink);
    assert_eq!(tier_of(&t[3..5]), TopologyTier::Node);
    let spec = node("n", &devices, &links);
    assert_eq!(spec.gpus.len(), 8);
    assert_eq!(spec.gpus[0].model, devices[0].model);
    assert_eq!(spec.gpus[0].vram_bytes, devices[0].total_memory_bytes);
}

#[test]
fn soft_mode_keeps_a_request_inside_one_nvlink_domain_and_hard_mode_filters() {
    let (devices, links) = two_domain_machine();
    for policy in Policy::ALL {
        let mut s = scheduler(policy, vec![node("n", &devices, &links)]);
        // Domain A keeps GPUs 2 and 3 free, domain B keeps 5, 6 and 7.
        for pin in [0u32, 1, 4] {
            s.reserve(&whole(1).with_pin("n", &[pin])).unwrap();
        }
        let a = s.reserve(&whole(3)).unwrap();
        assert_eq!(
            gpus_of(&a),
            [5, 6, 7],
            "{policy}: the one domain with 3 free GPUs"
        );
        // Two GPUs remain, in domain A: a pair fits in one domain.
        s.release(a.id).unwrap();
        let pair = s.reserve(&whole(2)).unwrap();
        let spec = node("n", &devices, &links);
        let t = tier_of(
            pair.gpus
                .iter()
                .map(|g| &spec.gpus[g.gpu as usize].topology),
        );
        assert_eq!(t, TopologyTier::NvLink, "{policy}: {:?}", gpus_of(&pair));
        s.release(pair.id).unwrap();
        // Four GPUs: no domain has four free. Hard NVLink refuses, hard NUMA too; soft
        // takes GPUs across domains.
        for tier in [TopologyTier::NvLink, TopologyTier::Numa] {
            let e = s
                .reserve(&whole(4).with_topology(TopologyMode::Require(tier)))
                .unwrap_err();
            assert!(
                matches!(e, SchedError::Unschedulable { .. }),
                "{policy}: {e}"
            );
        }
        let four = s.reserve(&whole(4)).unwrap();
        assert_eq!(four.gpus.len(), 4, "{policy}");
    }
}

#[test]
fn soft_mode_prefers_the_node_that_offers_a_whole_domain_over_the_policys_favourite() {
    let (devices, links) = two_domain_machine();
    for policy in [Policy::CompactFirst, Policy::BestFit, Policy::FragLookahead] {
        let mut s = scheduler(
            policy,
            vec![
                node("busy", &devices, &links),
                node("idle", &devices, &links),
            ],
        );
        // "busy" has 4 free GPUs, 2 per domain; "idle" is empty. Packing policies favour the
        // fuller "busy", but only "idle" has a domain with 4 free GPUs.
        for pin in [0u32, 1, 4, 5] {
            s.reserve(&whole(1).with_pin("busy", &[pin])).unwrap();
        }
        let ignore = s
            .reserve(&whole(4).with_topology(TopologyMode::Ignore))
            .unwrap();
        let ignored_node = ignore.node.clone();
        s.release(ignore.id).unwrap();
        let soft = s.reserve(&whole(4)).unwrap();
        assert_eq!(soft.node, "idle", "{policy}");
        let domain = soft.gpus[0].gpu / 4;
        assert!(soft.gpus.iter().all(|g| g.gpu / 4 == domain), "{policy}");
        if policy == Policy::CompactFirst {
            assert_eq!(
                ignored_node, "busy",
                "without topology the fuller node wins"
            );
        }
        let hard = s
            .reserve(&whole(4).with_topology(TopologyMode::Require(TopologyTier::NvLink)))
            .unwrap();
        assert_eq!(
            hard.node, "idle",
            "{policy}: the other domain of the idle node"
        );
    }
}

#[test]
fn numa_is_the_second_tier_on_nodes_without_nvlink() {
    // PCIe machine: GPUs 0-3 on NUMA 0, 4-7 on NUMA 1, no NVLink; the driver does not say the
    // NUMA node, the links do.
    let (mut devices, _) = two_domain_machine();
    for d in &mut devices {
        d.numa_node = None;
    }
    let mut links = Vec::new();
    for a in 0..8u32 {
        for b in a + 1..8 {
            let kind = if a / 4 == b / 4 {
                LinkKind::PcieHostBridge
            } else {
                LinkKind::CrossNuma
            };
            links.push(Link { a, b, kind });
        }
    }
    let t = gpu_topology(&devices, &links);
    assert!(t.iter().all(|g| g.nvlink_domain.is_none()));
    assert_eq!(
        t.iter().map(|g| g.numa_node).collect::<Vec<_>>(),
        [0, 0, 0, 0, 1, 1, 1, 1]
    );
    let mut s = scheduler(Policy::default(), vec![node("pcie", &devices, &links)]);
    for pin in [1u32, 2, 3, 4] {
        s.reserve(&whole(1).with_pin("pcie", &[pin])).unwrap();
    }
    // Free: 0 (NUMA 0) and 5, 6, 7 (NUMA 1).
    let pair = s.reserve(&whole(2)).unwrap();
    assert!(pair.gpus.iter().all(|g| g.gpu >= 5), "{:?}", gpus_of(&pair));
    let e = s
        .reserve(&whole(2).with_topology(TopologyMode::Require(TopologyTier::NvLink)))
        .unwrap_err();
    assert!(matches!(e, SchedError::Unschedulable { .. }));
    // Left: 0 and one GPU of NUMA 1: a NUMA-bound pair cannot be had, a soft one can.
    assert!(
        s.reserve(&whole(2).with_topology(TopologyMode::Require(TopologyTier::Numa)))
            .is_err()
    );
    assert!(s.reserve(&whole(2)).is_ok());
    // Pinned requests are checked against a required tier too.
    let mut s = scheduler(Policy::default(), vec![node("pcie", &devices, &links)]);
    let cross = whole(2)
        .with_pin("pcie", &[3, 4])
        .with_topology(TopologyMode::Require(TopologyTier::Numa));
    assert!(s.reserve(&cross).is_err());
    assert!(
        s.reserve(&cross.with_topology(TopologyMode::Prefer))
            .is_ok()
    );
}

#[test]
fn topology_modes_parse_from_their_names() {
    for (text, mode) in [
        ("prefer", TopologyMode::Prefer),
        ("ignore", TopologyMode::Ignore),
        (
            "require-nvlink",
            TopologyMode::Require(TopologyTier::NvLink),
        ),
        ("require-numa", TopologyMode::Require(TopologyTier::Numa)),
    ] {
        assert_eq!(text.parse::<TopologyMode>().unwrap(), mode);
    }
    assert!("sideways".parse::<TopologyMode>().is_err());
}
