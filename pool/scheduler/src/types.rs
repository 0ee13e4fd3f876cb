//! The engine's plain data: cluster descriptions, requests, allocations.
//!
//! All quantities are integers so that reservation and release are exact: compute in
//! milli-TFLOPS, memory in bytes, CPU in milli-cores, shares in permille (1/1000).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
pub use tf_hal::Vendor;

use crate::error::SchedError;

/// Opaque handle of a live allocation, returned by [`crate::Scheduler::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllocationId(pub u64);

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "alloc-{}", self.0)
    }
}

/// Quality of service: who may preempt whom. A request may only preempt strictly lower levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    /// Best effort; first to be preempted.
    Low,
    /// Burstable.
    Medium,
    /// Latency sensitive.
    High,
    /// Never preempted by anything (nothing ranks above it).
    Critical,
}

impl Qos {
    /// Every level, lowest first.
    pub const ALL: [Qos; 4] = [Qos::Low, Qos::Medium, Qos::High, Qos::Critical];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Low => "low",
            Qos::Medium => "medium",
            Qos::High => "high",
            Qos::Critical => "critical",
        }
    }
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Qos {
    type Err = SchedError;
    /// Accepts the engine's names and the Alibaba trace / Kubernetes ones
    /// (`BE`, `Burstable`, `LS`, `Guaranteed`).
    fn from_str(s: &str) -> Result<Self, SchedError> {
        match s.to_ascii_lowercase().as_str() {
            "low" | "be" | "besteffort" => Ok(Qos::Low),
            "medium" | "burstable" => Ok(Qos::Medium),
            "high" | "ls" => Ok(Qos::High),
            "critical" | "guaranteed" => Ok(Qos::Critical),
            other => Err(SchedError::InvalidRequest(format!(
                "unknown qos {other:?} (expected low, medium, high or critical)"
            ))),
        }
    }
}

/// A per-GPU quantity: either absolute units or a share of the GPU's physical capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Amount {
    /// Absolute units (milli-TFLOPS for compute, bytes for VRAM).
    Absolute(u64),
    /// Share of the GPU's *physical* capacity in 1/1000 (1000 = the whole GPU).
    Permille(u32),
}

impl Amount {
    /// The amount in absolute units on a GPU with `physical` capacity. Shares round down, so
    /// shares that add up to 1000 always fit together.
    #[inline]
    pub fn resolve(self, physical: u64) -> u64 {
        match self {
            Amount::Absolute(v) => v,
            Amount::Permille(p) => match physical.checked_mul(p as u64) {
                Some(x) => x / 1000,
                None => ((physical as u128 * p as u128) / 1000) as u64,
            },
        }
    }

    /// True when the amount is zero whatever the GPU.
    pub fn is_zero(self) -> bool {
        matches!(self, Amount::Absolute(0) | Amount::Permille(0))
    }
}

/// Where a GPU sits inside its node, for multi-GPU placement. Build it from the HAL's
/// `topology()` with [`crate::topology::gpu_topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Topology {
    /// NUMA node the GPU hangs off.
    pub numa_node: u8,
    /// NVLink (or HCCS) domain: GPUs of the node with the same id are linked directly to each
    /// other. `None`: no such link.
    pub nvlink_domain: Option<u16>,
}

/// How closely a set of GPUs of one node is connected, worst first (so that `Ord` ranks them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyTier {
    /// Somewhere on the node (across NUMA nodes).
    Node,
    /// All on one NUMA node.
    Numa,
    /// All in one NVLink domain.
    NvLink,
}

impl fmt::Display for TopologyTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopologyTier::Node => "node",
            TopologyTier::Numa => "numa",
            TopologyTier::NvLink => "nvlink",
        })
    }
}

/// How a multi-GPU request treats the topology of the GPUs it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyMode {
    /// Soft (the default): the best tier any node can offer wins (GPUs of one NVLink domain,
    /// else of one NUMA node, else any); the policy's score ranks placements of equal tier.
    #[default]
    Prefer,
    /// Hard: only placements whose GPUs share at least this tier (a filter); better tiers are
    /// still preferred.
    Require(TopologyTier),
    /// Topology plays no part: the policy's GPU order alone.
    Ignore,
}

/// One physical GPU of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSpec {
    /// Model name, e.g. `A100-80G`, matched by request model constraints.
    pub model: String,
    /// Who made it.
    pub vendor: Vendor,
    /// Compute capacity in milli-TFLOPS.
    pub tflops_milli: u64,
    /// Memory in bytes.
    pub vram_bytes: u64,
    /// NUMA node and link group.
    pub topology: Topology,
}

