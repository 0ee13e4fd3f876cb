//! Remote vGPUs on the command line: `tensor-fusion worker`, the remote backend for `devices`
//! and `run --remote`, and `tensor-fusion bench remote`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use tf_hal::{Backend, Context, KernelArgs, LaunchConfig, StreamHandle};
use tf_remote::RemoteBackend;
use tf_remote_protocol::link::{Link, RingLink, SocketLink};
use tf_remote_protocol::wire::Msg;
use tf_remote_protocol::{Address, auth};

use crate::args;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    tensor-fusion worker --listen tcp://0.0.0.0:7070 --token-file /etc/tensor-fusion/token\n  \
    tensor-fusion worker --listen shm://gpu0 --token-file token --device 1 --vram 8GiB --compute-percent 50\n\n\
    The token file holds a secret string (mode 0600): every client must present it. Clients run\n\
    with `tensor-fusion run --remote ADDR --token-file F -- CMD`. The worker serves one device\n\
    through the chosen backend; --vram and --compute-percent are the vGPU's limits, shared by\n\
    its clients and enforced here (the clients never touch the device). Logs: TF_LOG=info.")]
pub struct WorkerArgs {
    /// Where to listen: tcp://HOST:PORT (across hosts), unix:///PATH, or shm://NAME
    /// (shared-memory rings, this host only).
    #[arg(long, value_parser = parse_addr)]
    pub listen: Address,
    /// File holding the token clients must present (readable by its owner only).
    #[arg(long)]
    pub token_file: PathBuf,
    /// Device index to serve (see `tensor-fusion devices`).
    #[arg(long, default_value_t = 0, value_parser = args::device_index, allow_negative_numbers = true)]
    pub device: u32,
    /// The vGPU's VRAM quota with a unit, e.g. 4GiB (default: the whole device).
    #[arg(long, value_parser = args::quota, allow_negative_numbers = true)]
    pub vram: Option<u64>,
    /// The vGPU's share of the device's time, in percent, in (0, 100] (default: no limit).
    #[arg(long, value_parser = args::percent, allow_negative_numbers = true)]
    pub compute_percent: Option<f64>,
    /// Backend of the device: fake, cuda, vulkan or ascend (default: $TF_BACKEND, the config
    /// file, or fake).
    #[arg(long)]
    pub backend: Option<String>,
}

pub fn parse_addr(s: &str) -> Result<Address, String> {
    s.parse::<Address>().map_err(|e| e.to_string())
}

/// Read a token file, with the fix in the message.
pub fn token(path: &Path) -> Result<Vec<u8>> {
    auth::read_token_file(path).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn worker(args: WorkerArgs) -> Result<()> {
    let token = token(&args.token_file)?;
    let backend = crate::backends::open(args.backend.as_deref())?;
    if backend.kind() == tf_hal::BackendKind::Remote {
        bail!("a worker serves a local device: choose fake, cuda, vulkan or ascend");
    }
    let worker = tf_remote_worker::Worker::new(
        backend,
        tf_remote_worker::Config {
            device: args.device,
            token,
            vram_quota: args.vram,
            compute_share: args.compute_percent.map(|p| p / 100.0),
        },
    )
    .with_context(|| format!("serving device {}", args.device))?;
    let worker = Arc::new(worker);
    let listener = tf_remote_protocol::session::Listener::bind(&args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    let at = listener.local_addr(&args.listen);
    // Stop on SIGTERM/SIGINT/SIGHUP: the socket file goes, and with the process everything
    // the clients held.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let socket_file = match &args.listen {
        Address::Unix(p) => Some(p.clone()),
        Address::Shm(n) => Address::shm_socket(n).ok(),
        Address::Tcp(_) => None,
    };
    std::thread::Builder::new()
        .name("worker-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping");
                if let Some(p) = socket_file {
                    let _ = std::fs::remove_file(p);
                }
                std::process::exit(0);
            }
        })?;
    let info = worker.info();
    tracing::info!(device = %info.uuid, model = %info.model, quota = ?args.vram, share = ?args.compute_percent, "worker ready");
    println!(
        "tensor-fusion worker: listening on {at} (device {} {})",
        args.device, info.model
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let stop = AtomicBool::new(false);
    worker.serve(&listener, &stop);
    Ok(())
}

