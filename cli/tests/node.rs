//! The node daemon end to end, with real processes on a private simulated machine:
//! `tensor-fusion node`, `vgpu create|ls|rm`, `run --vgpu`, the shares it holds and lends, a
//! kill -9 and the recovery, bad input, concurrent clients, and /metrics.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tf_fake_gpu::testing::{isolated_config, to_toml};
use tf_test_support::{show, test_kernels_ptx as ptx};

const BIN: &str = env!("CARGO_BIN_EXE_tensor-fusion");

/// The tests run one at a time: the timing ones measure rates, and the others' bursts of
/// processes would disturb them (the machine has few cores).
static CPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timing() -> std::sync::MutexGuard<'static, ()> {
    CPU.lock().unwrap_or_else(|p| p.into_inner())
}

/// The C probe linked with -lcuda (vgpu/interposer-cuda/tests/c/vgpu_probe.c), built once.
fn probe() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tf_test_support::scratch_dir("node-probe");
        let lib = tf_test_support::cdylib("libcuda.so").expect("the simulated libcuda is built");
        let _ = std::os::unix::fs::symlink(&lib, dir.join("libcuda.so"));
        let inc = tf_test_support::cuda_include_dir().expect("NVIDIA headers");
        let root = tf_test_support::workspace_root();
        let exe = dir.join("probe");
        let out = Command::new("cc")
            .args(["-O1", "-Wall", "-Werror", "-o"])
            .arg(&exe)
            .arg(root.join("vgpu/interposer-cuda/tests/c/vgpu_probe.c"))
            .arg("-I")
            .arg(&inc)
            .arg("-I")
            .arg(root.join("hal/kernels"))
            .arg("-L")
            .arg(&dir)
            .args(["-lcuda", "-ldl"])
            .output()
            .unwrap();
        assert!(out.status.success(), "building the probe: {}", show(&out));
        exe
    })
}

/// `probe busy` arguments: run `seconds` after `warmup`, 1 ms kernels.
fn busy(seconds: f64, warmup: f64) -> Vec<String> {
    vec![
        "busy".into(),
        ptx().display().to_string(),
        seconds.to_string(),
        warmup.to_string(),
        "1000".into(),
    ]
}

/// A private simulated machine and a daemon on it.
struct Node {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    metrics: Option<String>,
    /// Front ends started by [`Node::run`], killed on drop (a failed assertion leaves none).
    spawned: std::sync::Mutex<Vec<u32>>,
    /// A connection to the daemon for frequent readings.
    api: std::sync::Mutex<Option<(tokio::runtime::Runtime, Client)>>,
}

type Client = tf_hypervisor::api::HypervisorClient<tonic::transport::Channel>;

impl Node {
    fn new(tag: &str) -> Node {
        Node::with_devices(tag, 1)
    }

