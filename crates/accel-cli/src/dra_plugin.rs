//! `accel k8s dra-plugin`: the kubelet's DRA plugin (Dynamic Resource Allocation, kubelet
//! API v1beta1 over gRPC on Unix sockets), as NVIDIA's k8s-dra-driver-gpu plugs GPUs in.
//!
//! The scheduler allocates devices of the node's ResourceSlice (`accel k8s resource-slice`,
//! driver `accel.dev`, pool = the node) to a ResourceClaim; when a pod using the claim lands
//! here, the kubelet calls **NodePrepareResources**. The plugin reads the claim from the API
//! server (its `status.allocation`: the devices, and the opaque parameters of driver
//! `accel.dev`: `memoryLimit` bytes and `weight`), makes the namespace `dra-<claim uid>` holding
//! exactly those devices with that memory limit and weight, mints its token and answers with
//! the CDI device `accel.dev/device=dra-<uid>` (spec in `<cdi dir>/accel-dra.json`).
//! **NodeUnprepareResources** deletes the namespace and evicts the clients still connected to
//! it. Both are idempotent, and what was prepared is kept in the state directory, so a
//! restarted plugin answers a repeated prepare with the same namespace and token.
//!
//! Registration is the kubelet's plugin watcher: the plugin serves `GetInfo` on
//! `<registry dir>/accel.dev-reg.sock` naming its DRA socket `<plugin dir>/dra.sock`.
//!
//! The API server is reached over plain HTTP (`--kube-api http://127.0.0.1:8001`, e.g. a
//! `kubectl proxy` sidecar, with an optional bearer token file).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use accel_cli::dra::dra_plugin_server::{DraPlugin, DraPluginServer};
use accel_cli::dra::{
    Claim, Device, NodePrepareResourceResponse, NodePrepareResourcesRequest, NodePrepareResourcesResponse,
    NodeUnprepareResourceResponse, NodeUnprepareResourcesRequest, NodeUnprepareResourcesResponse,
};
use accel_cli::grpc;
use accel_cli::pluginregistration::registration_server::{Registration, RegistrationServer};
use accel_cli::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};
use accel_uapi::{Reply, Request};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tonic::{Response, Status};

/// The DRA driver name (ResourceSlices, DeviceClasses, claims' opaque parameters).
pub const DRIVER: &str = "accel.dev";

/// What the plugin was told.
#[derive(Clone)]
pub struct Options {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// This node's name (the pool of its devices).
    pub node: String,
    /// Where the DRA socket goes (`/var/lib/kubelet/plugins/accel.dev`).
    pub plugin_dir: PathBuf,
    /// The kubelet's plugin watcher directory (`/var/lib/kubelet/plugins_registry`).
    pub registry_dir: PathBuf,
    /// Where the CDI spec goes.
    pub cdi_dir: PathBuf,
    /// Where prepared claims are remembered.
    pub state_dir: PathBuf,
    /// The API server, `http://host:port`.
    pub kube_api: String,
    /// A bearer token for it, if any.
    pub token_file: Option<PathBuf>,
}

/// A prepared claim, as remembered.
#[derive(Clone, Serialize, Deserialize)]
struct Prepared {
    namespace: String,
    token: String,
    /// (request names, device name) per allocated device.
    devices: Vec<(Vec<String>, String)>,
}

/// The plugin's state: prepared claims by UID, kept in `<state dir>/claims.json`.
struct State {
    opts: Options,
    claims: Mutex<BTreeMap<String, Prepared>>,
}

/// What a ResourceClaim's allocation says, for this driver and node.
struct Allocation {
    devices: Vec<(Vec<String>, String)>,
    memory_limit: u64,
    weight: u32,
}

impl State {
    fn load(opts: Options) -> Result<State> {
        std::fs::create_dir_all(&opts.state_dir)?;
        let path = opts.state_dir.join("claims.json");
        let claims = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(State { opts, claims: Mutex::new(claims) })
    }

