//! A client: one connection, the analogue of `struct drm_file`.
//!
//! It owns per-client handle tables (generational: a closed handle's slot gets a
//! new version, so the old value never resolves again) and everything it
//! created. Dropping the client — on close or on crash — cancels its jobs,
//! releases its device lease and frees every object only it referenced.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accel_uapi::{
    ClientUsage, Errno, FenceHandle, FenceStatus, Op, Priority, QueueHandle, SignalPoint, SyncobjHandle, WaitPoint,
};
use slotmap::SlotMap;

use crate::bo::{BoTable, Charge};
use crate::counters::{Kind, Tracked};
use crate::device::Device;
use crate::fence::{wait_fences, Fence};
use crate::limits::{charge_fds, FdCount};
use crate::namespace::{Namespace, NsDevice};
use crate::ring::{RingFds, RingPoller, RingQueue};
use crate::sched::{EntityId, EntityParams, Job, UsageCounters, DEFAULT_WEIGHT, MAX_WEIGHT};
use crate::syncobj::{Syncobj, SyncobjTable, Unsubmitted};
use crate::{bail, lock, Error, Result, Subsystem};

pub use crate::handles::MAX_HANDLES;
use crate::handles::{insert, key, lookup};
/// Most wait or signal points in one request.
pub const MAX_POINTS: usize = 64;

slotmap::new_key_type! {
    struct QueueKey;
    struct FenceKey;
}

pub use crate::credentials::PeerCred;

/// Called to close an evicted client's connection.
pub type RevokeHook = Box<dyn Fn() + Send + Sync>;

/// What the subsystem keeps about a client: for usage listings and for eviction.
pub(crate) struct ClientRecord {
    pub(crate) ns: String,
    pub(crate) cred: PeerCred,
    /// Root, the daemon's user or an admin group member: may use high priorities, change
    /// RAS state and manage namespaces (like `CAP_SYS_NICE` / `GENL_ADMIN_PERM`).
    pub(crate) admin: bool,
    pub(crate) name: Mutex<String>,
    pub(crate) device: Mutex<Option<u32>>,
    /// The namespace share of the open device.
    pub(crate) share: Mutex<Option<Arc<NsDevice>>>,
    pub(crate) usage: Arc<UsageCounters>,
    pub(crate) memory_bytes: AtomicU64,
    /// Bytes in the device's own regions.
    pub(crate) device_memory_bytes: AtomicU64,
    /// Descriptors the daemon holds for this client.
    pub(crate) fds: FdCount,
    pub(crate) revoked: AtomicBool,
    pub(crate) revoke_hook: Mutex<Option<RevokeHook>>,
}

impl ClientRecord {
    /// Evicts the client: its jobs fail with `ENODEV` now, and its connection is closed
    /// (the hook), which drops the client and frees what it held.
    pub(crate) fn revoke(&self, id: u64) {
        self.revoked.store(true, Ordering::Release);
        if let Some(share) = lock(&self.share).as_ref() {
            share.device.sched.cancel_client_with(id, Errno::ENODEV);
        }
        if let Some(hook) = lock(&self.revoke_hook).as_ref() {
            hook();
        }
    }

