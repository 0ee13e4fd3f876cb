//! The rendered install: `deploy/` is what `tensor-fusion manifests` renders by default (a test
//! fails when it is stale), the real kubectl applies it with `apply -k deploy/` to the real API
//! server, and RBAC grants each identity what it needs and not more.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use std::path::PathBuf;

use tf_operator::manifests::{self, Values};
use tf_test_kube::ControlPlane;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

#[test]
fn deploy_holds_the_default_rendering() {
    let dir = deploy_dir();
    let files = manifests::render(&Values::default());
    if std::env::var_os("TF_UPDATE_MANIFESTS").is_some() {
        for (path, text) in &files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }
    let stale: Vec<String> = files
        .iter()
        .filter(|(path, text)| std::fs::read_to_string(dir.join(path)).ok().as_ref() != Some(text))
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        stale.is_empty(),
        "deploy/ is stale ({stale:?}); regenerate with `tensor-fusion manifests --out deploy` or \
         `TF_UPDATE_MANIFESTS=1 cargo test -p tf-operator --test manifests`"
    );
}

#[test]
fn values_change_the_rendering_and_unknown_keys_are_refused() {
    let v = manifests::parse_values("namespace: gpu-system\noperatorReplicas: 3\npool: a100s\n")
        .unwrap();
    assert_eq!(v.namespace, "gpu-system");
    let files = manifests::render(&v);
    let op = &files.iter().find(|(p, _)| p == "operator.yaml").unwrap().1;
    assert!(
        op.contains("replicas: 3") && op.contains("namespace: gpu-system"),
        "{op}"
    );
    let agent = &files
        .iter()
        .find(|(p, _)| p == "node-agent.yaml")
        .unwrap()
        .1;
    assert!(agent.contains("a100s"));
    let err = manifests::parse_values("replicas: 3\n").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn kubectl_apply_k_deploy_is_accepted_by_the_api_server() {
    let cp = ControlPlane::shared();
    let dir = deploy_dir();
    let out = cp
        .kubectl_ok(&["apply", "-k", dir.to_str().unwrap()])
        .unwrap();
    for expect in [
        "customresourcedefinition.apiextensions.k8s.io/gpupools.tensor-fusion.ai",
        "namespace/tensor-fusion-system",
        "deployment.apps/tensor-fusion-operator",
        "daemonset.apps/tensor-fusion-node-agent",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/tensor-fusion",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/tensor-fusion",
        "configmap/tensor-fusion-scheduler-config",
        "clusterrole.rbac.authorization.k8s.io/tensor-fusion-operator",
    ] {
        assert!(
            out.contains(expect),
            "kubectl apply -k said:\n{out}\nwithout {expect}"
        );
    }
    // Applying again changes nothing, and the API server has nothing to warn about.
    let out = cp
        .kubectl()
        .args(["apply", "-k", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let again = String::from_utf8_lossy(&out.stdout);
    assert!(!again.contains("created"), "{again}");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(!warnings.contains("Warning"), "{warnings}");
    // Least privilege, as the API server's authorizer sees it.
    // `what` is TYPE or TYPE/NAME; a subresource follows a `#`.
    let can = |who: &str, verb: &str, what: &str| -> bool {
        let sa = format!("system:serviceaccount:tensor-fusion-system:{who}");
        let (what, sub) = what.split_once('#').unwrap_or((what, ""));
        let mut cmd = cp.kubectl();
        cmd.args(["auth", "can-i", verb, what, "--as", &sa, "-n", "default"]);
        if !sub.is_empty() {
            cmd.arg(format!("--subresource={sub}"));
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let op = manifests::OPERATOR;
    let agent = manifests::NODE_AGENT;
    assert!(can(op, "patch", "pods"));
    assert!(can(op, "create", "pods#binding"));
    assert!(can(op, "patch", "gpupools.tensor-fusion.ai#status"));
    assert!(
        !can(op, "update", "leases.coordination.k8s.io"),
        "leases only in its namespace"
    );
    assert!(can(
        op,
        "patch",
        "mutatingwebhookconfigurations/tensor-fusion"
    ));
    assert!(
        !can(op, "delete", "pods"),
        "the operator never deletes Pods"
    );
    assert!(!can(op, "get", "secrets"), "the operator reads no Secrets");
    assert!(
        !can(op, "patch", "mutatingwebhookconfigurations/other"),
        "only its own webhook"
    );
    assert!(can(agent, "patch", "gpus.tensor-fusion.ai#status"));
    assert!(
        !can(agent, "patch", "pods"),
        "the node agent does not touch Pods"
    );
    assert!(
        !can(agent, "patch", "gpupools.tensor-fusion.ai"),
        "nor pools"
    );
}
