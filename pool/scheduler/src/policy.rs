//! Placement policies: which node, and which GPUs on it, serve a request.
//!
//! Every policy is a pure function of one node's state and the request, returning a score
//! (higher is better) and the GPUs it would use. The engine caches these per request class and
//! node version, so a policy is only re-run on nodes that changed.

use std::fmt;
use std::str::FromStr;

use crate::error::SchedError;
use crate::profile::{Compiled, Group};
use crate::types::{Amount, TopologyMode, TopologyTier, Vendor};

/// The placement policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Default. Fragmentation-aware with look-ahead; see the crate docs and `pool/README.md`.
    #[default]
    FragLookahead,
    /// Fragmentation gradient descent (Weng et al., ATC '23), as in the paper's artifact:
    /// fragmentation against the typical shapes, quantised sigmoid scores, ties to pool order.
    Fgd,
    /// FGD paper's best-fit baseline: least leftover (CPU, GPU) on the node, tightest GPU.
    BestFit,
    /// A uniformly random node that fits, a uniformly random GPU on it.
    Random,
    /// TensorFusion `CompactFirst`: the node and GPUs with the least free resources.
    CompactFirst,
    /// TensorFusion `LowLoadFirst`: the node and GPUs with the most free resources.
    LowLoadFirst,
    /// TensorFusion `NodeCompactGPULowLoad`: the fullest node, its least-loaded GPUs.
    NodeCompactGpuLowLoad,
}

impl Policy {
    /// Every policy, default first.
    pub const ALL: [Policy; 7] = [
        Policy::FragLookahead,
        Policy::Fgd,
        Policy::BestFit,
        Policy::Random,
        Policy::CompactFirst,
        Policy::LowLoadFirst,
        Policy::NodeCompactGpuLowLoad,
    ];

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::FragLookahead => "frag-lookahead",
            Policy::Fgd => "fgd",
            Policy::BestFit => "best-fit",
            Policy::Random => "random",
            Policy::CompactFirst => "CompactFirst",
            Policy::LowLoadFirst => "LowLoadFirst",
            Policy::NodeCompactGpuLowLoad => "NodeCompactGPULowLoad",
        }
    }

    /// Whether the policy scores against a workload profile.
    pub fn uses_profile(self) -> bool {
        matches!(self, Policy::FragLookahead | Policy::Fgd)
    }

    /// Whether equal best scores are broken at random (otherwise: first node in pool order).
    pub(crate) fn random_ties(self) -> bool {
        matches!(self, Policy::Random)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = SchedError;
    fn from_str(s: &str) -> Result<Self, SchedError> {
        let norm: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match norm.as_str() {
            "fraglookahead" | "default" => Policy::FragLookahead,
            "fgd" => Policy::Fgd,
            "bestfit" => Policy::BestFit,
            "random" => Policy::Random,
            "compactfirst" => Policy::CompactFirst,
            "lowloadfirst" => Policy::LowLoadFirst,
            "nodecompactgpulowload" => Policy::NodeCompactGpuLowLoad,
            _ => {
                return Err(SchedError::InvalidRequest(format!(
                    "unknown policy {s:?}; known: {}",
                    Policy::ALL.map(|p| p.name()).join(", ")
                )));
            }
        })
    }
}

/// One GPU's live state inside the engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gpu {
    pub phys_t: u64,
    pub phys_v: u64,
    pub cap_t: u64,
    pub cap_v: u64,
    pub free_t: u64,
    pub free_v: u64,
    pub model: u8,
    pub vendor: Vendor,
    pub numa: u8,
    /// NVLink domain on the node (`NO_LINK`: none).
    pub link: u16,
    pub users: u32,
    pub dedicated: bool,
}

impl Gpu {
    /// Free share of the physical GPU in permille (the smaller of compute and memory).
    #[inline]
    pub fn share(&self) -> f64 {
        let t = self.free_t as f64 * 1000.0 / self.phys_t as f64;
        let v = self.free_v as f64 * 1000.0 / self.phys_v as f64;
        t.min(v)
    }

