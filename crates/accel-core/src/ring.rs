//! Submission rings, daemon side: one per queue, served by the device's poller thread.
//!
//! The poller copies entries out of the shared ring, decodes them with the same codec
//! the client encodes with, validates operands against the client's buffer table
//! exactly as a socket submission is validated, and hands jobs to the scheduler. A
//! null job on a ring with nothing in flight completes on the spot: ordering allows it
//! and it is the fast path's floor. Completions come back through the job's fence.
//!
//! Nothing the client can write is trusted: counts are bounded by the ring size and
//! every bad entry gets an error completion with its `user_data`.
//!
//! Idle rings cost nothing: the poller sweeps only *active* rings. A ring with no work for
//! [`POLL_SPIN`] goes idle: its `poller_sleeping` flag is set (so its client rings the
//! ring's own doorbell after publishing) and the poller stops looking at it. Each ring's
//! doorbell is its own eventfd in the poller's epoll set, so a doorbell says which ring
//! rang, and only that ring becomes active again. Busy rings are served by spinning,
//! without syscalls; the poller checks the epoll set without blocking every 256 spins.
//! A ring whose client spins for its completions (its `client_spins` hint) counts as busy
//! while it has jobs in flight: that client submits again the moment they complete. The hint
//! costs this thread's spinning only while the client's own jobs run (each bounded by its
//! queue's timeout), never a doorbell.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use accel_uapi::ring::{opcode, Cqe, RingLayout, RingMem, Sqe, MAX_RING_ERRORS};
use accel_uapi::{Errno, FenceStatus, Op, RingError};
use rustix::event::{eventfd, EventfdFlags};

use crate::bo::BoTable;
use crate::counters::{Counters, Kind, Tracked};
use crate::device::Device;
use crate::fence::{monotonic_ns, Fence};
use crate::program::ProgramTable;
use crate::sched::{EntityId, Job};
use crate::syncobj::{Syncobj, SyncobjTable, Unsubmitted};
use crate::{lock, Error, Result};

/// Most entries taken from one ring per sweep, so one busy ring cannot starve the others.
pub const RING_BUDGET: u32 = 256;
/// How long the poller keeps spinning after it last found work before it sleeps.
pub const POLL_SPIN: Duration = Duration::from_micros(100);

/// Rings with jobs in flight, in this process: the clients that may be spinning for their
/// completions, which the spin budget each ring's header suggests is judged by.
static BUSY_RINGS: AtomicUsize = AtomicUsize::new(0);

/// How long a ring client's default wait should spin now, in microseconds
/// ([`accel_uapi::spin::ring_wait`] for the rings busy now and this process's CPUs).
fn spin_budget_us() -> u32 {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(accel_uapi::spin::cpus);
    let budget = accel_uapi::spin::ring_wait(BUSY_RINGS.load(Ordering::Relaxed), cpus);
    u32::try_from(budget.as_micros()).unwrap_or(u32::MAX)
}

/// The consuming side of a ring: where the daemon is in the submission ring. Exactly
/// one exists per ring (returned by [`RingQueue::new`]), so consumption needs no lock.
#[derive(Debug)]
pub struct RingConsumer {
    sq_head: u32,
    /// Last `cq_head` read from the client; re-read only when the CQ looks full, because
    /// every read of a line the client writes is a cross-core transfer.
    cq_head_seen: u32,
    /// Entries consumed whose completion may not have been read yet: CQ space is
    /// reserved at consumption, so completions never overwrite unread ones.
    cq_reserved: u32,
    /// The spin budget last written to the ring's header (µs; 0: none yet).
    spin_budget: u32,
}

