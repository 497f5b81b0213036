//! The job fast path: a queue's shared-memory submission and completion rings.
//!
//! ```no_run
//! # fn main() -> accel::Result<()> {
//! let dev = accel::Device::open(0)?;
//! let queue = dev.create_queue()?;
//! let mut ring = queue.into_ring(256)?;
//! for i in 0..100 {
//!     ring.push(&accel::Op::Nop, i)?;       // no syscall
//! }
//! ring.flush()?;                             // a syscall only if the daemon's poller sleeps
//! let mut done = Vec::new();
//! ring.wait(&mut done, 100, std::time::Duration::from_secs(1))?;
//! assert!(done.iter().all(|c| c.status().is_ok()));
//! # Ok(()) }
//! ```

use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

pub use accel_uapi::ring::Cqe;
use accel_uapi::ring::{RingMem, Sqe};
use accel_uapi::{Errno, Op};
use rustix::event::{PollFd, PollFlags};

use crate::{Error, Queue, Result, Syncobj};

/// How long a waiting client spins on the completion ring before it blocks
/// ([`WaitMode::Auto`]) where the daemon suggests nothing (a daemon before ABI 3.6).
///
/// The daemon suggests a budget in each ring's header, as CUDA's `CU_CTX_SCHED_AUTO` decides
/// between spinning and blocking by its contexts and the CPUs, but across processes: long
/// (5 ms) while the rings with jobs in flight and the daemon's threads relaying their jobs
/// fit the machine's CPUs, and this long otherwise ([`accel_uapi::spin::ring_wait`]). A fixed
/// 5 ms on the H200 machine (16 CPUs) took one client's 100 µs kernels from 20.6 % over CUDA
/// in-process to 10.5 %, and 16 clients' 10 µs kernels from 101,634 to 21,172 a second.
/// `$ACCEL_WAIT_SPIN_US` overrides both (up to [`WAIT_SPIN_MAX`]).
pub const WAIT_SPIN: Duration = Duration::from_micros(50);
/// The most `$ACCEL_WAIT_SPIN_US` sets.
pub const WAIT_SPIN_MAX: Duration = Duration::from_millis(100);

/// How [`Ring::wait`] waits for completions: CUDA's context scheduling flags
/// (`CU_CTX_SCHED_AUTO`, `_SPIN`, `_BLOCKING_SYNC`) for accel's rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitMode {
    /// Spin as long as the daemon suggests for the machine's load ([`WAIT_SPIN`]), then
    /// block on the completion eventfd (the default).
    #[default]
    Auto,
    /// Spin until the completions arrive (or the wait times out): the lowest latency, a
    /// core busy meanwhile. The ring tells the daemon's poller (its `client_spins` hint),
    /// which then keeps watching the ring while it has jobs in flight, so the next
    /// submission needs no doorbell either.
    Spin,
    /// Block at once: no CPU spent waiting, a wake-up's latency on every wait.
    Block,
}

/// [`Ring::auto_spin`] for `$ACCEL_WAIT_SPIN_US` (`set`) and the daemon's suggestion (µs).
fn auto_spin(set: Option<Duration>, suggested_us: u32) -> Duration {
    set.unwrap_or(match suggested_us {
        0 => WAIT_SPIN,
        us => Duration::from_micros(u64::from(us)).min(WAIT_SPIN_MAX),
    })
}

/// How often a spinning wait looks whether the daemon went away.
const SPIN_HANGUP_CHECK: Duration = Duration::from_millis(10);

