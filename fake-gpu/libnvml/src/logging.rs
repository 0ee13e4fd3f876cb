//! Logs of the simulated NVML: `tracing` to stderr, filtered by `TF_LOG` (default: warnings).

pub use tf_os::init_logging as init;

/// Log (once per function) that a function is not implemented by the simulated GPU.
pub fn unsupported_once(name: &'static str) {
    if tf_os::first_time(name) {
        init();
        tracing::warn!(
            "{name} is not supported by the tensor-fusion simulated GPU (NVML_ERROR_NOT_SUPPORTED)"
        );
    }
}
