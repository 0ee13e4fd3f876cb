//! The allocation engine: pools, nodes, reservation, release, quotas and preemption.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, SchedError};
use crate::policy::{Choice, Ctx, Gpu, Need, Policy, evaluate};

pub(crate) mod defrag;
use crate::profile::{Compiled, Shape, WorkloadProfile};
use crate::types::{
    Allocation, AllocationId, Amount, GpuGrant, GpuStatus, NodeSpec, NodeStatus, Pin, PoolConfig,
    Qos, Quota, Request, TopologyMode, Usage,
};

/// A pinned node and its GPU mask.
type Pinned = (u32, u64);
/// (cost: max victim QoS, count, footprint), node, victims, placement after eviction.
type VictimPlan = ((Qos, usize, u64), u32, Vec<u64>, Choice);

/// At most this many GPUs per node (placements are bit masks).
pub const MAX_GPUS_PER_NODE: usize = 64;
/// At most this many distinct GPU models per scheduler (model constraints are bit masks).
pub const MAX_MODELS: usize = 64;
/// Score caches kept at once before they are all dropped.
const MAX_CLASSES: usize = 4096;

struct NodeState {
    name: String,
    pool: u32,
    cpu_cap: u64,
    mem_cap: u64,
    cpu_free: u64,
    mem_free: u64,
    gpu_start: usize,
    gpu_len: usize,
    /// Bumped on every change; score caches compare against it (mirrored densely in
    /// `PoolState::versions` for the scan).
    version: u64,
    /// Position in its pool's node list.
    pos: u32,
    allocs: Vec<u64>,
}

struct PoolState {
    config: PoolConfig,
    nodes: Vec<u32>,
    /// `NodeState::version` of each pool node, by pool position: the scan reads these
    /// contiguously instead of touching every node.
    versions: Vec<u64>,
    max_cpu: u64,
    max_gpu_share: f64,
    profile: Compiled,
    explicit: Option<WorkloadProfile>,
    learned: HashMap<Need, f64>,
    seen: u64,
    next_learn: u64,
    /// Live allocations per QoS level (skips hopeless preemption searches).
    live_by_qos: [u64; 4],
    /// Free GPU capacity per interned model, in GPU-permille (model-pressure term).
    model_free: Vec<i64>,
    /// Models present in the pool (bit per interned id).
    model_present: u64,
    /// Free host CPU and memory summed over the pool's nodes.
    cpu_free: u64,
    mem_free: u64,
    /// Quantised host-shortage levels (CPU, memory), 0..=HOST_LEVELS (see `pool_ctx`).
    host_level: [u32; 2],
    /// Bumped when a host level changes: cached scores are then re-derived from their parts
    /// (cheap) instead of re-evaluated.
    host_epoch: u64,
}

/// Steps of the host-shortage level: scores are re-computed when a level changes.
const HOST_LEVELS: f64 = 16.0;

struct Record {
    pool: u32,
    namespace: String,
    qos: Qos,
    node: u32,
    grants: Vec<GpuGrant>,
    dedicated: bool,
    cpu: u64,
    mem: u64,
    /// The request as placement saw it (for moves).
    need: Need,
}

#[derive(Default)]
struct Namespace {
    quota: Quota,
    used: Usage,
}

/// Per request class: the last score of each pool node and the node version it was taken at.
struct ClassCache {
    stamps: Vec<u64>,
    scores: Vec<f64>,
    /// Model of the GPUs the cached placement would use (model-pressure term).
    models: Vec<u8>,
    /// The default policy's score parts of each cached placement (`policy::rescore`).
    parts: Vec<Option<[f64; 4]>>,
    /// The pool's host epoch the cached scores were taken at.
    epoch: u64,
}

/// Weight of the model-pressure term of the default policy (see `model_bias`).
const MODEL_PRESSURE_WEIGHT: f64 = 1.0;

/// The pool scheduler. Not thread-safe by itself; wrap it in a lock to share it.
pub struct Scheduler {
    policy: Policy,
    rng: StdRng,
    pools: Vec<PoolState>,
    pool_ids: HashMap<String, u32>,
    nodes: Vec<NodeState>,
    node_ids: HashMap<String, u32>,
    gpus: Vec<Gpu>,
    models: Vec<String>,
    namespaces: HashMap<String, Namespace>,
    allocs: HashMap<u64, Record>,
    next_id: u64,
    caches: HashMap<(u32, Need), ClassCache>,
    scratch: Vec<Gpu>,
    /// Gangs of the gang coordinator (`gang.rs`).
    pub(crate) gangs: crate::gang::Gangs,
    preemption: bool,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new(Policy::default())
    }
}

impl Scheduler {
    /// An empty scheduler with the given policy (random choices seeded with 0).
    pub fn new(policy: Policy) -> Self {
        Scheduler::with_seed(policy, 0)
    }

    /// An empty scheduler whose random choices (random policy, random tie-breaks) use `seed`.
    pub fn with_seed(policy: Policy, seed: u64) -> Self {
        Scheduler {
            policy,
            rng: StdRng::seed_from_u64(seed),
            pools: Vec::new(),
            pool_ids: HashMap::new(),
            nodes: Vec::new(),
            node_ids: HashMap::new(),
            gpus: Vec::new(),
            models: Vec::new(),
            namespaces: HashMap::new(),
            allocs: HashMap::new(),
            next_id: 1,
            caches: HashMap::new(),
            scratch: Vec::with_capacity(MAX_GPUS_PER_NODE),
            gangs: HashMap::new(),
            preemption: true,
        }
    }

    /// The placement policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Turns preemption on (the default) or off. Off, QoS is a label only (the defragmentation
    /// planner still honours it) and a request that fits nowhere fails.
    pub fn set_preemption(&mut self, enabled: bool) {
        self.preemption = enabled;
    }