impl GpuSpec {
    /// A GPU with the given model, vendor, TFLOPS (whole) and VRAM (GiB), on NUMA node 0.
    pub fn new(model: &str, vendor: Vendor, tflops: u64, vram_gib: u64) -> Self {
        GpuSpec {
            model: model.to_string(),
            vendor,
            tflops_milli: tflops * 1000,
            vram_bytes: vram_gib << 30,
            topology: Topology::default(),
        }
    }
}

/// A node: host CPU and memory plus its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Unique node name.
    pub name: String,
    /// The pool the node belongs to.
    pub pool: String,
    /// CPU in milli-cores.
    pub cpu_milli: u64,
    /// Host memory in bytes.
    pub memory_bytes: u64,
    /// The GPUs; their position is the GPU index used by pins and allocations (at most 64).
    pub gpus: Vec<GpuSpec>,
}

/// A pool's oversubscription settings, as ratios in permille (1000 = no oversubscription).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// TFLOPS oversell: a GPU can be promised `physical x ratio / 1000` milli-TFLOPS.
    pub tflops_oversell_permille: u32,
    /// VRAM expansion into host memory: a GPU can be promised `physical x ratio / 1000` bytes.
    pub vram_expand_permille: u32,
}

impl PoolConfig {
    /// A pool without oversubscription.
    pub fn new(name: &str) -> Self {
        PoolConfig {
            name: name.to_string(),
            tflops_oversell_permille: 1000,
            vram_expand_permille: 1000,
        }
    }

    /// Sets the oversubscription ratios (permille, at least 1000 each).
    pub fn with_oversubscription(mut self, tflops_permille: u32, vram_permille: u32) -> Self {
        self.tflops_oversell_permille = tflops_permille;
        self.vram_expand_permille = vram_permille;
        self
    }
}

/// A namespace's limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Quota {
    /// Total milli-TFLOPS requested.
    pub tflops_milli: Option<u64>,
    /// Total VRAM bytes requested.
    pub vram_bytes: Option<u64>,
    /// Total GPUs touched (a shared GPU counts as one per allocation).
    pub gpus: Option<u64>,
}

/// What a namespace holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// milli-TFLOPS requested by live allocations.
    pub tflops_milli: u64,
    /// VRAM bytes requested by live allocations.
    pub vram_bytes: u64,
    /// GPUs held by live allocations.
    pub gpus: u64,
}

/// Exact GPUs to use, on one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pin {
    /// Node name.
    pub node: String,
    /// GPU indices on that node (distinct, as many as the request's GPU count).
    pub gpus: Vec<u32>,
}

/// A request for GPU resources. Build with [`Request::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Pool to place in.
    pub pool: String,
    /// Namespace charged (quotas).
    pub namespace: String,
    /// Priority for preemption.
    pub qos: Qos,
    /// Number of GPUs; 0 for a CPU-only request.
    pub gpu_count: u32,
    /// Compute requested on each GPU (absolute or a compute percent as permille).
    pub tflops: Amount,
    /// Compute limit on each GPU (defaults to the request); kept for enforcement, not placement.
    pub tflops_limit: Option<Amount>,
    /// VRAM requested on each GPU.
    pub vram: Amount,
    /// VRAM limit on each GPU (defaults to the request).
    pub vram_limit: Option<Amount>,
    /// Host CPU in milli-cores.
    pub cpu_milli: u64,
    /// Host memory in bytes.
    pub memory_bytes: u64,
    /// Allowed GPU models; empty means any.
    pub models: Vec<String>,
    /// Required vendor, if any.
    pub vendor: Option<Vendor>,
    /// Exact node and GPU indices, if pinned.
    pub pin: Option<Pin>,
    /// Whole GPUs for this request alone: each GPU must be unused and nothing shares it after.
    pub dedicated: bool,
    /// How the GPUs of a multi-GPU request should be connected (ignored for one GPU).
    #[serde(default)]
    pub topology: TopologyMode,
}

impl Request {
    /// A request for `gpu_count` GPUs in `pool`, charged to `namespace`, with zero resources,
    /// medium QoS and no constraints.
    pub fn new(pool: &str, namespace: &str, gpu_count: u32) -> Self {
        Request {
            pool: pool.to_string(),
            namespace: namespace.to_string(),
            qos: Qos::Medium,
            gpu_count,
            tflops: Amount::Absolute(0),
            tflops_limit: None,
            vram: Amount::Absolute(0),
            vram_limit: None,
            cpu_milli: 0,
            memory_bytes: 0,
            models: Vec::new(),
            vendor: None,
            pin: None,
            dedicated: false,
            topology: TopologyMode::Prefer,
        }
    }

