//! Device namespaces: which devices a client sees, under which numbers, with which quotas.
//!
//! A namespace holds device assignments: a whole device, or a share of one (memory
//! limit, compute weight, most clients). Inside a namespace devices are numbered from
//! `accel0`, and nothing of another namespace is visible: devices, buffers, syncobjs,
//! clients, usage, RAS. The root namespace is the admin view: every device, no quotas.
//!
//! Namespaces are created and changed by an admin and kept in
//! `<state-dir>/namespaces.toml` (mode 0600 in a 0700 directory, tokens only as salted
//! hashes), written atomically (temp file, fsync, rename, fsync of the directory), and
//! restored at start. A change that cannot be saved is undone and fails with `EIO`.
//!
//! Placement (deny by default): a client goes to the namespace whose token it gives, else
//! to the first matching placement rule's, else — if it is an admin — to root, else to the
//! default namespace (`default`, created empty: no devices, no view of anyone else).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use accel_uapi::{DeviceInfo, Errno};
use serde::{Deserialize, Serialize};

use crate::credentials::{self, TokenCache};
use crate::device::Device;
use crate::{bail, lock, Error, Result};

mod persist;
mod placement;

pub use crate::files::{private_dir, write_atomically};
use persist::{DeviceRecord, NsRecord, StateFile};
pub use placement::{PeerInfo, Placement, PlacementConfig, PlacementRule};

/// Name of the root namespace.
pub const ROOT: &str = "root";
/// Weight of a share that does not set one (the scheduler's default queue weight).
pub const DEFAULT_SHARE_WEIGHT: u32 = 100;
/// Name of the namespace unplaced non-admin clients go to, unless the config names another.
pub const DEFAULT: &str = "default";

/// What part of a device a namespace gets. Zero means "no limit" (weight: default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Bytes of buffers the namespace may hold on the device.
    #[serde(default)]
    pub memory_limit: u64,
    /// Compute weight: the namespace's share of the device's engines against other
    /// namespaces' (100 = the default), however many queues its clients open.
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
    /// Bytes held in each region; region 0 (host) is `mem_used`. The share's memory quota
    /// applies to each region on its own.
    pub(crate) region_used: Vec<Arc<AtomicU64>>,
    clients: AtomicU32,
    /// The scheduler group of the namespace's queues on the device.
    group: u64,
}

