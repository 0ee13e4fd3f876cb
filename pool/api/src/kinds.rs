//! The nine kinds of `tensor-fusion.ai/v1`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A resource amount: TFLOPS (a decimal quantity) and VRAM (a byte quantity); zero by default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// TFLOPS, e.g. `"10"` or `"12.5"`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?([munkMGTPE]|[KMGTPE]i)?$"))]
    pub tflops: String,
    /// VRAM, e.g. `"16Gi"`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?([munkMGTPE]|[KMGTPE]i)?$"))]
    pub vram: String,
}

impl Default for Resource {
    fn default() -> Self {
        Resource {
            tflops: "0".into(),
            vram: "0".into(),
        }
    }
}

/// Requests and limits of a vGPU, per GPU.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// What placement reserves.
    pub requests: Resource,
    /// What enforcement allows (not below the requests).
    pub limits: Resource,
}

/// Quality of service (who may preempt whom).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QosLevel {
    /// Best effort.
    Low,
    /// Burstable (the default).
    #[default]
    Medium,
    /// Latency sensitive.
    High,
    /// Never preempted.
    Critical,
}

/// How a vGPU is isolated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// No enforcement: placement only.
    Shared,
    /// The limiter inside the application (LD_PRELOAD): VRAM quota and compute share.
    #[default]
    Soft,
    /// The client stub and a worker that enforces the limits itself.
    Hard,
    /// A hardware partition (MIG profile, vNPU template).
    Partitioned,
}

/// Lifecycle of an object the operator manages.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Not yet reconciled.
    #[default]
    Pending,
    /// Working.
    Running,
    /// Being removed.
    Destroying,
    /// Failed; see the conditions.
    Failed,
    /// Reporting nothing (a node agent that went quiet).
    Unknown,
}

/// Placement policy of a pool (the engine's, by TensorFusion's names).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementMode {
    /// The engine's default: fragmentation-aware with host look-ahead.
    #[default]
    #[serde(rename = "frag-lookahead")]
    FragLookahead,
    /// Fullest node, fullest fitting GPUs.
    CompactFirst,
    /// Emptiest node, emptiest GPUs.
    LowLoadFirst,
    /// Fullest node, emptiest GPUs on it.
    NodeCompactGPULowLoad,
}

// ---------------------------------------------------------------------------------------------

/// One pool of a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPool {
    /// Name of the GPUPool to create.
    pub name: String,
    /// Its spec.
    pub spec_template: GPUPoolSpec,
}

/// A TensorFusion installation: the pools it runs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "TensorFusionCluster",
    plural = "tensorfusionclusters",
    shortname = "tfc",
    status = "TensorFusionClusterStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TensorFusionClusterSpec {
    /// The pools; the operator creates and owns a GPUPool for each.
    #[serde(default)]
    pub gpu_pools: Vec<ClusterPool>,
}

/// What the cluster holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TensorFusionClusterStatus {
    /// Lifecycle.
    #[serde(default)]
    pub phase: Phase,
    /// Pools that exist.
    #[serde(default)]
    pub ready_gpu_pools: Vec<String>,
    /// Conditions (`Ready`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------

/// Oversubscription of a pool, in percent (100 = none).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Oversubscription {
    /// TFLOPS a GPU can be promised, in percent of its physical TFLOPS (100-1000).
    #[schemars(range(min = 100, max = 1000))]
    pub tflops_oversell_percent: u32,
    /// VRAM a GPU can be promised, in percent of its physical VRAM (100-1000).
    #[schemars(range(min = 100, max = 1000))]
    pub vram_expand_to_host_mem_percent: u32,
}

/// A pool of GPU nodes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "GPUPool",
    plural = "gpupools",
    shortname = "gp",
    status = "GPUPoolStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.totalNodes"}"#,
    printcolumn = r#"{"name":"TFLOPS","type":"string","jsonPath":".status.totalTflops"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.availableTflops"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GPUPoolSpec {
    /// Oversubscription; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversubscription: Option<Oversubscription>,
    /// Placement policy.
    #[serde(default)]
    pub placement: PlacementMode,
    /// A SchedulingConfigTemplate whose settings apply (its placement wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_config_template: Option<String>,
    /// QoS of Pods that name none.
    #[serde(default)]
    pub default_qos: QosLevel,
    /// Whether lower-QoS allocations may be preempted for higher ones.
    #[serde(default)]
    pub preemption: bool,
}

