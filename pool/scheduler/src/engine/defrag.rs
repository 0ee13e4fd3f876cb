//! The defragmentation planner: which allocations to move where so that whole GPUs and whole
//! nodes become free, with as few moves as possible.
//!
//! The planner works on a copy of the pool's state and never changes the scheduler;
//! [`Scheduler::apply_defrag`] carries a plan out with [`Scheduler::migrate`].
//!
//! Greedy by value per move. A *unit* is something the plan can empty: one used GPU (moving
//! every allocation on it) or one used node (moving everything on it). Each round ranks the
//! units by estimated gain per move (GPUs emptied, plus one for a node emptied, over the
//! allocations to move), simulates the best few exactly, and commits the one with the best
//! real net gain per move: GPUs and nodes that become empty, minus those that a move starts
//! using. Allocations go largest first, each to the tightest fitting place: a GPU already in
//! use before an empty one, never a GPU or node the plan has freed (so freed capacity stays
//! free), never an empty node. Allocations of the protected QoS and above never move, so units
//! holding them are skipped. The plan stops when the move budget is spent or nothing gains.

use serde::Serialize;

use super::{Gpu, Need, Scheduler, bits, give_back, take_again};
use crate::error::{Result, SchedError};
use crate::policy::pick;
use crate::types::{AllocationId, GpuGrant, Qos};

/// What the planner may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefragOptions {
    /// The pool to defragment.
    pub pool: String,
    /// At most this many moves.
    pub max_moves: usize,
    /// Allocations of this QoS or above are never moved (default: critical).
    pub protect: Qos,
}

impl DefragOptions {
    /// Defaults: `max_moves` moves, critical work never moves.
    pub fn new(pool: &str, max_moves: usize) -> Self {
        DefragOptions {
            pool: pool.to_string(),
            max_moves,
            protect: Qos::Critical,
        }
    }

    /// Never move allocations of `qos` or above.
    pub fn protecting(mut self, qos: Qos) -> Self {
        self.protect = qos;
        self
    }
}

/// One move: an allocation to other GPUs (or, for CPU-only work, another node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    /// The allocation (its id survives the move).
    pub allocation: AllocationId,
    /// Its QoS (always below the protected level).
    pub qos: Qos,
    /// Where it is.
    pub from_node: String,
    /// GPU indices it holds there.
    pub from_gpus: Vec<u32>,
    /// Where it goes.
    pub to_node: String,
    /// GPU indices it gets there.
    pub to_gpus: Vec<u32>,
}

/// One step of a plan: the moves that empty one GPU or one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefragStep {
    /// What the step empties, e.g. `node n7` or `gpu n7/3`.
    pub empties: String,
    /// The moves, in order.
    pub moves: Vec<Move>,
    /// Net GPUs that become empty (emptied minus newly used).
    pub gpus_freed: i64,
    /// Net nodes that become empty.
    pub nodes_freed: i64,
}

/// A plan: steps in order, each feasible after the ones before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefragPlan {
    /// The steps.
    pub steps: Vec<DefragStep>,
    /// Empty GPUs in the pool before the plan.
    pub empty_gpus_before: usize,
    /// Empty nodes in the pool before the plan.
    pub empty_nodes_before: usize,
}

impl DefragPlan {
    /// All moves, in order.
    pub fn moves(&self) -> impl Iterator<Item = &Move> {
        self.steps.iter().flat_map(|s| s.moves.iter())
    }

    /// Number of moves.
    pub fn move_count(&self) -> usize {
        self.steps.iter().map(|s| s.moves.len()).sum()
    }

    /// Net GPUs freed by the whole plan.
    pub fn gpus_freed(&self) -> i64 {
        self.steps.iter().map(|s| s.gpus_freed).sum()
    }

    /// Net nodes freed by the whole plan.
    pub fn nodes_freed(&self) -> i64 {
        self.steps.iter().map(|s| s.nodes_freed).sum()
    }
}

/// Units simulated exactly per round.
const CANDIDATES_PER_ROUND: usize = 12;

#[derive(Clone)]
struct WAlloc {
    id: u64,
    node: u32,
    grants: Vec<GpuGrant>,
    need: Need,
    qos: Qos,
    cpu: u64,
    mem: u64,
    dedicated: bool,
    /// Already moved by the plan: it stays where the plan put it (each allocation moves at
    /// most once).
    moved: bool,
}

/// The planner's copy of a pool.
struct Work<'a> {
    s: &'a Scheduler,
    nodes: Vec<u32>,
    cpu: Vec<u64>,
    mem: Vec<u64>,
    allocs_on: Vec<Vec<usize>>,
    gpus: Vec<Gpu>,
    frozen_gpu: Vec<bool>,
    frozen_node: Vec<bool>,
    allocs: Vec<WAlloc>,
    protect: Qos,
}

