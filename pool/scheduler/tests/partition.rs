//! Placement onto partition templates: a request rounded up to the smallest vNPU template that
//! covers it, on Ascend 910B3 (vir05_1c_16g, vir10_3c_32g) and 310P3 (vir01, vir02, vir04) nodes.

#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use tf_hal::PartitionTemplate;
use tf_scheduler::partition::{PartitionProfile, smallest_covering};
use tf_scheduler::{
    Amount, GpuSpec, NodeSpec, Policy, PoolConfig, Request, SchedError, Scheduler, Vendor,
};

const GIB: u64 = 1 << 30;

fn template(name: &str, cores: u32, gib: u64, max: u32) -> PartitionTemplate {
    PartitionTemplate {
        name: name.into(),
        memory_bytes: gib * GIB,
        compute_units: cores,
        max_instances: max,
    }
}

/// Ascend 910B3: 20 AI cores, 64 GiB, 313 TFLOPS FP16 (the simulated profile's figures).
fn b3() -> PartitionProfile {
    PartitionProfile {
        model: "Ascend910B3".into(),
        vendor: Vendor::Ascend,
        compute_units: 20,
        tflops_milli: 313_000,
        vram_bytes: 64 * GIB,
        templates: vec![
            template("vir10_3c_32g", 10, 32, 2),
            template("vir05_1c_16g", 5, 16, 4),
        ],
    }
}

/// Ascend 310P3: 8 AI cores, 24 GiB, 70 TFLOPS FP16.
fn p3() -> PartitionProfile {
    PartitionProfile {
        model: "Ascend310P3".into(),
        vendor: Vendor::Ascend,
        compute_units: 8,
        tflops_milli: 70_000,
        vram_bytes: 24 * GIB,
        templates: vec![
            template("vir04", 4, 12, 2),
            template("vir01", 1, 3, 8),
            template("vir02", 2, 6, 4),
        ],
    }
}

fn gpu(p: &PartitionProfile) -> GpuSpec {
    GpuSpec {
        model: p.model.clone(),
        vendor: p.vendor,
        tflops_milli: p.tflops_milli,
        vram_bytes: p.vram_bytes,
        topology: Default::default(),
    }
}

fn cluster(nodes: &[(&str, PartitionProfile, usize)]) -> Scheduler {
    let mut s = Scheduler::new(Policy::default());
    s.add_pool(PoolConfig::new("npu")).unwrap();
    for (name, p, n) in nodes {
        s.add_node(NodeSpec {
            name: (*name).into(),
            pool: "npu".into(),
            cpu_milli: 64_000,
            memory_bytes: 512 * GIB,
            gpus: (0..*n).map(|_| gpu(p)).collect(),
        })
        .unwrap();
    }
    s
}

#[test]
fn the_smallest_covering_template_is_chosen() {
    let p = p3();
    let pick = |tflops_milli: u64, vram_gib: u64| {
        smallest_covering(
            &p,
            Amount::Absolute(tflops_milli),
            Amount::Absolute(vram_gib * GIB),
        )
        .map(|t| t.name.clone())
    };
    // 70 TFLOPS over 8 cores: 8.75 TFLOPS a core.
    assert_eq!(pick(1_000, 1).as_deref(), Some("vir01"));
    assert_eq!(pick(8_750, 3).as_deref(), Some("vir01"), "exactly one core");
    assert_eq!(
        pick(8_751, 3).as_deref(),
        Some("vir02"),
        "a bit more compute"
    );
    assert_eq!(
        pick(1_000, 4).as_deref(),
        Some("vir02"),
        "more memory than vir01 has"
    );
    assert_eq!(pick(20_000, 1).as_deref(), Some("vir04"));
    assert_eq!(pick(1_000, 13), None, "no template has 13 GiB");
    // Shares resolve against the whole device: 30 % of a 910B3 is more than 5 of its 20 cores.
    let b3 = b3();
    let t = smallest_covering(&b3, Amount::Permille(300), Amount::Permille(100)).unwrap();
    assert_eq!(t.name, "vir10_3c_32g");
    let t = smallest_covering(&b3, Amount::Permille(250), Amount::Permille(250)).unwrap();
    assert_eq!(t.name, "vir05_1c_16g");
}

#[test]
fn a_request_is_reserved_as_its_template() {
    let mut s = cluster(&[("b3", b3(), 1)]);
    let req = Request::new("npu", "team", 1).with_resources(40_000, 10 * GIB);
    let g = s.reserve_partition(&req, &[b3()]).unwrap();
    assert_eq!(g.template.name, "vir05_1c_16g");
    assert_eq!(g.model, "Ascend910B3");
    let grant = g.allocation.gpus[0];
    assert_eq!(
        grant.vram_bytes,
        16 * GIB,
        "the template's memory is reserved"
    );
    assert_eq!(grant.tflops_milli, 313_000 * 5 / 20, "five of twenty cores");

    // Four vir05 fill the device's memory: the fifth request does not fit.
    for _ in 0..3 {
        s.reserve_partition(&req, &[b3()]).unwrap();
    }
    let e = s.reserve_partition(&req, &[b3()]).unwrap_err();
    assert!(matches!(e, SchedError::Unschedulable { .. }), "{e}");
    // Releasing one makes room again.
    s.release(g.allocation.id).unwrap();
    assert!(s.reserve_partition(&req, &[b3()]).is_ok());
}

#[test]
fn the_model_with_the_smallest_fitting_share_wins_and_constraints_hold() {
    let mut s = cluster(&[("p3", p3(), 1), ("b3", b3(), 1)]);
    let profiles = [b3(), p3()];
    // 2 TFLOPS and 2 GiB: a vir01 is an eighth of a 310P3, a vir05 a quarter of a 910B3.
    let small = Request::new("npu", "t", 1).with_resources(2_000, 2 * GIB);
    let g = s.reserve_partition(&small, &profiles).unwrap();
    assert_eq!(
        (g.model.as_str(), g.template.name.as_str()),
        ("Ascend310P3", "vir01")
    );
    // A request only a 910B3 template covers (20 GiB) goes there.
    let big = Request::new("npu", "t", 1).with_resources(2_000, 20 * GIB);
    let g = s.reserve_partition(&big, &profiles).unwrap();
    assert_eq!(
        (g.model.as_str(), g.template.name.as_str()),
        ("Ascend910B3", "vir10_3c_32g")
    );
    // A model constraint is kept.
    let pinned = small.clone().with_models(&["Ascend910B3"]);
    let g = s.reserve_partition(&pinned, &profiles).unwrap();
    assert_eq!(g.template.name, "vir05_1c_16g");
    // Nothing covers 100 GiB; a dedicated request is not a partition.
    let e = s
        .reserve_partition(
            &Request::new("npu", "t", 1).with_resources(1, 100 * GIB),
            &profiles,
        )
        .unwrap_err();
    assert!(matches!(e, SchedError::InvalidRequest(_)), "{e}");
    let e = s
        .reserve_partition(&small.clone().dedicated(), &profiles)
        .unwrap_err();
    assert!(matches!(e, SchedError::InvalidRequest(_)), "{e}");
}
