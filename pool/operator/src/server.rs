//! The HTTPS server (rustls) for the admission webhook and the scheduler extender.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cache::Cache;
use crate::extender::{
    BindingArgs, BindingResult, Extender, ExtenderArgs, FilterResult, HostPriority,
};
use crate::webhook::{self, InjectConfig};

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    /// Cluster reads.
    pub cache: Cache,
    /// What the webhook injects.
    pub inject: Arc<InjectConfig>,
    /// The extender.
    pub extender: Extender,
    /// Whether this replica leads (the extender answers only then).
    pub leading: Arc<AtomicBool>,
}

type Review = Json<AdmissionReview<DynamicObject>>;

async fn review(
    body: AdmissionReview<Pod>,
    f: impl AsyncFnOnce(&AdmissionRequest<Pod>) -> AdmissionResponse,
) -> Review {
    let req: AdmissionRequest<Pod> = match body.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    Json(f(&req).await.into_review())
}

async fn mutate(AxState(app): AxState<App>, Json(body): Json<AdmissionReview<Pod>>) -> Review {
    review(body, async |r| {
        webhook::mutate(&app.cache, &app.inject, r).await
    })
    .await
}

async fn validate(AxState(app): AxState<App>, Json(body): Json<AdmissionReview<Pod>>) -> Review {
    review(body, async |r| webhook::validate(&app.cache, r).await).await
}

fn not_leading() -> String {
    "this tensor-fusion operator replica is not the leader".into()
}

async fn filter(AxState(app): AxState<App>, Json(args): Json<ExtenderArgs>) -> Json<FilterResult> {
    if !app.leading.load(Ordering::Acquire) {
        return Json(FilterResult {
            error: not_leading(),
            ..Default::default()
        });
    }
    if let Some(why) = app.extender.gang_hold(&args.pod).await {
        return Json(Extender::refuse_all(args, &why));
    }
    Json(app.extender.filter(args))
}

async fn prioritize(
    AxState(app): AxState<App>,
    Json(args): Json<ExtenderArgs>,
) -> Json<Vec<HostPriority>> {
    if !app.leading.load(Ordering::Acquire) {
        return Json(Vec::new());
    }
    Json(app.extender.prioritize(args))
}

async fn bind(AxState(app): AxState<App>, Json(args): Json<BindingArgs>) -> Json<BindingResult> {
    if !app.leading.load(Ordering::Acquire) {
        return Json(BindingResult {
            error: not_leading(),
        });
    }
    Json(app.extender.bind(args).await)
}

async fn readyz(AxState(app): AxState<App>) -> StatusCode {
    if app.leading.load(Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The routes: `/mutate`, `/validate`, `/scheduler/{filter,prioritize,bind}`, `/healthz`,
/// `/readyz` (ready while leading).
pub fn router(app: App) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/scheduler/filter", post(filter))
        .route("/scheduler/prioritize", post(prioritize))
        .route("/scheduler/bind", post(bind))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// Serves `router` over TLS on `listener` until the task is dropped; dropping it also ends
/// every open connection (a keep-alive connection must not outlive its server).
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, router: Router) {
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let router = router.clone();
                conns.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let svc = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
