//! The scheduler thread: it watches the deadlines of running jobs (everything else is
//! dispatched by whoever makes a job ready) and turns a job that outlived its timeout into a
//! reset: the guilty job fails, the others on its engine are resubmitted, as drm_sched's
//! timeout handler does.

use std::time::Instant;

use super::*;

impl Shared {
    pub(super) fn scheduler_loop(&self) {
        let mut st = lock(&self.state);
        while !st.shutdown {
            st.dirty = false;
            self.settle(st);
            st = lock(&self.state);
            let mut failed = Failed::new();
            let resets = self.check_timeouts(&mut st, &mut failed);
            if !failed.is_empty() || !resets.is_empty() {
                drop(st);
                signal_failed(failed);
                for (engine, ctx) in resets {
                    if let Err(e) = self.driver.timedout_job(engine, &ctx) {
                        tracing::error!("engine {engine} reset failed ({e}); device wedged");
                        let failed = {
                            let mut st = lock(&self.state);
                            st.wedged = true;
                            for r in st.engines.iter_mut().flat_map(|e| e.running.iter_mut()) {
                                if r.disposition == Some(Disposition::Resubmit) {
                                    r.disposition = Some(Disposition::Fail(Errno::EIO));
                                }
                            }
                            drain_all(&mut st, Errno::EIO)
                        };
                        signal_failed(failed);
                    }
                }
                st = lock(&self.state);
                continue;
            }
            let now = Instant::now();
            let next_deadline = st
                .engines
                .iter()
                .flat_map(|e| e.running.iter())
                .filter(|r| r.disposition.is_none())
                .filter_map(|r| r.deadline)
                .min();
            let wait = next_deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
            st.sched_wakes_at = now + wait;
            st = self
                .sched_cond
                .wait_timeout_while(st, wait, |s| !s.dirty && !s.shutdown)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Marks timed-out jobs guilty, the other jobs on their engine for resubmission, and
    /// returns the engines to reset with the guilty job's context.
    pub(super) fn check_timeouts(&self, st: &mut State, failed: &mut Failed) -> Vec<(usize, JobCtx)> {
        let now = Instant::now();
        let mut resets = Vec::new();
        for engine_idx in 0..st.engines.len() {
            let Some(guilty) = st.engines[engine_idx]
                .running
                .iter()
                .position(|r| r.disposition.is_none() && r.deadline.is_some_and(|d| d <= now))
            else {
                continue;
            };
            let engine = &mut st.engines[engine_idx];
            let (entity, ctx) = {
                let r = &mut engine.running[guilty];
                r.disposition = Some(Disposition::Fail(Errno::ETIME));
                (r.entity, r.ctx.clone())
            };
            for r in engine.running.iter_mut() {
                if r.disposition.is_none() {
                    r.disposition = Some(Disposition::Resubmit);
                }
                r.ctx.abort.abort();
            }
            st.resets += 1;
            unready(st, entity);
            if let Some(e) = st.entities.get_mut(&entity) {
                e.karma += 1;
                tracing::warn!(client = e.client_id, karma = e.karma, "job timed out; resetting engine {engine_idx}");
                if e.karma >= self.config.hang_limit && !e.banned {
                    e.banned = true;
                    st.queued -= e.jobs.len();
                    failed.extend(e.jobs.drain(..).map(|j| (j, Errno::ECANCELED)));
                }
            }
            resets.push((engine_idx, ctx));
        }
        resets
    }
}