    fn with_devices(tag: &str, devices: u32) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gpu.toml"),
            to_toml(&isolated_config(tag, devices)),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.toml"), "backend = \"fake\"\n").unwrap();
        let mut n = Node {
            dir,
            daemon: None,
            metrics: None,
            spawned: Default::default(),
            api: Default::default(),
        };
        n.start();
        n
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/node.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn db(&self) -> PathBuf {
        self.state().join("state.redb")
    }

    fn vgpu_folders(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join("run/vgpus"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn tf(&self) -> Command {
        let mut c = Command::new(BIN);
        self.env(&mut c);
        c
    }

    /// The machine's environment on `c`.
    fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.env("TF_FAKE_GPU_CONFIG", self.dir.path().join("gpu.toml"))
            .env("TF_CONFIG", self.dir.path().join("config.toml"))
            .env("TF_NODE_SOCKET", self.socket())
            .env_remove("TF_BACKEND")
            .env_remove("LD_PRELOAD")
    }

    /// Start the daemon and wait until it serves (its first stdout line).
    fn start(&mut self) {
        let mut child = self
            .tf()
            .args(["node", "--metrics", "127.0.0.1:0", "--state-dir"])
            .arg(self.state())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("serving on"), "the daemon said {line:?}");
        self.metrics = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .map(str::to_string);
        self.daemon = Some(child);
    }

    fn kill9(&mut self) {
        *self.api.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(mut c) = self.daemon.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    fn stop(&mut self) {
        *self.api.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(mut c) = self.daemon.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait().unwrap();
            assert!(status.success(), "the daemon stopped with {status}");
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.tf().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", show(&o));
        String::from_utf8(o.stdout).unwrap()
    }

    fn refused(&self, args: &[&str]) -> String {
        let o = self.tf().args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?} was accepted: {}", show(&o));
        String::from_utf8(o.stderr).unwrap()
    }

    /// `vgpu ls --json` without what moves on its own (the tick time of the busy reading).
    fn ls_stable(&self) -> Vec<serde_json::Value> {
        let mut v = self.ls();
        for x in &mut v {
            x.as_object_mut().unwrap().remove("busy_at_ns");
        }
        v
    }

    fn ls(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.ok(&["vgpu", "ls", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn devices(&self) -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&self.ok(&["vgpu", "devices", "--json"])).unwrap();
        // What the simulated programs use moves on its own; the rest must not.
        for d in v.as_array_mut().unwrap() {
            d.as_object_mut().unwrap().remove("utilization");
            d.as_object_mut().unwrap().remove("used_memory");
        }
        v
    }

    /// `run --vgpu NAME -- PROGRAM ARGS` in the background.
    fn run(&self, name: &str, program: &Path, args: &[String]) -> Child {
        let c = self
            .tf()
            .args(["run", "--vgpu", name, "--"])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.spawned.lock().unwrap().push(c.id());
        c
    }

    /// Cumulative busy ns per vGPU, from the daemon.
    /// Cumulative busy ns per vGPU with the control tick's time it was read at, from the
    /// daemon, through one kept connection (fine-grained readings without a process each).
    fn busy(&self) -> Reading {
        let mut api = self.api.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..50 {
            if api.is_none() {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                if let Ok(c) = rt.block_on(tf_hypervisor::api::connect(&self.socket())) {
                    *api = Some((rt, c));
                }
            }
            if let Some((rt, c)) = api.as_mut() {
                match rt.block_on(c.list_vgpus(tf_hypervisor::api::ListVgpusRequest {})) {
                    Ok(r) => {
                        let at = Instant::now();
                        let m = r
                            .into_inner()
                            .vgpus
                            .into_iter()
                            .map(|v| (v.name, (v.busy_at_ns, v.busy_ns)))
                            .collect();
                        return (at, m);
                    }
                    Err(_) => *api = None, // the daemon was restarted: connect again
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the daemon does not answer");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Front ends first (their programs die with them).
        drop(Kill(std::mem::take(
            &mut *self.spawned.lock().unwrap_or_else(|p| p.into_inner()),
        )));
        self.kill9();
        // Workers the daemon started (their command lines name this machine's folder).
        for pid in processes_naming(self.dir.path()) {
            // SAFETY: kill(2) on a process whose command line names this test's own
            // temporary folder: one this test's daemon started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Processes (other than this one) whose command line names `path`.
fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .filter(|&p| p != me)
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A reading of [`Node::busy`]: when it was taken, and per vGPU (tick time, busy ns).
type Reading = (Instant, std::collections::HashMap<String, (u64, u64)>);

/// Shares (percent) between two readings of [`Node::busy`], over the daemon's tick times.
fn shares(a: &Reading, b: &Reading) -> std::collections::HashMap<String, f64> {
    b.1.iter()
        .map(|(k, &(t1, v1))| {
            let (t0, v0) = a.1.get(k).copied().unwrap_or((t1, v1));
            let wall = t1.saturating_sub(t0).max(1) as f64;
            (k.clone(), v1.saturating_sub(v0) as f64 / wall * 100.0)
        })
        .collect()
}

/// The (first) child process of `pid`.
fn child_of(pid: u32) -> u32 {
    let t = Instant::now();
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                return e.file_name().to_string_lossy().parse().unwrap();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{pid} has no child");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

fn finish(c: Child) -> Output {
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    out
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Three busy vGPUs with requests 50/30/20 hold them within 3 points; when the 50 % one goes
/// idle the others grow to their limits within a second, and give it back within a second
/// when it returns.
#[test]
fn shares_hold_and_idle_capacity_is_lent_and_taken_back() {
    let _cpu = timing();
    let node = Node::new("lend");
    node.ok(&[
        "vgpu",
        "create",
        "a",
        "--compute-percent",
        "100",
        "--request-percent",
        "50",
        "--vram",
        "4GiB",
        "--qos",
        "critical",
    ]);
    node.ok(&[
        "vgpu",
        "create",
        "b",
        "--compute-percent",
        "60",
        "--request-percent",
        "30",
        "--vram",
        "4GiB",
        "--qos",
        "high",
    ]);
    node.ok(&[
        "vgpu",
        "create",
        "c",
        "--compute-percent",
        "40",
        "--request-percent",
        "20",
        "--vram",
        "4GiB",
        "--qos",
        "medium",
    ]);
    // a goes idle and comes back: its program is stopped (SIGSTOP) and continued.
    let mut a = node.run("a", probe(), &busy(120.0, 0.0));
    let mut b = node.run("b", probe(), &busy(120.0, 0.0));
    let mut c = node.run("c", probe(), &busy(120.0, 0.0));

    // 50/30/20: measured over 2 s windows once the controllers settled (up to 5 windows on a
    // loaded machine).
    std::thread::sleep(Duration::from_secs(3));
    let mut held = None;
    for _ in 0..5 {
        let r0 = node.busy();
        std::thread::sleep(Duration::from_secs(2));
        let s = shares(&r0, &node.busy());
        eprintln!(
            "all busy: a {:.1}% b {:.1}% c {:.1}%",
            s["a"], s["b"], s["c"]
        );
        if (s["a"] - 50.0).abs() <= 3.0
            && (s["b"] - 30.0).abs() <= 3.0
            && (s["c"] - 20.0).abs() <= 3.0
        {
            held = Some(s);
            break;
        }
    }
    assert!(held.is_some(), "50/30/20 was not held within 3 points");

    // Lending and taking back, timed from the switch with 300 ms windows read every 100 ms.
    let within =
        |want: &dyn Fn(&std::collections::HashMap<String, f64>) -> bool, what: &str| -> f64 {
            let start = Instant::now();
            let mut readings = std::collections::VecDeque::new();
            loop {
                readings.push_back(node.busy());
                while readings.len() > 1
                    && (readings.back().unwrap().0 - readings[0].0) > Duration::from_millis(300)
                {
                    readings.pop_front();
                }
                if readings.len() > 1
                    && (readings.back().unwrap().0 - readings[0].0) >= Duration::from_millis(250)
                {
                    let s = shares(&readings[0], readings.back().unwrap());
                    if want(&s) {
                        let t = start.elapsed().as_secs_f64();
                        eprintln!(
                            "{what} after {t:.2} s: a {:.1}% b {:.1}% c {:.1}%",
                            s["a"], s["b"], s["c"]
                        );
                        return t;
                    }
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{what}: not within 10 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
    let mut lend = Vec::new();
    let mut back = Vec::new();
    let program = child_of(a.id());
    for _ in 0..3 {
        signal(program, libc::SIGSTOP);
        lend.push(within(
            &|s| s["b"] >= 57.0 && s["c"] >= 37.0,
            "lent to b and c",
        ));
        std::thread::sleep(Duration::from_secs(1));
        signal(program, libc::SIGCONT);
        back.push(within(
            &|s| s["b"] <= 33.0 && s["c"] <= 23.0 && s["a"] >= 45.0,
            "taken back by a",
        ));
        std::thread::sleep(Duration::from_secs(1));
    }
    kill(&mut a);
    kill(&mut b);
    kill(&mut c);
    // The time includes the 300 ms the measurement window needs to fill at the new rates.
    // The median of three switches, so that one load spike on the shared machine does not
    // decide it (each time is printed).
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!("lend {lend:?} s, take back {back:?} s");
    assert!(median(&lend) <= 1.0, "lending took {lend:?} s");
    assert!(median(&back) <= 1.0, "taking back took {back:?} s");
}

/// kill -9 of the daemon: the running program keeps its share (measured by the program
/// itself); the restarted daemon recovers every vGPU and the usage in it, the front end
/// attaches again, and control resumes.
#[test]
fn a_killed_daemon_loses_nothing_and_programs_keep_their_limits() {
    let _cpu = timing();
    let mut node = Node::new("kill9");
    node.ok(&[
        "vgpu",
        "create",
        "thirty",
        "--compute-percent",
        "30",
        "--vram",
        "1GiB",
        "--qos",
        "high",
    ]);
    node.ok(&[
        "vgpu",
        "create",
        "holder",
        "--compute-percent",
        "10",
        "--vram",
        "2GiB",
        "--request-vram",
        "1GiB",
    ]);
    let before = node.ls();
    let alone: f64 = {
        let out = node
            .tf()
            .args(["run", "--"])
            .arg(probe())
            .args(busy(1.5, 0.5))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["kernels_per_s"].as_f64().unwrap()
    };
    // A program holding 256 MiB across the restart, and one busy for 4 s (after 1 s of warm-up)
    // of which the daemon is dead for the first 3.
    let mut hold = node.run(
        "holder",
        probe(),
        &["hold".into(), "256".into(), "30".into()],
    );
    let busy_run = node.run("thirty", probe(), &busy(4.0, 1.0));
    std::thread::sleep(Duration::from_millis(1000));
    node.kill9();
    std::thread::sleep(Duration::from_secs(3));
    node.start();
    let out = finish(busy_run);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let achieved = v["kernels_per_s"].as_f64().unwrap() / alone * 100.0;
    eprintln!(
        "30% vGPU across a kill -9: {achieved:.1}% ({:.0}/s of {alone:.0}/s alone)",
        v["kernels_per_s"]
    );
    assert!(
        (achieved - 30.0).abs() <= 3.0,
        "across the kill: {achieved:.1}%"
    );

    // Everything recovered: the same vGPUs, specs and region, the memory still held.
    let after = node.ls();
    let spec = |v: &[serde_json::Value]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|x| {
                serde_json::json!([
                    x["name"],
                    x["device_uuid"],
                    x["qos"],
                    x["compute_request"],
                    x["compute_limit"],
                    x["vram_request"],
                    x["vram_limit"],
                    x["region"],
                    x["created_unix_ms"]
                ])
            })
            .collect()
    };
    assert_eq!(spec(&before), spec(&after));
    let holder = |n: &Node| n.ls().into_iter().find(|v| v["name"] == "holder").unwrap();
    assert_eq!(
        holder(&node)["vram_used"],
        256u64 << 20,
        "{:?}",
        holder(&node)
    );
    // The front end of the holding program attached again.
    let t = Instant::now();
    while holder(&node)["attached_pids"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the front end did not attach again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Control resumed: a new program on the recovered vGPU is held at 30 %.
    let r = node.run("thirty", probe(), &busy(60.0, 0.0));
    let mut r = r;
    std::thread::sleep(Duration::from_secs(2));
    let mut ok = false;
    for _ in 0..5 {
        let r0 = node.busy();
        std::thread::sleep(Duration::from_secs(2));
        let s = shares(&r0, &node.busy());
        eprintln!("after the restart: {:.1}%", s["thirty"]);
        if (s["thirty"] - 30.0).abs() <= 3.0 {
            ok = true;
            break;
        }
    }
    kill(&mut r);
    assert!(ok, "the restarted daemon did not hold 30 %");
    kill(&mut hold);
    // The killed program's memory goes back: nothing leaked.
    let t = Instant::now();
    while holder(&node)["vram_used"] != 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", holder(&node));
        std::thread::sleep(Duration::from_millis(100));
    }
    node.ok(&["vgpu", "rm", "thirty"]);
    node.ok(&["vgpu", "rm", "holder"]);
    assert!(node.vgpu_folders().is_empty(), "{:?}", node.vgpu_folders());
    node.stop();
}

fn digest(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Bad input is refused with a message naming the fix, and nothing changes: the vGPU list,
/// the device's sums, the region folders and the database file itself.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let _cpu = timing();
    let mut node = Node::new("bad");
    node.ok(&[
        "vgpu",
        "create",
        "taken",
        "--compute-percent",
        "60",
        "--vram",
        "8GiB",
    ]);
    let (ls, dev, folders, db) = (
        node.ls_stable(),
        node.devices(),
        node.vgpu_folders(),
        digest(&node.db()),
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "vgpu",
                "create",
                "big",
                "--compute-percent",
                "10",
                "--vram",
                "100GiB",
            ],
            "lower it",
        ),
        (
            &[
                "vgpu",
                "create",
                "big",
                "--compute-percent",
                "150",
                "--vram",
                "1GiB",
            ],
            "(0, 100]",
        ),
        (
            &[
                "vgpu", "create", "big", "--tflops", "5000", "--vram", "1GiB",
            ],
            "lower it",
        ),
        (
            &[
                "vgpu",
                "create",
                "r",
                "--compute-percent",
                "20",
                "--request-percent",
                "30",
                "--vram",
                "1GiB",
            ],
            "lower",
        ),
        (
            &[
                "vgpu",
                "create",
                "r",
                "--compute-percent",
                "20",
                "--vram",
                "1GiB",
                "--request-vram",
                "2GiB",
            ],
            "lower the request or raise the limit",
        ),
        (
            &[
                "vgpu",
                "create",
                "taken",
                "--compute-percent",
                "10",
                "--vram",
                "1GiB",
            ],
            "choose another name",
        ),
        (
            &[
                "vgpu",
                "create",
                "neg",
                "--compute-percent",
                "10",
                "--vram",
                "-1GiB",
            ],
            "-1GiB",
        ),
        (
            &[
                "vgpu",
                "create",
                "mal",
                "--compute-percent",
                "10",
                "--vram",
                "12XB",
            ],
            "12XB",
        ),
        (
            &[
                "vgpu",
                "create",
                "mal",
                "--compute-percent",
                "ten",
                "--vram",
                "1GiB",
            ],
            "not a number",
        ),
        (
            &[
                "vgpu",
                "create",
                "dev",
                "--device",
                "7",
                "--compute-percent",
                "10",
                "--vram",
                "1GiB",
            ],
            "see `tensor-fusion devices`",
        ),
        (
            &[
                "vgpu",
                "create",
                "q",
                "--compute-percent",
                "10",
                "--vram",
                "1GiB",
                "--qos",
                "urgent",
            ],
            "use low, medium, high or critical",
        ),
        (
            &[
                "vgpu",
                "create",
                "full",
                "--compute-percent",
                "50",
                "--vram",
                "1GiB",
            ],
            "remove a vGPU",
        ),
        (
            &[
                "vgpu",
                "create",
                "bad/name",
                "--compute-percent",
                "10",
                "--vram",
                "1GiB",
            ],
            "letters, digits",
        ),
        (
            &["vgpu", "create", "nolimit", "--vram", "1GiB"],
            "--compute-percent",
        ),
        (&["vgpu", "rm", "missing"], "tensor-fusion vgpu ls"),
    ];
    for (args, fix) in cases {
        let e = node.refused(args);
        eprintln!("{args:?}: {}", e.trim());
        assert!(e.contains(fix), "{args:?}: {e:?} does not say {fix:?}");
    }
    assert_eq!(node.ls_stable(), ls);
    assert_eq!(node.devices(), dev);
    assert_eq!(node.vgpu_folders(), folders);
    assert!(digest(&node.db()) == db, "the database file changed");
    node.stop();
    // The records themselves: the one vGPU, as created.
    let records = tf_hypervisor::store::Store::open(&node.db())
        .unwrap()
        .list()
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(
        (
            r.name.as_str(),
            r.compute_limit,
            r.compute_request,
            r.vram_limit,
            r.qos.as_str()
        ),
        ("taken", 0.6, 0.6, 8u64 << 30, "medium")
    );
}

/// 100 vGPUs created and removed by 4 clients at once leave the device exactly as it was.
#[test]
fn a_hundred_vgpus_from_four_clients_leave_the_device_as_it_was() {
    let _cpu = timing();
    let node = Node::new("churn");
    let (dev, folders) = (node.devices(), node.vgpu_folders());
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..4 {
            let node = &node;
            s.spawn(move || {
                let names: Vec<String> = (0..25).map(|i| format!("c{k}-{i}")).collect();
                for n in &names {
                    node.ok(&[
                        "vgpu",
                        "create",
                        n,
                        "--compute-percent",
                        "1",
                        "--vram",
                        "256MiB",
                    ]);
                }
                for n in &names {
                    node.ok(&["vgpu", "rm", n]);
                }
            });
        }
    });
    eprintln!(
        "100 vGPUs created and removed by 4 clients in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(node.ls().is_empty());
    assert_eq!(node.devices(), dev);
    assert_eq!(node.vgpu_folders(), folders);
    // And the whole device is free again: one vGPU can take all of it.
    let total = format!("{}MiB", dev[0]["total_memory"].as_u64().unwrap() >> 20);
    node.ok(&[
        "vgpu",
        "create",
        "whole",
        "--compute-percent",
        "100",
        "--vram",
        &total,
    ]);
}

/// /metrics parses as Prometheus text and carries the devices' and vGPUs' figures.
#[test]
fn metrics_parse_as_prometheus_text() {
    let _cpu = timing();
    let node = Node::new("metrics");
    node.ok(&[
        "vgpu",
        "create",
        "m1",
        "--compute-percent",
        "40",
        "--request-percent",
        "25",
        "--vram",
        "2GiB",
        "--qos",
        "high",
    ]);
    node.ok(&[
        "vgpu",
        "create",
        "m2",
        "--compute-percent",
        "20",
        "--vram",
        "1GiB",
        "--qos",
        "low",
    ]);
    let addr = node
        .metrics
        .clone()
        .expect("the daemon printed its metrics address");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, vgpu: &str| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("vgpu") == Some(vgpu))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name}{{vgpu={vgpu}}} missing from\n{body}"))
    };
    assert_eq!(value("tf_vgpu_compute_request_ratio", "m1"), 0.25);
    assert_eq!(value("tf_vgpu_compute_limit_ratio", "m1"), 0.4);
    assert_eq!(value("tf_vgpu_vram_quota_bytes", "m2"), (1u64 << 30) as f64);
    assert_eq!(value("tf_vgpu_qos_level", "m1"), 2.0);
    assert_eq!(value("tf_vgpu_qos_level", "m2"), 0.0);
    assert!(value("tf_vgpu_target_share_ratio", "m1") >= 0.25);
    assert_eq!(value("tf_vgpu_achieved_share_ratio", "m2"), 0.0);
    assert_eq!(value("tf_vgpu_vram_used_bytes", "m2"), 0.0);
    let dev = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("device") == Some("0"))
            .unwrap_or_else(|| panic!("{name} missing from\n{body}"))
            .labels
            .get("model")
            .map(str::to_string)
    };
    assert_eq!(
        dev("tf_device_memory_total_bytes").as_deref(),
        Some("NVIDIA H100 80GB HBM3")
    );
    assert!(
        body.contains("tf_device_compute_requested_ratio{"),
        "{body}"
    );
    // The simulated GPU's sensors: an H100 between its idle and full-load figures.
    let device_value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("device") == Some("0"))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} missing from\n{body}"))
    };
    let t = device_value("tf_device_temperature_celsius");
    assert!((32.0..=68.0).contains(&t), "{t} °C");
    let p = device_value("tf_device_power_watts");
    assert!((70.0..=700.0).contains(&p), "{p} W");
}

