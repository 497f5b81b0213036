//! `accel k8s device-plugin` against a real gRPC peer playing the kubelet over Unix sockets:
//! registration of one resource per driver, ListAndWatch with health from RAS, preferred
//! allocation, and Allocate giving a container a namespace of exactly its devices (as a CDI
//! device whose spec is on disk, and as env and mount edits).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use accel_cli::deviceplugin::device_plugin_client::DevicePluginClient;
use accel_cli::deviceplugin::registration_server::{Registration, RegistrationServer};
use accel_cli::deviceplugin::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty, PreferredAllocationRequest,
    RegisterRequest,
};
use accel_uapi::{Reply, Request};
use common::Daemon;
use tokio::sync::mpsc;

/// The kubelet's registration service: passes each request on.
struct Kubelet(mpsc::UnboundedSender<RegisterRequest>);

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, req: tonic::Request<RegisterRequest>) -> Result<tonic::Response<Empty>, tonic::Status> {
        let _ = self.0.send(req.into_inner());
        Ok(tonic::Response::new(Empty {}))
    }
}

/// The plugin process, killed on drop.
struct Plugin(Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn channel(path: &Path) -> tonic::transport::Channel {
    accel_cli::grpc::connect(path).await.unwrap()
}

/// A short directory under the temporary directory (socket paths must stay short), removed when
/// the test ends.
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("accel-dp-{name}-")).tempdir().unwrap()
}

/// Serves the kubelet's registration socket in `plugins`, starts the plugin with `args`, and
/// waits for `n` registrations.
async fn start(d: &Daemon, plugins: &Path, cdi: &Path, args: &[&str], n: usize) -> (Plugin, Vec<RegisterRequest>) {
    let (tx, mut registered) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Kubelet(tx)))
            .serve_with_incoming(accel_cli::grpc::listen(&plugins.join("kubelet.sock")).unwrap()),
    );
    let plugin = Plugin(
        Command::new(common::accel_bin())
            .arg("--socket")
            .arg(d.socket())
            .args(["k8s", "device-plugin"])
            .args(args)
            .arg("--plugin-dir")
            .arg(plugins)
            .arg("--cdi-dir")
            .arg(cdi)
            .env("ACCEL_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let mut regs = Vec::new();
    for _ in 0..n {
        regs.push(tokio::time::timeout(Duration::from_secs(20), registered.recv()).await.unwrap().unwrap());
    }
    (plugin, regs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_sees_devices_health_and_gets_namespaced_allocations() {
    let d = Daemon::start(&["testdev", "cpu"]);
    let (plugins_dir, cdi_dir) = (tempdir("plugins"), tempdir("cdi"));
    let (plugins, cdi) = (plugins_dir.path().to_path_buf(), cdi_dir.path().to_path_buf());
    let (_plugin, mut regs) = start(&d, &plugins, &cdi, &["--poll-ms", "200"], 2).await;
    regs.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
    let names: Vec<_> = regs.iter().map(|r| (r.resource_name.as_str(), r.endpoint.as_str())).collect();
    assert_eq!(names, [("accel.dev/cpu", "accel-cpu.sock"), ("accel.dev/testdev", "accel-testdev.sock")]);
    assert!(regs.iter().all(|r| r.version == "v1beta1"));
    assert!(regs.iter().all(|r| r.options.as_ref().is_some_and(|o| o.get_preferred_allocation_available)));

    let mut testdev = DevicePluginClient::new(channel(&plugins.join("accel-testdev.sock")).await);
    let options = testdev.get_device_plugin_options(Empty {}).await.unwrap().into_inner();
    assert!(!options.pre_start_required);

    // ListAndWatch: accel0 (testdev), healthy.
    let mut watch = testdev.list_and_watch(Empty {}).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    let seen: Vec<_> = first.devices.iter().map(|d| (d.id.as_str(), d.health.as_str())).collect();
    assert_eq!(seen, [("accel0", "Healthy")]);

    // Preferred allocation: what must be included, then the lowest minors.
    let pref = testdev
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: vec!["accel7".into(), "accel0".into(), "accel3".into()],
                must_include_device_i_ds: vec!["accel3".into()],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pref.container_responses[0].device_i_ds, ["accel3", "accel0"]);

    // Allocate: a namespace of exactly accel0, as a CDI device and as env + mount.
    let alloc = testdev
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: vec!["accel0".into()] }],
        })
        .await
        .unwrap()
        .into_inner();
    let c = &alloc.container_responses[0];
    assert_eq!(c.cdi_devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["accel.dev/device=k8s-accel0"]);
    assert_eq!(c.envs["ACCEL_SOCKET"], "/run/accel/accel.sock");
    assert_eq!(c.mounts[0].host_path, d.socket().display().to_string());
    let token = c.envs["ACCEL_NS_TOKEN"].clone();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cdi.join("accel-k8s.json")).unwrap()).unwrap();
    assert_eq!(spec["kind"], "accel.dev/device");
    assert_eq!(spec["devices"][0]["name"], "k8s-accel0");
    let env = spec["devices"][0]["containerEdits"]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e.as_str() == Some(&format!("ACCEL_NS_TOKEN={token}"))), "{env:?}");

    // The container's token sees accel0 and nothing else, and can use it.
    let mut conn = accel::Connection::connect_with_token(d.socket(), Some(&token)).unwrap();
    let Reply::Devices(visible) = conn.call(&Request::ListDevices).unwrap() else { panic!("devices") };
    assert_eq!(visible.iter().map(|v| v.driver.as_str()).collect::<Vec<_>>(), ["testdev"]);
    let dev = accel::Device::open_with_token(d.socket(), 0, &token).unwrap();
    dev.create_queue().unwrap().submit(accel::Op::Nop).unwrap().wait().unwrap();
    // Allocating the same set again reuses the namespace (no leak per container).
    testdev
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: vec!["accel0".into()] }],
        })
        .await
        .unwrap();
    let mut admin = common::admin(&d);
    let Reply::Namespaces(all) = admin.call(&Request::NsList).unwrap() else { panic!("namespaces") };
    assert_eq!(all.iter().filter(|n| n.name.starts_with("k8s-")).count(), 1);

    // A fatal RAS error on accel0: ListAndWatch reports it Unhealthy.
    let injected = Command::new(common::accel_bin())
        .arg("--socket")
        .arg(d.socket())
        .args(["ras", "inject", "--device", "0", "--node", "compute", "--error", "fatal"])
        .status()
        .unwrap();
    assert!(injected.success());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
    let seen: Vec<_> = next.devices.iter().map(|d| (d.id.as_str(), d.health.as_str())).collect();
    assert_eq!(seen, [("accel0", "Unhealthy")]);

    // An unknown device is refused with the reason.
    let err = testdev
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: vec!["gpu9".into()] }],
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("gpu9"), "{err:?}");
}

