//! Compiles the kubelet APIs the Kubernetes plugins speak (proto/: device plugin v1beta1, DRA
//! v1beta1, plugin registration v1) to Rust with protox, a pure-Rust protobuf compiler: no
//! system `protoc` needed.

fn main() {
    let protos = ["deviceplugin.proto", "dra.proto", "pluginregistration.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    let fds = protox::compile(protos, ["proto"]).expect("the protos in proto/ compile");
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generating the kubelet APIs");
}