/// One queue's ring.
pub struct RingQueue {
    mem: RingMem,
    completion: OwnedFd,
    /// The ring's doorbell: the client writes it when it publishes work and sees the
    /// poller's flag set.
    doorbell: OwnedFd,
    entity: EntityId,
    /// The client's buffer table, weakly: a ring the poller has not let go of yet must not
    /// keep a departed client's buffers (and their quota charges) alive.
    bos: Weak<BoTable>,
    /// The client's syncobj table, weakly, for `SYNC` entries.
    syncobjs: Weak<SyncobjTable>,
    /// The client's programs, weakly, for launches.
    programs: Weak<ProgramTable>,
    counters: Arc<Counters>,
    /// The client's job budget: a ring's jobs count with its socket ones.
    jobs: crate::limits::JobBudget,
    /// Next completion slot. Producers that run beside others (job completions on slot
    /// threads) hold `cq_lock`; the poller writes inline completions without it, which
    /// is safe only while `inflight` is 0 (then it is the only producer).
    cq_tail: AtomicU32,
    cq_lock: Mutex<()>,
    inflight: AtomicU32,
    /// Messages of failed entries, newest last, and how many were dropped for room.
    errors: Mutex<(VecDeque<RingError>, u64)>,
    _tracked: Tracked,
}

/// Syncobj points a job signals.
type SignalList = Vec<(Arc<Syncobj>, u64)>;

fn os(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::new(Errno::ENOMEM, format!("{what}: {e}"))
}

/// What a client gets for a new ring: the ring memory, the ring's doorbell, and the
/// ring's completion eventfd.
pub struct RingFds {
    /// The ring memfd.
    pub ring: OwnedFd,
    /// Write 1 here after publishing work if the poller sleeps.
    pub doorbell: OwnedFd,
    /// Readable when completions arrived while `client_waiting` was set.
    pub completion: OwnedFd,
}

/// A new ring: the shared part, its single consumer, the ring memfd and a descriptor
/// of its completion eventfd.
pub type NewRing = (Arc<RingQueue>, RingConsumer, OwnedFd, OwnedFd);

impl RingQueue {
    /// A ring for `entity`, validating operands against `bos`. The daemon registers rings
    /// with the device's poller; embedders and benchmarks may instead drive one with
    /// [`RingQueue::process_into`].
    pub fn new(
        sq_entries: u32,
        entity: EntityId,
        bos: Arc<BoTable>,
        syncobjs: &Arc<SyncobjTable>,
        programs: &Arc<ProgramTable>,
        counters: &Arc<Counters>,
        jobs: &crate::limits::JobBudget,
    ) -> Result<NewRing> {
        let layout = RingLayout::new(sq_entries)
            .map_err(|code| Error::new(code, format!("ring size {sq_entries} is not a power of two in 1..=4096")))?;
        let (mem, memfd) = RingMem::create(layout).map_err(os("creating ring memory"))?;
        let completion = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(os("eventfd"))?;
        let completion_for_client = rustix::io::fcntl_dupfd_cloexec(&completion, 0).map_err(os("dup"))?;
        let doorbell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(os("eventfd"))?;
        let ring = Arc::new(RingQueue {
            mem,
            completion,
            doorbell,
            entity,
            bos: Arc::downgrade(&bos),
            syncobjs: Arc::downgrade(syncobjs),
            programs: Arc::downgrade(programs),
            counters: counters.clone(),
            jobs: jobs.clone(),
            cq_tail: AtomicU32::new(0),
            cq_lock: Mutex::new(()),
            inflight: AtomicU32::new(0),
            errors: Mutex::new((VecDeque::new(), 0)),
            _tracked: Tracked::new(counters, Kind::Ring),
        });
        let consumer = RingConsumer { sq_head: 0, cq_head_seen: 0, cq_reserved: 0, spin_budget: 0 };
        Ok((ring, consumer, memfd, completion_for_client))
    }

    /// An entry is published and its completion would fit. A ring whose client does not
    /// read its completions has no work, so the poller can sleep instead of spinning on it
    /// (the client rings the doorbell when it reaps with submissions still pending).
    fn has_work(&self, c: &RingConsumer) -> bool {
        if !self.mem.sqe_ready(c.sq_head) {
            return false;
        }
        // The cached cq_head first: reading the client's line costs a cross-core transfer
        // on every round trip, and is only needed when the completion ring looks full.
        let entries = self.mem.layout().cq_entries;
        c.cq_reserved.wrapping_sub(c.cq_head_seen) < entries
            || c.cq_reserved.wrapping_sub(self.mem.cq_head().load(Ordering::Acquire)) < entries
    }