    /// Free share of the physical GPU in whole permille (exact integer bookkeeping).
    #[inline]
    pub fn free_permille(&self) -> i64 {
        let permille = |free: u64, phys: u64| match free.checked_mul(1000) {
            Some(x) => x / phys,
            None => (free as u128 * 1000 / phys as u128) as u64,
        };
        permille(self.free_t, self.phys_t).min(permille(self.free_v, self.phys_v)) as i64
    }

    /// Used share of the physical GPU in permille.
    #[inline]
    pub fn used_share(&self) -> f64 {
        let t = (self.cap_t - self.free_t) as f64 * 1000.0 / self.phys_t as f64;
        let v = (self.cap_v - self.free_v) as f64 * 1000.0 / self.phys_v as f64;
        t.max(v)
    }

    /// Absolute (compute, memory) a demand takes on this GPU.
    #[inline]
    pub fn demand(&self, t: Amount, v: Amount, dedicated: bool) -> (u64, u64) {
        if dedicated {
            (self.cap_t, self.cap_v)
        } else {
            (t.resolve(self.phys_t), v.resolve(self.phys_v))
        }
    }

    /// Whether a demand fits now.
    #[inline]
    pub fn fits(&self, t: Amount, v: Amount, dedicated: bool) -> bool {
        if dedicated {
            return self.users == 0;
        }
        if self.dedicated {
            return false;
        }
        let (dt, dv) = self.demand(t, v, false);
        self.free_t >= dt && self.free_v >= dv
    }

    #[inline]
    fn accepts(&self, models: u64, vendor: Option<Vendor>) -> bool {
        models & (1u64 << self.model) != 0 && vendor.is_none_or(|v| v == self.vendor)
    }

    #[inline]
    pub fn take(&mut self, t: Amount, v: Amount, dedicated: bool) {
        let (dt, dv) = self.demand(t, v, dedicated);
        self.free_t -= dt;
        self.free_v -= dv;
        self.users += 1;
        self.dedicated |= dedicated;
    }
}

/// `Gpu::link` of a GPU without NVLink.
pub(crate) const NO_LINK: u16 = u16::MAX;

/// Score added per topology tier above `Node` for multi-GPU requests that care (soft and hard
/// modes): larger than any policy score difference, so the best tier wins and the policy ranks
/// placements of equal tier.
const TOPOLOGY_BONUS: f64 = 1e9;

/// A request reduced to what placement looks at; also the key of the score cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Need {
    pub gpu_count: u32,
    pub tflops: Amount,
    pub vram: Amount,
    pub cpu: u64,
    pub mem: u64,
    pub models: u64,
    pub vendor: Option<Vendor>,
    pub dedicated: bool,
    /// Topology mode (`Ignore` for fewer than two GPUs).
    pub topo: TopologyMode,
}

/// Pool-wide constants a policy may use.
pub(crate) struct Ctx<'a> {
    pub policy: Policy,
    pub profile: &'a Compiled,
    /// Largest node CPU in the pool (best-fit normalisation).
    pub max_cpu: u64,
    /// Largest node GPU capacity in the pool, GPU-permille (best-fit normalisation).
    pub max_gpu_share: f64,
    /// Host CPU (milli) that future requests will take per whole GPU they use, CPU-only
    /// requests included when the pool's CPU is short (see `engine::pool_ctx`).
    pub cpu_per_gpu: f64,
    /// The same for host memory (bytes).
    pub mem_per_gpu: f64,
}

/// A policy's verdict on one node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Choice {
    pub score: f64,
    /// GPUs (bit per local index) the request would use.
    pub mask: u64,
    /// GPUs that could take the request.
    pub fit: u64,
    /// For the default policy: `[gradient, topology bonus, free GPU before, free GPU after]`,
    /// from which `score` is re-derived when the pool's host ratios change (see `rescore`).
    pub parts: Option<[f64; 4]>,
}

