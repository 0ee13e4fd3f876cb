//! The stack the operator's tests run against: the real control plane (tf-test-kube), the
//! CRDs, an operator replica in this process with its webhook registered with the API server,
//! the real kube-scheduler configured to call its extender, and node agents on simulated GPUs
//! (each with a private simulated machine).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tf_fake_gpu::backend::FakeBackend;
use tf_fake_gpu::profile::{DeviceProfile, FakeGpuConfig};
use tf_operator::agent::{self, AgentConfig};
use tf_operator::{AbortOnDrop, OperatorConfig, certs};
use tf_pool_api::{GPU, GPUPool, PodAllocation, annotations as ann};
use tf_test_kube::{ControlPlane, Process, eventually, free_port};

pub use tf_test_kube::eventually as wait;

/// Applies the CRDs and waits until they are served.
pub async fn install_crds(client: &kube::Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in tf_pool_api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("tf-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        eventually(
            Duration::from_secs(30),
            &format!("{name} established"),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let c = api.get(&name).await.ok()?;
                    c.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await
        .unwrap();
    }
}

/// A serving certificate for loopback.
pub fn loopback_cert() -> certs::Serving {
    certs::generate(&["127.0.0.1".into(), "localhost".into()]).unwrap()
}

/// Registers the webhooks (mutating and validating) at `https://127.0.0.1:port` (without a
/// CA: the operator writes it in).
pub async fn register_webhooks(client: &kube::Client, port: u16) {
    let hook = |path: &str, ops: serde_json::Value| {
        json!({
            "name": format!("{}.pods.tensor-fusion.ai", &path[1..]),
            "clientConfig": {"url": format!("https://127.0.0.1:{port}{path}")},
            "rules": [{"operations": ops, "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                "operator": "NotIn", "values": ["kube-system"]}]},
        })
    };
    let m = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "tensor-fusion"}, "webhooks": [hook("/mutate", json!(["CREATE"]))]});
    let v = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "tensor-fusion"}, "webhooks": [hook("/validate", json!(["CREATE", "UPDATE"]))]});
    let pp = PatchParams::apply("tf-test").force();
    Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        client.clone(),
    )
    .patch("tensor-fusion", &pp, &Patch::Apply(&m))
    .await
    .unwrap();
    Api::<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>::all(
        client.clone(),
    )
    .patch("tensor-fusion", &pp, &Patch::Apply(&v))
    .await
    .unwrap();
}

/// The kube-scheduler configuration calling the extender at `port` (trusting `ca_pem`).
pub fn scheduler_config(port: u16, ca_pem: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: false
clientConnection:
  qps: 2000
  burst: 4000
profiles:
- schedulerName: default-scheduler
extenders:
- urlPrefix: https://127.0.0.1:{port}/scheduler
  filterVerb: filter
  prioritizeVerb: prioritize
  bindVerb: bind
  weight: 5
  enableHTTPS: true
  nodeCacheCapable: true
  httpTimeout: 30s
  tlsConfig:
    caData: {ca}
  managedResources:
  - name: {}
    ignoredByScheduler: true
",
        ann::GPU_RESOURCE
    )
}

/// An operator replica running in this process (dropping it kills it: every task aborted,
/// nothing released).
pub struct Operator {
    pub task: AbortOnDrop<anyhow::Result<()>>,
    pub port: u16,
    pub identity: String,
}

/// Starts a replica on `port` with `serving`.
pub fn start_operator(
    client: &kube::Client,
    identity: &str,
    port: u16,
    serving: &certs::Serving,
    ns: &str,
) -> Operator {
    // The operator's log, with RUST_LOG (e.g. tf_operator=info).
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .finish(),
    );
    let mut cfg = OperatorConfig::new(ns, identity, ([127, 0, 0, 1], port).into());
    cfg.serving = Some(serving.clone());
    cfg.lease_duration = Duration::from_secs(10);
    cfg.lease_retry = Duration::from_secs(2);
    cfg.status_period = Duration::from_millis(500);
    // Agents beat every 5 s in these tests.
    cfg.node_stale_after = Duration::from_secs(15);
    let task = AbortOnDrop(tokio::spawn(tf_operator::run(client.clone(), cfg)));
    Operator {
        task,
        port,
        identity: identity.into(),
    }
}

/// Creates a GPUPool.
pub async fn create_pool(client: &kube::Client, name: &str, spec: serde_json::Value) {
    let pool: GPUPool = serde_json::from_value(json!({
        "apiVersion": "tensor-fusion.ai/v1", "kind": "GPUPool", "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    Api::<GPUPool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .unwrap();
}

/// A simulated machine of `gpus` H100s with UUIDs of its own.
pub fn machine(node: &str, gpus: u32) -> Arc<dyn tf_hal::Backend> {
    let dir = tf_test_support::scratch_dir(&format!("k8s-{node}"));
    let mut devices = Vec::new();
    for i in 0..gpus {
        let mut d = DeviceProfile::h100_sxm(i);
        let h = {
            use std::hash::{Hash, Hasher};
            let mut s = std::collections::hash_map::DefaultHasher::new();
            (node, i).hash(&mut s);
            s.finish()
        };
        d.uuid = format!(
            "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xffff,
            i,
            h & 0xffff_ffff_ffff
        );
        devices.push(d);
    }
    let cfg = FakeGpuConfig {
        devices,
        shm_dir: dir,
        shm_dir_is_default: false,
        source: None,
    };
    Arc::new(FakeBackend::with_config(cfg).unwrap())
}

/// Starts node agents (simulated kubelets) for `nodes` nodes named `{prefix}-{i}` in `pool`.
pub fn start_agents(
    client: &kube::Client,
    prefix: &str,
    pool: &str,
    nodes: u32,
    gpus: u32,
) -> Vec<AbortOnDrop<anyhow::Result<()>>> {
    (0..nodes)
        .map(|i| {
            let node = format!("{prefix}-{i}");
            let mut cfg = AgentConfig::new(&node, pool);
            cfg.simulate_kubelet = true;
            cfg.heartbeat = Duration::from_secs(5);
            AbortOnDrop(tokio::spawn(agent::run(
                client.clone(),
                machine(&node, gpus),
                cfg,
            )))
        })
        .collect()
}

/// A labelled Pod with `annotations`.
pub fn gpu_pod(name: &str, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {ann::ENABLED_LABEL: "true"}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "infinity"]}],
                 "terminationGracePeriodSeconds": 0},
    }))
    .unwrap()
}

