//! # tf-vgpu-limiter
//!
//! The vendor-neutral core of tensor-fusion's soft isolation: a fraction of one GPU — at most N
//! bytes of VRAM and at most P % of its time — enforced inside the application's processes.
//!
//! - [`region`]: the shared-memory vGPU region (`#[repr(C)]`, magic + version, validated on
//!   open) with exact VRAM accounting per process and lock-free launch admission (GCRA);
//! - [`client`]: what an interposer calls from inside the application (charge, uncharge,
//!   before_launch), configured from the environment, with the region-loss policy;
//! - [`controller`]: turns measured device busy time into launch pacing so that the achieved
//!   share converges on the target (a pure [`ControlLaw`] and the [`Controller`] that reads and
//!   writes the region around it);
//! - [`vgpu`]: one vGPU session ([`Vgpu`]): creates and names the region, cleans up stale ones,
//!   produces the environment the interposer reads, and runs the control loop against a
//!   `&dyn tf_hal::Device`. `tensor-fusion run` and the node daemon are front ends over it.
//!
//! Design rules: the region is the one channel between a vGPU's owner and its processes
//! (limits, usage, pacing); every mapping is an owned value ([`RegionMap`]) unmapped on drop;
//! nothing read from the region is trusted before its header is validated.
//!
//! Vendor interposers (the CUDA one is `vgpu/interposer-cuda`) map driver calls onto this.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

pub mod client;
pub mod controller;
pub mod limits;
pub mod region;
pub mod sys;
pub mod vgpu;

pub use client::{Client, LossPolicy};
pub use controller::{ControlLaw, Controller, Estimator, Observation, Tick};
pub use limits::{LimitsOwner, LimitsPage, LimitsView, Pacing};
pub use region::{Limits, OverQuota, Region, RegionError, RegionMap, RegionStats};
pub use vgpu::{Control, ControlTick, Injection, Vgpu, Watch};
