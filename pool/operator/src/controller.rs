//! The leader's controllers:
//! - Pods: a bound Pod's reservation (its annotation) is held in the engine (adopted on start
//!   and from binds); a Pod that is going (deletion requested, finished, or gone) gives its
//!   GPUs back and loses the finalizer that kept it until then.
//! - Inventory: pools, nodes and GPUs reported by node agents enter the engine.
//! - Status: GPU, GPUNode and GPUPool status say what is reserved and what is free.
//! - Workloads: a TensorFusionWorkload per workload named on Pods, with its Pod counts; for
//!   remote (hard-isolated) Pods a TensorFusionConnection naming the workload's worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tf_pool_api::annotations as ann;
use tf_pool_api::quantity::{format_bytes, format_milli};
use tf_pool_api::{GPU, GPUNode, GPUPool, PodAllocation};

use crate::cache::Cache;
use crate::state::{State, pod_allocation, pod_key};

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a Pod is on its way out (its GPUs can go back).
pub fn is_going(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

fn bound_allocation(pod: &Pod) -> Option<PodAllocation> {
    let pa = pod_allocation(pod)?;
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    (node == pa.node).then_some(pa)
}

/// Removes the finalizer (a JSON patch that tests the list first, so a concurrent change to
/// the finalizers is never overwritten).
async fn drop_finalizer(client: &kube::Client, pod: &Pod) -> kube::Result<()> {
    let Some(fins) = &pod.metadata.finalizers else {
        return Ok(());
    };
    let Some(i) = fins.iter().position(|f| f == ann::POD_FINALIZER) else {
        return Ok(());
    };
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": ann::POD_FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]))
    .expect("a valid patch");
    match api
        .patch(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Handles one Pod event: hold a bound Pod's reservation, give back a going Pod's.
pub async fn reconcile_pod(state: &Mutex<State>, client: &kube::Client, pod: &Pod, deleted: bool) {
    let key = pod_key(pod);
    if deleted || is_going(pod) {
        if lock(state).release(&key) {
            tracing::debug!(pod = %key, "released");
        }
        if !deleted && let Err(e) = drop_finalizer(client, pod).await {
            tracing::warn!(pod = %key, error = %e, "removing the finalizer");
        }
        return;
    }
    if let Some(pa) = bound_allocation(pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        if let Err(e) = lock(state).adopt(&key, ns, &pa) {
            tracing::error!(pod = %key, error = %e, "a bound Pod's reservation does not fit");
        }
    }
}

/// Adds the cluster's pools, nodes and GPUs to the engine.
pub fn sync_inventory(state: &Mutex<State>, cache: &Cache) -> Vec<String> {
    let pools: Vec<GPUPool> = cache.pools.state().iter().map(|p| (**p).clone()).collect();
    let nodes: Vec<GPUNode> = cache.nodes.state().iter().map(|p| (**p).clone()).collect();
    let gpus: Vec<GPU> = cache.gpus.state().iter().map(|p| (**p).clone()).collect();
    lock(state).sync_inventory(&pools, &nodes, &gpus)
}

/// Rebuilds the state from the cluster: inventory first, then every bound Pod's reservation.
/// Called when this replica becomes the leader, before the extender serves a bind.
pub async fn rebuild(state: &Mutex<State>, cache: &Cache) -> anyhow::Result<usize> {
    sync_inventory(state, cache);
    let pods: Api<Pod> = Api::all(cache.client().clone());
    let list = pods
        .list(&ListParams::default().labels(&format!("{}=true", ann::ENABLED_LABEL)))
        .await?;
    let mut adopted = 0;
    for pod in &list.items {
        if is_going(pod) {
            continue;
        }
        if let Some(pa) = bound_allocation(pod) {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            match lock(state).adopt(&pod_key(pod), ns, &pa) {
                Ok(true) => adopted += 1,
                Ok(false) => {}
                Err(e) => tracing::error!(pod = %pod_key(pod), error = %e, "cannot adopt"),
            }
        }
    }
    Ok(adopted)
}

/// Watches labelled Pods until the stream ends.
pub async fn run_pods(state: Arc<Mutex<State>>, client: kube::Client) {
    let api: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().labels(&format!("{}=true", ann::ENABLED_LABEL));
    let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff());
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                reconcile_pod(&state, &client, &pod, false).await
            }
            Ok(watcher::Event::Delete(pod)) => reconcile_pod(&state, &client, &pod, true).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pod watch"),
        }
    }
}

