//! What the `accel` command and its integration tests share: the kubelet APIs its Kubernetes
//! plugins speak, generated from `proto/` at build time, and gRPC over Unix sockets.

/// The kubelet device plugin API, package `v1beta1`.
#[allow(missing_docs, clippy::all)]
pub mod deviceplugin {
    tonic::include_proto!("v1beta1");
}

/// The kubelet DRA plugin API, package `k8s.io.kubelet.pkg.apis.dra.v1beta1`.
#[allow(missing_docs, clippy::all)]
pub mod dra {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
}

/// The kubelet plugin registration API (plugin watcher), package `pluginregistration`.
#[allow(missing_docs, clippy::all)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// gRPC over Unix sockets, as the kubelet and its plugins speak it.
pub mod grpc {
    use std::path::Path;

    /// A channel to the gRPC server listening on the Unix socket at `path`.
    pub async fn connect(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let path = path.to_path_buf();
        tonic::transport::Endpoint::from_static("http://[::]:0")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
    }

    /// Listens on a Unix socket at `path`, replacing a stale one (a server that went away leaves
    /// its socket file behind).
    pub fn listen(path: &Path) -> std::io::Result<tokio_stream::wrappers::UnixListenerStream> {
        let _ = std::fs::remove_file(path);
        Ok(tokio_stream::wrappers::UnixListenerStream::new(tokio::net::UnixListener::bind(path)?))
    }
}
