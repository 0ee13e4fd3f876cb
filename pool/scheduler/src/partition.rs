//! Placement onto hardware partitions: a request rounded up to the smallest partition template
//! (an Ascend vNPU template such as `vir05_1c_16g`, a MIG profile) that covers it.
//!
//! A partitioned GPU cannot hand out an arbitrary share: a vNPU gets whole AI cores and a fixed
//! amount of memory. [`smallest_covering`] picks, for one GPU model, the smallest template
//! whose compute (its compute units' share of the GPU's TFLOPS) and memory both cover the
//! request; [`Scheduler::reserve_partition`] reserves the request *rounded up to that template*
//! on a GPU of a model that has one, so the engine's accounting holds exactly what the partition
//! will take. Creating the partition on the node (through the HAL's `create_partition`) is the
//! caller's next step.
//!
//! Design rules: this module only uses the engine's public API (`reserve` with a model
//! constraint), so the engine's invariants (exact accounting, quotas, preemption) apply
//! unchanged; templates are the HAL's [`PartitionTemplate`]s, as a backend reports them.

use serde::{Deserialize, Serialize};
use tf_hal::{DeviceInfo, PartitionTemplate, Vendor};

use crate::engine::Scheduler;
use crate::error::{Result, SchedError};
use crate::types::{Allocation, Amount, Request};

/// The partition templates of one GPU model, with what a whole GPU of that model has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionProfile {
    /// GPU model, as in the nodes' [`crate::GpuSpec::model`].
    pub model: String,
    pub vendor: Vendor,
    /// Compute units of a whole GPU (AI cores, SMs): a template's compute share is its units
    /// over these.
    pub compute_units: u32,
    /// Compute of a whole GPU, milli-TFLOPS (as in the nodes' specs).
    pub tflops_milli: u64,
    /// Memory of a whole GPU, bytes.
    pub vram_bytes: u64,
    pub templates: Vec<PartitionTemplate>,
}

impl PartitionProfile {
    /// The profile of a device as a HAL backend describes it.
    pub fn from_device(info: &DeviceInfo, templates: Vec<PartitionTemplate>) -> Self {
        PartitionProfile {
            model: info.model.clone(),
            vendor: info.vendor,
            compute_units: info.compute_units,
            tflops_milli: (info.fp16_tflops * 1000.0).round() as u64,
            vram_bytes: info.total_memory_bytes,
            templates,
        }
    }

    /// The compute of `template` in milli-TFLOPS: its compute units' share of the GPU's.
    pub fn template_tflops_milli(&self, template: &PartitionTemplate) -> u64 {
        if self.compute_units == 0 {
            return 0;
        }
        (self.tflops_milli as u128 * template.compute_units as u128 / self.compute_units as u128)
            as u64
    }
}

/// A request placed on a partition template.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionGrant {
    /// The engine's allocation (its grants are the template's compute and memory).
    pub allocation: Allocation,
    /// The template to create on each granted GPU.
    pub template: PartitionTemplate,
    /// The GPU model it was placed on.
    pub model: String,
}

/// The smallest template of `profile` that covers `tflops` and `vram` per GPU (shares resolve
/// against the whole GPU), or `None` when even the largest does not. Smallest: fewest compute
/// units, then least memory.
pub fn smallest_covering(
    profile: &PartitionProfile,
    tflops: Amount,
    vram: Amount,
) -> Option<&PartitionTemplate> {
    let need_tflops = tflops.resolve(profile.tflops_milli);
    let need_vram = vram.resolve(profile.vram_bytes);
    profile
        .templates
        .iter()
        .filter(|t| {
            t.compute_units > 0
                && profile.template_tflops_milli(t) >= need_tflops
                && t.memory_bytes >= need_vram
        })
        .min_by_key(|t| (t.compute_units, t.memory_bytes))
}

impl Scheduler {
    /// Place `req` on a partition: for each GPU model in `profiles` the request may use (its
    /// model and vendor constraints), round the request up to the smallest covering template;
    /// try the models in order of how small a share of the GPU that template is, and reserve the
    /// rounded request on the first that has room. Dedicated requests are refused (a partition
    /// is a share).
    pub fn reserve_partition(
        &mut self,
        req: &Request,
        profiles: &[PartitionProfile],
    ) -> Result<PartitionGrant> {
        if req.dedicated {
            return Err(SchedError::InvalidRequest(
                "a dedicated request takes whole GPUs, not partitions".into(),
            ));
        }
        let mut candidates: Vec<(&PartitionProfile, &PartitionTemplate)> = profiles
            .iter()
            .filter(|p| req.models.is_empty() || req.models.contains(&p.model))
            .filter(|p| req.vendor.is_none_or(|v| v == p.vendor))
            .filter_map(|p| smallest_covering(p, req.tflops, req.vram).map(|t| (p, t)))
            .collect();
        if candidates.is_empty() {
            return Err(SchedError::InvalidRequest(format!(
                "no partition template covers {:?} TFLOPS and {:?} of VRAM per GPU on the models {}",
                req.tflops,
                req.vram,
                profiles
                    .iter()
                    .map(|p| p.model.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // Smallest share of its GPU first (compute, then memory), in permille.
        candidates.sort_by_key(|(p, t)| {
            (
                t.compute_units as u64 * 1000 / p.compute_units.max(1) as u64,
                t.memory_bytes as u128 * 1000 / p.vram_bytes.max(1) as u128,
            )
        });
        let mut last = None;
        for (p, t) in candidates {
            let mut rounded = req.clone();
            rounded.models = vec![p.model.clone()];
            rounded.tflops = Amount::Absolute(p.template_tflops_milli(t));
            rounded.vram = Amount::Absolute(t.memory_bytes);
            // The limits a partition enforces are the template's.
            rounded.tflops_limit = None;
            rounded.vram_limit = None;
            match self.reserve(&rounded) {
                Ok(allocation) => {
                    return Ok(PartitionGrant {
                        allocation,
                        template: t.clone(),
                        model: p.model.clone(),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| SchedError::InvalidRequest("no candidate".into())))
    }
}