    pub(crate) fn usage(&self, client_id: u64) -> ClientUsage {
        ClientUsage {
            client_id,
            pid: self.cred.pid,
            name: lock(&self.name).clone(),
            device: *lock(&self.device),
            engine_ns: self.usage.engine_ns.load(Ordering::Relaxed),
            jobs_completed: self.usage.jobs_completed.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            device_memory_bytes: self.device_memory_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A queue: a handle on a scheduler entity, and its ring if it has one. Dropping it
/// removes both.
struct Queue {
    entity: EntityId,
    device: Arc<Device>,
    /// The ring and the device's poller that serves it.
    ring: Option<(Arc<RingQueue>, Arc<RingPoller>)>,
    /// The ring's memory and descriptor, charged while it lives.
    ring_charges: Vec<Charge>,
    _tracked: Tracked,
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some((ring, poller)) = self.ring.take() {
            poller.unregister(&ring);
        }
        self.device.sched.destroy_entity(self.entity);
        self.ring_charges.clear();
    }
}

/// One connected client.
pub struct Client {
    id: u64,
    sub: Arc<Subsystem>,
    ns: Arc<Namespace>,
    share: Option<Arc<NsDevice>>,
    record: Arc<ClientRecord>,
    bos: Arc<BoTable>,
    queues: SlotMap<QueueKey, Queue>,
    fences: SlotMap<FenceKey, Arc<Fence>>,
    /// Shared with the client's rings (weakly), whose entries may name syncobjs.
    syncobjs: Arc<SyncobjTable>,
    /// Loaded programs, shared (weakly) with the client's rings.
    programs: Arc<crate::program::ProgramTable>,
    /// Handles counted against the namespace's object cap.
    ns_objects: u64,
    /// Its jobs submitted and not yet done (`jobs_per_client`).
    jobs: crate::limits::JobBudget,
    _tracked: Tracked,
}

impl Client {
    pub(crate) fn new(id: u64, sub: Arc<Subsystem>, ns: Arc<Namespace>, record: Arc<ClientRecord>) -> Client {
        let tracked = Tracked::new(&sub.counters, Kind::Client);
        let jobs = crate::limits::JobBudget::new(sub.limits().jobs_per_client);
        Client {
            id,
            sub,
            ns,
            share: None,
            record,
            bos: Arc::new(BoTable::default()),
            queues: SlotMap::with_key(),
            fences: SlotMap::with_key(),
            syncobjs: Arc::default(),
            programs: Arc::default(),
            ns_objects: 0,
            jobs,
            _tracked: tracked,
        }
    }

    /// The id the subsystem gave this client.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The subsystem this client belongs to.
    pub fn subsystem(&self) -> &Arc<Subsystem> {
        &self.sub
    }

    /// Sets the name shown in usage listings.
    pub fn set_name(&self, name: &str) {
        *lock(&self.record.name) = name.chars().take(64).collect();
    }

    /// The client's namespace.
    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.ns
    }

    /// Whether the client is an admin (see [`crate::credentials::AdminPolicy`]).
    pub fn is_admin(&self) -> bool {
        self.record.admin
    }

    /// The peer's credentials.
    pub fn cred(&self) -> PeerCred {
        self.record.cred
    }

    /// Sets what closes this client's connection if an admin evicts it (namespace
    /// deleted, share shrunk). Runs at once if the eviction already happened.
    pub fn set_revoke_hook(&self, hook: RevokeHook) {
        let revoked = self.record.revoked.load(Ordering::Acquire);
        if revoked {
            hook();
        }
        *lock(&self.record.revoke_hook) = Some(hook);
    }

    /// Whether an admin evicted this client.
    pub fn is_revoked(&self) -> bool {
        self.record.revoked.load(Ordering::Acquire)
    }

    fn check_live(&self) -> Result<()> {
        if self.is_revoked() {
            bail!(ENODEV, "this client was evicted from namespace {:?} by an admin", self.ns.name);
        }
        Ok(())
    }

    /// Runs `create`, which adds one handle, within the client's and the namespace's object
    /// caps (`ENOSPC`); the namespace's count is reserved first and returned on failure.
    fn with_object<T>(&mut self, create: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let limits = *self.sub.limits();
        let held =
            (self.bos.len() + self.queues.len() + self.fences.len() + self.syncobjs.len() + self.programs.len()) as u64;
        if limits.objects_per_client != 0 && held >= limits.objects_per_client {
            bail!(ENOSPC, "this client holds {held} handles, its limit; close some first");
        }
        let cap = if self.ns.is_root() || limits.objects_per_namespace == 0 {
            u64::MAX
        } else {
            limits.objects_per_namespace
        };
        if self.ns.objects.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).is_err() {
            bail!(ENOSPC, "namespace {:?} holds {cap} handles, its limit", self.ns.name);
        }
        let made = create(self);
        match made {
            Ok(_) => self.ns_objects += 1,
            Err(_) => {
                self.ns.objects.fetch_sub(1, Ordering::AcqRel);
            }
        }
        made
    }

