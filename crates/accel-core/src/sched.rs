//! The job scheduler (the analogue of `drm_sched`).
//!
//! Per device:
//! - **Entities** are client queues. Each has a priority class ([`Priority`]) and a
//!   weight. Jobs of one entity run in submission order, one at a time (an in-order
//!   queue, like a GPU ring or a CUDA stream); parallelism comes from several queues.
//! - **Engines** have credits (ring depth): an engine takes up to `credits` jobs at once,
//!   each run on its own slot thread through [`Driver::run_job`].
//! - **Selection.** The highest class with a ready job goes first, except that a class
//!   with ready work that was passed over [`STARVATION_LIMIT`] times is served next. So a
//!   class with ready work is dispatched at least once in every `STARVATION_LIMIT + 3`
//!   dispatches (the 3 covers other starved classes served first): lower classes slow
//!   down under load but never starve. Within a class the entity with the least virtual
//!   runtime (engine time ÷ weight) goes first, which converges to shares proportional to
//!   weights. Oneshot devices skip fair share: FIFO by submission within a class.
//! - **Groups.** Fair share is two-level, as CFS's group scheduling is: queues belong to a
//!   group (a namespace's share of the device), groups share a class by their weights, and a
//!   group's queues share what it gets by theirs. So a tenant's share does not grow with the
//!   queues it opens.
//! - **Dependencies** are fences from anywhere (any queue, client or device). A job is
//!   ready when all have signalled; if one failed, the job fails with that error without
//!   running.
//! - **Cost.** Only queues that can run now are looked at: each engine keeps its ready queues
//!   per class, ordered as selection wants them (as `drm_sched`'s run queues keep an
//!   rb-tree), and a queue is looked at again only when something that could make it ready
//!   happens — a job submitted to it, a dependency of its jobs signalled, its running job
//!   done. Idle queues, queues waiting on a fence and queues with a job running cost a
//!   dispatch nothing, however many a tenant creates.
//! - **Timeouts.** A scheduler thread watches running jobs. When one passes its queue's
//!   timeout it is the guilty job: its fence gets `ETIME`, its entity gains karma and is
//!   banned (`ECANCELED` for queued and future jobs) once karma reaches the hang limit.
//!   Every job on that engine is aborted and the driver resets the engine
//!   ([`Driver::timedout_job`]); innocent jobs that were running are resubmitted and run
//!   again, queued ones are untouched. Only a failed reset wedges the device (`EIO`).
//!
//! - **Hand-offs.** Whoever makes a job ready dispatches it: the submitting thread, the
//!   slot that completed the job before it, the thread that signalled its dependency. The
//!   scheduler thread only watches deadlines. Slots are woken after the lock is dropped.
//!
//! Fences are always signalled outside the scheduler lock: signalling runs callbacks,
//! and a callback may kick the scheduler.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use accel_uapi::{Errno, FenceStatus, Priority};

use crate::counters::{Counters, Kind, Tracked};
use crate::driver::{Driver, JobCtx, JobOp};
use crate::fence::Fence;
use crate::{bail, lock, Result};

pub use ready::Group;
use ready::{leave_group, unready, vcost, GroupState, ReadySets};

/// Passed-over dispatches after which a class with ready work is served next.
pub const STARVATION_LIMIT: u32 = 16;
/// Weight of a queue that does not ask for one.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest weight accepted.
pub const MAX_WEIGHT: u32 = 10_000;
/// Most jobs one queue may have waiting; more is `EAGAIN`.
pub const MAX_QUEUED_PER_ENTITY: usize = 1 << 16;
/// Virtual runtime units per nanosecond at weight 1.
const VRUNTIME_SCALE: u128 = 1 << 16;

/// Usage a client accumulates (fdinfo `drm-engine-*` style).
#[derive(Debug, Default)]
pub struct UsageCounters {
    /// Engine time, nanoseconds.
    pub engine_ns: AtomicU64,
    /// Jobs that ran to completion (with or without error).
    pub jobs_completed: AtomicU64,
}

