//! The first scheduler: one FIFO per device, a worker thread that runs jobs in
//! submission order, and a watchdog that aborts a job past its timeout and asks
//! the driver to reset (drm_sched's `timedout_job`).
//!
//! A job's dependencies are waited for on the worker before it runs; a failed
//! dependency fails the job with the same error without running it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use accel_uapi::{Errno, FenceStatus};

use crate::counters::{Counters, Kind, Tracked};
use crate::driver::{AbortToken, Driver, JobCtx, JobOp};
use crate::fence::{wait_fences, Fence};
use crate::lock;

/// Usage a client accumulates (fdinfo `drm-engine-*` style).
#[derive(Debug, Default)]
pub struct UsageCounters {
    /// Engine time, nanoseconds.
    pub engine_ns: AtomicU64,
    /// Jobs that ran to completion (with or without error).
    pub jobs_completed: AtomicU64,
}

/// A job queued on a device.
pub struct Job {
    /// Submitting client.
    pub client_id: u64,
    /// Submitting queue.
    pub queue_id: u64,
    /// The work, with buffers resolved.
    pub op: JobOp,
    /// Fences that must signal first.
    pub deps: Vec<Arc<Fence>>,
    /// Signalled when the job is done.
    pub fence: Arc<Fence>,
    /// Longest the job may run before the watchdog aborts it.
    pub timeout: Duration,
    /// Where engine time is charged.
    pub usage: Arc<UsageCounters>,
    _tracked: Tracked,
}

impl Job {
    /// Builds a job, counted as live until it is freed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        counters: &Arc<Counters>,
        client_id: u64,
        queue_id: u64,
        op: JobOp,
        deps: Vec<Arc<Fence>>,
        fence: Arc<Fence>,
        timeout: Duration,
        usage: Arc<UsageCounters>,
    ) -> Job {
        Job {
            client_id,
            queue_id,
            op,
            deps,
            fence,
            timeout,
            usage,
            _tracked: Tracked::new(counters, Kind::Job),
        }
    }

    fn belongs_to(&self, client_id: u64, queue_id: Option<u64>) -> bool {
        self.client_id == client_id && queue_id.is_none_or(|q| q == self.queue_id)
    }
}

struct Running {
    client_id: u64,
    queue_id: u64,
    deadline: Option<Instant>,
    ctx: JobCtx,
    /// Why the core stopped the job (timeout, cancel); overrides the driver's result.
    reason: Option<Errno>,
}

struct Shared {
    driver: Arc<dyn Driver>,
    jobs: Mutex<VecDeque<Job>>,
    jobs_cond: Condvar,
    running: Mutex<Option<Running>>,
    running_cond: Condvar,
    shutdown: AtomicBool,
    wedged: AtomicBool,
}

/// A device's job scheduler.
pub struct Scheduler {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the worker and watchdog threads for `driver`.
    pub fn new(driver: Arc<dyn Driver>, name: &str) -> std::io::Result<Scheduler> {
        let shared = Arc::new(Shared {
            driver,
            jobs: Mutex::new(VecDeque::new()),
            jobs_cond: Condvar::new(),
            running: Mutex::new(None),
            running_cond: Condvar::new(),
            shutdown: AtomicBool::new(false),
            wedged: AtomicBool::new(false),
        });
        let (w, d) = (shared.clone(), shared.clone());
        let threads = vec![
            std::thread::Builder::new()
                .name(format!("{name}-sched"))
                .spawn(move || w.worker())?,
            std::thread::Builder::new()
                .name(format!("{name}-watchdog"))
                .spawn(move || d.watchdog())?,
        ];
        Ok(Scheduler { shared, threads })
    }

    /// Queues a job behind every job already queued on the device.
    pub fn push(&self, job: Job) {
        lock(&self.shared.jobs).push_back(job);
        self.shared.jobs_cond.notify_one();
    }