    /// Takes up to `budget` entries and starts them, using `batch` as scratch. Returns
    /// how many it took.
    ///
    /// Null jobs at the front of the batch on an idle queue complete right here (one
    /// clock read and one wake-up check per batch); everything from the first real job
    /// on goes through the scheduler, so completions stay in order.
    pub fn process_into(
        self: &Arc<Self>,
        dev: &Device,
        c: &mut RingConsumer,
        budget: u32,
        batch: &mut Vec<Sqe>,
    ) -> u32 {
        // A bare load first: the poller sweeps every ring of the device on each pass.
        if !self.mem.sqe_ready(c.sq_head) {
            return 0;
        }
        let layout = self.mem.layout();
        let limit = budget.min(layout.sq_entries);
        let mut unread = c.cq_reserved.wrapping_sub(c.cq_head_seen);
        if unread > layout.cq_entries.saturating_sub(limit) {
            c.cq_head_seen = self.mem.cq_head().load(Ordering::Acquire);
            unread = c.cq_reserved.wrapping_sub(c.cq_head_seen);
        }
        // A scribbled cq_head that claims more unread completions than fit reads as "full".
        let max = limit.min(layout.cq_entries.saturating_sub(unread));
        batch.clear();
        while (batch.len() as u32) < max {
            let Some(sqe) = self.mem.read_sqe(c.sq_head) else { break };
            batch.push(sqe);
            c.sq_head = c.sq_head.wrapping_add(1);
        }
        if batch.is_empty() {
            return 0;
        }
        let taken = batch.len() as u32;
        c.cq_reserved = c.cq_reserved.wrapping_add(taken);
        self.mem.sq_head().store(c.sq_head, Ordering::Release);

        // Acquire pairs with the completion path's release of `inflight`: seeing 0 means
        // every earlier completion, and its cq_tail update, is done and visible.
        let inline = if self.inflight.load(Ordering::Acquire) == 0 {
            batch.iter().take_while(|s| s.decode() == Ok(Op::Nop)).count()
        } else {
            0
        };
        if inline > 0 {
            let timestamp = monotonic_ns();
            let first = dev.reserve_seqnos(inline as u64);
            let mut tail = self.cq_tail.load(Ordering::Relaxed);
            for (i, sqe) in batch[..inline].iter().enumerate() {
                let cqe = Cqe { user_data: sqe.user_data, seq: 0, result: 0, timestamp, seqno: first + i as u64 };
                self.mem.write_cqe(tail, &cqe);
                tail = tail.wrapping_add(1);
            }
            self.cq_tail.store(tail, Ordering::Relaxed);
            self.wake_client();
        }
        for sqe in &batch[inline..] {
            self.start(dev, sqe);
        }
        // For the client's wait that follows: written only when it changes (the client
        // reads the line once per wait).
        let budget = spin_budget_us();
        if budget != c.spin_budget {
            c.spin_budget = budget;
            self.mem.spin_budget().store(budget, Ordering::Relaxed);
        }
        taken
    }

    fn wake_client(&self) {
        if self.mem.peer_sleeps(self.mem.client_waiting()) {
            let _ = rustix::io::write(&self.completion, &1u64.to_ne_bytes());
        }
    }

    /// A `SYNC` entry's wait fences (points not submitted yet are waited for) and the
    /// syncobj points its job signals, all resolved before anything changes.
    fn sync_points(&self, sqe: &Sqe) -> Result<(Vec<Arc<Fence>>, SignalList)> {
        let (waits, signals) = sqe.decode_sync().map_err(|code| Error::new(code, "bad SYNC entry"))?;
        let table = self.syncobjs.upgrade().ok_or_else(|| Error::new(Errno::ECANCELED, "the ring's client is gone"))?;
        let deps = waits
            .iter()
            .map(|(h, p)| table.get(*h)?.fence_for(*p, Unsubmitted::WaitSubmit))
            .collect::<Result<Vec<_>>>()?;
        let signals = signals.iter().map(|(h, p)| Ok((table.get(*h)?, *p))).collect::<Result<Vec<_>>>()?;
        Ok((deps, signals))
    }

