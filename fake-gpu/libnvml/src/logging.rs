//! Logs of the simulated NVML: `tracing` to stderr, filtered by `TF_LOG` (default: warnings).

pub use tf_os::init_logging as init;
