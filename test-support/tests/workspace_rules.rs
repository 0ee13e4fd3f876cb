//! The workspace's layering rules, enforced by reading `cargo metadata` rather than remembered:
//! - a crate under `vgpu/` or `pool/` never depends on a backend crate (anything under
//!   `backends/` or `fake-gpu/`), directly or through another workspace crate; they see devices
//!   only through `tf-hal`. Tests may name backends (dev-dependencies are not counted);
//! - `tf-hal` depends on no other crate of the workspace.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// A workspace package: its folder relative to the root, and the workspace packages it depends
/// on for building (normal and build dependencies).
#[derive(Debug, Clone)]
struct Package {
    folder: String,
    deps: Vec<String>,
}

fn workspace() -> BTreeMap<String, Package> {
    let root = tf_test_support::workspace_root();
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeSet<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let manifest = std::path::Path::new(p["manifest_path"].as_str().unwrap());
            let folder = manifest
                .parent()
                .unwrap()
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|n| names.contains(n))
                .collect();
            (
                p["name"].as_str().unwrap().to_string(),
                Package { folder, deps },
            )
        })
        .collect()
}

fn under(folder: &str, top: &str) -> bool {
    folder == top || folder.starts_with(&format!("{top}/"))
}

/// Every rule broken, as a sentence naming the crates and the path of dependencies.
fn violations(ws: &BTreeMap<String, Package>) -> Vec<String> {
    let backend = |name: &str| {
        ws.get(name)
            .is_some_and(|p| under(&p.folder, "backends") || under(&p.folder, "fake-gpu"))
    };
    let mut found = Vec::new();
    for (name, pkg) in ws {
        if under(&pkg.folder, "vgpu") || under(&pkg.folder, "pool") {
            // Depth-first over build dependencies, remembering the path.
            let mut stack: Vec<Vec<String>> = vec![vec![name.clone()]];
            let mut seen = BTreeSet::new();
            while let Some(path) = stack.pop() {
                let last = path.last().unwrap().clone();
                if !seen.insert(last.clone()) {
                    continue;
                }
                for d in &ws[&last].deps {
                    let mut p = path.clone();
                    p.push(d.clone());
                    if backend(d) {
                        found.push(format!(
                            "{name} ({}) depends on the backend crate {d}: {} (vgpu/ and pool/ see devices only through tf-hal)",
                            pkg.folder,
                            p.join(" -> ")
                        ));
                    } else {
                        stack.push(p);
                    }
                }
            }
        }
        if name == "tf-hal" && !pkg.deps.is_empty() {
            found.push(format!(
                "tf-hal depends on workspace crates {:?}: the HAL depends on no other crate of the workspace",
                pkg.deps
            ));
        }
    }
    found
}

#[test]
fn vgpu_and_pool_never_depend_on_a_backend() {
    let ws = workspace();
    assert!(ws.contains_key("tf-vgpu-limiter") && ws.contains_key("tf-backend-cuda"));
    let v = violations(&ws);
    assert!(v.is_empty(), "layering rules broken:\n{}", v.join("\n"));
}

#[test]
fn the_check_catches_a_backend_dependency_even_through_another_crate() {
    let mut ws = workspace();
    // What `tf-backend-cuda.workspace = true` in vgpu/limiter/Cargo.toml would do.
    ws.get_mut("tf-vgpu-limiter")
        .unwrap()
        .deps
        .push("tf-backend-cuda".into());
    let v = violations(&ws);
    assert!(
        v.iter()
            .any(|m| m.starts_with("tf-vgpu-limiter") && m.contains("tf-backend-cuda")),
        "{v:?}"
    );
    // The interposer depends on the limiter: it is caught too, with the path.
    assert!(
        v.iter().any(|m| m.starts_with("tf-cuda-interposer")
            && m.contains("tf-vgpu-limiter -> tf-backend-cuda")),
        "{v:?}"
    );
}
