//! The operator's allocation state: the engine (`tf-scheduler`) fed with the cluster's pools,
//! nodes and GPUs, and the reservation of every Pod that holds GPUs. It is rebuilt from the
//! cluster (each Pod's `tensor-fusion.ai/allocation` annotation) on start, so it is a cache of
//! what the cluster says, never the only record.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use tf_pool_api::annotations as ann;
use tf_pool_api::quantity::{parse_bytes, parse_milli};
use tf_pool_api::{GPU, GPUNode, GPUPool, PodAllocation};
use tf_scheduler::{
    Allocation, AllocationId, GpuSpec, NodeSpec, PoolConfig, Request, SchedError, Scheduler,
    Topology, Vendor,
};

/// `namespace/name`.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The allocation written on a Pod, if any.
pub fn pod_allocation(pod: &Pod) -> Option<PodAllocation> {
    let text = pod.metadata.annotations.as_ref()?.get(ann::ALLOCATION)?;
    serde_json::from_str(text).ok()
}

/// What a node of the engine is, as the cluster said.
#[derive(Debug, Clone)]
struct NodeInfo {
    pool: String,
    /// GPU object names and UUIDs by index.
    gpus: Vec<(String, String)>,
}

/// The engine and the reservations of Pods.
pub struct State {
    sched: Scheduler,
    pools: BTreeMap<String, PoolConfig>,
    nodes: BTreeMap<String, NodeInfo>,
    pods: HashMap<String, (AllocationId, PodAllocation)>,
    /// Nodes whose agent is not reporting (GPUNode not `Running`): nothing new goes there.
    unavailable: HashSet<String>,
    /// Quotas set, by namespace.
    quotas: HashMap<String, tf_scheduler::Quota>,
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

impl State {
    /// Empty.
    pub fn new() -> State {
        // Preemption off: the engine must never drop a reservation a running Pod holds (the
        // operator evicts nobody; QoS orders nothing here yet).
        let mut sched = Scheduler::new(Default::default());
        sched.set_preemption(false);
        State {
            sched,
            pools: BTreeMap::new(),
            nodes: BTreeMap::new(),
            pods: HashMap::new(),
            unavailable: HashSet::new(),
            quotas: HashMap::new(),
        }
    }

    /// The engine (read-only).
    pub fn engine(&self) -> &Scheduler {
        &self.sched
    }

    /// Node names known, by pool.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.nodes
            .iter()
            .map(|(n, i)| (n.as_str(), i.pool.as_str()))
    }

    /// GPU object names of a node, by index.
    pub fn node_gpus(&self, node: &str) -> Vec<String> {
        self.nodes
            .get(node)
            .map(|n| n.gpus.iter().map(|g| g.0.clone()).collect())
            .unwrap_or_default()
    }

    /// Pods holding GPUs.
    pub fn pods(&self) -> impl Iterator<Item = (&str, &PodAllocation)> {
        self.pods.iter().map(|(k, (_, a))| (k.as_str(), a))
    }

    /// Number of Pods holding GPUs.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// The Pod's reservation, if it holds one.
    pub fn pod(&self, key: &str) -> Option<&PodAllocation> {
        self.pods.get(key).map(|(_, a)| a)
    }