    /// Returns one handle's place in the namespace's object count.
    fn released_object(&mut self) {
        self.ns_objects -= 1;
        self.ns.objects.fetch_sub(1, Ordering::AcqRel);
    }

    /// Charges `n` descriptors held for this client (`EMFILE` when a cap is reached).
    fn charge_fds(&self, n: u64) -> Result<Vec<Charge>> {
        let ns = (!self.ns.is_root()).then_some(&self.ns.fds);
        charge_fds(self.sub.limits(), n, &self.record.fds, ns, &self.sub.fds, self.record.admin)
    }

    /// Records that device `minor` is open through `share`.
    fn opened(&mut self, minor: u32, share: Arc<NsDevice>) -> &Arc<NsDevice> {
        *lock(&self.record.device) = Some(minor);
        *lock(&self.record.share) = Some(share.clone());
        self.share.insert(share)
    }

    /// Opens device `minor` (numbered within the client's namespace); the client then
    /// works on that device only. `EUSERS` when the namespace's share is full.
    ///
    /// Never blocks: `Ok(true)` once open; `Ok(false)` while an exclusive device's lease is
    /// held and `queue` put this client in line (`EBUSY` without `queue`). Then call again
    /// when [`Client::on_lease_change`]'s callback runs, or [`Client::open_cancel`] to give up.
    pub fn open_poll(&mut self, minor: u32, queue: bool) -> Result<bool> {
        if self.share.is_some() {
            bail!(EINVAL, "this connection already has a device open; open another connection");
        }
        let share = self.ns.device(minor)?;
        share.enter()?;
        match share.device.open_poll(self.id, queue) {
            Ok(true) => {
                self.opened(minor, share);
                Ok(true)
            }
            other => {
                share.leave();
                other
            }
        }
    }

    /// Calls `watcher` once device `minor`'s exclusive lease may be free for this client
    /// (at once if it is now). A minor outside the namespace calls it at once too, so the
    /// retry sees the error.
    pub fn on_lease_change(&self, minor: u32, watcher: crate::device::LeaseWatcher) {
        match self.ns.device(minor) {
            Ok(share) => share.device.on_lease_change(self.id, watcher),
            Err(_) => watcher(),
        }
    }

    /// Gives up waiting for device `minor`'s lease.
    pub fn open_cancel(&self, minor: u32) {
        if let Ok(share) = self.ns.device(minor) {
            share.device.open_cancel(self.id);
        }
    }

    /// The fences behind `points` (for an event loop's asynchronous wait; see
    /// [`crate::fence::poll_fences`]).
    pub fn wait_fences_of(&self, points: &[WaitPoint]) -> Result<Vec<Arc<Fence>>> {
        if points.is_empty() {
            bail!(EINVAL, "nothing to wait on");
        }
        self.resolve_waits(points, Unsubmitted::Refuse)
    }

    /// Whether every job of this client has completed (its fences and ring completions
    /// written): what an eviction waits for before closing the connection.
    pub fn settled(&self) -> bool {
        !(self.fences.values().any(|f| f.status() == accel_uapi::FenceStatus::Pending)
            || self.queues.values().any(|q| q.ring.as_ref().is_some_and(|(r, _)| r.in_flight() > 0)))
    }

    /// The namespace's share of the open device.
    fn share(&self) -> Result<&Arc<NsDevice>> {
        self.share
            .as_ref()
            .ok_or_else(|| Error::new(Errno::ENODEV, "no device open on this connection: send Open first"))
    }

    fn device(&self) -> Result<&Arc<Device>> {
        Ok(&self.share()?.device)
    }

