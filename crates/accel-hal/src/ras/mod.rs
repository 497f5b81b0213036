//! RAS core: error counters, health, reporters, events and a persistent log.
//!
//! Per device, a tree of nodes (device → block: memory, compute, interconnect,
//! firmware, thermal …), each with u64 error counters of one severity and an
//! optional threshold. Health follows from the counters. Each node has a
//! devlink-health-style reporter (error count, recovery count, grace period,
//! auto-recover). Every change is an event with a sequence number and a monotonic
//! timestamp: subscribers see gaps in the sequence when they fell behind and
//! resynchronise with a dump. Events are appended to a checksummed log, which is
//! replayed at start so counters survive a daemon crash. A change is logged before it
//! takes effect: if the log cannot be written (disk full) the request fails with `EIO`
//! and nothing changes, and a partly written record is cut back before the next append.
//! A change someone waits for (an admin's command, [`RasSink::report`]) is also synced to
//! disk before subscribers hear of it; a monitor's reports ([`RasSink::report_async`]) are
//! told once written — safe from a crash of the daemon — and synced right after by a
//! second thread, one `fdatasync` for everything written meanwhile.
//!
//! Drivers report through one API, [`RasSink::report`].

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex, Weak};

use accel_uapi::{Errno, Health, Severity};
use serde::{Deserialize, Serialize};

use crate::fence::monotonic_ns;
use crate::{bail, lock, Error, Result};

/// Events kept in memory for dumps.
pub const RECENT_EVENTS: usize = 1024;
/// Events a subscriber may have unread before it starts missing some (it sees the gap).
pub const SUBSCRIBER_BACKLOG: usize = 4096;

/// A node a driver declares: a block of the device and its error counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RasNodeDesc {
    /// Block name (`memory`, `compute`, `thermal`, …).
    pub name: String,
    /// Counters: name and severity.
    pub counters: Vec<(String, Severity)>,
}

impl RasNodeDesc {
    /// A node with the given counters.
    pub fn new(name: &str, counters: &[(&str, Severity)]) -> Self {
        RasNodeDesc { name: name.into(), counters: counters.iter().map(|(n, s)| (n.to_string(), *s)).collect() }
    }
}

/// One error counter.
#[derive(Debug)]
pub struct ErrorCounter {
    /// Id within its node (from 1).
    pub id: u32,
    /// Name.
    pub name: String,
    /// Severity of every error it counts.
    pub severity: Severity,
    value: AtomicU64,
    threshold: AtomicU64,
}

impl ErrorCounter {
    /// Errors counted.
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Threshold (0: none).
    pub fn threshold(&self) -> u64 {
        self.threshold.load(Ordering::Relaxed)
    }

    /// What this counter alone says about health.
    pub fn health(&self) -> Health {
        let (value, threshold) = (self.value(), self.threshold());
        let over = threshold > 0 && value >= threshold;
        match (self.severity, value) {
            (_, 0) => Health::Ok,
            (Severity::Fatal, _) => Health::Failed,
            (Severity::Uncorrected, _) if over => Health::Failed,
            (Severity::Uncorrected, _) => Health::Degraded,
            (Severity::Corrected, _) if over => Health::PredictedFailure,
            (Severity::Corrected, _) => Health::Ok,
        }
    }
}

/// A devlink-health-style reporter of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reporter {
    /// Uncorrected and fatal errors seen.
    pub error_count: u64,
    /// Recoveries run.
    pub recovery_count: u64,
    /// Least time between two automatic recoveries.
    pub grace_period_ms: u64,
    /// Recover automatically after an uncorrected or fatal error.
    pub auto_recover: bool,
    /// When the last recovery ran (monotonic ns; 0: never).
    pub last_recovery_ns: u64,
    /// False between an error and the recovery that follows.
    pub healthy: bool,
}

/// A node: one block of one device.
#[derive(Debug)]
pub struct RasNode {
    /// Id, unique in the daemon (from 1).
    pub id: u32,
    /// Device minor.
    pub device: u32,
    /// Device name (`accelN`).
    pub device_name: String,
    /// Block name.
    pub name: String,
    /// Counters, ids 1…n.
    pub counters: Vec<ErrorCounter>,
    reporter: Mutex<Reporter>,
}

impl RasNode {
    /// The worst health any counter implies.
    pub fn health(&self) -> Health {
        self.counters.iter().map(ErrorCounter::health).max().unwrap_or(Health::Ok)
    }

