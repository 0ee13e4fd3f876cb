//! Test support: the real Kubernetes control plane (etcd, kube-apiserver, and on demand
//! kube-scheduler, built from their Go modules by `deploy/testenv/build.sh`) on loopback, once
//! per test binary, with generated certificates.
//!
//! Design rules:
//! - Never an imitation: the binaries are the upstream ones, built at the release pinned in
//!   `deploy/testenv/go.mod`. When they are missing, [`ControlPlane::shared`] builds them (Go is
//!   a prerequisite) or fails with the command to run.
//! - One control plane per test binary, each test in its own namespace ([`ControlPlane::namespace`]).
//! - Children are owned: they are spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so
//!   they die with the test binary; [`Process`] kills its child on drop.
//! - No kubelet: tests create Node objects and the operator's simulated-node agent plays the
//!   kubelet's part for Pod phases (see `tf-operator`'s `agent`).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The directory of the built binaries, building them when absent.
pub fn binaries() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| find_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn find_or_build() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TF_TESTENV_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = repo_root().join("deploy/testenv/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "building the Kubernetes control plane failed ({}); it needs Go (see README, \
             prerequisites). Run `deploy/testenv/build.sh` to see why, or set TF_TESTENV_BIN to a \
             folder holding etcd, kube-apiserver, kube-scheduler and kubectl",
            out.status
        );
    }
    let dir = String::from_utf8(out.stdout)?.trim().to_string();
    Ok(PathBuf::from(dir))
}

/// A free loopback TCP port (bound and released; the window for a race is small).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

// ---------------------------------------------------------------------------------------------
// Processes

enum SpawnMsg {
    Spawn(Box<Command>, mpsc::Sender<std::io::Result<Child>>),
}

/// Spawns children from one thread that lives as long as the process, so that
/// `PR_SET_PDEATHSIG` (which fires when the spawning *thread* exits) kills them only when the
/// test binary exits.
fn spawn(cmd: Command) -> std::io::Result<Child> {
    static TX: OnceLock<Mutex<mpsc::Sender<SpawnMsg>>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnMsg>();
        std::thread::Builder::new()
            .name("tf-test-kube-spawner".into())
            .spawn(move || {
                use std::os::unix::process::CommandExt;
                for SpawnMsg::Spawn(mut cmd, reply) in rx {
                    // SAFETY: the closure runs in the child between fork and exec and calls only
                    // prctl, which is async-signal-safe.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
                // The senders live in a static: the loop ends only with the process.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(SpawnMsg::Spawn(Box::new(cmd), reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}

/// A child process that is killed when dropped; its output goes to a log file.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Process> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = spawn(cmd).with_context(|| format!("starting {name}"))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `n` bytes of the log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(n);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                self.log_tail(4000)
            );
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate authority and what it signed, as PEM.
pub struct Pki {
    /// The CA certificate.
    pub ca_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

/// A certificate and its key, as PEM.
pub struct CertPem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Pki> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Pki {
            ca_pem: cert.pem(),
            ca_params: params,
            ca_key: key,
        })
    }

    /// A serving certificate for loopback (`127.0.0.1`, `localhost`) and `dns` names.
    pub fn server(&self, cn: &str, dns: &[&str]) -> Result<CertPem> {
        let mut names: Vec<String> = vec!["localhost".into()];
        names.extend(dns.iter().map(|s| s.to_string()));
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate for user `cn` in group `org`.
    pub fn client(&self, cn: &str, org: &str) -> Result<CertPem> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertPem> {
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The control plane

static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();

extern "C" fn shared_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(cp)) = SHARED.get() {
            cp.stop();
        }
    });
}

