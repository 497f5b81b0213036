//! `accel k8s device-plugin`: the kubelet device plugin (API v1beta1, gRPC over Unix
//! sockets), the way NVIDIA's and Intel's plugins plug GPUs into Kubernetes.
//!
//! One plugin per driver on the node advertises `accel.dev/<driver>` (e.g. `accel.dev/cuda`),
//! one device per accel device (`accel<minor>`); with `--share DRIVER=N` another advertises
//! `accel.dev/<driver>-share`, N per device (`accel<minor>-share<k>`), each 1/N of the device's
//! memory and compute weight. Each listens on
//! `<plugin dir>/accel-<driver>.sock` and registers with the kubelet at
//! `<plugin dir>/kubelet.sock`. Health: a device is `Unhealthy` while it is wedged or one of its
//! RAS blocks has failed (fatal error), re-read every `--poll-ms` and streamed through
//! ListAndWatch when it changes. Allocate gives the container a namespace of its own holding
//! exactly the allocated devices (`k8s-accel1-accel3`, made on first use and reused), with a
//! fresh token: the container sees those devices and no others. It is handed over both ways a
//! runtime may take it: as a CDI device (`accel.dev/device=<namespace>`, its spec written to
//! `<cdi dir>/accel-k8s.json`) and as plain env + mount edits for runtimes without CDI.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accel::ras::{Ras, RasAttr, RasCmd, RasMsg};
use accel_cli::deviceplugin::device_plugin_server::{DevicePlugin, DevicePluginServer};
use accel_cli::deviceplugin::registration_client::RegistrationClient;
use accel_cli::deviceplugin::{
    AllocateRequest, AllocateResponse, CdiDevice, ContainerAllocateResponse, ContainerPreferredAllocationResponse,
    Device, DevicePluginOptions, Empty, ListAndWatchResponse, Mount, PreStartContainerRequest,
    PreStartContainerResponse, PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest,
};
use accel_cli::grpc;
use accel_uapi::{Health, Reply, Request};
use anyhow::{bail, Context, Result};
use tokio_stream::Stream;
use tonic::{Response, Status};

/// The resource prefix (`accel.dev/<driver>`).
pub const RESOURCE_PREFIX: &str = "accel.dev";
/// Where containers find the daemon's socket.
const CONTAINER_SOCKET: &str = "/run/accel/accel.sock";

/// What the plugin was told.
#[derive(Clone)]
pub struct Options {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The kubelet's device plugin directory (`/var/lib/kubelet/device-plugins`).
    pub plugin_dir: PathBuf,
    /// Where CDI specs go (`/var/run/cdi`).
    pub cdi_dir: PathBuf,
    /// How often health is re-read.
    pub poll: Duration,
    /// Drivers whose devices are also advertised in shares: `accel.dev/<driver>-share`, N
    /// per device, each 1/N of its memory and compute weight.
    pub shares: BTreeMap<String, u32>,
}

/// One device's state as the kubelet sees it.
fn healthy(wedged: bool, failed_blocks: usize) -> &'static str {
    if wedged || failed_blocks > 0 {
        "Unhealthy"
    } else {
        "Healthy"
    }
}