    /// The reporter's state.
    pub fn reporter(&self) -> Reporter {
        lock(&self.reporter).clone()
    }

    /// Counter by id.
    pub fn counter(&self, id: u32) -> Result<&ErrorCounter> {
        self.counters.iter().find(|c| c.id == id).ok_or_else(|| {
            Error::new(Errno::ENOENT, format!("node {} ({}) has no error counter {id}", self.id, self.name))
        })
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Errors were counted.
    Error,
    /// A counter was cleared.
    Cleared,
    /// A threshold was set.
    ThresholdSet,
    /// The node's reporter ran a recovery.
    Recovered,
}

/// One RAS event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RasEvent {
    /// Sequence number: consecutive, so a gap means missed events.
    pub seq: u64,
    /// `CLOCK_MONOTONIC` ns.
    pub timestamp_ns: u64,
    /// Node.
    pub node_id: u32,
    /// Counter (0 for node-wide events such as recoveries).
    pub error_id: u32,
    /// What happened.
    pub kind: EventKind,
    /// Severity of the counter (corrected for node-wide events).
    pub severity: Severity,
    /// Errors added by this event (0 unless `Error`).
    pub delta: u64,
    /// The counter's value (or threshold, for `ThresholdSet`) after the event.
    pub value: u64,
}

mod commit;
mod log;

use commit::{commit_loop, sync_loop, Committer, Done, Pending, SyncState, Target};
pub use log::RasLog;
use log::{LogKind, LogRecord};

/// What is published: the history and who hears of new events. Apart from the sequence
/// numbers, so the log thread publishes a batch while a storm's reporter goes on taking them.
struct Events {
    recent: VecDeque<RasEvent>,
    subscribers: Vec<Tell>,
}

/// A subscriber: told each batch on the publishing thread, `false` when it is gone.
type Tell = Box<dyn FnMut(&[RasEvent]) -> bool + Send>;

/// What RAS needs of a device's driver: attaching its sink, recovering a node, injecting
/// errors. The driver layer implements it for every driver, so RAS sits below drivers.
pub trait RasHooks: Send + Sync {
    /// Hands the driver its sink (once, at registration).
    fn ras_attach(&self, sink: RasSink);
    /// Recovers a node.
    fn ras_recover(&self, node: &str) -> std::result::Result<(), Errno>;
    /// Injects `count` errors of `error` in `node`.
    fn ras_inject(&self, node: &str, error: &str, count: u64) -> std::result::Result<(), Errno>;
}

/// The RAS state of the whole daemon.
pub struct RasCore {
    nodes: Vec<RasNode>,
    drivers: Vec<Arc<dyn RasHooks>>,
    /// The last sequence number handed out; held while an event changes state and is queued,
    /// so events reach the log in sequence order.
    seq: Mutex<u64>,
    events: Mutex<Events>,
    log: Option<Arc<Committer>>,
}

impl RasCore {
    /// Builds the node tree from each device's declared nodes (`devices[i]` is
    /// `accel<i>`), and replays the log at `log_path` if given.
    pub fn new(devices: &[(Arc<dyn RasHooks>, Vec<RasNodeDesc>)], log_path: Option<&Path>) -> Result<Arc<RasCore>> {
        Self::with_log_limit(devices, log_path, log::DEFAULT_MAX_BYTES)
    }

