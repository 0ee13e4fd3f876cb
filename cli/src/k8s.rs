//! Kubernetes: `tensor-fusion operator` (controllers, admission webhook, scheduler extender,
//! leader election), `tensor-fusion node-agent` (a node's GPUNode and GPUs from HAL discovery)
//! and `tensor-fusion manifests` (the install, rendered). See `tf-operator`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tf_operator::agent::AgentConfig;
use tf_operator::manifests;

/// `tensor-fusion operator`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Namespace of the operator (its Lease, its CA ConfigMap, its Service's DNS names).
    #[arg(long, default_value = "tensor-fusion-system")]
    pub namespace: String,
    /// Where the HTTPS server (webhook and extender) listens.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,
    /// This replica's identity in the election (default: $POD_NAME, else the host name).
    #[arg(long)]
    pub identity: Option<String>,
    /// Image the webhook injects (the limiter's and the stub's init containers).
    #[arg(long)]
    pub image: Option<String>,
}

/// `tensor-fusion node-agent`.
#[derive(Debug, Args)]
pub struct NodeAgentArgs {
    /// This node's name (default: $NODE_NAME).
    #[arg(long)]
    pub node: Option<String>,
    /// The GPUPool to join.
    #[arg(long)]
    pub pool: String,
    /// Backend to discover devices with (fake, cuda, …; default as for every command).
    #[arg(long)]
    pub backend: Option<String>,
    /// Host CPU offered to GPU workloads, in cores.
    #[arg(long, default_value_t = 64)]
    pub cpus: u64,
    /// Host memory offered, in GiB.
    #[arg(long, default_value_t = 256)]
    pub memory_gib: u64,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 10)]
    pub heartbeat: u64,
    /// Also register the Node and run its Pods (a simulated node without a kubelet).
    #[arg(long)]
    pub simulate_kubelet: bool,
}

/// `tensor-fusion manifests`.
#[derive(Debug, Args)]
pub struct ManifestsArgs {
    /// A values file (YAML: namespace, image, operatorReplicas, port, pool, nodeSelector,
    /// failurePolicy).
    #[arg(long)]
    pub values: Option<PathBuf>,
    /// Write the files (and a kustomization.yaml) into this folder instead of printing one
    /// YAML stream.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "tensor-fusion-operator".into())
}

pub fn operator(args: OperatorArgs) -> Result<()> {
    let identity = args
        .identity
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(host_name);
    let mut cfg = tf_operator::OperatorConfig::new(&args.namespace, &identity, args.listen);
    if let Some(image) = args.image {
        cfg.inject.image = image;
    }
    runtime()?.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster, or $KUBECONFIG / ~/.kube/config)")?;
        tf_operator::run(client, cfg).await
    })
}

/// The node agent's settings for `tensor-fusion node --kube-pool`.
pub fn agent_config(pool: &str, node: Option<String>) -> Result<AgentConfig> {
    let node = node
        .or_else(|| std::env::var("NODE_NAME").ok())
        .unwrap_or_else(host_name);
    Ok(AgentConfig::new(&node, pool))
}

/// Starts the node agent on the current runtime; it stops when the handle is dropped.
pub async fn start_agent(
    backend: std::sync::Arc<dyn tf_hal::Backend>,
    cfg: AgentConfig,
) -> Result<tf_operator::AbortOnDrop<Result<()>>> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster, or $KUBECONFIG / ~/.kube/config)")?;
    // Registered before the daemon says it serves; the heartbeat runs in the task.
    tf_operator::agent::register(&client, backend.as_ref(), &cfg).await?;
    Ok(tf_operator::AbortOnDrop(tokio::spawn(async move {
        tf_operator::agent::run(client, backend, cfg).await
    })))
}

pub fn node_agent(args: NodeAgentArgs) -> Result<()> {
    let node = args
        .node
        .or_else(|| std::env::var("NODE_NAME").ok())
        .context("say which node this is: --node NAME or $NODE_NAME")?;
    let backend = crate::backends::open(args.backend.as_deref())?;
    let mut cfg = AgentConfig::new(&node, &args.pool);
    cfg.cpu_milli = args.cpus * 1000;
    cfg.memory_bytes = args.memory_gib << 30;
    cfg.heartbeat = Duration::from_secs(args.heartbeat.max(1));
    cfg.simulate_kubelet = args.simulate_kubelet;
    runtime()?.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (in-cluster, or $KUBECONFIG / ~/.kube/config)")?;
        tf_operator::agent::run(client, backend, cfg).await
    })
}

pub fn manifests(args: ManifestsArgs) -> Result<()> {
    let values = match &args.values {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            manifests::parse_values(&text)
                .with_context(|| format!("{} is not a values file", p.display()))?
        }
        None => manifests::Values::default(),
    };
    let files = manifests::render(&values);
    match &args.out {
        Some(dir) => {
            for (path, text) in &files {
                let p = dir.join(path);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            }
            println!(
                "wrote {} files to {} (kubectl apply -k {})",
                files.len(),
                dir.display(),
                dir.display()
            );
        }
        None => {
            for (path, text) in files.iter().filter(|(p, _)| p != "kustomization.yaml") {
                println!("# {path}\n---\n{}", text.trim_end());
                println!("---");
            }
        }
    }
    Ok(())
}
