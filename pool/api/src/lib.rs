//! tensor-fusion's Kubernetes API: group `tensor-fusion.ai`, version `v1`.
//!
//! Design rules:
//! - The Rust types are the source of truth. The CRD YAML under `deploy/crds/` is generated
//!   from them ([`crds`], [`crds_yaml`]); a test fails when the committed YAML is stale.
//! - Schemas say what the API server must refuse (enums, minimums, patterns), so an invalid
//!   object never reaches a controller.
//! - User-facing quantities are Kubernetes quantity strings (`"100"`, `"10.5"`, `"16Gi"`);
//!   [`quantity`] parses them exactly (milli-units and bytes, integers only).
//! - The Pod annotations are TensorFusion's (`tensor-fusion.ai/…`, [`annotations`]), so
//!   existing manifests keep working.
//! - No controller logic here: this crate is types, names and parsing only.

#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

pub mod annotations;
mod kinds;
pub mod quantity;

pub use kinds::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group.
pub const GROUP: &str = "tensor-fusion.ai";
/// The API version.
pub const VERSION: &str = "v1";

/// Every custom resource definition of the API, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        TensorFusionCluster::crd(),
        GPUPool::crd(),
        GPUNode::crd(),
        GPU::crd(),
        TensorFusionWorkload::crd(),
        TensorFusionConnection::crd(),
        WorkloadProfile::crd(),
        SchedulingConfigTemplate::crd(),
        GPUResourceQuota::crd(),
    ]
    .into_iter()
    .map(drop_unknown_formats)
    .collect()
}

/// Removes the integer formats the API server does not know (`uint32`, `uint64`, … from
/// unsigned Rust fields; their `minimum: 0` stays), which it would warn about on every apply.
fn drop_unknown_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"))
                {
                    m.remove("format");
                }
                m.values_mut().for_each(walk);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(&crd).expect("a CRD serializes");
    walk(&mut v);
    serde_json::from_value(v).expect("the same CRD, fewer formats")
}

/// The CRDs as `(file name, YAML)`, the form committed under `deploy/crds/`.
pub fn crds_yaml() -> Vec<(String, String)> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            let yaml = serde_yaml::to_string(&crd).expect("a CRD serializes");
            (name, yaml)
        })
        .collect()
}