    /// Like [`RasCore::new`], compacting the log once it grows past `max_bytes`.
    pub fn with_log_limit(
        devices: &[(Arc<dyn RasHooks>, Vec<RasNodeDesc>)],
        log_path: Option<&Path>,
        max_bytes: u64,
    ) -> Result<Arc<RasCore>> {
        let mut nodes = Vec::new();
        for (minor, (_, descs)) in devices.iter().enumerate() {
            for desc in descs {
                nodes.push(RasNode {
                    id: nodes.len() as u32 + 1,
                    device: minor as u32,
                    device_name: format!("accel{minor}"),
                    name: desc.name.clone(),
                    counters: desc
                        .counters
                        .iter()
                        .enumerate()
                        .map(|(i, (name, severity))| ErrorCounter {
                            id: i as u32 + 1,
                            name: name.clone(),
                            severity: *severity,
                            value: AtomicU64::new(0),
                            threshold: AtomicU64::new(0),
                        })
                        .collect(),
                    reporter: Mutex::new(Reporter {
                        error_count: 0,
                        recovery_count: 0,
                        grace_period_ms: 1000,
                        auto_recover: true,
                        last_recovery_ns: 0,
                        healthy: true,
                    }),
                });
            }
        }
        let (mut seq, mut events) = (0, Events { recent: VecDeque::new(), subscribers: Vec::new() });
        let log = match log_path {
            None => None,
            Some(path) => {
                let (log, records) = RasLog::open(path, max_bytes)
                    .map_err(|e| Error::new(Errno::EIO, format!("opening RAS log {}: {e}", path.display())))?;
                replay(&nodes, &records, &mut seq, &mut events);
                let at = seq;
                Some(Arc::new(Committer {
                    queue: Mutex::new((Vec::new(), false)),
                    cv: std::sync::Condvar::new(),
                    log: Mutex::new(log),
                    sync: Mutex::new(SyncState { written: at, synced: at, ..SyncState::default() }),
                    sync_cv: std::sync::Condvar::new(),
                }))
            }
        };
        let core = Arc::new(RasCore {
            nodes,
            drivers: devices.iter().map(|(d, _)| d.clone()).collect(),
            seq: Mutex::new(seq),
            events: Mutex::new(events),
            log,
        });
        if let Some(c) = &core.log {
            let (c2, weak) = (c.clone(), Arc::downgrade(&core));
            std::thread::Builder::new()
                .name("ras-log".into())
                .spawn(move || commit_loop(&c2, &weak))
                .map_err(|e| Error::new(Errno::EAGAIN, format!("starting the RAS log thread: {e}")))?;
            let c = c.clone();
            std::thread::Builder::new()
                .name("ras-sync".into())
                .spawn(move || sync_loop(&c))
                .map_err(|e| Error::new(Errno::EAGAIN, format!("starting the RAS sync thread: {e}")))?;
        }
        for (minor, driver) in core.drivers.iter().enumerate() {
            driver.ras_attach(RasSink { core: Arc::downgrade(&core), device: minor as u32 });
        }
        Ok(core)
    }

    /// Every node.
    pub fn nodes(&self) -> &[RasNode] {
        &self.nodes
    }

    /// Node by id.
    pub fn node(&self, id: u32) -> Result<&RasNode> {
        // Nodes are numbered from 1 in order.
        let at = (id as usize).wrapping_sub(1);
        self.nodes.get(at).filter(|n| n.id == id).ok_or_else(|| Error::new(Errno::ENOENT, format!("no RAS node {id}")))
    }

    /// Health of a device: the worst of its nodes.
    pub fn device_health(&self, minor: u32) -> Health {
        self.nodes.iter().filter(|n| n.device == minor).map(RasNode::health).max().unwrap_or(Health::Ok)
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        *lock(&self.seq)
    }

    /// The most recent events (at most [`RECENT_EVENTS`]), oldest first.
    pub fn recent(&self) -> Vec<RasEvent> {
        lock(&self.events).recent.iter().cloned().collect()
    }

    /// A stream of every future event, in batches (the events one log write took,
    /// in order). If the receiver falls more than [`SUBSCRIBER_BACKLOG`] batches behind it
    /// misses events (and sees the gap in `seq`).
    pub fn subscribe(&self) -> Receiver<Vec<RasEvent>> {
        let (tx, rx) = sync_channel(SUBSCRIBER_BACKLOG);
        // A full subscriber misses these events (and notices the gap); a gone one is dropped.
        self.subscribe_with(move |events| !matches!(tx.try_send(events.to_vec()), Err(TrySendError::Disconnected(_))));
        rx
    }

    /// Calls `tell` with every future batch of events, in order, until it returns `false`.
    /// It runs on the thread that publishes (the log's; the reporter's without a log) under
    /// the core's event lock, so it must only hand the events on (an event loop's queue and
    /// wake-up) and never call back into the core. Saves a subscriber a thread and a wake-up
    /// per batch.
    pub fn subscribe_with(&self, tell: impl FnMut(&[RasEvent]) -> bool + Send + 'static) {
        lock(&self.events).subscribers.push(Box::new(tell));
    }

    fn get(&self, t: Target) -> u64 {
        match t {
            Target::Value(n, c) => self.nodes[n].counters[c].value.load(Ordering::Relaxed),
            Target::Threshold(n, c) => self.nodes[n].counters[c].threshold.load(Ordering::Relaxed),
            Target::Recoveries(n) => lock(&self.nodes[n].reporter).recovery_count,
        }
    }