    /// Cancels a client's jobs (one queue's, or all): queued ones are dropped with
    /// `ECANCELED`; a running one is asked to abort.
    pub fn cancel(&self, client_id: u64, queue_id: Option<u64>) {
        let cancelled: Vec<Job> = {
            let mut jobs = lock(&self.shared.jobs);
            let (out, keep): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(&mut *jobs)
                .into_iter()
                .partition(|j| j.belongs_to(client_id, queue_id));
            *jobs = keep;
            out.into()
        };
        for job in cancelled {
            job.fence.signal(Err(Errno::ECANCELED));
        }
        let mut running = lock(&self.shared.running);
        if let Some(r) = running.as_mut() {
            if r.client_id == client_id
                && queue_id.is_none_or(|q| q == r.queue_id)
                && r.reason.is_none()
            {
                r.reason = Some(Errno::ECANCELED);
                r.ctx.abort.abort();
            }
        }
    }

    /// Jobs waiting to run (not counting the running one).
    pub fn queued(&self) -> usize {
        lock(&self.shared.jobs).len()
    }

    /// True once an engine reset failed; the device then refuses new work.
    pub fn is_wedged(&self) -> bool {
        self.shared.wedged.load(Ordering::Acquire)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.jobs_cond.notify_all();
        if let Some(r) = lock(&self.shared.running).as_mut() {
            r.reason.get_or_insert(Errno::ECANCELED);
            r.ctx.abort.abort();
        }
        self.shared.running_cond.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn next_job(&self) -> Option<Job> {
        let mut jobs = lock(&self.jobs);
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                for job in jobs.drain(..) {
                    job.fence.signal(Err(Errno::ECANCELED));
                }
                return None;
            }
            if let Some(job) = jobs.pop_front() {
                return Some(job);
            }
            jobs = self.jobs_cond.wait(jobs).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn worker(&self) {
        while let Some(job) = self.next_job() {
            let ctx = JobCtx {
                abort: AbortToken::default(),
                client_id: job.client_id,
            };
            *lock(&self.running) = Some(Running {
                client_id: job.client_id,
                queue_id: job.queue_id,
                deadline: None,
                ctx: ctx.clone(),
                reason: None,
            });
            let result = self
                .wait_deps(&job, &ctx)
                .and_then(|()| self.run(&job, &ctx));
            let reason = lock(&self.running).take().and_then(|r| r.reason);
            job.fence.signal(reason.map_or(result, Err));
            // Dropping the job here releases its buffers before the next one starts.
        }
    }

    fn wait_deps(&self, job: &Job, ctx: &JobCtx) -> Result<(), Errno> {
        if job.deps.is_empty() {
            return Ok(());
        }
        let (_, status) = wait_fences(&job.deps, true, Duration::MAX, &|| ctx.abort.is_aborted())
            .map_err(|e| e.code)?;
        match status.into_iter().find_map(|s| {
            if let FenceStatus::Error(e) = s {
                Some(e)
            } else {
                None
            }
        }) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn run(&self, job: &Job, ctx: &JobCtx) -> Result<(), Errno> {
        if self.wedged.load(Ordering::Acquire) {
            return Err(Errno::EIO);
        }
        let start = Instant::now();
        if let Some(r) = lock(&self.running).as_mut() {
            r.deadline = start.checked_add(job.timeout);
        }
        self.running_cond.notify_all();
        let result = self.driver.run_job(&job.op, ctx);
        job.usage
            .engine_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        job.usage.jobs_completed.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn watchdog(&self) {
        let mut running = lock(&self.running);
        while !self.shutdown.load(Ordering::Acquire) {
            let now = Instant::now();
            let wait = match running.as_mut() {
                Some(r) if r.reason.is_none() && r.deadline.is_some_and(|d| d <= now) => {
                    r.reason = Some(Errno::ETIME);
                    r.ctx.abort.abort();
                    let ctx = r.ctx.clone();
                    drop(running);
                    tracing::warn!(client = ctx.client_id, "job timed out; resetting engine");
                    if let Err(e) = self.driver.timedout_job(&ctx) {
                        tracing::error!("engine reset failed ({e}); device is wedged");
                        self.wedged.store(true, Ordering::Release);
                    }
                    running = lock(&self.running);
                    continue;
                }
                Some(Running {
                    deadline: Some(d),
                    reason: None,
                    ..
                }) => *d - now,
                _ => Duration::from_secs(1),
            };
            running = self
                .running_cond
                .wait_timeout(running, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
