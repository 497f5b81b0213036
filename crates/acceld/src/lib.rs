//! acceld: the accel daemon. It owns the devices (an [`accel_core::Subsystem`])
//! and serves clients over a `SOCK_SEQPACKET` Unix socket.
//!
//! One connection is one client (an open file of one device). A fixed set of worker
//! threads, each an epoll loop, serves every connection (`server.rs`); the accept thread
//! admits connections and deals them out. Every request gets exactly one reply, waits
//! asynchronously. Nothing a client sends can panic the daemon: every message is decoded
//! and validated, and a bad one gets an errno-style error reply.
//!
//! Connections are bounded: a non-admin user may hold [`ConnectionLimits::max_per_uid`]
//! at once, every connection is charged to the daemon's descriptor budget (whose last
//! tenth is kept for admins), and a peer that does not finish the handshake within
//! [`ConnectionLimits::handshake_timeout_ms`] is dropped.

mod dispatch;
pub mod loopback;
pub mod metrics;
pub mod otlp;
pub mod ras_nl;
mod server;
mod subscription;
pub mod systemd;

/// Waits one connection may have pending at once (each holds a callback on its fences and a
/// timer); more are refused with `EAGAIN`.
pub const MAX_PENDING_WAITS: usize = 4096;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accel_core::client::PeerCred;
use accel_core::device::DeviceConfig;
use accel_core::limits::Limits;
use accel_core::namespace::{PeerInfo, PlacementConfig};
use accel_core::Subsystem;
use accel_uapi::{transport, Category};
use rustix::net::SocketAddrUnix;

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A device could not be registered.
    #[error("device setup: {0}")]
    Device(#[from] accel_core::Error),
    /// The socket could not be set up.
    #[error("socket {}", path.display())]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The config file could not be read or parsed.
    #[error("config {}: {message}", path.display())]
    Config {
        /// Config path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A device spec on the command line was wrong.
    #[error("bad device spec {0:?}: expected DRIVER[:INDEX][:CATEGORY], DRIVER one of cpu, testdev, testdev-async, vulkan, cuda")]
    BadDeviceSpec(String),
    /// A device named on the command line cannot be opened.
    #[error("device {spec}: {message}")]
    DeviceUnavailable {
        /// The spec.
        spec: String,
        /// Why (e.g. no Vulkan loader, no such device).
        message: String,
    },
}

/// The daemon's TOML config file.
///
/// ```toml
/// admin_groups = [990]           # members are admins (besides root and the daemon's user)
/// default_namespace = "default"  # where unplaced non-admins go (created empty if missing)
///
/// [[placement]]          # first match wins; every field given must match
/// namespace = "tenant-a"
/// uid = 1000             # or gid, cgroup_prefix, userns, pidns (inodes), token
///
/// [limits]               # 0: no cap
/// fds_per_client = 1024
/// fds_per_namespace = 4096
/// objects_per_client = 65536      # handles of every kind
/// objects_per_namespace = 262144
/// jobs_per_client = 16384         # submitted and not yet done, socket and rings together
/// max_buffer_bytes = 68719476736
/// ras_log_max_bytes = 16777216    # RAS log size before compaction
///
/// [connections]
/// max_per_uid = 64                # for non-admin users
/// rate_per_uid = 100              # new connections per second, after a burst of max_per_uid
/// handshake_timeout_ms = 5000
/// ```
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Placement rules for namespaces.
    #[serde(default)]
    pub placement: Vec<accel_core::namespace::PlacementRule>,
    /// Groups whose members are admins.
    #[serde(default)]
    pub admin_groups: Vec<u32>,
    /// Namespace for clients that no token or rule places and that are not admins.
    pub default_namespace: Option<String>,
    /// Caps per client and namespace.
    #[serde(default)]
    pub limits: Limits,
    /// Caps on connections.
    #[serde(default)]
    pub connections: ConnectionLimits,
}

/// Caps on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections one non-admin user may hold at once (0: no cap).
    pub max_per_uid: u32,
    /// New connections per second one non-admin user may open, after a burst of
    /// `max_per_uid` (0: no limit). Refused ones get `EAGAIN`.
    pub rate_per_uid: u32,
    /// How long a new connection may take to send its handshake.
    pub handshake_timeout_ms: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { max_per_uid: 64, rate_per_uid: 100, handshake_timeout_ms: 5000 }
    }
}

/// One non-admin user's connections: how many are open, and a token bucket for new ones.
#[derive(Debug)]
struct UidUse {
    open: u32,
    tokens: f64,
    refilled: std::time::Instant,
}