/// A change the simulation can undo.
enum Undo {
    Moved { alloc: usize, from: WAlloc },
}

impl Work<'_> {
    fn gpu_range(&self, node: u32) -> std::ops::Range<usize> {
        let n = &self.s.nodes[node as usize];
        n.gpu_start..n.gpu_start + n.gpu_len
    }

    fn node_empty(&self, node: u32) -> bool {
        self.allocs_on[node as usize].is_empty()
    }

    /// Takes an allocation off its GPUs and node.
    fn lift(&mut self, a: usize) {
        let al = self.allocs[a].clone();
        let r = self.gpu_range(al.node);
        let rec = lifted(&al);
        give_back(&mut self.gpus[r], &rec);
        self.cpu[al.node as usize] += al.cpu;
        self.mem[al.node as usize] += al.mem;
        self.allocs_on[al.node as usize].retain(|&x| x != a);
    }

    /// Puts an allocation (with its current node and grants) onto its GPUs and node.
    fn land(&mut self, a: usize) {
        let al = self.allocs[a].clone();
        let r = self.gpu_range(al.node);
        let rec = lifted(&al);
        take_again(&mut self.gpus[r], &rec);
        self.cpu[al.node as usize] -= al.cpu;
        self.mem[al.node as usize] -= al.mem;
        self.allocs_on[al.node as usize].push(a);
    }

    /// The best place for a lifted allocation, away from `avoid_node` / `avoid_gpus`:
    /// (node, GPU mask, empty GPUs it would start using, tightness).
    fn target(
        &self,
        a: usize,
        avoid_node: Option<u32>,
        avoid_gpus: &[usize],
    ) -> Option<(u32, u64)> {
        let al = &self.allocs[a];
        let need = &al.need;
        let mut best: Option<((u32, f64, u64), u32, u64)> = None;
        let mut local: Vec<Gpu> = Vec::with_capacity(64);
        for &node in &self.nodes {
            if Some(node) == avoid_node
                || self.frozen_node[node as usize]
                || self.node_empty(node)
                || self.cpu[node as usize] < need.cpu
                || self.mem[node as usize] < need.mem
            {
                continue;
            }
            let leftover = self.cpu[node as usize] - need.cpu;
            if need.gpu_count == 0 {
                let key = (0, 0.0, leftover);
                if best.as_ref().is_none_or(|b| better(key, b.0)) {
                    best = Some((key, node, 0));
                }
                continue;
            }
            let r = self.gpu_range(node);
            let start = r.start;
            local.clear();
            local.extend_from_slice(&self.gpus[r.clone()]);
            let mut fit = 0u64;
            for (i, g) in local.iter().enumerate() {
                let global = start + i;
                if self.frozen_gpu[global] || avoid_gpus.contains(&global) {
                    continue;
                }
                if need.models & (1u64 << g.model) == 0
                    || need.vendor.is_some_and(|v| v != g.vendor)
                    || !g.fits(need.tflops, need.vram, need.dedicated)
                {
                    continue;
                }
                fit |= 1 << i;
            }
            if fit.count_ones() < need.gpu_count {
                continue;
            }
            // Used GPUs first, then the tightest.
            let key_of = |i: usize| {
                let g = &local[i];
                let empty = if g.users == 0 { 1e6 } else { 0.0 };
                let (dt, dv) = g.demand(need.tflops, need.vram, need.dedicated);
                let after_t = (g.free_t - dt) as f64 / g.phys_t as f64;
                let after_v = (g.free_v - dv) as f64 / g.phys_v as f64;
                empty + after_t.min(after_v)
            };
            let Some((mask, _)) = pick(&local, fit, need.gpu_count, need.topo, key_of) else {
                continue;
            };
            let empties = bits(mask).filter(|&i| local[i].users == 0).count() as u32;
            let tight: f64 = bits(mask).map(key_of).sum::<f64>() % 1e6;
            let key = (empties, tight, leftover);
            if best.as_ref().is_none_or(|b| better(key, b.0)) {
                best = Some((key, node, mask));
            }
        }
        best.map(|(_, n, m)| (n, m))
    }

    /// Moves the allocations of a unit; returns the moves and undo log, or `None` (state
    /// unchanged) when one of them finds no place.
    fn move_all(
        &mut self,
        members: &[usize],
        avoid_node: Option<u32>,
        avoid_gpus: &[usize],
        undo: &mut Vec<Undo>,
    ) -> Option<Vec<Move>> {
        let mut order = members.to_vec();
        order.sort_by(|&a, &b| {
            let size = |x: usize| {
                let al = &self.allocs[x];
                let t: u64 = al.grants.iter().map(|g| g.tflops_milli).sum();
                (al.grants.len(), t, al.cpu)
            };
            size(b).cmp(&size(a)).then(a.cmp(&b))
        });
        let mut moves = Vec::with_capacity(order.len());
        for a in order {
            self.lift(a);
            let Some((node, mask)) = self.target(a, avoid_node, avoid_gpus) else {
                self.land(a);
                self.rollback(undo);
                return None;
            };
            let from = self.allocs[a].clone();
            let gpus = &self.gpus[self.gpu_range(node)];
            let grants: Vec<GpuGrant> = bits(mask)
                .map(|i| {
                    let (t, v) = gpus[i].demand(from.need.tflops, from.need.vram, from.dedicated);
                    GpuGrant {
                        gpu: i as u32,
                        tflops_milli: t,
                        vram_bytes: v,
                    }
                })
                .collect();
            moves.push(Move {
                allocation: AllocationId(from.id),
                qos: from.qos,
                from_node: self.s.nodes[from.node as usize].name.clone(),
                from_gpus: from.grants.iter().map(|g| g.gpu).collect(),
                to_node: self.s.nodes[node as usize].name.clone(),
                to_gpus: grants.iter().map(|g| g.gpu).collect(),
            });
            self.allocs[a].node = node;
            self.allocs[a].grants = grants;
            self.land(a);
            undo.push(Undo::Moved { alloc: a, from });
        }
        Some(moves)
    }

    fn rollback(&mut self, undo: &mut Vec<Undo>) {
        while let Some(Undo::Moved { alloc, from }) = undo.pop() {
            self.lift(alloc);
            self.allocs[alloc] = from;
            self.land(alloc);
        }
    }

    /// Empty GPUs and nodes among those given.
    fn empties(&self, gpus: &[usize], nodes: &[u32]) -> (i64, i64) {
        let g = gpus.iter().filter(|&&i| self.gpus[i].users == 0).count() as i64;
        let n = nodes.iter().filter(|&&n| self.node_empty(n)).count() as i64;
        (g, n)
    }
}

