//! Everything an install needs, rendered from [`Values`]: the CRDs, the namespace, RBAC with
//! least privilege (one identity for the operator, one for the node agent), the operator's
//! Deployment and Service, the node agent's DaemonSet, the webhook configurations (their CA is
//! written by the operator at start), and the scheduler's extender configuration (a ConfigMap
//! for the cluster's kube-scheduler; the operator publishes its CA in a ConfigMap to mount).
//! `deploy/` holds the default rendering with a kustomization.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use tf_pool_api::annotations as ann;

/// The settings of an install (`tensor-fusion manifests --values FILE`, YAML; every field
/// optional).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    /// Namespace of the operator and the node agents.
    pub namespace: String,
    /// Image with the `tensor-fusion` binary and its libraries.
    pub image: String,
    /// Operator replicas (one leads).
    pub operator_replicas: u32,
    /// The HTTPS port of the webhook and the extender.
    pub port: u16,
    /// The pool node agents join.
    pub pool: String,
    /// Nodes the node agent runs on.
    pub node_selector: BTreeMap<String, String>,
    /// Webhook failure policy (`Fail` or `Ignore`).
    pub failure_policy: String,
}

impl Default for Values {
    fn default() -> Self {
        Values {
            namespace: "tensor-fusion-system".into(),
            image: "ghcr.io/tensor-fusion/tensor-fusion:latest".into(),
            operator_replicas: 2,
            port: 9443,
            pool: "default".into(),
            node_selector: BTreeMap::from([("tensor-fusion.ai/gpu-node".into(), "true".into())]),
            failure_policy: "Fail".into(),
        }
    }
}

/// Name of the operator's Deployment, Service, ServiceAccount.
pub const OPERATOR: &str = "tensor-fusion-operator";
/// Name of the node agent's DaemonSet and ServiceAccount.
pub const NODE_AGENT: &str = "tensor-fusion-node-agent";
/// The webhook configurations' name.
pub const WEBHOOK: &str = "tensor-fusion";
/// The ConfigMap the operator publishes its CA in (key `ca.crt`).
pub const CA_CONFIGMAP: &str = "tensor-fusion-operator-ca";

fn yaml_docs(objs: &[Value]) -> String {
    objs.iter()
        .map(|o| serde_yaml::to_string(o).expect("a manifest serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn rbac(v: &Values) -> Vec<Value> {
    let ns = &v.namespace;
    let tf = "tensor-fusion.ai";
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR, "namespace": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NODE_AGENT, "namespace": ns}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": OPERATOR},
        "rules": [
            // Pods: read all, write the reservation annotations and the finalizer, bind.
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]},
            // Remote workloads: the worker Pod, its Service and token Secret (create only).
            {"apiGroups": [""], "resources": ["pods", "services", "secrets"], "verbs": ["create"]},
            {"apiGroups": [tf], "resources": ["gpupools", "gpunodes", "gpus", "schedulingconfigtemplates",
                "workloadprofiles", "tensorfusionclusters", "gpuresourcequotas"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [tf], "resources": ["gpupools/status", "gpunodes/status", "gpus/status",
                "tensorfusionclusters/status", "gpuresourcequotas/status"], "verbs": ["patch", "update"]},
            {"apiGroups": [tf], "resources": ["tensorfusionworkloads", "tensorfusionconnections"],
                "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
            {"apiGroups": [tf], "resources": ["tensorfusionworkloads/status", "tensorfusionconnections/status"],
                "verbs": ["patch", "update"]},
            // Its own webhook configurations only: the CA bundle.
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations",
                "validatingwebhookconfigurations"], "resourceNames": [WEBHOOK], "verbs": ["get", "patch"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": OPERATOR},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": ns}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": OPERATOR, "namespace": ns},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [CA_CONFIGMAP], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": OPERATOR, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": ns}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": NODE_AGENT},
        "rules": [
            // Its node's GPUNode and GPUs (server-side apply) and their status.
            {"apiGroups": [tf], "resources": ["gpunodes", "gpus"], "verbs": ["get", "create", "patch"]},
            {"apiGroups": [tf], "resources": ["gpunodes/status", "gpus/status"], "verbs": ["patch"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": NODE_AGENT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_AGENT},
            "subjects": [{"kind": "ServiceAccount", "name": NODE_AGENT, "namespace": ns}]}),
    ]
}

