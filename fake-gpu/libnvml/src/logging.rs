//! Logs of the simulated NVML: `tracing` to stderr, filtered by `TF_LOG` (default: warnings).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::{Mutex, Once};

/// Install the stderr subscriber once (if the host program has none).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("TF_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
    });
}

/// Log (once per function) that a function is not implemented by the simulated GPU.
pub fn unsupported_once(name: &'static str) {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let first = SEEN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(name);
    if first {
        init();
        tracing::warn!(
            "{name} is not supported by the tensor-fusion simulated GPU (NVML_ERROR_NOT_SUPPORTED)"
        );
    }
}