/// Fragmentation of a node against a profile: the expected GPU capacity (permille) that a
/// request drawn from the profile's typical shapes could not use (FGD's measure: a shape that
/// cannot fit the node at all, for lack of GPUs or CPU, sees all free GPU as fragment; one that
/// fits sees the GPUs too small for it).
pub(crate) fn frag(profile: &Compiled, gpus: &[Gpu], cpu_free: u64) -> f64 {
    let mut shares = [0f64; 64];
    for (i, g) in gpus.iter().enumerate() {
        shares[i] = g.share();
    }
    let masks: Vec<u64> = profile
        .groups
        .iter()
        .map(|grp| fit_mask(grp, gpus))
        .collect();
    frag_from(profile, &shares[..gpus.len()], &masks, cpu_free)
}

/// Whether a profile group fits on one GPU.
#[inline]
fn group_fits(grp: &Group, g: &Gpu) -> bool {
    g.accepts(grp.models, grp.vendor) && g.fits(grp.tflops, grp.vram, grp.dedicated)
}

/// Bit per GPU on which a profile group fits.
fn fit_mask(grp: &Group, gpus: &[Gpu]) -> u64 {
    let mut m = 0u64;
    for (i, g) in gpus.iter().enumerate() {
        if group_fits(grp, g) {
            m |= 1 << i;
        }
    }
    m
}

/// [`frag`] from per-GPU free shares and per-group fit masks.
fn frag_from(profile: &Compiled, shares: &[f64], masks: &[u64], cpu_free: u64) -> f64 {
    let total: f64 = shares.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut f = 0.0;
    for (grp, &mask) in profile.groups.iter().zip(masks) {
        if grp.gpu_count == 0 {
            // CPU-only requests can use no GPU: a constant that no placement changes.
            continue;
        }
        let mut w_fit = 0.0;
        for &(c, w) in &grp.variants {
            if c <= cpu_free {
                w_fit += w;
            }
        }
        if w_fit <= 0.0 {
            f += grp.weight * total;
            continue;
        }
        if mask.count_ones() >= grp.gpu_count {
            let mut unfit = 0.0;
            for (i, s) in shares.iter().enumerate() {
                if mask & (1 << i) == 0 {
                    unfit += s;
                }
            }
            f += w_fit * unfit + (grp.weight - w_fit) * total;
        } else {
            f += grp.weight * total;
        }
    }
    f
}

/// Picks `count` GPUs from `fit` preferring lower `key`. Unless topology is ignored, the GPUs
/// come from one NVLink domain when one can hold the whole request, else from one NUMA node
/// when one can (the group of the most preferred GPU first). Returns the GPUs and the tier they
/// reach, or `None` when a required tier cannot be met.
pub(crate) fn pick(
    gpus: &[Gpu],
    fit: u64,
    count: u32,
    topo: TopologyMode,
    key: impl Fn(usize) -> f64,
) -> Option<(u64, TopologyTier)> {
    let mut idx: [u8; 64] = [0; 64];
    let mut n = 0;
    let mut m = fit;
    while m != 0 {
        let i = m.trailing_zeros() as usize;
        m &= m - 1;
        idx[n] = i as u8;
        n += 1;
    }
    let idx = &mut idx[..n];
    if count == 1 {
        let mut best = idx[0] as usize;
        let mut bk = key(best);
        for &i in idx.iter().skip(1) {
            let k = key(i as usize);
            if k < bk {
                bk = k;
                best = i as usize;
            }
        }
        return Some((1u64 << best, TopologyTier::NvLink));
    }
    idx.sort_by(|&a, &b| key(a as usize).total_cmp(&key(b as usize)).then(a.cmp(&b)));
    let required = match topo {
        TopologyMode::Require(t) => t,
        _ => TopologyTier::Node,
    };
    if topo != TopologyMode::Ignore {
        // First group (in preference order of its best GPU) that can hold everything.
        let group = |same: &dyn Fn(usize, usize) -> bool| -> Option<u64> {
            for &lead in idx.iter() {
                let lead = lead as usize;
                let members = idx.iter().filter(|&&i| same(lead, i as usize)).count();
                if members >= count as usize {
                    let mut mask = 0u64;
                    for &i in idx.iter().filter(|&&i| same(lead, i as usize)) {
                        if mask.count_ones() < count {
                            mask |= 1 << i;
                        }
                    }
                    return Some(mask);
                }
            }
            None
        };
        if let Some(mask) = group(&|a, b| gpus[a].link != NO_LINK && gpus[a].link == gpus[b].link) {
            return Some((mask, TopologyTier::NvLink));
        }
        if required == TopologyTier::NvLink {
            return None;
        }
        if let Some(mask) = group(&|a, b| gpus[a].numa == gpus[b].numa) {
            return Some((mask, TopologyTier::Numa));
        }
        if required == TopologyTier::Numa {
            return None;
        }
    }
    let mut mask = 0u64;
    for &i in idx.iter().take(count as usize) {
        mask |= 1 << i;
    }
    Some((mask, TopologyTier::Node))
}

