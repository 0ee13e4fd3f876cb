//! Workloads, connections and workers (the leader's): every workload named on labelled Pods
//! gets a TensorFusionWorkload with its Pod counts; a remote workload (hard isolation or
//! `is-local-gpu: "false"`) gets a worker — a Pod running `tensor-fusion worker` that holds the
//! GPUs (placed by the extender like any vGPU Pod), a Service in front of it and a token Secret
//! — and a TensorFusionConnection telling its clients where the worker is. Owned objects carry
//! an owner reference to their TensorFusionWorkload.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tf_pool_api::annotations as ann;
use tf_pool_api::quantity::{format_bytes, format_milli};
use tf_pool_api::{Isolation, TensorFusionConnection, TensorFusionWorkload};

use crate::webhook::InjectConfig;
use crate::workload::{self, GpuRequest};

const MANAGER: &str = "tensor-fusion-operator";
/// Label on a worker Pod: its workload.
pub const WORKER_LABEL: &str = "tensor-fusion.ai/worker";

fn is_remote(r: &GpuRequest) -> bool {
    r.isolation == Isolation::Hard || !r.is_local
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn spec_of(r: &GpuRequest) -> Value {
    let res = |t: Option<u64>, v: Option<u64>| json!({"tflops": format_milli(t.unwrap_or(0)), "vram": format_bytes(v.unwrap_or(0))});
    let mut s = json!({
        "poolName": r.pool, "gpuCount": r.gpu_count,
        "resources": {"requests": res(r.tflops_request, r.vram_request),
                      "limits": res(r.tflops_limit.or(r.tflops_request), r.vram_limit.or(r.vram_request))},
        "qos": serde_json::to_value(r.qos).unwrap_or_default(),
        "isolation": serde_json::to_value(r.isolation).unwrap_or_default(),
        "isLocalGpu": r.is_local, "dedicatedGpu": r.dedicated, "sidecarWorker": r.sidecar_worker,
    });
    if let Some(p) = r.compute_percent_request {
        s["computePercentRequest"] = json!(p);
    }
    if let Some(p) = r.compute_percent_limit {
        s["computePercentLimit"] = json!(p);
    }
    if let Some(m) = &r.model {
        s["gpuModel"] = json!(m);
    }
    s
}

/// The worker Pod of a remote workload: labelled and annotated so that the webhook and the
/// extender place it on GPUs with the workload's request; it enforces the limits itself.
pub fn worker_pod(
    ns: &str,
    workload: &str,
    r: &GpuRequest,
    owner: &Value,
    cfg: &InjectConfig,
) -> Value {
    let mut anns = BTreeMap::new();
    anns.insert(ann::GPU_POOL.to_string(), r.pool.clone());
    anns.insert(ann::ISOLATION.to_string(), "shared".to_string());
    anns.insert(ann::GPU_COUNT.to_string(), r.gpu_count.to_string());
    if let Some(t) = r.tflops_request {
        anns.insert(ann::TFLOPS_REQUEST.to_string(), format_milli(t));
    }
    if let Some(v) = r.vram_request {
        anns.insert(ann::VRAM_REQUEST.to_string(), format_bytes(v));
    }
    if let Some(p) = r.compute_percent_request {
        anns.insert(ann::COMPUTE_PERCENT_REQUEST.to_string(), p.to_string());
    }
    if let Some(m) = &r.model {
        anns.insert(ann::GPU_MODEL.to_string(), m.clone());
    }
    let mut args = vec![
        "worker".to_string(),
        "--listen".into(),
        format!("tcp://0.0.0.0:{}", cfg.worker_port),
        "--token-file".into(),
        "/var/run/tensor-fusion/token".into(),
    ];
    if let Some(v) = r.vram_limit.or(r.vram_request) {
        args.extend(["--vram".into(), format!("{v}")]);
    }
    if let Some(p) = r.compute_percent_limit.or(r.compute_percent_request) {
        args.extend(["--compute-percent".into(), p.to_string()]);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{workload}-worker"), "namespace": ns,
            "labels": {ann::ENABLED_LABEL: "true", WORKER_LABEL: workload},
            "annotations": anns, "ownerReferences": [owner]},
        "spec": {"containers": [{"name": "worker", "image": cfg.image, "command": ["tensor-fusion"], "args": args,
            "ports": [{"name": "vgpu", "containerPort": cfg.worker_port}],
            "volumeMounts": [{"name": "token", "mountPath": "/var/run/tensor-fusion", "readOnly": true}]}],
            "volumes": [{"name": "token", "secret": {"secretName": format!("{workload}-worker-token")}}]}})
}

