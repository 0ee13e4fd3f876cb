//! The scheduler extender for the stock kube-scheduler: filter and prioritize by the engine,
//! and bind — reserve on the chosen node under the state's lock (so concurrent binds cannot
//! both take the last share of a GPU), write the reservation on the Pod, then bind it. A
//! failed write or bind gives the reservation back.
//!
//! Wire types are those of `k8s.io/kube-scheduler/extender/v1` (Go field names, no tags).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Binding, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use tf_pool_api::annotations as ann;

use crate::state::{State, pod_key};
use crate::workload;

/// `ExtenderArgs`.
#[derive(Deserialize, Debug)]
pub struct ExtenderArgs {
    /// The Pod.
    #[serde(rename = "Pod")]
    pub pod: Pod,
    /// Candidate nodes (when the extender is not node-cache capable).
    #[serde(rename = "Nodes", default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names (node-cache capable).
    #[serde(rename = "NodeNames", default)]
    pub node_names: Option<Vec<String>>,
}

/// The part of a `NodeList` the extender reads.
#[derive(Deserialize, Serialize, Debug, Default)]
pub struct NodeList {
    /// Items.
    #[serde(default)]
    pub items: Vec<serde_json::Value>,
}

impl ExtenderArgs {
    fn names(&self) -> Vec<String> {
        if let Some(n) = &self.node_names {
            return n.clone();
        }
        self.nodes
            .as_ref()
            .map(|l| {
                l.items
                    .iter()
                    .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `ExtenderFilterResult`.
#[derive(Serialize, Debug, Default)]
pub struct FilterResult {
    /// Nodes that fit, by name.
    #[serde(rename = "NodeNames", skip_serializing_if = "Option::is_none")]
    pub node_names: Option<Vec<String>>,
    /// Nodes that fit, as objects (when they were sent as objects).
    #[serde(rename = "Nodes", skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeList>,
    /// Nodes that do not, with why.
    #[serde(rename = "FailedNodes")]
    pub failed_nodes: BTreeMap<String, String>,
    /// An error for the whole call.
    #[serde(rename = "Error", skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// `HostPriority`.
#[derive(Serialize, Debug, PartialEq)]
pub struct HostPriority {
    /// Node.
    #[serde(rename = "Host")]
    pub host: String,
    /// 0..=10.
    #[serde(rename = "Score")]
    pub score: i64,
}

/// `ExtenderBindingArgs`.
#[derive(Deserialize, Debug)]
pub struct BindingArgs {
    /// Pod name.
    #[serde(rename = "PodName")]
    pub pod_name: String,
    /// Pod namespace.
    #[serde(rename = "PodNamespace")]
    pub pod_namespace: String,
    /// Pod UID.
    #[serde(rename = "PodUID", default)]
    pub pod_uid: String,
    /// Node chosen.
    #[serde(rename = "Node")]
    pub node: String,
}

/// `ExtenderBindingResult`.
#[derive(Serialize, Debug, Default)]
pub struct BindingResult {
    /// Empty on success.
    #[serde(rename = "Error", skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The extender: the shared state and a client for binds.
#[derive(Clone)]
pub struct Extender {
    /// The allocation state (the leader's).
    pub state: Arc<Mutex<State>>,
    /// A client.
    pub client: kube::Client,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Extender {
    /// The engine's request for a Pod; `None` for a remote client (its worker holds the GPUs).
    fn request(pod: &Pod) -> Result<Option<tf_scheduler::Request>, String> {
        let pool = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ann::GPU_POOL).cloned());
        let r = workload::parse(pod, None, pool.as_deref())
            .map_err(|r| workload::refusals_message(&r))?;
        if r.isolation == tf_pool_api::Isolation::Hard || !r.is_local {
            return Ok(None);
        }
        Ok(Some(r.to_engine(
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        )))
    }

    /// Every node refused, for `why`.
    pub fn refuse_all(args: ExtenderArgs, why: &str) -> FilterResult {
        let names = args.names();
        FilterResult {
            node_names: args.node_names.is_some().then(Vec::new),
            nodes: args.nodes.map(|_| NodeList::default()),
            failed_nodes: names
                .into_iter()
                .map(|n| (n, format!("tensor-fusion: {why}")))
                .collect(),
            error: String::new(),
        }
    }

    /// The gang gate: a member of a gang (`gang-enabled: "true"`, `gang-min-members` N > 1; the
    /// gang is the Pod's workload) is held until N members exist and the members still waiting
    /// fit together now; `Some(why)` holds it. Past `gang-timeout` the reason says so.
    pub async fn gang_hold(&self, pod: &Pod) -> Option<String> {
        let anns = pod.metadata.annotations.as_ref()?;
        let r = workload::parse(pod, None, anns.get(ann::GPU_POOL).map(String::as_str)).ok()?;
        let g = r.gang.as_ref()?;
        if g.min_members <= 1 {
            return None;
        }
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let gang = anns.get(ann::WORKLOAD)?.clone();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let lp = kube::api::ListParams::default().labels(&format!("{}=true", ann::ENABLED_LABEL));
        let members: Vec<Pod> = match pods.list(&lp).await {
            Ok(l) => l
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ann::WORKLOAD))
                        == Some(&gang)
                })
                .collect(),
            Err(e) => return Some(format!("gang {gang}: cannot list its members: {e}")),
        };
        let n = members.len() as u32;
        if n < g.min_members {
            let first = members
                .iter()
                .filter_map(|p| p.metadata.creation_timestamp.as_ref())
                .map(|t| t.0.as_second())
                .min()
                .unwrap_or(0);
            let waited = k8s_openapi::jiff::Timestamp::now().as_second() - first;
            return Some(if waited > g.timeout_s as i64 {
                format!(
                    "gang {gang}: timed out after {}s with {n} of {} members; create the missing members or lower gang-min-members",
                    g.timeout_s, g.min_members
                )
            } else {
                format!(
                    "gang {gang}: {n} of {} members exist; waiting for the rest",
                    g.min_members
                )
            });
        }
        let waiting: Vec<tf_scheduler::Request> = members
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
            .filter_map(|p| Self::request(p).ok().flatten())
            .collect();
        if let Err(e) = lock(&self.state).fits_together(&waiting) {
            return Some(format!(
                "gang {gang}: its {} waiting members do not fit together now ({e})",
                waiting.len()
            ));
        }
        None
    }

    /// Filter.
    pub fn filter(&self, args: ExtenderArgs) -> FilterResult {
        let names = args.names();
        let req = match Self::request(&args.pod) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return FilterResult {
                    node_names: args.node_names.clone().or(Some(names)),
                    nodes: args.nodes,
                    ..Default::default()
                };
            }
            Err(e) => {
                return FilterResult {
                    error: e,
                    ..Default::default()
                };
            }
        };
        if let Some(why) = lock(&self.state).quota_problem(&req) {
            return FilterResult {
                node_names: args.node_names.is_some().then(Vec::new),
                nodes: args.nodes.map(|_| NodeList::default()),
                failed_nodes: names
                    .into_iter()
                    .map(|n| (n, format!("tensor-fusion: {why}")))
                    .collect(),
                error: String::new(),
            };
        }
        let scores = match lock(&self.state).score(&req, &names) {
            Ok(s) => s,
            Err(e) => {
                return FilterResult {
                    error: e.to_string(),
                    ..Default::default()
                };
            }
        };
        let mut ok = Vec::new();
        let mut failed = BTreeMap::new();
        for (n, s) in names.iter().zip(&scores) {
            match s {
                Some(_) => ok.push(n.clone()),
                None => {
                    failed.insert(
                        n.clone(),
                        format!(
                            "tensor-fusion: no GPUs free for the request in pool {:?}",
                            req.pool
                        ),
                    );
                }
            }
        }
        let nodes = args.nodes.map(|l| NodeList {
            items: l
                .items
                .into_iter()
                .filter(|i| {
                    i["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| ok.iter().any(|o| o == n))
                })
                .collect(),
        });
        FilterResult {
            node_names: args.node_names.is_some().then_some(ok),
            nodes,
            failed_nodes: failed,
            error: String::new(),
        }
    }