/// A job handed to the scheduler.
pub struct Job {
    /// The work, with buffers resolved.
    pub op: JobOp,
    /// Fences that must signal first.
    pub deps: Vec<Arc<Fence>>,
    /// Signalled when the job is done.
    pub fence: Arc<Fence>,
    engine: usize,
    seq: u64,
    /// Keeps its callbacks on its dependencies wanted: a job cancelled before they signal
    /// leaves nothing on them (they may never signal).
    alive: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// Its place in its client's job budget, returned when the job is freed.
    _charge: Option<crate::limits::Charge>,
    _tracked: Tracked,
}

impl Job {
    /// Builds a job, counted as live until it is freed.
    pub fn new(counters: &Arc<Counters>, op: JobOp, deps: Vec<Arc<Fence>>, fence: Arc<Fence>) -> Job {
        Job {
            op,
            deps,
            fence,
            engine: 0,
            seq: 0,
            alive: None,
            _charge: None,
            _tracked: Tracked::new(counters, Kind::Job),
        }
    }

    /// The job, holding `charge` (its client's job budget) until it is freed.
    pub fn charged(mut self, charge: crate::limits::Charge) -> Job {
        self._charge = Some(charge);
        self
    }

    /// `Some(error)` if a dependency failed, `None` if all signalled, or pending otherwise.
    fn deps_state(&self) -> Option<Option<Errno>> {
        let mut failed = None;
        for d in &self.deps {
            match d.status() {
                FenceStatus::Pending => return None,
                FenceStatus::Error(e) if failed.is_none() => failed = Some(e),
                _ => {}
            }
        }
        Some(failed)
    }
}

/// How a queue is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityParams {
    /// Priority class.
    pub priority: Priority,
    /// Relative share within the class (1..=[`MAX_WEIGHT`]).
    pub weight: u32,
    /// Longest a job may run.
    pub timeout: Duration,
}

/// Scheduler policy of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedConfig {
    /// Hangs after which a queue is banned (at least 1).
    pub hang_limit: u32,
    /// FIFO within a class instead of fair share (oneshot devices).
    pub fifo: bool,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig { hang_limit: 2, fifo: false }
    }
}

/// Scheduler-wide id of an entity.
pub type EntityId = u64;

struct Entity {
    client_id: u64,
    group: u64,
    /// Counted in its group's `busy`.
    busy: bool,
    params: EntityParams,
    usage: Arc<UsageCounters>,
    jobs: VecDeque<Job>,
    vruntime: u128,
    /// Moving average of job duration: what a dispatch charges before the job ends.
    avg_ns: u64,
    in_flight: u32,
    karma: u32,
    banned: bool,
    /// Where the queue sits in the ready sets (its head job's engine, its class, its key),
    /// if it is ready: its head job's dependencies have signalled, none of its jobs is
    /// running, and it is not banned.
    ready: Option<(usize, usize, u128)>,
}

