//! The trace simulator: CSV errors, and a small slice of the real trace.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use std::path::{Path, PathBuf};

use tf_scheduler::Policy;
use tf_scheduler::sim::alibaba::{self, REPORT_POINTS};
use tf_scheduler::sim::bench;
use tf_scheduler::sim::trace::{self, TraceError, TraceNode, TracePod};
use tf_scheduler::sim::variants::Variant;

/// The real trace's folder (the tests using it are ignored, with this reason, where it is absent:
/// see build.rs).
fn trace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces/alibaba-gpu-2023")
}

fn temp_csv(name: &str, body: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tf-sched-{}-{name}", std::process::id()));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn malformed_csv_errors_name_the_file_and_line() {
    let nodes = temp_csv(
        "nodes.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,lots,262144,2,P100\n",
    );
    let err = trace::load_nodes(&nodes).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TraceError::Parse { line: 3, .. }), "{msg}");
    assert!(msg.contains("nodes.csv:3") && msg.contains("lots"), "{msg}");

    let pods = temp_csv(
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,1,500\np1,1000,1024,2,500\n",
    );
    let msg = trace::load_pods(&pods).unwrap_err().to_string();
    assert!(
        msg.contains("pods.csv:3") && msg.contains("whole GPUs"),
        "{msg}"
    );

    let short = temp_csv("short.csv", "name,cpu_milli,memory_mib,num_gpu\np0,1,1,1\n");
    let msg = trace::load_pods(&short).unwrap_err().to_string();
    assert!(
        msg.contains("short.csv:1") && msg.contains("gpu_milli"),
        "{msg}"
    );

    let ragged = temp_csv(
        "ragged.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,1\n",
    );
    let msg = trace::load_pods(&ragged).unwrap_err().to_string();
    assert!(
        msg.contains("ragged.csv:2") && msg.contains("4 fields"),
        "{msg}"
    );

    let missing = Path::new("/nonexistent/openb_pod_list_default.csv");
    let msg = trace::load_pods(missing).unwrap_err().to_string();
    assert!(
        msg.contains("/nonexistent/openb_pod_list_default.csv"),
        "{msg}"
    );
    for p in [nodes, pods, short, ragged] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
#[cfg_attr(
    not(tf_traces),
    ignore = "needs the Alibaba traces in ../shared/traces/alibaba-gpu-2023 beside the repository"
)]
fn real_trace_files_parse_with_the_documented_shape() {
    let dir = trace_dir();
    let nodes = trace::load_nodes(&dir.join("openb_node_list_gpu_node.csv")).unwrap();
    assert_eq!(nodes.len(), 1213);
    assert_eq!(nodes.iter().map(|n| n.gpus as u64).sum::<u64>(), 6212);
    let pods = trace::load_pods(&dir.join("openb_pod_list_default.csv")).unwrap();
    assert_eq!(pods.len(), 8152);
    assert!(pods.iter().all(|p| p.num_gpu <= 8 && p.gpu_milli <= 1000));
    let multi = trace::load_pods(&dir.join("openb_pod_list_multigpu50.csv")).unwrap();
    assert!(
        multi
            .iter()
            .all(|p| p.qos.is_none() && p.gpu_spec.is_empty())
    );
}