fn better(a: (u32, f64, u64), b: (u32, f64, u64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && (a.1 < b.1 || (a.1 == b.1 && a.2 < b.2)))
}

/// The engine record shape `give_back`/`take_again` expect.
fn lifted(al: &WAlloc) -> super::Record {
    super::Record {
        pool: 0,
        namespace: String::new(),
        qos: al.qos,
        node: al.node,
        grants: al.grants.clone(),
        dedicated: al.dedicated,
        cpu: al.cpu,
        mem: al.mem,
        need: al.need,
    }
}

/// A unit the planner can try to empty.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Unit {
    Gpu(usize),
    Node(u32),
}

impl Scheduler {
    /// Plans moves that free whole GPUs and whole nodes of a pool (see the module docs).
    /// Nothing changes until the plan is applied with [`Scheduler::apply_defrag`].
    pub fn plan_defrag(&self, opts: &DefragOptions) -> Result<DefragPlan> {
        let pool = self.pool_id(&opts.pool)?;
        let nodes = self.pools[pool as usize].nodes.clone();
        let mut index_of = std::collections::HashMap::new();
        let mut allocs = Vec::new();
        let mut allocs_on = vec![Vec::new(); self.nodes.len()];
        let mut ids: Vec<u64> = nodes
            .iter()
            .flat_map(|&n| self.nodes[n as usize].allocs.iter().copied())
            .collect();
        ids.sort_unstable();
        for id in ids {
            let r = &self.allocs[&id];
            index_of.insert(id, allocs.len());
            allocs_on[r.node as usize].push(allocs.len());
            allocs.push(WAlloc {
                id,
                node: r.node,
                grants: r.grants.clone(),
                need: r.need,
                qos: r.qos,
                cpu: r.cpu,
                mem: r.mem,
                dedicated: r.dedicated,
                moved: false,
            });
        }
        let mut w = Work {
            s: self,
            nodes: nodes.clone(),
            cpu: self.nodes.iter().map(|n| n.cpu_free).collect(),
            mem: self.nodes.iter().map(|n| n.mem_free).collect(),
            allocs_on,
            gpus: self.gpus.clone(),
            frozen_gpu: vec![false; self.gpus.len()],
            frozen_node: vec![false; self.nodes.len()],
            allocs,
            protect: opts.protect,
        };
        let all_gpus: Vec<usize> = nodes.iter().flat_map(|&n| w.gpu_range(n)).collect();
        let (empty_gpus_before, empty_nodes_before) = w.empties(&all_gpus, &nodes);
        let mut steps = Vec::new();
        let mut budget = opts.max_moves;
        let mut dead: std::collections::HashSet<Unit> = std::collections::HashSet::new();
        while budget > 0 {
            // Rank units by estimated gain per move.
            let mut cands: Vec<(f64, usize, Unit)> = Vec::new();
            for &n in &nodes {
                if w.frozen_node[n as usize] || w.node_empty(n) {
                    continue;
                }
                let on = &w.allocs_on[n as usize];
                // Protected or already moved work pins what it sits on, not its neighbours.
                let pinned = |a: &usize| w.allocs[*a].qos >= w.protect || w.allocs[*a].moved;
                let node_movable = !on.iter().any(pinned);
                let r = w.gpu_range(n);
                let used = r.clone().filter(|&g| w.gpus[g].users > 0).count() as f64;
                // Whole-GPU work needs empty GPUs elsewhere: no GPU gained for those.
                let whole = |a: &usize| {
                    let al = &w.allocs[*a];
                    if al.dedicated || al.need.tflops == crate::types::Amount::Permille(1000) {
                        al.grants.len() as f64
                    } else {
                        0.0
                    }
                };
                let est = used + 1.0 - on.iter().map(whole).sum::<f64>();
                if node_movable && on.len() <= budget && est > 0.0 && !dead.contains(&Unit::Node(n))
                {
                    cands.push((est / on.len() as f64, on.len(), Unit::Node(n)));
                }
                for g in r {
                    if w.gpus[g].users == 0 || w.frozen_gpu[g] {
                        continue;
                    }
                    let local = (g - w.gpu_range(n).start) as u32;
                    let members: Vec<usize> = on
                        .iter()
                        .copied()
                        .filter(|&a| w.allocs[a].grants.iter().any(|x| x.gpu == local))
                        .collect();
                    if members.len() > budget
                        || members.iter().any(pinned)
                        || dead.contains(&Unit::Gpu(g))
                    {
                        continue;
                    }
                    let node_too = members.len() == on.len();
                    let gain =
                        1.0 + node_too as u32 as f64 - members.iter().map(whole).sum::<f64>();
                    if gain > 0.0 {
                        cands.push((gain / members.len() as f64, members.len(), Unit::Gpu(g)));
                    }
                }
            }
            cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            // Simulate the best few feasible ones; keep the best real gain per move. A unit
            // that cannot move now, or gains nothing, never will later (targets only fill
            // up), so it is dropped.
            let mut best: Option<(f64, Unit)> = None;
            let mut tried = 0;
            for &(est, _, unit) in &cands {
                if tried >= CANDIDATES_PER_ROUND || best.is_some_and(|(b, _)| est <= b) {
                    break;
                }
                match simulate(&mut w, unit) {
                    Some((gain, moves)) if gain > 0 => {
                        tried += 1;
                        let ratio = gain as f64 / moves as f64;
                        if best.is_none_or(|(b, _)| ratio > b) {
                            best = Some((ratio, unit));
                        }
                    }
                    _ => {
                        dead.insert(unit);
                    }
                }
            }
            let Some((_, unit)) = best else {
                break;
            };
            let step = commit_unit(&mut w, unit).expect("simulated just now");
            budget -= step.moves.len();
            steps.push(step);
        }
        Ok(DefragPlan {
            steps,
            empty_gpus_before: empty_gpus_before as usize,
            empty_nodes_before: empty_nodes_before as usize,
        })
    }

