//! tensor-fusion on Kubernetes: controllers, admission webhook, scheduler extender, node agent
//! and manifests (`tensor-fusion operator`, `tensor-fusion manifests`).
//!
//! Design rules:
//! - The cluster holds the state: every reservation is written on its Pod before the Pod is
//!   bound, so a restarted operator rebuilds the engine from the cluster ([`controller::rebuild`])
//!   and nothing is double-allocated.
//! - Kubernetes keeps doing everything else: the stock kube-scheduler calls the extender, which
//!   only filters, scores and binds by the engine (`tf-scheduler`).
//! - One leader (a coordination.k8s.io Lease) owns the engine; every replica serves the webhook.
//! - Tested against the real control plane (`tf-test-kube`), never an imitation of it.
//! - Devices are seen through `tf-hal` only; the caller hands the node agent its backend.

#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

pub mod agent;
pub mod cache;
pub mod certs;
pub mod controller;
pub mod extender;
pub mod leader;
pub mod manifests;
pub mod server;
pub mod state;
pub mod webhook;
pub mod workload;
pub mod workloads;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

/// How an operator replica runs.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity (the Pod name).
    pub identity: String,
    /// Where the HTTPS server listens.
    pub listen: SocketAddr,
    /// Names on the serving certificate (the Service's DNS names, or `127.0.0.1`).
    pub cert_names: Vec<String>,
    /// Webhook configurations whose `caBundle` the operator fills in (mutating, validating).
    pub webhook_configs: Option<(String, String)>,
    /// A ConfigMap (in `namespace`) the operator publishes its CA in (key `ca.crt`), for the
    /// kube-scheduler's extender configuration.
    pub ca_configmap: Option<String>,
    /// What the webhook injects.
    pub inject: webhook::InjectConfig,
    /// The serving certificate; generated at start when `None`.
    pub serving: Option<certs::Serving>,
    /// How often status objects are refreshed.
    pub status_period: Duration,
    /// A node agent silent this long makes its GPUNode `Unknown` (and takes nothing new).
    pub node_stale_after: Duration,
    /// Lease timing.
    pub lease_duration: Duration,
    /// Lease renewal period.
    pub lease_retry: Duration,
}

impl OperatorConfig {
    /// Defaults for a replica named `identity` in `namespace`, listening on `listen`.
    pub fn new(namespace: &str, identity: &str, listen: SocketAddr) -> OperatorConfig {
        OperatorConfig {
            namespace: namespace.into(),
            identity: identity.into(),
            listen,
            cert_names: vec![
                "tensor-fusion-operator".into(),
                format!("tensor-fusion-operator.{namespace}.svc"),
                format!("tensor-fusion-operator.{namespace}.svc.cluster.local"),
            ],
            webhook_configs: Some(("tensor-fusion".into(), "tensor-fusion".into())),
            ca_configmap: Some(manifests::CA_CONFIGMAP.into()),
            inject: Default::default(),
            serving: None,
            status_period: Duration::from_secs(1),
            node_stale_after: Duration::from_secs(40),
            lease_duration: Duration::from_secs(10),
            lease_retry: Duration::from_secs(2),
        }
    }
}

/// Runs one replica: the HTTPS server at once; the controllers and the extender once it
/// leads (after rebuilding the allocations from the cluster). Returns an error when it loses
/// the lease (the process should exit and be restarted, as controller-runtime's do).
pub async fn run(client: kube::Client, cfg: OperatorConfig) -> anyhow::Result<()> {
    let serving = match &cfg.serving {
        Some(s) => s.clone(),
        None => certs::generate(&cfg.cert_names)?,
    };
    if let Some((m, v)) = &cfg.webhook_configs {
        certs::patch_ca_bundle(&client, m, v, &serving.ca_pem)
            .await
            .context("writing the CA into the webhook configurations")?;
    }
    if let Some(name) = &cfg.ca_configmap {
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": cfg.namespace}, "data": {"ca.crt": serving.ca_pem}});
        kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(
            client.clone(),
            &cfg.namespace,
        )
        .patch(
            name,
            &kube::api::PatchParams::apply("tensor-fusion-operator").force(),
            &kube::api::Patch::Apply(&cm),
        )
        .await
        .context("publishing the CA")?;
    }
    let cache = cache::Cache::start(client.clone()).await?;
    let state = Arc::new(Mutex::new(state::State::new()));
    let leading = Arc::new(AtomicBool::new(false));
    let app = server::App {
        cache: cache.clone(),
        inject: Arc::new(cfg.inject.clone()),
        extender: extender::Extender {
            state: state.clone(),
            client: client.clone(),
        },
        leading: leading.clone(),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let tls = certs::server_config(&serving)?;
    let server = AbortOnDrop(tokio::spawn(server::serve(
        listener,
        tls,
        server::router(app),
    )));
    let mut lease = leader::LeaseConfig::new(&cfg.namespace, &cfg.identity);
    lease.duration = cfg.lease_duration;
    lease.retry = cfg.lease_retry;
    let (mut lead, _election) = leader::spawn(client.clone(), lease);
    lead.wait_for(|l| *l).await?;
    let adopted = controller::rebuild(&state, &cache).await?;
    tracing::info!(identity = %cfg.identity, adopted, "leading");
    leading.store(true, Ordering::Release);
    let _pods = AbortOnDrop(tokio::spawn(controller::run_pods(
        state.clone(),
        client.clone(),
    )));
    let _status = AbortOnDrop(tokio::spawn(controller::run_status(
        state.clone(),
        cache.clone(),
        cfg.status_period,
        cfg.node_stale_after,
    )));
    let _workloads = AbortOnDrop(tokio::spawn(workloads::run(
        client.clone(),
        cfg.inject.clone(),
        Duration::from_secs(2),
    )));
    lead.wait_for(|l| !*l).await?;
    leading.store(false, Ordering::Release);
    drop(server);
    anyhow::bail!("{} lost the lease", cfg.identity)
}

/// A task aborted when this is dropped.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
