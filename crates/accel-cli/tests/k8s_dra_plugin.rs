//! `accel k8s dra-plugin` against a real gRPC peer playing the kubelet (plugin watcher and
//! DRA calls) and an HTTP server playing the API server (ResourceClaims): registration,
//! prepare (namespace of the claim's devices with its parameters, CDI device, token), prepare
//! again and after a plugin restart (same answer), unprepare evicting the claim's clients, and
//! prepare/unprepare cycles leaving no namespace, object or descriptor behind. Prints the
//! prepare→usable latency (NodePrepareResources to a client's first job in the share).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accel_cli::dra::dra_plugin_client::DraPluginClient;
use accel_cli::dra::{Claim, NodePrepareResourcesRequest, NodeUnprepareResourcesRequest};
use accel_cli::pluginregistration::registration_client::RegistrationClient;
use accel_cli::pluginregistration::{InfoRequest, RegistrationStatus};
use accel_uapi::{Reply, Request};
use common::Daemon;

/// ResourceClaims by "namespace/name", served as the API server would.
type Claims = Arc<Mutex<BTreeMap<String, serde_json::Value>>>;

fn api_server(claims: Claims) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let path = req.url().to_string();
            let key = path
                .strip_prefix("/apis/resource.k8s.io/v1beta1/namespaces/")
                .and_then(|rest| rest.split_once("/resourceclaims/"))
                .map(|(ns, name)| format!("{ns}/{name}"));
            let found = key.and_then(|k| claims.lock().unwrap().get(&k).cloned());
            let _ = match found {
                Some(c) => req.respond(tiny_http::Response::from_string(c.to_string())),
                None => req.respond(tiny_http::Response::from_string("{\"kind\":\"Status\"}").with_status_code(404)),
            };
        }
    });
    format!("http://{addr}")
}

fn claim_json(uid: &str, name: &str, devices: &[&str], memory_limit: u64, weight: u32) -> serde_json::Value {
    let results: Vec<_> = devices
        .iter()
        .map(|d| serde_json::json!({"request": "accel", "driver": "accel.dev", "pool": "node-1", "device": d}))
        .collect();
    serde_json::json!({
        "apiVersion": "resource.k8s.io/v1beta1",
        "kind": "ResourceClaim",
        "metadata": {"namespace": "default", "name": name, "uid": uid},
        "status": {"allocation": {"devices": {
            "results": results,
            "config": [{"source": "FromClaim", "opaque": {"driver": "accel.dev",
                "parameters": {"memoryLimit": memory_limit, "weight": weight}}}]
        }}}
    })
}

