//! Live object counts, kept exact by construction: every tracked object holds a
//! [`Tracked`] guard that adds on creation and subtracts on drop. Leak tests
//! compare these counts before and after a client dies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use accel_uapi::ObjectCounts;

/// What a [`Tracked`] guard counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connected clients.
    Client,
    /// Buffer objects (the amount is their size in bytes, counted separately).
    Buffer,
    /// Fences.
    Fence,
    /// Syncobjs.
    Syncobj,
    /// Queues.
    Queue,
    /// Jobs not yet freed.
    Job,
    /// Submission rings.
    Ring,
    /// Loaded programs.
    Program,
}

/// Counters of one subsystem instance.
#[derive(Debug, Default)]
pub struct Counters {
    counts: [AtomicU64; 8],
    buffer_bytes: AtomicU64,
}

impl Counters {
    /// A snapshot of every count.
    pub fn snapshot(&self) -> ObjectCounts {
        let get = |k: Kind| self.counts[k as usize].load(Ordering::Relaxed);
        ObjectCounts {
            clients: get(Kind::Client),
            buffers: get(Kind::Buffer),
            buffer_bytes: self.buffer_bytes.load(Ordering::Relaxed),
            fences: get(Kind::Fence),
            syncobjs: get(Kind::Syncobj),
            queues: get(Kind::Queue),
            jobs: get(Kind::Job),
            rings: get(Kind::Ring),
            programs: get(Kind::Program),
        }
    }
}

/// Counts one live object of a kind (and, for buffers, its bytes) until dropped.
#[derive(Debug)]
pub struct Tracked {
    counters: Arc<Counters>,
    kind: Kind,
    bytes: u64,
}

impl Tracked {
    /// Counts one object of `kind`.
    pub fn new(counters: &Arc<Counters>, kind: Kind) -> Self {
        Self::with_bytes(counters, kind, 0)
    }

    /// Counts one object of `kind` holding `bytes` of buffer memory.
    pub fn with_bytes(counters: &Arc<Counters>, kind: Kind, bytes: u64) -> Self {
        counters.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        counters.buffer_bytes.fetch_add(bytes, Ordering::Relaxed);
        Tracked { counters: counters.clone(), kind, bytes }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.counters.counts[self.kind as usize].fetch_sub(1, Ordering::Relaxed);
        self.counters.buffer_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Memory charged to a device until the buffer that holds it is freed.
#[derive(Debug)]
pub struct Charge {
    used: Arc<AtomicU64>,
    bytes: u64,
}

impl Charge {
    /// Adds `bytes` to `used` if the total stays within `limit`.
    pub fn try_new(used: &Arc<AtomicU64>, bytes: u64, limit: u64) -> Option<Charge> {
        used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(bytes).filter(|t| *t <= limit))
            .ok()
            .map(|_| Charge { used: used.clone(), bytes })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}