    /// Writes the claims and the CDI spec (each written beside and renamed into place).
    fn save(&self, claims: &BTreeMap<String, Prepared>) -> Result<()> {
        let path = self.opts.state_dir.join("claims.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(claims)?)?;
        std::fs::rename(&tmp, &path)?;
        let shares: Vec<(String, String)> = claims.values().map(|p| (p.namespace.clone(), p.token.clone())).collect();
        crate::cdi::write_spec(&self.opts.socket, &shares, &self.opts.cdi_dir.join("accel-dra.json"))?;
        Ok(())
    }

    /// GETs `path` from the API server (JSON).
    fn kube_get(&self, path: &str) -> Result<serde_json::Value> {
        let rest = self.opts.kube_api.strip_prefix("http://").context("--kube-api must be http://host:port")?;
        let host = rest.trim_end_matches('/');
        let mut s = std::net::TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        let auth = match &self.opts.token_file {
            Some(f) => format!("Authorization: Bearer {}\r\n", std::fs::read_to_string(f)?.trim()),
            None => String::new(),
        };
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n{auth}\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").context("a malformed HTTP reply")?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!("GET {path}: HTTP {status}: {}", body.chars().take(200).collect::<String>());
        }
        Ok(serde_json::from_str(body)?)
    }

    /// The claim's allocation on this node.
    fn allocation(&self, claim: &Claim) -> Result<Allocation> {
        let path =
            format!("/apis/resource.k8s.io/v1beta1/namespaces/{}/resourceclaims/{}", claim.namespace, claim.name);
        let rc = self.kube_get(&path)?;
        if rc["metadata"]["uid"].as_str() != Some(claim.uid.as_str()) {
            bail!("claim {}/{} has another UID now (deleted and made again?)", claim.namespace, claim.name);
        }
        let alloc = &rc["status"]["allocation"]["devices"];
        let mut devices = Vec::new();
        for r in alloc["results"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if r["driver"] != DRIVER || r["pool"] != self.opts.node.as_str() {
                continue;
            }
            let device = r["device"].as_str().context("a result without a device")?.to_string();
            let request = r["request"].as_str().unwrap_or_default().to_string();
            devices.push((vec![request].into_iter().filter(|r| !r.is_empty()).collect(), device));
        }
        if devices.is_empty() {
            bail!(
                "claim {}/{} has no {DRIVER} device of node {} allocated",
                claim.namespace,
                claim.name,
                self.opts.node
            );
        }
        let (mut memory_limit, mut weight) = (0, 100);
        for c in alloc["config"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let opaque = &c["opaque"];
            if opaque["driver"] == DRIVER {
                let p = &opaque["parameters"];
                memory_limit = p["memoryLimit"].as_u64().unwrap_or(memory_limit);
                weight = p["weight"].as_u64().map_or(weight, |w| w.clamp(1, 10_000) as u32);
            }
        }
        Ok(Allocation { devices, memory_limit, weight })
    }

    fn prepare(&self, claim: &Claim) -> Result<Prepared> {
        if let Some(p) = self.claims.lock().unwrap_or_else(|p| p.into_inner()).get(&claim.uid) {
            return Ok(p.clone()); // prepared before (the kubelet retries; the plugin restarted)
        }
        let alloc = self.allocation(claim)?;
        let namespace = format!("dra-{}", claim.uid);
        let mut conn = accel::Connection::connect_with_token(&self.opts.socket, None)?;
        let Reply::Namespaces(all) = conn.call(&Request::NsList)? else { bail!("unexpected reply to NsList") };
        if !all.iter().any(|n| n.name == namespace) {
            conn.call(&Request::NsCreate { name: namespace.clone(), token: None })?;
        }
        for (_, device) in &alloc.devices {
            let minor: u32 = device
                .strip_prefix("accel")
                .and_then(|m| m.parse().ok())
                .with_context(|| format!("{device:?} is not an accel device"))?;
            conn.call(&Request::NsAssign {
                name: namespace.clone(),
                device: minor,
                memory_limit: alloc.memory_limit,
                weight: alloc.weight,
                max_clients: 0,
                evict: false,
            })?;
        }
        let Reply::Token(token) =
            conn.call(&Request::NsToken { name: namespace.clone(), token: None, keep_old: false })?
        else {
            bail!("unexpected reply to NsToken");
        };
        let prepared = Prepared { namespace, token, devices: alloc.devices };
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        claims.insert(claim.uid.clone(), prepared.clone());
        self.save(&claims)?;
        Ok(prepared)
    }