    /// Prioritize: the engine's scores scaled to 0..=10 (best 10).
    pub fn prioritize(&self, args: ExtenderArgs) -> Vec<HostPriority> {
        let names = args.names();
        let Ok(Some(req)) = Self::request(&args.pod) else {
            return names
                .into_iter()
                .map(|host| HostPriority { host, score: 0 })
                .collect();
        };
        let scores = lock(&self.state).score(&req, &names).unwrap_or_default();
        let finite: Vec<f64> = scores.iter().flatten().copied().collect();
        let (lo, hi) = finite
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &s| {
                (lo.min(s), hi.max(s))
            });
        names
            .into_iter()
            .enumerate()
            .map(|(i, host)| {
                let score = match scores.get(i).copied().flatten() {
                    Some(s) if hi > lo => (((s - lo) / (hi - lo)) * 10.0).round() as i64,
                    Some(_) => 10,
                    None => 0,
                };
                HostPriority { host, score }
            })
            .collect()
    }

    /// Bind.
    pub async fn bind(&self, args: BindingArgs) -> BindingResult {
        match self.bind_inner(&args).await {
            Ok(()) => BindingResult::default(),
            Err(e) => {
                tracing::warn!(pod = %args.pod_name, node = %args.node, error = %e, "bind failed");
                BindingResult { error: e }
            }
        }
    }

    async fn bind_inner(&self, args: &BindingArgs) -> Result<(), String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &args.pod_namespace);
        let pod = pods.get(&args.pod_name).await.map_err(|e| e.to_string())?;
        if !args.pod_uid.is_empty() && pod.metadata.uid.as_deref() != Some(args.pod_uid.as_str()) {
            return Err("the Pod was replaced".into());
        }
        // Already bound (a bind the scheduler gave up waiting for, then retried): its
        // reservation stands; never move it.
        if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
            return if *n == args.node {
                Ok(())
            } else {
                Err(format!("the Pod is already bound to {n}"))
            };
        }
        let key = pod_key(&pod);
        let Some(req) = Self::request(&pod)? else {
            // A remote client: bound where kube-scheduler chose, no GPUs.
            return self.create_binding(&pods, args).await;
        };
        // The reservation: atomic with respect to every other bind (one lock, no await).
        let pa = lock(&self.state)
            .reserve(&key, &req, &args.node)
            .map_err(|e| e.to_string())?;
        tracing::debug!(pod = %key, node = %args.node, gpus = ?pa.gpus, "reserved");
        let release = || {
            lock(&self.state).release(&key);
        };
        let patch = serde_json::json!({"metadata": {"annotations": {
            ann::GPU_IDS: pa.uuids.join(","),
            ann::ALLOCATION: serde_json::to_string(&pa).unwrap_or_default(),
        }}});
        if let Err(e) = pods
            .patch(
                &args.pod_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            release();
            return Err(format!("recording the GPUs on the Pod: {e}"));
        }
        if let Err(e) = self.create_binding(&pods, args).await {
            release();
            // The annotation stays until the next bind overwrites it; the controller ignores
            // it on an unbound Pod.
            return Err(e);
        }
        Ok(())
    }

    async fn create_binding(&self, pods: &Api<Pod>, args: &BindingArgs) -> Result<(), String> {
        let binding: Binding = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": args.pod_name, "namespace": args.pod_namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": args.node},
        }))
        .map_err(|e| e.to_string())?;
        pods.create_subresource::<_, serde_json::Value>(
            "binding",
            &args.pod_name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("binding: {e}"))
    }
}