    /// Creates a queue (scheduler entity); `timeout_ms == 0` takes the device default,
    /// `weight == 0` takes [`DEFAULT_WEIGHT`]. The high and kernel classes are for the
    /// daemon's own user and root, like DRM's `CAP_SYS_NICE` rule for high priority.
    pub fn queue_create(&mut self, timeout_ms: u64, priority: Priority, weight: u32) -> Result<QueueHandle> {
        let dev = self.device()?.clone();
        let timeout = if timeout_ms == 0 { dev.job_timeout } else { Duration::from_millis(timeout_ms) };
        let weight = if weight == 0 { DEFAULT_WEIGHT } else { weight };
        if weight > MAX_WEIGHT {
            bail!(EINVAL, "weight {weight} is above the limit of {MAX_WEIGHT}");
        }
        let uid = self.record.cred.uid;
        if priority > Priority::Normal && !self.record.admin {
            bail!(
                EACCES,
                "the {} priority class needs root or the daemon's user (uid {uid} is neither)",
                priority.name()
            );
        }
        if self.queues.len() >= MAX_HANDLES {
            bail!(ENOSPC, "too many queue handles (limit {MAX_HANDLES})");
        }
        // The queue shares its namespace's part of the device with the namespace's other
        // queues; namespaces share the device by their compute weights.
        let params = EntityParams { priority, weight, timeout };
        let entity = dev.sched.create_entity_in(self.share()?.group(), self.id, params, self.record.usage.clone());
        let q = Queue {
            entity,
            device: dev,
            ring: None,
            ring_charges: Vec::new(),
            _tracked: Tracked::new(&self.sub.counters, Kind::Queue),
        };
        Ok(QueueHandle(self.with_object(|c| insert(&mut c.queues, "queue", q))?))
    }

    /// Gives a queue a shared-memory submission ring of `entries` (a power of two up to
    /// 4096). Returns the ring memfd, the ring's doorbell and its completion eventfd.
    /// The ring's memory is charged like a buffer's, plus its two descriptors (completion
    /// eventfd and doorbell).
    pub fn ring_create(&mut self, h: QueueHandle, entries: u32) -> Result<RingFds> {
        self.check_live()?;
        let counters = self.sub.counters.clone();
        let bos = self.bos.clone();
        if lookup(&self.queues, "queue", h.0)?.ring.is_some() {
            bail!(EBUSY, "queue {:#x} already has a ring", h.0);
        }
        let layout = accel_uapi::ring::RingLayout::new(entries)
            .map_err(|code| Error::new(code, format!("ring size {entries} is not a power of two in 1..=4096")))?;
        let mut charges = self.charge_memory(layout.size() as u64, 0)?;
        charges.extend(self.charge_fds(2)?);
        let q = self
            .queues
            .get_mut(key(h.0))
            .ok_or_else(|| Error::new(Errno::ENOENT, format!("no queue with handle {:#x}", h.0)))?;
        if q.ring.is_some() {
            bail!(EBUSY, "queue {:#x} already has a ring", h.0);
        }
        let (ring, consumer, memfd, completion) =
            RingQueue::new(entries, q.entity, bos, &self.syncobjs, &self.programs, &counters, &self.jobs)?;
        let doorbell = ring.doorbell_for_client()?;
        let poller = self.sub.poller(q.device.minor);
        poller.register(&q.device, ring.clone(), consumer)?;
        q.ring = Some((ring, poller));
        q.ring_charges = charges;
        Ok(RingFds { ring: memfd, doorbell, completion })
    }

    /// Takes the messages of the failed entries of a queue's ring.
    pub fn ring_errors(&self, h: QueueHandle) -> Result<(Vec<accel_uapi::RingError>, u64)> {
        match &lookup(&self.queues, "queue", h.0)?.ring {
            Some((ring, _)) => Ok(ring.take_errors()),
            None => bail!(ENOENT, "queue {:#x} has no ring", h.0),
        }
    }

