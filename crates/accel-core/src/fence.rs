//! Fences (`dma_fence`) and syncobjs (`drm_syncobj`).
//!
//! A fence signals once, with or without an error; the first signal wins.
//! Everything that waits does so through signal callbacks: a waiter registers one
//! that wakes it, composite fences and eventfd exports register theirs, so nothing
//! needs a thread per waiter.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use accel_uapi::{Errno, FenceStatus};

use crate::counters::{Counters, Kind, Tracked};
use crate::{bail, lock, Result};

type Callback = Box<dyn FnOnce(FenceStatus) + Send>;

struct FenceState {
    status: FenceStatus,
    /// `CLOCK_MONOTONIC` ns at signal time; 0 while pending.
    timestamp: u64,
    callbacks: Vec<Callback>,
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock fence timestamps use).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// A one-shot completion signal that may carry an error.
pub struct Fence {
    state: Mutex<FenceState>,
    _tracked: Tracked,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("status", &self.status()).finish()
    }
}

impl Fence {
    /// A new unsignalled fence.
    pub fn new(counters: &Arc<Counters>) -> Arc<Fence> {
        Arc::new(Fence {
            state: Mutex::new(FenceState { status: FenceStatus::Pending, timestamp: 0, callbacks: Vec::new() }),
            _tracked: Tracked::new(counters, Kind::Fence),
        })
    }

    /// A fence that is already signalled with `result`.
    pub fn signaled(counters: &Arc<Counters>, result: Result<(), Errno>) -> Arc<Fence> {
        let f = Fence::new(counters);
        f.signal(result);
        f
    }

    /// A fence that signals once every fence in `fences` has; it carries the first error seen.
    pub fn all_of(counters: &Arc<Counters>, fences: &[Arc<Fence>]) -> Arc<Fence> {
        if let [one] = fences {
            return one.clone();
        }
        let out = Fence::new(counters);
        if fences.is_empty() {
            out.signal(Ok(()));
            return out;
        }
        let pending = Arc::new(Mutex::new((fences.len(), None::<Errno>)));
        for f in fences {
            let (out, pending) = (out.clone(), pending.clone());
            f.on_signal(move |status| {
                let mut p = lock(&pending);
                p.0 -= 1;
                if let (FenceStatus::Error(e), None) = (status, p.1) {
                    p.1 = Some(e);
                }
                if p.0 == 0 {
                    let err = p.1;
                    drop(p);
                    out.signal(err.map_or(Ok(()), Err));
                }
            });
        }
        out
    }

    /// Signals the fence. Returns false if it was already signalled (the first signal wins).
    pub fn signal(&self, result: Result<(), Errno>) -> bool {
        let status = match result {
            Ok(()) => FenceStatus::Signaled,
            Err(e) => FenceStatus::Error(e),
        };
        let callbacks = {
            let mut s = lock(&self.state);
            if s.status != FenceStatus::Pending {
                return false;
            }
            s.status = status;
            s.timestamp = monotonic_ns();
            std::mem::take(&mut s.callbacks)
        };
        // Outside the lock: a callback may take other fences' locks.
        for cb in callbacks {
            cb(status);
        }
        true
    }

    /// Current status.
    pub fn status(&self) -> FenceStatus {
        lock(&self.state).status
    }

    /// When the fence signalled (`CLOCK_MONOTONIC` ns), or 0 while pending.
    pub fn timestamp(&self) -> u64 {
        lock(&self.state).timestamp
    }

    /// Runs `cb` once the fence signals (at once, on this thread, if it already has).
    pub fn on_signal(&self, cb: impl FnOnce(FenceStatus) + Send + 'static) {
        let mut s = lock(&self.state);
        if s.status == FenceStatus::Pending {
            s.callbacks.push(Box::new(cb));
        } else {
            let status = s.status;
            drop(s);
            cb(status);
        }
    }
}

