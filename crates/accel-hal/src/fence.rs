//! Fences (`dma_fence`); syncobjs build on them (`syncobj.rs`).
//!
//! A fence signals once, with or without an error; the first signal wins.
//! Everything that waits does so through signal callbacks: a waiter registers one
//! that wakes it, composite fences and eventfd exports register theirs, so nothing
//! needs a thread per waiter.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use accel_uapi::{Errno, FenceStatus};

use crate::counters::{Counters, Kind, Tracked};
use crate::{bail, lock, Result};

type Callback = Box<dyn FnOnce(FenceStatus) + Send>;

/// What keeps a callback registered with [`Fence::on_signal_while`] wanted.
pub type Liveness = Weak<dyn std::any::Any + Send + Sync>;

/// A registered callback, and what it is wanted for (`None`: until the fence signals).
struct Registered {
    alive: Option<Liveness>,
    cb: Callback,
}

impl Registered {
    fn dead(&self) -> bool {
        self.alive.as_ref().is_some_and(|w| w.strong_count() == 0)
    }
}

/// Fewest callbacks a fence sweeps its unwanted ones at.
const PRUNE_MIN: usize = 64;

/// Makes the device's own fence for a job as a sync file: a kernel `sync_file` another
/// driver or process can wait on without accel (a Vulkan app through
/// `vkImportSemaphoreFdKHR`, a display through `IN_FENCE_FD`). `None` when the device knows
/// the job is done already (Vulkan's `-1`).
pub type NativeExport = Arc<dyn Fn() -> Result<Option<std::os::fd::OwnedFd>> + Send + Sync>;

/// Where a fence stands with a native sync file.
#[derive(Default)]
enum Native {
    /// Its device has none (or it is no job's fence).
    #[default]
    None,
    /// Its job is queued for a device that makes them: the exporter comes once the device
    /// has the job.
    Awaited,
    /// The device has the job.
    Ready(NativeExport),
}