/// Checks a DaemonSet of dist/kubernetes/: it runs `accel k8s <plugin>` with flags the
/// binary has, and mounts from the host every directory those flags name, and the daemon's
/// socket directory.
fn check_daemonset(ds: &serde_yaml_ng::Value, plugin: &str) {
    assert_eq!((ds["apiVersion"].as_str(), ds["kind"].as_str()), (Some("apps/v1"), Some("DaemonSet")));
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(ds["spec"]["selector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"]);
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[2..4], ["k8s", plugin]);
    let help = Command::new(common::accel_bin()).args(["k8s", plugin, "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in args.iter().filter(|a| a.starts_with("--") && **a != "--socket") {
        assert!(help.contains(flag), "{flag} is not a flag of accel k8s {plugin}");
    }
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let volumes = spec["volumes"].as_sequence().unwrap();
    let host_path_of = |path: &str| {
        let m = mounts.iter().find(|m| m["mountPath"].as_str() == Some(path))?;
        let v = volumes.iter().find(|v| v["name"] == m["name"])?;
        v["hostPath"]["path"].as_str().map(str::to_string)
    };
    for (flag, path) in args.iter().zip(args.iter().skip(1)).filter(|(f, _)| f.starts_with("--") && f.ends_with("dir"))
    {
        assert_eq!(host_path_of(path).as_deref(), Some(*path), "{flag} {path} comes from the host");
    }
    let socket = args[args.iter().position(|a| *a == "--socket").unwrap() + 1];
    let socket_dir = Path::new(socket).parent().unwrap().to_str().unwrap();
    assert_eq!(host_path_of(socket_dir).as_deref(), Some(socket_dir), "the daemon's socket directory is mounted");
}

