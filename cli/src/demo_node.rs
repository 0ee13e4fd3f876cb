//! The demo's last step: the whole stack on the private simulated machine. A node daemon,
//! three vGPUs with different requests, limits and QoS, two programs through the local
//! limiter and one through a remote worker running on the third vGPU, then lending: the
//! biggest vGPU's program stops, the others grow to their limits, and it comes back.
//! Everything it starts is stopped (and its folders removed with the machine) however it ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use serde::Serialize;

use crate::demo::Machine;

/// One row of the table: a vGPU in each phase.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub vgpu: String,
    pub qos: String,
    /// How its program reaches the device: `local limiter` or `remote worker`.
    pub path: String,
    pub request_pct: f64,
    pub limit_pct: f64,
    /// Target and achieved share (percent of the device) with every program busy, while the
    /// first vGPU's program is stopped (its capacity lent), and after it resumed.
    pub busy_target_pct: f64,
    pub busy_achieved_pct: f64,
    pub lent_target_pct: f64,
    pub lent_achieved_pct: f64,
    pub back_target_pct: f64,
    pub back_achieved_pct: f64,
    pub vram_used: u64,
    pub vram_limit: u64,
}

#[derive(Debug, Serialize)]
pub struct NodeDemo {
    pub window_s: f64,
    /// Windows measured in all (3 without retries; see `measure_busy`).
    pub windows_measured: u32,
    pub vgpus: Vec<Row>,
}

/// Children that are killed (and reaped) when this goes out of scope.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn push(&mut self, c: Child) -> u32 {
        let id = c.id();
        self.0.push(c);
        id
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        // Front ends first (their programs die with them), the daemon last.
        for c in self.0.iter_mut().rev() {
            // SAFETY: kill(2) on our own children (SIGCONT first: a stopped one must run to
            // die of SIGTERM).
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in self.0.iter_mut().rev() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tf(machine: &Machine, socket: &Path) -> Result<Command> {
    let mut c = machine.tensor_fusion()?;
    c.env("TF_NODE_SOCKET", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(c)
}

fn ok(machine: &Machine, socket: &Path, args: &[&str]) -> Result<String> {
    let out = tf(machine, socket)?
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    ensure!(
        out.status.success(),
        "tensor-fusion {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ls(machine: &Machine, socket: &Path) -> Result<Vec<serde_json::Value>> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(machine, socket, &["vgpu", "ls", "--json"])?)?;
    v.as_array()
        .cloned()
        .ok_or_else(|| anyhow!("vgpu ls --json: not a list"))
}

/// The (first) child of `pid`.
fn child_of(pid: u32) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            return e.file_name().to_string_lossy().parse().ok();
        }
    }
    None
}

/// One vGPU over a window: (name, target %, achieved %, VRAM used, VRAM limit).
type Reading = (String, f64, f64, u64, u64);