    /// Switches the placement policy (drops cached scores).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
        self.caches.clear();
    }

    /// Adds a pool.
    pub fn add_pool(&mut self, config: PoolConfig) -> Result<()> {
        if self.pool_ids.contains_key(&config.name) {
            return Err(SchedError::DuplicatePool(config.name));
        }
        if config.tflops_oversell_permille < 1000 || config.vram_expand_permille < 1000 {
            return Err(SchedError::InvalidPool {
                pool: config.name,
                reason: "oversubscription ratios must be at least 1000 permille".into(),
            });
        }
        self.pool_ids
            .insert(config.name.clone(), self.pools.len() as u32);
        self.pools.push(PoolState {
            config,
            nodes: Vec::new(),
            versions: Vec::new(),
            max_cpu: 0,
            max_gpu_share: 0.0,
            profile: Compiled::default(),
            explicit: None,
            learned: HashMap::new(),
            seen: 0,
            next_learn: 16,
            live_by_qos: [0; 4],
            model_free: vec![0; MAX_MODELS],
            model_present: 0,
            cpu_free: 0,
            mem_free: 0,
            host_level: [0; 2],
            host_epoch: 0,
        });
        Ok(())
    }

    fn pool_id(&self, name: &str) -> Result<u32> {
        self.pool_ids
            .get(name)
            .copied()
            .ok_or_else(|| SchedError::UnknownPool(name.to_string()))
    }

    /// Adds a node to its pool (which must exist).
    pub fn add_node(&mut self, spec: NodeSpec) -> Result<()> {
        let pool = self.pool_id(&spec.pool)?;
        if self.node_ids.contains_key(&spec.name) {
            return Err(SchedError::DuplicateNode(spec.name));
        }
        let invalid = |reason: &str| SchedError::InvalidNode {
            node: spec.name.clone(),
            reason: reason.to_string(),
        };
        if spec.gpus.len() > MAX_GPUS_PER_NODE {
            return Err(invalid("more than 64 GPUs"));
        }
        if spec
            .gpus
            .iter()
            .any(|g| g.tflops_milli == 0 || g.vram_bytes == 0)
        {
            return Err(invalid("a GPU has zero TFLOPS or VRAM"));
        }
        let mut new_models = false;
        let mut ids = Vec::with_capacity(spec.gpus.len());
        for g in &spec.gpus {
            let id = match self.models.iter().position(|m| *m == g.model) {
                Some(id) => id,
                None => {
                    if self.models.len() >= MAX_MODELS {
                        return Err(invalid("more than 64 distinct GPU models in the scheduler"));
                    }
                    self.models.push(g.model.clone());
                    new_models = true;
                    self.models.len() - 1
                }
            };
            ids.push(id as u8);
        }
        let cfg = &self.pools[pool as usize].config;
        let (ot, ov) = (cfg.tflops_oversell_permille, cfg.vram_expand_permille);
        let gpu_start = self.gpus.len();
        for (g, &model) in spec.gpus.iter().zip(&ids) {
            let cap_t = Amount::Permille(ot).resolve(g.tflops_milli);
            let cap_v = Amount::Permille(ov).resolve(g.vram_bytes);
            self.gpus.push(Gpu {
                phys_t: g.tflops_milli,
                phys_v: g.vram_bytes,
                cap_t,
                cap_v,
                free_t: cap_t,
                free_v: cap_v,
                model,
                vendor: g.vendor,
                numa: g.topology.numa_node,
                link: g.topology.nvlink_domain.unwrap_or(crate::policy::NO_LINK),
                users: 0,
                dedicated: false,
            });
        }
        let id = self.nodes.len() as u32;
        self.node_ids.insert(spec.name.clone(), id);
        self.nodes.push(NodeState {
            name: spec.name,
            pool,
            cpu_cap: spec.cpu_milli,
            mem_cap: spec.memory_bytes,
            cpu_free: spec.cpu_milli,
            mem_free: spec.memory_bytes,
            gpu_start,
            gpu_len: spec.gpus.len(),
            version: 0,
            pos: self.pools[pool as usize].nodes.len() as u32,
            allocs: Vec::new(),
        });
        let p = &mut self.pools[pool as usize];
        for g in &self.gpus[gpu_start..] {
            p.model_free[g.model as usize] += g.free_permille();
            p.model_present |= 1 << g.model;
        }
        p.nodes.push(id);
        p.versions.push(0);
        p.cpu_free += spec.cpu_milli;
        p.mem_free += spec.memory_bytes;
        p.max_cpu = p.max_cpu.max(spec.cpu_milli);
        p.max_gpu_share = p.max_gpu_share.max(spec.gpus.len() as f64 * 1000.0);
        if new_models {
            for i in 0..self.pools.len() {
                self.recompile(i as u32);
            }
        }
        self.invalidate(pool);
        Ok(())
    }

    fn model_mask(models: &[String], names: &[String]) -> u64 {
        if names.is_empty() {
            return u64::MAX;
        }
        let mut mask = 0u64;
        for n in names {
            if let Some(i) = models.iter().position(|m| m == n) {
                mask |= 1 << i;
            }
        }
        mask
    }

    fn recompile(&mut self, pool: u32) {
        let models = &self.models;
        let p = &mut self.pools[pool as usize];
        p.profile = match &p.explicit {
            Some(prof) => Compiled::compile(prof, |names| Self::model_mask(models, names)),
            None => compile_learned(&p.learned),
        };
    }

    fn invalidate(&mut self, pool: u32) {
        self.caches.retain(|k, _| k.0 != pool);
    }

    /// Sets the request distribution fragmentation-aware policies score against in `pool`.
    /// Without one, the pool learns the distribution from the requests it receives.
    pub fn set_workload_profile(&mut self, pool: &str, profile: WorkloadProfile) -> Result<()> {
        let id = self.pool_id(pool)?;
        self.pools[id as usize].explicit = Some(profile);
        self.recompile(id);
        self.invalidate(id);
        Ok(())
    }

    /// Sets (replaces) a namespace's quota.
    pub fn set_quota(&mut self, namespace: &str, quota: Quota) {
        self.namespaces
            .entry(namespace.to_string())
            .or_default()
            .quota = quota;
    }

    /// What a namespace holds now.
    pub fn usage(&self, namespace: &str) -> Usage {
        self.namespaces
            .get(namespace)
            .map(|n| n.used)
            .unwrap_or_default()
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocs.len()
    }

    /// A live allocation by id.
    pub fn allocation(&self, id: AllocationId) -> Option<Allocation> {
        self.allocs
            .get(&id.0)
            .map(|r| self.view(id.0, r, Vec::new()))
    }

    /// Ids of all live allocations, in no particular order.
    pub fn allocation_ids(&self) -> Vec<AllocationId> {
        self.allocs.keys().map(|&k| AllocationId(k)).collect()
    }

    /// Names of the nodes of a pool, in insertion order.
    pub fn pool_nodes(&self, pool: &str) -> Result<Vec<String>> {
        let id = self.pool_id(pool)?;
        Ok(self.pools[id as usize]
            .nodes
            .iter()
            .map(|&n| self.nodes[n as usize].name.clone())
            .collect())
    }

    /// A node's capacity and free resources.
    pub fn node_status(&self, name: &str) -> Result<NodeStatus> {
        let &id = self
            .node_ids
            .get(name)
            .ok_or_else(|| SchedError::UnknownNode(name.to_string()))?;
        let n = &self.nodes[id as usize];
        Ok(NodeStatus {
            name: n.name.clone(),
            pool: self.pools[n.pool as usize].config.name.clone(),
            cpu_capacity: n.cpu_cap,
            cpu_free: n.cpu_free,
            memory_capacity: n.mem_cap,
            memory_free: n.mem_free,
            gpus: self.gpus[n.gpu_start..n.gpu_start + n.gpu_len]
                .iter()
                .map(|g| GpuStatus {
                    tflops_physical: g.phys_t,
                    vram_physical: g.phys_v,
                    tflops_capacity: g.cap_t,
                    vram_capacity: g.cap_v,
                    tflops_free: g.free_t,
                    vram_free: g.free_v,
                    allocations: g.users,
                    dedicated: g.dedicated,
                })
                .collect(),
        })
    }

    /// Sum over a pool's GPUs of the used share of the physical GPU, in GPU-permille
    /// (1000 = one whole GPU busy).
    pub fn pool_used_share(&self, pool: &str) -> Result<f64> {
        let id = self.pool_id(pool)?;
        Ok(self.pools[id as usize]
            .nodes
            .iter()
            .flat_map(|&n| {
                let n = &self.nodes[n as usize];
                self.gpus[n.gpu_start..n.gpu_start + n.gpu_len].iter()
            })
            .map(Gpu::used_share)
            .sum())
    }

    /// Checks a request without placing it: the errors [`Scheduler::reserve`] would return for
    /// a malformed request (unknown pool or node, bad shares, limits or pins).
    pub fn check_request(&self, req: &Request) -> Result<()> {
        self.validate(req).map(|_| ())
    }

    fn validate(&self, req: &Request) -> Result<(u32, Need, Option<Pinned>)> {
        let pool = self.pool_id(&req.pool)?;
        let bad = |m: String| Err(SchedError::InvalidRequest(m));
        if req.gpu_count as usize > MAX_GPUS_PER_NODE {
            return bad(format!("{} GPUs requested; at most 64", req.gpu_count));
        }
        let amounts = [req.tflops, req.vram]
            .into_iter()
            .chain(req.tflops_limit)
            .chain(req.vram_limit);
        for a in amounts {
            if let Amount::Permille(p) = a
                && p > 1000
            {
                return bad(format!("share of {p} permille is above a whole GPU (1000)"));
            }
        }
        for (what, r, l) in [
            ("tflops", req.tflops, req.tflops_limit),
            ("vram", req.vram, req.vram_limit),
        ] {
            match (r, l) {
                (Amount::Absolute(r), Some(Amount::Absolute(l))) if l < r => {
                    return bad(format!("{what} limit {l} below request {r}"));
                }
                (Amount::Permille(r), Some(Amount::Permille(l))) if l < r => {
                    return bad(format!("{what} limit {l} permille below request {r}"));
                }
                _ => {}
            }
        }
        if req.gpu_count == 0 {
            if !req.tflops.is_zero() || !req.vram.is_zero() || req.dedicated {
                return bad("GPU resources requested with a GPU count of 0".into());
            }
            if !req.models.is_empty() || req.vendor.is_some() {
                return bad("GPU model or vendor constraint with a GPU count of 0".into());
            }
        } else if !req.dedicated && req.tflops.is_zero() && req.vram.is_zero() {
            return bad("GPU request with zero TFLOPS and zero VRAM".into());
        }
        let need = Need {
            gpu_count: req.gpu_count,
            tflops: if req.dedicated {
                Amount::Permille(1000)
            } else {
                req.tflops
            },
            vram: if req.dedicated {
                Amount::Permille(1000)
            } else {
                req.vram
            },
            cpu: req.cpu_milli,
            mem: req.memory_bytes,
            models: Self::model_mask(&self.models, &req.models),
            vendor: req.vendor,
            dedicated: req.dedicated,
            topo: if req.gpu_count >= 2 {
                req.topology
            } else {
                TopologyMode::Ignore
            },
        };
        let pin = match &req.pin {
            None => None,
            Some(pin) => {
                let &node = self
                    .node_ids
                    .get(&pin.node)
                    .ok_or_else(|| SchedError::UnknownNode(pin.node.clone()))?;
                let n = &self.nodes[node as usize];
                if n.pool != pool {
                    return bad(format!(
                        "pinned node {:?} is not in pool {:?}",
                        pin.node, req.pool
                    ));
                }
                if pin.gpus.len() != req.gpu_count as usize {
                    return bad(format!(
                        "{} pinned GPUs for a request of {} GPUs",
                        pin.gpus.len(),
                        req.gpu_count
                    ));
                }
                let mut mask = 0u64;
                for &g in &pin.gpus {
                    if g as usize >= n.gpu_len {
                        return bad(format!(
                            "pinned GPU {g} out of range: node {:?} has {} GPUs",
                            pin.node, n.gpu_len
                        ));
                    }
                    if mask & (1 << g) != 0 {
                        return bad(format!("GPU {g} pinned twice"));
                    }
                    mask |= 1 << g;
                }
                Some((node, mask))
            }
        };
        Ok((pool, need, pin))
    }

    fn learn(&mut self, pool: u32, need: &Need) {
        let p = &mut self.pools[pool as usize];
        if p.explicit.is_some() || !self.policy.uses_profile() {
            return;
        }
        *p.learned.entry(*need).or_insert(0.0) += 1.0;
        p.seen += 1;
        if p.seen >= p.next_learn {
            p.next_learn = if p.next_learn >= 65536 {
                p.next_learn + 65536
            } else {
                p.next_learn * 2
            };
            self.recompile(pool);
            self.invalidate(pool);
        }
    }

    fn ctx(&self, pool: u32) -> Ctx<'_> {
        pool_ctx(self.policy, &self.pools[pool as usize])
    }

    /// Re-computes the pool's host-shortage levels; a changed level drops the pool's cached
    /// scores (the stranding term depends on it).
    fn refresh_host_levels(&mut self, pool: u32) {
        let p = &self.pools[pool as usize];
        if self.policy != Policy::FragLookahead {
            return;
        }
        let gpu_free: f64 = bits(p.model_present)
            .map(|m| p.model_free[m] as f64)
            .sum::<f64>()
            / 1000.0;
        // The shortage in steps of 1 / HOST_LEVELS. A level moves only once the shortage has
        // drifted a whole step away from it (hysteresis): a pool hovering around a rounding
        // boundary would otherwise drop its score caches on every decision.
        let level = |base: f64, only: f64, free: u64, current: u32| -> u32 {
            if only <= 0.0 || gpu_free <= 0.0 {
                return 0;
            }
            let short = ((base + only) * gpu_free - free as f64) / (only * gpu_free);
            let steps = short.clamp(0.0, 1.0) * HOST_LEVELS;
            if (steps - current as f64).abs() >= 1.0 {
                steps.round() as u32
            } else {
                current
            }
        };
        let levels = [
            level(
                p.profile.cpu_per_gpu,
                p.profile.cpu_only_per_gpu,
                p.cpu_free,
                p.host_level[0],
            ),
            level(
                p.profile.mem_per_gpu,
                p.profile.mem_only_per_gpu,
                p.mem_free,
                p.host_level[1],
            ),
        ];
        if levels != p.host_level {
            let p = &mut self.pools[pool as usize];
            p.host_level = levels;
            p.host_epoch += 1;
        }
    }

    /// Reserves resources for a request: places it by the policy, preempting strictly lower-QoS
    /// allocations only when nothing fits otherwise.
    pub fn reserve(&mut self, req: &Request) -> Result<Allocation> {
        self.reserve_inner(req, true).map(|(a, _)| a)
    }

    /// Reserves every request or none (a gang): requests are placed largest first; if one
    /// cannot be placed, everything placed for the group is released and any allocation a
    /// member preempted is restored exactly, so a failed group leaves the scheduler's
    /// reservations as they were. Allocations come back in the order of `reqs`.
    pub fn reserve_all(&mut self, reqs: &[Request]) -> Result<Vec<Allocation>> {
        for r in reqs {
            self.validate(r)?;
        }
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        let size = |r: &Request| {
            let per_gpu = match (r.dedicated, r.tflops) {
                (true, _) => 1000,
                (_, Amount::Permille(p)) => p as u64,
                _ => 1000,
            };
            (r.gpu_count as u64 * per_gpu, r.cpu_milli)
        };
        order.sort_by(|&a, &b| size(&reqs[b]).cmp(&size(&reqs[a])).then(a.cmp(&b)));
        let mut placed: Vec<(usize, Allocation)> = Vec::with_capacity(reqs.len());
        let mut evicted: Vec<(u64, Record)> = Vec::new();
        for &i in &order {
            match self.reserve_inner(&reqs[i], false) {
                Ok((a, victims)) => {
                    evicted.extend(victims);
                    placed.push((i, a));
                }
                Err(e) => {
                    for (_, a) in placed.iter().rev() {
                        self.release_inner(a.id.0);
                    }
                    for (id, rec) in evicted.into_iter().rev() {
                        self.restore(id, rec);
                    }
                    return Err(e);
                }
            }
        }
        for r in reqs {
            if let Ok((pool, need, _)) = self.validate(r) {
                self.learn(pool, &need);
            }
        }
        // A victim of one member may have been a member placed earlier in this group: the
        // group then fails as a whole.
        if let Some((_, a)) = placed
            .iter()
            .find(|(_, a)| !self.allocs.contains_key(&a.id.0))
        {
            let lost = a.id;
            for (_, a) in placed.iter().rev() {
                if self.allocs.contains_key(&a.id.0) {
                    self.release_inner(a.id.0);
                }
            }
            for (id, rec) in evicted.into_iter().rev() {
                if !placed.iter().any(|(_, a)| a.id.0 == id) {
                    self.restore(id, rec);
                }
            }
            return Err(SchedError::Unschedulable {
                pool: reqs[0].pool.clone(),
                reason: format!("a member of the group preempted another ({lost})"),
            });
        }
        placed.sort_by_key(|(i, _)| *i);
        Ok(placed.into_iter().map(|(_, a)| a).collect())
    }

    /// Puts a released allocation back exactly as it was (same id, GPUs and amounts).
    fn restore(&mut self, id: u64, rec: Record) {
        let p = &mut self.pools[rec.pool as usize];
        p.live_by_qos[rec.qos as usize] += 1;
        p.cpu_free -= rec.cpu;
        p.mem_free -= rec.mem;
        let n = &mut self.nodes[rec.node as usize];
        let gpus = &mut self.gpus[n.gpu_start..n.gpu_start + n.gpu_len];
        for g in &rec.grants {
            let gpu = &gpus[g.gpu as usize];
            p.model_free[gpu.model as usize] -= gpu.free_permille();
        }
        take_again(gpus, &rec);
        for g in &rec.grants {
            let gpu = &gpus[g.gpu as usize];
            p.model_free[gpu.model as usize] += gpu.free_permille();
        }
        n.cpu_free -= rec.cpu;
        n.mem_free -= rec.mem;
        n.version += 1;
        p.versions[n.pos as usize] = n.version;
        n.allocs.push(id);
        let ns = self.namespaces.entry(rec.namespace.clone()).or_default();
        for g in &rec.grants {
            ns.used.tflops_milli += g.tflops_milli;
            ns.used.vram_bytes += g.vram_bytes;
        }
        ns.used.gpus += rec.grants.len() as u64;
        self.allocs.insert(id, rec);
    }

    fn reserve_inner(
        &mut self,
        req: &Request,
        learn: bool,
    ) -> Result<(Allocation, Vec<(u64, Record)>)> {
        let (pool, need, pin) = self.validate(req)?;
        if need.gpu_count > 0 && need.models == 0 {
            return Err(SchedError::Unschedulable {
                pool: req.pool.clone(),
                reason: format!("no GPU of the requested models {:?}", req.models),
            });
        }
        if learn {
            self.learn(pool, &need);
        }
        self.refresh_host_levels(pool);
        // Absolute requests can be checked against the quota before any search.
        if !matches!(need.tflops, Amount::Permille(_)) && !matches!(need.vram, Amount::Permille(_))
        {
            let n = need.gpu_count as u64;
            let (t, v) = match (need.tflops, need.vram) {
                (Amount::Absolute(t), Amount::Absolute(v)) => (t * n, v * n),
                _ => (0, 0),
            };
            self.check_quota(&req.namespace, t, v, n)?;
        }
        let found = match pin {
            Some((node, mask)) => self.eval_pinned(node, &need, mask).map(|c| (node, c)),
            None => self.search(pool, &need),
        };
        let (node, choice, victims) = match found {
            Some((node, c)) => (node, c, Vec::new()),
            None => {
                let lower: u64 = self.pools[pool as usize].live_by_qos[..req.qos as usize]
                    .iter()
                    .sum();
                let found = if lower > 0 && self.preemption {
                    self.find_victims(pool, &need, req.qos, pin)
                } else {
                    None
                };
                match found {
                    Some((node, victims, c)) => (node, c, victims),
                    None => {
                        return Err(SchedError::Unschedulable {
                            pool: req.pool.clone(),
                            reason: self.why_not(pool, &need, req),
                        });
                    }
                }
            }
        };
        let mut mask = choice.mask;
        if self.policy == Policy::Random
            && (need.gpu_count == 1 || (need.gpu_count > 1 && need.topo == TopologyMode::Ignore))
            && pin.is_none()
            && victims.is_empty()
        {
            mask = random_subset(&mut self.rng, choice.fit, need.gpu_count);
        }
        // Final quota check on the exact grants.
        let n = &self.nodes[node as usize];
        let (mut t, mut v) = (0u64, 0u64);
        for i in bits(mask) {
            let (dt, dv) =
                self.gpus[n.gpu_start + i].demand(need.tflops, need.vram, need.dedicated);
            t += dt;
            v += dv;
        }
        self.check_quota(&req.namespace, t, v, need.gpu_count as u64)?;
        let mut evicted = Vec::with_capacity(victims.len());
        for &victim in &victims {
            evicted.push((victim, self.release_inner(victim)));
        }
        let id = self.commit(pool, node, &need, mask, req);
        let rec = &self.allocs[&id];
        Ok((
            self.view(id, rec, victims.into_iter().map(AllocationId).collect()),
            evicted,
        ))
    }

    fn check_quota(&self, ns: &str, t: u64, v: u64, g: u64) -> Result<()> {
        let Some(n) = self.namespaces.get(ns) else {
            return Ok(());
        };
        let checks = [
            ("tflops_milli", n.used.tflops_milli, t, n.quota.tflops_milli),
            ("vram_bytes", n.used.vram_bytes, v, n.quota.vram_bytes),
            ("gpus", n.used.gpus, g, n.quota.gpus),
        ];
        for (resource, used, requested, limit) in checks {
            if let Some(limit) = limit
                && used + requested > limit
            {
                return Err(SchedError::QuotaExceeded {
                    namespace: ns.to_string(),
                    resource,
                    used,
                    requested,
                    limit,
                });
            }
        }
        Ok(())
    }

    fn eval_pinned(&mut self, node: u32, need: &Need, mask: u64) -> Option<Choice> {
        let n = &self.nodes[node as usize];
        let gpus = &self.gpus[n.gpu_start..n.gpu_start + n.gpu_len];
        pinned_fit(n.cpu_free, n.mem_free, gpus, need, mask)
    }

    /// Finds the best node of the pool for a request class, re-scoring only changed nodes.
    fn search(&mut self, pool: u32, need: &Need) -> Option<(u32, Choice)> {
        if self.caches.len() >= MAX_CLASSES {
            self.caches.clear();
        }
        let p = &self.pools[pool as usize];
        let ctx = pool_ctx(self.policy, p);
        let cache = self
            .caches
            .entry((pool, *need))
            .or_insert_with(|| ClassCache {
                stamps: vec![u64::MAX; p.nodes.len()],
                scores: vec![f64::NEG_INFINITY; p.nodes.len()],
                models: vec![0; p.nodes.len()],
                parts: vec![None; p.nodes.len()],
                epoch: p.host_epoch,
            });
        if cache.epoch != p.host_epoch {
            // The host ratios changed: re-derive the still-valid scores from their parts.
            for (pos, &nid) in p.nodes.iter().enumerate() {
                let node = &self.nodes[nid as usize];
                if cache.stamps[pos] == p.versions[pos]
                    && let Some(parts) = cache.parts[pos]
                {
                    cache.scores[pos] =
                        crate::policy::rescore(&ctx, need, parts, node.cpu_free, node.mem_free);
                }
            }
            cache.epoch = p.host_epoch;
        }
        let bias = model_bias(self.policy, p, &self.models, need);
        let random_ties = self.policy.random_ties();
        let mut best = f64::NEG_INFINITY;
        let mut best_pos = usize::MAX;
        let mut ties = 0u32;
        for (pos, (&nid, &version)) in p.nodes.iter().zip(&p.versions).enumerate() {
            let mut score = if cache.stamps[pos] == version {
                cache.scores[pos]
            } else {
                let node = &self.nodes[nid as usize];
                let gpus = &self.gpus[node.gpu_start..node.gpu_start + node.gpu_len];
                let (s, model, parts) = match evaluate(
                    &ctx,
                    need,
                    node.cpu_free,
                    node.mem_free,
                    gpus,
                    &mut self.scratch,
                ) {
                    Some(c) => (
                        c.score,
                        if c.mask == 0 {
                            0
                        } else {
                            gpus[c.mask.trailing_zeros() as usize].model
                        },
                        c.parts,
                    ),
                    None => (f64::NEG_INFINITY, 0, None),
                };
                cache.stamps[pos] = version;
                cache.scores[pos] = s;
                cache.models[pos] = model;
                cache.parts[pos] = parts;
                s
            };
            if score == f64::NEG_INFINITY {
                continue;
            }
            if let Some(bias) = &bias {
                score += bias[cache.models[pos] as usize];
            }
            if score > best {
                best = score;
                best_pos = pos;
                ties = 1;
            } else if random_ties && score == best {
                ties += 1;
                if self.rng.random_range(0..ties) == 0 {
                    best_pos = pos;
                }
            }
        }
        if best_pos == usize::MAX {
            return None;
        }
        let nid = p.nodes[best_pos];
        let node = &self.nodes[nid as usize];
        let gpus = &self.gpus[node.gpu_start..node.gpu_start + node.gpu_len];
        let c = evaluate(
            &ctx,
            need,
            node.cpu_free,
            node.mem_free,
            gpus,
            &mut self.scratch,
        )?;
        Some((nid, c))
    }

    /// Picks the node and the fewest, lowest-QoS victims (all strictly below `qos`) whose
    /// release lets the request fit. Returns the node, victims and the placement after release.
    fn find_victims(
        &mut self,
        pool: u32,
        need: &Need,
        qos: Qos,
        pin: Option<(u32, u64)>,
    ) -> Option<(u32, Vec<u64>, Choice)> {
        let ctx = self.ctx(pool);
        let candidates: Vec<u32> = match pin {
            Some((node, _)) => vec![node],
            None => self.pools[pool as usize].nodes.clone(),
        };
        let mut scratch = Vec::with_capacity(MAX_GPUS_PER_NODE);
        let mut work: Vec<Gpu> = Vec::with_capacity(MAX_GPUS_PER_NODE);
        // (max victim qos, victim count, freed footprint) -- lower is better.
        let mut best: Option<VictimPlan> = None;
        let fits = |cpu: u64, mem: u64, gpus: &[Gpu], scratch: &mut Vec<Gpu>| match pin {
            Some((_, mask)) => pinned_fit(cpu, mem, gpus, need, mask),
            None => evaluate(&ctx, need, cpu, mem, gpus, scratch),
        };
        for nid in candidates {
            let n = &self.nodes[nid as usize];
            let mut cands: Vec<(Qos, u64, u64)> = n
                .allocs
                .iter()
                .filter_map(|id| {
                    let r = &self.allocs[id];
                    (r.qos < qos).then(|| (r.qos, footprint(r), *id))
                })
                .collect();
            if cands.is_empty() {
                continue;
            }
            cands.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
            work.clear();
            work.extend_from_slice(&self.gpus[n.gpu_start..n.gpu_start + n.gpu_len]);
            let (mut cpu, mut mem) = (n.cpu_free, n.mem_free);
            let mut chosen: Vec<(Qos, u64, u64)> = Vec::new();
            let mut ok = false;
            for c in cands {
                let r = &self.allocs[&c.2];
                give_back(&mut work, r);
                cpu += r.cpu;
                mem += r.mem;
                chosen.push(c);
                if fits(cpu, mem, &work, &mut scratch).is_some() {
                    ok = true;
                    break;
                }
            }
            if !ok {
                continue;
            }
            // Drop victims that turn out unnecessary, highest QoS / last added first.
            let mut j = chosen.len();
            while j > 0 {
                j -= 1;
                let r = &self.allocs[&chosen[j].2];
                take_again(&mut work, r);
                if r.cpu <= cpu
                    && r.mem <= mem
                    && fits(cpu - r.cpu, mem - r.mem, &work, &mut scratch).is_some()
                {
                    cpu -= r.cpu;
                    mem -= r.mem;
                    chosen.remove(j);
                } else {
                    give_back(&mut work, r);
                }
            }
            let Some(choice) = fits(cpu, mem, &work, &mut scratch) else {
                continue;
            };
            let cost = (
                chosen.iter().map(|c| c.0).max().unwrap_or(Qos::Low),
                chosen.len(),
                chosen.iter().map(|c| c.1).sum::<u64>(),
            );
            if best.as_ref().is_none_or(|b| cost < b.0) {
                best = Some((cost, nid, chosen.iter().map(|c| c.2).collect(), choice));
            }
        }
        best.map(|(_, nid, v, c)| (nid, v, c))
    }

    fn why_not(&self, pool: u32, need: &Need, req: &Request) -> String {
        let p = &self.pools[pool as usize];
        if p.nodes.is_empty() {
            return "the pool has no nodes".into();
        }
        let host = p.nodes.iter().any(|&n| {
            let n = &self.nodes[n as usize];
            n.cpu_free >= need.cpu && n.mem_free >= need.mem
        });
        if !host {
            return format!(
                "no node has {} milli-CPU and {} bytes of memory free",
                need.cpu, need.mem
            );
        }
        format!(
            "no node has {} free GPUs matching {:?} x {} (models {:?}, vendor {:?}{})",
            req.gpu_count,
            (req.tflops, req.vram),
            req.gpu_count,
            req.models,
            req.vendor,
            if req.dedicated { ", dedicated" } else { "" }
        )
    }

    fn commit(&mut self, pool: u32, node: u32, need: &Need, mask: u64, req: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.commit_as(id, pool, node, need, mask, &req.namespace, req.qos);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_as(
        &mut self,
        id: u64,
        pool: u32,
        node: u32,
        need: &Need,
        mask: u64,
        namespace: &str,
        qos: Qos,
    ) {
        let n = &mut self.nodes[node as usize];
        let mut grants = Vec::with_capacity(need.gpu_count as usize);
        let model_free = &mut self.pools[pool as usize].model_free;
        for i in bits(mask) {
            let g = &mut self.gpus[n.gpu_start + i];
            let (t, v) = g.demand(need.tflops, need.vram, need.dedicated);
            let before = g.free_permille();
            g.take(need.tflops, need.vram, need.dedicated);
            model_free[g.model as usize] += g.free_permille() - before;
            grants.push(GpuGrant {
                gpu: i as u32,
                tflops_milli: t,
                vram_bytes: v,
            });
        }
        n.cpu_free -= need.cpu;
        n.mem_free -= need.mem;
        n.version += 1;
        self.pools[pool as usize].versions[n.pos as usize] = n.version;
        n.allocs.push(id);
        self.pools[pool as usize].cpu_free -= need.cpu;
        self.pools[pool as usize].mem_free -= need.mem;
        self.pools[pool as usize].live_by_qos[qos as usize] += 1;
        let ns = self.namespaces.entry(namespace.to_string()).or_default();
        for g in &grants {
            ns.used.tflops_milli += g.tflops_milli;
            ns.used.vram_bytes += g.vram_bytes;
        }
        ns.used.gpus += grants.len() as u64;
        self.allocs.insert(
            id,
            Record {
                pool,
                namespace: namespace.to_string(),
                qos,
                node,
                grants,
                dedicated: need.dedicated,
                cpu: need.cpu,
                mem: need.mem,
                need: *need,
            },
        );
    }

    /// Moves a live allocation to the given GPUs of `node` (same pool), keeping its id, QoS,
    /// namespace and request: shares resolve against the new GPUs. The target must fit the
    /// request as a new placement would (host CPU and memory, models, vendor, dedicated,
    /// required topology tier) and the namespace's quota must hold; otherwise nothing changes.
    pub fn migrate(&mut self, id: AllocationId, node: &str, gpus: &[u32]) -> Result<Allocation> {
        let rec = self
            .allocs
            .get(&id.0)
            .ok_or(SchedError::UnknownAllocation(id))?;
        let &target = self
            .node_ids
            .get(node)
            .ok_or_else(|| SchedError::UnknownNode(node.to_string()))?;
        let (pool, need) = (rec.pool, rec.need);
        let bad = |m: String| Err(SchedError::InvalidRequest(m));
        if self.nodes[target as usize].pool != pool {
            return bad(format!("node {node:?} is in another pool"));
        }
        if gpus.len() != rec.grants.len() {
            return bad(format!(
                "{} GPUs given for an allocation of {}",
                gpus.len(),
                rec.grants.len()
            ));
        }
        let mut mask = 0u64;
        for &g in gpus {
            if g as usize >= self.nodes[target as usize].gpu_len || mask & (1 << g) != 0 {
                return bad(format!("GPU {g} out of range or given twice"));
            }
            mask |= 1 << g;
        }
        let rec = self.release_inner(id.0);
        let n = &self.nodes[target as usize];
        let gpu_slice = &self.gpus[n.gpu_start..n.gpu_start + n.gpu_len];
        let fits = pinned_fit(n.cpu_free, n.mem_free, gpu_slice, &need, mask).is_some();
        let quota = if fits {
            let (mut t, mut v) = (0u64, 0u64);
            for i in bits(mask) {
                let (dt, dv) = gpu_slice[i].demand(need.tflops, need.vram, need.dedicated);
                t += dt;
                v += dv;
            }
            self.check_quota(&rec.namespace, t, v, need.gpu_count as u64)
        } else {
            Ok(())
        };
        if !fits || quota.is_err() {
            let pool_name = self.pools[pool as usize].config.name.clone();
            self.restore(id.0, rec);
            quota?;
            return Err(SchedError::Unschedulable {
                pool: pool_name,
                reason: format!("allocation {id} does not fit GPUs {gpus:?} of node {node:?}"),
            });
        }
        self.commit_as(id.0, pool, target, &need, mask, &rec.namespace, rec.qos);
        Ok(self.view(id.0, &self.allocs[&id.0], Vec::new()))
    }

    /// Scores a request on each of the named nodes without placing it (for a scheduler
    /// extender's filter and prioritize): `Some(score)` where the node could take it now by
    /// the policy (higher is better), `None` where it cannot (not in the request's pool,
    /// unknown, or not fitting). Preemption is not considered. Errors are those of a malformed
    /// request ([`Scheduler::check_request`]).
    pub fn score_nodes<S: AsRef<str>>(
        &mut self,
        req: &Request,
        nodes: &[S],
    ) -> Result<Vec<Option<f64>>> {
        let (pool, need, _) = self.validate(req)?;
        self.refresh_host_levels(pool);
        let ctx = pool_ctx(self.policy, &self.pools[pool as usize]);
        let mut out = Vec::with_capacity(nodes.len());
        for name in nodes {
            let score = self.node_ids.get(name.as_ref()).and_then(|&id| {
                let n = &self.nodes[id as usize];
                if n.pool != pool || (need.gpu_count > 0 && need.models == 0) {
                    return None;
                }
                let gpus = &self.gpus[n.gpu_start..n.gpu_start + n.gpu_len];
                evaluate(&ctx, &need, n.cpu_free, n.mem_free, gpus, &mut self.scratch)
                    .map(|c| c.score)
            });
            out.push(score);
        }
        Ok(out)
    }

    /// Reserves a request on one given node: the policy picks the GPUs on that node (as
    /// [`Scheduler::reserve`] would there), and the placement is committed as a pinned one.
    /// Fails with `Unschedulable` when the node cannot take it; never preempts.
    pub fn reserve_on(&mut self, req: &Request, node: &str) -> Result<Allocation> {
        let (pool, need, _) = self.validate(req)?;
        let &id = self
            .node_ids
            .get(node)
            .ok_or_else(|| SchedError::UnknownNode(node.to_string()))?;
        let unschedulable = |reason: String| SchedError::Unschedulable {
            pool: req.pool.clone(),
            reason,
        };
        if self.nodes[id as usize].pool != pool {
            return Err(unschedulable(format!(
                "node {node:?} is not in pool {:?}",
                req.pool
            )));
        }
        self.refresh_host_levels(pool);
        let ctx = pool_ctx(self.policy, &self.pools[pool as usize]);
        let n = &self.nodes[id as usize];
        let gpus = &self.gpus[n.gpu_start..n.gpu_start + n.gpu_len];
        let choice = if need.gpu_count > 0 && need.models == 0 {
            None
        } else {
            evaluate(&ctx, &need, n.cpu_free, n.mem_free, gpus, &mut self.scratch)
        };
        let Some(choice) = choice else {
            return Err(unschedulable(format!(
                "node {node:?} cannot take the request now: {}",
                self.why_not(pool, &need, req)
            )));
        };
        let mut pinned = req.clone();
        pinned.pin = Some(Pin {
            node: node.to_string(),
            gpus: bits(choice.mask).map(|g| g as u32).collect(),
        });
        let mut a = self.reserve_inner(&pinned, true)?.0;
        a.preempted.clear();
        Ok(a)
    }

    /// Releases an allocation, returning exactly what it held to its GPUs, node and namespace.
    pub fn release(&mut self, id: AllocationId) -> Result<Allocation> {
        if !self.allocs.contains_key(&id.0) {
            return Err(SchedError::UnknownAllocation(id));
        }
        let rec = self.release_inner(id.0);
        Ok(self.view(id.0, &rec, Vec::new()))
    }

    fn release_inner(&mut self, id: u64) -> Record {
        let rec = self.allocs.remove(&id).expect("live allocation");
        self.pools[rec.pool as usize].live_by_qos[rec.qos as usize] -= 1;
        let n = &mut self.nodes[rec.node as usize];
        let gpus = &mut self.gpus[n.gpu_start..n.gpu_start + n.gpu_len];
        let model_free = &mut self.pools[rec.pool as usize].model_free;
        for g in &rec.grants {
            let gpu = &gpus[g.gpu as usize];
            model_free[gpu.model as usize] -= gpu.free_permille();
        }
        give_back(gpus, &rec);
        for g in &rec.grants {
            let gpu = &gpus[g.gpu as usize];
            model_free[gpu.model as usize] += gpu.free_permille();
        }
        n.cpu_free += rec.cpu;
        n.mem_free += rec.mem;
        n.version += 1;
        if let Some(pos) = n.allocs.iter().position(|&a| a == id) {
            n.allocs.swap_remove(pos);
        }
        let p = &mut self.pools[rec.pool as usize];
        p.versions[n.pos as usize] = n.version;
        p.cpu_free += rec.cpu;
        p.mem_free += rec.mem;
        if let Some(ns) = self.namespaces.get_mut(&rec.namespace) {
            for g in &rec.grants {
                ns.used.tflops_milli -= g.tflops_milli;
                ns.used.vram_bytes -= g.vram_bytes;
            }
            ns.used.gpus -= rec.grants.len() as u64;
        }
        rec
    }

    fn view(&self, id: u64, r: &Record, preempted: Vec<AllocationId>) -> Allocation {
        Allocation {
            id: AllocationId(id),
            pool: self.pools[r.pool as usize].config.name.clone(),
            namespace: r.namespace.clone(),
            qos: r.qos,
            node: self.nodes[r.node as usize].name.clone(),
            gpus: r.grants.clone(),
            cpu_milli: r.cpu,
            memory_bytes: r.mem,
            preempted,
        }
    }
}