    /// Destroys a queue, cancelling its queued jobs.
    pub fn queue_destroy(&mut self, h: QueueHandle) -> Result<()> {
        self.queues
            .remove(key(h.0))
            .map(drop)
            .ok_or_else(|| Error::new(Errno::ENOENT, format!("no queue with handle {:#x}", h.0)))?;
        self.released_object();
        Ok(())
    }

    fn syncobj(&self, h: SyncobjHandle) -> Result<Arc<Syncobj>> {
        self.syncobjs.get(h)
    }

    /// The fence behind a wait point; a syncobj point not submitted yet is what
    /// `unsubmitted` says (jobs wait for it to be submitted; host waits refuse it).
    fn resolve_wait(&self, p: &WaitPoint, unsubmitted: Unsubmitted) -> Result<Arc<Fence>> {
        match p {
            WaitPoint::Fence(h) => lookup(&self.fences, "fence", h.0).cloned(),
            WaitPoint::Syncobj { handle, point } => self.syncobj(*handle)?.fence_for(*point, unsubmitted),
        }
    }

    fn resolve_waits(&self, points: &[WaitPoint], unsubmitted: Unsubmitted) -> Result<Vec<Arc<Fence>>> {
        if points.len() > MAX_POINTS {
            bail!(E2BIG, "{} wait points exceed the limit of {MAX_POINTS}", points.len());
        }
        points.iter().map(|p| self.resolve_wait(p, unsubmitted)).collect()
    }

    /// Queues a job; returns its fence handle and device sequence number.
    ///
    /// Everything is validated before anything changes, so a rejected submit has no effect.
    pub fn submit(
        &mut self,
        queue: QueueHandle,
        op: &Op,
        wait: &[WaitPoint],
        signal: &[SignalPoint],
    ) -> Result<(FenceHandle, u64)> {
        if self.fences.len() >= MAX_HANDLES {
            bail!(ENOSPC, "too many fence handles (limit {MAX_HANDLES}); close fences you no longer need");
        }
        // The handle's place is reserved before the job is queued, so a refused submit
        // changes nothing.
        self.with_object(|c| {
            let (fence, seqno) = c.submit_job(queue, op, wait, signal)?;
            Ok((FenceHandle(insert(&mut c.fences, "fence", fence)?), seqno))
        })
    }

    /// Like [`Client::submit`], without a fence handle: the fence itself, for a caller that
    /// waits on it at once (`SubmitWait`).
    pub fn submit_job(
        &mut self,
        queue: QueueHandle,
        op: &Op,
        wait: &[WaitPoint],
        signal: &[SignalPoint],
    ) -> Result<(Arc<Fence>, u64)> {
        self.check_live()?;
        let dev = self.device()?.clone();
        let q = lookup(&self.queues, "queue", queue.0)?;
        let (entity, has_ring) = (q.entity, q.ring.is_some());
        if dev.sched.is_wedged() {
            bail!(EIO, "accel{} is wedged (an engine reset failed or the device was lost)", dev.minor);
        }
        if dev.sched.is_banned(entity) {
            bail!(ECANCELED, "queue {:#x} is banned after hung jobs; create a new context", queue.0);
        }
        dev.check_op(op)?;
        let job_op = match op {
            Op::Launch(l) => crate::program::resolve_launch(&self.bos, &self.programs, l)?,
            op => crate::ops::resolve_op(&self.bos, op)?,
        };
        // Wait-before-signal: a syncobj point nothing was submitted for yet is waited for.
        let deps = self.resolve_waits(wait, Unsubmitted::WaitSubmit)?;
        let charge = self.jobs.charge()?;
        if signal.len() > MAX_POINTS {
            bail!(E2BIG, "{} signal points exceed the limit of {MAX_POINTS}", signal.len());
        }
        let mut syncs = Vec::with_capacity(signal.len());
        for (i, s) in signal.iter().enumerate() {
            if signal[..i].iter().any(|o| o.handle == s.handle) {
                bail!(EINVAL, "syncobj {:#x} appears twice in the signal list", s.handle.0);
            }
            syncs.push((self.syncobj(s.handle)?, s.point));
        }
        let fence = Fence::new(&self.sub.counters);
        for (so, point) in syncs {
            so.add_point(point, fence.clone());
        }
        let seqno = dev.next_seqno();
        // A null job with nothing before it completes here, as on a ring: the queue's order
        // allows it, and it is the socket path's floor. (Not on a queue with a ring, whose
        // poller submits to the same queue from another thread.)
        if matches!(op, Op::Nop) && deps.is_empty() && !has_ring && dev.sched.entity_idle(entity) {
            self.record.usage.jobs_completed.fetch_add(1, Ordering::Relaxed);
            fence.signal(Ok(()));
            return Ok((fence, seqno));
        }
        let job = Job::new(&self.sub.counters, job_op, deps, fence.clone()).charged(charge);
        if let Err(e) = dev.sched.push(entity, job) {
            // Lost a race with a ban or a wedge: the fence already sits in syncobjs, so it
            // must still signal, with the reason.
            fence.signal(Err(e.code));
            return Err(e);
        }
        Ok((fence, seqno))
    }

