//! The operator against the real control plane: the webhook registered with the real
//! kube-apiserver (every annotation, a good and a bad value; HAMi's resources), and the real
//! kube-scheduler calling the extender (Pods placed on GPUs, recorded, Running; nothing over
//! its capacity; capacity back when they go).

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tf_pool_api::{GPUPool, annotations as ann};
use tf_test_kube::ControlPlane;

const MODEL: &str = "NVIDIA H100 80GB HBM3";

/// The shared stack: one operator replica (on a runtime of its own, so that it outlives each
/// test's runtime), its webhooks, the kube-scheduler calling it.
struct Shared {
    cp: &'static ControlPlane,
    _rt: tokio::runtime::Runtime,
    _sched: tf_test_kube::Process,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        std::thread::spawn(|| {
            let cp = ControlPlane::shared();
            let rt = tokio::runtime::Runtime::new().unwrap();
            let serving = loopback_cert();
            let port = operator_port();
            rt.block_on(async {
                let client = cp.client().await.unwrap();
                install_crds(&client).await;
                register_webhooks(&client, port).await;
                let op = start_operator(&client, "e2e-0", port, &serving, "default");
                // Leaks into the runtime: the replica lives as long as the test binary.
                std::mem::forget(op);
            });
            let sched = start_scheduler(cp, "kube-scheduler-e2e", port, &serving);
            Shared {
                cp,
                _rt: rt,
                _sched: sched,
            }
        })
        .join()
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_annotation_is_checked_through_the_real_api_server() {
    let s = shared();
    let client = s.cp.client().await.unwrap();
    let ns = s.cp.namespace("webhook").await.unwrap();
    let pool = format!("{ns}-pool");
    // A pool with one simulated node, a partition template for its model, a profile.
    let tpl: tf_pool_api::SchedulingConfigTemplate = serde_json::from_value(json!({
        "apiVersion": "tensor-fusion.ai/v1", "kind": "SchedulingConfigTemplate",
        "metadata": {"name": format!("{ns}-tpl")},
        "spec": {"partitionTemplates": {MODEL: "1g.10gb"}},
    }))
    .unwrap();
    Api::<tf_pool_api::SchedulingConfigTemplate>::all(client.clone())
        .create(&PostParams::default(), &tpl)
        .await
        .unwrap();
    create_pool(
        &client,
        &pool,
        json!({"schedulingConfigTemplate": format!("{ns}-tpl")}),
    )
    .await;
    let _agents = start_agents(&client, &format!("{ns}-n"), &pool, 1, 1);
    let profile: tf_pool_api::WorkloadProfile = serde_json::from_value(json!({
        "apiVersion": "tensor-fusion.ai/v1", "kind": "WorkloadProfile", "metadata": {"name": "small"},
        "spec": {"poolName": pool, "resources": {"requests": {"tflops": "5", "vram": "1Gi"},
                 "limits": {"tflops": "10", "vram": "2Gi"}}, "qos": "low"},
    }))
    .unwrap();
    Api::<tf_pool_api::WorkloadProfile>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &profile)
        .await
        .unwrap();
    wait_webhook(&client, &ns).await;
    // The model must be known to the webhook's view of the pool.
    wait(Duration::from_secs(30), "the GPU registered", || {
        let client = client.clone();
        async move {
            let gpus: Api<tf_pool_api::GPU> = Api::all(client);
            let l = gpus.list(&ListParams::default()).await.ok()?;
            l.items.iter().any(|g| g.spec.model == MODEL).then_some(())
        }
    })
    .await
    .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // (annotation, good value, bad value, what the refusal says)
    let cases: &[(&str, &str, &str, &str)] = &[
        (ann::TFLOPS_REQUEST, "10", "ten", "not a quantity"),
        (ann::TFLOPS_LIMIT, "20", "5", "below the request"),
        (ann::VRAM_REQUEST, "4Gi", "4Gx", "not a quantity"),
        (ann::VRAM_LIMIT, "8Gi", "1Gi", "below the request"),
        (
            ann::COMPUTE_PERCENT_REQUEST,
            "25",
            "250",
            "percent from 1 to 100",
        ),
        (ann::COMPUTE_PERCENT_LIMIT, "50", "10", "below the request"),
        (ann::GPU_COUNT, "1", "0", "GPU count"),
        (ann::GPU_MODEL, MODEL, "A100-NOPE", "has no"),
        (ann::VENDOR, "nvidia", "nvidea", "not a vendor"),
        (ann::QOS, "high", "urgent", "not a QoS level"),
        (ann::GPU_POOL, "", "no-such-pool", "no GPUPool"),
        (ann::IS_LOCAL_GPU, "false", "maybe", "not a boolean"),
        (ann::ISOLATION, "hard", "strict", "not an isolation mode"),
        (
            ann::WORKLOAD_PROFILE,
            "small",
            "missing",
            "no WorkloadProfile",
        ),
        (
            ann::INJECT_CONTAINER,
            "app",
            "sidecar",
            "not containers of the Pod",
        ),
        (ann::DEDICATED_GPU, "true", "yes", "not a boolean"),
        (ann::SIDECAR_WORKER, "true", "1", "not a boolean"),
        (ann::GANG_ENABLED, "true", "on", "not a boolean"),
        (ann::GANG_MIN_MEMBERS, "2", "-1", "positive whole number"),
        (ann::GANG_TIMEOUT, "30s", "30 seconds", "not a duration"),
    ];
    assert_eq!(cases.len(), ann::ALL.len(), "every annotation has a case");
    let never = PostParams::default();
    for (i, (key, good, bad, says)) in cases.iter().enumerate() {
        assert!(ann::ALL.contains(key));
        let base = |key: &str, value: &str| {
            let mut a = serde_json::Map::new();
            a.insert(ann::GPU_POOL.into(), json!(pool));
            if !key.contains("compute-percent") {
                a.insert(ann::TFLOPS_REQUEST.into(), json!("10"));
            }
            if key == ann::COMPUTE_PERCENT_LIMIT {
                a.insert(ann::COMPUTE_PERCENT_REQUEST.into(), json!("25"));
            }
            if key != ann::VRAM_REQUEST {
                a.insert(ann::VRAM_REQUEST.into(), json!("4Gi"));
            }
            if key == ann::WORKLOAD_PROFILE {
                a.remove(ann::GPU_POOL);
                a.remove(ann::TFLOPS_REQUEST);
                a.remove(ann::VRAM_REQUEST);
            }
            if !value.is_empty() {
                a.insert(key.to_string(), json!(value));
            }
            serde_json::Value::Object(a)
        };
        // Pods that must stay unscheduled: no scheduler serves this name.
        let mut p = gpu_pod(&format!("good-{i}"), base(key, good));
        p.spec.as_mut().unwrap().scheduler_name = Some("nobody".into());
        let created = pods
            .create(&never, &p)
            .await
            .unwrap_or_else(|e| panic!("{key}={good:?} must be accepted: {e}"));
        let fins = created.metadata.finalizers.clone().unwrap_or_default();
        assert!(
            fins.contains(&ann::POD_FINALIZER.to_string()),
            "{key}: finalizer"
        );
        let anns = created.metadata.annotations.clone().unwrap();
        assert_eq!(anns[ann::WORKLOAD], format!("good-{i}"));
        let limits = created.spec.as_ref().unwrap().containers[0]
            .resources
            .clone()
            .unwrap_or_default()
            .limits
            .unwrap_or_default();
        let remote = (*key == ann::ISOLATION && *good == "hard") || *key == ann::IS_LOCAL_GPU;
        assert_eq!(
            limits.contains_key(ann::GPU_RESOURCE),
            !remote,
            "{key}: the GPU resource (none for a remote client: its worker holds the GPUs)"
        );
        let env: Vec<String> = created.spec.as_ref().unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.name)
            .collect();
        match *key {
            k if k == ann::ISOLATION || k == ann::IS_LOCAL_GPU => {
                assert!(
                    env.contains(&"TF_REMOTE".to_string()),
                    "{key}: the stub {env:?}"
                );
                assert!(anns.contains_key(ann::CONNECTION));
            }
            _ => assert!(
                env.contains(&"LD_PRELOAD".to_string()),
                "{key}: the limiter {env:?}"
            ),
        }