fn pinned_fit(cpu: u64, mem: u64, gpus: &[Gpu], need: &Need, mask: u64) -> Option<Choice> {
    if cpu < need.cpu || mem < need.mem {
        return None;
    }
    if let TopologyMode::Require(t) = need.topo
        && crate::policy::mask_tier(gpus, mask) < t
    {
        return None;
    }
    for i in bits(mask) {
        let g = &gpus[i];
        let model_ok = need.models & (1 << g.model) != 0;
        let vendor_ok = need.vendor.is_none_or(|v| v == g.vendor);
        if !model_ok || !vendor_ok || !g.fits(need.tflops, need.vram, need.dedicated) {
            return None;
        }
    }
    Some(Choice {
        score: 0.0,
        mask,
        fit: mask,
        parts: None,
    })
}

fn give_back(gpus: &mut [Gpu], r: &Record) {
    for g in &r.grants {
        let gpu = &mut gpus[g.gpu as usize];
        gpu.free_t += g.tflops_milli;
        gpu.free_v += g.vram_bytes;
        gpu.users -= 1;
        if r.dedicated {
            gpu.dedicated = false;
        }
    }
}

fn take_again(gpus: &mut [Gpu], r: &Record) {
    for g in &r.grants {
        let gpu = &mut gpus[g.gpu as usize];
        gpu.free_t -= g.tflops_milli;
        gpu.free_v -= g.vram_bytes;
        gpu.users += 1;
        if r.dedicated {
            gpu.dedicated = true;
        }
    }
}

