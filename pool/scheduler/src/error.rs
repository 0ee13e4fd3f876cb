//! Errors the engine reports for bad requests, bad cluster descriptions and refusals.

use crate::types::AllocationId;

/// Everything [`crate::Scheduler`] can refuse, with enough context to tell the caller why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// The request names a pool that was never added.
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    /// A pool with this name already exists.
    #[error("pool {0:?} already exists")]
    DuplicatePool(String),
    /// A node with this name already exists.
    #[error("node {0:?} already exists")]
    DuplicateNode(String),
    /// The request (or a pin) names a node that does not exist.
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    /// Release or lookup of an allocation id that is not live.
    #[error("unknown allocation {0}")]
    UnknownAllocation(AllocationId),
    /// A node description the engine cannot hold (zero capacity, too many GPUs, ...).
    #[error("invalid node {node:?}: {reason}")]
    InvalidNode {
        /// The node's name.
        node: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A pool configuration the engine cannot hold (ratio below 1.0, ...).
    #[error("invalid pool {pool:?}: {reason}")]
    InvalidPool {
        /// The pool's name.
        pool: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request is malformed: it can never be satisfied whatever the cluster state.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Granting the request would take the namespace past its quota.
    #[error(
        "namespace {namespace:?} quota exceeded for {resource}: {used} used + {requested} requested > {limit}"
    )]
    QuotaExceeded {
        /// The namespace charged.
        namespace: String,
        /// `tflops_milli`, `vram_bytes` or `gpus`.
        resource: &'static str,
        /// Already charged to the namespace.
        used: u64,
        /// What this request would add.
        requested: u64,
        /// The quota.
        limit: u64,
    },
    /// No node in the pool can host the request now, even after any allowed preemption.
    #[error("unschedulable in pool {pool:?}: {reason}")]
    Unschedulable {
        /// The pool searched.
        pool: String,
        /// Why nothing fits (the most specific reason known).
        reason: String,
    },
}

/// Shorthand for results of the engine.
pub type Result<T, E = SchedError> = std::result::Result<T, E>;