/// Capacity of a pool, summed over its nodes' GPUs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GPUPoolStatus {
    /// Lifecycle.
    #[serde(default)]
    pub phase: Phase,
    /// GPUNodes of the pool.
    #[serde(default)]
    pub total_nodes: u32,
    /// GPUNodes reporting.
    #[serde(default)]
    pub ready_nodes: u32,
    /// GPUs of the pool.
    #[serde(default)]
    pub total_gpus: u32,
    /// Physical TFLOPS.
    #[serde(default)]
    pub total_tflops: String,
    /// Physical VRAM.
    #[serde(default)]
    pub total_vram: String,
    /// TFLOPS not reserved (with oversubscription).
    #[serde(default)]
    pub available_tflops: String,
    /// VRAM not reserved (with oversubscription).
    #[serde(default)]
    pub available_vram: String,
    /// Live allocations.
    #[serde(default)]
    pub allocations: u32,
    /// Conditions (`Ready`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------

/// A Kubernetes node with GPUs, registered by its node agent (named as the Node).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "GPUNode",
    plural = "gpunodes",
    shortname = "gn",
    status = "GPUNodeStatus",
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".status.totalGpus"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GPUNodeSpec {
    /// The GPUPool the node belongs to.
    #[schemars(length(min = 1))]
    pub pool: String,
    /// Host CPU in milli-cores the node offers to GPU workloads.
    pub cpu_milli: u64,
    /// Host memory in bytes.
    pub memory_bytes: u64,
}

/// What the node agent last reported, and what the operator reserved on it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GPUNodeStatus {
    /// Lifecycle: `Running` while the agent reports.
    #[serde(default)]
    pub phase: Phase,
    /// GPUs found.
    #[serde(default)]
    pub total_gpus: u32,
    /// Physical TFLOPS.
    #[serde(default)]
    pub total_tflops: String,
    /// Physical VRAM.
    #[serde(default)]
    pub total_vram: String,
    /// TFLOPS not reserved.
    #[serde(default)]
    pub available_tflops: String,
    /// VRAM not reserved.
    #[serde(default)]
    pub available_vram: String,
    /// The GPU objects (their names) on the node.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// The agent's last report (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_time: Option<String>,
    /// Which backend the agent discovered through (`fake`, `cuda`, …).
    #[serde(default)]
    pub backend: String,
    /// Conditions (`Ready`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------

/// A physical GPU (cluster-scoped; named `<node>-<index>`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "GPU",
    plural = "gpus",
    status = "GPUStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model"}"#,
    printcolumn = r#"{"name":"Available TFLOPS","type":"string","jsonPath":".status.available.tflops"}"#,
    printcolumn = r#"{"name":"Available VRAM","type":"string","jsonPath":".status.available.vram"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GPUSpec {
    /// Node name.
    #[schemars(length(min = 1))]
    pub node: String,
    /// Index on the node (the engine's GPU index).
    pub index: u32,
    /// Device UUID (`GPU-…`).
    #[schemars(length(min = 1))]
    pub uuid: String,
    /// Model, e.g. `H100-SXM5-80GB`.
    pub model: String,
    /// Vendor (`nvidia`, `ascend`, …).
    pub vendor: String,
    /// NUMA node.
    #[serde(default)]
    pub numa_node: u32,
}

/// One reservation on a GPU.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuAllocationRef {
    /// `namespace/pod`.
    pub pod: String,
    /// What it reserved.
    pub resource: Resource,
}

/// Capacity and reservations of a GPU.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GPUStatus {
    /// Lifecycle.
    #[serde(default)]
    pub phase: Phase,
    /// Physical capacity.
    #[serde(default)]
    pub capacity: Resource,
    /// Not reserved (with the pool's oversubscription).
    #[serde(default)]
    pub available: Resource,
    /// Reservations.
    #[serde(default)]
    pub allocations: Vec<GpuAllocationRef>,
}

// ---------------------------------------------------------------------------------------------

/// Values a Pod's annotations or a WorkloadProfile give a workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProfileSpec {
    /// The GPUPool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,
    /// Requests and limits per GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Compute share requested and limit, in percent, instead of TFLOPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub compute_percent_request: Option<u32>,
    /// Compute share limit in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub compute_percent_limit: Option<u32>,
    /// QoS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<QosLevel>,
    /// GPUs per Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub gpu_count: Option<u32>,
    /// GPU model required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Vendor required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Local (the Pod's node) or remote (a worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_local_gpu: Option<bool>,
    /// Isolation mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Whole GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_gpu: Option<bool>,
    /// Worker as a sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_worker: Option<bool>,
}

