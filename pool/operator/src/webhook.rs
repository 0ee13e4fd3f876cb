//! The admission webhook (admission v1): the mutating hook turns an annotated Pod into a
//! tensor-fusion workload (finalizer, workload name, the GPU extended resource, the injection
//! of its isolation mode); the validating hook refuses what cannot be placed, naming the
//! annotation and the fix. Side-effect free: objects are created by the controllers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::{Value, json};
use tf_pool_api::annotations as ann;
use tf_pool_api::{Isolation, WorkloadProfileSpec};

use crate::cache::Cache;
use crate::workload::{self, GpuRequest, Refusal, refusals_message};

/// What the mutating hook injects.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// Image holding the limiter, the client stub and the `tensor-fusion` binary.
    pub image: String,
    /// Where the node daemon keeps per-Pod vGPU state on the host (mounted read-only).
    pub host_run_dir: String,
    /// Port a remote worker listens on.
    pub worker_port: u16,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: "ghcr.io/tensor-fusion/tensor-fusion:latest".into(),
            host_run_dir: "/run/tensor-fusion".into(),
            worker_port: 7070,
        }
    }
}

/// Where the init container installs tensor-fusion in the Pod (`tensor-fusion install --prefix`).
pub const LIB_DIR: &str = "/tensor-fusion";

/// Parses and checks a Pod against the cluster: the pool, the model in the pool, the profile,
/// the partition template. Returns the request and, for partitioned isolation, the template.
pub async fn check(cache: &Cache, pod: &Pod) -> Result<(GpuRequest, Option<String>), Vec<Refusal>> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let anns = pod.metadata.annotations.clone().unwrap_or_default();
    let mut refusals = Vec::new();
    let profile: Option<WorkloadProfileSpec> = match anns.get(ann::WORKLOAD_PROFILE) {
        Some(name) => match cache.profile(&ns, name).await {
            Some(p) => Some(p.spec.profile),
            None => {
                refusals.push(Refusal {
                    annotation: ann::WORKLOAD_PROFILE.into(),
                    problem: format!("no WorkloadProfile {name:?} in namespace {ns:?}"),
                    fix: "create the WorkloadProfile in the Pod's namespace or fix the name".into(),
                });
                None
            }
        },
        None => None,
    };
    let default_pool = cache.single_pool();
    let req = match workload::parse(pod, profile.as_ref(), default_pool.as_deref()) {
        Ok(r) => r,
        Err(mut e) => {
            refusals.append(&mut e);
            return Err(refusals);
        }
    };
    if !refusals.is_empty() {
        return Err(refusals);
    }
    let Some(pool) = cache.pool(&req.pool).await else {
        let known: Vec<String> = cache
            .pools
            .state()
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        return Err(vec![Refusal {
            annotation: ann::GPU_POOL.into(),
            problem: format!("no GPUPool {:?}", req.pool),
            fix: format!("name one of the pools {known:?}"),
        }]);
    };
    if let Some(model) = &req.model {
        let models = cache.pool_models(&req.pool).await;
        if !models.contains(model) {
            return Err(vec![Refusal {
                annotation: ann::GPU_MODEL.into(),
                problem: format!("pool {:?} has no {model:?} GPU", req.pool),
                fix: format!("name one of the pool's models {models:?}, or leave it out"),
            }]);
        }
    }
    let mut template = None;
    if req.isolation == Isolation::Partitioned {
        let model = req.model.clone().unwrap_or_default();
        let tpl = match &pool.spec.scheduling_config_template {
            Some(t) => cache.template(t).await,
            None => None,
        };
        match tpl.and_then(|t| t.spec.partition_templates.get(&model).cloned()) {
            Some(t) => template = Some(t),
            None => {
                return Err(vec![Refusal {
                    annotation: ann::ISOLATION.into(),
                    problem: format!(
                        "pool {:?} has no partition template for {model:?}",
                        req.pool
                    ),
                    fix:
                        "add the model to the pool's SchedulingConfigTemplate partitionTemplates, \
                          or use isolation soft"
                            .into(),
                }]);
            }
        }
    }
    Ok((req, template))
}

