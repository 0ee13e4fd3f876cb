//! Scheduling bench (prints one JSON object per line):
//! 1. throughput on the real control plane (tf-test-kube) with 100 simulated nodes: Pods per
//!    second through kube-scheduler with the extender (annotated Pods) against kube-scheduler
//!    alone placing the same number of Pods by an extended resource, measured from the
//!    scheduler's start (the Pods exist already) until every Pod is bound;
//! 2. the extender's filter-plus-prioritize latency, median and p99, at 100 and 1,000 nodes:
//!    the work of one call pair in process (JSON in, engine, JSON out), without HTTP.
//!
//! `cargo run --release -p tf-operator --example bench_scheduling [-- PODS]` (default 500).

// Examples share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tf_operator::extender::{Extender, ExtenderArgs};
use tf_operator::state::State;
use tf_pool_api::{GPU, GPUNode, GPUPool, annotations as ann};
use tf_test_kube::ControlPlane;

const BASELINE_RESOURCE: &str = "example.com/gpu-share";

async fn create_all(pods: &Api<Pod>, list: Vec<Pod>) {
    futures::stream::iter(list)
        .map(|p| {
            let pods = pods.clone();
            async move { pods.create(&PostParams::default(), &p).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

async fn time_until_bound(pods: &Api<Pod>, n: usize) -> f64 {
    let t = Instant::now();
    wait(Duration::from_secs(900), "every Pod bound", || {
        let pods = pods.clone();
        async move {
            let l = pods.list(&ListParams::default()).await.ok()?;
            let bound = l
                .items
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .count();
            (bound == n).then_some(())
        }
    })
    .await
    .unwrap();
    t.elapsed().as_secs_f64()
}

async fn throughput(pods_n: usize) {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    install_crds(&client).await;
    let serving = loopback_cert();
    let port = operator_port();
    register_webhooks(&client, port).await;
    let _op = start_operator(&client, "bench", port, &serving, "default");
    let ns = cp.namespace("bench").await.unwrap();
    let pool = format!("{ns}-pool");
    create_pool(&client, &pool, json!({})).await;
    let nodes = 100;
    let _agents = start_agents(&client, &format!("{ns}-n"), &pool, nodes, 2);
    wait_pool_ready(&client, &pool, nodes * 2).await;
    wait_webhook(&client, &ns).await;
    // The baseline's resource: 12 units per node (as many as 2 GPUs hold of the extender's Pods).
    let node_api: Api<Node> = Api::all(client.clone());
    for i in 0..nodes {
        let name = format!("{ns}-n-{i}");
        let patch = json!({"status": {"capacity": {BASELINE_RESOURCE: "12"}, "allocatable": {BASELINE_RESOURCE: "12"}}});
        node_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    // With the extender.
    let tf_ns = cp.namespace("bench-tf").await.unwrap();
    let tf_pods: Api<Pod> = Api::namespaced(client.clone(), &tf_ns);
    let list = (0..pods_n)
        .map(|i| {
            gpu_pod(
                &format!("tf{i:05}"),
                json!({ann::GPU_POOL: pool, ann::TFLOPS_REQUEST: "150", ann::VRAM_REQUEST: "8Gi"}),
            )
        })
        .collect();
    create_all(&tf_pods, list).await;
    let sched = start_scheduler(cp, "kube-scheduler-bench-extender", port, &serving);
    let with_extender = time_until_bound(&tf_pods, pods_n).await;
    drop(sched);
    println!(
        "{}",
        json!({"bench": "scheduling_throughput", "scheduler": "kube-scheduler+extender", "nodes": nodes,
               "pods": pods_n, "seconds": with_extender, "pods_per_s": pods_n as f64 / with_extender})
    );

    // kube-scheduler alone, the same number of Pods by an extended resource.
    let base_ns = cp.namespace("bench-base").await.unwrap();
    let base_pods: Api<Pod> = Api::namespaced(client.clone(), &base_ns);
    let list = (0..pods_n)
        .map(|i| {
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("b{i:05}")},
                "spec": {"containers": [{"name": "app", "image": "busybox",
                    "resources": {"limits": {BASELINE_RESOURCE: "1"}}}], "terminationGracePeriodSeconds": 0}}))
            .unwrap()
        })
        .collect();
    create_all(&base_pods, list).await;
    let cfg = "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: false
clientConnection:
  qps: 2000
  burst: 4000
profiles:
- schedulerName: default-scheduler
";
    let sched = cp
        .start_scheduler("kube-scheduler-bench-alone", cfg)
        .unwrap();
    let alone = time_until_bound(&base_pods, pods_n).await;
    drop(sched);
    println!(
        "{}",
        json!({"bench": "scheduling_throughput", "scheduler": "kube-scheduler", "nodes": nodes,
               "pods": pods_n, "seconds": alone, "pods_per_s": pods_n as f64 / alone})
    );
}

fn inventory(nodes: usize) -> (GPUPool, Vec<GPUNode>, Vec<GPU>) {
    let pool: GPUPool = serde_json::from_value(
        json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPUPool",
        "metadata": {"name": "p"}, "spec": {}}),
    )
    .unwrap();
    let mut ns = Vec::new();
    let mut gs = Vec::new();
    for n in 0..nodes {
        ns.push(
            serde_json::from_value(json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPUNode",
                "metadata": {"name": format!("n{n}")}, "spec": {"pool": "p", "cpuMilli": 64000, "memoryBytes": 1u64 << 38},
                "status": {"gpus": [format!("n{n}-0"), format!("n{n}-1")]}}))
            .unwrap(),
        );
        for i in 0..2 {
            gs.push(
                serde_json::from_value(json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPU",
                    "metadata": {"name": format!("n{n}-{i}")},
                    "spec": {"node": format!("n{n}"), "index": i, "uuid": format!("GPU-{n}-{i}"),
                             "model": "NVIDIA H100 80GB HBM3", "vendor": "nvidia"},
                    "status": {"capacity": {"tflops": "989.4", "vram": "81559Mi"}}}))
                .unwrap(),
            );
        }
    }
    (pool, ns, gs)
}