fn operator(v: &Values) -> Vec<Value> {
    let ns = &v.namespace;
    let labels = json!({"app.kubernetes.io/name": OPERATOR});
    vec![
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": OPERATOR, "namespace": ns, "labels": labels},
            "spec": {"replicas": v.operator_replicas, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {
                    "serviceAccountName": OPERATOR,
                    "containers": [{"name": "operator", "image": v.image,
                        "args": ["operator", "--namespace", ns, "--listen", format!("0.0.0.0:{}", v.port)],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "https", "containerPort": v.port}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": v.port, "scheme": "HTTPS"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": v.port, "scheme": "HTTPS"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}}}]}}}}),
        // Ready only while leading: the Service reaches the leader (the extender's state).
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": OPERATOR, "namespace": ns},
            "spec": {"selector": labels, "ports": [{"name": "https", "port": v.port, "targetPort": v.port}]}}),
    ]
}

fn node_agent(v: &Values) -> Vec<Value> {
    let ns = &v.namespace;
    let labels = json!({"app.kubernetes.io/name": NODE_AGENT});
    vec![
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": NODE_AGENT, "namespace": ns, "labels": labels},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "serviceAccountName": NODE_AGENT, "nodeSelector": v.node_selector,
            "containers": [{"name": "node-agent", "image": v.image,
                "args": ["node-agent", "--node", "$(NODE_NAME)", "--pool", v.pool],
                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "securityContext": {"privileged": true},
                "volumeMounts": [{"name": "run", "mountPath": "/run/tensor-fusion"}, {"name": "dev", "mountPath": "/dev"}]}],
            "volumes": [{"name": "run", "hostPath": {"path": "/run/tensor-fusion", "type": "DirectoryOrCreate"}},
                        {"name": "dev", "hostPath": {"path": "/dev"}}]}}}}),
    ]
}

fn webhooks(v: &Values) -> Vec<Value> {
    let hook = |path: &str, ops: Value| {
        json!({"name": format!("{}.pods.tensor-fusion.ai", &path[1..]),
            "clientConfig": {"service": {"name": OPERATOR, "namespace": v.namespace, "path": path, "port": v.port}},
            "rules": [{"operations": ops, "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "failurePolicy": v.failure_policy, "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["kube-system", v.namespace]}]}})
    };
    vec![
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK}, "webhooks": [hook("/mutate", json!(["CREATE"]))]}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK}, "webhooks": [hook("/validate", json!(["CREATE", "UPDATE"]))]}),
    ]
}

/// The KubeSchedulerConfiguration that makes the cluster's kube-scheduler call the extender.
pub fn scheduler_config(v: &Values) -> String {
    format!(
        "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
extenders:
- urlPrefix: https://{OPERATOR}.{ns}.svc:{port}/scheduler
  filterVerb: filter
  prioritizeVerb: prioritize
  bindVerb: bind
  weight: 5
  enableHTTPS: true
  nodeCacheCapable: true
  httpTimeout: 30s
  # The operator publishes its CA in the ConfigMap {CA_CONFIGMAP} (key ca.crt): mount it here.
  tlsConfig:
    caFile: /etc/tensor-fusion/ca.crt
  managedResources:
  - name: {res}
    ignoredByScheduler: true
",
        ns = v.namespace,
        port = v.port,
        res = ann::GPU_RESOURCE
    )
}

/// The rendered files, `(path under deploy/, contents)`, CRDs under `crds/`, with a
/// kustomization listing them all.
pub fn render(v: &Values) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = tf_pool_api::crds_yaml()
        .into_iter()
        .map(|(name, yaml)| (format!("crds/{name}"), yaml))
        .collect();
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": v.namespace}});
    files.push(("namespace.yaml".into(), yaml_docs(&[ns])));
    files.push(("rbac.yaml".into(), yaml_docs(&rbac(v))));
    files.push(("operator.yaml".into(), yaml_docs(&operator(v))));
    files.push(("node-agent.yaml".into(), yaml_docs(&node_agent(v))));
    files.push(("webhook.yaml".into(), yaml_docs(&webhooks(v))));
    let sched = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "tensor-fusion-scheduler-config", "namespace": v.namespace},
        "data": {"scheduler-config.yaml": scheduler_config(v)}});
    files.push(("scheduler.yaml".into(), yaml_docs(&[sched])));
    let resources: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
    let kustomization = json!({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": resources});
    files.push((
        "kustomization.yaml".into(),
        format!(
            "# Rendered by `tensor-fusion manifests`; regenerate with `tensor-fusion manifests --out deploy`.\n{}",
            serde_yaml::to_string(&kustomization).expect("serializes")
        ),
    ));
    files
}

/// Parses a values file (YAML); unknown keys are refused.
pub fn parse_values(text: &str) -> Result<Values, serde_yaml::Error> {
    if text.trim().is_empty() {
        return Ok(Values::default());
    }
    serde_yaml::from_str(text)
}