#[test]
#[cfg_attr(
    not(tf_traces),
    ignore = "needs the Alibaba traces in ../shared/traces/alibaba-gpu-2023 beside the repository"
)]
fn a_slice_of_the_trace_replays_and_frag_lookahead_beats_random() {
    let dir = trace_dir();
    let nodes = trace::load_nodes(&dir.join("openb_node_list_gpu_node.csv")).unwrap();
    let pods = trace::load_pods(&dir.join("openb_pod_list_default.csv")).unwrap();
    // Every 10th node and every 10th pod keep the mix at a tenth of the size.
    let nodes: Vec<_> = nodes.into_iter().step_by(10).collect();
    let pods: Vec<_> = pods.into_iter().step_by(10).collect();
    let (summary, seeds) = alibaba::run(&nodes, &pods, Policy::FragLookahead, 2, 2, &|_| {});
    let (random, _) = alibaba::run(&nodes, &pods, Policy::Random, 2, 2, &|_| {});
    assert_eq!(summary.len(), REPORT_POINTS.len());
    assert_eq!(seeds.len(), 2);
    for s in &seeds {
        assert!(s.submitted > pods.len(), "clones were appended");
        assert!(s.unalloc_pct.iter().all(|v| (0.0..=100.0).contains(v)));
        // Before the cluster fills nothing is dropped: unallocated = 100 - arrived.
        assert!((s.unalloc_pct[0] - 20.0).abs() < 1.0, "{:?}", s.unalloc_pct);
    }
    let at = |v: &[alibaba::Summary], x: u32| {
        v.iter()
            .find(|s| s.arrived_pct == x)
            .unwrap()
            .unalloc_gpu_pct_median
    };
    assert!(
        at(&summary, 130) < at(&random, 130),
        "frag-lookahead {} vs random {}",
        at(&summary, 130),
        at(&random, 130)
    );
    // Same seed, same result.
    let again = alibaba::run_seed(&nodes, &pods, Policy::FragLookahead, 0);
    assert_eq!(again.unalloc_pct, seeds[0].unalloc_pct);
}

#[test]
fn throughput_bench_runs_on_a_small_pool() {
    let r = bench::throughput(16, 200, Policy::FragLookahead, 3);
    assert_eq!((r.nodes, r.gpus, r.decisions), (16, 128, 200));
    assert!(r.placed > 0 && r.placed <= 200);
    assert!(r.decisions_per_s > 0.0);
}