/// Shares (percent) and targets over `window`, from the daemon's busy-time counters.
fn measure(machine: &Machine, socket: &Path, window: f64) -> Result<Vec<Reading>> {
    let a = ls(machine, socket)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(window));
    let b = ls(machine, socket)?;
    let wall = t0.elapsed().as_nanos() as f64;
    Ok(b.iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap_or("").to_string();
            let before = a
                .iter()
                .find(|x| x["name"] == v["name"])
                .and_then(|x| x["busy_ns"].as_u64())
                .unwrap_or(0);
            let busy = v["busy_ns"].as_u64().unwrap_or(0).saturating_sub(before) as f64;
            (
                name,
                v["target_share"].as_f64().unwrap_or(0.0) * 100.0,
                busy / wall * 100.0,
                v["vram_used"].as_u64().unwrap_or(0),
                v["vram_limit"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// [`measure`], taken again (up to twice) while the device was not kept busy: the busy vGPUs
/// (all but `idle`) used less than 95 % of their targets together, which on a loaded machine
/// means the programs did not get the CPU to launch, not that the daemon held them back.
fn measure_busy(
    machine: &Machine,
    socket: &Path,
    window: f64,
    idle: Option<&str>,
    windows: &mut u32,
) -> Result<Vec<Reading>> {
    let mut m = Vec::new();
    for _ in 0..3 {
        *windows += 1;
        m = measure(machine, socket, window)?;
        let busy = m.iter().filter(|r| Some(r.0.as_str()) != idle);
        let (target, achieved) = busy.fold((0.0, 0.0), |(t, a), r| (t + r.1, a + r.2));
        if achieved >= 0.95 * target {
            break;
        }
        tracing::warn!(
            target,
            achieved,
            "the programs did not keep the device busy (a loaded machine?): measuring again"
        );
    }
    Ok(m)
}

pub fn run(machine: &Machine, seconds: f64, say: &dyn Fn(&str)) -> Result<NodeDemo> {
    let dir = machine.folder("node")?;
    let socket = dir.join("node.sock");
    let exe = std::env::current_exe().context("locating the tensor-fusion binary")?;
    let mut children = Children::default();

    // The daemon, on the private machine.
    let mut daemon = tf(machine, &socket)?
        .args(["node", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the node daemon")?;
    let out = daemon.stdout.take();
    children.push(daemon);
    let mut line = String::new();
    if let Some(out) = out {
        BufReader::new(out).read_line(&mut line)?;
    }
    ensure!(
        line.contains("serving on"),
        "the node daemon did not start: {line:?}"
    );
    say(&format!(
        "   started `tensor-fusion node` ({})",
        socket.display()
    ));

    let specs: [(&str, &str, &str, &str, &str, &str); 3] = [
        ("train", "100", "50", "8GiB", "critical", "local limiter"),
        ("infer", "60", "30", "4GiB", "high", "local limiter"),
        ("batch", "40", "20", "4GiB", "medium", "remote worker"),
    ];
    for (name, limit, request, vram, qos, _) in specs {
        ok(
            machine,
            &socket,
            &[
                "vgpu",
                "create",
                name,
                "--compute-percent",
                limit,
                "--request-percent",
                request,
                "--vram",
                vram,
                "--qos",
                qos,
            ],
        )?;
        say(&format!(
            "   tensor-fusion vgpu create {name} --compute-percent {limit} --request-percent {request} --vram {vram} --qos {qos}"
        ));
    }

    // Programs: a CUDA program on `train` and on `infer` through the local limiter; on `batch`
    // a remote worker serves a CUDA program that reaches it over a Unix socket.
    let long = format!("{}", seconds * 4.0 + 30.0);
    let train = children.push(
        tf(machine, &socket)?
            .args(["run", "--vgpu", "train", "--"])
            .arg(&exe)
            .args(["cuda-probe", "busy", &long, "0", "3072"])
            .spawn()?,
    );
    children.push(
        tf(machine, &socket)?
            .args(["run", "--vgpu", "infer", "--"])
            .arg(&exe)
            .args(["cuda-probe", "busy", &long, "0", "1024"])
            .spawn()?,
    );
    let token = dir.join("worker.token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token)?
            .write_all(format!("demo-{:x}", tf_os::now_ns()).repeat(2).as_bytes())?;
    }
    let worker_sock: PathBuf = dir.join("worker.sock");
    let addr = format!("unix://{}", worker_sock.display());
    children.push(
        tf(machine, &socket)?
            .args(["run", "--vgpu", "batch", "--"])
            .arg(&exe)
            .args(["worker", "--listen", &addr, "--token-file"])
            .arg(&token)
            .spawn()?,
    );
    let t = Instant::now();
    while !worker_sock.exists() {
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the remote worker did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    children.push(
        tf(machine, &socket)?
            .args(["run", "--remote", &addr, "--token-file"])
            .arg(&token)
            .arg("--")
            .arg(&exe)
            .args(["cuda-probe", "busy", &long, "0", "512"])
            .spawn()?,
    );
    say(
        "   programs (1 ms kernels back to back, holding 3 GiB, 1 GiB and 512 MiB): train and infer through the local limiter, batch through a remote worker running on its vGPU",
    );

    std::thread::sleep(Duration::from_secs(2));
    let mut windows = 0;
    let busy = measure_busy(machine, &socket, seconds, None, &mut windows)?;
    // `train`'s program goes idle (stopped), then comes back.
    let program = child_of(train).ok_or_else(|| anyhow!("train's program is not running"))?;
    // SAFETY: kill(2) on a process this demo started.
    unsafe { libc::kill(program as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(1500));
    let lent = measure_busy(machine, &socket, seconds, Some("train"), &mut windows);
    // SAFETY: as above.
    unsafe { libc::kill(program as i32, libc::SIGCONT) };
    let lent = lent?;
    std::thread::sleep(Duration::from_millis(1500));
    let back = measure_busy(machine, &socket, seconds, None, &mut windows)?;

    let find = |m: &[Reading], n: &str| {
        m.iter()
            .find(|r| r.0 == n)
            .cloned()
            .unwrap_or((n.to_string(), 0.0, 0.0, 0, 0))
    };
    let vgpus: Vec<Row> = specs
        .iter()
        .map(|(name, limit, request, _, qos, path)| {
            let (b, l, k) = (find(&busy, name), find(&lent, name), find(&back, name));
            Row {
                vgpu: name.to_string(),
                qos: qos.to_string(),
                path: path.to_string(),
                request_pct: request.parse().unwrap_or(0.0),
                limit_pct: limit.parse().unwrap_or(0.0),
                busy_target_pct: b.1,
                busy_achieved_pct: b.2,
                lent_target_pct: l.1,
                lent_achieved_pct: l.2,
                back_target_pct: k.1,
                back_achieved_pct: k.2,
                vram_used: k.3,
                vram_limit: k.4,
            }
        })
        .collect();
    drop(children); // programs, front ends, worker and daemon stop here
    Ok(NodeDemo {
        window_s: seconds,
        windows_measured: windows,
        vgpus,
    })
}

/// The table, as the demo prints it.
pub fn table(d: &NodeDemo) -> String {
    let mut s = format!(
        "   {:<6} {:<9} {:<14} {:>7} {:>6}   {:>15}   {:>15}   {:>15}   {:>17}\n",
        "vGPU",
        "QoS",
        "through",
        "request",
        "limit",
        "all busy",
        "train stopped",
        "train back",
        "VRAM used/limit"
    );
    s += &format!(
        "   {:<6} {:<9} {:<14} {:>7} {:>6}   {:>15}   {:>15}   {:>15}\n",
        "", "", "", "", "", "target achieved", "target achieved", "target achieved"
    );
    for r in &d.vgpus {
        s += &format!(
            "   {:<6} {:<9} {:<14} {:>6.0}% {:>5.0}%   {:>5.1}% {:>7.1}%   {:>5.1}% {:>7.1}%   {:>5.1}% {:>7.1}%   {:>17}\n",
            r.vgpu,
            r.qos,
            r.path,
            r.request_pct,
            r.limit_pct,
            r.busy_target_pct,
            r.busy_achieved_pct,
            r.lent_target_pct,
            r.lent_achieved_pct,
            r.back_target_pct,
            r.back_achieved_pct,
            format!(
                "{} / {}",
                tf_hal::units::format_bytes(r.vram_used),
                tf_hal::units::format_bytes(r.vram_limit)
            ),
        );
    }
    s
}
