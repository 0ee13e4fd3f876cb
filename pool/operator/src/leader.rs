//! Leader election with a `coordination.k8s.io/v1` Lease: the holder renews it every
//! `retry`; another replica takes it once it has not been renewed for `duration`. Every
//! write carries the Lease's resourceVersion, so two replicas can never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::watch;

/// Election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often to renew or retry.
    pub retry: Duration,
}

impl LeaseConfig {
    /// Defaults: a 10 s lease renewed every 2 s (a killed leader is replaced within 12 s).
    pub fn new(namespace: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: "tensor-fusion-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// One round: returns whether this replica holds the lease afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaseConfig) -> kube::Result<bool> {
    let secs = cfg.duration.as_secs().max(1) as i32;
    let existing = api.get_opt(&cfg.name).await?;
    let Some(mut lease) = existing else {
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace},
            "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": secs,
                     "acquireTime": now(), "renewTime": now(), "leaseTransitions": 0},
        }))
        .expect("a valid Lease");
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let mine = holder == cfg.identity;
    if !mine && !holder.is_empty() {
        let lasts_ms = spec.lease_duration_seconds.unwrap_or(secs) as i64 * 1000;
        let expired = match &spec.renew_time {
            Some(t) => t.0.as_millisecond() + lasts_ms < Timestamp::now().as_millisecond(),
            None => true,
        };
        if !expired {
            return Ok(false);
        }
    }
    if !mine {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(secs);
    // replace carries metadata.resourceVersion: a concurrent writer makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up (on a clean shutdown), so another replica need not wait it out.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> kube::Result<()> {
    if let Some(mut lease) = api.get_opt(&cfg.name).await?
        && let Some(spec) = lease.spec.as_mut()
        && spec.holder_identity.as_deref() == Some(cfg.identity.as_str())
    {
        spec.holder_identity = Some(String::new());
        let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
    }
    Ok(())
}

/// Runs the election until the returned task is dropped; the channel says whether this
/// replica leads. A leader that fails to renew within the lease's duration steps down.
pub fn spawn(
    client: kube::Client,
    cfg: LeaseConfig,
) -> (watch::Receiver<bool>, crate::AbortOnDrop<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_ok = tokio::time::Instant::now();
        loop {
            match try_acquire_or_renew(&api, &cfg).await {
                Ok(lead) => {
                    if lead {
                        last_ok = tokio::time::Instant::now();
                    }
                    tx.send_if_modified(|v| std::mem::replace(v, lead) != lead);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease");
                    if last_ok.elapsed() > cfg.duration {
                        tx.send_if_modified(|v| std::mem::replace(v, false));
                    }
                }
            }
            tokio::time::sleep(cfg.retry).await;
        }
    });
    (rx, crate::AbortOnDrop(task))
}
