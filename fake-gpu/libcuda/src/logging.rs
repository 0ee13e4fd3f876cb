//! Logs of the fake driver: `tracing` to stderr, filtered by `TF_LOG` (default: warnings).

use std::collections::HashSet;
use std::sync::Mutex;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Log (once per function) that a function is not implemented by the simulated GPU.
pub fn unsupported_once(name: &'static str) {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(name) {
        init();
        tracing::warn!(
            "{name} is not supported by the tensor-fusion simulated GPU (CUDA_ERROR_NOT_SUPPORTED)"
        );
    }
}
