//! Remote vGPUs end to end, with real processes: a `tensor-fusion worker` on the simulated GPU,
//! and unmodified programs (a C program built against NVIDIA's cuda.h, the same program
//! reaching the driver only through cuGetProcAddress, a cudarc program) run with
//! `tensor-fusion run --remote` over every transport, compared with the same programs run
//! locally; and the faults: a killed worker, killed clients, 64 clients at once, a client over
//! its quota, malformed frames, forged handles, a wrong token.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tf_fake_gpu::testing::{isolated_config, to_toml};
use tf_hal::Backend;
use tf_remote::RemoteBackend;
use tf_remote_protocol::Address;
use tf_remote_protocol::wire::{Header, Msg};
use tf_test_support::{show, test_kernels_ptx as ptx};

const BIN: &str = env!("CARGO_BIN_EXE_tensor-fusion");
const TOKEN: &[u8] = b"remote-test-token";

/// A worker process on its own simulated machine, killed (SIGKILL) when dropped.
struct Worker {
    child: Child,
    addr: Address,
    dir: tempfile::TempDir,
}

impl Worker {
    fn start(transport: &str, tag: &str, extra: &[&str]) -> Worker {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            dir.path().join("gpu.toml"),
            to_toml(&isolated_config(tag, 1)),
        )
        .unwrap();
        let listen = match transport {
            "tcp" => "tcp://127.0.0.1:0".to_string(),
            "unix" => format!("unix://{}", dir.path().join("w.sock").display()),
            _ => format!("shm://{tag}-{}", std::process::id()),
        };
        let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
        let mut child = Command::new(BIN)
            .args(["worker", "--listen", &listen, "--token-file"])
            .arg(&token)
            .args(extra)
            .env("TF_FAKE_GPU_CONFIG", dir.path().join("gpu.toml"))
            .env("TF_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let at = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("the worker did not start: {line:?}"));
        Worker {
            child,
            addr: at.parse().unwrap(),
            dir,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("gpu.toml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    fn backend(&self) -> RemoteBackend {
        RemoteBackend::connect(&self.addr, TOKEN).expect("connect to the worker")
    }

    /// `tensor-fusion run --remote` with this worker.
    fn run(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(["run", "--remote", &self.addr.to_string(), "--token-file"])
            .arg(self.token_file())
            .arg("--")
            .arg(program)
            .args(args);
        c
    }

    /// A program started directly on the client stub (its own process, no `run` in between).
    fn direct(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .env("LD_LIBRARY_PATH", &programs().remote_lib)
            .env("TF_REMOTE", self.addr.to_string())
            .env("TF_REMOTE_TOKEN_FILE", self.token_file());
        c
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
        // A SIGKILLed worker leaves its shm:// socket file behind (the next bind would replace
        // it); tests leave nothing.
        if let Address::Shm(n) = &self.addr
            && let Ok(p) = Address::shm_socket(n)
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The C programs, built once against NVIDIA's cuda.h and linked with -lcuda.
struct Programs {
    vector_add: PathBuf,
    procaddr: PathBuf,
    client: PathBuf,
    nvml: PathBuf,
    unsupported: PathBuf,
    /// libcuda.so.1 of the simulated GPU (for the local runs).
    local_lib: PathBuf,
    /// libcuda.so.1 of the client stub (for programs started without `run`).
    remote_lib: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tf_test_support::scratch_dir("remote-programs");
        let local = dir.join("local");
        std::fs::create_dir_all(&local).unwrap();
        let fake = tf_test_support::cdylib("libcuda.so").expect("the simulated libcuda is built");
        for n in ["libcuda.so", "libcuda.so.1"] {
            let _ = std::os::unix::fs::symlink(&fake, local.join(n));
        }
        let remote = dir.join("remote");
        std::fs::create_dir_all(&remote).unwrap();
        let stub =
            tf_test_support::cdylib("libtf_remote_cuda.so").expect("the client stub is built");
        for n in [
            "libcuda.so",
            "libcuda.so.1",
            "libnvidia-ml.so",
            "libnvidia-ml.so.1",
        ] {
            let _ = std::os::unix::fs::symlink(&stub, remote.join(n));
        }
        let inc = tf_test_support::cuda_include_dir().expect("NVIDIA headers");
        let build_with = |name: &str, src: PathBuf, libs: &Path, lib: &str| {
            let exe = dir.join(name);
            let out = Command::new("cc")
                .args(["-O1", "-Wall", "-Werror", "-o"])
                .arg(&exe)
                .arg(&src)
                .arg("-I")
                .arg(&inc)
                .arg("-I")
                .arg(tf_test_support::workspace_root().join("hal/kernels"))
                .arg("-L")
                .arg(libs)
                .args([lib, "-ldl", "-lpthread"])
                .output()
                .unwrap();
            assert!(out.status.success(), "building {name}: {}", show(&out));
            exe
        };
        let build = |name: &str, src: PathBuf| build_with(name, src, &local, "-lcuda");
        let c = tf_test_support::workspace_root().join("fake-gpu/libcuda/tests/c");
        Programs {
            vector_add: build("vector_add", c.join("vector_add.c")),
            procaddr: build("procaddr_vector_add", c.join("procaddr_vector_add.c")),
            client: build(
                "remote_client",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/remote_client.c"),
            ),
            unsupported: build("unsupported", c.join("unsupported.c")),
            nvml: build_with(
                "remote_nvml",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/remote_nvml.c"),
                &remote,
                "-lnvidia-ml",
            ),
            local_lib: local,
            remote_lib: remote,
        }
    })
}

fn cudarc_program() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/cudarc_vector_add");
    assert!(
        p.exists(),
        "{} is not built (cargo test --workspace builds it; or cargo build -p tf-fake-libcuda --example cudarc_vector_add)",
        p.display()
    );
    p
}

/// The lines of a program's output that do not depend on timing or on who else uses the device.
fn results(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // vector_add's last line carries the kernel's time and the free memory.
            l.split(", kernel").next().unwrap_or(l).to_string()
        })
        .map(|l| {
            // cudarc's JSON: keep what is not a timing or free-memory figure.
            match serde_json::from_str::<serde_json::Value>(&l) {
                Ok(mut v) => {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("kernel_ms");
                        o.remove("free");
                    }
                    v.to_string()
                }
                Err(_) => l,
            }
        })
        .collect()
}

