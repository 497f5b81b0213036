//! Dispatch: whoever makes a job ready (a submission, a completion, a signalled dependency)
//! hands it to an engine slot on its own thread, then wakes the slot after the lock; or,
//! on an asynchronous engine, starts it there and then through the driver.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use accel_uapi::Errno;

use super::ready::{choose, pick_class, ready_classes, refresh, unready, vcost};
use super::slot::Started;
use super::{drain_all, signal_failed, Dispatched, EntityId, Failed, Shared, State};
use crate::driver::DriverError;
use crate::lock;

/// What a dispatch leaves for after the lock: jobs whose dependency failed, and per engine
/// how many jobs its slots were given and how many sleeping slots to wake for them.
struct Dispatch {
    failed: Failed,
    slots: Vec<(usize, u32, u32)>,
    /// Jobs of asynchronous engines, started, to hand to the driver.
    starts: Vec<Started>,
    /// A started job's deadline comes before the scheduler thread wakes up.
    wake_sched: bool,
}

/// A job's end, left for the dispatch running on this thread.
type Completion = Box<dyn FnOnce()>;

thread_local! {
    /// This thread is dispatching ([`Shared::settle`]): a queue woken meanwhile is left to it.
    static SETTLING: Cell<bool> = const { Cell::new(false) };
    /// Jobs that ended while this thread dispatched (a driver completing a job inside
    /// `submit_job`): finished by the outermost dispatch, in order, rather than by recursion
    /// (a queue of quick jobs would recurse once per job).
    static DEFERRED: RefCell<VecDeque<Completion>> = const { RefCell::new(VecDeque::new()) };
}

/// An asynchronous engine's job ended: finished here, or by the dispatch this thread is in.
pub(super) fn completed(shared: Arc<Shared>, job: Started, result: Result<(), DriverError>) {
    if SETTLING.get() {
        DEFERRED.with(|d| d.borrow_mut().push_back(Box::new(move || shared.finish(job, result))));
    } else {
        shared.finish(job, result);
    }
}

/// Clears [`SETTLING`] when the outermost dispatch of a thread ends.
struct Settling;

impl Drop for Settling {
    fn drop(&mut self) {
        SETTLING.set(false);
    }
}

impl Shared {
    /// A dependency of a job of `entity` signalled: the queue is looked at again and what is
    /// ready dispatched, here on the signalling thread (a slot completing a job, a client's
    /// host signal), not through the scheduler thread: one thread hand-off fewer between a
    /// job and the job that waits for it.
    pub(super) fn wake(&self, entity: EntityId) {
        let mut st = lock(&self.state);
        st.woken.push(entity);
        if SETTLING.get() {
            // A fence signalled by a dispatch on this thread (a dependency that failed): the
            // dispatch looks at the queue when it is done, rather than recursing (a chain of
            // failed dependencies would recurse once per job).
            return;
        }
        self.settle(st);
    }

    /// Dispatches what is ready, drops the lock, then wakes the slots that got jobs and
    /// signals the jobs whose dependency failed; again while those signals woke queues.
    ///
    /// Slots are woken after the lock is dropped: a slot woken under it would find the lock
    /// taken and sleep once more on it (two context switches per job instead of one), and
    /// a spinning one would contend for it. Every idle slot looks for work under the lock
    /// before it sleeps, so a wake-up after the lock cannot be missed.
    pub(super) fn settle<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        let outer = !SETTLING.replace(true);
        // Cleared however this returns (a fence callback that panics included); made only
        // by the outermost (`then_some` would make one here too, and its drop clear the flag
        // under the outer dispatch).
        let _settling = outer.then(|| Settling);
        loop {
            let Dispatch { failed, slots, starts, wake_sched } = self.pump(&mut st);
            drop(st);
            if wake_sched {
                self.sched_cond.notify_one();
            }
            for (engine, jobs, wake) in slots {
                self.dispatched[engine].fetch_add(u64::from(jobs), Ordering::Release);
                for _ in 0..wake {
                    self.slot_conds[engine].notify_one();
                }
            }
            let mut any = !failed.is_empty();
            for job in starts {
                self.submit(job);
            }
            signal_failed(failed);
            if outer {
                // Finishing a job dispatches the next (a nested dispatch, which leaves its
                // own quick completions here too).
                while let Some(finish) = DEFERRED.with(|d| d.borrow_mut().pop_front()) {
                    finish();
                    any = true;
                }
            }
            if !outer || !any {
                break;
            }
            st = lock(&self.state);
            if st.woken.is_empty() {
                break;
            }
        }
    }

    /// Dispatches ready jobs while engines have credits. Returns the jobs whose dependency
    /// failed and the slots to wake, for after the lock (see [`Shared::settle`]).
    fn pump(&self, st: &mut State) -> Dispatch {
        let mut failed = Failed::new();
        let mut slots: Vec<(usize, u32, u32)> = Vec::new();
        let (mut starts, mut wake_sched) = (Vec::new(), false);
        if st.wedged {
            return Dispatch { failed: drain_all(st, Errno::EIO), slots, starts, wake_sched };
        }
        let fifo = self.config.fifo;
        // By index, keeping the list's capacity (a refresh adds nothing to it).
        for i in 0..st.woken.len() {
            let id = st.woken[i];
            refresh(st, id, fifo, &mut failed);
        }
        st.woken.clear();
        loop {
            let has = ready_classes(st);
            let Some(class) = pick_class(st, has) else { break };
            let Some(id) = choose(st, class, fifo) else { break };
            unready(st, id);
            let e = st.entities.get_mut(&id).expect("ready entity exists");
            let vruntime = e.vruntime;
            let job = e.jobs.pop_front().expect("ready entity has a job");
            st.queued -= 1;
            let charged = e.vcost(e.avg_ns);
            e.vruntime += charged;
            e.in_flight += 1;
            let (client_id, usage, avg_ns, group) = (e.client_id, e.usage.clone(), e.avg_ns, e.group);
            let g = st.groups.get_mut(&group).expect("a queue's group exists");
            g.floor[class] = g.floor[class].max(vruntime);
            let group_vruntime = g.vruntime[class];
            let group_charged = vcost(avg_ns, g.weight);
            g.vruntime[class] += group_charged;
            st.floor[class] = st.floor[class].max(group_vruntime);
            let engine = &mut st.engines[job.engine];
            engine.in_flight += 1;
            let engine_idx = job.engine;
            engine.ring.push_back(Dispatched { entity: id, client_id, usage, job, charged, group_charged });
            if self.asynchronous[engine_idx] {
                continue;
            }
            // One job, one slot to wake if one sleeps (the others take it when they are done
            // or see it while they spin: they look at the ring under the lock before sleeping).
            let sleeping = engine.sleeping;
            match slots.last_mut() {
                Some((e, n, w)) if *e == engine_idx => {
                    *n += 1;
                    *w = (*w + 1).min(sleeping);
                }
                _ => slots.push((engine_idx, 1, sleeping.min(1))),
            }
        }
        // An asynchronous engine's jobs start here (resubmitted ones too), to be handed to
        // the driver once the lock is dropped.
        for engine_idx in (0..st.engines.len()).filter(|&e| self.asynchronous[e]) {
            while let Some(d) = st.engines[engine_idx].ring.pop_front() {
                let (job, wake) = self.begin(st, engine_idx, d);
                starts.push(job);
                wake_sched |= wake;
            }
        }
        Dispatch { failed, slots, starts, wake_sched }
    }
}
