//! Running a dispatched job: the bookkeeping when it starts and when it ends (fence, usage,
//! the queue's next job), shared by both kinds of engine: a synchronous engine's slot
//! threads, each taking a job and running it through the driver, and an asynchronous
//! engine's jobs, started on the dispatching thread and finished by their [`JobDone`].

use std::sync::atomic::Ordering;
use std::time::Instant;

use accel_uapi::Errno;

use super::{drain_all, signal_failed, vcost, Dispatched, Disposition, Failed, Running, Shared, State};
use crate::driver::{AbortToken, DriverError, JobCtx, JobDone, NativeFence};
use crate::lock;

/// A job between its start and its end.
pub(super) struct Started {
    pub(super) engine: usize,
    pub(super) run_id: u64,
    pub(super) ctx: JobCtx,
    pub(super) d: Dispatched,
    pub(super) start: Instant,
    /// Its queue was destroyed between dispatch and start: it does not run.
    pub(super) cancelled: bool,
}

impl Shared {
    /// Spins until a job is handed to `engine_idx` after `seen`, for at most the slot spin.
    fn spin_for_job(&self, engine_idx: usize, seen: u64) {
        let start = Instant::now();
        let mut polls = 0u32;
        while self.dispatched[engine_idx].load(Ordering::Acquire) == seen {
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(64) && start.elapsed() >= self.slot_spin {
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Starts dispatched job `d` on `engine_idx`: counts it as running (its deadline with
    /// it). Returns it and whether the scheduler thread must look at its deadline now.
    pub(super) fn begin(&self, st: &mut State, engine_idx: usize, d: Dispatched) -> (Started, bool) {
        let run_id = st.next_run;
        st.next_run += 1;
        let ctx = JobCtx {
            abort: AbortToken::default(),
            client_id: d.client_id,
            native: NativeFence::new(d.job.fence.clone()),
        };
        let timeout = st.entities.get(&d.entity).map(|e| e.params.timeout);
        let start = Instant::now();
        let deadline = timeout.and_then(|t| start.checked_add(t));
        st.engines[engine_idx].running.push(Running {
            run_id,
            entity: d.entity,
            client_id: d.client_id,
            deadline,
            ctx: ctx.clone(),
            // A queue destroyed between dispatch and start: do not run its job.
            disposition: timeout.is_none().then_some(Disposition::Fail(Errno::ECANCELED)),
        });
        // The scheduler thread must look at this deadline before it passes; it need not
        // wake up now if it wakes up earlier anyway.
        let wake = deadline.is_some_and(|d| d < st.sched_wakes_at);
        st.dirty = true;
        (Started { engine: engine_idx, run_id, ctx, d, start, cancelled: timeout.is_none() }, wake)
    }

    pub(super) fn slot_loop(&self, engine_idx: usize) {
        loop {
            let mut st = lock(&self.state);
            let mut spun = false;
            let d = loop {
                if st.shutdown {
                    return;
                }
                if let Some(d) = st.engines[engine_idx].ring.pop_front() {
                    break d;
                }
                if !spun && !self.slot_spin.is_zero() {
                    // The next job often comes within microseconds (a client submitting as
                    // soon as its last job completed): a futex wake-up costs more.
                    let seen = self.dispatched[engine_idx].load(Ordering::Acquire);
                    drop(st);
                    self.spin_for_job(engine_idx, seen);
                    spun = true;
                    st = lock(&self.state);
                    continue;
                }
                st.engines[engine_idx].sleeping += 1;
                st = self.slot_conds[engine_idx].wait(st).unwrap_or_else(|e| e.into_inner());
                st.engines[engine_idx].sleeping -= 1;
                spun = false;
            };
            let (job, wake) = self.begin(&mut st, engine_idx, d);
            drop(st);
            if wake {
                self.sched_cond.notify_one();
            }
            let result = if job.ctx.abort.is_aborted() || job.cancelled {
                Err(DriverError::from(Errno::ECANCELED))
            } else {
                // A driver's bug fails its job, not the engine's slot.
                accel_hal::catch_panic(|| self.driver.run_job(engine_idx, &job.d.job.op, &job.ctx))
                    .unwrap_or_else(|why| Err(driver_bug("run_job", why)))
            };
            self.finish(job, result);
        }
    }

    /// Hands a started job to an asynchronous engine; its [`JobDone`] finishes it (at once,
    /// here, if it was cancelled before it started).
    pub(super) fn submit(&self, job: Started) {
        let (engine, ctx, cancelled) = (job.engine, job.ctx.clone(), job.cancelled);
        let Some(me) = self.me.upgrade() else {
            return self.finish(job, Err(DriverError::from(Errno::ECANCELED)));
        };
        // The job travels inside its completion; the driver sees its op for the submission.
        let op = job.d.job.op.clone();
        let done = JobDone::new(move |result| super::dispatch::completed(me, job, result));
        if cancelled || ctx.abort.is_aborted() {
            done.complete(Err(DriverError::from(Errno::ECANCELED)));
        } else {
            // A panic drops `done` on the way out, which fails the job (`EIO`, "the driver
            // panicked with the job"); the dispatching thread goes on.
            if let Err(why) = accel_hal::catch_panic(|| self.driver.submit_job(engine, &op, &ctx, done)) {
                tracing::error!("the driver panicked in submit_job ({why}); the job failed");
            }
        }
    }

    /// A job ended with the driver's `result`: settles what the core decided meanwhile (a
    /// resubmission after a reset, a failure for a cancelled queue), signals its fence,
    /// charges its queue, and dispatches what may run next.
    pub(super) fn finish(&self, job: Started, result: Result<(), DriverError>) {
        let Started { engine: engine_idx, run_id, d, start, .. } = job;
        let elapsed = start.elapsed().as_nanos() as u64;

        let mut st = lock(&self.state);
        let running = &mut st.engines[engine_idx].running;
        let disposition = running.iter().position(|r| r.run_id == run_id).and_then(|i| running.remove(i).disposition);
        // A job marked for resubmission that completed anyway (its work was done before
        // the reset reached it) is done, as drm_sched drops jobs whose hardware fence
        // signalled from the ones it re-runs.
        let disposition = match (disposition, &result) {
            (Some(Disposition::Resubmit), Ok(())) => None,
            (d, _) => d,
        };
        if disposition == Some(Disposition::Resubmit) && !st.shutdown {
            st.engines[engine_idx].ring.push_front(d);
            if self.asynchronous[engine_idx] {
                // Started again by the dispatch (the ring of an asynchronous engine is only
                // a hand-over).
                self.settle(st);
            } else {
                drop(st);
                self.dispatched[engine_idx].fetch_add(1, Ordering::Release);
                self.slot_conds[engine_idx].notify_one();
            }
            return;
        }
        let lost = matches!(&result, Err(e) if e.lost) && disposition.is_none();
        let (result, message) = match disposition {
            Some(Disposition::Fail(e)) => (Err(e), None),
            Some(Disposition::Resubmit) => (Err(Errno::ECANCELED), None),
            None => match result {
                Ok(()) => (Ok(()), None),
                Err(e) => (Err(e.code), Some(e.message)),
            },
        };
        // A lost device is wedged: every other running job is aborted and fails with
        // EIO, every queued one too, and new work is refused.
        let lost_jobs = if lost {
            tracing::error!("accel device lost ({}); device wedged", message.as_deref().unwrap_or(""));
            st.wedged = true;
            for r in st.engines.iter_mut().flat_map(|e| e.running.iter_mut()) {
                r.disposition = Some(Disposition::Fail(Errno::EIO));
                r.ctx.abort.abort();
            }
            drain_all(&mut st, Errno::EIO)
        } else {
            Failed::new()
        };
        drop(st);
        signal_failed(lost_jobs);
        d.usage.engine_ns.fetch_add(elapsed, Ordering::Relaxed);
        d.usage.jobs_completed.fetch_add(1, Ordering::Relaxed);
        self.busy_ns[engine_idx].fetch_add(elapsed, Ordering::Relaxed);
        if let (Err(code), Some(_)) = (&result, &message) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            *lock(&self.last_error) = (code.raw(), now.as_nanos() as u64);
        }
        // Signal before the queue's next job may start: a queue's fences (and ring
        // completions) then signal in submission order, as a hardware ring's do.
        d.job.fence.signal_with(result, message);
        self.driver.free_job(&d.job.op);
        let mut st = lock(&self.state);
        st.engines[engine_idx].in_flight -= 1;
        if let Some(e) = st.entities.get_mut(&d.entity) {
            e.in_flight -= 1;
            let actual = e.vcost(elapsed);
            e.vruntime = e.vruntime.saturating_sub(d.charged) + actual;
            e.avg_ns = (e.avg_ns * 7 + elapsed) / 8;
            let (group, class) = (e.group, e.params.priority as usize);
            if let Some(g) = st.groups.get_mut(&group) {
                g.vruntime[class] = g.vruntime[class].saturating_sub(d.group_charged) + vcost(elapsed, g.weight);
            }
            st.woken.push(d.entity);
        }
        if self.asynchronous[engine_idx] && st.shutdown {
            // Drop waits for the asynchronous engines' jobs to end.
            self.idle_cond.notify_all();
        }
        // Dispatch the next ready job here (often to this very slot, which takes it at
        // once) rather than through the scheduler thread.
        self.settle(st);
    }
}

/// A driver's panic in `call`, as the job's error.
fn driver_bug(call: &str, why: String) -> DriverError {
    tracing::error!("the driver panicked in {call} ({why}); the job failed");
    DriverError::new(Errno::EIO, format!("the driver panicked running this job ({why})"))
}
