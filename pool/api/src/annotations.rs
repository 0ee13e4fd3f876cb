//! The Pod labels and annotations of TensorFusion (all under `tensor-fusion.ai/`), and the ones
//! tensor-fusion writes back.

/// Label that opts a Pod in (`"true"`).
pub const ENABLED_LABEL: &str = "tensor-fusion.ai/enabled";

/// TFLOPS per GPU requested (a quantity: `"10"`, `"12.5"`).
pub const TFLOPS_REQUEST: &str = "tensor-fusion.ai/tflops-request";
/// TFLOPS per GPU at most (a quantity, not below the request).
pub const TFLOPS_LIMIT: &str = "tensor-fusion.ai/tflops-limit";
/// VRAM per GPU requested (a quantity of bytes: `"4Gi"`).
pub const VRAM_REQUEST: &str = "tensor-fusion.ai/vram-request";
/// VRAM per GPU at most.
pub const VRAM_LIMIT: &str = "tensor-fusion.ai/vram-limit";
/// Share of each GPU's compute requested, in percent (`"25"`), instead of TFLOPS.
pub const COMPUTE_PERCENT_REQUEST: &str = "tensor-fusion.ai/compute-percent-request";
/// Share of each GPU's compute at most, in percent.
pub const COMPUTE_PERCENT_LIMIT: &str = "tensor-fusion.ai/compute-percent-limit";
/// Number of GPUs (a positive integer, default 1).
pub const GPU_COUNT: &str = "tensor-fusion.ai/gpu-count";
/// GPU model required (must exist in the pool).
pub const GPU_MODEL: &str = "tensor-fusion.ai/gpu-model";
/// GPU vendor required (`nvidia`, `ascend`, `amd`, …).
pub const VENDOR: &str = "tensor-fusion.ai/vendor";
/// Quality of service: `low`, `medium`, `high`, `critical`.
pub const QOS: &str = "tensor-fusion.ai/qos";
/// The GPUPool to place in.
pub const GPU_POOL: &str = "tensor-fusion.ai/gpupool";
/// `true`: the vGPU is on the Pod's own node (local); `false`: a remote worker serves it.
pub const IS_LOCAL_GPU: &str = "tensor-fusion.ai/is-local-gpu";
/// `shared`, `soft`, `hard` or `partitioned`.
pub const ISOLATION: &str = "tensor-fusion.ai/isolation";
/// A WorkloadProfile in the Pod's namespace whose values are the defaults.
pub const WORKLOAD_PROFILE: &str = "tensor-fusion.ai/workload-profile";
/// Comma-separated container names to inject into (default: every container).
pub const INJECT_CONTAINER: &str = "tensor-fusion.ai/inject-container";
/// `true`: whole GPUs, shared with nobody.
pub const DEDICATED_GPU: &str = "tensor-fusion.ai/dedicated-gpu";
/// `true`: the worker runs as a sidecar of the Pod.
pub const SIDECAR_WORKER: &str = "tensor-fusion.ai/sidecar-worker";
/// `true`/`false`: gang scheduling (see `tf_scheduler::gang`).
pub const GANG_ENABLED: &str = "tensor-fusion.ai/gang-enabled";
/// Minimum members of the gang (a positive integer).
pub const GANG_MIN_MEMBERS: &str = "tensor-fusion.ai/gang-min-members";
/// How long a gang waits for its members (a Go duration: `30s`, `5m`).
pub const GANG_TIMEOUT: &str = "tensor-fusion.ai/gang-timeout";

/// Every user-facing annotation, in the order of TensorFusion's documentation.
pub const ALL: [&str; 20] = [
    TFLOPS_REQUEST,
    TFLOPS_LIMIT,
    VRAM_REQUEST,
    VRAM_LIMIT,
    COMPUTE_PERCENT_REQUEST,
    COMPUTE_PERCENT_LIMIT,
    GPU_COUNT,
    GPU_MODEL,
    VENDOR,
    QOS,
    GPU_POOL,
    IS_LOCAL_GPU,
    ISOLATION,
    WORKLOAD_PROFILE,
    INJECT_CONTAINER,
    DEDICATED_GPU,
    SIDECAR_WORKER,
    GANG_ENABLED,
    GANG_MIN_MEMBERS,
    GANG_TIMEOUT,
];

/// Written by the webhook: the TensorFusionWorkload the Pod belongs to.
pub const WORKLOAD: &str = "tensor-fusion.ai/workload";
/// Written by the extender at bind: the GPUs reserved, `uuid,uuid`.
pub const GPU_IDS: &str = "tensor-fusion.ai/gpu-ids";
/// Written by the extender at bind: the reservation in full (JSON of [`crate::PodAllocation`]),
/// from which the operator rebuilds its state on restart.
pub const ALLOCATION: &str = "tensor-fusion.ai/allocation";
/// Written by the webhook for partitioned isolation: the partition template asked for.
pub const PARTITION_TEMPLATE: &str = "tensor-fusion.ai/partition-template";
/// Written by the webhook for hard isolation: the TensorFusionConnection of the Pod.
pub const CONNECTION: &str = "tensor-fusion.ai/connection";
/// Finalizer on annotated Pods: the operator releases their GPUs before they go.
pub const POD_FINALIZER: &str = "tensor-fusion.ai/gpu-release";

/// HAMi's resource names, accepted as well.
pub mod hami {
    /// Number of GPUs (a container resource limit).
    pub const GPU: &str = "nvidia.com/gpu";
    /// VRAM per GPU in MiB.
    pub const GPU_MEM: &str = "nvidia.com/gpumem";
    /// Compute per GPU in percent.
    pub const GPU_CORES: &str = "nvidia.com/gpucores";
}

/// The extended resource a tensor-fusion Pod requests so that only GPU nodes are considered
/// (one unit per GPU); the node agent advertises it.
pub const GPU_RESOURCE: &str = "tensor-fusion.ai/gpu";
