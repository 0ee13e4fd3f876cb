//! Trace simulator and throughput bench (used by `tensor-fusion sim`).

pub mod alibaba;
pub mod bench;
pub mod trace;
pub mod variants;