/// The node's devices by driver: (`accelN`, health).
fn devices(socket: &Path) -> Result<BTreeMap<String, Vec<(String, &'static str)>>> {
    let mut conn = accel::Connection::connect_with_token(socket, None)?;
    let Reply::Devices(list) = conn.call(&Request::ListDevices)? else { bail!("unexpected reply to ListDevices") };
    // RAS blocks that failed, by device name.
    let mut failed: HashMap<String, usize> = HashMap::new();
    if let Ok(mut ras) = Ras::connect(socket) {
        for m in ras.request(RasMsg::new(RasCmd::ListNodes, vec![RasAttr::AccelExt]), true)? {
            let health = m.node_health().and_then(|h| Health::ALL.get(h as usize).copied());
            if let (Some(Health::Failed), Some(dev)) = (health, m.device_name()) {
                *failed.entry(dev).or_default() += 1;
            }
        }
    }
    let mut by_driver: BTreeMap<String, Vec<(String, &'static str)>> = BTreeMap::new();
    for d in list {
        let name = format!("accel{}", d.minor);
        let health = healthy(d.wedged, failed.get(&name).copied().unwrap_or(0));
        by_driver.entry(d.driver.clone()).or_default().push((name, health));
    }
    Ok(by_driver)
}

/// The CDI spec of the namespaces allocations made, rewritten whole on each change.
#[derive(Default)]
struct Allocations {
    /// Namespace → token handed out last.
    namespaces: BTreeMap<String, String>,
}

/// One resource's plugin.
struct Plugin {
    driver: String,
    /// Shares per device (a `-share` resource), or none (whole devices).
    shares: Option<u32>,
    opts: Options,
    allocations: Arc<Mutex<Allocations>>,
}

/// A device ID the plugin hands out: `accel<minor>` or `accel<minor>-share<k>`.
fn parse_id(id: &str) -> Result<(u32, Option<u32>)> {
    let rest = id.strip_prefix("accel").with_context(|| format!("no device {id:?}"))?;
    let (minor, share) = match rest.split_once("-share") {
        Some((m, k)) => (m, Some(k.parse().with_context(|| format!("no device {id:?}"))?)),
        None => (rest, None),
    };
    Ok((minor.parse().with_context(|| format!("no device {id:?}"))?, share))
}

impl Plugin {
    fn list(&self) -> Result<Vec<Device>> {
        let all = devices(&self.opts.socket).context("accel daemon")?;
        let whole = all.get(&self.driver).map(Vec::as_slice).unwrap_or_default();
        let n = self.shares.unwrap_or(1);
        Ok(whole
            .iter()
            .flat_map(|(id, h)| {
                (0..n).map(move |k| Device {
                    id: if self.shares.is_some() { format!("{id}-share{k}") } else { id.clone() },
                    health: h.to_string(),
                    topology: None,
                })
            })
            .collect())
    }

    /// The namespace for exactly `ids` (made if new), a fresh token for it, the spec updated.
    /// Shares of a device add up: k of N shares get k/N of its memory and compute weight.
    fn share(&self, ids: &[String]) -> Result<(String, String)> {
        let mut sorted: Vec<(u32, Option<u32>)> = ids.iter().map(|id| parse_id(id)).collect::<Result<_>>()?;
        sorted.sort_unstable();
        sorted.dedup();
        let n = self.shares.unwrap_or(1);
        if sorted.iter().any(|(_, k)| k.is_some() != self.shares.is_some() || k.is_some_and(|k| k >= n)) {
            bail!("devices {ids:?} are not this resource's");
        }
        let name = format!(
            "k8s-{}",
            sorted
                .iter()
                .map(|(m, k)| k.map_or(format!("accel{m}"), |k| format!("accel{m}-share{k}")))
                .collect::<Vec<_>>()
                .join("-")
        );
        // Shares taken of each device.
        let mut taken: BTreeMap<u32, u64> = BTreeMap::new();
        for (m, _) in &sorted {
            *taken.entry(*m).or_default() += 1;
        }
        let mut conn = accel::Connection::connect_with_token(&self.opts.socket, None)?;
        let Reply::Namespaces(all) = conn.call(&Request::NsList)? else { bail!("unexpected reply to NsList") };
        if !all.iter().any(|n| n.name == name) {
            let memory: BTreeMap<u32, u64> = match conn.call(&Request::ListDevices)? {
                Reply::Devices(list) => list.iter().map(|d| (d.minor, d.memory_bytes)).collect(),
                _ => bail!("unexpected reply to ListDevices"),
            };
            conn.call(&Request::NsCreate { name: name.clone(), token: None })?;
            for (&device, &k) in &taken {
                let whole = self.shares.is_none();
                conn.call(&Request::NsAssign {
                    name: name.clone(),
                    device,
                    memory_limit: if whole { 0 } else { memory.get(&device).copied().unwrap_or(0) * k / u64::from(n) },
                    weight: if whole { 100 } else { (100 * k / u64::from(n)).max(1) as u32 },
                    max_clients: 0,
                    evict: false,
                })?;
            }
        }
        let Reply::Token(token) = conn.call(&Request::NsToken { name: name.clone(), token: None, keep_old: true })?
        else {
            bail!("unexpected reply to NsToken");
        };
        let mut a = self.allocations.lock().unwrap_or_else(|p| p.into_inner());
        a.namespaces.insert(name.clone(), token.clone());
        let shares: Vec<(String, String)> = a.namespaces.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        let path = self.opts.cdi_dir.join("accel-k8s.json");
        crate::cdi::write_spec(&self.opts.socket, &shares, &path)
            .with_context(|| format!("writing the CDI spec {}", path.display()))?;
        Ok((name, token))
    }
}

type Devices = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

/// Runs blocking work (the daemon's client is synchronous) off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))
}

/// The gRPC face of a plugin.
#[derive(Clone)]
struct Service(Arc<Plugin>);