/// Keeps the inventory and the status objects true, every `period`.
pub async fn run_status(
    state: Arc<Mutex<State>>,
    cache: Cache,
    period: Duration,
    stale_after: Duration,
) {
    let mut written: HashMap<String, serde_json::Value> = HashMap::new();
    loop {
        sync_inventory(&state, &cache);
        if let Err(e) = mark_silent_nodes(&state, &cache, stale_after).await {
            tracing::warn!(error = %e, "marking silent nodes");
        }
        if let Err(e) = sync_quotas(&state, &cache).await {
            tracing::warn!(error = %e, "quotas");
        }
        if let Err(e) = write_status(&state, &cache, &mut written).await {
            tracing::warn!(error = %e, "writing status");
        }
        tokio::time::sleep(period).await;
    }
}

/// Every GPUResourceQuota's limits enter the engine; its status says what the namespace uses.
async fn sync_quotas(state: &Mutex<State>, cache: &Cache) -> kube::Result<()> {
    use tf_pool_api::GPUResourceQuota;
    use tf_pool_api::quantity::{parse_bytes, parse_milli};
    let api: Api<GPUResourceQuota> = Api::all(cache.client().clone());
    for q in api.list(&ListParams::default()).await?.items {
        let (Some(ns), Some(name)) = (q.metadata.namespace.clone(), q.metadata.name.clone()) else {
            continue;
        };
        let t = &q.spec.total;
        let quota = tf_scheduler::Quota {
            tflops_milli: t.tflops.as_deref().and_then(|s| parse_milli(s).ok()),
            vram_bytes: t.vram.as_deref().and_then(|s| parse_bytes(s).ok()),
            gpus: t.gpus,
        };
        let used = {
            let mut st = lock(state);
            st.set_quota(&ns, quota);
            st.usage(&ns)
        };
        let status = json!({"status": {"used": {"tflops": format_milli(used.tflops_milli),
            "vram": format_bytes(used.vram_bytes), "gpus": used.gpus}}});
        let same = q.status.as_ref().is_some_and(|s| {
            s.used.tflops.as_deref() == Some(&format_milli(used.tflops_milli))
                && s.used.vram.as_deref() == Some(&format_bytes(used.vram_bytes))
                && s.used.gpus == Some(used.gpus)
        });
        if !same {
            Api::<GPUResourceQuota>::namespaced(cache.client().clone(), &ns)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }
    }
    Ok(())
}