impl Entity {
    fn vcost(&self, ns: u64) -> u128 {
        vcost(ns, self.params.weight)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// The job ends with this error whatever the driver returns.
    Fail(Errno),
    /// An innocent victim of an engine reset: run it again.
    Resubmit,
}

struct Dispatched {
    entity: EntityId,
    client_id: u64,
    usage: Arc<UsageCounters>,
    job: Job,
    /// Virtual runtime charged at dispatch, corrected at completion.
    charged: u128,
    /// Likewise, to the queue's group.
    group_charged: u128,
}

struct Running {
    run_id: u64,
    entity: EntityId,
    client_id: u64,
    deadline: Option<Instant>,
    ctx: JobCtx,
    disposition: Option<Disposition>,
}

struct Engine {
    credits: u32,
    in_flight: u32,
    ring: VecDeque<Dispatched>,
    running: Vec<Running>,
    /// Slot threads asleep on the engine's condvar: a dispatch wakes at most that many (a
    /// wake-up is a system call even when nobody sleeps).
    sleeping: u32,
}

impl Engine {
    fn new(credits: u32) -> Engine {
        Engine { credits, in_flight: 0, ring: VecDeque::new(), running: Vec::new(), sleeping: 0 }
    }
}

struct State {
    entities: BTreeMap<EntityId, Entity>,
    engines: Vec<Engine>,
    /// Per engine: the queues whose head job may run on it now.
    ready: Vec<ReadySets>,
    /// Queues to look at again (a dependency of one of their jobs signalled).
    woken: Vec<EntityId>,
    /// Queues looked at so far (see [`Scheduler::looks`]).
    looks: u64,
    /// Jobs waiting in queues, all queues together.
    queued: usize,
    groups: BTreeMap<u64, GroupState>,
    /// Each client's queues.
    by_client: BTreeMap<u64, BTreeSet<EntityId>>,
    next_entity: EntityId,
    next_run: u64,
    next_seq: u64,
    starve: [u32; 4],
    /// Per class: where an idle group rejoins (the largest group virtual runtime dispatched at).
    floor: [u128; 4],
    resets: u64,
    wedged: bool,
    shutdown: bool,
    dirty: bool,
    /// When the scheduler thread wakes up by itself next: a job starting with a later
    /// deadline need not wake it (it looks at deadlines then).
    sched_wakes_at: Instant,
}

struct Shared {
    driver: Arc<dyn Driver>,
    config: SchedConfig,
    /// Nanoseconds each engine spent running jobs.
    busy_ns: Vec<AtomicU64>,
    /// The last job the driver failed: its errno and when (`CLOCK_REALTIME` ns), 0 if none.
    last_error: Mutex<(u32, u64)>,
    state: Mutex<State>,
    sched_cond: Condvar,
    /// Per engine: what its idle slot threads sleep on. One per engine, so a dispatch wakes
    /// one slot of the job's engine, not every slot thread of the device.
    slot_conds: Vec<Condvar>,
    /// Jobs handed to each engine's slots so far: what an idle slot spins on.
    dispatched: Vec<AtomicU64>,
    /// How long an idle slot thread spins for its next job before it sleeps.
    slot_spin: Duration,
    /// The driver makes native sync files for its jobs.
    native: bool,
    /// Per engine: it completes jobs by itself ([`Driver::asynchronous`]).
    asynchronous: Vec<bool>,
    /// What [`Scheduler`]'s drop waits on for asynchronous engines' jobs to end.
    idle_cond: Condvar,
    /// This, for asynchronous jobs' completions to hold.
    me: std::sync::Weak<Shared>,
}

/// How long idle slot threads spin before sleeping: `$ACCEL_SLOT_SPIN_US` microseconds (at
/// most 10 ms), else 50 µs on machines with cores to spare and none on smaller ones, where a
/// spinning slot would take the core its submitter needs ([`accel_hal::spin::budget`]).
pub fn slot_spin() -> Duration {
    accel_hal::spin::budget("ACCEL_SLOT_SPIN_US", Duration::from_micros(50), Duration::ZERO, Duration::from_millis(10))
}

/// What [`Scheduler::cancel_with`] removes.
#[derive(Clone, Copy)]
enum Gone {
    Queue(EntityId),
    Client(u64),
}

/// Jobs to signal once the lock is dropped.
type Failed = Vec<(Job, Errno)>;

fn signal_failed(failed: Failed) {
    for (job, err) in failed {
        job.fence.signal(Err(err));
    }
}

/// A device's job scheduler.
pub struct Scheduler {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Nanoseconds each engine has spent running jobs.
    pub fn busy_ns(&self) -> Vec<u64> {
        self.shared.busy_ns.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    /// The last job the driver failed: (errno, `CLOCK_REALTIME` ns), zeros if none.
    pub fn last_error(&self) -> (u32, u64) {
        *lock(&self.shared.last_error)
    }

    /// Starts the scheduler thread and one slot thread per engine credit.
    pub fn new(driver: Arc<dyn Driver>, name: &str, config: SchedConfig) -> std::io::Result<Scheduler> {
        let engines: Vec<Engine> = driver.info().engines.iter().map(|e| Engine::new(e.credits.max(1))).collect();
        let engines = if engines.is_empty() { vec![Engine::new(1)] } else { engines };
        let slots: Vec<(usize, u32)> =
            engines.iter().enumerate().flat_map(|(i, e)| (0..e.credits).map(move |s| (i, s))).collect();
        let busy_ns = engines.iter().map(|_| AtomicU64::new(0)).collect();
        let dispatched = engines.iter().map(|_| AtomicU64::new(0)).collect();
        let slot_conds = engines.iter().map(|_| Condvar::new()).collect();
        let asynchronous: Vec<bool> = (0..engines.len()).map(|e| driver.asynchronous(e)).collect();
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            asynchronous: asynchronous.clone(),
            idle_cond: Condvar::new(),
            dispatched,
            slot_spin: slot_spin(),
            native: driver.native_sync_files(),
            driver,
            busy_ns,
            last_error: Mutex::new((0, 0)),
            config: SchedConfig { hang_limit: config.hang_limit.max(1), ..config },
            state: Mutex::new(State {
                entities: BTreeMap::new(),
                ready: engines.iter().map(|_| ReadySets::default()).collect(),
                woken: Vec::new(),
                looks: 0,
                queued: 0,
                groups: BTreeMap::new(),
                by_client: BTreeMap::new(),
                engines,
                next_entity: 1,
                next_run: 1,
                next_seq: 1,
                starve: [0; 4],
                floor: [0; 4],
                resets: 0,
                wedged: false,
                shutdown: false,
                dirty: false,
                sched_wakes_at: Instant::now(),
            }),
            sched_cond: Condvar::new(),
            slot_conds,
        });
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(std::thread::Builder::new().name(format!("{name}-sched")).spawn(move || s.scheduler_loop())?);
        // An asynchronous engine has no slot threads: its jobs start where they are
        // dispatched and end when the driver says.
        for (engine, slot) in slots.into_iter().filter(|(e, _)| !asynchronous[*e]) {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-e{engine}s{slot}"))
                    .spawn(move || s.slot_loop(engine))?,
            );
        }
        Ok(Scheduler { shared, threads })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Registers a queue of `client_id` in the default group.
    pub fn create_entity(&self, client_id: u64, params: EntityParams, usage: Arc<UsageCounters>) -> EntityId {
        self.create_entity_in(Group::default(), client_id, params, usage)
    }

