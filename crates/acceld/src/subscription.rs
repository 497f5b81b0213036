//! A RAS subscription's side shared between the thread that publishes events and the worker
//! loop that frames them for the subscriber: a bounded queue, so a storm costs the daemon a
//! bounded amount per subscriber, not a copy of the storm.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use accel_core::ras::RasEvent;

/// RAS events handed to a worker for one subscriber and not yet framed: beyond this, newer
/// ones are dropped (and reported as an overrun) before they are copied.
pub(crate) const RAS_QUEUED: usize = 65_536;

/// A RAS subscription's side shared with the thread that publishes the events.
pub(crate) struct Subscription {
    /// Cleared on close, so the subscription ends with the next batch.
    alive: AtomicBool,
    /// Events handed to the worker and not yet framed (at most about [`RAS_QUEUED`], as one thread offers).
    queued: AtomicUsize,
    /// Events dropped for want of room in that queue, not yet counted by the worker.
    dropped: AtomicU64,
}

impl Subscription {
    /// A live subscription with nothing queued.
    pub(crate) fn new() -> Subscription {
        Subscription { alive: AtomicBool::new(true), queued: AtomicUsize::new(0), dropped: AtomicU64::new(0) }
    }

    /// Ends it: the publisher drops it with its next batch.
    pub(crate) fn end(&self) {
        self.alive.store(false, Release);
    }

    /// The worker framed `n` of the events handed to it. Returns the events dropped since the
    /// last report once every event handed over before them is framed (the overrun is due
    /// then, after what was kept), else 0.
    pub(crate) fn framed(&self, n: usize) -> u64 {
        if self.queued.fetch_sub(n, AcqRel) == n {
            self.dropped.swap(0, Relaxed)
        } else {
            0
        }
    }

    /// Hands the events of `batch` that fit in the queue to the worker's loop; drops the
    /// rest (the newest), and says so once, so the worker reports the overrun. False once
    /// the subscription ended.
    pub(crate) fn offer(&self, batch: &[RasEvent], post: impl FnOnce(Vec<RasEvent>)) -> bool {
        if !self.alive.load(Acquire) {
            return false;
        }
        let take = batch.len().min(RAS_QUEUED.saturating_sub(self.queued.load(Acquire)));
        let dropped = (batch.len() - take) as u64;
        let first_drop = dropped > 0 && self.dropped.fetch_add(dropped, Relaxed) == 0;
        if take > 0 || first_drop {
            self.queued.fetch_add(take, AcqRel);
            post(batch[..take].to_vec());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use accel_core::ras::EventKind;
    use accel_uapi::Severity;

    use super::*;

    fn events(from: u64, n: usize) -> Vec<RasEvent> {
        (0..n as u64)
            .map(|i| RasEvent {
                seq: from + i,
                timestamp_ns: 0,
                node_id: 0,
                error_id: 0,
                kind: EventKind::Error,
                severity: Severity::Corrected,
                delta: 1,
                value: from + i,
            })
            .collect()
    }

    #[test]
    fn a_subscriber_gets_a_bounded_queue_and_one_wake_up_per_overrun() {
        let mut posted: Vec<Vec<RasEvent>> = Vec::new();
        // Ended: nothing is offered.
        let ended = Subscription::new();
        ended.end();
        assert!(!ended.offer(&events(1, 4), |e| posted.push(e)));
        assert!(posted.is_empty());
        let s = Subscription::new();
        // Room for a whole batch, then for part of one: the oldest of it go, the rest drop.
        assert!(s.offer(&events(1, RAS_QUEUED - 10), |e| posted.push(e)));
        assert!(s.offer(&events(RAS_QUEUED as u64 - 9, 25), |e| posted.push(e)));
        assert_eq!(posted[1].len(), 10);
        assert_eq!(posted[1][0].seq, RAS_QUEUED as u64 - 9);
        assert_eq!((s.queued.load(Relaxed), s.dropped.load(Relaxed)), (RAS_QUEUED, 15));
        // Full: further batches drop whole, with no more posts (the first drop's went).
        assert!(s.offer(&events(RAS_QUEUED as u64 + 16, 100), |e| posted.push(e)));
        assert_eq!((posted.len(), s.dropped.load(Relaxed)), (2, 115));
        // The overrun is due once everything handed over before it is framed, not sooner.
        assert_eq!(s.framed(posted[0].len()), 0);
        assert_eq!(s.framed(posted[1].len()), 115);
        assert_eq!((s.queued.load(Relaxed), s.dropped.load(Relaxed)), (0, 0));
        // Reported, the next drop in a full queue posts one empty batch, so the worker
        // reports that overrun too.
        assert!(s.offer(&events(1_000_000, RAS_QUEUED), |e| posted.push(e)));
        assert!(s.offer(&events(2_000_000, 3), |e| posted.push(e)));
        assert_eq!((posted.len(), posted[3].len()), (4, 0));
        assert_eq!(s.framed(RAS_QUEUED), 3);
        assert!(s.offer(&events(3_000_000, 3), |e| posted.push(e)));
        assert_eq!((posted[4].len(), s.queued.load(Relaxed)), (3, 3));
    }
}
