//! The node agent: registers the node's GPUNode and GPU objects from HAL discovery and keeps
//! their status true (a heartbeat every period; `Unknown` when it stops on a clean exit).
//!
//! On simulated nodes (no kubelet), `simulate_kubelet` also registers the Node object and plays
//! the kubelet's part for the Pods bound to it: they are marked Running, and a Pod whose
//! deletion was requested is removed once nothing else holds it (the kubelet's final delete).
//! The backend is the caller's (`tf-hal` only): on the simulated GPU, many agents on one
//! machine each own a private simulated machine.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tf_hal::Backend;
use tf_pool_api::quantity::{format_bytes, format_milli};
use tf_pool_api::{GPU, GPUNode};

/// What an agent registers.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name (the Kubernetes Node's).
    pub node: String,
    /// GPUPool the node joins.
    pub pool: String,
    /// Host CPU offered to GPU workloads, milli-cores.
    pub cpu_milli: u64,
    /// Host memory offered, bytes.
    pub memory_bytes: u64,
    /// Register the Node and run its Pods' lifecycle (simulated nodes only).
    pub simulate_kubelet: bool,
    /// Heartbeat period.
    pub heartbeat: Duration,
}

impl AgentConfig {
    /// Defaults: 64 cores, 256 GiB, a 10 s heartbeat, a real kubelet.
    pub fn new(node: &str, pool: &str) -> AgentConfig {
        AgentConfig {
            node: node.into(),
            pool: pool.into(),
            cpu_milli: 64_000,
            memory_bytes: 256 << 30,
            simulate_kubelet: false,
            heartbeat: Duration::from_secs(10),
        }
    }
}

const MANAGER: &str = "tensor-fusion-node-agent";

fn now() -> String {
    Timestamp::now().to_string()
}

/// Registers the node's objects once; returns the GPU object names.
pub async fn register(
    client: &kube::Client,
    backend: &dyn Backend,
    cfg: &AgentConfig,
) -> anyhow::Result<Vec<String>> {
    let devices = backend.devices()?;
    let gpus: Api<GPU> = Api::all(client.clone());
    let ssa = PatchParams::apply(MANAGER).force();
    let mut names = Vec::new();
    let (mut tf, mut tv) = (0u64, 0u64);
    for d in &devices {
        let name = format!("{}-{}", cfg.node, d.index);
        let tflops = (d.fp16_tflops * 1000.0).round() as u64;
        tf += tflops;
        tv += d.total_memory_bytes;
        let obj = json!({
            "apiVersion": "tensor-fusion.ai/v1", "kind": "GPU", "metadata": {"name": name},
            "spec": {"node": cfg.node, "index": d.index, "uuid": d.uuid, "model": d.model,
                     "vendor": d.vendor.as_str(), "numaNode": d.numa_node.unwrap_or(0)},
        });
        gpus.patch(&name, &ssa, &Patch::Apply(&obj)).await?;
        let status = json!({
            "apiVersion": "tensor-fusion.ai/v1", "kind": "GPU", "metadata": {"name": name},
            "status": {"phase": "Running",
                       "capacity": {"tflops": format_milli(tflops), "vram": format_bytes(d.total_memory_bytes)}},
        });
        gpus.patch_status(&name, &ssa, &Patch::Apply(&status))
            .await?;
        names.push(name);
    }
    let nodes: Api<GPUNode> = Api::all(client.clone());
    let obj = json!({
        "apiVersion": "tensor-fusion.ai/v1", "kind": "GPUNode", "metadata": {"name": cfg.node},
        "spec": {"pool": cfg.pool, "cpuMilli": cfg.cpu_milli, "memoryBytes": cfg.memory_bytes},
    });
    nodes.patch(&cfg.node, &ssa, &Patch::Apply(&obj)).await?;
    let status = json!({
        "apiVersion": "tensor-fusion.ai/v1", "kind": "GPUNode", "metadata": {"name": cfg.node},
        "status": {"phase": "Running", "totalGpus": names.len(), "gpus": names,
                   "totalTflops": format_milli(tf), "totalVram": format_bytes(tv),
                   "backend": backend.kind().as_str(), "lastReportTime": now()},
    });
    nodes
        .patch_status(&cfg.node, &ssa, &Patch::Apply(&status))
        .await?;
    if cfg.simulate_kubelet {
        register_node(client, cfg).await?;
    }
    Ok(names)
}