impl Config {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Config, DaemonError> {
        let err = |message: String| DaemonError::Config { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// The namespace placement part.
    pub fn placement_config(&self) -> PlacementConfig {
        PlacementConfig {
            rules: self.placement.clone(),
            admin: accel_core::credentials::AdminPolicy { groups: self.admin_groups.clone() },
            default_namespace: self.default_namespace.clone(),
        }
    }
}

/// Parses `DRIVER[:INDEX][:CATEGORY]` (e.g. `cpu`, `testdev:exclusive`, `vulkan`, `cuda:1`)
/// into device configs: `vulkan` or `cuda` without an index is every such device of the machine.
pub fn parse_device_specs(spec: &str) -> Result<Vec<DeviceConfig>, DaemonError> {
    let bad = || DaemonError::BadDeviceSpec(spec.to_string());
    let mut parts = spec.split(':');
    let driver = parts.next().unwrap_or_default();
    let mut index = None;
    let mut category = None;
    for p in parts {
        match (p.parse::<usize>(), index, category) {
            (Ok(i), None, None) => index = Some(i),
            (Err(_), _, None) => category = Some(Category::parse(p).ok_or_else(bad)?),
            _ => return Err(bad()),
        }
    }
    let unavailable = |e: accel_core::driver::DriverError| DaemonError::DeviceUnavailable {
        spec: spec.to_string(),
        message: e.message,
    };
    let drivers: Vec<Arc<dyn accel_core::driver::Driver>> = match (driver, index) {
        ("cpu", None) => vec![Arc::new(accel_driver_cpu::CpuDevice::new())],
        // `$ACCEL_TESTDEV_ASYNC=1` makes every testdev the asynchronous kind: the whole test
        // suite through the core's asynchronous path.
        ("testdev", None) if std::env::var("ACCEL_TESTDEV_ASYNC").is_ok_and(|v| v.trim() == "1") => {
            vec![accel_driver_testdev::TestDevice::asynchronous()]
        }
        ("testdev", None) => vec![Arc::new(accel_driver_testdev::TestDevice::new())],
        ("testdev-async", None) => vec![accel_driver_testdev::TestDevice::asynchronous()],
        ("vulkan", _) => {
            gpus(index, accel_driver_vulkan::device_count, |i| Ok(accel_driver_vulkan::VulkanDevice::open(i)?))
                .map_err(unavailable)?
        }
        ("cuda", _) => {
            gpus(index, accel_driver_cuda::device_count, |i| Ok(Arc::new(accel_driver_cuda::CudaDevice::open(i)?)))
                .map_err(unavailable)?
        }
        _ => return Err(bad()),
    };
    Ok(drivers
        .into_iter()
        .map(|driver| {
            let mut cfg = DeviceConfig::new(driver);
            cfg.category = category;
            cfg
        })
        .collect())
}

type DriverResult<T> = Result<T, accel_core::driver::DriverError>;

/// Device `index` of a GPU driver, or every one the machine has (`ENODEV` if none).
fn gpus(
    index: Option<usize>,
    count: fn() -> DriverResult<usize>,
    open: impl Fn(usize) -> DriverResult<Arc<dyn accel_core::driver::Driver>>,
) -> DriverResult<Vec<Arc<dyn accel_core::driver::Driver>>> {
    match index {
        Some(i) => Ok(vec![open(i)?]),
        None => match count()? {
            0 => Err(accel_core::driver::DriverError::new(accel_uapi::Errno::ENODEV, "no such device on this machine")),
            n => (0..n).map(open).collect(),
        },
    }
}

/// Parses a spec naming exactly one device (see [`parse_device_specs`]).
pub fn parse_device_spec(spec: &str) -> Result<DeviceConfig, DaemonError> {
    let mut all = parse_device_specs(spec)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        _ => Err(DaemonError::BadDeviceSpec(format!("{spec} names {} devices, not one", all.len()))),
    }
}

/// A bound daemon, ready to serve.
pub struct Daemon {
    sub: Arc<Subsystem>,
    listener: OwnedFd,
    path: PathBuf,
    conn_limits: ConnectionLimits,
    per_uid: Arc<Mutex<HashMap<u32, UidUse>>>,
}

/// One connection counted against its user's cap until dropped.
struct UidSlot {
    uid: u32,
    counts: Arc<Mutex<HashMap<u32, UidUse>>>,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = counts.get_mut(&self.uid) {
            u.open -= 1;
            // An idle user's entry goes once its bucket is full again.
            if u.open == 0 && u.refilled.elapsed() > Duration::from_secs(10) {
                counts.remove(&self.uid);
            }
        }
    }
}

fn sock_err(path: &Path) -> impl FnOnce(rustix::io::Errno) -> DaemonError + '_ {
    move |e| DaemonError::Socket { path: path.to_path_buf(), source: e.into() }
}

