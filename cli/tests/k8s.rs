//! `tensor-fusion manifests`, `operator` and `node-agent` as processes, against the real
//! Kubernetes control plane (tf-test-kube): the rendered install is deploy/'s, a node agent
//! registers its node from HAL discovery (the simulated GPU), and SIGKILL of the leading
//! operator process hands the Lease to the other replica within 15 seconds.

// Test targets share the package's dev-dependencies.
#![allow(unused_crate_dependencies)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tf_test_kube::{ControlPlane, Process, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_tensor-fusion");

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn manifests_out_writes_deploy_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["manifests", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut n = 0;
    for entry in walk(dir.path()) {
        let rel = entry.strip_prefix(dir.path()).unwrap();
        let want = std::fs::read_to_string(deploy_dir().join(rel)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&entry).unwrap(),
            want,
            "{}",
            rel.display()
        );
        n += 1;
    }
    assert!(n >= 16, "{n} files");
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "replicas: 2\n").unwrap();
    let out = Command::new(BIN)
        .args(["manifests", "--values"])
        .arg(&values)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field") && err.contains("replicas"),
        "{err}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Applies the CRDs once for this binary (tests run at once; two creates would race).
fn install_crds(cp: &ControlPlane) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        cp.kubectl_ok(&["apply", "-f", deploy_dir().join("crds").to_str().unwrap()])
            .unwrap();
    });
}

