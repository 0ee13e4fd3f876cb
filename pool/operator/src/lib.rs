//! tensor-fusion on Kubernetes: controllers, admission webhook, scheduler extender, node agent
//! and manifests (`tensor-fusion operator`, `tensor-fusion manifests`).
//!
//! Design rules:
//! - The cluster holds the state: every reservation is written on its Pod before the Pod is
//!   bound, so a restarted operator rebuilds the engine from the cluster and nothing is
//!   double-allocated.
//! - Kubernetes keeps doing everything else: the stock kube-scheduler calls the extender, which
//!   only filters, scores and binds by the engine (`tf-scheduler`).
//! - Tested against the real control plane (`tf-test-kube`), never an imitation of it.
//! - Devices are seen through `tf-hal` only; the caller hands the node agent its backend.
//!
//! Work in progress: the modules land one by one (see ARCHITECTURE.md).