/// Waits until every GPU of the pool's `nodes` is in the engine (the pool status counts them).
pub async fn wait_pool_ready(client: &kube::Client, pool: &str, gpus: u32) {
    let api: Api<GPUPool> = Api::all(client.clone());
    eventually(
        Duration::from_secs(120),
        &format!("pool {pool} with {gpus} GPUs"),
        || {
            let api = api.clone();
            async move {
                let p = api.get(pool).await.ok()?;
                (p.status?.total_gpus == gpus).then_some(())
            }
        },
    )
    .await
    .unwrap();
}

/// Every Pod's allocation in `ns`, by Pod name.
pub async fn allocations(client: &kube::Client, ns: &str) -> Vec<(String, PodAllocation)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| {
            let a = p.metadata.annotations.as_ref()?.get(ann::ALLOCATION)?;
            Some((p.metadata.name.clone()?, serde_json::from_str(a).ok()?))
        })
        .collect()
}

/// Checks that no GPU holds more than its capacity, summing every Pod's reservation in the
/// cluster (from the Pods, not from the operator). Returns the number of GPUs in use.
pub async fn assert_no_gpu_over_allocated(client: &kube::Client) -> usize {
    use std::collections::HashMap;
    let pods: Api<Pod> = Api::all(client.clone());
    let mut used: HashMap<(String, u32), (u64, u64)> = HashMap::new();
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let Some(a) = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ann::ALLOCATION))
        else {
            continue;
        };
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
            continue;
        }
        let pa: PodAllocation = serde_json::from_str(a).unwrap();
        for (i, g) in pa.gpus.iter().enumerate() {
            let e = used.entry((pa.node.clone(), *g)).or_default();
            e.0 += pa.tflops_milli[i];
            e.1 += pa.vram_bytes[i];
        }
    }
    let gpus: Api<GPU> = Api::all(client.clone());
    let caps: HashMap<(String, u32), (u64, u64)> = gpus
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|g| {
            let c = g.status.unwrap().capacity;
            (
                (g.spec.node.clone(), g.spec.index),
                (
                    tf_pool_api::quantity::parse_milli(&c.tflops).unwrap(),
                    tf_pool_api::quantity::parse_bytes(&c.vram).unwrap(),
                ),
            )
        })
        .collect();
    for (k, (t, v)) in &used {
        let (ct, cv) = caps[k];
        assert!(
            *t <= ct && *v <= cv,
            "GPU {k:?} over-allocated: {t} of {ct} mTFLOPS, {v} of {cv} bytes"
        );
    }
    used.len()
}

/// Everything a test needs, shared by the tests of one binary.
pub struct Stack {
    pub cp: &'static ControlPlane,
    pub port: u16,
    pub serving: certs::Serving,
    pub scheduler: std::sync::Mutex<Process>,
}

/// Starts the scheduler against an extender on `port`.
pub fn start_scheduler(
    cp: &ControlPlane,
    name: &str,
    port: u16,
    serving: &certs::Serving,
) -> Process {
    cp.start_scheduler(name, &scheduler_config(port, &serving.ca_pem))
        .unwrap()
}

/// Picks a port for the operator.
pub fn operator_port() -> u16 {
    free_port()
}

/// Waits until the webhook answers (the operator is up and its CA is in the configuration).
pub async fn wait_webhook(client: &kube::Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait(Duration::from_secs(60), "the webhook to answer", || {
        let pods = pods.clone();
        async move {
            let mut p = gpu_pod("probe", json!({ann::GPU_POOL: "no-such-pool"}));
            p.metadata.name = Some(format!("probe-{}", std::process::id()));
            match pods
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &p,
                )
                .await
            {
                Err(kube::Error::Api(e)) if e.message.contains("no GPUPool") => Some(()),
                _ => None,
            }
        }
    })
    .await
    .unwrap();
}

/// GET `path` over HTTPS from 127.0.0.1:`port`, trusting `ca_pem`; the status code.
pub async fn https_status(port: u16, ca_pem: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.ok()?).ok()?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .ok()?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Delete every Pod `pods` sees and wait (up to `timeout`) until they are gone and `pool` is back
/// to full: no allocation, and all of its TFLOPS and VRAM available.
pub async fn delete_pods_and_wait_for_a_full_pool(
    pods: &Api<Pod>,
    pools: &Api<GPUPool>,
    pool: &str,
    timeout: Duration,
) {
    pods.delete_collection(&kube::api::DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    wait(timeout, "the Pods gone and the pool back to full", || {
        let pools = pools.clone();
        let pods = pods.clone();
        let pool = pool.to_string();
        async move {
            if !pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
            {
                return None;
            }
            let st = pools.get(&pool).await.ok()?.status?;
            (st.allocations == 0
                && st.available_tflops == st.total_tflops
                && st.available_vram == st.total_vram)
                .then_some(())
        }
    })
    .await
    .unwrap();
}