    /// Registers a queue of `client_id` in `group`.
    pub fn create_entity_in(
        &self,
        group: Group,
        client_id: u64,
        params: EntityParams,
        usage: Arc<UsageCounters>,
    ) -> EntityId {
        let mut st = self.state();
        let id = st.next_entity;
        st.next_entity += 1;
        let floor = st.floor;
        let g = st.groups.entry(group.id).or_insert_with(|| GroupState {
            weight: 0,
            vruntime: floor,
            floor: [0; 4],
            busy: 0,
            queues: 0,
        });
        // The latest queue's group weight is the group's (a namespace's share may change).
        g.weight = group.weight.max(1);
        g.queues += 1;
        let vruntime = g.floor[params.priority as usize];
        st.by_client.entry(client_id).or_default().insert(id);
        st.entities.insert(
            id,
            Entity {
                client_id,
                group: group.id,
                busy: false,
                params,
                usage,
                jobs: VecDeque::new(),
                vruntime,
                avg_ns: 1_000_000,
                in_flight: 0,
                karma: 0,
                banned: false,
                ready: None,
            },
        );
        id
    }

    /// Queues a job on an entity. A failed push leaves the job unsignalled; the caller decides.
    pub fn push(&self, entity: EntityId, mut job: Job) -> Result<()> {
        job.engine = self.shared.driver.engine_for(&job.op);
        if self.shared.native {
            job.fence.await_native();
        }
        // Look at the queue again when a dependency signals. Registered before taking the
        // lock: an already-signalled fence runs the callback at once, and it takes the lock.
        if !job.deps.is_empty() {
            let token: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
            let alive = Arc::downgrade(job.alive.insert(token));
            for dep in &job.deps {
                let weak = Arc::downgrade(&self.shared);
                dep.on_signal_while(alive.clone(), move |_| {
                    if let Some(s) = weak.upgrade() {
                        s.wake(entity);
                    }
                });
            }
        }
        let mut st = self.state();
        if st.wedged {
            bail!(EIO, "device is wedged (an engine reset failed or the device was lost)");
        }
        let engines = st.engines.len();
        if job.engine >= engines {
            bail!(EINVAL, "driver routed the job to engine {} of {engines}", job.engine);
        }
        let floor = {
            let Some(e) = st.entities.get(&entity) else { bail!(ENOENT, "queue is gone") };
            st.groups.get(&e.group).map_or(0, |g| g.floor[e.params.priority as usize])
        };
        job.seq = st.next_seq;
        st.next_seq += 1;
        let hang_limit = self.shared.config.hang_limit;
        let Some(e) = st.entities.get_mut(&entity) else { bail!(ENOENT, "queue is gone") };
        if e.banned {
            bail!(ECANCELED, "queue is banned after {} hung job(s) (limit {hang_limit})", e.karma);
        }
        if e.jobs.len() >= MAX_QUEUED_PER_ENTITY {
            bail!(EAGAIN, "queue holds {MAX_QUEUED_PER_ENTITY} waiting jobs; wait for some to finish");
        }
        if e.jobs.is_empty() && e.in_flight == 0 {
            // An idle queue does not bank credit: it rejoins at the class's current floor.
            e.vruntime = e.vruntime.max(floor);
        }
        e.jobs.push_back(job);
        st.queued += 1;
        st.woken.push(entity);
        // Dispatch here rather than waking the scheduler thread: one thread hand-off fewer
        // between a submission and its engine slot.
        self.shared.settle(st);
        Ok(())
    }