    fn set(&self, t: Target, v: u64) {
        match t {
            Target::Value(n, c) => self.nodes[n].counters[c].value.store(v, Ordering::Relaxed),
            Target::Threshold(n, c) => self.nodes[n].counters[c].threshold.store(v, Ordering::Relaxed),
            Target::Recoveries(n) => lock(&self.nodes[n].reporter).recovery_count = v,
        }
    }

    fn target(&self, node: &RasNode, counter: Option<&ErrorCounter>, kind: EventKind) -> Target {
        let n = (node.id - 1) as usize;
        match (kind, counter) {
            (EventKind::ThresholdSet, Some(c)) => Target::Threshold(n, (c.id - 1) as usize),
            (_, Some(c)) => Target::Value(n, (c.id - 1) as usize),
            (_, None) => Target::Recoveries(n),
        }
    }

    /// Makes a change and logs it: `compute` gives the new value from the old (under the
    /// event lock, so changes are serialised). With a log, the change is published once its
    /// batch reached the disk; a batch that cannot be written is undone, with every change
    /// queued after it. `wait`: return only then, failing with `EIO` if it was undone;
    /// otherwise return once queued (a driver's monitor reporting a storm of errors).
    fn emit(
        &self,
        node: &RasNode,
        counter: Option<&ErrorCounter>,
        kind: EventKind,
        delta: u64,
        wait: bool,
        compute: impl FnOnce(u64) -> u64,
    ) -> Result<RasEvent> {
        let target = self.target(node, counter, kind);
        let mut seq = lock(&self.seq);
        let old = self.get(target);
        let value = compute(old);
        let event = RasEvent {
            seq: *seq + 1,
            timestamp_ns: monotonic_ns(),
            node_id: node.id,
            error_id: counter.map_or(0, |c| c.id),
            kind,
            severity: counter.map_or(Severity::Corrected, |c| c.severity),
            delta,
            value,
        };
        *seq = event.seq;
        self.set(target, value);
        let Some(log) = &self.log else {
            publish(&mut lock(&self.events), vec![event.clone()]);
            return Ok(event);
        };
        let done = wait.then(|| Arc::new(Done::default()));
        let mut queue = lock(&log.queue);
        queue.0.push(Pending { event: event.clone(), target, old, done: done.clone() });
        // The log thread takes the whole queue at once, so only the first event of a batch
        // needs to wake it (a condvar notify is a system call, even with no one waiting).
        if queue.0.len() == 1 {
            log.cv.notify_one();
        }
        drop(queue);
        drop(seq);
        let Some(done) = done else { return Ok(event) };
        match done.wait() {
            Ok(()) => Ok(event),
            Err(e) => bail!(EIO, "{e}; the change was not made"),
        }
    }

    /// The log's `fdatasync` calls and compactions so far (zeros without a log).
    pub fn log_stats(&self) -> (u64, u64) {
        self.log.as_ref().map_or((0, 0), |l| lock(&l.log).stats())
    }