impl Daemon {
    /// Registers `devices` and binds the socket at `path`, keeping no state on disk.
    pub fn bind(path: &Path, devices: Vec<DeviceConfig>) -> Result<Daemon, DaemonError> {
        Self::bind_with_state(path, devices, None)
    }

    /// Registers `devices`, with persistent state (the RAS log) in `state_dir`, and binds
    /// the socket at `path`.
    ///
    /// A stale socket file (nobody listening) is replaced; a live one is an error,
    /// so two daemons never fight over one path.
    pub fn bind_with_state(
        path: &Path,
        devices: Vec<DeviceConfig>,
        state_dir: Option<&Path>,
    ) -> Result<Daemon, DaemonError> {
        Self::bind_with_config(path, devices, state_dir, Config::default())
    }

    /// Like [`Daemon::bind_with_state`], with a config (namespace placement rules).
    pub fn bind_with_config(
        path: &Path,
        devices: Vec<DeviceConfig>,
        state_dir: Option<&Path>,
        config: Config,
    ) -> Result<Daemon, DaemonError> {
        Self::start(path, None, devices, state_dir, config)
    }

    /// Like [`Daemon::bind_with_config`], serving a listening socket someone else bound
    /// (systemd's socket activation: [`systemd::listen_fd`]); `path` only names it.
    pub fn adopt(
        listener: OwnedFd,
        path: &Path,
        devices: Vec<DeviceConfig>,
        state_dir: Option<&Path>,
        config: Config,
    ) -> Result<Daemon, DaemonError> {
        Self::start(path, Some(listener), devices, state_dir, config)
    }

    fn start(
        path: &Path,
        adopted: Option<OwnedFd>,
        devices: Vec<DeviceConfig>,
        state_dir: Option<&Path>,
        config: Config,
    ) -> Result<Daemon, DaemonError> {
        let placement = config.placement_config();
        // Descriptors are the daemon-wide resource every client uses: take all the system
        // allows and size the budget (with the admins' reserve) to it.
        let limits = config.limits.for_fd_limit(raise_fd_limit());
        let sub = Subsystem::with_config(devices, state_dir, placement, limits)?;
        if let Some(listener) = adopted {
            return Ok(Daemon {
                sub,
                listener,
                path: path.to_path_buf(),
                conn_limits: config.connections,
                per_uid: Default::default(),
            });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DaemonError::Socket { path: dir.to_path_buf(), source: e })?;
        }
        if path.exists() {
            if transport::connect(path).is_ok() {
                return Err(DaemonError::Socket {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "another daemon is serving this socket"),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = transport::socket().map_err(sock_err(path))?;
        rustix::net::bind(&listener, &SocketAddrUnix::new(path).map_err(sock_err(path))?).map_err(sock_err(path))?;
        rustix::net::listen(&listener, 128).map_err(sock_err(path))?;
        Ok(Daemon {
            sub,
            listener,
            path: path.to_path_buf(),
            conn_limits: config.connections,
            per_uid: Default::default(),
        })
    }

    /// Applies a reloaded config's placement rules and admin policy (SIGHUP); connected
    /// clients stay where they are.
    pub fn reload(&self, config: Config) -> accel_core::Result<()> {
        self.sub.namespaces().reload(config.placement_config())
    }

    /// The subsystem this daemon serves.
    pub fn subsystem(&self) -> &Arc<Subsystem> {
        &self.sub
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections forever and serves them on a fixed set of event-loop workers
    /// (one per CPU, at most four).
    pub fn serve(&self) -> std::io::Result<()> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
        let workers = server::start_workers(&self.sub, n)?;
        let mut next = 0usize;
        // Clients that run at a lower priority than the daemon are served by a worker at their
        // priority (one per nice level, made when first needed).
        let own_nice = rustix::process::getpriority_process(None).unwrap_or(0);
        let mut niced: HashMap<i32, server::WorkerHandle> = HashMap::new();
        loop {
            let conn = match rustix::net::accept_with(&self.listener, rustix::net::SocketFlags::CLOEXEC) {
                Ok(c) => c,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
                Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE | rustix::io::Errno::NOMEM)) => {
                    tracing::warn!("accept: {e}; backing off");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let cred = match rustix::net::sockopt::socket_peercred(conn.as_fd()) {
                Ok(c) => PeerCred { pid: c.pid.as_raw_nonzero().get(), uid: c.uid.as_raw(), gid: c.gid.as_raw() },
                Err(e) => {
                    tracing::warn!("SO_PEERCRED failed: {e}; dropping connection");
                    continue;
                }
            };
            // Admission first, from the credentials alone: a flood of refused connections
            // costs no /proc reads. (Members of admin groups by a supplementary group only
            // are known after the full read below, so they count as users here.)
            let quick = PeerInfo { cred, ..Default::default() };
            let admitted = self.admit(cred.uid, self.sub.namespaces().is_admin(&quick));
            let (slot, charges) = match admitted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(uid = cred.uid, pid = cred.pid, "connection refused: {}", e.message);
                    dispatch::refuse(conn.as_fd(), e);
                    continue;
                }
            };
            let peer = PeerInfo::of(cred);
            let handshake = Duration::from_millis(self.conn_limits.handshake_timeout_ms.max(1));
            let new = server::NewConn { sock: conn, peer, held: server::held(slot, charges), handshake };
            let pid = rustix::process::Pid::from_raw(cred.pid);
            let nice = pid.and_then(|p| rustix::process::getpriority_process(Some(p)).ok()).unwrap_or(own_nice);
            if nice > own_nice && !niced.contains_key(&nice) {
                match server::start_worker(&self.sub, format!("worker-nice{nice}"), Some(nice)) {
                    Ok(w) => {
                        niced.insert(nice, w);
                    }
                    Err(e) => tracing::warn!("cannot start a worker at nice {nice}: {e}"),
                }
            }
            // Only levels below the daemon's are in `niced`.
            match niced.get(&nice) {
                Some(w) => w.post(server::Post::Conn(Box::new(new))),
                None => {
                    workers[next % workers.len()].post(server::Post::Conn(Box::new(new)));
                    next = next.wrapping_add(1);
                }
            }
        }
    }