/// A queue's submission/completion ring pair. Jobs pushed here run on the queue's
/// scheduler entity, in order with each other.
pub struct Ring {
    // The ring lives as long as its queue does on the daemon side.
    queue: Queue,
    mem: RingMem,
    doorbell: OwnedFd,
    completion: OwnedFd,
    /// The daemon connection's socket: a hang-up ends every wait with `EPIPE`.
    daemon: OwnedFd,
    sq_tail: u32,
    /// Last `sq_head` read from the daemon; re-read only when the ring looks full.
    sq_head_seen: u32,
    cq_head: u32,
    scratch: Vec<Cqe>,
    mode: WaitMode,
    /// How long [`WaitMode::Auto`] spins here, where `$ACCEL_WAIT_SPIN_US` says.
    auto_spin: Option<Duration>,
    /// What this side last stored to the ring's `client_spins` hint.
    spins_hinted: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("entries", &self.mem.layout().sq_entries).finish()
    }
}

impl Ring {
    /// `fds`: the ring memfd, the doorbell and the completion eventfd from the daemon, then
    /// a duplicate of the connection's socket.
    pub(crate) fn new(queue: Queue, mut fds: Vec<OwnedFd>) -> Result<Ring> {
        let (Some(daemon), Some(completion), Some(doorbell), Some(ring)) = (fds.pop(), fds.pop(), fds.pop(), fds.pop())
        else {
            return Err(Error::new(Errno::EPROTO, "ring reply lacks descriptors"));
        };
        let mem = RingMem::open(&ring).map_err(|e| Error::os("mapping ring", e))?;
        Ok(Ring {
            queue,
            mem,
            doorbell,
            completion,
            daemon,
            sq_tail: 0,
            sq_head_seen: 0,
            cq_head: 0,
            scratch: Vec::with_capacity(1),
            mode: WaitMode::Auto,
            auto_spin: std::env::var("ACCEL_WAIT_SPIN_US")
                .is_ok()
                .then(|| accel_uapi::spin::budget("ACCEL_WAIT_SPIN_US", WAIT_SPIN, WAIT_SPIN, WAIT_SPIN_MAX)),
            spins_hinted: false,
        })
    }

    /// Chooses how [`Ring::wait`] waits (see [`WaitMode`]).
    pub fn set_wait_mode(&mut self, mode: WaitMode) {
        self.mode = mode;
        self.hint_spins(mode == WaitMode::Spin);
    }

    /// Tells the daemon's poller whether this side spins for its completions.
    fn hint_spins(&mut self, spins: bool) {
        self.spins_hinted = spins;
        self.mem.client_spins().store(u32::from(spins), Ordering::Release);
    }

    /// How long a wait in [`WaitMode::Auto`] spins now before it blocks: `$ACCEL_WAIT_SPIN_US`
    /// where set, else the daemon's suggestion for the machine's load as of this ring's last
    /// submission, else [`WAIT_SPIN`].
    pub fn auto_spin(&self) -> Duration {
        auto_spin(self.auto_spin, self.mem.spin_budget().load(Ordering::Relaxed))
    }

    /// How [`Ring::wait`] waits.
    pub fn wait_mode(&self) -> WaitMode {
        self.mode
    }

    /// The queue behind the ring, for socket-path submissions in the same order domain.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Submission slots free right now.
    pub fn free(&mut self) -> u32 {
        let entries = self.mem.layout().sq_entries;
        let free = |head: u32| entries - self.sq_tail.wrapping_sub(head).min(entries);
        if free(self.sq_head_seen) == 0 {
            self.sq_head_seen = self.mem.sq_head().load(Ordering::Acquire);
        }
        free(self.sq_head_seen)
    }

    /// Publishes a job in the next slot; a polling daemon picks it up at once, a sleeping
    /// one after [`Ring::flush`]. `EAGAIN` when the ring is full.
    pub fn push(&mut self, op: &Op, user_data: u64) -> Result<()> {
        if self.free() == 0 {
            return Err(Error::new(Errno::EAGAIN, "submission ring full: flush and reap completions"));
        }
        self.mem.write_sqe(self.sq_tail, &Sqe::encode(op, user_data));
        self.sq_tail = self.sq_tail.wrapping_add(1);
        Ok(())
    }

