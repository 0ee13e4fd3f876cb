//! What the webhook and the engine read of the cluster: reflector stores of pools, nodes, GPUs
//! and scheduling templates, with a direct read on a miss (a store lags the API by a watch
//! event, and an object created just before a Pod must be seen).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tf_pool_api::{GPU, GPUNode, GPUPool, SchedulingConfigTemplate, WorkloadProfile};

use crate::AbortOnDrop;

/// Reflector stores of the cluster-scoped kinds.
#[derive(Clone)]
pub struct Cache {
    client: Client,
    /// GPUPools.
    pub pools: Store<GPUPool>,
    /// GPUNodes.
    pub nodes: Store<GPUNode>,
    /// GPUs.
    pub gpus: Store<GPU>,
    /// SchedulingConfigTemplates.
    pub templates: Store<SchedulingConfigTemplate>,
    /// The reflectors, stopped when the last clone goes.
    _tasks: Arc<Vec<AbortOnDrop<()>>>,
}

fn reflect<K>(client: &Client, tasks: &mut Vec<AbortOnDrop<()>>) -> Store<K>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .applied_objects();
    tasks.push(AbortOnDrop(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    })));
    reader
}

impl Cache {
    /// Starts the reflectors (on the current Tokio runtime) and waits until each has listed.
    pub async fn start(client: Client) -> anyhow::Result<Cache> {
        let mut tasks = Vec::new();
        let cache = Cache {
            pools: reflect(&client, &mut tasks),
            nodes: reflect(&client, &mut tasks),
            gpus: reflect(&client, &mut tasks),
            templates: reflect(&client, &mut tasks),
            client,
            _tasks: Arc::new(tasks),
        };
        cache.pools.wait_until_ready().await?;
        cache.nodes.wait_until_ready().await?;
        cache.gpus.wait_until_ready().await?;
        cache.templates.wait_until_ready().await?;
        Ok(cache)
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A GPUPool by name.
    pub async fn pool(&self, name: &str) -> Option<GPUPool> {
        if let Some(p) = self.pools.get(&ObjectRef::new(name)) {
            return Some((*p).clone());
        }
        Api::<GPUPool>::all(self.client.clone())
            .get_opt(name)
            .await
            .ok()
            .flatten()
    }

    /// The only pool, when there is exactly one.
    pub fn single_pool(&self) -> Option<String> {
        let pools = self.pools.state();
        (pools.len() == 1)
            .then(|| pools[0].metadata.name.clone())
            .flatten()
    }

    /// Models of the GPUs on the pool's nodes.
    pub async fn pool_models(&self, pool: &str) -> BTreeSet<String> {
        let nodes: BTreeSet<String> = self
            .nodes
            .state()
            .iter()
            .filter(|n| n.spec.pool == pool)
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let mut models: BTreeSet<String> = self
            .gpus
            .state()
            .iter()
            .filter(|g| nodes.contains(&g.spec.node))
            .map(|g| g.spec.model.clone())
            .collect();
        if models.is_empty() {
            // The stores may lag: read the API.
            let nodes: BTreeSet<String> = Api::<GPUNode>::all(self.client.clone())
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter(|n| n.spec.pool == pool)
                        .filter_map(|n| n.metadata.name)
                        .collect()
                })
                .unwrap_or_default();
            if let Ok(l) = Api::<GPU>::all(self.client.clone())
                .list(&Default::default())
                .await
            {
                models = l
                    .items
                    .into_iter()
                    .filter(|g| nodes.contains(&g.spec.node))
                    .map(|g| g.spec.model)
                    .collect();
            }
        }
        models
    }

    /// A SchedulingConfigTemplate by name.
    pub async fn template(&self, name: &str) -> Option<SchedulingConfigTemplate> {
        if let Some(t) = self.templates.get(&ObjectRef::new(name)) {
            return Some((*t).clone());
        }
        Api::<SchedulingConfigTemplate>::all(self.client.clone())
            .get_opt(name)
            .await
            .ok()
            .flatten()
    }

    /// A WorkloadProfile (namespaced; read directly).
    pub async fn profile(&self, namespace: &str, name: &str) -> Option<WorkloadProfile> {
        Api::<WorkloadProfile>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .ok()
            .flatten()
    }
}