        let mut p = gpu_pod(&format!("bad-{i}"), base(key, bad));
        p.spec.as_mut().unwrap().scheduler_name = Some("nobody".into());
        let err = pods
            .create(&never, &p)
            .await
            .expect_err(&format!("{key}={bad:?} must be refused"));
        let msg = err.to_string();
        assert!(
            msg.contains(key),
            "{key}={bad:?}: the message names the annotation: {msg}"
        );
        assert!(msg.contains(says), "{key}={bad:?}: {msg}");
        assert!(
            msg.contains("fix:"),
            "{key}={bad:?}: the message says the fix: {msg}"
        );
    }

    // Partitioned isolation asks for the pool's partition template for the model.
    let mut p = gpu_pod(
        "partitioned",
        json!({ann::GPU_POOL: pool, ann::ISOLATION: "partitioned", ann::GPU_MODEL: MODEL, ann::VRAM_REQUEST: "10Gi"}),
    );
    p.spec.as_mut().unwrap().scheduler_name = Some("nobody".into());
    let created = pods.create(&never, &p).await.unwrap();
    assert_eq!(
        created.metadata.annotations.unwrap()[ann::PARTITION_TEMPLATE],
        "1g.10gb"
    );

    // HAMi's Pods: nvidia.com/gpu with gpumem and gpucores, no label.
    let hami = |name: &str, cores: &str| -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": {ann::GPU_POOL: pool}},
            "spec": {"schedulerName": "nobody", "containers": [{"name": "cuda", "image": "nvidia/cuda",
                "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4096", "nvidia.com/gpucores": cores}}}]},
        }))
        .unwrap()
    };
    let created = pods.create(&never, &hami("hami-good", "30")).await.unwrap();
    let labels = created.metadata.labels.clone().unwrap();
    assert_eq!(labels[ann::ENABLED_LABEL], "true");
    let limits = created.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .limits
        .unwrap();
    assert!(
        !limits.contains_key("nvidia.com/gpu"),
        "HAMi's resource is replaced"
    );
    assert_eq!(limits[ann::GPU_RESOURCE].0, "1");
    let err = pods
        .create(&never, &hami("hami-bad", "300"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nvidia.com/gpucores"), "{err}");

    // Unlabelled Pods without GPUs are left alone.
    let plain: Pod = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .unwrap();
    let created = pods.create(&never, &plain).await.unwrap();
    assert!(created.metadata.finalizers.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_placed_by_kube_scheduler_and_the_extender() {
    let s = shared();
    let client = s.cp.client().await.unwrap();
    let ns = s.cp.namespace("sched").await.unwrap();
    let pool = format!("{ns}-pool");
    create_pool(&client, &pool, json!({})).await;
    // 3 nodes x 2 H100 (989.4 TFLOPS each): 2 Pods of 400 TFLOPS per GPU, 12 in all.
    let _agents = start_agents(&client, &format!("{ns}-n"), &pool, 3, 2);
    wait_pool_ready(&client, &pool, 6).await;
    wait_webhook(&client, &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for i in 0..13 {
        let p = gpu_pod(
            &format!("p{i}"),
            json!({ann::GPU_POOL: pool, ann::TFLOPS_REQUEST: "400", ann::VRAM_REQUEST: "10Gi"}),
        );
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let running = wait(Duration::from_secs(120), "12 Pods Running", || {
        let pods = pods.clone();
        async move {
            let l = pods.list(&ListParams::default()).await.ok()?;
            let running: Vec<Pod> = l
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            (running.len() >= 12).then_some(running)
        }
    })
    .await
    .unwrap();
    assert_eq!(running.len(), 12, "exactly what fits runs");
    for p in &running {
        let a = p.metadata.annotations.as_ref().unwrap();
        let ids = &a[ann::GPU_IDS];
        assert!(ids.starts_with("GPU-"), "{ids}");
        let pa: tf_pool_api::PodAllocation = serde_json::from_str(&a[ann::ALLOCATION]).unwrap();
        assert_eq!(Some(&pa.node), p.spec.as_ref().unwrap().node_name.as_ref());
        assert_eq!(pa.tflops_milli, vec![400_000]);
        assert_eq!(&pa.uuids.join(","), ids);
    }
    assert!(assert_no_gpu_over_allocated(&client).await >= 6);
    // The 13th (whichever it is) fits nowhere and stays unbound.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unbound: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        unbound.len(),
        1,
        "exactly one Pod must stay unbound: {unbound:?}"
    );
    // The pool's status counts what is held.
    let pools: Api<GPUPool> = Api::all(client.clone());
    wait(
        Duration::from_secs(30),
        "the pool status to count 12 allocations",
        || {
            let pools = pools.clone();
            let pool = pool.clone();
            async move { (pools.get(&pool).await.ok()?.status?.allocations == 12).then_some(()) }
        },
    )
    .await
    .unwrap();

    // Deleting them gives everything back.
    delete_pods_and_wait_for_a_full_pool(&pods, &pools, &pool, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_workload_gets_a_worker_a_service_and_a_connection() {
    let s = shared();
    let client = s.cp.client().await.unwrap();
    let ns = s.cp.namespace("remote").await.unwrap();
    let pool = format!("{ns}-pool");
    create_pool(&client, &pool, json!({})).await;
    let _agents = start_agents(&client, &format!("{ns}-n"), &pool, 2, 1);
    wait_pool_ready(&client, &pool, 2).await;
    wait_webhook(&client, &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut p = gpu_pod(
        "client",
        json!({ann::GPU_POOL: pool, ann::ISOLATION: "hard", ann::TFLOPS_REQUEST: "100", ann::VRAM_REQUEST: "4Gi"}),
    );
    // Keep the client on this test's simulated nodes (other tests' nodes have no agent left).
    p.spec.as_mut().unwrap().node_selector =
        Some([("tensor-fusion.ai/pool".to_string(), pool.clone())].into());
    pods.create(&PostParams::default(), &p).await.unwrap();

    // The worker holds the GPU, placed by the extender; the client holds none.
    let worker = wait(
        Duration::from_secs(90),
        "the worker Running on a GPU",
        || {
            let pods = pods.clone();
            async move {
                let w = pods.get("client-worker").await.ok()?;
                let running = w.status.as_ref()?.phase.as_deref() == Some("Running");
                (running && w.metadata.annotations.as_ref()?.contains_key(ann::GPU_IDS))
                    .then_some(w)
            }
        },
    )
    .await
    .unwrap();
    let args = worker.spec.unwrap().containers[0].args.clone().unwrap();
    assert_eq!(args[0], "worker");
    assert!(args.contains(&"--token-file".to_string()), "{args:?}");
    let c = wait(Duration::from_secs(60), "the client Running", || {
        let pods = pods.clone();
        async move {
            let c = pods.get("client").await.ok()?;
            (c.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(c)
        }
    })
    .await
    .unwrap();
    assert!(
        !c.metadata
            .annotations
            .unwrap()
            .contains_key(ann::ALLOCATION),
        "a remote client holds no GPUs"
    );
    let conns: Api<tf_pool_api::TensorFusionConnection> = Api::namespaced(client.clone(), &ns);
    let conn = wait(Duration::from_secs(30), "the connection Running", || {
        let conns = conns.clone();
        async move {
            let c = conns.get("client-connection").await.ok()?;
            (c.status.as_ref()?.phase == tf_pool_api::Phase::Running).then_some(c)
        }
    })
    .await
    .unwrap();
    let st = conn.status.unwrap();
    assert_eq!(st.worker_name, "client-worker");
    assert_eq!(
        st.connection_url,
        format!("tcp://client-worker.{ns}.svc:7070")
    );
    assert_eq!(conn.spec.client_pod, "client");
    let wls: Api<tf_pool_api::TensorFusionWorkload> = Api::namespaced(client.clone(), &ns);
    let wl = wls.get("client").await.unwrap();
    assert_eq!(
        wl.spec.profile.isolation,
        Some(tf_pool_api::Isolation::Hard)
    );
    let wst = wl.status.unwrap();
    assert_eq!(
        (wst.pods, wst.workers.clone()),
        (1, vec!["client-worker".to_string()])
    );
    let svc: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns);
    assert!(svc.get("client-worker").await.is_ok());
    let sec: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    assert!(sec.get("client-worker-token").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_node_agent_makes_its_node_unknown_and_it_takes_nothing_new() {
    let s = shared();
    let client = s.cp.client().await.unwrap();
    let ns = s.cp.namespace("silent").await.unwrap();
    let pool = format!("{ns}-pool");
    create_pool(&client, &pool, json!({})).await;
    let mut agents = start_agents(&client, &format!("{ns}-n"), &pool, 2, 1);
    wait_pool_ready(&client, &pool, 2).await;
    wait_webhook(&client, &ns).await;
    // Node 0's agent stops reporting.
    drop(agents.remove(0));
    let nodes: Api<tf_pool_api::GPUNode> = Api::all(client.clone());
    let silent = format!("{ns}-n-0");
    let n = wait(Duration::from_secs(60), "the silent node Unknown", || {
        let nodes = nodes.clone();
        let silent = silent.clone();
        async move {
            let n = nodes.get(&silent).await.ok()?;
            (n.status.as_ref()?.phase == tf_pool_api::Phase::Unknown).then_some(n)
        }
    })
    .await
    .unwrap();
    let cond = &n.status.unwrap().conditions[0];
    assert_eq!(
        (cond.type_.as_str(), cond.status.as_str()),
        ("Ready", "False")
    );
    let live = nodes.get(&format!("{ns}-n-1")).await.unwrap();
    assert_eq!(live.status.unwrap().phase, tf_pool_api::Phase::Running);
    // Two Pods of 600 TFLOPS: one fits the live node's GPU, none goes to the silent node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for i in 0..2 {
        let p = gpu_pod(
            &format!("p{i}"),
            json!({ann::GPU_POOL: pool, ann::TFLOPS_REQUEST: "600", ann::VRAM_REQUEST: "1Gi"}),
        );
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let bound = wait(Duration::from_secs(60), "one Pod bound", || {
        let pods = pods.clone();
        async move {
            let l = pods.list(&ListParams::default()).await.ok()?;
            let b: Vec<String> = l
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            (!b.is_empty()).then_some(b)
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let l = pods.list(&ListParams::default()).await.unwrap();
    let bound_now: Vec<String> = l
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(bound_now, bound, "only one Pod fits the live node");
    assert_eq!(bound, vec![format!("{ns}-n-1")]);
    let pools: Api<GPUPool> = Api::all(client.clone());
    wait(
        Duration::from_secs(30),
        "the pool to count one ready node",
        || {
            let pools = pools.clone();
            let pool = pool.clone();
            async move { (pools.get(&pool).await.ok()?.status?.ready_nodes == 1).then_some(()) }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_quota_holds_pods_back_and_reports_its_use() {
    let s = shared();
    let client = s.cp.client().await.unwrap();
    let ns = s.cp.namespace("quota").await.unwrap();
    let pool = format!("{ns}-pool");
    create_pool(&client, &pool, json!({})).await;
    let _agents = start_agents(&client, &format!("{ns}-n"), &pool, 1, 2);
    wait_pool_ready(&client, &pool, 2).await;
    wait_webhook(&client, &ns).await;
    let quotas: Api<tf_pool_api::GPUResourceQuota> = Api::namespaced(client.clone(), &ns);
    let q: tf_pool_api::GPUResourceQuota = serde_json::from_value(json!({
        "apiVersion": "tensor-fusion.ai/v1", "kind": "GPUResourceQuota", "metadata": {"name": "gpus"},
        "spec": {"total": {"tflops": "500"}}}))
    .unwrap();
    quotas.create(&PostParams::default(), &q).await.unwrap();
    // The quota is in the engine once its status is written.
    wait(Duration::from_secs(30), "the quota's status", || {
        let quotas = quotas.clone();
        async move { quotas.get("gpus").await.ok()?.status.map(|_| ()) }
    })
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for i in 0..2 {
        let p = gpu_pod(
            &format!("p{i}"),
            json!({ann::GPU_POOL: pool, ann::TFLOPS_REQUEST: "400", ann::VRAM_REQUEST: "1Gi"}),
        );
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    // Both fit the GPUs; the quota lets one run.
    wait(Duration::from_secs(60), "one Pod bound", || {
        let pods = pods.clone();
        async move {
            let l = pods.list(&ListParams::default()).await.ok()?;
            l.items
                .iter()
                .any(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
                .then_some(())
        }
    })
    .await
    .unwrap();
    let q = wait(Duration::from_secs(30), "the quota's use", || {
        let quotas = quotas.clone();
        async move {
            let q = quotas.get("gpus").await.ok()?;
            (q.status.as_ref()?.used.tflops.as_deref() == Some("400")).then_some(q)
        }
    })
    .await
    .unwrap();
    assert_eq!(q.status.unwrap().used.gpus, Some(1));
    // The other is held back by the quota, with the reason in its scheduling condition.
    let held = wait(Duration::from_secs(60), "the other Pod's reason", || {
        let pods = pods.clone();
        async move {
            let l = pods.list(&ListParams::default()).await.ok()?;
            l.items.into_iter().find(|p| {
                p.spec.as_ref().is_some_and(|s| s.node_name.is_none())
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| {
                                c.type_ == "PodScheduled"
                                    && c.message
                                        .as_deref()
                                        .is_some_and(|m| m.contains("GPUResourceQuota"))
                            })
                        })
            })
        }
    })
    .await
    .unwrap();
    let bound = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        .count();
    assert_eq!(bound, 1, "{:?} must wait", held.metadata.name);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gang_waits_for_its_minimum_members() {
    let s = shared();
    let client = s.cp.client().await.unwrap();
    let ns = s.cp.namespace("gang").await.unwrap();
    let pool = format!("{ns}-pool");
    create_pool(&client, &pool, json!({})).await;
    let _agents = start_agents(&client, &format!("{ns}-n"), &pool, 1, 2);
    wait_pool_ready(&client, &pool, 2).await;
    wait_webhook(&client, &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Members of one Job (the gang is their workload: the controller owner's name).
    let member = |i: u32| {
        let mut p = gpu_pod(
            &format!("train-{i}"),
            json!({ann::GPU_POOL: pool, ann::TFLOPS_REQUEST: "300", ann::VRAM_REQUEST: "1Gi",
                   ann::GANG_ENABLED: "true", ann::GANG_MIN_MEMBERS: "3", ann::GANG_TIMEOUT: "10m"}),
        );
        p.metadata.owner_references = Some(vec![
            serde_json::from_value(
                json!({"apiVersion": "batch/v1", "kind": "Job", "name": "train",
                "uid": "00000000-0000-0000-0000-000000000001", "controller": true}),
            )
            .unwrap(),
        ]);
        p
    };
    for i in 0..2 {
        pods.create(&PostParams::default(), &member(i))
            .await
            .unwrap();
    }
    // Two of three: held, with the reason.
    wait(
        Duration::from_secs(60),
        "the gang's reason on a member",
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("train-0").await.ok()?;
                let c = p.status?.conditions?;
                c.iter()
                    .any(|c| {
                        c.type_ == "PodScheduled"
                            && c.message
                                .as_deref()
                                .is_some_and(|m| m.contains("gang train: 2 of 3"))
                    })
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();
    let bound = |l: Vec<Pod>| {
        l.iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .count()
    };
    assert_eq!(
        bound(pods.list(&ListParams::default()).await.unwrap().items),
        0
    );
    // The third arrives: all three are placed.
    pods.create(&PostParams::default(), &member(2))
        .await
        .unwrap();
    wait(Duration::from_secs(120), "the whole gang Running", || {
        let pods = pods.clone();
        async move {
            let l = pods.list(&ListParams::default()).await.ok()?.items;
            let running = l
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == 3).then_some(())
        }
    })
    .await
    .unwrap();
}