/// etcd and kube-apiserver on loopback, with an admin kubeconfig.
pub struct ControlPlane {
    /// Working folder (certificates, kubeconfig, logs, etcd data).
    pub dir: PathBuf,
    /// Where the binaries are.
    pub bin: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// An admin kubeconfig (group `system:masters`).
    pub kubeconfig: PathBuf,
    /// The cluster's CA.
    pub pki: Pki,
    procs: Mutex<Vec<Process>>,
    _tmp: Option<tempfile::TempDir>,
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use.
    pub fn shared() -> &'static ControlPlane {
        match SHARED.get_or_init(|| {
            let cp = ControlPlane::start().map_err(|e| format!("{e:#}"));
            if cp.is_ok() {
                // A static is never dropped: stop the children and remove the folder at exit.
                // SAFETY: atexit is given a plain `extern "C" fn()` that never unwinds
                // (`shared_at_exit` catches every panic).
                unsafe {
                    libc::atexit(shared_at_exit);
                }
            }
            cp
        }) {
            Ok(cp) => cp,
            Err(e) => panic!("the test control plane did not start: {e}"),
        }
    }

    /// Kills the processes and removes the folder (unless `TF_TESTENV_KEEP` is set).
    fn stop(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        // The API server first, then etcd (the order they were started, reversed).
        while let Some(mut p) = procs.pop() {
            p.kill();
        }
        if std::env::var_os("TF_TESTENV_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Starts etcd and kube-apiserver in a fresh temporary folder and waits until the API
    /// server is ready.
    pub fn start() -> Result<ControlPlane> {
        let bin = binaries()?;
        let tmp = tempfile::Builder::new().prefix("tf-kube-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        // Keep the folder when asked (to read the logs after a failure).
        let keep = std::env::var_os("TF_TESTENV_KEEP").is_some();
        let pki = Pki::new("tensor-fusion-test-ca")?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            Ok(p)
        };
        let ca = write("ca.crt", &pki.ca_pem)?;
        let serving = pki.server("kube-apiserver", &["kubernetes", "kubernetes.default"])?;
        let srv_crt = write("apiserver.crt", &serving.cert)?;
        let srv_key = write("apiserver.key", &serving.key)?;
        let admin = pki.client("admin", "system:masters")?;
        let adm_crt = write("admin.crt", &admin.cert)?;
        let adm_key = write("admin.key", &admin.key)?;
        let sa = KeyPair::generate()?;
        let sa_key = write("sa.key", &sa.serialize_pem())?;
        let sa_pub = write("sa.pub", &sa.public_key_pem())?;

        let mut procs = Vec::new();
        let etcd_port = free_port();
        let peer_port = free_port();
        let mut etcd = Command::new(bin.join("etcd"));
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        etcd.arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn"])
            .args(["--quota-backend-bytes", "4294967296"]);
        procs.push(Process::start("etcd", etcd, &dir.join("etcd.log"))?);

        let port = free_port();
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.args(["--etcd-servers", &client_url])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            .args(["--secure-port", &port.to_string()])
            .arg(format!("--tls-cert-file={}", srv_crt.display()))
            .arg(format!("--tls-private-key-file={}", srv_key.display()))
            .arg(format!("--client-ca-file={}", ca.display()))
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args(["--service-cluster-ip-range", "10.96.0.0/16"])
            .args(["--authorization-mode", "RBAC"])
            .arg("--allow-privileged=true")
            .arg("--endpoint-reconciler-type=none")
            // No controller-manager creates the `default` ServiceAccount of new namespaces.
            .args(["--disable-admission-plugins", "ServiceAccount"])
            .args(["--max-requests-inflight", "2000"])
            .args(["--max-mutating-requests-inflight", "1000"])
            .arg("--enable-priority-and-fairness=false")
            .args(["--v", "1"]);
        procs.push(Process::start(
            "kube-apiserver",
            api,
            &dir.join("kube-apiserver.log"),
        )?);
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    \
                 server: {server}\n    certificate-authority: {}\nusers:\n- name: admin\n  \
                 user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: \
                 test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
                ca.display(),
                adm_crt.display(),
                adm_key.display()
            ),
        )?;
        let cp = ControlPlane {
            dir,
            bin,
            server,
            kubeconfig,
            pki,
            procs: Mutex::new(procs),
            _tmp: if keep {
                let _ = tmp.keep();
                None
            } else {
                Some(tmp)
            },
        };
        cp.wait_ready(Duration::from_secs(120))?;
        Ok(cp)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            {
                let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                for p in procs.iter_mut() {
                    p.check_alive()?;
                }
            }
            let out = self
                .kubectl()
                .args(["get", "--raw", "/readyz"])
                .stderr(Stdio::null())
                .output()?;
            if out.status.success() && out.stdout.starts_with(b"ok") {
                // The default namespace and the built-in RBAC roles exist once ready.
                return Ok(());
            }
            if start.elapsed() > timeout {
                let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                let tails: Vec<String> = procs
                    .iter()
                    .map(|p| format!("{}:\n{}", p.name, p.log_tail(3000)))
                    .collect();
                bail!(
                    "kube-apiserver not ready after {timeout:?}; logs in {}:\n{}",
                    self.dir.display(),
                    tails.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The real kubectl, with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// A client with the admin identity.
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        config.read_timeout = Some(Duration::from_secs(60));
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates a fresh namespace named after `prefix` (unique in this control plane).
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{}-{}-{}",
            prefix.to_lowercase().replace('_', "-"),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let client = self.client().await?;
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(name)
    }

    /// Starts the real kube-scheduler with `config_yaml` (a KubeSchedulerConfiguration; its
    /// `clientConnection.kubeconfig` is filled in). The returned process stops it on drop.
    pub fn start_scheduler(&self, name: &str, config_yaml: &str) -> Result<Process> {
        let mut cfg: serde_yaml::Value = serde_yaml::from_str(config_yaml)?;
        let map = cfg
            .as_mapping_mut()
            .context("the scheduler configuration is a mapping")?;
        let cc = map
            .entry("clientConnection".into())
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
        cc.as_mapping_mut()
            .context("clientConnection is a mapping")?
            .insert(
                "kubeconfig".into(),
                self.kubeconfig.display().to_string().into(),
            );
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::File::create(&path)?.write_all(serde_yaml::to_string(&cfg)?.as_bytes())?;
        let mut cmd = Command::new(self.bin.join("kube-scheduler"));
        cmd.arg(format!("--config={}", path.display()))
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &free_port().to_string()])
            .args(["--v", "2"]);
        Process::start(name, cmd, &self.dir.join(format!("{name}.log")))
    }

    /// Runs `kubectl args…` and returns its output, failing with stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl().args(args).output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// Polls `f` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