struct FenceState {
    status: FenceStatus,
    /// Why it failed, in the driver's words (none for most errors).
    message: Option<String>,
    /// `CLOCK_MONOTONIC` ns at signal time; 0 while pending.
    timestamp: u64,
    callbacks: Vec<Registered>,
    /// Count at which unwanted callbacks are dropped next (doubling: adding stays O(1)
    /// amortised, and waits given up on a fence that never signals do not pile up).
    prune_at: usize,
    native: Native,
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
            state: Mutex::new(FenceState {
                status: FenceStatus::Pending,
                message: None,
                timestamp: 0,
                callbacks: Vec::new(),
                prune_at: PRUNE_MIN,
                native: Native::None,
            }),
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
        self.signal_with(result, None)
    }

    /// Signals the fence with an error message (a driver's words) kept beside the errno.
    pub fn signal_with(&self, result: Result<(), Errno>, message: Option<String>) -> bool {
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
            s.message = message.filter(|m| !m.is_empty() && result.is_err());
            s.timestamp = monotonic_ns();
            s.native = Native::None;
            std::mem::take(&mut s.callbacks)
        };
        // Outside the lock: a callback may take other fences' locks.
        for r in callbacks {
            if !r.dead() {
                (r.cb)(status);
            }
        }
        true
    }

    /// Current status.
    pub fn status(&self) -> FenceStatus {
        lock(&self.state).status
    }

    /// The driver's words for a failure, if it gave any.
    pub fn message(&self) -> Option<String> {
        lock(&self.state).message.clone()
    }

    /// When the fence signalled (`CLOCK_MONOTONIC` ns), or 0 while pending.
    pub fn timestamp(&self) -> u64 {
        lock(&self.state).timestamp
    }

    /// The job behind this fence is queued for a device that makes native sync files
    /// ([`crate::driver::Driver::native_sync_files`]).
    pub fn await_native(&self) {
        let mut s = lock(&self.state);
        if s.status == FenceStatus::Pending {
            s.native = Native::Awaited;
        }
    }

    /// The device has the job: `export` makes its native sync file (until the fence
    /// signals; a job run again gives a new one).
    pub fn set_native(&self, export: NativeExport) {
        let mut s = lock(&self.state);
        if s.status == FenceStatus::Pending {
            s.native = Native::Ready(export);
        }
    }

    /// The device's own sync file for this fence: `None` once it signalled; `EAGAIN` while
    /// its job waits to reach the device; `EOPNOTSUPP` when no device makes one for it.
    pub fn native_sync_file(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        let export = {
            let s = lock(&self.state);
            if s.status != FenceStatus::Pending {
                return Ok(None);
            }
            match &s.native {
                Native::None => bail!(
                    EOPNOTSUPP,
                    "no native sync file: the fence is not a job's on a device that makes them (a vulkan device with VK_KHR_external_semaphore_fd)"
                ),
                Native::Awaited => bail!(EAGAIN, "the job has not reached its device yet: try again once it runs"),
                Native::Ready(e) => e.clone(),
            }
        };
        // Outside the lock: the driver submits work to make it.
        export()
    }

    /// Runs `cb` once the fence signals (at once, on this thread, if it already has).
    pub fn on_signal(&self, cb: impl FnOnce(FenceStatus) + Send + 'static) {
        self.register(None, Box::new(cb));
    }

    /// Like [`Fence::on_signal`], for as long as `alive` lives: a wait that gives up (a
    /// timeout, a closed connection) drops what `alive` points to, and its callback neither
    /// runs nor stays on a fence that may never signal.
    pub fn on_signal_while(&self, alive: Liveness, cb: impl FnOnce(FenceStatus) + Send + 'static) {
        self.register(Some(alive), Box::new(cb));
    }

    fn register(&self, alive: Option<Liveness>, cb: Callback) {
        let mut s = lock(&self.state);
        if s.status != FenceStatus::Pending {
            let status = s.status;
            drop(s);
            return cb(status);
        }
        s.callbacks.push(Registered { alive, cb });
        if s.callbacks.len() < s.prune_at {
            return;
        }
        let (live, dead): (Vec<Registered>, Vec<Registered>) =
            std::mem::take(&mut s.callbacks).into_iter().partition(|r| !r.dead());
        s.callbacks = live;
        s.prune_at = (2 * s.callbacks.len()).max(PRUNE_MIN);
        drop(s);
        // Dropped outside the lock, as they would have run.
        drop(dead);
    }

    /// Callbacks registered and not dropped yet (diagnostics and tests).
    pub fn callbacks_pending(&self) -> usize {
        lock(&self.state).callbacks.len()
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
        // Wanted while this wait lasts: one that times out leaves nothing on the fence.
        let alive: Liveness = weak.clone();
        f.on_signal_while(alive, move |_| {
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
    fn a_native_sync_file_comes_from_the_device_while_the_job_is_pending() {
        let c = counters();
        let f = Fence::new(&c);
        assert_eq!(f.native_sync_file().unwrap_err().code, Errno::EOPNOTSUPP);
        f.await_native();
        assert_eq!(f.native_sync_file().unwrap_err().code, Errno::EAGAIN);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = calls.clone();
        f.set_native(Arc::new(move || {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (r, _w) = rustix::pipe::pipe().map_err(|e| crate::Error::new(Errno::EIO, e.to_string()))?;
            Ok(Some(r))
        }));
        assert!(f.native_sync_file().unwrap().is_some());
        f.signal(Ok(()));
        // Signalled: nothing to wait for, and the exporter (and what it holds) is gone.
        assert!(f.native_sync_file().unwrap().is_none());
        f.set_native(Arc::new(|| unreachable!("a signalled fence asks no device")));
        assert!(f.native_sync_file().unwrap().is_none());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
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
    fn callbacks_given_up_on_are_swept_and_live_ones_run_once() {
        let c = counters();
        let f = Fence::new(&c);
        let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut keep = Vec::new();
        for i in 0..10_000 {
            let alive: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
            let r = ran.clone();
            f.on_signal_while(Arc::downgrade(&alive), move |_| {
                r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
            // One in a hundred waits is still on when the fence signals.
            if i % 100 == 0 {
                keep.push(alive);
            }
        }
        // Plain callbacks stay until the signal.
        let r = ran.clone();
        f.on_signal(move |_| {
            r.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(f.callbacks_pending() <= 2 * PRUNE_MIN + 101, "{} callbacks kept", f.callbacks_pending());
        f.signal(Ok(()));
        assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 100 + 1000, "live ones ran once, dead ones not");
        assert_eq!(f.callbacks_pending(), 0);
        // A wait that times out leaves nothing on a fence that never signals.
        let never = Fence::new(&c);
        for _ in 0..1000 {
            assert!(wait_fences(std::slice::from_ref(&never), true, Duration::ZERO).is_err());
        }
        assert!(never.callbacks_pending() <= 2 * PRUNE_MIN);
    }
}