/// Scheduler group ids, one per namespace and device.
static NEXT_GROUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl NsDevice {
    fn new(device: Arc<Device>, share: Share) -> Arc<NsDevice> {
        let mem_used = Arc::new(AtomicU64::new(0));
        let region_used = std::iter::once(mem_used.clone())
            .chain((1..device.regions.len()).map(|_| Arc::new(AtomicU64::new(0))))
            .collect();
        let group = NEXT_GROUP.fetch_add(1, Ordering::Relaxed);
        Arc::new(NsDevice {
            device,
            share: Mutex::new(share),
            mem_used,
            region_used,
            clients: AtomicU32::new(0),
            group,
        })
    }

    /// The share (changes apply to clients already placed).
    pub fn share(&self) -> Share {
        *crate::lock(&self.share)
    }

    /// Bytes held in each region of the device, by region id.
    pub fn region_used(&self) -> Vec<u64> {
        self.region_used.iter().map(|u| u.load(Ordering::Relaxed)).collect()
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

    /// The scheduler group the namespace's queues on the device join: its compute weight
    /// shares the device with other namespaces, however many queues they open.
    pub fn group(&self) -> crate::sched::Group {
        let weight = match self.share().weight {
            0 => DEFAULT_SHARE_WEIGHT,
            w => w,
        };
        crate::sched::Group { id: self.group, weight }
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
    /// Hashes (PHC strings) of the tokens that place a client here, newest last.
    tokens: RwLock<Vec<String>>,
    /// Devices, by local minor.
    devices: RwLock<Vec<Arc<NsDevice>>>,
    /// Connected clients placed here.
    members: AtomicU32,
    /// Descriptors the daemon holds for this namespace's clients.
    pub(crate) fds: crate::limits::FdCount,
    /// Handles this namespace's clients hold.
    pub(crate) objects: AtomicU64,
    root: bool,
    default: bool,
}

impl Namespace {
    fn new(name: &str, tokens: Vec<String>, devices: Vec<Arc<NsDevice>>, root: bool, default: bool) -> Namespace {
        Namespace {
            name: name.into(),
            tokens: RwLock::new(tokens),
            devices: RwLock::new(devices),
            members: AtomicU32::new(0),
            fds: Default::default(),
            objects: AtomicU64::new(0),
            root,
            default,
        }
    }

    /// Whether this is the default namespace, where unplaced non-admin clients share a
    /// view (so they see only their own user's clients).
    pub fn is_default(&self) -> bool {
        self.default
    }

    /// Whether any token places clients here.
    pub fn has_token(&self) -> bool {
        !self.token_hashes().is_empty()
    }

    fn token_hashes(&self) -> Vec<String> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connected clients placed in this namespace.
    pub fn members(&self) -> u32 {
        self.members.load(Ordering::Acquire)
    }

    pub(crate) fn join(&self) {
        self.members.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn part(&self) {
        self.members.fetch_sub(1, Ordering::AcqRel);
    }

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

/// A change to a share that takes away from clients already using it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// Refuse with `EBUSY` while clients use what would be taken away.
    Refuse,
    /// Evict those clients: their jobs fail with `ENODEV`, their memory is freed.
    Evict,
}

/// All namespaces of the daemon.
pub struct Namespaces {
    root: Arc<Namespace>,
    named: RwLock<BTreeMap<String, Arc<Namespace>>>,
    all_devices: Vec<Arc<Device>>,
    /// Placement rules and the admin policy; replaced on a reload (SIGHUP).
    config: RwLock<PlacementConfig>,
    default_ns: String,
    cache: TokenCache,
    /// Serialises admin changes: apply, save, undo on failure.
    changes: Mutex<()>,
    state: Option<PathBuf>,
}

impl Namespaces {
    /// The root namespace over `devices`, plus the namespaces saved in `state_dir`.
    pub(crate) fn new(
        devices: &[Arc<Device>],
        config: PlacementConfig,
        state_dir: Option<&Path>,
    ) -> Result<Namespaces> {
        let root = Arc::new(Namespace::new(
            ROOT,
            Vec::new(),
            devices.iter().map(|d| NsDevice::new(d.clone(), Share::default())).collect(),
            true,
            false,
        ));
        let default_ns = config.default_namespace.clone().unwrap_or_else(|| DEFAULT.into());
        let ns = Namespaces {
            root,
            named: RwLock::new(BTreeMap::new()),
            all_devices: devices.to_vec(),
            config: RwLock::new(config),
            default_ns,
            cache: TokenCache::default(),
            changes: Mutex::new(()),
            state: state_dir.map(|d| d.join("namespaces.toml")),
        };
        let mut migrated = false;
        if let Some(path) = &ns.state {
            if path.exists() {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::new(Errno::EIO, format!("{}: {e}", path.display())))?;
                let file: StateFile =
                    toml::from_str(&text).map_err(|e| Error::new(Errno::EINVAL, format!("{}: {e}", path.display())))?;
                for (name, mut rec) in file.namespaces {
                    if let Some(plain) = rec.token.take() {
                        rec.token_hashes.push(credentials::hash_token(&plain)?);
                        migrated = true;
                    }
                    ns.insert(&name, rec)?;
                }
            }
        }
        if ns.default_ns == ROOT {
            bail!(EINVAL, "the default namespace cannot be root: root is for admins only");
        }
        if !ns.named_read().contains_key(&ns.default_ns) {
            // Created empty (no devices): an admin may give it a share for every unplaced user.
            ns.insert(&ns.default_ns.clone(), NsRecord::default())?;
        }
        if migrated {
            tracing::info!("namespaces: plaintext tokens replaced by salted hashes");
            ns.save()?;
        }
        ns.warn_missing();
        Ok(ns)
    }

    fn named_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Namespace>>> {
        self.named.read().unwrap_or_else(|e| e.into_inner())
    }

    fn named_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Namespace>>> {
        self.named.write().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, name: &str, rec: NsRecord) -> Result<Arc<Namespace>> {
        let mut devices = Vec::new();
        for d in &rec.devices {
            let Some(dev) = self.all_devices.get(d.device as usize) else {
                bail!(ENODEV, "namespace {name}: no device accel{}", d.device);
            };
            devices.push(NsDevice::new(dev.clone(), d.share));
        }
        let ns = Arc::new(Namespace::new(name, rec.token_hashes, devices, false, name == self.default_ns));
        self.named_write().insert(name.into(), ns.clone());
        Ok(ns)
    }

    /// The root namespace.
    pub fn root(&self) -> &Arc<Namespace> {
        &self.root
    }

    /// The namespace unplaced non-admin clients go to.
    pub fn default_name(&self) -> &str {
        &self.default_ns
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

    /// The namespace one of whose tokens is `token`.
    fn by_token(&self, token: &str) -> Option<Arc<Namespace>> {
        if let Some(name) = self.cache.get(token) {
            if let Some(ns) = self.named_read().get(&name) {
                return Some(ns.clone());
            }
        }
        let candidates: Vec<Arc<Namespace>> = self.named_read().values().filter(|n| n.has_token()).cloned().collect();
        let ns =
            candidates.into_iter().find(|n| n.token_hashes().iter().any(|h| credentials::verify_token(h, token)))?;
        self.cache.put(token, &ns.name);
        Some(ns)
    }

    /// Whether a peer is an admin (root, the daemon's user, an admin group).
    pub fn is_admin(&self, peer: &PeerInfo) -> bool {
        self.placement().admin.is_admin(peer.cred.uid, peer.cred.gid, &peer.groups)
    }

    fn placement(&self) -> std::sync::RwLockReadGuard<'_, PlacementConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    fn warn_missing(&self) {
        for r in &self.placement().rules {
            if r.namespace != ROOT && !self.named_read().contains_key(&r.namespace) {
                tracing::warn!("placement rule names namespace {:?}, which does not exist (yet)", r.namespace);
            }
        }
    }

    /// Replaces the placement rules and the admin policy (a config reload): clients already
    /// connected keep their namespace; new ones are placed by the new rules. The default
    /// namespace is fixed at start (`EINVAL` if the new config names another).
    pub fn reload(&self, config: PlacementConfig) -> Result<()> {
        let wanted = config.default_namespace.clone().unwrap_or_else(|| DEFAULT.into());
        if wanted != self.default_ns {
            bail!(EINVAL, "the default namespace ({:?}) cannot change without a restart", self.default_ns);
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        self.warn_missing();
        Ok(())
    }

    /// Where a new client goes (deny by default): the namespace whose token it gave, else
    /// the first matching rule's, else root for an admin, else the default namespace.
    /// Only admins may be placed in root.
    pub fn place(&self, peer: &PeerInfo, token: Option<&str>) -> Result<Placement> {
        let admin = self.is_admin(peer);
        let placed = |ns: Arc<Namespace>| {
            if ns.is_root() && !admin {
                bail!(EACCES, "the root namespace is for admins only (uid {} is not one)", peer.cred.uid);
            }
            Ok(Placement { ns, admin })
        };
        if let Some(t) = token {
            credentials::check_token(t).map_err(|_| Error::new(Errno::EACCES, "unknown namespace token"))?;
            if let Some(ns) = self.by_token(t) {
                return placed(ns);
            }
        }
        let rule = self.placement().rules.iter().find(|r| r.matches(peer, token)).map(|r| r.namespace.clone());
        match rule {
            Some(rule) => placed(self.get(&rule).map_err(|e| {
                Error::new(
                    Errno::EACCES,
                    format!("placement rule sends this client to a missing namespace: {}", e.message),
                )
            })?),
            None if token.is_some() => bail!(EACCES, "unknown namespace token"),
            None if admin => placed(self.root.clone()),
            None => placed(self.get(&self.default_ns).map_err(|_| {
                Error::new(Errno::EACCES, format!("default namespace {:?} was deleted", self.default_ns))
            })?),
        }
    }

    /// Refuses a token another namespace already uses.
    fn check_unique(&self, token: &str) -> Result<()> {
        if self.by_token(token).is_some() {
            bail!(EEXIST, "another namespace has that token");
        }
        Ok(())
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
        let _change = lock(&self.changes);
        if self.named_read().contains_key(name) {
            bail!(EEXIST, "namespace {name:?} exists");
        }
        let mut token_hashes = Vec::new();
        if let Some(t) = &token {
            credentials::check_token(t)?;
            self.check_unique(t)?;
            token_hashes.push(credentials::hash_token(t)?);
        }
        self.insert(name, NsRecord { token: None, token_hashes, devices: Vec::new() })?;
        self.save().inspect_err(|_| {
            self.named_write().remove(name);
        })
    }

    /// Removes a namespace. With clients connected it is refused (`EBUSY`) unless `how`
    /// is [`Revoke::Evict`]; the caller then evicts them. Returns the removed namespace.
    pub(crate) fn delete(&self, name: &str, how: Revoke) -> Result<Arc<Namespace>> {
        let _change = lock(&self.changes);
        let ns = self.get(name)?;
        if ns.is_root() {
            bail!(EINVAL, "the root namespace cannot be deleted");
        }
        if how == Revoke::Refuse && ns.members() > 0 {
            bail!(EBUSY, "namespace {name:?} has {} connected clients; evict them to delete it", ns.members());
        }
        self.named_write().remove(name);
        self.cache.clear();
        self.save().inspect_err(|_| {
            self.named_write().insert(name.into(), ns.clone());
        })?;
        Ok(ns)
    }

    /// Assigns global device `device` to a namespace with `share` (again: updates the
    /// share). A share that shrinks below what its clients use (memory, client count) is
    /// refused with `EBUSY`, or, with [`Revoke::Evict`], returned so the caller evicts
    /// that share's clients.
    pub(crate) fn assign(&self, name: &str, device: u32, share: Share, how: Revoke) -> Result<Option<Arc<NsDevice>>> {
        let ns = self.get(name)?;
        if ns.is_root() {
            bail!(EINVAL, "the root namespace has every device");
        }
        let Some(dev) = self.all_devices.get(device as usize) else { bail!(ENODEV, "no device accel{device}") };
        let _change = lock(&self.changes);
        let existing = ns.devices().into_iter().find(|d| d.device.minor == device);
        let shrinks = existing.as_ref().filter(|d| {
            (share.memory_limit != 0 && share.memory_limit < d.memory_used())
                || (share.max_clients != 0 && share.max_clients < d.clients())
        });
        if let (Some(d), Revoke::Refuse) = (shrinks, how) {
            bail!(
                EBUSY,
                "namespace {name:?} uses {} bytes and {} clients on accel{device}, more than the new share allows; \
                 evict its clients to shrink it",
                d.memory_used(),
                d.clients()
            );
        }
        let evict = shrinks.cloned();
        match &existing {
            Some(d) => {
                let old = std::mem::replace(&mut *lock(&d.share), share);
                self.save().inspect_err(|_| *lock(&d.share) = old)?;
            }
            None => {
                ns.devices.write().unwrap_or_else(|e| e.into_inner()).push(NsDevice::new(dev.clone(), share));
                self.save().inspect_err(|_| {
                    ns.devices.write().unwrap_or_else(|e| e.into_inner()).pop();
                })?;
            }
        }
        Ok(evict)
    }

    /// Gives a namespace a new token (`token`, or a generated one, which is returned).
    /// `keep_old` keeps the current tokens valid too (rotation without downtime: roll the
    /// new one out, then call [`Namespaces::retire_tokens`]); at most
    /// [`credentials::MAX_TOKENS`] stay valid, oldest dropped first.
    pub fn rotate_token(&self, name: &str, token: Option<String>, keep_old: bool) -> Result<String> {
        let ns = self.get(name)?;
        if ns.is_root() {
            bail!(EINVAL, "the root namespace has no tokens: admins are placed there by credentials");
        }
        let token = token.unwrap_or_else(credentials::generate_token);
        credentials::check_token(&token)?;
        let _change = lock(&self.changes);
        self.check_unique(&token)?;
        let hash = credentials::hash_token(&token)?;
        let old = ns.token_hashes();
        let mut new = if keep_old { old.clone() } else { Vec::new() };
        new.push(hash);
        let excess = new.len().saturating_sub(credentials::MAX_TOKENS);
        new.drain(..excess);
        self.set_tokens(&ns, new, old)?;
        Ok(token)
    }

    /// Invalidates every token of a namespace but the newest; returns how many were retired.
    pub fn retire_tokens(&self, name: &str) -> Result<usize> {
        let ns = self.get(name)?;
        let _change = lock(&self.changes);
        let old = ns.token_hashes();
        let keep = old.last().cloned().into_iter().collect();
        self.set_tokens(&ns, keep, old.clone())?;
        Ok(old.len().saturating_sub(1))
    }

    fn set_tokens(&self, ns: &Namespace, new: Vec<String>, old: Vec<String>) -> Result<()> {
        *ns.tokens.write().unwrap_or_else(|e| e.into_inner()) = new;
        self.cache.clear();
        self.save().inspect_err(|_| *ns.tokens.write().unwrap_or_else(|e| e.into_inner()) = old)
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
                    (name.clone(), NsRecord { token: None, token_hashes: ns.token_hashes(), devices })
                })
                .collect(),
        };
        let text =
            toml::to_string_pretty(&file).map_err(|e| Error::new(Errno::EIO, format!("encoding namespaces: {e}")))?;
        write_atomically(path, text.as_bytes())
            .map_err(|e| Error::new(Errno::EIO, format!("saving {}: {e}; the change was not made", path.display())))
    }
}

#[cfg(test)]
mod tests;
