//! Logs of the interposer: `tracing` to stderr, filtered by `TF_LOG` (default: warnings).

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
