//! accel-core: the accelerator subsystem without any I/O (the analogue of the DRM
//! core, `drm_accel.c` and `drm_sched`).
//!
//! A [`Subsystem`] owns the registered [`device::Device`]s. Each connection becomes
//! a [`client::Client`] that owns handles to buffer objects, queues, fences and
//! syncobjs. Drivers implement [`driver::Driver`]. The daemon turns socket
//! messages into calls on these types; nothing here knows about sockets.
//!
//! ```
//! use std::sync::Arc;
//! use accel_core::{Subsystem, client::PeerCred};
//! let sub = Subsystem::new(vec![]).unwrap();
//! let client = sub.connect(PeerCred::default(), "doc");
//! assert_eq!(sub.stats().clients, 1);
//! drop(client);
//! assert_eq!(sub.stats().clients, 0);
//! ```

pub mod client;
pub mod credentials;
pub mod device;
pub mod limits;
pub mod namespace;
pub mod ops;
pub mod program;
pub mod ring;
pub mod sched;
pub mod syncfile;
pub mod syncobj;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use accel_uapi::{ClientUsage, DeviceInfo, ObjectCounts};

pub(crate) use accel_hal::{bail, lock};
/// The driver interface and what lies below it, from `accel-hal`.
pub use accel_hal::{bo, counters, driver, fence, files, handles, mem, ras, spin};
pub use accel_hal::{catch_panic, Error, Result};

use bo::BufferObject;
use client::{Client, ClientRecord, PeerCred};
use counters::Counters;
use device::{Device, DeviceConfig};
use syncobj::Syncobj;

/// The subsystem: device registry, clients, exported buffers, object counts.
pub struct Subsystem {
    devices: Vec<Arc<Device>>,
    ras: Arc<ras::RasCore>,
    pub(crate) counters: Arc<Counters>,
    next_client: AtomicU64,
    exports: ExportTable<BufferObject>,
    syncobj_exports: ExportTable<Syncobj>,
    /// Exported sync files.
    pub(crate) sync_files: syncfile::SyncFiles,
    /// One ring poller per device (the devices know nothing of rings).
    pollers: Vec<Arc<ring::RingPoller>>,
    namespaces: namespace::Namespaces,
    limits: limits::Limits,
    /// Descriptors held for clients, daemon-wide.
    fds: limits::FdCount,
    clients: Mutex<BTreeMap<u64, Arc<ClientRecord>>>,
}

impl Subsystem {
    /// Registers devices as `accel0`, `accel1`, … in the order given, with RAS state in
    /// memory only.
    pub fn new(devices: Vec<DeviceConfig>) -> Result<Arc<Subsystem>> {
        Self::with_state(devices, None)
    }

    /// Like [`Subsystem::new`], keeping the persistent state (the RAS log, namespaces) in `state_dir`.
    pub fn with_state(devices: Vec<DeviceConfig>, state_dir: Option<&std::path::Path>) -> Result<Arc<Subsystem>> {
        Self::with_config(devices, state_dir, namespace::PlacementConfig::default(), limits::Limits::default())
    }