fn local(p: &Programs, w: &Worker, program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("LD_LIBRARY_PATH", &p.local_lib)
        .env("TF_FAKE_GPU_CONFIG", w.config())
        .output()
        .unwrap()
}

#[test]
fn programs_give_the_same_results_remote_as_local_over_every_transport() {
    let p = programs();
    let ptx = ptx();
    let ptx = ptx.to_str().unwrap();
    let cudarc = cudarc_program();
    for transport in ["shm", "unix", "tcp"] {
        let w = Worker::start(transport, &format!("same-{transport}"), &[]);
        let cases: [(&Path, Vec<&str>, &str); 3] = [
            (
                &p.vector_add,
                vec![ptx, "300007"],
                "OK 300007 elements checked",
            ),
            (
                &p.procaddr,
                vec![ptx, "200000"],
                "OK 200000 elements checked through cuGetProcAddress",
            ),
            (&cudarc, vec!["100000"], "\"checked\": 100000"),
        ];
        for (program, args, ok) in cases {
            let remote = w.run(program, &args).output().unwrap();
            assert!(
                remote.status.success() && String::from_utf8_lossy(&remote.stdout).contains(ok),
                "{transport} {}: {}",
                program.display(),
                show(&remote)
            );
            let here = local(p, &w, program, &args);
            assert!(here.status.success(), "local: {}", show(&here));
            assert_eq!(
                results(&remote),
                results(&here),
                "{transport} {}: remote and local differ",
                program.display()
            );
        }
    }
}

