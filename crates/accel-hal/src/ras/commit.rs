//! Group commit of RAS events to the log: emitters queue their events, one thread writes
//! each batch with one write (and syncs it before its emitters hear back, where one waits),
//! a second thread syncs what was written without a waiter.

use super::*;

/// A piece of state an event changes, so a failed commit can put it back.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    Value(usize, usize),
    Threshold(usize, usize),
    Recoveries(usize),
}

/// An event waiting for the log (its record is made by the log thread, for the few events a
/// batch keeps: see [`coalesced`]).
pub(super) struct Pending {
    pub(super) event: RasEvent,
    pub(super) target: Target,
    pub(super) old: u64,
    /// Where the emitter waits, if it does.
    pub(super) done: Option<Arc<Done>>,
}

/// Where an emitter waits for its batch's fate.
#[derive(Default)]
pub(super) struct Done {
    pub(super) result: Mutex<Option<std::result::Result<(), String>>>,
    pub(super) cv: std::sync::Condvar,
}

impl Done {
    pub(super) fn set(&self, r: std::result::Result<(), String>) {
        *lock(&self.result) = Some(r);
        self.cv.notify_all();
    }

    pub(super) fn wait(&self) -> std::result::Result<(), String> {
        let mut g = lock(&self.result);
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Group commit: emitters queue their records; one thread writes whatever is queued with one
/// write, so a burst of events costs a few writes and syncs, not one each. A batch with an
/// emitter that waits (an admin's change, a driver's [`RasSink::report`]) is synced before
/// anyone hears of it; one without (a monitor's storm, [`RasSink::report_async`]) is told
/// once written (it survives a crash of the daemon) and synced by a second thread right
/// after, so a storm's events do not wait for the disk's flushes.
pub(super) struct Committer {
    /// Queued events, and whether the core is gone.
    pub(super) queue: Mutex<(Vec<Pending>, bool)>,
    pub(super) cv: std::sync::Condvar,
    pub(super) log: Mutex<RasLog>,
    pub(super) sync: Mutex<SyncState>,
    pub(super) sync_cv: std::sync::Condvar,
}

/// Where the background sync stands, by event sequence number.
#[derive(Default)]
pub(super) struct SyncState {
    /// The last event whose record is written.
    pub(super) written: u64,
    /// The last event whose record is synced.
    pub(super) synced: u64,
    /// The log thread ended: sync what is written, then end.
    pub(super) stop: bool,
    /// The sync thread sleeps (else it is syncing, and looks for more once done: waking it
    /// would be a system call for nothing).
    pub(super) idle: bool,
}

impl Committer {
    /// Writes the records `batch` makes (see [`coalesced`]) with one write, and one
    /// `fdatasync` if `sync`.
    pub(super) fn write(&self, core: &RasCore, batch: &[Pending], sync: bool) -> std::io::Result<()> {
        let recs = coalesced(core, &batch.iter().map(|p| &p.event).collect::<Vec<_>>());
        lock(&self.log).append_batch(&recs, sync)
    }
}

/// The records that make a batch durable: of a batch's errors on one counter only the last
/// (it carries the counter's value after all of them, which is what a restart needs), every
/// other event as it is. A storm of 1,000 errors on one counter writes one record, not 1,000:
/// the sync of a page, not of 25. The history replayed after a restart keeps that last event.
pub(super) fn coalesced(core: &RasCore, batch: &[&RasEvent]) -> Vec<LogRecord> {
    let mut last: HashMap<(u32, u32), usize> = HashMap::new();
    for (i, e) in batch.iter().enumerate() {
        if e.kind == EventKind::Error {
            last.insert((e.node_id, e.error_id), i);
        }
    }
    batch
        .iter()
        .enumerate()
        .filter(|(i, e)| e.kind != EventKind::Error || last.get(&(e.node_id, e.error_id)) == Some(i))
        .filter_map(|(_, e)| {
            let node = core.node(e.node_id).ok()?;
            Some(LogRecord {
                seq: e.seq,
                timestamp_ns: e.timestamp_ns,
                device: node.device_name.clone(),
                node: node.name.clone(),
                error: node.counter(e.error_id).map_or(String::new(), |c| c.name.clone()),
                kind: e.kind.into(),
                value: e.value,
            })
        })
        .collect()
}

/// The log thread: writes every queued record in one batch, then publishes the batch (or
/// undoes it, and everything queued after it, if the disk refused it). Ends when the core
/// is dropped, and then ends the sync thread.
pub(super) fn commit_loop(c: &Committer, core: &Weak<RasCore>) {
    commit_batches(c, core);
    lock(&c.sync).stop = true;
    c.sync_cv.notify_one();
}

pub(super) fn commit_batches(c: &Committer, core: &Weak<RasCore>) {
    loop {
        // A batch is taken only while the core is held, so once the core is gone what is
        // queued is all that is left, and its drop writes that.
        // (Never dropped under the queue's lock: its drop takes that lock.)
        let (batch, core) = {
            let mut q = lock(&c.queue);
            while q.0.is_empty() && !q.1 {
                q = c.cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.0.is_empty() {
                return;
            }
            let Some(core) = core.upgrade() else { return };
            (std::mem::take(&mut q.0), core)
        };
        let waited = batch.iter().any(|p| p.done.is_some());
        let written = c.write(&core, &batch, waited);
        match written {
            Ok(()) => {
                // Counted as written before anyone hears of it, so `log_unsynced` covers it.
                let last = batch[batch.len() - 1].event.seq;
                let mut s = lock(&c.sync);
                s.written = last;
                if waited {
                    s.synced = last;
                } else if s.idle {
                    c.sync_cv.notify_one();
                }
                drop(s);
                publish(&mut lock(&core.events), batch.iter().map(|p| p.event.clone()).collect());
                for p in batch {
                    if let Some(d) = &p.done {
                        d.set(Ok(()));
                    }
                }
            }
            Err(e) => {
                tracing::error!("RAS log append failed: {e}");
                let path = lock(&c.log).path().display().to_string();
                // Emitters wait while this batch and everything queued after it are undone.
                let mut seq = lock(&core.seq);
                let mut all = batch;
                all.append(&mut lock(&c.queue).0);
                for p in all.iter().rev() {
                    core.set(p.target, p.old);
                }
                *seq = all[0].event.seq - 1;
                for p in all {
                    if let Some(d) = &p.done {
                        d.set(Err(format!("RAS log {path}: {e}")));
                    }
                }
            }
        }
    }
}

/// The sync thread: `fdatasync`s the log whenever records were written since its last sync
/// (one sync for everything written meanwhile), outside the log's lock so the log thread
/// keeps writing. Ends after the log thread, with a last sync.
pub(super) fn sync_loop(c: &Committer) {
    loop {
        let target = {
            let mut s = lock(&c.sync);
            while s.synced >= s.written && !s.stop {
                s.idle = true;
                s = c.sync_cv.wait(s).unwrap_or_else(|e| e.into_inner());
                s.idle = false;
            }
            if s.synced >= s.written {
                return;
            }
            s.written
        };
        // Taken after the records up to `target` were written; a compaction since then has
        // synced its own file, so syncing the old one is harmless.
        let file = lock(&c.log).sync_handle();
        let result = file.sync_data();
        lock(&c.log).synced(&result);
        let mut s = lock(&c.sync);
        s.synced = s.synced.max(target);
    }
}