    /// Waits until every event reported so far is written to the log and synced (a daemon
    /// stopping calls it before it exits), at most `timeout`; whether it got there.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let Some(c) = &self.log else { return true };
        // Every event up to the last handed out is queued; it is on disk once synced passes it
        // (or the sequence went back below it: a batch the disk refused was undone).
        let target = self.last_seq();
        let deadline = std::time::Instant::now() + timeout;
        while lock(&c.sync).synced < target.min(self.last_seq()) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    /// Events whose records are written to the log but not yet synced: the ones a power
    /// loss could take (a growing number means the disk does not keep up).
    pub fn log_unsynced(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| {
            let s = lock(&l.sync);
            s.written.saturating_sub(s.synced)
        })
    }

    /// Counts `delta` errors on a counter; updates the reporter and may run recovery. Returns
    /// once the event is durable (`EIO` if the log refused it, and nothing changed).
    pub fn report(&self, node_id: u32, error_id: u32, delta: u64) -> Result<RasEvent> {
        self.report_with(node_id, error_id, delta, true)
    }

    fn report_with(&self, node_id: u32, error_id: u32, delta: u64, wait: bool) -> Result<RasEvent> {
        let node = self.node(node_id)?;
        let counter = node.counter(error_id)?;
        let event = self.emit(node, Some(counter), EventKind::Error, delta, wait, |v| v.saturating_add(delta))?;
        if counter.severity >= Severity::Uncorrected && delta > 0 {
            let recover = {
                let mut r = lock(&node.reporter);
                r.error_count += delta;
                r.healthy = false;
                let now = monotonic_ns();
                r.auto_recover && now.saturating_sub(r.last_recovery_ns) >= r.grace_period_ms * 1_000_000
            };
            if recover {
                let _ = self.recover(node_id);
            }
        }
        Ok(event)
    }

    /// Runs the node's recovery (the driver's hook) and marks the reporter healthy.
    pub fn recover(&self, node_id: u32) -> Result<RasEvent> {
        let node = self.node(node_id)?;
        self.drivers[node.device as usize]
            .ras_recover(&node.name)
            .map_err(|e| Error::new(e, format!("recovery of {} {} failed", node.device_name, node.name)))?;
        let event = self.emit(node, None, EventKind::Recovered, 0, true, |count| count + 1)?;
        let mut r = lock(&node.reporter);
        r.last_recovery_ns = monotonic_ns();
        r.healthy = true;
        Ok(event)
    }

    /// Sets a counter back to zero.
    pub fn clear(&self, node_id: u32, error_id: u32) -> Result<RasEvent> {
        let node = self.node(node_id)?;
        let counter = node.counter(error_id)?;
        self.emit(node, Some(counter), EventKind::Cleared, 0, true, |_| 0)
    }

    /// Sets a counter's threshold (0 removes it).
    pub fn set_threshold(&self, node_id: u32, error_id: u32, threshold: u64) -> Result<RasEvent> {
        let node = self.node(node_id)?;
        let counter = node.counter(error_id)?;
        self.emit(node, Some(counter), EventKind::ThresholdSet, 0, true, |_| threshold)
    }

    /// Configures a node's reporter.
    pub fn configure_reporter(
        &self,
        node_id: u32,
        grace_period_ms: Option<u64>,
        auto_recover: Option<bool>,
    ) -> Result<Reporter> {
        let node = self.node(node_id)?;
        let mut r = lock(&node.reporter);
        if let Some(g) = grace_period_ms {
            r.grace_period_ms = g;
        }
        if let Some(a) = auto_recover {
            r.auto_recover = a;
        }
        Ok(r.clone())
    }

    /// Injects errors through the device's driver (test devices only; others `EOPNOTSUPP`).
    pub fn inject(&self, node_id: u32, error_id: u32, count: u64) -> Result<()> {
        let node = self.node(node_id)?;
        let counter = node.counter(error_id)?;
        self.drivers[node.device as usize]
            .ras_inject(&node.name, &counter.name, count)
            .map_err(|e| Error::new(e, format!("{}: the driver cannot inject errors", node.device_name)))
    }

    /// `devlink health diagnose`: a node's state as key/value pairs.
    pub fn diagnose(&self, node_id: u32) -> Result<Vec<(String, String)>> {
        let node = self.node(node_id)?;
        let r = node.reporter();
        let mut out = vec![
            ("device".into(), node.device_name.clone()),
            ("node".into(), node.name.clone()),
            ("health".into(), node.health().name().into()),
            ("reporter.state".into(), if r.healthy { "healthy" } else { "error" }.into()),
            ("reporter.error_count".into(), r.error_count.to_string()),
            ("reporter.recovery_count".into(), r.recovery_count.to_string()),
            ("reporter.grace_period_ms".into(), r.grace_period_ms.to_string()),
            ("reporter.auto_recover".into(), r.auto_recover.to_string()),
        ];
        for c in &node.counters {
            out.push((
                format!("counter.{}", c.name),
                format!("{} ({}, threshold {})", c.value(), c.severity.name(), c.threshold()),
            ));
        }
        Ok(out)
    }

    /// `devlink health dump`: a node's recent events.
    pub fn dump(&self, node_id: u32) -> Result<Vec<RasEvent>> {
        self.node(node_id)?;
        Ok(lock(&self.events).recent.iter().filter(|e| e.node_id == node_id).cloned().collect())
    }

    /// Node and counter ids by names.
    pub fn find(&self, device: u32, node: &str, error: &str) -> Result<(u32, u32)> {
        let Some(n) = self.nodes.iter().find(|n| n.device == device && n.name == node) else {
            bail!(ENOENT, "accel{device} has no RAS node {node:?}");
        };
        let Some(c) = n.counters.iter().find(|c| c.name == error) else {
            bail!(ENOENT, "accel{device} node {node} has no error counter {error:?}");
        };
        Ok((n.id, c.id))
    }
}

