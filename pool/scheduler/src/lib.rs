//! tensor-fusion pool scheduler: the allocation engine behind GPU pooling.
//!
//! A [`Scheduler`] holds pools of nodes; nodes have host CPU and memory and GPUs with TFLOPS
//! and VRAM capacity, a model, a vendor and a NUMA position. A [`Request`] asks for GPUs (a
//! share of each, absolute or in permille, or whole dedicated GPUs) plus host CPU and memory,
//! with model/vendor constraints, optional pinned GPU indices, a QoS level and a namespace.
//! [`Scheduler::reserve`] filters the pool's nodes, scores them with the [`Policy`], and
//! commits the best; [`Scheduler::release`] returns exactly what an allocation held.
//! Pools can oversubscribe TFLOPS and VRAM by a ratio; namespaces can have quotas; a request
//! that fits nowhere may preempt strictly lower-QoS allocations.
//!
//! All quantities are integers (milli-TFLOPS, bytes, milli-CPU), so capacity accounting is
//! exact. Scores are cached per request class and node version: a decision re-scores only the
//! nodes that changed since the class was last placed, then scans the cached scores.
//!
//! The default policy, [`Policy::FragLookahead`], is fragmentation-aware; see `pool/README.md`.
//! Multi-GPU requests prefer (or require) GPUs of one NVLink domain, then one NUMA node
//! ([`topology`] builds nodes from the HAL's `devices()` and `topology()`). [`gang`] places groups
//! all or nothing ([`Scheduler::reserve_all`] and a coordinator with minimum members and a
//! timeout). [`Scheduler::plan_defrag`] plans moves that free whole GPUs and nodes.
//! [`sim`] replays the Alibaba GPU trace by the FGD paper's protocol, generates its
//! GPU-model-constrained and CPU-heavy variants, and benchmarks throughput.
//!
//! No Kubernetes here: the operator maps Pods onto [`Request`]s and gang annotations onto
//! [`GangSpec`]s.

#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

mod engine;
mod error;
pub mod gang;
pub mod partition;
mod policy;
mod profile;
pub mod sim;
pub mod topology;
mod types;

pub use engine::defrag::{DefragOptions, DefragPlan, DefragStep, Move};
pub use engine::{MAX_GPUS_PER_NODE, MAX_MODELS, Scheduler};
pub use error::{Result, SchedError};
pub use gang::{GangEvent, GangInfo, GangSpec, GangStatus};
pub use policy::Policy;
pub use profile::{ProfileEntry, WorkloadProfile};
pub use types::*;