#[tonic::async_trait]
impl DevicePlugin for Service {
    async fn get_device_plugin_options(
        &self,
        _: tonic::Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }))
    }

    type ListAndWatchStream = Devices;

    async fn list_and_watch(&self, _: tonic::Request<Empty>) -> Result<Response<Devices>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let plugin = self.0.clone();
        tokio::spawn(async move {
            let mut last: Option<Vec<Device>> = None;
            loop {
                let p = plugin.clone();
                let now = tokio::task::spawn_blocking(move || p.list()).await.unwrap_or_else(|e| Err(e.into()));
                match now {
                    Ok(devs) if last.as_ref() != Some(&devs) => {
                        last = Some(devs.clone());
                        if tx.send(Ok(ListAndWatchResponse { devices: devs })).await.is_err() {
                            return; // the kubelet hung up
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("device plugin {}: {e:#}", plugin.driver),
                }
                tokio::time::sleep(plugin.opts.poll).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        req: tonic::Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        // Required devices first, then the lowest minors: allocations stay compact and stable.
        let container_responses = req
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| {
                let mut ids = c.must_include_device_i_ds.clone();
                let mut rest: Vec<String> = c.available_device_i_ds.into_iter().filter(|d| !ids.contains(d)).collect();
                rest.sort_by_key(|d| d.trim_start_matches("accel").parse::<u32>().unwrap_or(u32::MAX));
                ids.extend(rest);
                ids.truncate(c.allocation_size.max(0) as usize);
                ContainerPreferredAllocationResponse { device_i_ds: ids }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(&self, req: tonic::Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in req.into_inner().container_requests {
            let plugin = self.0.clone();
            let ids = c.devices_ids.clone();
            let (ns, token) = blocking(move || plugin.share(&ids))
                .await?
                .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
            let socket = self.0.opts.socket.display().to_string();
            container_responses.push(ContainerAllocateResponse {
                envs: [
                    ("ACCEL_SOCKET".to_string(), CONTAINER_SOCKET.to_string()),
                    ("ACCEL_NS_TOKEN".to_string(), token),
                ]
                .into_iter()
                .collect(),
                mounts: vec![Mount { container_path: CONTAINER_SOCKET.into(), host_path: socket, read_only: false }],
                devices: Vec::new(),
                annotations: [("accel.dev/namespace".to_string(), ns.clone())].into_iter().collect(),
                cdi_devices: vec![CdiDevice { name: format!("{}={ns}", crate::cdi::KIND) }],
            });
        }
        Ok(Response::new(AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _: tonic::Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// Serves one plugin per driver on the node and registers each with the kubelet; runs until
/// killed. A kubelet restart removes the sockets: each plugin then serves and registers again.
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve(opts))
}

async fn serve(opts: Options) -> Result<()> {
    let drivers: Vec<String> = {
        let socket = opts.socket.clone();
        tokio::task::spawn_blocking(move || devices(&socket)).await??.into_keys().collect()
    };
    if drivers.is_empty() {
        bail!("the daemon has no devices to advertise");
    }
    let allocations = Arc::new(Mutex::new(Allocations::default()));
    let mut tasks = Vec::new();
    for driver in drivers {
        let shares = opts.shares.get(&driver).copied().filter(|n| *n >= 2);
        for shares in [None].into_iter().chain(shares.map(Some)) {
            let plugin = Arc::new(Plugin {
                driver: driver.clone(),
                shares,
                opts: opts.clone(),
                allocations: allocations.clone(),
            });
            tasks.push(tokio::spawn(serve_one(plugin)));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn serve_one(plugin: Arc<Plugin>) -> Result<()> {
    let suffix = if plugin.shares.is_some() { "-share" } else { "" };
    let endpoint = format!("accel-{}{suffix}.sock", plugin.driver);
    let path = plugin.opts.plugin_dir.join(&endpoint);
    let resource = format!("{RESOURCE_PREFIX}/{}{suffix}", plugin.driver);
    loop {
        let incoming = grpc::listen(&path).with_context(|| format!("binding {}", path.display()))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(Service(plugin.clone())))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                }),
        );
        register(&plugin.opts.plugin_dir, &endpoint, &resource).await?;
        tracing::info!("device plugin {resource}: serving {} and registered", path.display());
        // The kubelet deletes plugin sockets when it restarts: then serve and register anew.
        while path.exists() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::warn!("device plugin {resource}: socket removed (kubelet restart?); registering again");
        let _ = stop_tx.send(());
        let _ = server.await;
    }
}

/// Registers with the kubelet, retrying while it is not up yet.
async fn register(dir: &Path, endpoint: &str, resource: &str) -> Result<()> {
    let kubelet = dir.join("kubelet.sock");
    let mut last = None;
    for _ in 0..50 {
        match grpc::connect(&kubelet).await {
            Ok(channel) => {
                let req = RegisterRequest {
                    version: "v1beta1".into(),
                    endpoint: endpoint.into(),
                    resource_name: resource.into(),
                    options: Some(DevicePluginOptions {
                        pre_start_required: false,
                        get_preferred_allocation_available: true,
                    }),
                };
                RegistrationClient::new(channel).register(req).await.context("the kubelet refused the registration")?;
                return Ok(());
            }
            Err(e) => last = Some(anyhow::Error::from(e)),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no kubelet")))
        .with_context(|| format!("registering at {}", kubelet.display()))
}