/// Without a daemon the clients say how to start one; every new command has help.
#[test]
fn without_a_daemon_clients_say_how_to_start_one() {
    let _cpu = timing();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    for args in [
        vec!["vgpu", "ls"],
        vec!["run", "--vgpu", "x", "--", "true"],
        vec!["top"],
    ] {
        let o = Command::new(BIN)
            .args(&args)
            .env("TF_NODE_SOCKET", &socket)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.contains("is `tensor-fusion node` running?") && e.contains("none.sock"),
            "{args:?}: {e}"
        );
    }
    for args in [
        vec!["node", "--help"],
        vec!["vgpu", "--help"],
        vec!["vgpu", "create", "--help"],
        vec!["top", "--help"],
    ] {
        let o = Command::new(BIN).args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", show(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage:"));
    }
}

/// Over TCP every call needs the token: without it, or with another, the call is refused and
/// nothing is created.
#[test]
fn the_tcp_api_needs_the_token() {
    let _cpu = timing();
    let mut node = Node::new("tcp");
    node.stop();
    let token = "a-long-enough-test-token-0123456789";
    std::fs::write(node.dir.path().join("token"), token).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The TCP settings come from the config file.
    let config = node.dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "tcp = \"127.0.0.1:{port}\"\ntoken_file = {:?}\nstate_dir = {:?}\n",
            node.dir.path().join("token"),
            node.state()
        ),
    )
    .unwrap();
    let mut child = node
        .tf()
        .args(["node", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("serving on"), "{line}");
    node.daemon = Some(child);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    rt.block_on(async {
        let create = tf_hypervisor::api::CreateVgpuRequest {
            name: "t".into(),
            compute_limit: Some(0.5),
            vram_limit_bytes: 1 << 30,
            ..Default::default()
        };
        for wrong in ["wrong-token-wrong-token-wrong", ""] {
            let mut c = tf_hypervisor::api::connect_tcp(&addr, wrong).await.unwrap();
            let e = c.create_vgpu(create.clone()).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
            assert!(e.message().contains("token"), "{e:?}");
        }
        assert!(node.ls().is_empty());
        let mut c = tf_hypervisor::api::connect_tcp(&addr, token).await.unwrap();
        let v = c.create_vgpu(create).await.unwrap().into_inner();
        assert_eq!((v.name.as_str(), v.compute_limit), ("t", 0.5));
    });
    assert_eq!(node.ls().len(), 1);
}