#[test]
fn medians_ignore_missing_points() {
    assert_eq!(alibaba::median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(alibaba::median(&[4.0, 1.0, f64::NAN, 2.0, 3.0]), 2.5);
    assert!(alibaba::median(&[]).is_nan());
}

fn pod(name: &str, cpu: u64, num_gpu: u32, gpu_milli: u32) -> TracePod {
    TracePod {
        name: name.into(),
        cpu_milli: cpu,
        memory_mib: 1024,
        num_gpu,
        gpu_milli,
        gpu_spec: Vec::new(),
        qos: Some("LS".into()),
    }
}

fn tnode(name: &str, model: &str, gpus: u32, cpu: u64) -> TraceNode {
    TraceNode {
        name: name.into(),
        cpu_milli: cpu,
        memory_mib: 1 << 20,
        gpus,
        model: model.into(),
    }
}

#[test]
fn variant_generator_is_seeded_and_hits_its_targets() {
    let nodes = vec![
        tnode("g", "G2", 8, 96_000),
        tnode("t", "T4", 2, 104_000),
        tnode("v", "V100M16", 4, 32_000),
    ];
    let mut pods = Vec::new();
    for i in 0..400u32 {
        pods.push(match i % 4 {
            0 => pod(&format!("p{i}"), 8_000, 1, 500),
            1 => pod(&format!("p{i}"), 12_000, 1, 1000),
            2 => pod(&format!("p{i}"), 60_000, 8, 1000),
            _ => pod(&format!("p{i}"), 16_000, 0, 0),
        });
    }
    let gpu_total: u64 = pods.iter().map(TracePod::gpu_demand_milli).sum();
    for pct in [5, 10, 20, 25, 33] {
        let v = Variant::GpuSpec { percent: pct };
        let out = v.generate(&pods, &nodes, 7);
        assert_eq!(out, v.generate(&pods, &nodes, 7), "same seed, same list");
        assert_ne!(
            out,
            v.generate(&pods, &nodes, 8),
            "another seed, another list"
        );
        assert_eq!(out.len(), pods.len());
        let spec: u64 = out
            .iter()
            .filter(|p| !p.gpu_spec.is_empty())
            .map(TracePod::gpu_demand_milli)
            .sum();
        // Reaches the share, overshooting by at most one pod (8 GPUs here).
        let target = gpu_total * pct as u64 / 100;
        assert!(
            spec >= target && spec < target + 8000,
            "{pct}%: {spec} of {gpu_total}"
        );
        for p in out.iter().filter(|p| !p.gpu_spec.is_empty()) {
            // Only models that can host the pod: 8-GPU pods only on the 8-GPU G2 node.
            assert!(nodes.iter().any(|n| p.gpu_spec.contains(&n.model)
                && n.gpus >= p.num_gpu
                && n.cpu_milli >= p.cpu_milli));
            assert!(p.num_gpu > 0);
        }
    }
    let cpu_base: u64 = pods
        .iter()
        .filter(|p| p.num_gpu == 0)
        .map(|p| p.cpu_milli)
        .sum();
    for m in [40, 100, 300] {
        let v = Variant::Cpu { multiple_pct: m };
        let out = v.generate(&pods, &nodes, 7);
        assert_eq!(out, v.generate(&pods, &nodes, 7));
        let gpu_pods: Vec<&TracePod> = out.iter().filter(|p| p.num_gpu > 0).collect();
        assert_eq!(gpu_pods.len(), 300, "GPU pods are kept");
        let cpu: u64 = out
            .iter()
            .filter(|p| p.num_gpu == 0)
            .map(|p| p.cpu_milli)
            .sum();
        let target = cpu_base * m as u64 / 100;
        assert!(
            cpu >= target && cpu < target + 16_000,
            "{m}: {cpu} vs {target}"
        );
    }
    // Names round-trip, and a written list reads back identically.
    for v in Variant::standard() {
        assert_eq!(Variant::parse(&v.name()), Some(v));
    }
    let v = Variant::GpuSpec { percent: 33 };
    let out = v.generate(&pods, &nodes, 1);
    let path =
        std::env::temp_dir().join(format!("tf-sched-{}-{}", std::process::id(), v.file_name()));
    trace::write_pods(&path, &out).unwrap();
    assert_eq!(trace::load_pods(&path).unwrap(), out);
    let _ = std::fs::remove_file(path);
}

#[test]
#[cfg_attr(
    not(tf_traces),
    ignore = "needs the Alibaba traces in ../shared/traces/alibaba-gpu-2023 beside the repository"
)]
fn frag_lookahead_stays_ahead_of_fgd_on_generated_variants() {
    let dir = trace_dir();
    let nodes = trace::load_nodes(&dir.join("openb_node_list_gpu_node.csv")).unwrap();
    let pods = trace::load_pods(&dir.join("openb_pod_list_default.csv")).unwrap();
    let nodes: Vec<_> = nodes.into_iter().step_by(10).collect();
    let pods: Vec<_> = pods.into_iter().step_by(10).collect();
    let at100 = |s: &[alibaba::Summary]| {
        s.iter()
            .find(|s| s.arrived_pct == 100)
            .unwrap()
            .unalloc_gpu_pct_mean
    };
    // A third of the GPU request bound to GPU models; CPU-only demand 2.5x the default's.
    for v in [
        Variant::GpuSpec { percent: 33 },
        Variant::Cpu { multiple_pct: 250 },
    ] {
        let pods = v.generate(&pods, &nodes, 1);
        let (ours, _) = alibaba::run(&nodes, &pods, Policy::FragLookahead, 2, 2, &|_| {});
        let (fgd, _) = alibaba::run(&nodes, &pods, Policy::Fgd, 2, 2, &|_| {});
        assert!(
            at100(&ours) + 1.0 < at100(&fgd),
            "{}: frag-lookahead {:.2} vs fgd {:.2}",
            v.name(),
            at100(&ours),
            at100(&fgd)
        );
    }
}
