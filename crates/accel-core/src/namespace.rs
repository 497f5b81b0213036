//! Device namespaces: which devices a client sees, under which numbers, with which quotas.
//!
//! A namespace holds device assignments: a whole device, or a share of one (memory
//! limit, compute weight, most clients). Inside a namespace devices are numbered from
//! `accel0`, and nothing of another namespace is visible: devices, buffers, syncobjs,
//! clients, usage, RAS. The root namespace is the admin view: every device, no quotas.
//!
//! Namespaces are created and changed by an admin and kept in
//! `<state-dir>/namespaces.toml`, written atomically (temp file, fsync, rename, fsync
//! of the directory), and restored at start. Clients are placed by token (a namespace's
//! own, given in the handshake) or by the first matching placement rule of the config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use accel_uapi::{DeviceInfo, Errno};
use serde::{Deserialize, Serialize};

use crate::client::PeerCred;
use crate::device::Device;
use crate::{bail, Error, Result};

/// Name of the root namespace.
pub const ROOT: &str = "root";
/// Weight of a share that does not set one (the scheduler's default queue weight).
pub const DEFAULT_SHARE_WEIGHT: u32 = 100;

/// What part of a device a namespace gets. Zero means "no limit" (weight: default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Bytes of buffers the namespace may hold on the device.
    #[serde(default)]
    pub memory_limit: u64,
    /// Compute weight: multiplies the weights of the namespace's queues (100 = 1×).
    #[serde(default)]
    pub weight: u32,
    /// Clients of the namespace that may have the device open at once.
    #[serde(default)]
    pub max_clients: u32,
}

/// A device as a namespace sees it.
#[derive(Debug)]
pub struct NsDevice {
    /// The device.
    pub device: Arc<Device>,
    share: Mutex<Share>,
    pub(crate) mem_used: Arc<AtomicU64>,
    clients: AtomicU32,
}

impl NsDevice {
    fn new(device: Arc<Device>, share: Share) -> Arc<NsDevice> {
        Arc::new(NsDevice {
            device,
            share: Mutex::new(share),
            mem_used: Arc::new(AtomicU64::new(0)),
            clients: AtomicU32::new(0),
        })
    }

    /// The share (changes apply to clients already placed).
    pub fn share(&self) -> Share {
        *crate::lock(&self.share)
    }

    /// Bytes of buffers held in this share.
    pub fn memory_used(&self) -> u64 {
        self.mem_used.load(Ordering::Relaxed)
    }

    /// Clients with the device open through this share.
    pub fn clients(&self) -> u32 {
        self.clients.load(Ordering::Relaxed)
    }

    /// The memory limit the quota enforces (`u64::MAX` when the share sets none: the
    /// device's own memory is then the only bound).
    pub fn memory_limit(&self) -> u64 {
        match self.share().memory_limit {
            0 => u64::MAX,
            limit => limit,
        }
    }

    /// Scales a queue weight by the share's compute weight.
    pub fn scale_weight(&self, weight: u32) -> u32 {
        let share = match self.share().weight {
            0 => DEFAULT_SHARE_WEIGHT,
            w => w,
        };
        (u64::from(weight) * u64::from(share) / u64::from(DEFAULT_SHARE_WEIGHT)).clamp(1, u64::from(u32::MAX)) as u32
    }