/// The demo's last step shows the whole stack: three vGPUs hold their requests, lend and take
/// back, the remote worker's program counts on its vGPU, and nothing is left behind.
#[test]
fn the_demo_shows_the_whole_stack_and_leaves_nothing_behind() {
    let _cpu = timing();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("gpu.toml");
    std::fs::write(&profile, to_toml(&isolated_config("demo-node", 1))).unwrap();
    let t = Instant::now();
    let o = Command::new(BIN)
        .args(["demo", "--json"])
        .env("TF_FAKE_GPU_CONFIG", &profile)
        .env("TMPDIR", dir.path())
        .env_remove("TF_BACKEND")
        .output()
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", show(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    let rows = v["node"]["vgpus"].as_array().unwrap();
    eprintln!("demo took {took:.1} s: {rows:#?}");
    assert!(took < 60.0, "the demo took {took:.1} s");
    let row = |n: &str| rows.iter().find(|r| r["vgpu"] == n).unwrap();
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    for (n, request, limit, vram) in [
        ("train", 50.0, 100.0, 3u64 << 30),
        ("infer", 30.0, 60.0, 1 << 30),
        ("batch", 20.0, 40.0, 512 << 20),
    ] {
        let r = row(n);
        assert_eq!(f(r, "busy_target_pct"), request, "{r}");
        assert!((f(r, "busy_achieved_pct") - request).abs() <= 3.0, "{r}");
        assert_eq!(r["vram_used"], vram, "{r}");
        if n != "train" {
            assert_eq!(f(r, "lent_target_pct"), limit, "{r}");
            assert!(f(r, "lent_achieved_pct") >= limit - 3.0, "{r}");
        }
    }
    assert_eq!(row("batch")["path"], "remote worker");
    assert!(f(row("train"), "lent_achieved_pct") < 1.0);
    // Nothing left behind: the private machine's folder (under TMPDIR) is gone, and no
    // process of the demo's is left.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "gpu.toml")
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("machine"))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let running = Command::new("pgrep")
        .args(["-f", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "still running: {}",
        String::from_utf8_lossy(&running.stdout)
    );
}