async fn register_node(client: &kube::Client, cfg: &AgentConfig) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node, "labels": {
            "kubernetes.io/hostname": cfg.node, "tensor-fusion.ai/pool": cfg.pool,
            "type": "tensor-fusion-simulated"}},
    }))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let cpu = format!("{}m", cfg.cpu_milli);
    let mem = cfg.memory_bytes.to_string();
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": mem, "pods": "250"},
        "allocatable": {"cpu": cpu, "memory": mem, "pods": "250"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "TensorFusionSimulated",
                        "message": "simulated by the tensor-fusion node agent",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
    }});
    api.patch_status(&cfg.node, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    // The API server's TaintNodesByCondition admission taints a new Node not-ready; the node
    // lifecycle controller (kube-controller-manager) lifts it once the Node reports Ready. A
    // simulated node lifts it itself.
    let taints: Vec<serde_json::Value> = api
        .get(&cfg.node)
        .await?
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !t.key.starts_with("node.kubernetes.io/"))
        .map(|t| serde_json::to_value(t).unwrap_or_default())
        .collect();
    api.patch(
        &cfg.node,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"taints": taints}})),
    )
    .await?;
    Ok(())
}

/// Heartbeat: the GPUNode's phase and report time.
pub async fn heartbeat(client: &kube::Client, cfg: &AgentConfig, phase: &str) -> kube::Result<()> {
    let nodes: Api<GPUNode> = Api::all(client.clone());
    let status = json!({
        "apiVersion": "tensor-fusion.ai/v1", "kind": "GPUNode", "metadata": {"name": cfg.node},
        "status": {"phase": phase, "lastReportTime": now(),
            "conditions": [{"type": "Ready", "status": if phase == "Running" { "True" } else { "False" },
                "reason": "AgentReport", "message": "reported by the node agent", "lastTransitionTime": now()}]},
    });
    nodes
        .patch_status(
            &cfg.node,
            &PatchParams::apply(&format!("{MANAGER}-heartbeat")).force(),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(())
}

/// The kubelet's part for a simulated node: Pods bound here run; a Pod being deleted goes once
/// its finalizers are gone.
async fn pod_lifecycle(client: kube::Client, node: String) {
    let api: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
    while let Some(ev) = stream.next().await {
        let Ok(pod) = ev else { continue };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            if pod
                .metadata
                .finalizers
                .as_ref()
                .is_none_or(|f| f.is_empty())
            {
                let _ = api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            }
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Running") {
            continue;
        }
        let t = now();
        let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": t});
        let containers: Vec<serde_json::Value> = pod
            .spec
            .as_ref()
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| {
                        json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "ready": true, "restartCount": 0, "started": true,
                "state": {"running": {"startedAt": t}}})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let status = json!({"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": t,
            "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
            "containerStatuses": containers,
        }});
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            tracing::debug!(pod = %name, error = %e, "marking Running");
        }
    }
}

/// Registers, then keeps the status true until the task is dropped.
pub async fn run(
    client: kube::Client,
    backend: Arc<dyn Backend>,
    cfg: AgentConfig,
) -> anyhow::Result<()> {
    register(&client, backend.as_ref(), &cfg).await?;
    let _lifecycle = cfg.simulate_kubelet.then(|| {
        crate::AbortOnDrop(tokio::spawn(pod_lifecycle(
            client.clone(),
            cfg.node.clone(),
        )))
    });
    loop {
        tokio::time::sleep(cfg.heartbeat).await;
        if let Err(e) = heartbeat(&client, &cfg, "Running").await {
            tracing::warn!(node = %cfg.node, error = %e, "heartbeat");
        }
    }
}