    fn start(self: &Arc<Self>, dev: &Device, sqe: &Sqe) {
        let user_data = sqe.user_data;
        let (op, deps, signals) = if sqe.opcode == opcode::SYNC {
            match self.sync_points(sqe) {
                Ok((deps, signals)) => (Op::Nop, deps, signals),
                Err(e) => return self.refuse(user_data, e),
            }
        } else {
            match sqe.decode() {
                Ok(op) => (op, Vec::new(), Vec::new()),
                Err(code) => {
                    let what = format!("ring entry with opcode {} does not decode", sqe.opcode);
                    return self.refuse(user_data, Error::new(code, what));
                }
            }
        };
        let resolved = match (self.bos.upgrade(), self.programs.upgrade()) {
            (Some(bos), Some(programs)) => dev.check_op(&op).and_then(|()| match &op {
                Op::Launch(l) => crate::program::resolve_launch(&bos, &programs, l),
                op => crate::ops::resolve_op(&bos, op),
            }),
            _ => Err(Error::new(Errno::ECANCELED, "the ring's client is gone")),
        };
        let job_op = match resolved {
            Ok(j) => j,
            Err(e) => return self.refuse(user_data, e),
        };
        let charge = match self.jobs.charge() {
            Ok(c) => c,
            Err(e) => return self.refuse(user_data, e),
        };
        let seqno = dev.next_seqno();
        let fence = Fence::new(&self.counters);
        // Signal points first: their callbacks then run before the completion's, so a client
        // that sees the completion also sees the points signalled.
        for (so, point) in signals {
            so.add_point(point, fence.clone());
        }
        if self.inflight.fetch_add(1, Ordering::AcqRel) == 0 {
            BUSY_RINGS.fetch_add(1, Ordering::Relaxed);
        }
        let ring = self.clone();
        let weak = Arc::downgrade(&fence);
        fence.on_signal(move |status| {
            let result = match status {
                FenceStatus::Error(code) => {
                    let message = weak.upgrade().and_then(|f| f.message()).unwrap_or_else(|| code.to_string());
                    ring.record_error(RingError { user_data, seqno, code, message });
                    Err(code)
                }
                _ => Ok(()),
            };
            ring.complete(user_data, result, seqno);
            if ring.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
                BUSY_RINGS.fetch_sub(1, Ordering::Relaxed);
            }
        });
        let job = Job::new(&self.counters, job_op, deps, fence.clone()).charged(charge);
        if let Err(e) = dev.sched.push(self.entity, job) {
            fence.signal_with(Err(e.code), Some(e.message));
        }
    }

    /// A descriptor of this ring's doorbell, for its client.
    pub fn doorbell_for_client(&self) -> Result<OwnedFd> {
        rustix::io::fcntl_dupfd_cloexec(&self.doorbell, 0).map_err(os("dup"))
    }

    /// Jobs of this ring that have not completed yet.
    pub fn in_flight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    /// Takes the messages of failed entries (oldest first) and how many were dropped.
    pub fn take_errors(&self) -> (Vec<RingError>, u64) {
        let mut e = lock(&self.errors);
        let dropped = std::mem::take(&mut e.1);
        (e.0.drain(..).collect(), dropped)
    }

    fn record_error(&self, error: RingError) {
        let mut e = lock(&self.errors);
        if e.0.len() == MAX_RING_ERRORS {
            e.0.pop_front();
            e.1 += 1;
        }
        e.0.push_back(error);
    }

    /// Completes an entry refused before it became a job, keeping the reason.
    fn refuse(&self, user_data: u64, e: Error) {
        let code = e.code;
        self.record_error(RingError { user_data, seqno: 0, code, message: e.message });
        self.complete(user_data, Err(code), 0)
    }

    fn complete(&self, user_data: u64, result: Result<(), Errno>, seqno: u64) {
        let cqe = Cqe {
            user_data,
            seq: 0,
            result: result.err().map_or(0, |e| -(e.raw() as i32)),
            timestamp: monotonic_ns(),
            seqno,
        };
        {
            let _guard = lock(&self.cq_lock);
            let tail = self.cq_tail.load(Ordering::Relaxed);
            self.mem.write_cqe(tail, &cqe);
            self.cq_tail.store(tail.wrapping_add(1), Ordering::Relaxed);
        }
        self.wake_client();
    }
}