/// The workload a Pod belongs to: its controller owner's name, else its name (or generateName).
pub fn workload_name(pod: &Pod) -> String {
    if let Some(o) = pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|o| o.controller == Some(true)))
    {
        return o.name.clone();
    }
    pod.metadata
        .name
        .clone()
        .or_else(|| {
            pod.metadata
                .generate_name
                .clone()
                .map(|g| g.trim_end_matches('-').to_string())
        })
        .unwrap_or_else(|| "workload".into())
}

/// The Pod as the mutating hook leaves it.
pub fn mutated(pod: &Pod, req: &GpuRequest, template: Option<&str>, cfg: &InjectConfig) -> Pod {
    let mut pod = pod.clone();
    let workload = workload_name(&pod);
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(ann::ENABLED_LABEL.into(), "true".into());
    let anns = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    anns.insert(ann::WORKLOAD.into(), workload.clone());
    anns.insert(ann::GPU_POOL.into(), req.pool.clone());
    if let Some(t) = template {
        anns.insert(ann::PARTITION_TEMPLATE.into(), t.to_string());
    }
    if req.isolation == Isolation::Hard || !req.is_local {
        anns.insert(ann::CONNECTION.into(), format!("{workload}-connection"));
    }
    let fins = pod.metadata.finalizers.get_or_insert_with(Vec::new);
    if !fins.iter().any(|f| f == ann::POD_FINALIZER) {
        fins.push(ann::POD_FINALIZER.into());
    }
    let Some(spec) = pod.spec.as_mut() else {
        return pod;
    };
    // HAMi's resources become ours; the GPU count is the extended resource the extender manages.
    for c in spec.containers.iter_mut() {
        if let Some(r) = c.resources.as_mut() {
            for list in [r.limits.as_mut(), r.requests.as_mut()]
                .into_iter()
                .flatten()
            {
                list.remove(ann::hami::GPU);
                list.remove(ann::hami::GPU_MEM);
                list.remove(ann::hami::GPU_CORES);
            }
        }
    }
    // A remote client holds no GPUs (its worker does): it is placed like any Pod.
    let remote = req.isolation == Isolation::Hard || !req.is_local;
    if let Some(c) = spec.containers.first_mut().filter(|_| !remote) {
        let r = c.resources.get_or_insert_with(Default::default);
        let q = Quantity(req.gpu_count.to_string());
        r.limits
            .get_or_insert_with(BTreeMap::new)
            .insert(ann::GPU_RESOURCE.into(), q.clone());
        r.requests
            .get_or_insert_with(BTreeMap::new)
            .insert(ann::GPU_RESOURCE.into(), q);
    }
    let targets: Vec<usize> = spec
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            req.inject_containers
                .as_ref()
                .is_none_or(|n| n.contains(&c.name))
        })
        .map(|(i, _)| i)
        .collect();
    let mode = if !req.is_local {
        Isolation::Hard
    } else {
        req.isolation
    };
    let (init, env, mounts): (Option<Value>, Vec<Value>, Vec<Value>) = match mode {
        Isolation::Shared | Isolation::Partitioned => (None, Vec::new(), Vec::new()),
        Isolation::Soft => (
            Some(json!({
                "name": "tensor-fusion-limiter",
                "image": cfg.image,
                "command": ["tensor-fusion", "install", "--prefix", LIB_DIR],
                "volumeMounts": [{"name": "tensor-fusion-lib", "mountPath": LIB_DIR}],
            })),
            vec![
                json!({"name": "TF_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
                json!({"name": "TF_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
                json!({"name": "LD_PRELOAD", "value": format!("{LIB_DIR}/lib/tensor-fusion/libtf_cuda_interposer.so")}),
                json!({"name": "TF_VGPU_LIMITS",
                       "value": format!("{}/pods/$(TF_POD_NAMESPACE)_$(TF_POD_NAME)/limits", cfg.host_run_dir)}),
            ],
            vec![
                json!({"name": "tensor-fusion-lib", "mountPath": LIB_DIR, "readOnly": true}),
                json!({"name": "tensor-fusion-run", "mountPath": cfg.host_run_dir, "readOnly": true}),
            ],
        ),
        Isolation::Hard => (
            Some(json!({
                "name": "tensor-fusion-stub",
                "image": cfg.image,
                "command": ["tensor-fusion", "install", "--prefix", LIB_DIR],
                "volumeMounts": [{"name": "tensor-fusion-lib", "mountPath": LIB_DIR}],
            })),
            vec![
                json!({"name": "LD_LIBRARY_PATH", "value": format!("{LIB_DIR}/lib/tensor-fusion/remote-driver")}),
                json!({"name": "TF_REMOTE",
                       "value": format!("tcp://{workload}-worker:{}", cfg.worker_port)}),
                json!({"name": "TF_REMOTE_TOKEN_FILE", "value": "/var/run/tensor-fusion/token"}),
            ],
            vec![
                json!({"name": "tensor-fusion-lib", "mountPath": LIB_DIR, "readOnly": true}),
                json!({"name": "tensor-fusion-token", "mountPath": "/var/run/tensor-fusion", "readOnly": true}),
            ],
        ),
    };
    if let Some(init) = init {
        let inits = spec.init_containers.get_or_insert_with(Vec::new);
        inits.push(serde_json::from_value(init).expect("a valid container"));
        let vols = spec.volumes.get_or_insert_with(Vec::new);
        vols.push(
            serde_json::from_value(json!({"name": "tensor-fusion-lib", "emptyDir": {}}))
                .expect("volume"),
        );
        if mode == Isolation::Soft {
            vols.push(
                serde_json::from_value(json!({"name": "tensor-fusion-run",
                    "hostPath": {"path": cfg.host_run_dir, "type": "DirectoryOrCreate"}}))
                .expect("volume"),
            );
        } else {
            vols.push(
                serde_json::from_value(json!({"name": "tensor-fusion-token",
                    "secret": {"secretName": format!("{workload}-worker-token"), "optional": true}}))
                .expect("volume"),
            );
        }
        for &i in &targets {
            let c = &mut spec.containers[i];
            let e = c.env.get_or_insert_with(Vec::new);
            for v in &env {
                e.push(serde_json::from_value(v.clone()).expect("env"));
            }
            let m = c.volume_mounts.get_or_insert_with(Vec::new);
            for v in &mounts {
                m.push(serde_json::from_value(v.clone()).expect("mount"));
            }
        }
    }
    pod
}

/// The mutating hook.
pub async fn mutate(
    cache: &Cache,
    cfg: &InjectConfig,
    req: &AdmissionRequest<Pod>,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if req.operation != Operation::Create {
        return resp;
    }
    let Some(pod) = &req.object else { return resp };
    let mut pod = pod.clone();
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = Some(req.namespace.clone().unwrap_or_else(|| "default".into()));
    }
    if !workload::wants_gpu(&pod) {
        return resp;
    }
    match check(cache, &pod).await {
        Err(r) => resp.deny(format!("tensor-fusion: {}", refusals_message(&r))),
        Ok((gr, tpl)) => {
            let after = mutated(&pod, &gr, tpl.as_deref(), cfg);
            let (Ok(a), Ok(b)) = (serde_json::to_value(&pod), serde_json::to_value(&after)) else {
                return resp.deny("tensor-fusion: the Pod does not serialize");
            };
            let patch = json_patch::diff(&a, &b);
            match resp.clone().with_patch(patch) {
                Ok(r) => r,
                Err(e) => resp.deny(format!("tensor-fusion: {e}")),
            }
        }
    }
}

/// The validating hook: refuses Pods whose request cannot be placed as written.
pub async fn validate(cache: &Cache, req: &AdmissionRequest<Pod>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return resp;
    }
    let Some(pod) = &req.object else { return resp };
    let mut pod = pod.clone();
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = req.namespace.clone();
    }
    if !workload::wants_gpu(&pod) {
        return resp;
    }
    // A Pod being deleted, or already bound, is not re-checked (its reservation stands).
    if pod.metadata.deletion_timestamp.is_some()
        || pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
    {
        return resp;
    }
    match check(cache, &pod).await {
        Ok(_) => resp,
        Err(r) => resp.deny(format!("tensor-fusion: {}", refusals_message(&r))),
    }
}