/// Open the remote backend: the address and token file from the flags, else from
/// `TF_REMOTE` and `TF_REMOTE_TOKEN_FILE`.
pub fn open(addr: Option<&Address>, token_file: Option<&Path>) -> Result<Arc<dyn Backend>> {
    let addr = match addr {
        Some(a) => a.clone(),
        None => match std::env::var(tf_remote::ADDR_ENV) {
            Ok(s) => parse_addr(&s).map_err(|e| anyhow::anyhow!("{}: {e}", tf_remote::ADDR_ENV))?,
            Err(_) => bail!(
                "the remote backend needs the worker's address: --remote ADDR (or ${})",
                tf_remote::ADDR_ENV
            ),
        },
    };
    let file = match token_file {
        Some(f) => f.to_path_buf(),
        None => match std::env::var_os(tf_remote::TOKEN_FILE_ENV) {
            Some(f) => PathBuf::from(f),
            None => bail!(
                "the remote backend needs the worker's token: --token-file FILE (or ${})",
                tf_remote::TOKEN_FILE_ENV
            ),
        },
    };
    let token = token(&file)?;
    Ok(Arc::new(RemoteBackend::connect(&addr, &token)?))
}

// ---------------------------------------------------------------------------------------------
// bench remote
// ---------------------------------------------------------------------------------------------

#[derive(Debug, clap::Args)]
pub struct BenchRemoteArgs {
    /// Transport to measure: shm, unix or tcp.
    #[arg(long, default_value = "shm")]
    pub transport: String,
    /// Synchronous calls timed (and as many raw ping-pongs).
    #[arg(long, default_value_t = 20_000)]
    pub calls: u32,
    /// Kernel launches sent back to back.
    #[arg(long, default_value_t = 200_000)]
    pub launches: u32,
    /// Size of the copies, in MiB.
    #[arg(long, default_value_t = 64)]
    pub copy_mib: u64,
    /// Copies timed per direction (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub copies: u32,
    /// Print JSON lines (the only output format; accepted for symmetry).
    #[arg(long)]
    pub json: bool,
}

fn stats_us(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A worker process for the bench, on a private token and address, killed when dropped.
struct ChildWorker {
    child: std::process::Child,
    addr: Address,
    _dir: tempfile::TempDir,
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Address::Shm(n) = &self.addr
            && let Ok(p) = Address::shm_socket(n)
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn spawn_worker(transport: &str) -> Result<(ChildWorker, Vec<u8>)> {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let token = format!("bench-{}-{}", std::process::id(), tf_os::now_ns()).into_bytes();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token)?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let listen = match transport {
        "tcp" => "tcp://127.0.0.1:0".to_string(),
        "unix" => format!("unix://{}", dir.path().join("worker.sock").display()),
        "shm" => format!("shm://bench-{}", std::process::id()),
        other => bail!("--transport {other}: expected shm, unix or tcp"),
    };
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["worker", "--listen", &listen, "--token-file"])
        .arg(&token_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting a worker")?;
    let out = child.stdout.take().context("the worker's output")?;
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line)?;
    let Some(at) = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
    else {
        let _ = child.kill();
        bail!("the worker did not start: {line:?}");
    };
    let addr = parse_addr(at).map_err(|e| anyhow::anyhow!(e))?;
    Ok((
        ChildWorker {
            child,
            addr,
            _dir: dir,
        },
        token,
    ))
}