/// What the poller thread shares with the rest: the ring set's changes and the stop flag.
struct PollerState {
    /// Rings waiting to be picked up by the poller thread, with their consumers.
    added: Mutex<Vec<(Arc<RingQueue>, RingConsumer)>>,
    /// Rings to drop from the poller's set.
    removed: Mutex<Vec<Arc<RingQueue>>>,
    version: AtomicU64,
    /// The poller's own wake-up (ring set changes, shutdown).
    control: OwnedFd,
    shutdown: AtomicBool,
}

/// A device's ring poller: one thread serving every ring of the device. The subsystem
/// keeps one per device (the device itself knows nothing of rings); it stops when dropped.
pub struct RingPoller {
    state: Arc<PollerState>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl RingPoller {
    /// A poller whose thread starts with the first ring.
    pub fn new() -> Result<RingPoller> {
        Ok(RingPoller {
            state: Arc::new(PollerState {
                added: Mutex::new(Vec::new()),
                removed: Mutex::new(Vec::new()),
                version: AtomicU64::new(0),
                control: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(os("eventfd"))?,
                shutdown: AtomicBool::new(false),
            }),
            thread: Mutex::new(None),
        })
    }

    fn wake(&self) {
        let _ = rustix::io::write(&self.state.control, &1u64.to_ne_bytes());
    }

    /// Adds a ring and makes sure the poller thread runs.
    pub(crate) fn register(&self, dev: &Arc<Device>, ring: Arc<RingQueue>, consumer: RingConsumer) -> Result<()> {
        lock(&self.state.added).push((ring, consumer));
        self.state.version.fetch_add(1, Ordering::Release);
        let mut thread = lock(&self.thread);
        if thread.is_none() {
            let (weak, state) = (Arc::downgrade(dev), self.state.clone());
            let t = std::thread::Builder::new()
                .name(format!("accel{}-rings", dev.minor))
                .spawn(move || {
                    if let Err(e) = poll_loop(weak, state) {
                        tracing::error!("ring poller stopped: {e}");
                    }
                })
                .map_err(|e| Error::new(Errno::ENOMEM, format!("starting ring poller: {e}")))?;
            *thread = Some(t);
        }
        drop(thread);
        self.wake();
        Ok(())
    }

    /// Removes a ring; jobs it started still complete into it.
    pub(crate) fn unregister(&self, ring: &Arc<RingQueue>) {
        let mut added = lock(&self.state.added);
        let before = added.len();
        added.retain(|(r, _)| !Arc::ptr_eq(r, ring));
        if added.len() == before {
            lock(&self.state.removed).push(ring.clone());
        }
        drop(added);
        self.state.version.fetch_add(1, Ordering::Release);
        self.wake();
    }

    /// Stops the thread.
    fn stop(&self) {
        self.state.shutdown.store(true, Ordering::Release);
        self.wake();
        if let Some(t) = lock(&self.thread).take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for RingPoller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ring the poller serves.
struct Served {
    ring: Arc<RingQueue>,
    consumer: RingConsumer,
    /// Its epoll token.
    id: u64,
    active: bool,
    last_work: Instant,
}

/// The epoll token of the poller's control eventfd.
const CONTROL: u64 = u64::MAX;

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

/// Marks a ring idle: flags it so its client rings the doorbell, then looks once more
/// (the client checks the flag after publishing: one of the two sees the other). Returns
/// whether it must stay active after all.
fn go_idle(s: &mut Served) -> bool {
    s.ring.mem.poller_sleeping().store(1, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    if s.ring.has_work(&s.consumer) {
        s.ring.mem.poller_sleeping().store(0, Ordering::SeqCst);
        return true;
    }
    s.active = false;
    false
}

fn activate(s: &mut Served) {
    drain(&s.ring.doorbell);
    s.ring.mem.poller_sleeping().store(0, Ordering::SeqCst);
    s.active = true;
    s.last_work = Instant::now();
}

fn poll_loop(dev: Weak<Device>, poller: Arc<PollerState>) -> rustix::io::Result<()> {
    let control = &poller.control;
    use rustix::event::epoll;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(&ep, control, epoll::EventData::new_u64(CONTROL), epoll::EventFlags::IN)?;
    let mut served: Vec<Served> = Vec::new();
    let mut by_id: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut next_id = 0u64;
    let mut scratch = Vec::with_capacity(RING_BUDGET as usize);
    let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
    let mut seen = u64::MAX;
    loop {
        let Some(dev) = dev.upgrade() else { return Ok(()) };
        if poller.shutdown.load(Ordering::Acquire) {
            return Ok(());
        }
        let version = poller.version.load(Ordering::Acquire);
        if version != seen {
            // Take removals before additions: a ring added and removed in between is
            // found in `added` by `unregister` and never reaches us.
            let removed = std::mem::take(&mut *lock(&poller.removed));
            served.retain(|s| {
                let gone = removed.iter().any(|x| Arc::ptr_eq(&s.ring, x));
                if gone {
                    let _ = epoll::delete(&ep, &s.ring.doorbell);
                }
                !gone
            });
            for (ring, consumer) in lock(&poller.added).drain(..) {
                let id = next_id;
                next_id += 1;
                epoll::add(&ep, &ring.doorbell, epoll::EventData::new_u64(id), epoll::EventFlags::IN)?;
                let mut s = Served { ring, consumer, id, active: true, last_work: Instant::now() };
                activate(&mut s);
                served.push(s);
            }
            by_id = served.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
            seen = version;
        }
        // Active phase: process the active rings, then spin on bare loads of their next
        // slots (the cheapest way to see new work the moment its cache line arrives). A ring
        // quiet for POLL_SPIN goes idle; every 256 spins the doorbells are checked without
        // blocking, and the clock read.
        let mut polls = 0u32;
        loop {
            let mut did = 0u32;
            let mut any_active = false;
            for s in served.iter_mut().filter(|s| s.active) {
                let n = s.ring.process_into(&dev, &mut s.consumer, RING_BUDGET, &mut scratch);
                if n > 0 {
                    did += n;
                    s.last_work = Instant::now();
                }
                any_active = true;
            }
            if did > 0 {
                continue;
            }
            if !any_active {
                break;
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(256) {
                if poller.version.load(Ordering::Acquire) != seen {
                    break;
                }
                let now = Instant::now();
                for s in served.iter_mut().filter(|s| s.active) {
                    // A client spinning for its completions will submit again as soon as they
                    // arrive: its ring counts as busy while it has jobs in flight.
                    if s.ring.in_flight() > 0 && s.ring.mem.client_spins().load(Ordering::Relaxed) != 0 {
                        s.last_work = now;
                    } else if now.duration_since(s.last_work) >= POLL_SPIN {
                        go_idle(s);
                    }
                }
                let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
                doorbells(&ep, &mut events, &zero, control, &by_id, &mut served)?;
            }
            std::hint::spin_loop();
        }
        if poller.version.load(Ordering::Acquire) != seen {
            continue;
        }
        // Every ring is idle (flagged): sleep until a doorbell or a control wake-up, without
        // holding the device, so it can go away meanwhile.
        drop(dev);
        let second = rustix::time::Timespec { tv_sec: 1, tv_nsec: 0 };
        doorbells(&ep, &mut events, &second, control, &by_id, &mut served)?;
    }
}

/// Waits up to `timeout` for doorbells and activates the rings that rang.
fn doorbells(
    ep: &OwnedFd,
    events: &mut Vec<rustix::event::epoll::Event>,
    timeout: &rustix::time::Timespec,
    control: &OwnedFd,
    by_id: &std::collections::HashMap<u64, usize>,
    served: &mut [Served],
) -> rustix::io::Result<()> {
    events.clear();
    match rustix::event::epoll::wait(ep, rustix::buffer::spare_capacity(events), Some(timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e),
    }
    for ev in events.iter() {
        match ev.data.u64() {
            CONTROL => drain(control),
            id => {
                if let Some(s) = by_id.get(&id).and_then(|i| served.get_mut(*i)) {
                    activate(s);
                }
            }
        }
    }
    Ok(())
}