/// Whether a wait for all (or any) of `fences` is satisfied now: the index of the first
/// signalled fence and every fence's status, or `None` while it must go on waiting. The
/// non-blocking form of [`wait_fences`] for event loops, which learn of progress through
/// [`Fence::on_signal`].
pub fn poll_fences(fences: &[Arc<Fence>], all: bool) -> Option<(u32, Vec<FenceStatus>)> {
    let status: Vec<FenceStatus> = fences.iter().map(|f| f.status()).collect();
    let first = status.iter().position(|s| *s != FenceStatus::Pending);
    let done = if all { status.iter().all(|s| *s != FenceStatus::Pending) } else { first.is_some() };
    done.then(|| (first.unwrap_or(0) as u32, status))
}

/// Waits for all or any of `fences`, up to `timeout`.
///
/// Returns the index of the first signalled fence and every fence's status.
/// Errors: `ETIMEDOUT` when the time runs out. This blocks its thread, for in-process users;
/// an event loop uses [`poll_fences`] and [`Fence::on_signal`] instead.
pub fn wait_fences(fences: &[Arc<Fence>], all: bool, timeout: Duration) -> Result<(u32, Vec<FenceStatus>)> {
    if fences.is_empty() {
        bail!(EINVAL, "nothing to wait on");
    }
    let waker = Arc::new((Mutex::new(()), Condvar::new()));
    for f in fences {
        let weak: Weak<(Mutex<()>, Condvar)> = Arc::downgrade(&waker);
        f.on_signal(move |_| {
            if let Some(w) = weak.upgrade() {
                let _g = lock(&w.0);
                w.1.notify_all();
            }
        });
    }
    let deadline = Instant::now().checked_add(timeout);
    let mut guard = lock(&waker.0);
    loop {
        // Checked under the waker's lock: a signal between check and wait cannot be missed.
        let status: Vec<FenceStatus> = fences.iter().map(|f| f.status()).collect();
        let done: Vec<bool> = status.iter().map(|s| *s != FenceStatus::Pending).collect();
        let first = done.iter().position(|d| *d);
        if (all && done.iter().all(|d| *d)) || (!all && first.is_some()) {
            return Ok((first.unwrap_or(0) as u32, status));
        }
        let now = Instant::now();
        let remaining = match deadline {
            Some(d) if d <= now => bail!(ETIMEDOUT, "wait timed out after {timeout:?}"),
            Some(d) => d - now,
            None => Duration::MAX,
        };
        guard = waker.1.wait_timeout(guard, remaining).unwrap_or_else(|e| e.into_inner()).0;
    }
}

enum SyncobjState {
    Binary(Option<Arc<Fence>>),
    /// Points not yet known to have signalled successfully, above `base`.
    Timeline {
        base: u64,
        points: BTreeMap<u64, Arc<Fence>>,
    },
}

/// A synchronisation object: a binary slot for a fence, or a timeline of points.
pub struct Syncobj {
    state: Mutex<SyncobjState>,
    counters: Arc<Counters>,
    _tracked: Tracked,
}

impl Syncobj {
    /// A binary syncobj, optionally already signalled.
    pub fn binary(counters: &Arc<Counters>, signaled: bool) -> Syncobj {
        let fence = signaled.then(|| Fence::signaled(counters, Ok(())));
        Self::with(counters, SyncobjState::Binary(fence))
    }

    /// A timeline syncobj at point 0.
    pub fn timeline(counters: &Arc<Counters>) -> Syncobj {
        Self::with(counters, SyncobjState::Timeline { base: 0, points: BTreeMap::new() })
    }

    fn with(counters: &Arc<Counters>, state: SyncobjState) -> Syncobj {
        Syncobj {
            state: Mutex::new(state),
            counters: counters.clone(),
            _tracked: Tracked::new(counters, Kind::Syncobj),
        }
    }