    /// Absolute compute (milli-TFLOPS) and VRAM (bytes) per GPU.
    pub fn with_resources(mut self, tflops_milli: u64, vram_bytes: u64) -> Self {
        self.tflops = Amount::Absolute(tflops_milli);
        self.vram = Amount::Absolute(vram_bytes);
        self
    }

    /// The same share (permille) of each GPU's TFLOPS and VRAM.
    pub fn with_share(mut self, permille: u32) -> Self {
        self.tflops = Amount::Permille(permille);
        self.vram = Amount::Permille(permille);
        self
    }

    /// Per-GPU limits (defaults are the requests).
    pub fn with_limits(mut self, tflops: Amount, vram: Amount) -> Self {
        self.tflops_limit = Some(tflops);
        self.vram_limit = Some(vram);
        self
    }

    /// Host CPU (milli-cores) and memory (bytes).
    pub fn with_host(mut self, cpu_milli: u64, memory_bytes: u64) -> Self {
        self.cpu_milli = cpu_milli;
        self.memory_bytes = memory_bytes;
        self
    }

    /// QoS level.
    pub fn with_qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// Allowed models.
    pub fn with_models<S: AsRef<str>>(mut self, models: &[S]) -> Self {
        self.models = models.iter().map(|m| m.as_ref().to_string()).collect();
        self
    }

    /// Required vendor.
    pub fn with_vendor(mut self, vendor: Vendor) -> Self {
        self.vendor = Some(vendor);
        self
    }

    /// Pin to GPU indices on one node.
    pub fn with_pin(mut self, node: &str, gpus: &[u32]) -> Self {
        self.pin = Some(Pin {
            node: node.to_string(),
            gpus: gpus.to_vec(),
        });
        self
    }

    /// Whole, unshared GPUs.
    pub fn dedicated(mut self) -> Self {
        self.dedicated = true;
        self
    }

    /// Topology mode for a multi-GPU request.
    pub fn with_topology(mut self, mode: TopologyMode) -> Self {
        self.topology = mode;
        self
    }
}

/// One GPU's share of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuGrant {
    /// GPU index on the node.
    pub gpu: u32,
    /// milli-TFLOPS reserved.
    pub tflops_milli: u64,
    /// VRAM bytes reserved.
    pub vram_bytes: u64,
}

/// A granted request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Handle for [`crate::Scheduler::release`].
    pub id: AllocationId,
    /// Pool name.
    pub pool: String,
    /// Namespace charged.
    pub namespace: String,
    /// QoS of the request.
    pub qos: Qos,
    /// Node name.
    pub node: String,
    /// Per-GPU grants.
    pub gpus: Vec<GpuGrant>,
    /// Host CPU reserved (milli-cores).
    pub cpu_milli: u64,
    /// Host memory reserved (bytes).
    pub memory_bytes: u64,
    /// Allocations evicted to make room for this one (lower QoS only).
    pub preempted: Vec<AllocationId>,
}

/// Free and total capacity of one GPU, as the engine sees it (effective = with oversubscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuStatus {
    /// Physical milli-TFLOPS.
    pub tflops_physical: u64,
    /// Physical VRAM bytes.
    pub vram_physical: u64,
    /// Allocatable milli-TFLOPS (physical x oversell).
    pub tflops_capacity: u64,
    /// Allocatable VRAM bytes (physical x expansion).
    pub vram_capacity: u64,
    /// milli-TFLOPS not yet reserved.
    pub tflops_free: u64,
    /// VRAM bytes not yet reserved.
    pub vram_free: u64,
    /// Live allocations on the GPU.
    pub allocations: u32,
    /// Held whole by a dedicated allocation.
    pub dedicated: bool,
}

/// Free and total capacity of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Pool name.
    pub pool: String,
    /// CPU milli-cores.
    pub cpu_capacity: u64,
    /// CPU milli-cores not reserved.
    pub cpu_free: u64,
    /// Memory bytes.
    pub memory_capacity: u64,
    /// Memory bytes not reserved.
    pub memory_free: u64,
    /// Per-GPU status, by index.
    pub gpus: Vec<GpuStatus>,
}