/// Reusable defaults for workloads (namespaced), named by `tensor-fusion.ai/workload-profile`.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "WorkloadProfile",
    plural = "workloadprofiles",
    shortname = "wp",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadProfileCrdSpec {
    /// The defaults.
    #[serde(flatten)]
    pub profile: WorkloadProfileSpec,
}

// ---------------------------------------------------------------------------------------------

/// A set of Pods sharing one vGPU request (namespaced; one per annotated Pod owner).
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "TensorFusionWorkload",
    plural = "tensorfusionworkloads",
    shortname = "tfw",
    namespaced,
    status = "TensorFusionWorkloadStatus",
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.poolName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TensorFusionWorkloadSpec {
    /// The request, resolved (annotations over profile over pool defaults).
    #[serde(flatten)]
    pub profile: WorkloadProfileSpec,
}

/// Pods of a workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TensorFusionWorkloadStatus {
    /// Lifecycle.
    #[serde(default)]
    pub phase: Phase,
    /// Pods that belong to it.
    #[serde(default)]
    pub pods: u32,
    /// Pods holding GPUs.
    #[serde(default)]
    pub allocated_pods: u32,
    /// Worker Pods (hard isolation).
    #[serde(default)]
    pub workers: Vec<String>,
}

// ---------------------------------------------------------------------------------------------

/// The link between a client Pod (hard isolation) and its worker.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "TensorFusionConnection",
    plural = "tensorfusionconnections",
    shortname = "tfconn",
    namespaced,
    status = "TensorFusionConnectionStatus",
    printcolumn = r#"{"name":"Worker","type":"string","jsonPath":".status.workerName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TensorFusionConnectionSpec {
    /// The workload the client belongs to.
    #[schemars(length(min = 1))]
    pub workload_name: String,
    /// The client Pod.
    #[schemars(length(min = 1))]
    pub client_pod: String,
}

/// Where the client connects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TensorFusionConnectionStatus {
    /// Lifecycle: `Running` once a worker serves it.
    #[serde(default)]
    pub phase: Phase,
    /// The worker Pod.
    #[serde(default)]
    pub worker_name: String,
    /// The address the stub connects to (`tcp://host:port`).
    #[serde(default)]
    pub connection_url: String,
}

// ---------------------------------------------------------------------------------------------

/// Scheduling settings shared by pools (cluster-scoped).
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "SchedulingConfigTemplate",
    plural = "schedulingconfigtemplates",
    shortname = "sct"
)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingConfigTemplateSpec {
    /// Placement policy.
    #[serde(default)]
    pub placement: PlacementMode,
    /// Whether QoS preemption is on.
    #[serde(default)]
    pub preemption: bool,
    /// Pods' partition templates by model (partitioned isolation): model → template name.
    #[serde(default)]
    pub partition_templates: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------

/// Limits of one namespace (namespaced; one per namespace is read).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaTotal {
    /// TFLOPS requested in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflops: Option<String>,
    /// VRAM requested in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram: Option<String>,
    /// GPUs touched in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub gpus: Option<u64>,
}

/// A namespace's GPU quota.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "tensor-fusion.ai",
    version = "v1",
    kind = "GPUResourceQuota",
    plural = "gpuresourcequotas",
    shortname = "gq",
    namespaced,
    status = "GPUResourceQuotaStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct GPUResourceQuotaSpec {
    /// The limits.
    pub total: QuotaTotal,
}

/// What the namespace holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GPUResourceQuotaStatus {
    /// In use.
    #[serde(default)]
    pub used: QuotaTotal,
}

// ---------------------------------------------------------------------------------------------

/// The reservation the extender made for a Pod, written on the Pod (annotation
/// `tensor-fusion.ai/allocation`) before it is bound: the cluster holds the state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodAllocation {
    /// Pool.
    pub pool: String,
    /// Node.
    pub node: String,
    /// GPU indices on the node, in grant order.
    pub gpus: Vec<u32>,
    /// GPU UUIDs, same order.
    pub uuids: Vec<String>,
    /// milli-TFLOPS reserved per GPU, same order.
    pub tflops_milli: Vec<u64>,
    /// VRAM bytes reserved per GPU, same order.
    pub vram_bytes: Vec<u64>,
}