/// GPUNodes whose agent has not reported for `stale_after` become `Unknown` (Ready false);
/// every node that is not `Running` takes nothing new.
async fn mark_silent_nodes(
    state: &Mutex<State>,
    cache: &Cache,
    stale_after: Duration,
) -> kube::Result<()> {
    use k8s_openapi::jiff::Timestamp;
    let now = Timestamp::now().as_millisecond();
    let limit = stale_after.as_millis() as i64;
    let api: Api<GPUNode> = Api::all(cache.client().clone());
    let mut unavailable = std::collections::HashSet::new();
    for n in cache.nodes.state() {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let st = n.status.clone().unwrap_or_default();
        let last = st
            .last_report_time
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| t.as_millisecond());
        let silent = last.is_none_or(|t| now - t > limit);
        if st.phase == tf_pool_api::Phase::Running && silent {
            let t = Timestamp::now().to_string();
            let patch = json!({"status": {"phase": "Unknown", "conditions": [{"type": "Ready", "status": "False",
                "reason": "AgentSilent", "lastTransitionTime": t,
                "message": format!("the node agent has not reported for {}s", stale_after.as_secs())}]}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::warn!(node = %name, "node agent silent: Unknown");
            unavailable.insert(name);
        } else if st.phase != tf_pool_api::Phase::Running || silent {
            unavailable.insert(name);
        }
    }
    lock(state).set_unavailable(unavailable);
    Ok(())
}

async fn write_status(
    state: &Mutex<State>,
    cache: &Cache,
    written: &mut HashMap<String, serde_json::Value>,
) -> anyhow::Result<()> {
    // Snapshot under the lock, write without it.
    let mut gpu_status: Vec<(String, serde_json::Value)> = Vec::new();
    let mut node_status: Vec<(String, serde_json::Value)> = Vec::new();
    let mut pool_sums: BTreeMap<String, [u64; 6]> = BTreeMap::new();
    // Counted in the same snapshot as the sums, so a pool status is never half old.
    let mut pool_allocs: BTreeMap<String, u64> = BTreeMap::new();
    {
        let st = lock(state);
        if st.engine().allocation_count() != st.pod_count() {
            tracing::error!(
                engine = st.engine().allocation_count(),
                pods = st.pod_count(),
                "the engine and the Pods disagree"
            );
        }
        let mut per_gpu: HashMap<(String, u32), Vec<serde_json::Value>> = HashMap::new();
        for (key, pa) in st.pods() {
            *pool_allocs.entry(pa.pool.clone()).or_default() += 1;
            for (i, g) in pa.gpus.iter().enumerate() {
                per_gpu.entry((pa.node.clone(), *g)).or_default().push(json!({
                    "pod": key,
                    "resource": {"tflops": format_milli(pa.tflops_milli[i]), "vram": format_bytes(pa.vram_bytes[i])},
                }));
            }
        }
        let nodes: Vec<(String, String)> = st
            .nodes()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect();
        for (node, pool) in nodes {
            let Ok(ns) = st.engine().node_status(&node) else {
                continue;
            };
            let names = st.node_gpus(&node);
            let (mut tf, mut tv, mut af, mut av) = (0u64, 0u64, 0u64, 0u64);
            for (i, g) in ns.gpus.iter().enumerate() {
                tf += g.tflops_physical;
                tv += g.vram_physical;
                af += g.tflops_free;
                av += g.vram_free;
                let allocs = per_gpu
                    .remove(&(node.clone(), i as u32))
                    .unwrap_or_default();
                gpu_status.push((
                    names[i].clone(),
                    json!({"phase": "Running",
                           "capacity": {"tflops": format_milli(g.tflops_physical), "vram": format_bytes(g.vram_physical)},
                           "available": {"tflops": format_milli(g.tflops_free), "vram": format_bytes(g.vram_free)},
                           "allocations": allocs}),
                ));
            }
            node_status.push((
                node.clone(),
                json!({"availableTflops": format_milli(af), "availableVram": format_bytes(av)}),
            ));
            let s = pool_sums.entry(pool).or_default();
            s[0] += 1;
            s[1] += ns.gpus.len() as u64;
            s[2] += tf;
            s[3] += tv;
            s[4] += af;
            s[5] += av;
        }
    }
    let client = cache.client().clone();
    let pp = PatchParams::default();
    let gpus: Api<GPU> = Api::all(client.clone());
    for (name, status) in gpu_status {
        let k = format!("gpu/{name}");
        if written.get(&k) == Some(&status) {
            continue;
        }
        gpus.patch_status(&name, &pp, &Patch::Merge(&json!({"status": status})))
            .await?;
        written.insert(k, status);
    }
    let nodes: Api<GPUNode> = Api::all(client.clone());
    for (name, status) in node_status {
        let k = format!("node/{name}");
        if written.get(&k) == Some(&status) {
            continue;
        }
        nodes
            .patch_status(&name, &pp, &Patch::Merge(&json!({"status": status})))
            .await?;
        written.insert(k, status);
    }
    let pools: Api<GPUPool> = Api::all(client);
    let allocs = pool_allocs;
    for (name, s) in pool_sums {
        let ready = cache
            .nodes
            .state()
            .iter()
            .filter(|n| n.spec.pool == name)
            .filter(|n| {
                n.status
                    .as_ref()
                    .is_some_and(|s| s.phase == tf_pool_api::Phase::Running)
            })
            .count();
        let status = json!({
            "phase": "Running",
            "totalNodes": s[0], "readyNodes": ready, "totalGpus": s[1],
            "totalTflops": format_milli(s[2]), "totalVram": format_bytes(s[3]),
            "availableTflops": format_milli(s[4]), "availableVram": format_bytes(s[5]),
            "allocations": allocs.get(&name).copied().unwrap_or(0),
        });
        let k = format!("pool/{name}");
        if written.get(&k) == Some(&status) {
            continue;
        }
        if cache
            .pools
            .state()
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(&name))
        {
            pools
                .patch_status(&name, &pp, &Patch::Merge(&json!({"status": status})))
                .await?;
            written.insert(k, status);
        }
    }
    Ok(())
}
