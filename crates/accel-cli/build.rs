//! Compiles the kubelet device plugin API (proto/deviceplugin.proto) to Rust with protox, a
//! pure-Rust protobuf compiler: no system `protoc` needed.

fn main() {
    println!("cargo:rerun-if-changed=proto/deviceplugin.proto");
    let fds = protox::compile(["deviceplugin.proto"], ["proto"]).expect("proto/deviceplugin.proto compiles");
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generating the device plugin API");
}