/// The policy context of a pool.
///
/// Host ratios for the stranding term: future GPU requests take `g` CPU per GPU (the
/// profile's GPU requests); CPU-only requests take another `o` per GPU of the stream. While
/// the pool's free CPU covers `(g + o)` per free GPU, CPU-only requests can live off CPU that no
/// GPU needs, and a node's GPU is fed at `g`. When it does not, the shortfall `s` (as a share of
/// `o`, quantised to `1 / HOST_LEVELS`) lands on nodes with free GPUs: the ratio becomes
/// `g + s o`. The same holds for memory.
fn pool_ctx(policy: Policy, p: &PoolState) -> Ctx<'_> {
    let ratio = |base: f64, only: f64, level: u32| base + only * level as f64 / HOST_LEVELS;
    Ctx {
        policy,
        profile: &p.profile,
        max_cpu: p.max_cpu.max(1),
        max_gpu_share: p.max_gpu_share.max(1.0),
        cpu_per_gpu: ratio(
            p.profile.cpu_per_gpu,
            p.profile.cpu_only_per_gpu,
            p.host_level[0],
        ),
        mem_per_gpu: ratio(
            p.profile.mem_per_gpu,
            p.profile.mem_only_per_gpu,
            p.host_level[1],
        ),
    }
}

/// The default policy's model-pressure term, per interned model: a penalty for placing the
/// request's GPU demand on models that model-constrained demand will need.
///
/// The profile says which share `q_c` of the GPU demand may only use model set `c`. Spread over
/// the free capacity `F_c` of its models, class `c` claims `q_c / F_c` of each free permille
/// there; relative to the pool's free capacity `F`, the pressure on model `m` is
/// `rho_m = sum over c containing m of q_c F / F_c` (1 = the class's fair share). A model that
/// fills faster than the rest, or that many constrained requests need, has a high pressure.
/// Placing `d` permille of GPU on model `m` costs `w d rho_m`. Without model-constrained demand
/// (or with a request that has one model to choose from) every model costs the same and the
/// term is skipped.
fn model_bias(policy: Policy, p: &PoolState, models: &[String], need: &Need) -> Option<Vec<f64>> {
    if policy != Policy::FragLookahead || need.gpu_count == 0 {
        return None;
    }
    let present = p.model_present;
    if (need.models & present).count_ones() < 2 {
        return None;
    }
    let constrained = p
        .profile
        .model_demand
        .iter()
        .filter(|(m, _)| m & present != present && m & present != 0);
    let total: f64 = bits(present).map(|m| p.model_free[m] as f64).sum();
    let mut rho = vec![0.0; models.len().max(1)];
    let mut any = false;
    for &(mask, q) in constrained {
        let fc: f64 = bits(mask & present).map(|m| p.model_free[m] as f64).sum();
        let r = q * total / fc.max(1.0);
        for m in bits(mask & present) {
            rho[m] += r;
        }
        any = true;
    }
    if !any {
        return None;
    }
    let per_gpu = match (need.dedicated, need.tflops, need.vram) {
        (true, _, _) => 1000.0,
        (_, Amount::Permille(t), Amount::Permille(v)) => t.max(v) as f64,
        (_, Amount::Permille(t), _) => t as f64,
        (_, _, Amount::Permille(v)) => v as f64,
        _ => 1000.0,
    };
    let d = per_gpu * need.gpu_count as f64;
    Some(
        rho.into_iter()
            .map(|r| -MODEL_PRESSURE_WEIGHT * d * r)
            .collect(),
    )
}