    /// Checks that `attach(point, _)` would succeed, without attaching.
    pub fn check_attach(&self, point: u64) -> Result<()> {
        match &*lock(&self.state) {
            SyncobjState::Binary(_) if point != 0 => {
                bail!(EINVAL, "binary syncobj takes point 0, got {point}")
            }
            SyncobjState::Binary(_) => Ok(()),
            SyncobjState::Timeline { base, points } => {
                let last = points.keys().next_back().copied().unwrap_or(*base);
                if point <= last {
                    bail!(EINVAL, "timeline point {point} must be above the last point {last}");
                }
                Ok(())
            }
        }
    }

    /// Replaces the binary fence, or adds a timeline point.
    pub fn attach(&self, point: u64, fence: Arc<Fence>) -> Result<()> {
        self.check_attach(point)?;
        match &mut *lock(&self.state) {
            SyncobjState::Binary(slot) => *slot = Some(fence),
            SyncobjState::Timeline { base, points } => {
                points.insert(point, fence);
                Self::prune(base, points);
            }
        }
        Ok(())
    }

    /// Signals from the host: binary gets a signalled fence; a timeline gets `point`.
    pub fn signal(&self, point: u64) -> Result<()> {
        self.attach(point, Fence::signaled(&self.counters, Ok(())))
    }

    /// Binary only: back to unsignalled (no fence).
    pub fn reset(&self) -> Result<()> {
        match &mut *lock(&self.state) {
            SyncobjState::Binary(slot) => {
                *slot = None;
                Ok(())
            }
            SyncobjState::Timeline { .. } => bail!(EINVAL, "a timeline syncobj cannot be reset"),
        }
    }

    /// Drops the leading points that signalled without error, advancing `base`.
    fn prune(base: &mut u64, points: &mut BTreeMap<u64, Arc<Fence>>) {
        while let Some(entry) = points.first_entry() {
            if entry.get().status() != FenceStatus::Signaled {
                break;
            }
            *base = *entry.key();
            entry.remove();
        }
    }

    /// The fence that signals when `point` is reached.
    ///
    /// A timeline point is reached when a point at or above it was submitted and every
    /// point up to that one has signalled. Like DRM without `WAIT_FOR_SUBMIT`, a point
    /// nothing was submitted for yet is an error (`EINVAL`), never an endless wait.
    pub fn fence_for(&self, point: u64) -> Result<Arc<Fence>> {
        match &mut *lock(&self.state) {
            SyncobjState::Binary(Some(f)) => Ok(f.clone()),
            SyncobjState::Binary(None) => bail!(EINVAL, "binary syncobj has no fence attached"),
            SyncobjState::Timeline { base, points } => {
                Self::prune(base, points);
                if point <= *base {
                    return Ok(Fence::signaled(&self.counters, Ok(())));
                }
                let Some((&upto, _)) = points.range(point..).next() else {
                    bail!(EINVAL, "timeline point {point} has not been submitted");
                };
                let deps: Vec<Arc<Fence>> = points.range(..=upto).map(|(_, f)| f.clone()).collect();
                Ok(Fence::all_of(&self.counters, &deps))
            }
        }
    }

