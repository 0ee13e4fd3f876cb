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

/// A profile shape group: one GPU demand, several host CPU variants.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub gpu_count: u32,
    pub tflops: Amount,
    pub vram: Amount,
    /// Bit per interned model id; `u64::MAX` = any.
    pub models: u64,
    pub vendor: Option<Vendor>,
    pub dedicated: bool,
    /// (cpu, weight), weights normalised over the typical shapes.
    pub variants: Vec<(u64, f64)>,
    /// Sum of the variants' weights.
    pub weight: f64,
}

/// A profile shape with its model constraint resolved to a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    pub gpu_count: u32,
    pub tflops: Amount,
    pub vram: Amount,
    pub models: u64,
    pub vendor: Option<Vendor>,
    pub dedicated: bool,
}

/// Share of the requests (by count) that the fragmentation measure considers: the most common
/// (GPU shape, CPU) pairs up to this share, as in the FGD paper's artifact.
pub(crate) const TYPICAL_SHARE: f64 = 0.95;

/// A profile compiled against the scheduler's interned model ids.
#[derive(Debug, Clone, Default)]
pub(crate) struct Compiled {
    /// Typical shapes (weights sum to 1), for the fragmentation measure.
    pub groups: Vec<Group>,
    /// Host CPU (milli) that the profile's GPU requests bring per whole GPU they use.
    pub cpu_per_gpu: f64,
    /// Host memory (bytes) that the profile's GPU requests bring per whole GPU they use.
    pub mem_per_gpu: f64,
    /// Host CPU (milli) of the profile's CPU-only requests per whole GPU of its GPU requests.
    pub cpu_only_per_gpu: f64,
    /// Host memory (bytes) of the profile's CPU-only requests per whole GPU of its GPU requests.
    pub mem_only_per_gpu: f64,
    /// Share of the profile's GPU demand per allowed-model mask (masks other than "any"),
    /// from every shape (not only the typical ones).
    pub model_demand: Vec<(u64, f64)>,
}

impl Compiled {
    /// Compiles an explicit profile; `model_mask` maps model names to interned bits.
    pub fn compile(profile: &WorkloadProfile, model_mask: impl Fn(&[String]) -> u64) -> Compiled {
        Compiled::build(profile.entries.iter().map(|e| {
            (
                Shape {
                    gpu_count: e.gpu_count,
                    tflops: e.tflops,
                    vram: e.vram,
                    models: model_mask(&e.models),
                    vendor: e.vendor,
                    dedicated: e.dedicated,
                },
                e.cpu_milli,
                e.memory_bytes,
                e.weight,
            )
        }))
    }

    /// Builds from (shape, cpu, memory, weight) entries.
    pub fn build(entries: impl Iterator<Item = (Shape, u64, u64, f64)>) -> Compiled {
        let mut merged: Vec<((Shape, u64), f64)> = Vec::new();
        let mut index: std::collections::HashMap<(Shape, u64), usize> = Default::default();
        let (mut cpu, mut mem, mut gpu) = (0.0, 0.0, 0.0);
        let (mut cpu_only, mut mem_only) = (0.0, 0.0);
        let mut by_mask: Vec<(u64, f64)> = Vec::new();
        for (shape, c, m, w) in entries {
            if w.is_nan() || w <= 0.0 {
                continue;
            }
            if shape.gpu_count > 0 {
                let per_gpu = match (shape.dedicated, shape.tflops, shape.vram) {
                    (true, _, _) => 1.0,
                    (_, Amount::Permille(t), Amount::Permille(v)) => t.max(v) as f64 / 1000.0,
                    (_, Amount::Permille(t), _) => t as f64 / 1000.0,
                    (_, _, Amount::Permille(v)) => v as f64 / 1000.0,
                    _ => 1.0,
                };
                cpu += c as f64 * w;
                mem += m as f64 * w;
                let demand = per_gpu * shape.gpu_count as f64 * w;
                gpu += demand;
                if shape.models != u64::MAX {
                    match by_mask.iter_mut().find(|e| e.0 == shape.models) {
                        Some(e) => e.1 += demand,
                        None => by_mask.push((shape.models, demand)),
                    }
                }
            }
            if shape.gpu_count == 0 {
                cpu_only += c as f64 * w;
                mem_only += m as f64 * w;
            }
            match index.get(&(shape, c)) {
                Some(&i) => merged[i].1 += w,
                None => {
                    index.insert((shape, c), merged.len());
                    merged.push(((shape, c), w));
                }
            }
        }
        let total: f64 = merged.iter().map(|e| e.1).sum();
        if total <= 0.0 {
            return Compiled::default();
        }
        // Most common first (ties in a fixed order), then keep the typical share.
        merged.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(a.0.1.cmp(&b.0.1))
                .then(a.0.0.gpu_count.cmp(&b.0.0.gpu_count))
        });
        let mut kept = 0;
        let mut cum = 0.0;
        while kept < merged.len() && cum < TYPICAL_SHARE * total {
            cum += merged[kept].1;
            kept += 1;
        }
        merged.truncate(kept);
        let mut groups: Vec<Group> = Vec::new();
        for ((shape, c), w) in merged {
            let w = w / cum;
            let g = match groups.iter_mut().find(|g| {
                g.gpu_count == shape.gpu_count
                    && g.tflops == shape.tflops
                    && g.vram == shape.vram
                    && g.models == shape.models
                    && g.vendor == shape.vendor
                    && g.dedicated == shape.dedicated
            }) {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        gpu_count: shape.gpu_count,
                        tflops: shape.tflops,
                        vram: shape.vram,
                        models: shape.models,
                        vendor: shape.vendor,
                        dedicated: shape.dedicated,
                        variants: Vec::new(),
                        weight: 0.0,
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            g.weight += w;
            g.variants.push((c, w));
        }
        let (cpu_per_gpu, mem_per_gpu, cpu_only_per_gpu, mem_only_per_gpu) = if gpu > 0.0 {
            (cpu / gpu, mem / gpu, cpu_only / gpu, mem_only / gpu)
        } else {
            (0.0, 0.0, 0.0, 0.0)
        };
        if gpu > 0.0 {
            for e in &mut by_mask {
                e.1 /= gpu;
            }
        }
        by_mask.sort_by_key(|e| e.0);
        Compiled {
            groups,
            cpu_per_gpu,
            mem_per_gpu,
            cpu_only_per_gpu,
            mem_only_per_gpu,
            model_demand: by_mask,
        }
    }
}