fn kubectl_json(cp: &ControlPlane, args: &[&str]) -> Option<serde_json::Value> {
    let out = cp.kubectl().args(args).args(["-o", "json"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(cp: &ControlPlane, name: &str, args: &[&str]) -> Process {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("TF_LOG", "info");
    Process::start(name, cmd, &cp.dir.join(format!("{name}.log"))).unwrap()
}

#[test]
fn node_agent_and_operator_processes_on_the_real_control_plane() {
    let cp = ControlPlane::shared();
    install_crds(cp);
    wait_for(Duration::from_secs(30), "the CRDs", || {
        kubectl_json(cp, &["get", "gpunodes"]).map(|_| ())
    });
    let pool = serde_json::json!({"apiVersion": "tensor-fusion.ai/v1", "kind": "GPUPool",
        "metadata": {"name": "cli-pool"}, "spec": {}});
    let mut apply = cp.kubectl();
    apply
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped());
    let mut child = apply.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pool.to_string().as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());

    // A node agent on the simulated GPU (its own machine: a private shm folder).
    let shm = tf_test_support::scratch_dir("k8s-cli-node");
    let profile = shm.join("machine.toml");
    std::fs::write(
        &profile,
        format!(
            "shm_dir = {:?}\n[[device]]\nmodel = \"NVIDIA H100 80GB HBM3\"\nmemory = \"81559MiB\"\nsms = 132\nfp16_tflops = 989.4\n",
            shm.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "node-agent",
        "--node",
        "cli-node-0",
        "--pool",
        "cli-pool",
        "--backend",
        "fake",
        "--simulate-kubelet",
        "--heartbeat",
        "1",
    ])
    .env("KUBECONFIG", &cp.kubeconfig)
    .env("TF_FAKE_GPU_CONFIG", &profile);
    let _agent = Process::start("node-agent", cmd, &cp.dir.join("node-agent.log")).unwrap();
    let node = wait_for(Duration::from_secs(60), "the GPUNode", || {
        let n = kubectl_json(cp, &["get", "gpunode", "cli-node-0"])?;
        (n["status"]["phase"] == "Running").then_some(n)
    });
    assert_eq!(node["spec"]["pool"], "cli-pool");
    assert_eq!(node["status"]["totalGpus"], 1);
    assert_eq!(node["status"]["backend"], "fake");
    let gpu = kubectl_json(cp, &["get", "gpu", "cli-node-0-0"]).unwrap();
    assert_eq!(gpu["spec"]["model"], "NVIDIA H100 80GB HBM3");
    assert_eq!(gpu["status"]["capacity"]["tflops"], "989.4");
    // The heartbeat keeps the report time moving.
    let t0 = node["status"]["lastReportTime"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(Duration::from_secs(10), "a heartbeat", || {
        let n = kubectl_json(cp, &["get", "gpunode", "cli-node-0"])?;
        (n["status"]["lastReportTime"].as_str()? != t0).then_some(())
    });

    // Two operator replicas as processes; SIGKILL the leader.
    let lease = |cp: &ControlPlane| -> Option<String> {
        let l = kubectl_json(
            cp,
            &["get", "lease", "-n", "default", "tensor-fusion-operator"],
        )?;
        l["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let pa = free_port().to_string();
    let pb = free_port().to_string();
    let mut a = spawn(
        cp,
        "operator-a",
        &[
            "operator",
            "--namespace",
            "default",
            "--identity",
            "op-a",
            "--listen",
            &format!("127.0.0.1:{pa}"),
        ],
    );
    wait_for(Duration::from_secs(60), "op-a to lead", || {
        (lease(cp)? == "op-a").then_some(())
    });
    let _b = spawn(
        cp,
        "operator-b",
        &[
            "operator",
            "--namespace",
            "default",
            "--identity",
            "op-b",
            "--listen",
            &format!("127.0.0.1:{pb}"),
        ],
    );
    // The leader keeps the pool's status true from the agent's report.
    wait_for(Duration::from_secs(30), "the pool status", || {
        let p = kubectl_json(cp, &["get", "gpupool", "cli-pool"])?;
        (p["status"]["totalGpus"] == 1 && p["status"]["totalTflops"] == "989.4").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lease(cp).as_deref(),
        Some("op-a"),
        "op-b must not take a live lease"
    );
    a.kill();
    let t = Instant::now();
    wait_for(Duration::from_secs(30), "op-b to lead", || {
        (lease(cp)? == "op-b").then_some(())
    });
    let handover = t.elapsed();
    println!(
        "{}",
        serde_json::json!({"figure": "leader_handover_process_sigkill", "seconds": handover.as_secs_f64()})
    );
    assert!(handover < Duration::from_secs(15), "{handover:?}");
}

#[test]
fn the_node_daemon_registers_its_node_with_kube_pool() {
    let cp = ControlPlane::shared();
    install_crds(cp);
    wait_for(Duration::from_secs(30), "the CRDs", || {
        kubectl_json(cp, &["get", "gpunodes"]).map(|_| ())
    });
    let dir = tf_test_support::scratch_dir("k8s-cli-daemon");
    let profile = dir.join("machine.toml");
    std::fs::write(
        &profile,
        format!(
            "shm_dir = {:?}\n[[device]]\nmodel = \"NVIDIA H100 80GB HBM3\"\nmemory = \"81559MiB\"\nsms = 132\nfp16_tflops = 989.4\n[[device]]\nmodel = \"NVIDIA H100 80GB HBM3\"\nmemory = \"81559MiB\"\nsms = 132\nfp16_tflops = 989.4\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "node",
        "--backend",
        "fake",
        "--kube-pool",
        "daemon-pool",
        "--kube-node",
        "daemon-node-0",
    ])
    .arg("--socket")
    .arg(dir.join("node.sock"))
    .arg("--state-dir")
    .arg(dir.join("state"))
    .arg("--run-dir")
    .arg(dir.join("run"))
    .env("KUBECONFIG", &cp.kubeconfig)
    .env("TF_FAKE_GPU_CONFIG", &profile);
    let _daemon = Process::start("node-daemon", cmd, &cp.dir.join("node-daemon.log")).unwrap();
    let node = wait_for(Duration::from_secs(60), "the daemon's GPUNode", || {
        let n = kubectl_json(cp, &["get", "gpunode", "daemon-node-0"])?;
        (n["status"]["phase"] == "Running").then_some(n)
    });
    assert_eq!(node["spec"]["pool"], "daemon-pool");
    assert_eq!(node["status"]["totalGpus"], 2);
    assert_eq!(
        node["status"]["gpus"],
        serde_json::json!(["daemon-node-0-0", "daemon-node-0-1"])
    );
    // The daemon serves its own API as well.
    wait_for(Duration::from_secs(30), "the daemon's socket", || {
        dir.join("node.sock").exists().then_some(())
    });
}