/// Size of an allocation for victim ordering: GPU milli-TFLOPS plus a CPU term.
fn footprint(r: &Record) -> u64 {
    r.grants.iter().map(|g| g.tflops_milli).sum::<u64>() + r.cpu
}

fn bits(mask: u64) -> impl Iterator<Item = usize> {
    let mut m = mask;
    std::iter::from_fn(move || {
        if m == 0 {
            None
        } else {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            Some(i)
        }
    })
}

fn random_subset(rng: &mut StdRng, fit: u64, count: u32) -> u64 {
    let mut idx: Vec<usize> = bits(fit).collect();
    let mut mask = 0u64;
    for k in 0..count as usize {
        let j = rng.random_range(k..idx.len());
        idx.swap(k, j);
        mask |= 1 << idx[k];
    }
    mask
}

fn compile_learned(learned: &HashMap<Need, f64>) -> Compiled {
    let mut entries: Vec<(&Need, &f64)> = learned.iter().collect();
    // HashMap order is random: sort so that equal histories compile identically.
    entries.sort_by(|a, b| {
        b.1.total_cmp(a.1)
            .then(a.0.cpu.cmp(&b.0.cpu))
            .then(a.0.mem.cmp(&b.0.mem))
            .then(a.0.gpu_count.cmp(&b.0.gpu_count))
    });
    Compiled::build(entries.into_iter().map(|(n, &w)| {
        (
            Shape {
                gpu_count: n.gpu_count,
                tflops: n.tflops,
                vram: n.vram,
                models: n.models,
                vendor: n.vendor,
                dedicated: n.dedicated,
            },
            n.cpu,
            n.mem,
            w,
        )
    }))
}