/// The tier the GPUs of `mask` reach.
pub(crate) fn mask_tier(gpus: &[Gpu], mask: u64) -> TopologyTier {
    let mut it = (0..gpus.len()).filter(|&i| mask & (1 << i) != 0);
    let Some(first) = it.next() else {
        return TopologyTier::NvLink;
    };
    let (mut link, mut numa) = (gpus[first].link != NO_LINK, true);
    for i in it {
        link &= gpus[i].link == gpus[first].link;
        numa &= gpus[i].numa == gpus[first].numa;
    }
    if link {
        TopologyTier::NvLink
    } else if numa {
        TopologyTier::Numa
    } else {
        TopologyTier::Node
    }
}

/// Score bonus of a placement's topology tier (0 for requests that ignore topology).
#[inline]
fn tier_bonus(need: &Need, tier: TopologyTier) -> f64 {
    if need.gpu_count < 2 || need.topo == TopologyMode::Ignore {
        return 0.0;
    }
    TOPOLOGY_BONUS
        * match tier {
            TopologyTier::Node => 0.0,
            TopologyTier::Numa => 1.0,
            TopologyTier::NvLink => 2.0,
        }
}

fn apply(scratch: &mut Vec<Gpu>, gpus: &[Gpu], need: &Need, mask: u64) {
    scratch.clear();
    scratch.extend_from_slice(gpus);
    let mut m = mask;
    while m != 0 {
        let i = m.trailing_zeros() as usize;
        m &= m - 1;
        scratch[i].take(need.tflops, need.vram, need.dedicated);
    }
}