    /// Counts a client in; `EUSERS` past `max_clients`.
    pub(crate) fn enter(&self) -> Result<()> {
        let max = self.share().max_clients;
        self.clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| (max == 0 || c < max).then_some(c + 1))
            .map(drop)
            .map_err(|_| Error::new(Errno::EUSERS, format!("namespace allows {max} clients on this device")))
    }

    pub(crate) fn leave(&self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A namespace.
#[derive(Debug)]
pub struct Namespace {
    /// Name (unique).
    pub name: String,
    /// Token that places a client here.
    pub token: Option<String>,
    /// Devices, by local minor.
    devices: RwLock<Vec<Arc<NsDevice>>>,
    root: bool,
}

impl Namespace {
    /// Whether this is the root namespace (the admin view).
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The device with local minor `minor`.
    pub fn device(&self, minor: u32) -> Result<Arc<NsDevice>> {
        self.devices()
            .get(minor as usize)
            .cloned()
            .ok_or_else(|| Error::new(Errno::ENODEV, format!("no device accel{minor}")))
    }

    /// Device `minor` as this namespace sees it (numbered locally).
    pub fn describe(&self, minor: u32) -> Result<DeviceInfo> {
        Ok(DeviceInfo { minor, ..self.device(minor)?.device.describe() })
    }

    /// Every device as this namespace sees it, numbered from 0.
    pub fn describe_all(&self) -> Vec<DeviceInfo> {
        self.devices().iter().enumerate().map(|(i, d)| DeviceInfo { minor: i as u32, ..d.device.describe() }).collect()
    }

    /// Every device, by local minor.
    pub fn devices(&self) -> Vec<Arc<NsDevice>> {
        self.devices.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One placement rule from the config: every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRule {
    /// Target namespace.
    pub namespace: String,
    /// Peer user id.
    pub uid: Option<u32>,
    /// Peer group id.
    pub gid: Option<u32>,
    /// Prefix of the peer's cgroup path (`/proc/<pid>/cgroup`, v2 line).
    pub cgroup_prefix: Option<String>,
    /// Inode of the peer's user namespace (`/proc/<pid>/ns/user`).
    pub userns: Option<u64>,
    /// Inode of the peer's pid namespace (`/proc/<pid>/ns/pid`).
    pub pidns: Option<u64>,
    /// Token the client gives in the handshake.
    pub token: Option<String>,
}

/// What placement looks at, read from `/proc/<pid>` of the peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// Credentials (`SO_PEERCRED`).
    pub cred: PeerCred,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
    /// User namespace inode.
    pub userns: Option<u64>,
    /// Pid namespace inode.
    pub pidns: Option<u64>,
}

impl PeerInfo {
    /// Reads what placement needs about process `cred.pid`.
    pub fn of(cred: PeerCred) -> PeerInfo {
        let proc = PathBuf::from(format!("/proc/{}", cred.pid));
        let ino = |p: &str| std::fs::metadata(proc.join(p)).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let cgroup = std::fs::read_to_string(proc.join("cgroup"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)));
        PeerInfo { cred, cgroup, userns: ino("ns/user"), pidns: ino("ns/pid") }
    }
}

impl PlacementRule {
    fn matches(&self, peer: &PeerInfo, token: Option<&str>) -> bool {
        self.uid.is_none_or(|u| u == peer.cred.uid)
            && self.gid.is_none_or(|g| g == peer.cred.gid)
            && self.cgroup_prefix.as_deref().is_none_or(|p| peer.cgroup.as_deref().is_some_and(|c| c.starts_with(p)))
            && self.userns.is_none_or(|n| peer.userns == Some(n))
            && self.pidns.is_none_or(|n| peer.pidns == Some(n))
            && self.token.as_deref().is_none_or(|t| token == Some(t))
    }
}

/// How a namespace is persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct NsRecord {
    token: Option<String>,
    #[serde(default)]
    devices: Vec<DeviceRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DeviceRecord {
    device: u32,
    #[serde(flatten)]
    share: Share,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    namespaces: BTreeMap<String, NsRecord>,
}

/// All namespaces of the daemon.
pub struct Namespaces {
    root: Arc<Namespace>,
    named: RwLock<BTreeMap<String, Arc<Namespace>>>,
    all_devices: Vec<Arc<Device>>,
    rules: Vec<PlacementRule>,
    state: Option<PathBuf>,
}

impl Namespaces {
    /// The root namespace over `devices`, plus the namespaces saved in `state_dir`.
    pub(crate) fn new(
        devices: &[Arc<Device>],
        rules: Vec<PlacementRule>,
        state_dir: Option<&Path>,
    ) -> Result<Namespaces> {
        let root = Arc::new(Namespace {
            name: ROOT.into(),
            token: None,
            devices: RwLock::new(devices.iter().map(|d| NsDevice::new(d.clone(), Share::default())).collect()),
            root: true,
        });
        let ns = Namespaces {
            root,
            named: RwLock::new(BTreeMap::new()),
            all_devices: devices.to_vec(),
            rules,
            state: state_dir.map(|d| d.join("namespaces.toml")),
        };
        if let Some(path) = &ns.state {
            if path.exists() {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::new(Errno::EIO, format!("{}: {e}", path.display())))?;
                let file: StateFile =
                    toml::from_str(&text).map_err(|e| Error::new(Errno::EINVAL, format!("{}: {e}", path.display())))?;
                for (name, rec) in file.namespaces {
                    ns.insert(&name, rec)?;
                }
            }
        }
        for r in &ns.rules {
            if r.namespace != ROOT && !ns.named_read().contains_key(&r.namespace) {
                tracing::warn!("placement rule names namespace {:?}, which does not exist (yet)", r.namespace);
            }
        }
        Ok(ns)
    }

    fn named_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Namespace>>> {
        self.named.read().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, name: &str, rec: NsRecord) -> Result<()> {
        let mut devices = Vec::new();
        for d in &rec.devices {
            let Some(dev) = self.all_devices.get(d.device as usize) else {
                bail!(ENODEV, "namespace {name}: no device accel{}", d.device);
            };
            devices.push(NsDevice::new(dev.clone(), d.share));
        }
        let ns = Namespace { name: name.into(), token: rec.token, devices: RwLock::new(devices), root: false };
        self.named.write().unwrap_or_else(|e| e.into_inner()).insert(name.into(), Arc::new(ns));
        Ok(())
    }

    /// The root namespace.
    pub fn root(&self) -> &Arc<Namespace> {
        &self.root
    }

    /// A namespace by name.
    pub fn get(&self, name: &str) -> Result<Arc<Namespace>> {
        if name == ROOT {
            return Ok(self.root.clone());
        }
        self.named_read().get(name).cloned().ok_or_else(|| Error::new(Errno::ENOENT, format!("no namespace {name:?}")))
    }

    /// Every namespace except root.
    pub fn list(&self) -> Vec<Arc<Namespace>> {
        self.named_read().values().cloned().collect()
    }

    /// Where a new client goes: the namespace whose token it gave, else the first
    /// matching rule, else root.
    pub fn place(&self, peer: &PeerInfo, token: Option<&str>) -> Result<Arc<Namespace>> {
        if let Some(t) = token {
            if let Some(ns) = self.named_read().values().find(|n| n.token.as_deref() == Some(t)) {
                return Ok(ns.clone());
            }
        }
        match self.rules.iter().find(|r| r.matches(peer, token)) {
            Some(rule) => self.get(&rule.namespace).map_err(|e| {
                Error::new(
                    Errno::EACCES,
                    format!("placement rule sends this client to a missing namespace: {}", e.message),
                )
            }),
            None if token.is_some() => bail!(EACCES, "unknown namespace token"),
            None => Ok(self.root.clone()),
        }
    }

    /// Creates a namespace.
    pub fn create(&self, name: &str, token: Option<String>) -> Result<()> {
        if name.is_empty()
            || name == ROOT
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(EINVAL, "namespace names are 1–64 of [A-Za-z0-9._-] and not {ROOT:?}");
        }
        if self.named_read().contains_key(name) {
            bail!(EEXIST, "namespace {name:?} exists");
        }
        if token.is_some() && self.named_read().values().any(|n| n.token == token) {
            bail!(EEXIST, "another namespace has that token");
        }
        self.insert(name, NsRecord { token, devices: Vec::new() })?;
        self.save()
    }

    /// Deletes a namespace; its clients keep what they have until they disconnect.
    pub fn delete(&self, name: &str) -> Result<()> {
        if self.named.write().unwrap_or_else(|e| e.into_inner()).remove(name).is_none() {
            bail!(ENOENT, "no namespace {name:?}");
        }
        self.save()
    }

    /// Assigns global device `device` to a namespace with `share` (again: updates the share).
    pub fn assign(&self, name: &str, device: u32, share: Share) -> Result<()> {
        let ns = self.get(name)?;
        if ns.is_root() {
            bail!(EINVAL, "the root namespace has every device");
        }
        let Some(dev) = self.all_devices.get(device as usize) else { bail!(ENODEV, "no device accel{device}") };
        {
            let mut devices = ns.devices.write().unwrap_or_else(|e| e.into_inner());
            match devices.iter().find(|d| d.device.minor == device) {
                Some(d) => *crate::lock(&d.share) = share,
                None => devices.push(NsDevice::new(dev.clone(), share)),
            }
        }
        self.save()
    }

    fn save(&self) -> Result<()> {
        let Some(path) = &self.state else { return Ok(()) };
        let file = StateFile {
            namespaces: self
                .named_read()
                .iter()
                .map(|(name, ns)| {
                    let devices = ns
                        .devices()
                        .iter()
                        .map(|d| DeviceRecord { device: d.device.minor, share: d.share() })
                        .collect();
                    (name.clone(), NsRecord { token: ns.token.clone(), devices })
                })
                .collect(),
        };
        let text =
            toml::to_string_pretty(&file).map_err(|e| Error::new(Errno::EIO, format!("encoding namespaces: {e}")))?;
        write_atomically(path, text.as_bytes())
            .map_err(|e| Error::new(Errno::EIO, format!("saving {}: {e}", path.display())))
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("state")));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{device, FakeDriver};

    fn devices(n: usize) -> Vec<Arc<Device>> {
        (0..n).map(|i| Arc::new(Device::new(i as u32, device(&Arc::new(FakeDriver::default()))).unwrap())).collect()
    }

    #[test]
    fn share_weight_scales_queue_weights() {
        let d = NsDevice::new(devices(1).remove(0), Share { weight: 300, ..Default::default() });
        assert_eq!(d.scale_weight(100), 300);
        assert_eq!(d.scale_weight(1), 3);
        let default = NsDevice::new(devices(1).remove(0), Share::default());
        assert_eq!(default.scale_weight(250), 250);
        let tiny = NsDevice::new(devices(1).remove(0), Share { weight: 1, ..Default::default() });
        assert_eq!(tiny.scale_weight(1), 1, "never zero");
    }

    #[test]
    fn rules_match_only_when_every_given_field_matches() {
        let peer = PeerInfo {
            cred: PeerCred { pid: 1, uid: 1000, gid: 100 },
            cgroup: Some("/user.slice/user-1000.slice/app.scope".into()),
            userns: Some(7),
            pidns: Some(8),
        };
        let rule = |f: fn(&mut PlacementRule)| {
            let mut r = PlacementRule { namespace: "x".into(), ..Default::default() };
            f(&mut r);
            r
        };
        assert!(rule(|r| r.uid = Some(1000)).matches(&peer, None));
        assert!(!rule(|r| r.uid = Some(0)).matches(&peer, None));
        assert!(rule(|r| r.cgroup_prefix = Some("/user.slice/".into())).matches(&peer, None));
        assert!(!rule(|r| r.cgroup_prefix = Some("/system.slice/".into())).matches(&peer, None));
        assert!(rule(|r| {
            r.userns = Some(7);
            r.pidns = Some(8);
            r.gid = Some(100)
        })
        .matches(&peer, None));
        assert!(!rule(|r| r.token = Some("t".into())).matches(&peer, None));
        assert!(rule(|r| r.token = Some("t".into())).matches(&peer, Some("t")));
    }

    #[test]
    fn state_is_written_atomically_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let devs = devices(2);
        let ns = Namespaces::new(&devs, Vec::new(), Some(dir.path())).unwrap();
        ns.create("a", Some("tok".into())).unwrap();
        ns.assign("a", 1, Share { memory_limit: 4096, weight: 50, max_clients: 3 }).unwrap();
        assert_eq!(ns.create("a", None).unwrap_err().code, Errno::EEXIST);
        assert_eq!(ns.create("root", None).unwrap_err().code, Errno::EINVAL);
        assert_eq!(ns.assign("a", 9, Share::default()).unwrap_err().code, Errno::ENODEV);
        assert!(!dir.path().join(".namespaces.toml.tmp").exists(), "no temp file left behind");
        let again = Namespaces::new(&devs, Vec::new(), Some(dir.path())).unwrap();
        let a = again.get("a").unwrap();
        assert_eq!(a.token.as_deref(), Some("tok"));
        assert_eq!(a.devices()[0].device.minor, 1);
        assert_eq!(a.devices()[0].share(), Share { memory_limit: 4096, weight: 50, max_clients: 3 });
        let peer = PeerInfo::default();
        assert_eq!(again.place(&peer, Some("tok")).unwrap().name, "a");
        assert!(again.place(&peer, None).unwrap().is_root());
        again.delete("a").unwrap();
        assert!(Namespaces::new(&devs, Vec::new(), Some(dir.path())).unwrap().list().is_empty());
    }
}
