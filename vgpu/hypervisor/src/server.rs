//! The API service over the [`Node`], and the daemon's listeners: the Unix socket, optionally
//! TCP with a token, and the metrics endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::api::{self, Hypervisor, HypervisorServer};
use crate::node::Node;

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    node: Arc<Node>,
}

impl Service {
    pub fn new(node: Arc<Node>) -> Service {
        Service { node }
    }
}

/// The caller's pid in our namespace, from the socket's peer credentials.
fn peer_pid<T>(req: &Request<T>) -> Option<u32> {
    req.extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::node::Refusal> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}

type AttachStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<api::AttachUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Hypervisor for Service {
    async fn list_devices(
        &self,
        _: Request<api::ListDevicesRequest>,
    ) -> Result<Response<api::ListDevicesResponse>, Status> {
        let node = self.node.clone();
        let devices = blocking(move || Ok(node.list_devices())).await?;
        Ok(Response::new(api::ListDevicesResponse { devices }))
    }

    async fn create_vgpu(
        &self,
        req: Request<api::CreateVgpuRequest>,
    ) -> Result<Response<api::Vgpu>, Status> {
        let node = self.node.clone();
        let r = req.into_inner();
        let v = blocking(move || node.create(&r)).await?;
        Ok(Response::new(v))
    }

    async fn remove_vgpu(
        &self,
        req: Request<api::RemoveVgpuRequest>,
    ) -> Result<Response<api::RemoveVgpuResponse>, Status> {
        let node = self.node.clone();
        let r = req.into_inner();
        blocking(move || node.remove(&r.name, r.force)).await?;
        Ok(Response::new(api::RemoveVgpuResponse {}))
    }

    async fn list_vgpus(
        &self,
        _: Request<api::ListVgpusRequest>,
    ) -> Result<Response<api::ListVgpusResponse>, Status> {
        let node = self.node.clone();
        let vgpus = blocking(move || Ok(node.list())).await?;
        Ok(Response::new(api::ListVgpusResponse { vgpus }))
    }

    type AttachStream = AttachStream;

    async fn attach(
        &self,
        req: Request<api::AttachRequest>,
    ) -> Result<Response<AttachStream>, Status> {
        let pid = peer_pid(&req).unwrap_or(req.get_ref().pid);
        let (first, rx, guard) = self.node.attach(&req.get_ref().name, pid)?;
        let rest = tokio_stream::wrappers::WatchStream::from_changes(rx);
        let stream = tokio_stream::once(first).chain(rest).map(move |u| {
            let _attached = &guard; // detaches when the stream is dropped
            Ok(u)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What [`serve`] listens on.
#[derive(Debug, Clone)]
pub struct Listen {
    pub socket: PathBuf,
    /// TCP, with the token every call must carry (`authorization: Bearer <token>`).
    pub tcp: Option<(SocketAddr, String)>,
    /// The metrics endpoint (`GET /metrics`).
    pub metrics: Option<SocketAddr>,
}

/// Serve the API and the metrics until `shutdown` resolves; the socket file is removed at the
/// end. `ready` is called with the bound metrics address once everything listens.
pub async fn serve(
    node: Arc<Node>,
    listen: Listen,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(Option<SocketAddr>),
) -> Result<(), String> {
    crate::node::prepare_socket(&listen.socket)?;
    let uds = tokio::net::UnixListener::bind(&listen.socket)
        .map_err(|e| format!("binding {}: {e}", listen.socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&listen.socket, std::fs::Permissions::from_mode(0o600));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    let svc = Service::new(node.clone());
    {
        let svc = svc.clone();
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(HypervisorServer::new(svc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(uds),
                    stopped(rx),
                )
                .await
                .map_err(|e| format!("API on the Unix socket: {e}"))
        });
    }
    if let Some((addr, token)) = listen.tcp.clone() {
        let expected = format!("Bearer {token}");
        let check = move |req: Request<()>| -> Result<Request<()>, Status> {
            let ok = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()));
            if ok {
                Ok(req)
            } else {
                tracing::warn!("a TCP call without the right token was refused");
                Err(Status::unauthenticated(
                    "missing or wrong token: send `authorization: Bearer <token>` with the daemon's token",
                ))
            }
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        let rx = stop_rx.clone();
        let svc = svc.clone();
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(HypervisorServer::with_interceptor(svc, check))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stopped(rx),
                )
                .await
                .map_err(|e| format!("API on TCP: {e}"))
        });
    }
    let mut metrics_addr = None;
    if let Some(addr) = listen.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding the metrics address {addr}: {e}"))?;
        metrics_addr = listener.local_addr().ok();
        let node = node.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let node = node.clone();
                async move {
                    let text = tokio::task::spawn_blocking(move || {
                        let (d, v) = node.snapshot();
                        crate::metrics::encode(&d, &v)
                    })
                    .await
                    .unwrap_or_default();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        );
        let rx = stop_rx.clone();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped(rx))
                .await
                .map_err(|e| format!("metrics: {e}"))
        });
    }
    ready(metrics_addr);
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        },
    };
    let _ = stop_tx.send(true);
    // Attach streams never end by themselves: give the servers a moment, then go.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&listen.socket);
    node.shutdown();
    result
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
