//! Two operator replicas: one leads (its extender answers, /readyz is 200), the other waits;
//! killing the leader hands over within 15 seconds (the Lease lasts 10 s, renewed every 2 s).

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use tf_test_kube::ControlPlane;

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_hands_over_within_15_seconds() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    install_crds(&client).await;
    let serving = loopback_cert();
    let (pa, pb) = (operator_port(), operator_port());
    let a = start_operator(&client, "replica-a", pa, &serving, "default");
    // Let A take the lease first, then start B.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    wait(Duration::from_secs(60), "replica-a to lead", || async {
        (https_status(pa, &serving.ca_pem, "/readyz").await == Some(200)).then_some(())
    })
    .await
    .unwrap();
    let b = start_operator(&client, "replica-b", pb, &serving, "default");
    wait(Duration::from_secs(30), "replica-b to serve", || async {
        https_status(pb, &serving.ca_pem, "/healthz")
            .await
            .map(|_| ())
    })
    .await
    .unwrap();
    // B serves but does not lead while A renews.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        https_status(pb, &serving.ca_pem, "/readyz").await,
        Some(503)
    );
    let lease = leases.get("tensor-fusion-operator").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("replica-a")
    );

    // Kill A (its tasks stop: no renewal, no release).
    drop(a);
    let t = Instant::now();
    wait(Duration::from_secs(30), "replica-b to lead", || async {
        (https_status(pb, &serving.ca_pem, "/readyz").await == Some(200)).then_some(())
    })
    .await
    .unwrap();
    let handover = t.elapsed();
    let lease = leases.get("tensor-fusion-operator").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("replica-b")
    );
    println!(
        "{}",
        json!({"figure": "leader_handover", "seconds": handover.as_secs_f64()})
    );
    assert!(
        handover < Duration::from_secs(15),
        "handover took {handover:?}"
    );
    drop(b);
}
