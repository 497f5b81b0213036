//! What the `accel` command and its integration tests share: the kubelet APIs its Kubernetes
//! plugins speak, generated from `proto/` at build time.

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