fn sum_share(gpus: &[Gpu]) -> f64 {
    gpus.iter().map(Gpu::share).sum()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Scores one node for a request; `None` when it cannot host it.
pub(crate) fn evaluate(
    ctx: &Ctx<'_>,
    need: &Need,
    cpu_free: u64,
    mem_free: u64,
    gpus: &[Gpu],
    scratch: &mut Vec<Gpu>,
) -> Option<Choice> {
    if cpu_free < need.cpu || mem_free < need.mem {
        return None;
    }
    let mut fit = 0u64;
    if need.gpu_count > 0 {
        let mut n = 0;
        for (i, g) in gpus.iter().enumerate() {
            if g.accepts(need.models, need.vendor) && g.fits(need.tflops, need.vram, need.dedicated)
            {
                fit |= 1 << i;
                n += 1;
            }
        }
        if n < need.gpu_count {
            return None;
        }
    }
    let cpu_after = cpu_free - need.cpu;
    let count = need.gpu_count;
    let share = |i: usize| gpus[i].share();
    let choice = |score: f64, mask: u64| {
        Some(Choice {
            score,
            mask,
            fit,
            parts: None,
        })
    };
    let topo = need.topo;
    // The GPUs a policy's GPU order picks, with the topology bonus; `None` fails a hard tier.
    let picked = |key: &dyn Fn(usize) -> f64| -> Option<(u64, f64)> {
        if count == 0 {
            return Some((0, 0.0));
        }
        let (mask, tier) = pick(gpus, fit, count, topo, key)?;
        Some((mask, tier_bonus(need, tier)))
    };
    match ctx.policy {
        Policy::Random => {
            // The engine draws the node (and single GPUs) at random among the best tier.
            let (mask, bonus) = picked(&|_| 0.0)?;
            choice(bonus, mask)
        }
        Policy::CompactFirst | Policy::NodeCompactGpuLowLoad | Policy::LowLoadFirst => {
            let (mask, bonus) = if ctx.policy == Policy::CompactFirst {
                picked(&share)?
            } else {
                picked(&|i| -share(i))?
            };
            apply(scratch, gpus, need, mask);
            let free_after = sum_share(scratch);
            let gpu_total = gpus.len().max(1) as f64 * 1000.0;
            // GPU free fraction dominates; host CPU breaks ties (and ranks CPU-only requests).
            let load = free_after / gpu_total + 1e-3 * cpu_after as f64 / (ctx.max_cpu as f64);
            let score = if ctx.policy == Policy::LowLoadFirst {
                load
            } else {
                -load
            };
            choice(score + bonus, mask)
        }
        Policy::BestFit => {
            let (mask, bonus) = picked(&share)?;
            apply(scratch, gpus, need, mask);
            let gpu_left = sum_share(scratch);
            let leftover = 0.5 * cpu_after as f64 / ctx.max_cpu.max(1) as f64
                + 0.5 * gpu_left / ctx.max_gpu_share.max(1.0);
            choice(bonus - leftover, mask)
        }
        Policy::Fgd => {
            let before = frag(ctx.profile, gpus, cpu_free);
            let q = |after: f64| (sigmoid((before - after) / 1000.0) * 100.0).floor();
            if count == 1 && !need.dedicated && need.tflops != Amount::Permille(1000) {
                // Partial GPU: the GPU with the best (quantised) score, first on ties.
                let mut best: Option<(f64, usize)> = None;
                let mut m = fit;
                while m != 0 {
                    let i = m.trailing_zeros() as usize;
                    m &= m - 1;
                    apply(scratch, gpus, need, 1 << i);
                    let s = q(frag(ctx.profile, scratch, cpu_after));
                    if best.is_none_or(|(bs, _)| s > bs) {
                        best = Some((s, i));
                    }
                }
                let (s, i) = best.expect("fit has at least one GPU");
                choice(s, 1 << i)
            } else {
                let (mask, bonus) = picked(&|i| i as f64)?;
                apply(scratch, gpus, need, mask);
                let s = q(frag(ctx.profile, scratch, cpu_after));
                choice(s + bonus, mask)
            }
        }
        Policy::FragLookahead => frag_lookahead(ctx, need, cpu_free, mem_free, gpus, fit, scratch),
    }
}

/// GPU capacity (permille) of a node that its free host resources cannot feed: requests bring
/// host CPU and memory in the profile's average proportion to the GPU they use, so free GPU
/// beyond `free CPU / CPU-per-GPU` (or the same for memory) will most likely never be used.
fn stranded(ctx: &Ctx<'_>, gpu_free: f64, cpu_free: u64, mem_free: u64) -> f64 {
    let mut feedable = f64::INFINITY;
    if ctx.cpu_per_gpu > 0.0 {
        feedable = feedable.min(1000.0 * cpu_free as f64 / ctx.cpu_per_gpu);
    }
    if ctx.mem_per_gpu > 0.0 {
        feedable = feedable.min(1000.0 * mem_free as f64 / ctx.mem_per_gpu);
    }
    (gpu_free - feedable).max(0.0)
}

/// The default policy: FGD's fragmentation gradient (quantised as published, so that
/// insignificant differences fall through to pool order and load concentrates on few nodes)
/// plus the change in host-stranded GPU capacity. See `pool/README.md`.
fn frag_lookahead(
    ctx: &Ctx<'_>,
    need: &Need,
    cpu_free: u64,
    mem_free: u64,
    gpus: &[Gpu],
    fit: u64,
    scratch: &mut Vec<Gpu>,
) -> Option<Choice> {
    let cpu_after = cpu_free - need.cpu;
    let mem_after = mem_free - need.mem;
    let mut bonus = 0.0;
    let before = frag(ctx.profile, gpus, cpu_free);
    let gpu_before = sum_share(gpus);
    let strand_before = stranded(ctx, gpu_before, cpu_free, mem_free);
    let count = need.gpu_count;
    // (score, mask, gradient, free GPU after)
    let mut best: Option<(f64, u64, f64, f64)> = None;
    let mut consider = |mask: u64, scratch: &mut Vec<Gpu>| {
        apply(scratch, gpus, need, mask);
        let after = frag(ctx.profile, scratch, cpu_after);
        let gradient = (sigmoid((before - after) / 1000.0) * 100.0).floor();
        let gpu_after = sum_share(scratch);
        let strand_after = stranded(ctx, gpu_after, cpu_after, mem_after);
        let score = gradient + (strand_before - strand_after);
        if best.is_none_or(|b| score > b.0) {
            best = Some((score, mask, gradient, gpu_after));
        }
    };
    if count == 1 && !need.dedicated {
        // One candidate per distinct GPU state; only that GPU changes, so the per-group fit
        // masks of the others are computed once.
        let mut shares = [0f64; 64];
        for (i, g) in gpus.iter().enumerate() {
            shares[i] = g.share();
        }
        let base: Vec<u64> = ctx
            .profile
            .groups
            .iter()
            .map(|grp| fit_mask(grp, gpus))
            .collect();
        let mut masks = base.clone();
        let mut seen: [(u64, u64, u8); 64] = [(0, 0, 0); 64];
        let mut nseen = 0;
        let mut m = fit;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            let g = &gpus[i];
            let sig = (g.free_t, g.free_v, g.model);
            if seen[..nseen].contains(&sig) {
                continue;
            }
            seen[nseen] = sig;
            nseen += 1;
            let mut taken = *g;
            taken.take(need.tflops, need.vram, need.dedicated);
            for ((out, &b), grp) in masks.iter_mut().zip(&base).zip(&ctx.profile.groups) {
                *out = (b & !(1u64 << i)) | ((group_fits(grp, &taken) as u64) << i);
            }
            let old = shares[i];
            shares[i] = taken.share();
            let after = frag_from(ctx.profile, &shares[..gpus.len()], &masks, cpu_after);
            let gpu_free_after: f64 = shares[..gpus.len()].iter().sum();
            shares[i] = old;
            let gradient = (sigmoid((before - after) / 1000.0) * 100.0).floor();
            let strand_after = stranded(ctx, gpu_free_after, cpu_after, mem_after);
            let score = gradient + (strand_before - strand_after);
            if best.is_none_or(|b| score > b.0) {
                best = Some((score, 1u64 << i, gradient, gpu_free_after));
            }
        }
    } else {
        let (mask, tier) = if count == 0 {
            (0, TopologyTier::Node)
        } else {
            pick(gpus, fit, count, need.topo, |i| gpus[i].share())?
        };
        consider(mask, scratch);
        bonus = tier_bonus(need, tier);
    }
    best.map(|(score, mask, gradient, gpu_after)| Choice {
        score: score + bonus,
        mask,
        fit,
        parts: Some([gradient, bonus, gpu_before, gpu_after]),
    })
}

/// The default policy's score of a cached placement, re-derived for the pool's current host
/// ratios from its parts (the stranding term is the only part that depends on them). Equal to
/// what a fresh evaluation gives for the same placement.
pub(crate) fn rescore(
    ctx: &Ctx<'_>,
    need: &Need,
    parts: [f64; 4],
    cpu_free: u64,
    mem_free: u64,
) -> f64 {
    let [gradient, bonus, gpu_before, gpu_after] = parts;
    let strand_before = stranded(ctx, gpu_before, cpu_free, mem_free);
    let strand_after = stranded(ctx, gpu_after, cpu_free - need.cpu, mem_free - need.mem);
    gradient + (strand_before - strand_after) + bonus
}