/// A program in another pid namespace (a container's): its front end is attached with its
/// pid in the daemon's namespace, the memory it holds is never taken for a dead process's
/// (its pid means nothing here), and when its front end goes the daemon sees it (the
/// connection closes) and gives the memory back; across a kill -9 of the daemon, a front end
/// that comes back keeps its memory, and one that died meanwhile has it given back.
#[test]
fn a_program_in_another_pid_namespace_is_tracked_by_its_connection() {
    let _cpu = timing();
    let probe_unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !probe_unshare.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: `unshare --pid --fork --mount-proc` is not permitted here");
        return;
    }
    let mut node = Node::new("pidns");
    node.ok(&[
        "vgpu",
        "create",
        "c",
        "--compute-percent",
        "50",
        "--vram",
        "1GiB",
    ]);
    let c = |n: &Node| n.ls().into_iter().find(|v| v["name"] == "c").unwrap();
    let wait = |n: &Node, what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| -> f64 {
        let t = Instant::now();
        loop {
            let v = c(n);
            if ok(&v) {
                return t.elapsed().as_secs_f64();
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{what}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    const HELD: u64 = 256 << 20;
    // The front end and its program in a new pid namespace (the front end is pid 1 there).
    let start = |n: &Node| -> (Child, u32) {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", BIN]);
        n.env(&mut cmd)
            .args(["run", "--vgpu", "c", "--"])
            .arg(probe())
            .args(["hold", "256", "120"])
            .stdout(Stdio::null());
        let child = cmd.spawn().unwrap();
        n.spawned.lock().unwrap().push(child.id());
        wait(n, "held", &|v| {
            v["vram_used"] == HELD && !v["attached_pids"].as_array().unwrap().is_empty()
        });
        // Its front end's pid, as the daemon's namespace knows it (not 1).
        let front = c(n)["attached_pids"][0].as_u64().unwrap() as u32;
        assert!(front > 1);
        (child, front)
    };

    let (mut a, front) = start(&node);
    // Several control ticks later (each would reclaim dead processes by pid) it still holds.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c(&node)["vram_used"], HELD, "{}", c(&node));
    // The front end is killed: the connection closes, the daemon detaches it and gives the
    // memory back.
    signal(front, libc::SIGKILL);
    let t = wait(&node, "given back", &|v| {
        v["vram_used"] == 0 && v["attached_pids"].as_array().unwrap().is_empty()
    });
    eprintln!("detached and given back {t:.2} s after the kill");
    let _ = a.wait();

    // Across a kill -9 of the daemon: the front end comes back and keeps its memory, past the
    // restarted daemon's grace period.
    let (mut b, _) = start(&node);
    node.kill9();
    node.start();
    wait(&node, "attached again", &|v| {
        !v["attached_pids"].as_array().unwrap().is_empty()
    });
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(c(&node)["vram_used"], HELD, "{}", c(&node));
    // A front end that dies while the daemon is down: its memory is given back after the
    // restart, once the grace period shows it is not coming back.
    let front = c(&node)["attached_pids"][0].as_u64().unwrap() as u32;
    node.kill9();
    signal(front, libc::SIGKILL);
    let _ = b.wait();
    node.start();
    assert_eq!(
        c(&node)["vram_used"],
        HELD,
        "recovered as the programs left it"
    );
    let t = wait(&node, "given back after the restart", &|v| {
        v["vram_used"] == 0
    });
    eprintln!("a front end that died with the daemon down: given back {t:.2} s after the restart");
}

/// Kills its processes (SIGKILL) when dropped, so that a failed assertion leaves nothing
/// running: only those still children of this test process (a reaped child's pid may have
/// been given to someone else's process since).
struct Kill(Vec<u32>);

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
}

impl Drop for Kill {
    fn drop(&mut self) {
        for &p in &self.0 {
            if parent_of(p) == Some(std::process::id()) {
                // SAFETY: kill(2) on a child of this process.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
        }
    }
}

/// Without --device the scheduler engine places each vGPU where its request fits; one that fits
/// nowhere is refused.
#[test]
fn vgpus_without_a_device_are_placed_where_they_fit() {
    let _cpu = timing();
    let node = Node::with_devices("place", 2);
    let device = |out: &str| -> u64 {
        out.split("on device ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    };
    let a = device(&node.ok(&[
        "vgpu",
        "create",
        "a",
        "--compute-percent",
        "60",
        "--vram",
        "8GiB",
    ]));
    let b = device(&node.ok(&[
        "vgpu",
        "create",
        "b",
        "--compute-percent",
        "60",
        "--vram",
        "8GiB",
    ]));
    assert_ne!(a, b, "two 60 % vGPUs share a device");
    let e = node.refused(&[
        "vgpu",
        "create",
        "c",
        "--compute-percent",
        "60",
        "--vram",
        "8GiB",
    ]);
    assert!(
        e.contains("does not fit") && e.contains("40.0% compute"),
        "{e}"
    );
    // A small one still fits (beside either).
    let c = device(&node.ok(&[
        "vgpu",
        "create",
        "c",
        "--compute-percent",
        "30",
        "--vram",
        "8GiB",
    ]));
    assert!(c == a || c == b);
    let devices = node.devices();
    let requested: Vec<f64> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["compute_requested"].as_f64().unwrap())
        .collect();
    assert!(
        (requested.iter().sum::<f64>() - 1.5).abs() < 1e-9,
        "{devices}"
    );
}

/// A remote vGPU: the daemon starts a worker on it; programs run through the client stub
/// against the worker, which the daemon paces with the vGPU, under its VRAM quota; removing the
/// vGPU stops the worker.
#[test]
fn a_remote_vgpu_runs_programs_through_a_worker_the_daemon_starts() {
    let _cpu = timing();
    let node = Node::new("remote");
    node.ok(&[
        "vgpu",
        "create",
        "r",
        "--compute-percent",
        "30",
        "--vram",
        "1GiB",
        "--remote",
    ]);
    let r = |n: &Node| n.ls().into_iter().find(|v| v["name"] == "r").unwrap();
    let t = Instant::now();
    while r(&node)["attached_pids"].as_array().unwrap().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no worker: {}",
            r(&node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let address = r(&node)["remote_address"].as_str().unwrap().to_string();
    assert!(address.starts_with("unix://"), "{address}");
    let run = |pre: &[&str], args: &[String]| -> serde_json::Value {
        let out = node
            .tf()
            .args(pre)
            .arg("--")
            .arg(probe())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{pre:?}: {}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
    };
    // The quota, as the program sees it through the stub.
    let v = run(&["run", "--vgpu", "r"], &["vram".into(), "64".into()]);
    assert_eq!(v["mem_total"], 1u64 << 30, "{v}");
    assert_eq!(v["last_error"], 2, "out of memory past the quota: {v}");
    assert_eq!(v["allocated"], 1u64 << 30, "{v}");
    // The share: measured by the program against its rate alone on the device.
    let alone = run(&["run"], &busy(1.5, 0.5))["kernels_per_s"]
        .as_f64()
        .unwrap();
    let mut achieved = 0.0;
    for _ in 0..2 {
        let rate = run(&["run", "--vgpu", "r"], &busy(3.0, 1.0))["kernels_per_s"]
            .as_f64()
            .unwrap();
        achieved = rate / alone * 100.0;
        eprintln!("remote vGPU at 30 %: {rate:.0}/s of {alone:.0}/s alone = {achieved:.1} %");
        if (achieved - 30.0).abs() <= 3.0 {
            break;
        }
    }
    assert!((achieved - 30.0).abs() <= 3.0, "{achieved:.1} %");
    // Removing the vGPU stops its worker.
    node.ok(&["vgpu", "rm", "r"]);
    let t = Instant::now();
    while !processes_naming(&node.dir.path().join("run/vgpus/r")).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the worker is still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