fn manifests(name: &str) -> Vec<serde_yaml_ng::Value> {
    let path = format!("{}/../../dist/kubernetes/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

#[test]
fn the_daemonset_manifests_match_the_plugins() {
    let dp = manifests("device-plugin.yaml");
    check_daemonset(&dp[0], "device-plugin");
    let dra = manifests("dra-plugin.yaml");
    let kinds: Vec<&str> = dra.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["DeviceClass", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]);
    check_daemonset(&dra[4], "dra-plugin");
    // The DeviceClass selects this driver's devices; the plugin may read claims.
    assert!(dra[0]["spec"]["selectors"][0]["cel"]["expression"].as_str().unwrap().contains("\"accel.dev\""));
    let rules = dra[2]["rules"].as_sequence().unwrap();
    assert!(rules.iter().any(|r| r["resources"][0] == "resourceclaims" && r["verbs"][0] == "get"));
    assert_eq!(dra[4]["spec"]["template"]["spec"]["serviceAccountName"], dra[1]["metadata"]["name"]);
}

/// The manifests against Kubernetes' own schemas (`kubernetes-validate`, strict: unknown fields
/// are errors), for the release that brought DRA's v1beta1 API and for the newest it knows. Skips
/// with the reason when the validator is not installed, unless `ACCEL_REQUIRE_KUBE_VALIDATE` is
/// set (CI sets it).
#[test]
fn the_manifests_validate_against_kubernetes_schemas() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/kubernetes");
    let files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for version in [Some("1.32.0"), None] {
        let mut cmd = Command::new("kubernetes-validate");
        cmd.arg("--strict");
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = match cmd.args(&files).output() {
            Ok(out) => out,
            Err(e) => {
                assert!(std::env::var_os("ACCEL_REQUIRE_KUBE_VALIDATE").is_none(), "kubernetes-validate: {e}");
                eprintln!("skipping: kubernetes-validate is not installed ({e}): pip install kubernetes-validate");
                return;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        // Six resources in the two files, each reported as passed.
        assert_eq!(text.matches(" passed for resource ").count(), 6, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_are_a_resource_of_their_own_with_a_slice_of_the_device() {
    let d = Daemon::start(&["testdev"]);
    let (plugins_dir, cdi_dir) = (tempdir("share-plugins"), tempdir("share-cdi"));
    let (plugins, cdi) = (plugins_dir.path().to_path_buf(), cdi_dir.path().to_path_buf());
    let (_plugin, regs) = start(&d, &plugins, &cdi, &["--share", "testdev=4"], 2).await;
    let mut names: Vec<_> = regs.into_iter().map(|r| r.resource_name).collect();
    names.sort();
    assert_eq!(names, ["accel.dev/testdev", "accel.dev/testdev-share"]);

    let mut shares = DevicePluginClient::new(channel(&plugins.join("accel-testdev-share.sock")).await);
    let listed = shares.list_and_watch(Empty {}).await.unwrap().into_inner().message().await.unwrap().unwrap();
    let ids: Vec<_> = listed.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["accel0-share0", "accel0-share1", "accel0-share2", "accel0-share3"]);

    // Two of four shares: half the device's memory and weight.
    let alloc = shares
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["accel0-share3".into(), "accel0-share1".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alloc.container_responses[0].cdi_devices[0].name, "accel.dev/device=k8s-accel0-share1-accel0-share3");
    let mut admin = common::admin(&d);
    let Reply::Devices(devs) = admin.call(&Request::ListDevices).unwrap() else { panic!("devices") };
    let Reply::Namespaces(all) = admin.call(&Request::NsList).unwrap() else { panic!("namespaces") };
    let ns = all.iter().find(|n| n.name == "k8s-accel0-share1-accel0-share3").expect("the share's namespace");
    assert_eq!(ns.devices[0].memory_limit, devs[0].memory_bytes / 2);
    assert_eq!(ns.devices[0].weight, 50);
    // A whole device's ID is not a share.
    let err = shares
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: vec!["accel0".into()] }],
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("not this resource's"), "{err:?}");
}