async fn latency(nodes: usize) {
    let (pool, ns, gs) = inventory(nodes);
    let mut st = State::new();
    st.sync_inventory(&[pool], &ns, &gs);
    // Half full: three 150-TFLOPS Pods per GPU on average.
    let req = tf_scheduler::Request::new("p", "bench", 1).with_resources(150_000, 8 << 30);
    for i in 0..nodes * 6 {
        st.reserve(&format!("bench/fill{i}"), &req, &format!("n{}", i % nodes))
            .unwrap();
    }
    // A client that is never used (filter and prioritize do not call the API server).
    let cfg = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let client = kube::Client::try_from(cfg).unwrap();
    let ext = Extender {
        state: Arc::new(Mutex::new(st)),
        client,
    };
    let names: Vec<String> = (0..nodes).map(|n| format!("n{n}")).collect();
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "x", "namespace": "bench", "labels": {ann::ENABLED_LABEL: "true"},
            "annotations": {ann::GPU_POOL: "p", ann::TFLOPS_REQUEST: "150", ann::VRAM_REQUEST: "8Gi"}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
    let body = serde_json::to_vec(&json!({"Pod": pod, "NodeNames": names})).unwrap();
    let mut samples = Vec::new();
    for i in 0..1200 {
        let t = Instant::now();
        let args: ExtenderArgs = serde_json::from_slice(&body).unwrap();
        let filtered = ext.filter(args);
        let out = serde_json::to_vec(&filtered).unwrap();
        let args: ExtenderArgs = serde_json::from_slice(&body).unwrap();
        let scores = ext.prioritize(args);
        let out2 = serde_json::to_vec(&scores).unwrap();
        let dt = t.elapsed();
        assert!(!out.is_empty() && !out2.is_empty());
        if i >= 200 {
            samples.push(dt.as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{}",
        json!({"bench": "extender_filter_prioritize", "nodes": nodes, "samples": samples.len(),
               "median_us": p(0.5), "p99_us": p(0.99), "transport": "in process (JSON in and out, no HTTP)"})
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let pods: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    latency(100).await;
    latency(1000).await;
    throughput(pods).await;
}
