//! The figure: 1,000 annotated Pods across a 100-node pool (simulated nodes, 2 GPUs each) are
//! admitted by the webhook, scheduled by the real kube-scheduler through the extender, bound
//! and Running, with no GPU over its capacity; the operator is killed midway and a new replica
//! takes over (rebuilding the allocations from the cluster) and nothing is lost or
//! duplicated; deleting the Pods returns the pool to its starting capacity. Prints the
//! figures as JSON lines.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tf_pool_api::{GPUPool, annotations as ann};
use tf_test_kube::ControlPlane;

const PODS: usize = 1000;
const NODES: u32 = 100;

async fn count(pods: &Api<Pod>) -> (usize, usize) {
    let l = pods.list(&ListParams::default()).await.unwrap().items;
    let bound = l
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .count();
    let running = l
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    (bound, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_pods_on_a_hundred_nodes_across_an_operator_kill() {
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    install_crds(&client).await;
    let serving = loopback_cert();
    let port = operator_port();
    register_webhooks(&client, port).await;
    let mut op = Some(start_operator(
        &client, "scale-a", port, &serving, "default",
    ));
    let _sched = start_scheduler(cp, "kube-scheduler-scale", port, &serving);
    let ns = cp.namespace("scale").await.unwrap();
    let pool = format!("{ns}-pool");
    create_pool(&client, &pool, json!({})).await;
    let t = Instant::now();
    let _agents = start_agents(&client, &format!("{ns}-n"), &pool, NODES, 2);
    wait_pool_ready(&client, &pool, NODES * 2).await;
    let pools: Api<GPUPool> = Api::all(client.clone());
    let start_status = pools.get(&pool).await.unwrap().status.unwrap();
    assert_eq!(start_status.available_tflops, start_status.total_tflops);
    println!(
        "{}",
        json!({"figure": "nodes_registered", "nodes": NODES, "gpus": NODES * 2, "seconds": t.elapsed().as_secs_f64()})
    );
    wait_webhook(&client, &ns).await;

    // 150 TFLOPS and 8 GiB each: 6 fit on an H100 (989.4 TFLOPS), 1,200 on the pool.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = Arc::new(AtomicBool::new(false));
    let creator = {
        let pods = pods.clone();
        let pool = pool.clone();
        let created = created.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..PODS)
                .map(|i| {
                    let pods = pods.clone();
                    let p = gpu_pod(
                        &format!("w{i:04}"),
                        json!({ann::GPU_POOL: pool, ann::TFLOPS_REQUEST: "150", ann::VRAM_REQUEST: "8Gi"}),
                    );
                    async move {
                        // While the operator is down its webhook refuses: retry, as a controller would.
                        loop {
                            match pods.create(&PostParams::default(), &p).await {
                                Ok(_) => return,
                                Err(kube::Error::Api(e)) if e.code == 409 => return,
                                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                            }
                        }
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
            created.store(true, Ordering::Release);
        })
    };
    let t0 = Instant::now();
    // Kill the operator midway.
    let killed_at = wait(Duration::from_secs(600), "400 Pods bound", || {
        let pods = pods.clone();
        async move {
            let (bound, _) = count(&pods).await;
            (bound >= 400).then_some(bound)
        }
    })
    .await
    .unwrap();
    drop(op.take());
    let t_kill = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A new replica (a new identity: it waits out the dead one's lease).
    let _op2 = start_operator(&client, "scale-b", port, &serving, "default");
    assert!(
        killed_at < PODS,
        "the kill must come before every Pod is bound ({killed_at})"
    );
    wait(Duration::from_secs(900), "1,000 Pods Running", || {
        let pods = pods.clone();
        let created = created.clone();
        async move {
            let (_, running) = count(&pods).await;
            (created.load(Ordering::Acquire) && running == PODS).then_some(())
        }
    })
    .await
    .unwrap();
    creator.await.unwrap();
    let elapsed = t0.elapsed().as_secs_f64();
    // Nothing over-allocated, nothing lost or duplicated: every Pod holds one reservation, and
    // the operator's count (the pool status, from its rebuilt state) is exactly the Pods'.
    let used = assert_no_gpu_over_allocated(&client).await;
    let allocs = allocations(&client, &ns).await;
    assert_eq!(allocs.len(), PODS, "every Pod has its allocation");
    let list = pods.list(&ListParams::default()).await.unwrap().items;
    for p in &list {
        let a = p.metadata.annotations.as_ref().unwrap();
        let pa: tf_pool_api::PodAllocation = serde_json::from_str(&a[ann::ALLOCATION]).unwrap();
        assert_eq!(Some(&pa.node), p.spec.as_ref().unwrap().node_name.as_ref());
        assert_eq!(a[ann::GPU_IDS], pa.uuids.join(","));
    }
    wait(
        Duration::from_secs(60),
        "the pool status to count 1,000 allocations",
        || {
            let pools = pools.clone();
            let pool = pool.clone();
            async move {
                (pools.get(&pool).await.ok()?.status?.allocations == PODS as u32).then_some(())
            }
        },
    )
    .await
    .unwrap();
    let st = pools.get(&pool).await.unwrap().status.unwrap();
    let held = tf_pool_api::quantity::parse_milli(&st.total_tflops).unwrap()
        - tf_pool_api::quantity::parse_milli(&st.available_tflops).unwrap();
    assert_eq!(
        held,
        150_000 * PODS as u64,
        "the pool holds exactly 1,000 x 150 TFLOPS: {st:?}"
    );
    println!(
        "{}",
        json!({"figure": "thousand_pods", "pods": PODS, "nodes": NODES, "gpus_used": used,
               "operator_killed_at_bound": killed_at, "killed_after_s": t_kill.as_secs_f64(),
               "all_running_s": elapsed, "pods_per_s": PODS as f64 / elapsed})
    );

    // Deleting them returns the pool to its starting capacity.
    let t1 = Instant::now();
    // The pool started full (checked above), so back to full is back to the start.
    delete_pods_and_wait_for_a_full_pool(&pods, &pools, &pool, Duration::from_secs(600)).await;
    println!(
        "{}",
        json!({"figure": "thousand_pods_deleted", "seconds": t1.elapsed().as_secs_f64()})
    );
}
