//! Turns on a device between jobs that run beside each other and a job that must run alone:
//! a job caught in a context loss runs again alone, so that a fault then is its own (the
//! cuda and vulkan drivers). Jobs on slot threads hold a shared turn for their run; jobs of an
//! asynchronous engine, started on one thread and ended on another, are counted instead; a run
//! alone takes the turn exclusively and waits for the counted ones to end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// A device's turns (see the module's text).
#[derive(Debug, Default)]
pub struct Turns {
    shared: RwLock<()>,
    /// Asynchronous jobs in flight: they hold no shared turn.
    in_flight: AtomicUsize,
    /// Runs alone wanted or under way: asynchronous jobs then take the slot path.
    alone_wanted: AtomicUsize,
}

/// A run's turn alone on the device: no other job beside it until it drops.
pub struct Alone<'a> {
    _exclusive: RwLockWriteGuard<'a, ()>,
    wanted: &'a AtomicUsize,
}

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        self.wanted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Turns {
    /// A slot-thread job's turn beside other jobs (waits while one runs alone).
    pub fn beside(&self) -> RwLockReadGuard<'_, ()> {
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A turn alone: waits for every job beside, on slot threads and asynchronous ones.
    pub fn alone(&self) -> Alone<'_> {
        self.alone_wanted.fetch_add(1, Ordering::SeqCst);
        let exclusive = self.shared.write().unwrap_or_else(|e| e.into_inner());
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        Alone { _exclusive: exclusive, wanted: &self.alone_wanted }
    }

    /// An asynchronous job's turn beside other jobs: false while a run alone is wanted or
    /// under way (the job then takes the slot path, whose [`Turns::beside`] waits). A true
    /// is ended with [`Turns::end_async`] once the job is.
    pub fn start_async(&self) -> bool {
        // Counted first, then the wish looked at: a run alone announces its wish first, then
        // waits for the count, so one of the two sees the other.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.alone_wanted.load(Ordering::SeqCst) > 0 {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// An asynchronous job's turn ended.
    pub fn end_async(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_run_alone_waits_for_jobs_beside_and_turns_new_ones_away() {
        let turns = Arc::new(Turns::default());
        assert!(turns.start_async());
        let beside = turns.beside();
        let t = turns.clone();
        let alone = std::thread::spawn(move || {
            let _alone = t.alone();
            // Neither kind of job is beside it now.
            assert_eq!(t.in_flight.load(Ordering::SeqCst), 0);
            assert!(t.shared.try_read().is_err());
        });
        while turns.alone_wanted.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        assert!(!turns.start_async(), "a new asynchronous job takes the slot path while a run alone waits");
        drop(beside);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!alone.is_finished(), "the run alone started with an asynchronous job in flight");
        turns.end_async();
        alone.join().unwrap();
        assert_eq!(turns.alone_wanted.load(Ordering::SeqCst), 0);
        assert!(turns.start_async());
    }
}