    /// Removes a queue: its waiting jobs fail with `ECANCELED`, running ones are aborted.
    pub fn destroy_entity(&self, entity: EntityId) {
        // By its id, not a walk over every queue: a tenant creating and destroying queues
        // must not hold the scheduler's lock for as long as its other queues are many.
        self.cancel_with(Gone::Queue(entity), Errno::ECANCELED);
    }

    /// Removes every queue of a client (on close or crash).
    pub fn cancel_client(&self, client_id: u64) {
        self.cancel_client_with(client_id, Errno::ECANCELED);
    }

    /// Removes every queue of a client, failing its jobs with `errno` (`ENODEV` when the
    /// client is evicted from its namespace).
    pub fn cancel_client_with(&self, client_id: u64, errno: Errno) {
        self.cancel_with(Gone::Client(client_id), errno);
    }

    /// Removes a queue or every queue of a client, and fails or aborts their jobs with
    /// `errno`.
    fn cancel_with(&self, what: Gone, errno: Errno) {
        let matches = |entity: EntityId, client: u64| match what {
            Gone::Queue(id) => entity == id,
            Gone::Client(c) => client == c,
        };
        let mut failed = Failed::new();
        {
            let mut st = self.state();
            let gone: Vec<EntityId> = match what {
                Gone::Queue(id) => vec![id],
                Gone::Client(c) => st.by_client.get(&c).map(|ids| ids.iter().copied().collect()).unwrap_or_default(),
            };
            for id in &gone {
                unready(&mut st, *id);
                if let Some(e) = st.entities.remove(id) {
                    if let Some(ids) = st.by_client.get_mut(&e.client_id) {
                        ids.remove(id);
                        if ids.is_empty() {
                            st.by_client.remove(&e.client_id);
                        }
                    }
                    leave_group(&mut st, &e);
                    st.queued -= e.jobs.len();
                    failed.extend(e.jobs.into_iter().map(|j| (j, errno)));
                }
            }
            for engine in &mut st.engines {
                let (out, keep): (Vec<Dispatched>, Vec<Dispatched>) =
                    engine.ring.drain(..).partition(|d| matches(d.entity, d.client_id));
                engine.ring = keep.into();
                engine.in_flight -= out.len() as u32;
                failed.extend(out.into_iter().map(|d| (d.job, errno)));
                for r in engine.running.iter_mut().filter(|r| matches(r.entity, r.client_id)) {
                    // The first reason wins: an evicted client's job stays ENODEV when its
                    // connection then closes.
                    if !matches!(r.disposition, Some(Disposition::Fail(_))) {
                        r.disposition = Some(Disposition::Fail(errno));
                    }
                    r.ctx.abort.abort();
                }
            }
            st.dirty = true;
        }
        self.shared.sched_cond.notify_one();
        signal_failed(failed);
    }