    /// Adds pools and nodes the engine does not know yet. A node is added once its GPUNode
    /// and every GPU it lists exist with a capacity, and its pool exists. Returns the nodes
    /// added.
    pub fn sync_inventory(
        &mut self,
        pools: &[GPUPool],
        nodes: &[GPUNode],
        gpus: &[GPU],
    ) -> Vec<String> {
        for p in pools {
            let Some(name) = p.metadata.name.clone() else {
                continue;
            };
            if self.pools.contains_key(&name) {
                continue;
            }
            let mut cfg = PoolConfig::new(&name);
            if let Some(o) = &p.spec.oversubscription {
                cfg = cfg.with_oversubscription(
                    o.tflops_oversell_percent * 10,
                    o.vram_expand_to_host_mem_percent * 10,
                );
            }
            if self.sched.add_pool(cfg.clone()).is_ok() {
                self.pools.insert(name, cfg);
            }
        }
        let by_name: HashMap<&str, &GPU> = gpus
            .iter()
            .filter_map(|g| Some((g.metadata.name.as_deref()?, g)))
            .collect();
        let mut added = Vec::new();
        for n in nodes {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            if self.nodes.contains_key(&name) || !self.pools.contains_key(&n.spec.pool) {
                continue;
            }
            let Some(status) = &n.status else { continue };
            if status.gpus.is_empty() {
                continue;
            }
            let mut specs: Vec<(u32, GpuSpec, String, String)> = Vec::new();
            let mut complete = true;
            for gname in &status.gpus {
                let Some(g) = by_name.get(gname.as_str()) else {
                    complete = false;
                    break;
                };
                let cap = g
                    .status
                    .as_ref()
                    .map(|s| s.capacity.clone())
                    .unwrap_or_default();
                let (Ok(t), Ok(v)) = (parse_milli(&cap.tflops), parse_bytes(&cap.vram)) else {
                    complete = false;
                    break;
                };
                if t == 0 || v == 0 {
                    complete = false;
                    break;
                }
                let spec = GpuSpec {
                    model: g.spec.model.clone(),
                    vendor: g.spec.vendor.parse().unwrap_or(Vendor::Other),
                    tflops_milli: t,
                    vram_bytes: v,
                    topology: Topology {
                        numa_node: g.spec.numa_node.min(255) as u8,
                        nvlink_domain: None,
                    },
                };
                specs.push((g.spec.index, spec, gname.clone(), g.spec.uuid.clone()));
            }
            if !complete {
                continue;
            }
            specs.sort_by_key(|s| s.0);
            let spec = NodeSpec {
                name: name.clone(),
                pool: n.spec.pool.clone(),
                cpu_milli: n.spec.cpu_milli,
                memory_bytes: n.spec.memory_bytes,
                gpus: specs.iter().map(|s| s.1.clone()).collect(),
            };
            match self.sched.add_node(spec) {
                Ok(()) => {
                    self.nodes.insert(
                        name.clone(),
                        NodeInfo {
                            pool: n.spec.pool.clone(),
                            gpus: specs.into_iter().map(|s| (s.2, s.3)).collect(),
                        },
                    );
                    added.push(name);
                }
                Err(e) => tracing::warn!(node = %name, error = %e, "node not added to the engine"),
            }
        }
        added
    }

    /// Whether every request could be placed at once now (nothing is kept).
    pub fn fits_together(&mut self, reqs: &[Request]) -> Result<(), SchedError> {
        for a in self.sched.reserve_all(reqs)? {
            let _ = self.sched.release(a.id);
        }
        Ok(())
    }

    /// Sets a namespace's quota (from its GPUResourceQuota).
    pub fn set_quota(&mut self, namespace: &str, quota: tf_scheduler::Quota) {
        self.sched.set_quota(namespace, quota);
        self.quotas.insert(namespace.to_string(), quota);
    }

    /// Why the request would exceed its namespace's quota now, if it would.
    pub fn quota_problem(&self, req: &Request) -> Option<String> {
        let q = self.quotas.get(&req.namespace)?;
        let used = self.sched.usage(&req.namespace);
        let n = req.gpu_count as u64;
        let abs = |a: tf_scheduler::Amount| match a {
            tf_scheduler::Amount::Absolute(x) => Some(x * n),
            _ => None,
        };
        let checks = [
            (
                "TFLOPS (milli)",
                used.tflops_milli,
                abs(req.tflops),
                q.tflops_milli,
            ),
            ("VRAM bytes", used.vram_bytes, abs(req.vram), q.vram_bytes),
            ("GPUs", used.gpus, Some(n), q.gpus),
        ];
        for (what, used, asked, limit) in checks {
            if let (Some(asked), Some(limit)) = (asked, limit)
                && used + asked > limit
            {
                return Some(format!(
                    "namespace {:?} would exceed its GPUResourceQuota: {what} {used} used + {asked} asked > {limit}",
                    req.namespace
                ));
            }
        }
        None
    }

    /// What a namespace holds.
    pub fn usage(&self, namespace: &str) -> tf_scheduler::Usage {
        self.sched.usage(namespace)
    }

    /// Marks the nodes whose agent is not reporting; they take nothing new (what they hold
    /// stays held).
    pub fn set_unavailable(&mut self, nodes: HashSet<String>) {
        self.unavailable = nodes;
    }

    /// Scores `nodes` for the request (see [`Scheduler::score_nodes`]); unavailable nodes
    /// score `None`.
    pub fn score(
        &mut self,
        req: &Request,
        nodes: &[String],
    ) -> Result<Vec<Option<f64>>, SchedError> {
        let mut scores = self.sched.score_nodes(req, nodes)?;
        for (s, n) in scores.iter_mut().zip(nodes) {
            if self.unavailable.contains(n) {
                *s = None;
            }
        }
        Ok(scores)
    }