    /// Carries out a plan move by move with [`Scheduler::migrate`]. Stops at the first move
    /// that no longer fits (the cluster changed since planning) and returns its error; the
    /// moves before it stay done.
    pub fn apply_defrag(&mut self, plan: &DefragPlan) -> Result<usize> {
        let mut done = 0;
        for m in plan.moves() {
            let a = self
                .allocation(m.allocation)
                .ok_or(SchedError::UnknownAllocation(m.allocation))?;
            if a.qos >= Qos::Critical {
                return Err(SchedError::InvalidRequest(format!(
                    "{} is critical and never moves",
                    m.allocation
                )));
            }
            self.migrate(m.allocation, &m.to_node, &m.to_gpus)?;
            done += 1;
        }
        Ok(done)
    }
}

/// The allocations a unit moves, what to keep away from, and its GPUs and nodes.
fn unit_members(w: &Work<'_>, unit: Unit) -> (Vec<usize>, Option<u32>, Vec<usize>, String) {
    match unit {
        Unit::Node(n) => (
            w.allocs_on[n as usize].clone(),
            Some(n),
            w.gpu_range(n).collect(),
            format!("node {}", w.s.nodes[n as usize].name),
        ),
        Unit::Gpu(g) => {
            let n = w
                .nodes
                .iter()
                .copied()
                .find(|&n| w.gpu_range(n).contains(&g))
                .expect("GPU of a pool node");
            let local = (g - w.gpu_range(n).start) as u32;
            let members: Vec<usize> = w.allocs_on[n as usize]
                .iter()
                .copied()
                .filter(|&a| w.allocs[a].grants.iter().any(|x| x.gpu == local))
                .collect();
            // The other GPUs of multi-GPU members empty too: keep them free as well.
            let mut avoid: Vec<usize> = members
                .iter()
                .flat_map(|&a| w.allocs[a].grants.iter())
                .map(|x| w.gpu_range(n).start + x.gpu as usize)
                .collect();
            avoid.sort_unstable();
            avoid.dedup();
            (
                members,
                None,
                avoid,
                format!("gpu {}/{}", w.s.nodes[n as usize].name, local),
            )
        }
    }
}