#[test]
fn killing_the_worker_fails_the_next_call_within_a_second() {
    let p = programs();
    for transport in ["shm", "tcp"] {
        let mut w = Worker::start(transport, &format!("kill-{transport}"), &[]);
        let mut client = w
            .run(&p.client, &["wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(client.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{transport}");
        w.kill();
        let t = Instant::now();
        writeln!(client.stdin.as_mut().unwrap(), "go").unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let status = client.wait().unwrap();
        let waited = t.elapsed();
        assert!(status.success(), "{transport}: {rest}");
        assert!(
            rest.contains("rc CUDA_ERROR_DEVICE_UNAVAILABLE"),
            "{transport}: {rest}"
        );
        assert!(
            waited < Duration::from_secs(1),
            "{transport}: the call took {waited:?} to fail"
        );
    }
}

#[test]
fn killing_a_client_frees_everything_it_held_on_the_worker() {
    let p = programs();
    let w = Worker::start("shm", "killclient", &[]);
    let watcher = w.backend();
    let dev = watcher.device(0).unwrap();
    let before = dev.memory().unwrap().used_bytes;
    let mut clients: Vec<Child> = (0..3)
        .map(|_| {
            w.direct(&p.client, &["hold", "256"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut clients {
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "held");
    }
    let held = dev.memory().unwrap().used_bytes;
    assert!(held >= before + ((3 * 256) << 20), "{before} -> {held}");
    for c in &mut clients {
        c.kill().unwrap(); // SIGKILL
        let _ = c.wait();
    }
    let t = Instant::now();
    loop {
        let now = dev.memory().unwrap().used_bytes;
        if now == before {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "memory not given back: {before} before, {now} now\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The worker logs each client's end (just after giving its memory back).
    let t = Instant::now();
    while w.log().matches("everything it held is released").count() < 3 {
        assert!(t.elapsed() < Duration::from_secs(3), "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sixty_four_clients_at_once_all_complete_with_correct_results() {
    let p = programs();
    let w = Worker::start("shm", "many", &[]);
    let ptx = ptx();
    let kids: Vec<Child> = (0..64)
        .map(|_| {
            w.run(&p.vector_add, &[ptx.to_str().unwrap(), "20000"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("OK 20000 elements checked"),
            "{}",
            show(&out)
        );
    }
}

#[test]
fn a_client_over_its_quota_gets_out_of_memory_and_the_worker_is_unaffected() {
    let p = programs();
    let w = Worker::start("tcp", "quota", &["--vram", "1GiB"]);
    let out = w.run(&p.client, &["oom", "64"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("allocated 16 then CUDA_ERROR_OUT_OF_MEMORY, total 1024 MiB"),
        "{s}"
    );
    let ok = w
        .run(&p.vector_add, &[ptx().to_str().unwrap(), "1000"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", show(&ok));
    // NVML through the stub sees the vGPU: its quota as the total.
    let nv = w.direct(&p.nvml, &[]).output().unwrap();
    let text = String::from_utf8_lossy(&nv.stdout);
    assert!(
        nv.status.success()
            && text.contains("NVIDIA H100 80GB HBM3 GPU-")
            && text.contains("total 1024 MiB"),
        "{}",
        show(&nv)
    );
    let devs = Command::new(BIN)
        .args([
            "devices",
            "--backend",
            "remote",
            "--remote",
            &w.addr.to_string(),
        ])
        .arg("--token-file")
        .arg(w.token_file())
        .output()
        .unwrap();
    assert!(devs.status.success(), "{}", show(&devs));
    assert!(
        String::from_utf8_lossy(&devs.stdout).contains(" 1 GiB "),
        "{}",
        show(&devs)
    );
}

/// A raw connection that has passed the handshake.
fn raw_session(w: &Worker) -> std::net::TcpStream {
    let Address::Tcp(hp) = &w.addr else {
        unreachable!()
    };
    let mut s = std::net::TcpStream::connect(hp.as_str()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut f = Vec::new();
    Msg::Hello {
        version: tf_remote_protocol::VERSION,
        token: TOKEN,
    }
    .frame(0, &mut f);
    s.write_all(&f).unwrap();
    let (m, _) = read_frame(&mut s).expect("a welcome");
    assert_eq!(m.0, 2, "welcome");
    s
}

/// A frame read raw: (tag, message bytes), bulk data.
type RawFrame = ((u16, Vec<u8>), Vec<u8>);

/// Read one frame, or None at EOF.
fn read_frame(s: &mut impl Read) -> Option<RawFrame> {
    let mut h = [0u8; 12];
    s.read_exact(&mut h).ok()?;
    let h = Header::decode(&h).ok()?;
    let mut m = vec![0u8; h.msg_len as usize];
    s.read_exact(&mut m).ok()?;
    let mut d = vec![0u8; h.data_len as usize];
    s.read_exact(&mut d).ok()?;
    Some(((h.tag, m), d))
}

/// After a bad frame: a `Failed` naming the protocol error (when the frame could be read),
/// then the connection closed.
fn expect_protocol_error_and_close(mut s: std::net::TcpStream, what: &str) {
    let mut saw_error = false;
    while let Some(((tag, m), _)) = read_frame(&mut s) {
        let msg = Msg::decode(tag, &m).unwrap();
        let e = msg
            .to_error()
            .unwrap_or_else(|| panic!("{what}: got {msg:?}"));
        assert!(e.message.contains("protocol error"), "{what}: {e}");
        saw_error = true;
    }
    let mut b = [0u8; 1];
    assert!(
        matches!(s.read(&mut b), Ok(0) | Err(_)),
        "{what}: the connection stayed open"
    );
    let _ = saw_error;
}

#[test]
fn malformed_frames_close_the_connection_and_the_worker_serves_the_others() {
    let w = Worker::start("tcp", "frames", &[]);
    let good = w.backend();
    let ctx = good.device(0).unwrap().create_context().unwrap();
    let p = ctx.mem_alloc(4096).unwrap();
    ctx.copy_htod(p, &[7u8; 4096]).unwrap();

    // Oversized: a message longer than the protocol allows.
    let mut s = raw_session(&w);
    s.write_all(
        &Header {
            tag: 10,
            msg_len: 1 << 30,
            data_len: 0,
        }
        .encode(),
    )
    .unwrap();
    expect_protocol_error_and_close(s, "oversized");

    // Truncated: a launch cut short, then nothing more.
    let mut s = raw_session(&w);
    let mut f = Vec::new();
    Msg::MemAlloc { ctx: 1, bytes: 1 }.frame(0, &mut f);
    f[4..8].copy_from_slice(&4u32.to_le_bytes()); // claims 4 bytes of message: too short
    f.truncate(12 + 4);
    s.write_all(&f).unwrap();
    expect_protocol_error_and_close(s, "truncated message");

    // A frame cut off in the middle, the sender gone.
    let mut s = raw_session(&w);
    let mut f = Vec::new();
    Msg::Ping { n: 1 }.frame(0, &mut f);
    s.write_all(&f[..f.len() - 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    expect_protocol_error_and_close(s, "cut frame");

    // Random bytes, before and after a handshake.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for _ in 0..20 {
        let mut s = raw_session(&w);
        s.write_all(&random(512)).unwrap();
        expect_protocol_error_and_close(s, "random");
    }
    let Address::Tcp(hp) = &w.addr else {
        unreachable!()
    };
    let mut s = std::net::TcpStream::connect(hp.as_str()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&random(4096)).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);

    // The well-behaved client never noticed.
    let mut back = [0u8; 4096];
    ctx.copy_dtoh(&mut back, p).unwrap();
    assert_eq!(back, [7u8; 4096]);
    assert_eq!(good.connection().ping(42).unwrap(), 42);
    let log = w.log();
    assert!(log.contains("sent a bad frame"), "{log}");
}

#[test]
fn one_client_cannot_reach_another_clients_objects() {
    let w = Worker::start("tcp", "forged", &[]);
    let a = w.backend();
    let actx = a.device(0).unwrap().create_context().unwrap();
    let secret = actx.mem_alloc(4096).unwrap();
    actx.copy_htod(secret, &[0x42u8; 4096]).unwrap();
    let module = actx
        .load_module(tf_hal::ModuleImage::Ptx(tf_hal::TEST_KERNELS_PTX))
        .unwrap();
    let fill = actx.function(module, "tf_fill_u32").unwrap();
    let s = actx.stream_create().unwrap();

    let ptr_bytes = secret.0.to_le_bytes();
    let one = 1u32.to_le_bytes();
    // Client B speaks the protocol directly, naming A's objects.
    let mut b = raw_session(&w);
    let call = |b: &mut std::net::TcpStream, m: Msg<'_>| {
        let mut f = Vec::new();
        m.frame(0, &mut f);
        b.write_all(&f).unwrap();
    };
    let answer = |b: &mut std::net::TcpStream| {
        let ((tag, m), _) = read_frame(b).expect("an answer");
        Msg::decode(tag, &m).unwrap().to_error()
    };
    call(&mut b, Msg::ContextCreate { ctx: 7, device: 0 });
    assert_eq!(answer(&mut b), None);
    // A's memory by address: refused.
    call(
        &mut b,
        Msg::CopyDtoH {
            ctx: 7,
            stream: 0,
            src: secret.0,
            len: 4096,
            flags: 0,
        },
    );
    let e = answer(&mut b).expect("reading another client's memory must fail");
    assert!(e.message.contains("not memory of this client"), "{e}");
    // A's function, stream and allocation, and a context of A's: asynchronous calls whose
    // errors come back with the next synchronous one.
    for (m, want) in [
        (
            Msg::Launch {
                ctx: 7,
                function: fill.0,
                stream: 0,
                grid: [1, 1, 1],
                block: [1, 1, 1],
                shared: 0,
                args: tf_remote_protocol::wire::Args(vec![&ptr_bytes[..], &[0u8; 4][..], &one[..]]),
            },
            "unknown function",
        ),
        (
            Msg::StreamDestroy {
                ctx: 7,
                stream: s.0,
            },
            "unknown stream",
        ),
        (
            Msg::MemFree {
                ctx: 7,
                ptr: secret.0,
            },
            "not the start of an allocation",
        ),
        (
            Msg::Memset {
                ctx: 7,
                stream: 0,
                dst: secret.0,
                value: 0,
                width: 1,
                count: 16,
                flags: 0,
            },
            "not memory of this client",
        ),
        (Msg::Synchronize { ctx: 1 }, "unknown context"),
    ] {
        call(&mut b, m);
        call(&mut b, Msg::Synchronize { ctx: 7 });
        let e = answer(&mut b).unwrap_or_else(|| panic!("{want}: accepted"));
        assert!(e.message.contains(want), "{want}: {e}");
    }
    // A's objects are untouched and still work.
    let mut back = [0u8; 4096];
    actx.copy_dtoh(&mut back, secret).unwrap();
    assert_eq!(back, [0x42u8; 4096]);
    actx.launch(
        fill,
        &tf_hal::LaunchConfig::single(),
        s,
        &tf_hal::KernelArgs::new().ptr(secret).u32(9).u32(1),
    )
    .unwrap();
    actx.stream_synchronize(s).unwrap();
    actx.copy_dtoh(&mut back[..4], secret).unwrap();
    assert_eq!(u32::from_le_bytes(back[..4].try_into().unwrap()), 9);
}

#[test]
fn a_wrong_token_is_refused_and_logged() {
    let w = Worker::start("unix", "token", &[]);
    let e = RemoteBackend::connect(&w.addr, b"not-the-token")
        .err()
        .expect("a wrong token must be refused");
    assert!(e.to_string().contains("refused the token"), "{e}");
    use std::os::unix::fs::PermissionsExt;
    let bad = w.dir.path().join("bad-token");
    std::fs::write(&bad, "nope").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--remote", &w.addr.to_string(), "--token-file"])
        .arg(&bad)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the token"),
        "{}",
        show(&out)
    );
    // The worker logged both refusals and still serves.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        w.log().matches("connection refused: wrong token").count(),
        2,
        "{}",
        w.log()
    );
    assert_eq!(w.backend().connection().ping(1).unwrap(), 1);
}

#[test]
fn nvidia_cuda_python_bindings_run_remotely() {
    let site = tf_test_support::python_packages(&["cuda-bindings==12.9.4"])
        .expect("pip install cuda-bindings");
    let w = Worker::start("shm", "python", &[]);
    let script =
        tf_test_support::workspace_root().join("fake-gpu/libcuda/tests/py/cuda_python_client.py");
    let python = tf_test_support::python();
    let out = w
        .run(
            Path::new(&python),
            &[script.to_str().unwrap(), ptx().to_str().unwrap()],
        )
        .env("PYTHONPATH", &site)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["devices"], 1);
    assert_eq!(v["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(v["sms"], 132);
    assert_eq!(v["bad"], 0);
    assert_eq!(v["elements"], 50_000);
}

#[test]
fn the_worker_holds_a_client_to_its_compute_share() {
    // 1 ms kernels back to back: about 1000 a second alone on the simulated device; the worker
    // paces them to 30 % (loose bounds: this machine is shared).
    let w = Worker::start("shm", "share", &["--compute-percent", "30"]);
    let out = w
        .run(Path::new(BIN), &["cuda-probe", "busy", "3", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rate = v["kernels_per_s"].as_f64().unwrap();
    assert!(
        (200.0..=420.0).contains(&rate),
        "{rate} kernels/s under a 30 % share of ~1000/s"
    );
}

#[test]
fn unsupported_functions_say_so_once_and_bad_handles_are_errors() {
    let p = programs();
    let w = Worker::start("unix", "unsupported", &[]);
    let out = w.direct(&p.unsupported, &[]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("cuGraphicsMapResources is not supported")
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn a_peer_of_another_protocol_version_is_refused_with_the_fix() {
    let w = Worker::start("tcp", "version", &[]);
    let Address::Tcp(hp) = &w.addr else {
        unreachable!()
    };
    let mut s = std::net::TcpStream::connect(hp.as_str()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut f = Vec::new();
    Msg::Hello {
        version: tf_remote_protocol::VERSION + 1,
        token: TOKEN,
    }
    .frame(0, &mut f);
    s.write_all(&f).unwrap();
    let ((tag, m), _) = read_frame(&mut s).expect("an answer");
    match Msg::decode(tag, &m).unwrap() {
        Msg::Refused { reason, message } => {
            assert_eq!(reason, tf_remote_protocol::wire::refusal::VERSION);
            assert!(message.contains("same tensor-fusion release"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(read_frame(&mut s).is_none(), "the connection stays open");
}