struct Plugin(Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_plugin(d: &Daemon, api: &str, dirs: &Path) -> Plugin {
    Plugin(
        Command::new(common::accel_bin())
            .arg("--socket")
            .arg(d.socket())
            .args(["k8s", "dra-plugin", "--node", "node-1", "--kube-api", api])
            .arg("--plugin-dir")
            .arg(dirs.join("plugin"))
            .arg("--registry-dir")
            .arg(dirs.join("registry"))
            .arg("--cdi-dir")
            .arg(dirs.join("cdi"))
            .arg("--state-dir")
            .arg(dirs.join("state"))
            .env("ACCEL_LOG", "warn")
            .spawn()
            .unwrap(),
    )
}

async fn channel(path: &Path) -> tonic::transport::Channel {
    for _ in 0..100 {
        if path.exists() {
            if let Ok(ch) = accel_cli::grpc::connect(path).await {
                return ch;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no socket at {}", path.display());
}

type Dra = DraPluginClient<tonic::transport::Channel>;

/// NodePrepareResources for `claims` (uid, name).
async fn prepare(dra: &mut Dra, claims: &[(&str, &str)]) -> accel_cli::dra::NodePrepareResourcesResponse {
    let claims = claims.iter().map(|(uid, name)| claim(uid, name)).collect();
    dra.node_prepare_resources(NodePrepareResourcesRequest { claims }).await.unwrap().into_inner()
}

/// NodeUnprepareResources for one claim; its error, if any.
async fn unprepare(dra: &mut Dra, uid: &str, name: &str) -> String {
    let claims = vec![claim(uid, name)];
    let r = dra.node_unprepare_resources(NodeUnprepareResourcesRequest { claims }).await.unwrap().into_inner();
    r.claims[uid].error.clone()
}

fn claim(uid: &str, name: &str) -> Claim {
    Claim { namespace: "default".into(), uid: uid.into(), name: name.into() }
}

fn namespaces(d: &Daemon) -> Vec<accel_uapi::NamespaceInfo> {
    let Reply::Namespaces(all) = common::admin(d).call(&Request::NsList).unwrap() else { panic!("namespaces") };
    all
}

/// The first CDI device of the plugin's spec: its name and the token it hands over.
fn cdi_share(dirs: &Path) -> (String, String) {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dirs.join("cdi/accel-dra.json")).unwrap()).unwrap();
    let device = &spec["devices"][0];
    let token = device["containerEdits"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e.as_str().unwrap().strip_prefix("ACCEL_NS_TOKEN="))
        .unwrap()
        .to_string();
    (device["name"].as_str().unwrap().to_string(), token)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_become_namespaces_and_go_with_their_clients() {
    let d = Daemon::start(&["testdev", "cpu"]);
    let tmp = tempfile::Builder::new().prefix("accel-dra-").tempdir().unwrap();
    let dirs: PathBuf = tmp.path().to_path_buf();
    std::fs::create_dir_all(dirs.join("cdi")).unwrap();
    let claims: Claims = Arc::default();
    claims.lock().unwrap().insert("default/c1".into(), claim_json("uid-1", "c1", &["accel0"], 1 << 20, 300));
    let api = api_server(claims.clone());
    let mut plugin = start_plugin(&d, &api, &dirs);

    // The plugin watcher: GetInfo names the DRA socket; registration is acknowledged.
    let mut reg = RegistrationClient::new(channel(&dirs.join("registry/accel.dev-reg.sock")).await);
    let info = reg.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.r#type.as_str(), info.name.as_str()), ("DRAPlugin", "accel.dev"));
    assert_eq!(info.supported_versions, ["v1beta1.DRAPlugin"]);
    assert_eq!(Path::new(&info.endpoint), dirs.join("plugin/dra.sock"));
    reg.notify_registration_status(RegistrationStatus { plugin_registered: true, error: String::new() }).await.unwrap();

    // Prepare: the claim's device, as a CDI device of a namespace with its parameters.
    let mut dra = DraPluginClient::new(channel(Path::new(&info.endpoint)).await);
    let prepared = prepare(&mut dra, &[("uid-1", "c1")]).await;
    let r = &prepared.claims["uid-1"];
    assert_eq!(r.error, "");
    assert_eq!(r.devices.len(), 1);
    let dev = &r.devices[0];
    assert_eq!((dev.pool_name.as_str(), dev.device_name.as_str()), ("node-1", "accel0"));
    assert_eq!(dev.request_names, ["accel"]);
    assert_eq!(dev.cdi_device_ids, ["accel.dev/device=dra-uid-1"]);
    let ns = namespaces(&d).into_iter().find(|n| n.name == "dra-uid-1").expect("the claim's namespace");
    assert_eq!(ns.devices.len(), 1);
    let (cdi_name, token) = cdi_share(&dirs);
    assert_eq!(cdi_name, "dra-uid-1");
    // The container's client: its share, with the claim's memory limit.
    let client = accel::Device::open_with_token(d.socket(), 0, &token).unwrap();
    client.create_queue().unwrap().submit(accel::Op::Nop).unwrap().wait().unwrap();
    assert!(client.alloc_in(2 << 20, 1).is_err(), "the claim's 1 MiB limit holds");

    // Prepare again, and after a plugin restart: the same answer, no second namespace.
    let again = prepare(&mut dra, &[("uid-1", "c1")]).await;
    assert_eq!(again.claims["uid-1"], *r);
    drop(plugin);
    plugin = start_plugin(&d, &api, &dirs);
    let mut dra = DraPluginClient::new(channel(&dirs.join("plugin/dra.sock")).await);
    let after = prepare(&mut dra, &[("uid-1", "c1")]).await;
    assert_eq!(after.claims["uid-1"], *r);
    assert_eq!(namespaces(&d).iter().filter(|n| n.name.starts_with("dra-")).count(), 1);

    // A claim this node has no device of fails with the reason, inside the reply.
    claims.lock().unwrap().insert("default/c2".into(), claim_json("uid-2", "c2", &[], 0, 100));
    let bad = prepare(&mut dra, &[("uid-2", "c2"), ("uid-3", "c3")]).await;
    assert!(bad.claims["uid-2"].error.contains("no accel.dev device"), "{:?}", bad.claims["uid-2"]);
    assert!(bad.claims["uid-3"].error.contains("404"), "{:?}", bad.claims["uid-3"]);

    // Unprepare: the namespace goes and its connected client is evicted.
    assert_eq!(unprepare(&mut dra, "uid-1", "c1").await, "");
    assert!(namespaces(&d).iter().all(|n| n.name != "dra-uid-1"));
    let evicted = client.create_queue().and_then(|q| q.submit(accel::Op::Nop)?.wait());
    assert!(evicted.is_err(), "the claim's client is evicted");
    drop(client);
    // Unprepare is idempotent.
    assert_eq!(unprepare(&mut dra, "uid-1", "c1").await, "");

    // Cycles: prepare, a client's first job (the latency), unprepare; nothing left behind.
    let cycles: usize = std::env::var("ACCEL_DRA_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    // Idle: no client connected, no object alive (the plugin connects per call).
    let idle = accel_uapi::ObjectCounts::default();
    assert_eq!(d.wait_for_counts(idle), idle, "idle before the cycles");
    let fds_before = fds(d.pid());
    let mut latency = Vec::with_capacity(cycles);
    for i in 0..cycles {
        let (uid, name) = (format!("cycle-{i}"), format!("cycle{i}"));
        claims.lock().unwrap().insert(format!("default/{name}"), claim_json(&uid, &name, &["accel1"], 0, 100));
        let start = Instant::now();
        let p = prepare(&mut dra, &[(&uid, &name)]).await;
        assert_eq!(p.claims[&uid].error, "");
        let (_, token) = cdi_share(&dirs);
        let c = accel::Device::open_with_token(d.socket(), 0, &token).unwrap();
        c.create_queue().unwrap().submit(accel::Op::Nop).unwrap().wait().unwrap();
        latency.push(start.elapsed());
        drop(c);
        assert_eq!(unprepare(&mut dra, &uid, &name).await, "");
        claims.lock().unwrap().remove(&format!("default/{name}"));
    }
    latency.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{{\"bench\":\"dra-prepare\",\"cycles\":{cycles},\"prepare_to_first_job_p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        ms(latency[latency.len() / 2]),
        ms(latency[latency.len() * 99 / 100])
    );
    assert!(namespaces(&d).iter().all(|n| !n.name.starts_with("dra-")), "no namespace left");
    assert_eq!(d.wait_for_counts(idle), idle, "no daemon object left");
    let fds_after = fds(d.pid());
    assert!(fds_after <= fds_before + 2, "daemon descriptors: {fds_before} before, {fds_after} after");
    drop(plugin);
}
