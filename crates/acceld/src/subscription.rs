//! A RAS subscription's side shared between the thread that publishes events and the worker
//! loop that frames them for the subscriber: a bounded queue, so a storm costs the daemon a
//! bounded amount per subscriber, not a copy of the storm.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use accel_core::ras::RasEvent;

/// RAS events handed to a worker for one subscriber and not yet framed: beyond this, newer
/// ones are dropped (and reported as an overrun) before they are copied.
pub(crate) const RAS_QUEUED: usize = 65_536;

/// A RAS subscription's side shared with the thread that publishes the events.
#[derive(Default)]
pub(crate) struct Subscription {
    /// Cleared on close, so the subscription ends with the next batch.
    pub(crate) alive: AtomicBool,
    /// Events handed to the worker and not yet framed (at most about [`RAS_QUEUED`], as one thread offers).
    pub(crate) queued: AtomicUsize,
    /// Events dropped for want of room in that queue, not yet counted by the worker.
    pub(crate) dropped: AtomicU64,
}

impl Subscription {
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
        let s = Subscription::default();
        let mut posted: Vec<Vec<RasEvent>> = Vec::new();
        // Ended: nothing is offered.
        assert!(!s.offer(&events(1, 4), |e| posted.push(e)));
        assert!(posted.is_empty());
        s.alive.store(true, Relaxed);
        // Room for a whole batch, then for part of one: the oldest of it go, the rest drop.
        assert!(s.offer(&events(1, RAS_QUEUED - 10), |e| posted.push(e)));
        assert!(s.offer(&events(RAS_QUEUED as u64 - 9, 25), |e| posted.push(e)));
        assert_eq!(posted[1].len(), 10);
        assert_eq!(posted[1][0].seq, RAS_QUEUED as u64 - 9);
        assert_eq!((s.queued.load(Relaxed), s.dropped.load(Relaxed)), (RAS_QUEUED, 15));
        // Full: further batches drop whole, with no more posts (the first drop's went).
        assert!(s.offer(&events(RAS_QUEUED as u64 + 16, 100), |e| posted.push(e)));
        assert_eq!((posted.len(), s.dropped.load(Relaxed)), (2, 115));
        // The worker took the drops into account and framed everything: the next drop in a
        // full queue posts one empty batch, so the worker reports that overrun too.
        s.dropped.swap(0, Relaxed);
        assert!(s.offer(&events(1_000_000, 3), |e| posted.push(e)));
        assert_eq!((posted.len(), posted[2].len()), (3, 0));
        s.queued.fetch_sub(RAS_QUEUED, AcqRel);
        assert!(s.offer(&events(2_000_000, 3), |e| posted.push(e)));
        assert_eq!((posted[3].len(), s.queued.load(Relaxed)), (3, 3));
    }
}