    /// Timeline: the highest point up to which everything signalled without error.
    /// Binary: 1 if signalled, else 0.
    pub fn query(&self) -> u64 {
        match &mut *lock(&self.state) {
            SyncobjState::Binary(f) => u64::from(f.as_ref().is_some_and(|f| f.status() != FenceStatus::Pending)),
            SyncobjState::Timeline { base, points } => {
                Self::prune(base, points);
                *base
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Arc<Counters> {
        Arc::new(Counters::default())
    }

    #[test]
    fn first_signal_wins_and_carries_error() {
        let c = counters();
        let f = Fence::new(&c);
        assert!(f.signal(Err(Errno::EIO)));
        assert!(!f.signal(Ok(())));
        assert_eq!(f.status(), FenceStatus::Error(Errno::EIO));
    }

    #[test]
    fn wait_any_returns_first_signalled() {
        let c = counters();
        let (a, b) = (Fence::new(&c), Fence::new(&c));
        let b2 = b.clone();
        std::thread::spawn(move || b2.signal(Ok(())));
        let (first, st) = wait_fences(&[a, b], false, Duration::from_secs(5)).unwrap();
        assert_eq!(first, 1);
        assert_eq!(st, vec![FenceStatus::Pending, FenceStatus::Signaled]);
    }

    #[test]
    fn wait_times_out_with_etimedout() {
        let c = counters();
        let err = wait_fences(&[Fence::new(&c)], true, Duration::from_millis(20)).unwrap_err();
        assert_eq!(err.code, Errno::ETIMEDOUT);
    }

    #[test]
    fn all_of_propagates_first_error() {
        let c = counters();
        let (a, b) = (Fence::new(&c), Fence::new(&c));
        let all = Fence::all_of(&c, &[a.clone(), b.clone()]);
        a.signal(Err(Errno::ETIME));
        assert_eq!(all.status(), FenceStatus::Pending);
        b.signal(Ok(()));
        assert_eq!(all.status(), FenceStatus::Error(Errno::ETIME));
    }

    #[test]
    fn timeline_point_waits_for_all_earlier_points() {
        let c = counters();
        let t = Syncobj::timeline(&c);
        let (p1, p3) = (Fence::new(&c), Fence::new(&c));
        t.attach(1, p1.clone()).unwrap();
        t.attach(3, p3.clone()).unwrap();
        assert_eq!(t.attach(2, Fence::new(&c)).unwrap_err().code, Errno::EINVAL);
        let at2 = t.fence_for(2).unwrap();
        p3.signal(Ok(()));
        assert_eq!(at2.status(), FenceStatus::Pending);
        p1.signal(Ok(()));
        assert_eq!(at2.status(), FenceStatus::Signaled);
        assert_eq!(t.query(), 3);
        assert_eq!(t.fence_for(9).unwrap_err().code, Errno::EINVAL);
    }

    #[test]
    fn binary_syncobj_reset_and_signal() {
        let c = counters();
        let s = Syncobj::binary(&c, true);
        assert_eq!(s.query(), 1);
        s.reset().unwrap();
        assert_eq!(s.fence_for(0).unwrap_err().code, Errno::EINVAL);
        s.signal(0).unwrap();
        assert_eq!(s.fence_for(0).unwrap().status(), FenceStatus::Signaled);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A timeline's value is the highest attached point below which every point
        /// signalled without error, whatever order the fences signal in.
        #[test]
        fn timeline_value_matches_model(
            steps in proptest::collection::vec(1u64..4, 1..12),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            fail in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let c = Arc::new(Counters::default());
            let t = Syncobj::timeline(&c);
            let mut point = 0;
            let mut fences = Vec::new();
            for s in steps {
                point += s;
                let f = Fence::new(&c);
                t.attach(point, f.clone()).unwrap();
                fences.push((point, f));
            }
            let failing = fail.map(|i| i.index(fences.len()));
            let mut signalled = vec![false; fences.len()];
            for i in order {
                let i = i.index(fences.len());
                fences[i].1.signal(if Some(i) == failing { Err(Errno::EIO) } else { Ok(()) });
                signalled[i] = true;
            }
            let model = fences.iter().zip(&signalled).enumerate()
                .take_while(|(i, (_, s))| **s && Some(*i) != failing)
                .last()
                .map_or(0, |(_, ((p, _), _))| *p);
            prop_assert_eq!(t.query(), model);
            // Waiting on any point reports the first error at or below it, or success.
            for (i, (p, _)) in fences.iter().enumerate() {
                let status = t.fence_for(*p).unwrap().status();
                let upto = &signalled[..=i];
                let want = if failing.is_some_and(|f| f <= i && signalled[f]) && upto.iter().all(|s| *s) {
                    FenceStatus::Error(Errno::EIO)
                } else if upto.iter().all(|s| *s) {
                    FenceStatus::Signaled
                } else {
                    FenceStatus::Pending
                };
                prop_assert_eq!(status, want, "point {}", p);
            }
        }
    }
}