    /// Queues a sync entry: a null job that waits for `waits` (syncobj points; one not
    /// submitted yet is waited for) and then signals `signals`, like a queue submission's
    /// semaphores. The ring runs in order, so later entries wait for it too, and it signals
    /// only after earlier entries completed. At most six points in all (`E2BIG`); it gets a
    /// completion like any entry (an unknown syncobj: `ENOENT` there).
    pub fn push_sync(&mut self, waits: &[(&Syncobj, u64)], signals: &[(&Syncobj, u64)], user_data: u64) -> Result<()> {
        if self.free() == 0 {
            return Err(Error::new(Errno::EAGAIN, "submission ring full: flush and reap completions"));
        }
        let pairs = |v: &[(&Syncobj, u64)]| v.iter().map(|(s, p)| (s.handle(), *p)).collect::<Vec<_>>();
        let sqe = Sqe::sync(&pairs(waits), &pairs(signals), user_data)
            .map_err(|code| Error::new(code, "a sync entry takes at most six points"))?;
        self.mem.write_sqe(self.sq_tail, &sqe);
        self.sq_tail = self.sq_tail.wrapping_add(1);
        Ok(())
    }

    /// Wakes the daemon's poller if it sleeps (pushed entries are already visible to it).
    /// Call after a batch of pushes; a syscall happens only when the poller sleeps.
    pub fn flush(&mut self) -> Result<()> {
        if self.mem.peer_sleeps(self.mem.poller_sleeping()) {
            rustix::io::write(&self.doorbell, &1u64.to_ne_bytes()).map_err(|e| Error::os("doorbell", e))?;
        }
        Ok(())
    }

    /// Moves available completions into `out` without blocking; returns how many.
    pub fn reap(&mut self, out: &mut Vec<Cqe>) -> usize {
        let mut n = 0;
        while n < self.mem.layout().cq_entries {
            let Some(cqe) = self.mem.read_cqe(self.cq_head) else { break };
            out.push(cqe);
            self.cq_head = self.cq_head.wrapping_add(1);
            n += 1;
        }
        if n > 0 {
            self.mem.cq_head().store(self.cq_head, Ordering::Release);
            // Submissions still waiting may have been held back for lack of completion
            // space, and the poller may have gone to sleep meanwhile. Every submission ends
            // in one completion, so sq_tail == cq_head means nothing is pending (the common
            // synchronous case pays nothing here).
            if self.sq_tail != self.cq_head && self.sq_tail != self.mem.sq_head().load(Ordering::Acquire) {
                let _ = self.flush();
            }
        }
        n as usize
    }