/// The raw floor of a transport: ping-pongs of an empty frame, and a one-way copy of `bytes`
/// (acknowledged), over a fresh connection of the same kind between two threads, with no
/// protocol beyond the frame.
fn raw_floor(
    transport: &str,
    calls: u32,
    bytes: usize,
    copies: u32,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let dir = tempfile::tempdir()?;
    type Server = Box<dyn FnOnce() -> Box<dyn Link> + Send>;
    let (mut a, b): (Box<dyn Link>, Server) = match transport {
        "tcp" => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let at = l.local_addr()?;
            let c = std::net::TcpStream::connect(at)?;
            c.set_nodelay(true)?;
            let (s, _) = l.accept()?;
            s.set_nodelay(true)?;
            (
                Box::new(SocketLink::new(c)),
                Box::new(move || Box::new(SocketLink::new(s)) as Box<dyn Link>),
            )
        }
        "unix" => {
            let p = dir.path().join("raw.sock");
            let l = std::os::unix::net::UnixListener::bind(&p)?;
            let c = std::os::unix::net::UnixStream::connect(&p)?;
            let (s, _) = l.accept()?;
            (
                Box::new(SocketLink::new(c)),
                Box::new(move || Box::new(SocketLink::new(s)) as Box<dyn Link>),
            )
        }
        _ => {
            let (c, s) = std::os::unix::net::UnixStream::pair()?;
            let worker = std::thread::spawn(move || RingLink::create(s));
            let client = RingLink::open(c)?;
            let server = worker
                .join()
                .map_err(|_| anyhow::anyhow!("ring thread"))??;
            (
                Box::new(client),
                Box::new(move || Box::new(server) as Box<dyn Link>),
            )
        }
    };
    let echo = std::thread::spawn(move || {
        let mut l = b();
        let mut buf = Vec::new();
        // A destination of the copy's size (as a device allocation is), written at each
        // frame's offset: the floor is a copy of `bytes` into `bytes`, not into a hot buffer.
        let mut sink = vec![1u8; bytes];
        while let Ok(h) = l.recv(&mut buf) {
            match Msg::decode(h.tag, &buf) {
                Ok(Msg::Ping { n }) => {
                    if l.send(&Msg::Pong { n }, &[]).is_err() {
                        break;
                    }
                }
                Ok(Msg::CopyHtoD { dst, flags, .. }) => {
                    let n = h.data_len as usize;
                    let at = (dst as usize).min(bytes.saturating_sub(n));
                    if l.recv_data_into(&mut sink[at..at + n]).is_err() {
                        break;
                    }
                    if flags & tf_remote_protocol::wire::flags::ACK != 0
                        && l.send(&Msg::Done {}, &[]).is_err()
                    {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    let mut buf = Vec::new();
    let mut rtt = Vec::with_capacity(calls as usize);
    for i in 0..calls as u64 {
        let t = Instant::now();
        a.send(&Msg::Ping { n: i }, &[])?;
        a.recv(&mut buf)?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let data = vec![0x5au8; bytes];
    let chunk = a.max_data();
    let mut copy = Vec::new();
    for _ in 0..copies {
        let t = Instant::now();
        let n = data.len().div_ceil(chunk);
        for (i, piece) in data.chunks(chunk).enumerate() {
            let flags = if i + 1 == n {
                tf_remote_protocol::wire::flags::ACK
            } else {
                0
            };
            a.send(
                &Msg::CopyHtoD {
                    ctx: 0,
                    stream: 0,
                    dst: (i * chunk) as u64,
                    flags,
                },
                piece,
            )?;
        }
        a.recv(&mut buf)?;
        copy.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    drop(a);
    let _ = echo.join();
    Ok((rtt, copy))
}

fn memcpy_gbps(bytes: usize, copies: u32) -> f64 {
    let src = vec![0x5au8; bytes];
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src); // touch the pages first
    let mut v = Vec::new();
    for _ in 0..copies {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        v.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    median(v)
}

fn launch_rate(ctx: &dyn Context, f: tf_hal::FunctionHandle, n: u32) -> Result<f64> {
    let args = KernelArgs::new().u64(0);
    let cfg = LaunchConfig::single();
    ctx.synchronize()?;
    let t = Instant::now();
    for _ in 0..n {
        ctx.launch(f, &cfg, StreamHandle::DEFAULT, &args)?;
    }
    ctx.synchronize()?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub fn bench(args: BenchRemoteArgs) -> Result<()> {
    let t = args.transport.as_str();
    if !matches!(t, "shm" | "unix" | "tcp") {
        bail!("--transport {t}: expected shm, unix or tcp");
    }
    anyhow::ensure!(args.calls >= 100, "--calls must be at least 100");
    anyhow::ensure!(
        args.copies >= 1 && args.copy_mib >= 1,
        "--copies and --copy-mib must be at least 1"
    );
    let bytes = (args.copy_mib << 20) as usize;
    let emit = |v: serde_json::Value| println!("{v}");
    emit(serde_json::json!({
        "bench": "remote", "transport": t, "what": "conditions",
        "load_average_before": load_average(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "worker": "a separate process (tensor-fusion worker) on the simulated GPU",
    }));

    let (worker, token) = spawn_worker(t)?;
    let backend = RemoteBackend::connect(&worker.addr, &token)?;
    let dev = backend.device(0)?;
    let ctx = dev.create_context()?;
    let module = ctx.load_module(tf_hal::ModuleImage::Ptx(tf_hal::TEST_KERNELS_PTX))?;
    let busy = ctx.function(module, "tf_busy")?;

    // Synchronous round trip: a HAL call the worker must answer (an event query).
    let ev = ctx.event_create()?;
    ctx.event_record(ev, StreamHandle::DEFAULT)?;
    ctx.synchronize()?;
    for _ in 0..200 {
        ctx.event_query(ev)?;
    }
    let mut rtt = Vec::with_capacity(args.calls as usize);
    for _ in 0..args.calls {
        let s = Instant::now();
        ctx.event_query(ev)?;
        rtt.push(s.elapsed().as_secs_f64() * 1e6);
    }
    let (floor_rtt, floor_copy) = raw_floor(t, args.calls, bytes, args.copies)?;
    let (m, p99) = stats_us(rtt);
    let (fm, fp99) = stats_us(floor_rtt);
    emit(serde_json::json!({
        "bench": "remote", "transport": t, "what": "sync_round_trip",
        "call": "event_query", "calls": args.calls,
        "median_us": m, "p99_us": p99,
        "floor_median_us": fm, "floor_p99_us": fp99,
        "ratio_to_floor": m / fm,
    }));

    // Pipelined launches: sent back to back, then one synchronize.
    let _ = launch_rate(&*ctx, busy, 1000)?;
    let remote = median(
        (0..3)
            .map(|_| launch_rate(&*ctx, busy, args.launches))
            .collect::<Result<Vec<_>>>()?,
    );
    let local_backend = tf_fake_gpu::FakeBackend::from_env()?;
    let lctx = local_backend.device(0)?.create_context()?;
    let lm = lctx.load_module(tf_hal::ModuleImage::Ptx(tf_hal::TEST_KERNELS_PTX))?;
    let lbusy = lctx.function(lm, "tf_busy")?;
    let local = median(
        (0..3)
            .map(|_| launch_rate(&*lctx, lbusy, args.launches))
            .collect::<Result<Vec<_>>>()?,
    );
    emit(serde_json::json!({
        "bench": "remote", "transport": t, "what": "pipelined_launches",
        "kernel": "tf_busy(0 ns)", "launches": args.launches,
        "per_second": remote, "local_per_second": local,
    }));

    // Copies of the same size, each way.
    let p = ctx.mem_alloc(bytes as u64)?;
    let src = vec![0xa5u8; bytes];
    let mut dst = vec![0u8; bytes];
    ctx.copy_htod(p, &src)?;
    ctx.copy_dtoh(&mut dst, p)?;
    let mut h2d = Vec::new();
    let mut d2h = Vec::new();
    for _ in 0..args.copies {
        let s = Instant::now();
        ctx.copy_htod(p, &src)?;
        h2d.push(bytes as f64 / s.elapsed().as_secs_f64() / 1e9);
        let s = Instant::now();
        ctx.copy_dtoh(&mut dst, p)?;
        d2h.push(bytes as f64 / s.elapsed().as_secs_f64() / 1e9);
    }
    anyhow::ensure!(dst == src, "the copied bytes differ");
    let floor = median(floor_copy);
    let mem = memcpy_gbps(bytes, args.copies);
    for (what, v) in [("h2d", h2d), ("d2h", d2h)] {
        let g = median(v);
        emit(serde_json::json!({
            "bench": "remote", "transport": t, "what": what, "bytes": bytes,
            "gbps": g,
            "floor_gbps": floor, "floor": format!("raw {t} transfer, same frames, no protocol"),
            "memcpy_gbps": mem,
            "ratio_to_floor": g / floor, "ratio_to_memcpy": g / mem,
        }));
    }
    ctx.mem_free(p)?;
    drop(ctx);
    drop(backend);
    drop(worker);
    emit(serde_json::json!({
        "bench": "remote", "transport": t, "what": "conditions_after",
        "load_average_after": load_average(),
    }));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// run --remote
// ---------------------------------------------------------------------------------------------

/// The client stub as cargo names it, and the names it is loaded by.
pub const STUB_LIBS: &[(&str, &[&str])] = &[(
    "libtf_remote_cuda.so",
    &[
        "libcuda.so.1",
        "libcuda.so",
        "libnvidia-ml.so.1",
        "libnvidia-ml.so",
    ],
)];
/// The folder, inside the installed library folder, holding the stub under the drivers' names.
pub const INSTALLED_STUB_DIR: &str = "remote-driver";

/// A folder with the client stub under the real drivers' names: the installed layout's, else
/// one per user (links refreshed when they point elsewhere).
pub fn stub_dir() -> Result<PathBuf> {
    let (built, names) = STUB_LIBS[0];
    let (lib, origin) = tf_os::artifacts::find(built)?;
    if origin == tf_os::artifacts::Origin::Installed
        && let Some(dir) = lib.parent().map(|d| d.join(INSTALLED_STUB_DIR))
        && names.iter().all(|n| dir.join(n).exists())
    {
        return Ok(dir);
    }
    let dir = tf_os::user_runtime_dir()?.join("remote-driver");
    let want = lib.canonicalize().ok();
    if names
        .iter()
        .any(|n| std::fs::read_link(dir.join(n)).ok() != want)
    {
        tf_fake_gpu::install::install_libs(
            &dir,
            tf_fake_gpu::install::InstallMode::Link,
            STUB_LIBS,
        )?;
    }
    Ok(dir)
}

/// `tensor-fusion run --remote ADDR --token-file F -- CMD`: check that the worker answers (so
/// a wrong address or token fails here, with the fix), then run CMD with the client stub as its
/// driver. The exit code is the command's.
pub fn run(
    addr: &Address,
    token_file: Option<&Path>,
    command: &[std::ffi::OsString],
) -> Result<i32> {
    let file = match token_file {
        Some(f) => f.to_path_buf(),
        None => match std::env::var_os(tf_remote::TOKEN_FILE_ENV) {
            Some(f) => PathBuf::from(f),
            None => bail!("--remote needs the worker's token: --token-file FILE"),
        },
    };
    let tok = token(&file)?;
    let backend = RemoteBackend::connect(addr, &tok)?;
    tracing::info!(
        worker = backend.connection().worker(),
        "remote vGPU reachable"
    );
    drop(backend);
    let inject = tf_vgpu_limiter::Injection {
        library_dirs: vec![stub_dir()?],
        ..Default::default()
    };
    let file = file.canonicalize().unwrap_or(file);
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .envs(inject.environment(|k| std::env::var_os(k)))
        .env(tf_remote::ADDR_ENV, addr.to_string())
        .env(tf_remote::TOKEN_FILE_ENV, &file);
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "tensor-fusion: cannot run {}: {e}",
                command[0].to_string_lossy()
            );
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    Ok(crate::run::exit_code(status))
}
