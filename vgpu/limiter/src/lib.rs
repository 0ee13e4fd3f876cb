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
//!   share converges on the target.
//!
//! Vendor interposers (the CUDA one is `vgpu/interposer-cuda`) map driver calls onto this.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

pub mod client;
pub mod controller;
pub mod region;
pub mod sys;

pub use client::{Client, LossPolicy};
pub use controller::{Controller, Estimator, Tick};
pub use region::{Limits, OverQuota, Region, RegionError, RegionStats};
