//! Workload profiles: the request distribution that fragmentation is measured against.

use serde::{Deserialize, Serialize};

use crate::types::{Amount, Vendor};

/// One request shape of a workload and how often it occurs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileEntry {
    /// GPUs per request (0 = CPU-only).
    pub gpu_count: u32,
    /// Compute per GPU.
    pub tflops: Amount,
    /// VRAM per GPU.
    pub vram: Amount,
    /// Host CPU, milli-cores.
    pub cpu_milli: u64,
    /// Host memory, bytes.
    pub memory_bytes: u64,
    /// Allowed models (empty = any).
    pub models: Vec<String>,
    /// Required vendor.
    pub vendor: Option<Vendor>,
    /// Whole unshared GPUs.
    pub dedicated: bool,
    /// Relative frequency (any positive scale).
    pub weight: f64,
}

/// The request distribution of a pool. Fragmentation-aware policies score placements by how
/// much of the pool's free GPU capacity stays usable by requests drawn from it.
///
/// A pool without an explicit profile learns one from the requests it sees.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadProfile {
    /// The shapes, in any order; equal shapes may repeat (their weights add up).
    pub entries: Vec<ProfileEntry>,
}

impl WorkloadProfile {
    /// Total weight of all entries.
    pub fn total_weight(&self) -> f64 {
        self.entries.iter().map(|e| e.weight).sum()
    }
}

/// A profile shape group: one GPU demand, several host (CPU, memory) variants.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub gpu_count: u32,
    pub tflops: Amount,
    pub vram: Amount,
    /// Bit per interned model id; `u64::MAX` = any.
    pub models: u64,
    pub vendor: Option<Vendor>,
    pub dedicated: bool,
    /// (cpu, memory, weight), weights normalised by the profile's total.
    pub variants: Vec<(u64, u64, f64)>,
    /// Sum of the variants' weights.
    pub weight: f64,
    /// Nominal GPU demand of one request in GPU-permille (for look-ahead), when known.
    pub share_hint: f64,
}

/// A profile compiled against the scheduler's interned model ids; weights sum to 1.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub groups: Vec<Group>,
    /// Expected eventual waste (permille) of a GPU with `l` permille free, `l` in 0..=1000.
    pub waste: Vec<f64>,
}

impl Compiled {
    pub fn compile(profile: &WorkloadProfile, model_mask: impl Fn(&[String]) -> u64) -> Compiled {
        let total = profile.total_weight();
        let mut groups: Vec<Group> = Vec::new();
        if total <= 0.0 {
            return Compiled::default();
        }
        for e in &profile.entries {
            if e.weight <= 0.0 {
                continue;
            }
            let models = model_mask(&e.models);
            let w = e.weight / total;
            let found = groups.iter_mut().find(|g| {
                g.gpu_count == e.gpu_count
                    && g.tflops == e.tflops
                    && g.vram == e.vram
                    && g.models == models
                    && g.vendor == e.vendor
                    && g.dedicated == e.dedicated
            });
            let g = match found {
                Some(g) => g,
                None => {
                    let share_hint = match (e.tflops, e.dedicated) {
                        (_, true) => 1000.0,
                        (Amount::Permille(p), _) => p as f64,
                        _ => 1000.0,
                    } * e.gpu_count as f64;
                    groups.push(Group {
                        gpu_count: e.gpu_count,
                        tflops: e.tflops,
                        vram: e.vram,
                        models,
                        vendor: e.vendor,
                        dedicated: e.dedicated,
                        variants: Vec::new(),
                        weight: 0.0,
                        share_hint,
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            g.weight += w;
            match g
                .variants
                .iter_mut()
                .find(|v| v.0 == e.cpu_milli && v.1 == e.memory_bytes)
            {
                Some(v) => v.2 += w,
                None => g.variants.push((e.cpu_milli, e.memory_bytes, w)),
            }
        }
        for g in &mut groups {
            g.variants.sort_by_key(|v| (v.0, v.1));
        }
        // Heaviest groups first: cheaper early exits are not used, but it keeps output stable.
        groups.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        Compiled::finish(groups)
    }

    /// Adds the per-GPU waste table: the expected share of a GPU that stays unused if the
    /// requests that land on it are drawn from the profile among those that fit.
    pub fn finish(groups: Vec<Group>) -> Compiled {
        let mut sizes: Vec<(usize, f64)> = Vec::new();
        for g in &groups {
            if g.gpu_count == 0 {
                continue;
            }
            let s = match (g.dedicated, g.tflops, g.vram) {
                (true, _, _) => 1000,
                (_, Amount::Permille(t), Amount::Permille(v)) => t.max(v).min(1000),
                (_, Amount::Permille(t), _) => t.min(1000),
                _ => continue,
            } as usize;
            if s == 0 {
                continue;
            }
            let w = g.weight * g.gpu_count as f64;
            match sizes.iter_mut().find(|e| e.0 == s) {
                Some(e) => e.1 += w,
                None => sizes.push((s, w)),
            }
        }
        let mut waste = vec![0.0; 1001];
        for l in 1..=1000usize {
            let (mut num, mut den) = (0.0, 0.0);
            for &(s, w) in &sizes {
                if s <= l {
                    num += w * waste[l - s];
                    den += w;
                }
            }
            waste[l] = if den > 0.0 { num / den } else { l as f64 };
        }
        Compiled { groups, waste }
    }

    /// Waste of a GPU with `share` permille free (clamped to the table).
    #[inline]
    pub fn gpu_waste(&self, share: f64) -> f64 {
        if self.waste.is_empty() {
            return 0.0;
        }
        let l = (share.max(0.0) as usize).min(1000);
        self.waste[l]
    }
}

impl Default for Compiled {
    fn default() -> Self {
        Compiled::finish(Vec::new())
    }
}