    /// Counts a new connection against its user's cap (non-admins) and the daemon's
    /// descriptor budget (its socket): `EUSERS`/`EMFILE`.
    fn admit(&self, uid: u32, admin: bool) -> accel_core::Result<(Option<UidSlot>, Vec<accel_core::bo::Charge>)> {
        let ConnectionLimits { max_per_uid: max, rate_per_uid: rate, .. } = self.conn_limits;
        let slot = if admin || (max == 0 && rate == 0) {
            None
        } else {
            let burst = f64::from(if max == 0 { rate } else { max });
            let mut counts = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            let u = counts.entry(uid).or_insert(UidUse { open: 0, tokens: burst, refilled: now });
            if rate > 0 {
                let dt = now.duration_since(u.refilled).as_secs_f64();
                u.tokens = (u.tokens + dt * f64::from(rate)).min(burst);
                u.refilled = now;
            }
            if max != 0 && u.open >= max {
                return Err(accel_core::Error::new(
                    accel_uapi::Errno::EUSERS,
                    format!("uid {uid} already holds {max} connections to the daemon (its cap)"),
                ));
            }
            if rate > 0 && u.tokens < 1.0 {
                return Err(accel_core::Error::new(
                    accel_uapi::Errno::EAGAIN,
                    format!("uid {uid} opens connections faster than {rate}/s; retry later"),
                ));
            }
            u.tokens -= f64::from(u8::from(rate > 0));
            u.open += 1;
            Some(UidSlot { uid, counts: self.per_uid.clone() })
        };
        let charges = vec![self.sub.charge_connection(admin)?];
        Ok((slot, charges))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Raises the open-file limit to its hard maximum: every client holds a socket and,
/// with a ring, an eventfd, so a thousand clients need a few thousand descriptors.
/// Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    // With CAP_SYS_RESOURCE (root), the hard limit itself may go up to the kernel's
    // fs.nr_open; a service manager's LimitNOFILE= is the way otherwise.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let (Some(max), Some(nr_open)) = (lim.maximum, nr_open) {
        if max < nr_open {
            let raised = rustix::process::Rlimit { current: Some(nr_open), maximum: Some(nr_open) };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                lim = getrlimit(Resource::Nofile);
            }
        }
    }
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Exits on SIGTERM or SIGINT (telling systemd it is stopping, calling `stop` — which writes
/// what must survive, such as RAS events still queued — and removing `socket` if the daemon
/// bound it), and calls `reload` on SIGHUP.
pub fn handle_signals(
    socket: Option<PathBuf>,
    reload: impl Fn() + Send + 'static,
    stop: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                systemd::notify("RELOADING=1");
                reload();
                systemd::notify("READY=1");
                continue;
            }
            tracing::info!("signal {sig}: shutting down");
            systemd::notify("STOPPING=1");
            stop();
            if let Some(path) = &socket {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(0);
        }
    })?;
    Ok(())
}

/// Pings systemd's watchdog while the process lives, if the unit asked for it.
pub fn start_watchdog() -> std::io::Result<()> {
    let Some(every) = systemd::watchdog_interval() else { return Ok(()) };
    std::thread::Builder::new().name("watchdog".into()).spawn(move || loop {
        systemd::notify("WATCHDOG=1");
        std::thread::sleep(every);
    })?;
    Ok(())
}
