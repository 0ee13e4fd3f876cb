//! The gRPC API (generated from `proto/hypervisor.proto`) and a client connector for the Unix
//! socket.

use std::path::{Path, PathBuf};

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("tensorfusion.hypervisor.v1");
}
pub use generated::*;

pub use generated::hypervisor_client::HypervisorClient;
pub use generated::hypervisor_server::{Hypervisor, HypervisorServer};

/// The environment variable naming the daemon's socket for clients.
pub const SOCKET_ENV: &str = "TF_NODE_SOCKET";

/// Where clients find the daemon: `$TF_NODE_SOCKET`, else `/run/tensor-fusion/node.sock` for
/// root, else the user's runtime folder (`$TMPDIR/tensor-fusion-<uid>/node.sock`).
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/tensor-fusion/node.sock");
    }
    std::env::temp_dir()
        .join(format!(
            "tensor-fusion-{}",
            // SAFETY: as above.
            unsafe { libc::getuid() }
        ))
        .join("node.sock")
}

/// A client connected to the daemon's Unix socket at `path`.
pub async fn connect(
    path: &Path,
) -> Result<HypervisorClient<tonic::transport::Channel>, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await?;
    Ok(HypervisorClient::new(channel))
}

/// A client connected over TCP (`http://HOST:PORT`) sending `token` with every call.
pub async fn connect_tcp(
    addr: &str,
    token: &str,
) -> Result<
    HypervisorClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor + Clone,
        >,
    >,
    tonic::transport::Error,
> {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())?
        .connect()
        .await?;
    let value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("Bearer invalid-token"));
    Ok(HypervisorClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        },
    ))
}