    /// Reserves for Pod `key` on `node`; a Pod that already holds a reservation on that node
    /// keeps it (a retried bind), one on another node gives it back first.
    pub fn reserve(
        &mut self,
        key: &str,
        req: &Request,
        node: &str,
    ) -> Result<PodAllocation, SchedError> {
        if let Some((id, a)) = self.pods.get(key) {
            if a.node == node {
                return Ok(a.clone());
            }
            let id = *id;
            let _ = self.sched.release(id);
            self.pods.remove(key);
        }
        if self.unavailable.contains(node) {
            return Err(SchedError::Unschedulable {
                pool: req.pool.clone(),
                reason: format!("node {node:?} is not reporting (its GPUNode is not Running)"),
            });
        }
        let alloc = self.sched.reserve_on(req, node)?;
        let pa = self.record(key, &alloc);
        Ok(pa)
    }

    fn record(&mut self, key: &str, alloc: &Allocation) -> PodAllocation {
        let info = &self.nodes[&alloc.node];
        let pa = PodAllocation {
            pool: alloc.pool.clone(),
            node: alloc.node.clone(),
            gpus: alloc.gpus.iter().map(|g| g.gpu).collect(),
            uuids: alloc
                .gpus
                .iter()
                .map(|g| info.gpus[g.gpu as usize].1.clone())
                .collect(),
            tflops_milli: alloc.gpus.iter().map(|g| g.tflops_milli).collect(),
            vram_bytes: alloc.gpus.iter().map(|g| g.vram_bytes).collect(),
        };
        self.pods.insert(key.to_string(), (alloc.id, pa.clone()));
        pa
    }

    /// Takes in a reservation found on a Pod (on start, or made by another replica). Returns
    /// `Ok(false)` when it is already held, and an error when the node is unknown or the
    /// reservation does not fit (which would be a double allocation).
    pub fn adopt(
        &mut self,
        key: &str,
        namespace: &str,
        pa: &PodAllocation,
    ) -> Result<bool, SchedError> {
        if let Some((_, held)) = self.pods.get(key) {
            if held == pa {
                return Ok(false);
            }
            self.release(key);
        }
        if !self.nodes.contains_key(&pa.node) {
            return Err(SchedError::UnknownNode(pa.node.clone()));
        }
        // Every GPU of one reservation got the same amounts (the engine's per-GPU request).
        let t = pa.tflops_milli.first().copied().unwrap_or(0);
        let v = pa.vram_bytes.first().copied().unwrap_or(0);
        let req = Request::new(&pa.pool, namespace, pa.gpus.len() as u32)
            .with_resources(t, v)
            .with_pin(&pa.node, &pa.gpus);
        let alloc = self.sched.reserve(&req)?;
        self.pods.insert(key.to_string(), (alloc.id, pa.clone()));
        Ok(true)
    }