    fn unprepare(&self, claim: &Claim) -> Result<()> {
        let namespace = format!("dra-{}", claim.uid);
        let mut conn = accel::Connection::connect_with_token(&self.opts.socket, None)?;
        let Reply::Namespaces(all) = conn.call(&Request::NsList)? else { bail!("unexpected reply to NsList") };
        if all.iter().any(|n| n.name == namespace) {
            // The pod is gone or going: its clients are disconnected, not left behind.
            conn.call(&Request::NsDelete { name: namespace, evict: true })?;
        }
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if claims.remove(&claim.uid).is_some() {
            self.save(&claims)?;
        }
        Ok(())
    }
}

/// The DRA service.
#[derive(Clone)]
struct Dra(Arc<State>);

impl Dra {
    /// Answers each claim with `f`, keyed by claim UID, off the async threads.
    async fn per_claim<R: Send + 'static>(
        &self,
        claims: Vec<Claim>,
        f: fn(&State, &Claim) -> R,
    ) -> Result<std::collections::HashMap<String, R>, Status> {
        let state = self.0.clone();
        crate::device_plugin::blocking(move || claims.into_iter().map(|c| (c.uid.clone(), f(&state, &c))).collect())
            .await
    }
}

/// One claim's NodePrepareResources answer.
fn prepared(state: &State, c: &Claim) -> NodePrepareResourceResponse {
    match state.prepare(c) {
        Ok(p) => NodePrepareResourceResponse {
            devices: p
                .devices
                .iter()
                .map(|(requests, device)| Device {
                    request_names: requests.clone(),
                    pool_name: state.opts.node.clone(),
                    device_name: device.clone(),
                    cdi_device_ids: vec![format!("{}={}", crate::cdi::KIND, p.namespace)],
                })
                .collect(),
            error: String::new(),
        },
        Err(e) => NodePrepareResourceResponse { devices: Vec::new(), error: format!("{e:#}") },
    }
}

/// One claim's NodeUnprepareResources answer.
fn unprepared(state: &State, c: &Claim) -> NodeUnprepareResourceResponse {
    NodeUnprepareResourceResponse { error: state.unprepare(c).err().map(|e| format!("{e:#}")).unwrap_or_default() }
}

#[tonic::async_trait]
impl DraPlugin for Dra {
    async fn node_prepare_resources(
        &self,
        req: tonic::Request<NodePrepareResourcesRequest>,
    ) -> Result<Response<NodePrepareResourcesResponse>, Status> {
        let claims = self.per_claim(req.into_inner().claims, prepared).await?;
        Ok(Response::new(NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        req: tonic::Request<NodeUnprepareResourcesRequest>,
    ) -> Result<Response<NodeUnprepareResourcesResponse>, Status> {
        let claims = self.per_claim(req.into_inner().claims, unprepared).await?;
        Ok(Response::new(NodeUnprepareResourcesResponse { claims }))
    }
}

/// The plugin watcher's view of the plugin.
struct Registrar {
    endpoint: String,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: tonic::Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "DRAPlugin".into(),
            name: DRIVER.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["v1beta1.DRAPlugin".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: tonic::Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!("dra plugin: registered with the kubelet");
        } else {
            tracing::error!("dra plugin: the kubelet refused the registration: {}", s.error);
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Serves the DRA and registration sockets until killed.
pub fn run(opts: Options) -> Result<()> {
    let state = Arc::new(State::load(opts.clone())?);
    std::fs::create_dir_all(&opts.plugin_dir)?;
    std::fs::create_dir_all(&opts.registry_dir)?;
    let dra_sock = opts.plugin_dir.join("dra.sock");
    let reg_sock = opts.registry_dir.join(format!("{DRIVER}-reg.sock"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listen = |p: &Path| grpc::listen(p).with_context(|| format!("binding {}", p.display()));
        let dra = tonic::transport::Server::builder()
            .add_service(DraPluginServer::new(Dra(state)))
            .serve_with_incoming(listen(&dra_sock)?);
        let endpoint = dra_sock.display().to_string();
        let reg = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Registrar { endpoint }))
            .serve_with_incoming(listen(&reg_sock)?);
        tracing::info!("dra plugin {DRIVER}: serving {} and {}", dra_sock.display(), reg_sock.display());
        tokio::try_join!(dra, reg)?;
        Ok(())
    })
}