async fn create_if_absent<K>(api: &Api<K>, obj: &Value) -> kube::Result<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let k: K = serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &k).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn token() -> String {
    use std::io::Read;
    let mut b = [0u8; 24];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One pass over every labelled Pod.
pub async fn reconcile_all(client: &kube::Client, cfg: &InjectConfig) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().labels(&format!("{}=true", ann::ENABLED_LABEL)))
        .await?;
    // (namespace, workload) → its Pods (workers apart).
    let mut groups: BTreeMap<(String, String), Vec<Pod>> = BTreeMap::new();
    let mut workers: BTreeMap<(String, String), Pod> = BTreeMap::new();
    for p in list.items {
        let ns = p.namespace().unwrap_or_default();
        if let Some(w) = p.labels().get(WORKER_LABEL) {
            workers.insert((ns, w.clone()), p);
            continue;
        }
        let Some(w) = p.annotations().get(ann::WORKLOAD).cloned() else {
            continue;
        };
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        groups.entry((ns, w)).or_default().push(p);
    }
    let ssa = PatchParams::apply(MANAGER).force();
    for ((ns, name), members) in groups {
        let Ok(req) = workload::parse(
            &members[0],
            None,
            members[0]
                .annotations()
                .get(ann::GPU_POOL)
                .map(String::as_str),
        ) else {
            continue;
        };
        let wl_api: Api<TensorFusionWorkload> = Api::namespaced(client.clone(), &ns);
        let obj = json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "TensorFusionWorkload",
            "metadata": {"name": name, "namespace": ns}, "spec": spec_of(&req)});
        let wl = wl_api.patch(&name, &ssa, &Patch::Apply(&obj)).await?;
        let owner = json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "TensorFusionWorkload",
            "name": name, "uid": wl.meta().uid.clone().unwrap_or_default(), "controller": true,
            "blockOwnerDeletion": true});
        let running = members.iter().filter(|p| phase(p) == "Running").count();
        let allocated = members
            .iter()
            .filter(|p| p.annotations().contains_key(ann::ALLOCATION))
            .count();
        let mut worker_names = Vec::new();
        if is_remote(&req) {
            let worker = format!("{name}-worker");
            worker_names.push(worker.clone());
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            create_if_absent(&secrets, &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("{name}-worker-token"), "namespace": ns, "ownerReferences": [owner]},
                "stringData": {"token": token()}}))
            .await?;
            let services: Api<Service> = Api::namespaced(client.clone(), &ns);
            create_if_absent(&services, &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": worker, "namespace": ns, "ownerReferences": [owner]},
                "spec": {"selector": {WORKER_LABEL: name},
                         "ports": [{"name": "vgpu", "port": cfg.worker_port, "targetPort": cfg.worker_port}]}}))
            .await?;
            let pods_ns: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if !workers.contains_key(&(ns.clone(), name.clone())) {
                create_if_absent(&pods_ns, &worker_pod(&ns, &name, &req, &owner, cfg)).await?;
            }
            let worker_running = workers
                .get(&(ns.clone(), name.clone()))
                .is_some_and(|w| phase(w) == "Running");
            let conn_name = members[0]
                .annotations()
                .get(ann::CONNECTION)
                .cloned()
                .unwrap_or_else(|| format!("{name}-connection"));
            let conns: Api<TensorFusionConnection> = Api::namespaced(client.clone(), &ns);
            let conn = json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "TensorFusionConnection",
                "metadata": {"name": conn_name, "namespace": ns, "ownerReferences": [owner]},
                "spec": {"workloadName": name, "clientPod": members[0].name_any()}});
            conns.patch(&conn_name, &ssa, &Patch::Apply(&conn)).await?;
            let status = json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "TensorFusionConnection",
                "metadata": {"name": conn_name, "namespace": ns},
                "status": {"phase": if worker_running { "Running" } else { "Pending" }, "workerName": worker,
                           "connectionUrl": format!("tcp://{worker}.{ns}.svc:{}", cfg.worker_port)}});
            conns
                .patch_status(&conn_name, &ssa, &Patch::Apply(&status))
                .await?;
        }
        let status = json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "TensorFusionWorkload",
            "metadata": {"name": name, "namespace": ns},
            "status": {"phase": if running > 0 { "Running" } else { "Pending" }, "pods": members.len(),
                       "allocatedPods": allocated, "workers": worker_names}});
        wl_api
            .patch_status(&name, &ssa, &Patch::Apply(&status))
            .await?;
    }
    Ok(())
}

/// Reconciles every `period` until the task is dropped.
pub async fn run(client: kube::Client, cfg: InjectConfig, period: Duration) {
    loop {
        if let Err(e) = reconcile_all(&client, &cfg).await {
            tracing::warn!(error = %e, "workloads");
        }
        tokio::time::sleep(period).await;
    }
}