fn replay(nodes: &[RasNode], records: &[LogRecord], seq: &mut u64, events: &mut Events) {
    for rec in records {
        *seq = (*seq).max(rec.seq);
        let Some(node) = nodes.iter().find(|n| n.device_name == rec.device && n.name == rec.node) else { continue };
        let counter = node.counters.iter().find(|c| c.name == rec.error);
        match (rec.kind, counter) {
            (LogKind::Error | LogKind::Cleared | LogKind::SnapValue, Some(c)) => {
                c.value.store(rec.value, Ordering::Relaxed)
            }
            (LogKind::ThresholdSet | LogKind::SnapThreshold, Some(c)) => {
                c.threshold.store(rec.value, Ordering::Relaxed)
            }
            (LogKind::Recovered | LogKind::SnapRecoveries, _) => lock(&node.reporter).recovery_count = rec.value,
            _ => continue,
        }
        // Snapshots restore state; only events go back into the history.
        let Some(kind) = rec.kind.event() else { continue };
        if events.recent.len() == RECENT_EVENTS {
            events.recent.pop_front();
        }
        events.recent.push_back(RasEvent {
            seq: rec.seq,
            timestamp_ns: rec.timestamp_ns,
            node_id: node.id,
            error_id: counter.map_or(0, |c| c.id),
            kind,
            severity: counter.map_or(Severity::Corrected, |c| c.severity),
            delta: 0,
            value: rec.value,
        });
    }
}

/// Adds logged events to the history and tells the subscribers, all in one message each.
fn publish(ev: &mut Events, events: Vec<RasEvent>) {
    for event in &events {
        if ev.recent.len() == RECENT_EVENTS {
            ev.recent.pop_front();
        }
        ev.recent.push_back(event.clone());
    }
    ev.subscribers.retain_mut(|tell| tell(&events));
}

impl Drop for RasCore {
    /// Writes (and syncs) what is still queued — a monitor's reports nobody waited for — and
    /// ends the log and sync threads.
    fn drop(&mut self) {
        let Some(c) = &self.log else { return };
        let rest = {
            let mut q = lock(&c.queue);
            q.1 = true;
            std::mem::take(&mut q.0)
        };
        c.cv.notify_all();
        if rest.is_empty() {
            return;
        }
        let written = c.write(self, &rest, true).map_err(|e| e.to_string());
        if let Err(e) = &written {
            tracing::error!("RAS log: {} events queued when the daemon stopped were not written: {e}", rest.len());
        }
        for p in rest {
            if let Some(d) = &p.done {
                d.set(written.clone());
            }
        }
    }
}

/// How a driver reports errors of its device.
#[derive(Debug, Clone)]
pub struct RasSink {
    core: Weak<RasCore>,
    device: u32,
}

impl RasSink {
    /// Counts `count` errors of `error` in block `node`. `ENODEV` once the daemon is gone.
    pub fn report(&self, node: &str, error: &str, count: u64) -> Result<RasEvent> {
        let core = self.core.upgrade().ok_or_else(|| Error::new(Errno::ENODEV, "RAS core is gone"))?;
        let (node_id, error_id) = core.find(self.device, node, error)?;
        core.report(node_id, error_id, count)
    }

    /// Like [`RasSink::report`], returning as soon as the event is queued: a monitor that
    /// sees a storm of errors reports them all and the log writes them with a few writes.
    /// Subscribers hear of each once it is written to the log (it survives a crash of the
    /// daemon), and the log is synced right after (a power loss within that one
    /// `fdatasync` may take it); one the log cannot write is undone (and logged), as with
    /// `report`.
    pub fn report_async(&self, node: &str, error: &str, count: u64) -> Result<RasEvent> {
        let core = self.core.upgrade().ok_or_else(|| Error::new(Errno::ENODEV, "RAS core is gone"))?;
        let (node_id, error_id) = core.find(self.device, node, error)?;
        core.report_with(node_id, error_id, count, false)
    }

    /// Whether the daemon still runs (monitor threads stop when it does not).
    pub fn is_alive(&self) -> bool {
        self.core.strong_count() > 0
    }
}

#[cfg(test)]
mod tests;