/// Simulates a unit: `(net GPUs + nodes freed, moves)`; the state is unchanged afterwards.
fn simulate(w: &mut Work<'_>, unit: Unit) -> Option<(i64, usize)> {
    simulate_moves(w, unit, false).map(|(g, n, m)| (g + n, m.len()))
}

/// Moves a unit's allocations: `(net GPUs freed, net nodes freed, moves)`. With `keep` the
/// moves stay in the planner's state, else they are undone.
fn simulate_moves(w: &mut Work<'_>, unit: Unit, keep: bool) -> Option<(i64, i64, Vec<Move>)> {
    let (members, avoid_node, avoid_gpus, _) = unit_members(w, unit);
    if members.is_empty()
        || members
            .iter()
            .any(|&a| w.allocs[a].qos >= w.protect || w.allocs[a].moved)
    {
        return None;
    }
    let before: Vec<WAlloc> = members.iter().map(|&a| w.allocs[a].clone()).collect();
    let mut undo = Vec::new();
    let moves = w.move_all(&members, avoid_node, &avoid_gpus, &mut undo)?;
    let after: Vec<WAlloc> = members.iter().map(|&a| w.allocs[a].clone()).collect();
    // Only the places the members left or reached can change emptiness.
    let (mut gpus, mut nodes) = touched(w, &before);
    let (g2, n2) = touched(w, &after);
    gpus.extend(g2);
    nodes.extend(n2);
    gpus.sort_unstable();
    gpus.dedup();
    nodes.sort_unstable();
    nodes.dedup();
    let (g_after, n_after) = w.empties(&gpus, &nodes);
    w.rollback(&mut undo);
    let (g_before, n_before) = w.empties(&gpus, &nodes);
    if keep {
        let again = w.move_all(&members, avoid_node, &avoid_gpus, &mut undo)?;
        debug_assert_eq!(again, moves, "the planner is deterministic");
    }
    Some((g_after - g_before, n_after - n_before, moves))
}

/// GPUs (global indices) and nodes an allocation list occupies.
fn touched(w: &Work<'_>, allocs: &[WAlloc]) -> (Vec<usize>, Vec<u32>) {
    let mut gpus = Vec::new();
    let mut nodes = Vec::new();
    for a in allocs {
        let start = w.gpu_range(a.node).start;
        gpus.extend(a.grants.iter().map(|g| start + g.gpu as usize));
        nodes.push(a.node);
    }
    (gpus, nodes)
}

/// Commits a unit to the planner's state and freezes what it freed.
fn commit_unit(w: &mut Work<'_>, unit: Unit) -> Option<DefragStep> {
    let (members, _, _, empties) = unit_members(w, unit);
    let before: Vec<WAlloc> = members.iter().map(|&a| w.allocs[a].clone()).collect();
    let (gpus_freed, nodes_freed, moves) = simulate_moves(w, unit, true)?;
    for a in members {
        w.allocs[a].moved = true;
    }
    let (src_gpus, src_nodes) = touched(w, &before);
    for g in src_gpus {
        if w.gpus[g].users == 0 {
            w.frozen_gpu[g] = true;
        }
    }
    for n in src_nodes {
        if w.node_empty(n) {
            w.frozen_node[n as usize] = true;
        }
    }
    Some(DefragStep {
        empties,
        moves,
        gpus_freed,
        nodes_freed,
    })
}