    /// Waits until at least `min` completions were reaped into `out` (as the
    /// [`WaitMode`] says: by default spinning briefly, then sleeping on the completion
    /// eventfd); `ETIMEDOUT` after `timeout`, `EPIPE` as soon as the daemon goes away (its
    /// socket is polled beside the eventfd, and every 10 ms while spinning).
    pub fn wait(&mut self, out: &mut Vec<Cqe>, min: usize, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        let mut got = self.reap(out);
        let mut spins = 0u32;
        let spin_for = match self.mode {
            WaitMode::Auto => {
                // Spinning longer than a wake-up costs: the poller may as well keep watching
                // this ring while its jobs run, as for WaitMode::Spin.
                let spin = self.auto_spin();
                if (spin > WAIT_SPIN) != self.spins_hinted {
                    self.hint_spins(spin > WAIT_SPIN);
                }
                spin
            }
            WaitMode::Spin => timeout,
            WaitMode::Block => Duration::ZERO,
        };
        let mut hangup_checked = start;
        while got < min {
            // Read the clock only every 64 polls: it costs more than a poll.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                got += self.reap(out);
                continue;
            }
            let now = Instant::now();
            if now.duration_since(start) < spin_for {
                if now.duration_since(hangup_checked) >= SPIN_HANGUP_CHECK {
                    hangup_checked = now;
                    self.check_daemon(out, &mut got, min)?;
                }
                std::hint::spin_loop();
                got += self.reap(out);
                continue;
            }
            let Some(left) = timeout.checked_sub(start.elapsed()) else {
                return Err(Error::new(Errno::ETIMEDOUT, format!("{got} of {min} completions after {timeout:?}")));
            };
            if self.mode == WaitMode::Auto && self.spins_hinted {
                // A long job: the poller need not keep watching the ring while it runs.
                self.hint_spins(false);
            }
            // Announce the sleep, then look again: the daemon checks the flag after publishing.
            self.mem.client_waiting().store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            got += self.reap(out);
            if got < min {
                let slice = left.min(Duration::from_millis(100));
                let ts =
                    rustix::time::Timespec { tv_sec: slice.as_secs() as i64, tv_nsec: slice.subsec_nanos() as i64 };
                let mut fds =
                    [PollFd::new(&self.completion, PollFlags::IN), PollFd::new(&self.daemon, PollFlags::RDHUP)];
                let _ = rustix::event::poll(&mut fds, Some(&ts));
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.completion, &mut buf);
                if fds[1].revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
                    self.mem.client_waiting().store(0, Ordering::SeqCst);
                    got += self.reap(out);
                    if got >= min {
                        break;
                    }
                    return Err(Error::new(
                        Errno::EPIPE,
                        format!("the daemon went away with {} of {min} completions outstanding", min - got),
                    ));
                }
            }
            self.mem.client_waiting().store(0, Ordering::SeqCst);
            got += self.reap(out);
        }
        Ok(got)
    }

    /// `EPIPE` if the daemon hung up (after reaping what it completed before).
    fn check_daemon(&mut self, out: &mut Vec<Cqe>, got: &mut usize, min: usize) -> Result<()> {
        let mut fds = [PollFd::new(&self.daemon, PollFlags::RDHUP)];
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        let _ = rustix::event::poll(&mut fds, Some(&zero));
        if fds[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
            *got += self.reap(out);
            if *got < min {
                return Err(Error::new(
                    Errno::EPIPE,
                    format!("the daemon went away with {} of {min} completions outstanding", min - *got),
                ));
            }
        }
        Ok(())
    }

    /// Takes the messages of failed entries (oldest first; at most
    /// [`accel_uapi::ring::MAX_RING_ERRORS`] are kept) and how many older ones were dropped.
    /// A completion carries only the errno; this is the reason behind it (a refusal's, or a
    /// driver's or compiler's words), matched by `user_data` and `seqno`.
    pub fn take_errors(&self) -> Result<(Vec<accel_uapi::RingError>, u64)> {
        match self.queue.dev.call(&accel_uapi::Request::RingErrors { queue: self.queue.handle })? {
            accel_uapi::Reply::RingErrors { errors, dropped } => Ok((errors, dropped)),
            other => Err(crate::conn::unexpected(&other)),
        }
    }

    /// Submits one job and waits for its completion: the synchronous round trip.
    pub fn submit_wait(&mut self, op: &Op, timeout: Duration) -> Result<Cqe> {
        self.push(op, 0)?;
        self.flush()?;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let result = self.wait(&mut out, 1, timeout).map(|_| out[0]);
        self.scratch = out;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_wait_spins_as_the_variable_else_the_daemon_else_briefly_says() {
        let ms = Duration::from_millis;
        assert_eq!(auto_spin(None, 0), WAIT_SPIN, "a daemon before ABI 3.6 suggests nothing");
        assert_eq!(auto_spin(None, 5_000), ms(5));
        assert_eq!(auto_spin(None, 50), Duration::from_micros(50));
        assert_eq!(auto_spin(None, u32::MAX), WAIT_SPIN_MAX, "a scribbled suggestion is capped");
        assert_eq!(auto_spin(Some(Duration::ZERO), 5_000), Duration::ZERO, "the variable wins");
        assert_eq!(auto_spin(Some(ms(1)), 0), ms(1));
    }
}