    /// Like [`Subsystem::with_state`], with namespace placement (rules, admins, default).
    pub fn with_config(
        devices: Vec<DeviceConfig>,
        state_dir: Option<&std::path::Path>,
        placement: namespace::PlacementConfig,
        limits: limits::Limits,
    ) -> Result<Arc<Subsystem>> {
        let ras_devices: Vec<(Arc<dyn ras::RasHooks>, _)> = devices
            .iter()
            .map(|d| (Arc::new(driver::RasOf(d.driver.clone())) as Arc<dyn ras::RasHooks>, d.driver.info().ras_nodes))
            .collect();
        if let Some(dir) = state_dir {
            namespace::private_dir(dir)
                .map_err(|e| Error::new(accel_uapi::Errno::EIO, format!("state directory {}: {e}", dir.display())))?;
        }
        let log = state_dir.map(|d| d.join("ras.log"));
        let ras = ras::RasCore::with_log_limit(&ras_devices, log.as_deref(), limits.ras_log_max_bytes.max(4096))?;
        let devices = devices
            .into_iter()
            .enumerate()
            .map(|(i, cfg)| Device::new(i as u32, cfg).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let namespaces = namespace::Namespaces::new(&devices, placement, state_dir)?;
        let pollers = devices.iter().map(|_| ring::RingPoller::new().map(Arc::new)).collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Subsystem {
            devices,
            ras,
            namespaces,
            limits,
            fds: Default::default(),
            counters: Arc::new(Counters::default()),
            next_client: AtomicU64::new(1),
            exports: ExportTable::default(),
            syncobj_exports: ExportTable::default(),
            sync_files: syncfile::SyncFiles::new()?,
            pollers,
            clients: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The ring poller of device `minor` (global numbering).
    pub(crate) fn poller(&self, minor: u32) -> Arc<ring::RingPoller> {
        self.pollers[minor as usize].clone()
    }

    /// A new admin client in the root namespace (in-process users and tests).
    pub fn connect(self: &Arc<Self>, cred: PeerCred, name: &str) -> Client {
        self.connect_in(namespace::Placement { ns: self.namespaces.root().clone(), admin: true }, cred, name)
    }

    /// A new client where [`namespace::Namespaces::place`] put it.
    pub fn connect_in(self: &Arc<Self>, placement: namespace::Placement, cred: PeerCred, name: &str) -> Client {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let ns = placement.ns;
        let record = Arc::new(ClientRecord {
            ns: ns.name.clone(),
            cred,
            admin: placement.admin,
            name: Mutex::new(String::new()),
            device: Mutex::new(None),
            share: Mutex::new(None),
            usage: Default::default(),
            memory_bytes: AtomicU64::new(0),
            device_memory_bytes: AtomicU64::new(0),
            fds: Default::default(),
            revoked: std::sync::atomic::AtomicBool::new(false),
            revoke_hook: Mutex::new(None),
        });
        lock(&self.clients).insert(id, record.clone());
        ns.join();
        let client = Client::new(id, self.clone(), ns, record);
        client.set_name(name);
        client
    }

    /// Deletes a namespace; with clients connected it is refused (`EBUSY`) or, with
    /// [`namespace::Revoke::Evict`], they are evicted.
    pub fn delete_namespace(&self, name: &str, how: namespace::Revoke) -> Result<()> {
        let ns = self.namespaces.delete(name, how)?;
        self.evict(|r| r.ns == ns.name);
        Ok(())
    }

    /// Assigns a device share to a namespace; a share that shrinks below what its clients
    /// use is refused (`EBUSY`) or, with [`namespace::Revoke::Evict`], its clients are evicted.
    pub fn assign_share(&self, name: &str, device: u32, share: namespace::Share, how: namespace::Revoke) -> Result<()> {
        if let Some(shrunk) = self.namespaces.assign(name, device, share, how)? {
            self.evict(|r| lock(&r.share).as_ref().is_some_and(|s| Arc::ptr_eq(s, &shrunk)));
        }
        Ok(())
    }

    /// Evicts every client `which` selects: its jobs fail with `ENODEV` now, and its
    /// connection is closed, which frees everything it held.
    fn evict(&self, which: impl Fn(&ClientRecord) -> bool) {
        let victims: Vec<(u64, Arc<ClientRecord>)> =
            lock(&self.clients).iter().filter(|(_, r)| which(r)).map(|(id, r)| (*id, r.clone())).collect();
        for (id, r) in victims {
            tracing::info!(client = id, pid = r.cred.pid, ns = r.ns, "evicting client");
            r.revoke(id);
        }
    }

    pub(crate) fn forget_client(&self, id: u64) {
        lock(&self.clients).remove(&id);
    }

    /// Device `minor`, or `ENODEV`.
    pub fn device(&self, minor: u32) -> Result<&Arc<Device>> {
        self.devices
            .get(minor as usize)
            .ok_or_else(|| Error::new(accel_uapi::Errno::ENODEV, format!("no device accel{minor}")))
    }

    /// Every device's description (the root namespace's view).
    pub fn list_devices(&self) -> Vec<DeviceInfo> {
        self.namespaces.root().describe_all()
    }

    /// The namespaces.
    pub fn namespaces(&self) -> &namespace::Namespaces {
        &self.namespaces
    }

    /// The resource caps in force.
    pub fn limits(&self) -> &limits::Limits {
        &self.limits
    }

    /// Descriptors the daemon holds for clients right now.
    pub fn fds_held(&self) -> u64 {
        self.fds.load(Ordering::Relaxed)
    }

    /// Charges a descriptor the daemon itself holds for a connection (its socket) to the
    /// daemon's budget: `EMFILE` once only the admins' reserve is left (for non-admins).
    pub fn charge_connection(&self, admin: bool) -> Result<bo::Charge> {
        limits::charge_daemon(&self.limits, 1, &self.fds, admin)
    }

    /// The counters every object of this subsystem is tracked in.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The RAS core.
    pub fn ras(&self) -> &Arc<ras::RasCore> {
        &self.ras
    }

    /// Live object counts.
    pub fn stats(&self) -> ObjectCounts {
        self.counters.snapshot()
    }

    /// Usage of the clients a client of namespace `ns` with uid `viewer_uid` may see:
    /// every client for root, the namespace's clients elsewhere, and only the viewer's own
    /// user's in the default namespace (which strangers share).
    pub fn client_usage_in(&self, ns: &namespace::Namespace, viewer_uid: u32) -> Vec<ClientUsage> {
        lock(&self.clients)
            .iter()
            .filter(|(_, r)| ns.is_root() || r.ns == ns.name && (!ns.is_default() || r.cred.uid == viewer_uid))
            .map(|(id, r)| r.usage(*id))
            .collect()
    }

    /// Usage of every connected client with its namespace and process id, for monitoring.
    pub fn client_usage_by_namespace(&self) -> Vec<(String, ClientUsage)> {
        lock(&self.clients).iter().map(|(id, r)| (r.ns.clone(), r.usage(*id))).collect()
    }

    /// Usage of every connected client.
    pub fn client_usage(&self) -> Vec<ClientUsage> {
        self.client_usage_in(self.namespaces.root(), 0)
    }

    /// Every buffer is registered at creation, with its namespace: an import of any of its
    /// descriptors (export or mmap) resolves to it, or fails from another namespace.
    fn register_buffer(&self, bo: &Arc<BufferObject>, ns: &str) {
        if let Some(m) = bo.host() {
            self.exports.insert(m.inode(), bo, ns);
        }
    }

    /// A device buffer's exported descriptor: an import of it resolves to the buffer.
    fn register_export(&self, bo: &Arc<BufferObject>, fd: &OwnedFd, ns: &str) {
        if let Ok(key) = inode(fd) {
            self.exports.insert(key, bo, ns);
        }
    }

    fn find_buffer(&self, fd: &OwnedFd, ns: &str) -> Result<Option<Arc<BufferObject>>> {
        self.exports.find(fd, ns, |bo, fd| bo.is_exported_as(fd))
    }

    /// A descriptor naming `so`: an empty sealed memfd whose inode is the key.
    fn export_syncobj(&self, so: &Arc<Syncobj>, ns: &str) -> Result<OwnedFd> {
        let os = |e: rustix::io::Errno| Error::new(accel_uapi::Errno::ENOMEM, format!("syncobj export: {e}"));
        let fd = accel_uapi::shm::sealed_memfd("accel-syncobj", 0).map_err(os)?;
        self.syncobj_exports.insert(inode(&fd).map_err(os)?, so, ns);
        Ok(fd)
    }

    fn import_syncobj(&self, fd: &OwnedFd, ns: &str) -> Result<Arc<Syncobj>> {
        // DRM's FD_TO_HANDLE says EINVAL for any descriptor that is not a syncobj; so does
        // accel for one of another namespace, which it must not tell apart.
        self.syncobj_exports.find(fd, ns, |_, _| false).ok().flatten().ok_or_else(|| {
            Error::new(
                accel_uapi::Errno::EINVAL,
                "descriptor is not an exported syncobj, or every handle to it was closed",
            )
        })
    }
}

/// (device, inode) of a descriptor: how an exported object is recognised on import.
fn inode(fd: &OwnedFd) -> rustix::io::Result<Inode> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Objects reachable by descriptor, found again by the descriptor (PRIME-style import
/// returns the same object), each with the namespace it belongs to. Holds weak references:
/// being registered keeps nothing alive.
///
/// A regular file (a memfd) is known by its inode, which no other file shares. Other files
/// are not: every descriptor NVIDIA's drivers export (an opaque Vulkan descriptor, a CUDA
/// POSIX handle) and every anonymous inode share one inode with all the others of its kind,
/// so there the object must recognise the very open file it was exported as.
struct ExportTable<T>(Mutex<HashMap<Inode, Vec<Exported<T>>>>);

/// (device, inode) of a file.
type Inode = (u64, u64);

/// One exported object and its namespace.
type Exported<T> = (Weak<T>, String);

impl<T> Default for ExportTable<T> {
    fn default() -> Self {
        ExportTable(Mutex::new(HashMap::new()))
    }
}

impl<T> ExportTable<T> {
    fn insert(&self, key: Inode, obj: &Arc<T>, ns: &str) {
        let mut map = lock(&self.0);
        // Dead entries are dropped whenever the table doubles, so inserts stay O(1) amortised
        // (and from an inode's own list whenever it gets another).
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, entries| {
                entries.retain(|(w, _)| w.strong_count() > 0);
                !entries.is_empty()
            });
        }
        let weak = Arc::downgrade(obj);
        let entries = map.entry(key).or_default();
        entries.retain(|(w, _)| w.strong_count() > 0 && !w.ptr_eq(&weak));
        entries.push((weak, ns.to_string()));
    }

    /// The object behind `fd`: `Ok(None)` if the descriptor names none, `ENOENT` if it
    /// belongs to another namespace (which must not even learn that it exists). A
    /// descriptor that is not a regular file names an object of its inode only where
    /// `same(object, fd)` says it is the object's own open file.
    fn find(&self, fd: &OwnedFd, ns: &str, same: impl Fn(&T, BorrowedFd<'_>) -> bool) -> Result<Option<Arc<T>>> {
        let Ok(st) = rustix::fs::fstat(fd) else { return Ok(None) };
        let key = (st.st_dev, st.st_ino);
        // A regular file's inode is its identity, shared by every descriptor of it alone.
        let regular = rustix::fs::FileType::from_raw_mode(st.st_mode).is_file();
        let found = lock(&self.0).get(&key).and_then(|entries| {
            entries
                .iter()
                .rev()
                .filter_map(|(w, owner)| Some((w.upgrade()?, owner)))
                .find(|(obj, _)| regular || same(obj, fd.as_fd()))
                .map(|(obj, owner)| (obj, owner == ns))
        });
        match found {
            Some((obj, true)) => Ok(Some(obj)),
            Some((_, false)) => {
                Err(Error::new(accel_uapi::Errno::ENOENT, "descriptor is not importable in this namespace"))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A small fake driver for the core's own tests.

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use accel_uapi::{Category, EngineInfo, Errno, OpKind};

    use accel_hal::driver::{DeviceMemory, DriverError};
    use accel_hal::mem::HostMemory;

    use crate::device::DeviceConfig;
    use crate::driver::{Driver, DriverInfo, JobCtx, JobOp};

    /// `Driver { code: 1, args[0] = tag }` records the tag; code 2 fails with EIO; code 3 hangs;
    /// code 4 sleeps `args[1]` µs, then records `args[0]`; code 5 likewise, but fails with
    /// `ECANCELED` if aborted meanwhile.
    ///
    /// `asynchronous`: its engine completes jobs by itself, quick ones (codes 1 and 2, and
    /// ops) inside `submit_job`, the others from a thread of their own, as a device's
    /// interrupt would.
    #[derive(Default)]
    pub struct FakeDriver {
        pub ran: Arc<Mutex<Vec<u64>>>,
        pub asynchronous: bool,
        /// Jobs its engine runs at once (0: 1).
        pub credits: u32,
    }

    impl FakeDriver {
        /// A fake device whose engine completes jobs by itself, `credits` at once.
        pub fn async_engine(credits: u32) -> FakeDriver {
            FakeDriver { asynchronous: true, credits, ..FakeDriver::default() }
        }
    }

    /// What the fake device does with `op`, recording into `ran`.
    fn run(ran: &Mutex<Vec<u64>>, op: &JobOp, ctx: &JobCtx) -> Result<(), DriverError> {
        match op {
            JobOp::Driver { code: 1, args } => ran.lock().unwrap().push(args[0]),
            JobOp::Driver { code: 2, .. } => return Err(DriverError::new(Errno::EIO, "fake device fault at 0x1000")),
            JobOp::Driver { code: 3, .. } => while !ctx.abort.sleep(Duration::from_secs(60)) {},
            JobOp::Driver { code: 4, args } => {
                std::thread::sleep(Duration::from_micros(args[1]));
                ran.lock().unwrap().push(args[0]);
            }
            JobOp::Driver { code: 5, args } => {
                if ctx.abort.sleep(Duration::from_micros(args[1])) {
                    return Err(DriverError::new(Errno::ECANCELED, "fake job aborted"));
                }
                ran.lock().unwrap().push(args[0]);
            }
            _ => {}
        }
        Ok(())
    }

    impl Driver for FakeDriver {
        fn info(&self) -> DriverInfo {
            DriverInfo {
                driver: "fake",
                name: "fake".into(),
                vendor: "test".into(),
                categories: vec![Category::Shared, Category::Exclusive, Category::Oneshot],
                ops: vec![OpKind::Nop, OpKind::Fill, OpKind::Driver],
                memory_bytes: 1 << 24,
                compute_units: 1,
                engines: vec![EngineInfo { name: "compute".into(), credits: self.credits.max(1) }],
                ras_nodes: Vec::new(),
            }
        }

        fn run_job(&self, _engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), crate::driver::DriverError> {
            run(&self.ran, op, ctx)
        }

        fn asynchronous(&self, _engine: usize) -> bool {
            self.asynchronous
        }

        fn submit_job(&self, _engine: usize, op: &JobOp, ctx: &JobCtx, done: crate::driver::JobDone) {
            if matches!(op, JobOp::Driver { code: 3..=5, .. }) {
                let (ran, op, ctx) = (self.ran.clone(), op.clone(), ctx.clone());
                std::thread::spawn(move || done.complete(run(&ran, &op, &ctx)));
            } else {
                done.complete(run(&self.ran, op, ctx));
            }
        }

        /// One device region, `dev`: host memory behind the driver's back, exportable as its
        /// memfd, and importing sealed memfds as other runtimes' memory.
        fn regions(&self) -> Vec<accel_hal::driver::RegionDesc> {
            vec![accel_hal::driver::RegionDesc {
                name: "dev".into(),
                kind: accel_uapi::RegionKind::Device,
                size: 1 << 30,
                mappable: false,
                exportable: true,
                coherent: false,
            }]
        }

        fn alloc(&self, _region: usize, size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
            Ok(Arc::new(FakeMem(HostMemory::new("fake-dev", size).map_err(|e| DriverError::new(e.code, e.message))?)))
        }

        fn import_external(
            &self,
            _region: usize,
            fd: std::os::fd::OwnedFd,
            size: u64,
        ) -> Result<Arc<dyn DeviceMemory>, DriverError> {
            let mem = HostMemory::import_prefix(fd, size).map_err(|e| DriverError::new(e.code, e.message))?;
            Ok(Arc::new(FakeMem(mem)))
        }
    }

    /// Memory of the fake device's region.
    #[derive(Debug)]
    pub struct FakeMem(HostMemory);

    impl DeviceMemory for FakeMem {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }

        fn zero(&self) -> Result<(), DriverError> {
            Ok(())
        }

        fn export(&self) -> Result<std::os::fd::OwnedFd, DriverError> {
            self.0.dup_fd().map_err(|e| DriverError::new(e.code, e.message))
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    pub fn device(driver: &Arc<FakeDriver>) -> DeviceConfig {
        let mut cfg = DeviceConfig::new(driver.clone());
        cfg.job_timeout = Duration::from_millis(200);
        cfg
    }
}
