//! What the `accel` command and its integration tests share: the kubelet device plugin API
//! (v1beta1, generated from `proto/deviceplugin.proto` at build time).

/// The kubelet device plugin API, package `v1beta1`.
#[allow(missing_docs, clippy::all)]
pub mod deviceplugin {
    tonic::include_proto!("v1beta1");
}
