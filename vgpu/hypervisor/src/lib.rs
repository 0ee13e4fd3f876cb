//! # tf-hypervisor
//!
//! The node daemon (`tensor-fusion node`): one per GPU node, the single owner of the node's
//! devices and of every vGPU on them. On one machine it is the whole product; in a cluster the
//! operator's node agent drives the same daemon through the same API.
//!
//! - [`api`]: the typed gRPC API (`proto/hypervisor.proto`, generated with tonic/prost; protox
//!   compiles the proto in `build.rs`, so no `protoc` is needed), and [`api::connect`] for
//!   clients on the Unix socket;
//! - [`node`]: the daemon: vGPU lifecycle (validated, placed by the scheduler engine, stored),
//!   one control loop per device that ticks every vGPU's [`tf_vgpu_limiter::Control`] and
//!   divides the device between them ([`share`]), attachments of `run --vgpu` front ends, and
//!   recovery after a restart or a kill -9;
//! - [`store`]: the state database;
//! - [`metrics`]: Prometheus text exposition of devices and vGPUs.
//!
//! Design rules:
//! - **The database is the truth for what exists.** A vGPU exists once its record is committed;
//!   its region folder and scheduler reservation are rebuilt from the record at start-up, and
//!   folders without a record are removed. State lives in redb rather than SQLite: it is pure
//!   Rust (no C library to build or link), its commits are durable and crash-safe
//!   (copy-on-write pages: a kill -9 at any instant leaves the last committed transaction), it
//!   locks its file so two daemons cannot share a state directory, and the daemon needs
//!   key → record only, no queries that would want SQL.
//! - **Nothing is changed by a refused request**: every check runs before the first write, and
//!   a failed write undoes what came before it.
//! - **Limits never fail open.** Each attached front end owns its program's limits page (a
//!   sealed memfd, as in standalone `run`) and writes the pacing the daemon streams to it; when
//!   the daemon dies the page keeps the last pacing, and the front end attaches again when the
//!   daemon is back. Liveness is the attachment's stream, not a pid: a front end in another
//!   pid namespace is seen to die when its connection closes; its pid in the daemon's namespace
//!   comes from the socket's peer credentials.
//! - **Placement never preempts**: the scheduler engine places vGPUs (requests must fit what
//!   is left of a device); QoS orders only who borrows idle capacity first.
//! - vendor-neutral: devices are `tf_hal::Device`s; the caller opens the backend.

pub mod api;
pub mod metrics;
pub mod node;
pub mod server;
pub mod share;
pub mod store;

pub use node::{Node, NodeConfig, WORKER_ENV, WorkerLaunch};
