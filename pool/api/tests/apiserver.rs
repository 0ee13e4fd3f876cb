//! The real kube-apiserver accepts the generated CRDs and enforces their schemas.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use tf_test_kube::{ControlPlane, eventually};

/// Applies every CRD and waits until each is Established.
async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in tf_pool_api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("tf-test").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        eventually(
            Duration::from_secs(30),
            &format!("{name} established"),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let c = api.get(&name).await.ok()?;
                    let est = c
                        .status?
                        .conditions?
                        .into_iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    est.then_some(())
                }
            },
        )
        .await?;
    }
    Ok(())
}

fn api_of(client: &kube::Client, kind: &str, plural: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tensor-fusion.ai", "v1", kind),
        plural,
    );
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

fn object(kind: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "tensor-fusion.ai/v1", "kind": kind,
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_accepts_the_crds_and_enforces_their_schemas() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let ns = cp.namespace("crds").await.unwrap();
    let pp = PostParams::default();

    // Valid objects of several kinds are stored and read back.
    let pools = api_of(&client, "GPUPool", "gpupools", None);
    let good_pool = object(
        "GPUPool",
        &format!("{ns}-pool"),
        json!({"oversubscription": {"tflopsOversellPercent": 200, "vramExpandToHostMemPercent": 100},
               "placement": "CompactFirst", "defaultQos": "high"}),
    );
    pools
        .create(&pp, &good_pool)
        .await
        .expect("a valid GPUPool");
    let back = pools.get(&format!("{ns}-pool")).await.unwrap();
    assert_eq!(back.data["spec"]["placement"], "CompactFirst");

    let profiles = api_of(&client, "WorkloadProfile", "workloadprofiles", Some(&ns));
    profiles
        .create(
            &pp,
            &object(
                "WorkloadProfile",
                "small",
                json!({"poolName": "p", "resources": {"requests": {"tflops": "10", "vram": "4Gi"},
                       "limits": {"tflops": "20", "vram": "4Gi"}}, "qos": "low", "isolation": "soft"}),
            ),
        )
        .await
        .expect("a valid WorkloadProfile");

    // Invalid objects are refused by the schema, with a message naming the field.
    let cases = [
        (
            "GPUPool",
            json!({"oversubscription": {"tflopsOversellPercent": 50, "vramExpandToHostMemPercent": 100}}),
            "tflopsOversellPercent",
        ),
        ("GPUPool", json!({"placement": "Random"}), "placement"),
        ("GPUPool", json!({"defaultQos": "urgent"}), "defaultQos"),
        (
            "GPUNode",
            json!({"pool": "", "cpuMilli": 1, "memoryBytes": 1}),
            "pool",
        ),
        (
            "GPUNode",
            json!({"pool": "p", "cpuMilli": -5, "memoryBytes": 1}),
            "cpuMilli",
        ),
        (
            "GPU",
            json!({"node": "n", "index": 0, "model": "m", "vendor": "nvidia"}),
            "uuid",
        ),
    ];
    for (i, (kind, spec, field)) in cases.into_iter().enumerate() {
        let plural = match kind {
            "GPUPool" => "gpupools",
            "GPUNode" => "gpunodes",
            _ => "gpus",
        };
        let api = api_of(&client, kind, plural, None);
        let err = api
            .create(&pp, &object(kind, &format!("{ns}-bad-{i}"), spec.clone()))
            .await
            .expect_err(&format!("{kind} {spec} must be refused"));
        let msg = err.to_string();
        assert!(msg.contains(field), "{kind} {spec}: {msg}");
        assert!(msg.contains("Invalid") || msg.contains("invalid"), "{msg}");
    }
    let err = profiles
        .create(
            &pp,
            &object(
                "WorkloadProfile",
                "bad",
                json!({"resources": {"requests": {"tflops": "ten", "vram": "4Gi"},
                       "limits": {"tflops": "20", "vram": "4Gi"}}}),
            ),
        )
        .await
        .expect_err("a malformed quantity is refused");
    assert!(err.to_string().contains("tflops"), "{err}");
}