    /// Waits for all or any of `points`; see [`wait_fences`].
    pub fn wait(
        &self,
        points: &[WaitPoint],
        all: bool,
        timeout: Duration,
    ) -> Result<(u32, Vec<FenceStatus>, Vec<u64>)> {
        let fences = self.resolve_waits(points, Unsubmitted::Refuse)?;
        let (first, status) = wait_fences(&fences, all, timeout)?;
        Ok((first, status, fences.iter().map(|f| f.timestamp()).collect()))
    }

    /// Drops a fence handle.
    pub fn fence_close(&mut self, h: FenceHandle) -> Result<()> {
        self.fences
            .remove(key(h.0))
            .map(drop)
            .ok_or_else(|| Error::new(Errno::ENOENT, format!("no fence with handle {:#x}", h.0)))?;
        self.released_object();
        Ok(())
    }

    /// An eventfd that becomes readable (value 1) when the point signals.
    pub fn export_sync_fd(&self, p: &WaitPoint) -> Result<OwnedFd> {
        use rustix::event::{eventfd, EventfdFlags};
        let fence = self.resolve_wait(p, Unsubmitted::Refuse)?;
        // The daemon keeps a duplicate until the fence signals: charge it.
        let charges = self.charge_fds(1)?;
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::new(Errno::ENOMEM, format!("eventfd: {e}")))?;
        let ours =
            rustix::io::fcntl_dupfd_cloexec(&efd, 0).map_err(|e| Error::new(Errno::EBADF, format!("dup: {e}")))?;
        fence.on_signal(move |_| {
            let _ = rustix::io::write(&ours, &1u64.to_ne_bytes());
            drop(charges);
        });
        Ok(efd)
    }
}

impl Client {
    /// The device's own fence for the job behind `p` as a kernel sync file
    /// ([`accel_uapi::Request::ExportNativeSyncFile`]): `EALREADY` once it signalled.
    pub fn export_native_sync_file(&self, p: &WaitPoint) -> Result<OwnedFd> {
        let fence = self.resolve_wait(p, Unsubmitted::Refuse)?;
        match fence.native_sync_file()? {
            Some(fd) => Ok(fd),
            None => bail!(EALREADY, "the fence has signalled: nothing to wait for"),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(share) = &self.share {
            share.device.sched.cancel_client(self.id);
            share.device.close(self.id);
            share.leave();
        }
        *lock(&self.record.revoke_hook) = None;
        *lock(&self.record.share) = None;
        self.ns.objects.fetch_sub(self.ns_objects, Ordering::AcqRel);
        self.ns.part();
        self.sub.forget_client(self.id);
    }
}

mod memory;
mod program;
mod sync;
#[cfg(test)]
mod tests;