    /// Jobs waiting to be dispatched, over all queues (kept as a count: a device's
    /// description, which `DeviceInfo` and every metrics scrape ask for, must not walk a
    /// tenant's thousands of queues under the scheduler's lock).
    pub fn queued(&self) -> usize {
        self.state().queued
    }

    /// Engine resets so far.
    pub fn resets(&self) -> u64 {
        self.state().resets
    }

    /// True once an engine reset failed; the device then refuses work.
    pub fn is_wedged(&self) -> bool {
        self.state().wedged
    }

    /// Whether a queue has nothing waiting or running: a null job submitted to it now may
    /// complete at once without breaking the queue's order.
    pub fn entity_idle(&self, entity: EntityId) -> bool {
        self.state().entities.get(&entity).is_some_and(|e| e.jobs.is_empty() && e.in_flight == 0 && !e.banned)
    }

    /// How many times the scheduler has looked at a queue to see whether it may run: a
    /// submission, a completion or a signalled dependency each looks at one queue, so this
    /// grows with the work done, not with the queues that exist.
    pub fn looks(&self) -> u64 {
        self.state().looks
    }

    /// Whether a queue was banned for hanging.
    pub fn is_banned(&self, entity: EntityId) -> bool {
        self.state().entities.get(&entity).is_some_and(|e| e.banned)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let failed = {
            let mut st = self.state();
            st.shutdown = true;
            for r in st.engines.iter_mut().flat_map(|e| e.running.iter_mut()) {
                r.disposition = Some(Disposition::Fail(Errno::ECANCELED));
                r.ctx.abort.abort();
            }
            drain_all(&mut st, Errno::ECANCELED)
        };
        self.shared.sched_cond.notify_all();
        for c in &self.shared.slot_conds {
            c.notify_all();
        }
        signal_failed(failed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The asynchronous engines' jobs were aborted: wait for the driver to end them (as
        // the slot threads' were waited for), for a while.
        let asynchronous = &self.shared.asynchronous;
        let mut st = self.state();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while st.engines.iter().enumerate().any(|(i, e)| asynchronous[i] && !e.running.is_empty()) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::error!("jobs of an asynchronous engine still running {SHUTDOWN_GRACE:?} after shutdown");
                break;
            };
            st = self.shared.idle_cond.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// How long dropping a scheduler waits for the jobs an asynchronous engine still runs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Takes every waiting and dispatched-but-not-started job out, to fail with `err`.
fn drain_all(st: &mut State, err: Errno) -> Failed {
    let mut failed = Failed::new();
    for e in st.entities.values_mut() {
        failed.extend(e.jobs.drain(..).map(|j| (j, err)));
        e.ready = None;
    }
    st.queued = 0;
    for sets in &mut st.ready {
        sets.iter_mut().for_each(ready::Ready::clear);
    }
    for engine in &mut st.engines {
        engine.in_flight -= engine.ring.len() as u32;
        failed.extend(engine.ring.drain(..).map(|d| (d.job, err)));
    }
    failed
}

mod dispatch;
mod ready;
mod slot;
#[cfg(test)]
mod tests;
mod timeout;
