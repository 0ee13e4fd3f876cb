//! `tensor-fusion devices`: list the devices a backend sees.

use anyhow::Result;
use tf_hal::units::format_bytes;

#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Backend to use: fake, cuda, vulkan, ascend or remote (default: $TF_BACKEND, the config file, or fake).
    #[arg(long)]
    pub backend: Option<String>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// With --backend remote: the worker's address (tcp://HOST:PORT, unix:///PATH or
    /// shm://NAME; default: $TF_REMOTE).
    #[arg(long, value_parser = crate::remote::parse_addr)]
    pub remote: Option<tf_remote_protocol::Address>,
    /// With --backend remote: the file holding the worker's token (default:
    /// $TF_REMOTE_TOKEN_FILE).
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

pub fn run(args: DevicesArgs) -> Result<()> {
    let backend = if args.remote.is_some() && args.backend.is_none() {
        crate::remote::open(args.remote.as_ref(), args.token_file.as_deref())?
    } else {
        match crate::config::select_backend(args.backend.as_deref())? {
            tf_hal::BackendKind::Remote => {
                crate::remote::open(args.remote.as_ref(), args.token_file.as_deref())?
            }
            kind => crate::backends::open_kind(kind)?,
        }
    };
    let devices = backend.devices()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(());
    }
    // Compute units are SMs on NVIDIA GPUs and AI cores on Ascend NPUs.
    let units = if !devices.is_empty() && devices.iter().all(|d| d.vendor == tf_hal::Vendor::Ascend)
    {
        "AICORE"
    } else {
        "SMS"
    };
    println!(
        "{:<5} {:<44} {:<26} {:>10} {:>6} {:>8} {:<7} {:<7}",
        "INDEX", "UUID", "MODEL", "MEMORY", units, "TFLOPS", "VENDOR", "BACKEND"
    );
    for d in &devices {
        println!(
            "{:<5} {:<44} {:<26} {:>10} {:>6} {:>8.1} {:<7} {:<7}",
            d.index,
            d.uuid,
            d.model,
            format_bytes(d.total_memory_bytes),
            d.compute_units,
            d.fp16_tflops,
            d.vendor,
            d.backend
        );
    }
    if devices.is_empty() {
        println!("(no devices)");
    }
    Ok(())
}