    /// Gives back what Pod `key` holds; `false` when it held nothing.
    pub fn release(&mut self, key: &str) -> bool {
        match self.pods.remove(key) {
            Some((id, _)) => {
                let _ = self.sched.release(id);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inventory() -> (Vec<GPUPool>, Vec<GPUNode>, Vec<GPU>) {
        let pool: GPUPool = serde_json::from_value(
            json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPUPool",
            "metadata": {"name": "p"}, "spec": {}}),
        )
        .unwrap();
        let node: GPUNode = serde_json::from_value(json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPUNode",
            "metadata": {"name": "n"}, "spec": {"pool": "p", "cpuMilli": 64000, "memoryBytes": 1u64 << 38},
            "status": {"gpus": ["n-0", "n-1"]}}))
        .unwrap();
        let gpus = (0..2)
            .map(|i| {
                serde_json::from_value(json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPU",
                    "metadata": {"name": format!("n-{i}")},
                    "spec": {"node": "n", "index": i, "uuid": format!("GPU-{i}"), "model": "H100", "vendor": "nvidia"},
                    "status": {"capacity": {"tflops": "1000", "vram": "80Gi"}}}))
                .unwrap()
            })
            .collect();
        (vec![pool], vec![node], gpus)
    }

    fn free(s: &State) -> u64 {
        s.engine()
            .node_status("n")
            .unwrap()
            .gpus
            .iter()
            .map(|g| g.tflops_free)
            .sum()
    }

    #[test]
    fn a_higher_qos_never_takes_a_held_reservation() {
        let (p, n, g) = inventory();
        let mut s = State::new();
        s.sync_inventory(&p, &n, &g);
        let low = Request::new("p", "ns", 1)
            .with_resources(1_000_000, 8 << 30)
            .with_qos(tf_scheduler::Qos::Low);
        s.reserve("ns/a", &low, "n").unwrap();
        s.reserve("ns/b", &low, "n").unwrap();
        let high = Request::new("p", "ns", 1)
            .with_resources(1_000_000, 8 << 30)
            .with_qos(tf_scheduler::Qos::Critical);
        assert!(
            s.reserve("ns/c", &high, "n").is_err(),
            "full: nothing is preempted"
        );
        assert_eq!(s.engine().allocation_count(), 2);
        assert!(s.fits_together(std::slice::from_ref(&high)).is_err());
        assert_eq!(s.engine().allocation_count(), 2);
    }

    #[test]
    fn reservations_and_adoptions_are_charged_once() {
        let (p, n, g) = inventory();
        let mut s = State::new();
        assert_eq!(s.sync_inventory(&p, &n, &g), vec!["n".to_string()]);
        assert_eq!(free(&s), 2_000_000);
        let req = Request::new("p", "ns", 1).with_resources(150_000, 8 << 30);
        let a = s.reserve("ns/a", &req, "n").unwrap();
        assert_eq!(free(&s), 1_850_000);
        // A retried bind on the same node keeps the reservation.
        assert_eq!(s.reserve("ns/a", &req, "n").unwrap(), a);
        assert_eq!(free(&s), 1_850_000);
        // A second state adopting the same Pod (a restarted operator) charges it once.
        let mut t = State::new();
        t.sync_inventory(&p, &n, &g);
        assert!(t.adopt("ns/a", "ns", &a).unwrap());
        assert!(!t.adopt("ns/a", "ns", &a).unwrap());
        assert_eq!(free(&t), 1_850_000);
        t.reserve("ns/b", &req, "n").unwrap();
        assert_eq!(free(&t), 1_700_000);
        assert!(t.release("ns/a"));
        assert!(!t.release("ns/a"));
        assert!(t.release("ns/b"));
        assert_eq!(free(&t), 2_000_000);
    }
}

#[cfg(test)]
mod scale_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn many_reservations_after_adoptions_are_all_charged() {
        let pool: GPUPool = serde_json::from_value(
            json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPUPool",
            "metadata": {"name": "p"}, "spec": {}}),
        )
        .unwrap();
        let mut nodes = Vec::new();
        let mut gpus = Vec::new();
        for n in 0..100 {
            nodes.push(serde_json::from_value::<GPUNode>(json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPUNode",
                "metadata": {"name": format!("n{n}")}, "spec": {"pool": "p", "cpuMilli": 64000, "memoryBytes": 1u64 << 38},
                "status": {"gpus": [format!("n{n}-0"), format!("n{n}-1")]}})).unwrap());
            for i in 0..2 {
                gpus.push(serde_json::from_value::<GPU>(json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPU",
                    "metadata": {"name": format!("n{n}-{i}")},
                    "spec": {"node": format!("n{n}"), "index": i, "uuid": format!("GPU-{n}-{i}"), "model": "H100", "vendor": "nvidia"},
                    "status": {"capacity": {"tflops": "989.4", "vram": "81559Mi"}}})).unwrap());
            }
        }
        let names: Vec<String> = (0..100).map(|n| format!("n{n}")).collect();
        let req = Request::new("p", "ns", 1).with_resources(150_000, 8 << 30);
        let mut a = State::new();
        a.sync_inventory(std::slice::from_ref(&pool), &nodes, &gpus);
        let mut placed = Vec::new();
        for i in 0..450 {
            let scores = a.score(&req, &names).unwrap();
            let best = scores
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| (i, s)))
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .unwrap()
                .0;
            placed.push((
                format!("ns/w{i}"),
                a.reserve(&format!("ns/w{i}"), &req, &names[best]).unwrap(),
            ));
        }
        let mut b = State::new();
        b.sync_inventory(&[pool], &nodes, &gpus);
        for (k, pa) in &placed {
            b.adopt(k, "ns", pa).unwrap();
        }
        for i in 450..1000 {
            let scores = b.score(&req, &names).unwrap();
            let best = scores
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| (i, s)))
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .unwrap()
                .0;
            b.reserve(&format!("ns/w{i}"), &req, &names[best]).unwrap();
        }
        let free: u64 = names
            .iter()
            .map(|n| {
                b.engine()
                    .node_status(n)
                    .unwrap()
                    .gpus
                    .iter()
                    .map(|g| g.tflops_free)
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(200 * 989_400 - free, 1000 * 150_000);
    }
}
