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

use crate::{Error, Queue, Result};

/// How long a waiting client spins on the completion ring before it blocks.
pub const WAIT_SPIN: Duration = Duration::from_micros(50);

/// A queue's submission/completion ring pair. Jobs pushed here run on the queue's
/// scheduler entity, in order with each other.
pub struct Ring {
    // The ring lives as long as its queue does on the daemon side.
    queue: Queue,
    mem: RingMem,
    doorbell: OwnedFd,
    completion: OwnedFd,
    sq_tail: u32,
    cq_head: u32,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("entries", &self.mem.layout().sq_entries).finish()
    }
}

impl Ring {
    pub(crate) fn new(queue: Queue, mut fds: Vec<OwnedFd>) -> Result<Ring> {
        let (Some(completion), Some(doorbell), Some(ring)) = (fds.pop(), fds.pop(), fds.pop()) else {
            return Err(Error::new(Errno::EPROTO, "ring reply lacks descriptors"));
        };
        let mem = RingMem::open(&ring).map_err(|e| Error::os("mapping ring", e))?;
        Ok(Ring { queue, mem, doorbell, completion, sq_tail: 0, cq_head: 0 })
    }

    /// The queue behind the ring, for socket-path submissions in the same order domain.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Submission slots free right now.
    pub fn free(&self) -> u32 {
        let head = self.mem.sq_head().load(Ordering::Acquire);
        self.mem.layout().sq_entries - self.sq_tail.wrapping_sub(head).min(self.mem.layout().sq_entries)
    }

    /// Writes a job into the next slot (not yet visible to the daemon: see [`Ring::flush`]).
    /// `EAGAIN` when the ring is full.
    pub fn push(&mut self, op: &Op, user_data: u64) -> Result<()> {
        if self.free() == 0 {
            return Err(Error::new(Errno::EAGAIN, "submission ring full: flush and reap completions"));
        }
        self.mem.write_sqe(self.sq_tail, &Sqe::encode(op, user_data));
        self.sq_tail = self.sq_tail.wrapping_add(1);
        Ok(())
    }

    /// Makes pushed jobs visible to the daemon, ringing the doorbell only if its poller sleeps.
    pub fn flush(&mut self) -> Result<()> {
        if self.mem.publish_and_check(self.mem.sq_tail(), self.sq_tail, self.mem.poller_sleeping()) {
            rustix::io::write(&self.doorbell, &1u64.to_ne_bytes()).map_err(|e| Error::os("doorbell", e))?;
        }
        Ok(())
    }

    /// Moves available completions into `out` without blocking; returns how many.
    pub fn reap(&mut self, out: &mut Vec<Cqe>) -> usize {
        let tail = self.mem.cq_tail().load(Ordering::Acquire);
        let n = tail.wrapping_sub(self.cq_head).min(self.mem.layout().cq_entries);
        out.extend((0..n).map(|i| self.mem.read_cqe(self.cq_head.wrapping_add(i))));
        self.cq_head = self.cq_head.wrapping_add(n);
        self.mem.cq_head().store(self.cq_head, Ordering::Release);
        n as usize
    }

    /// Waits until at least `min` completions were reaped into `out` (spinning briefly,
    /// then sleeping on the completion eventfd); `ETIMEDOUT` after `timeout`.
    pub fn wait(&mut self, out: &mut Vec<Cqe>, min: usize, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        let mut got = self.reap(out);
        while got < min {
            if start.elapsed() < WAIT_SPIN {
                std::hint::spin_loop();
                got += self.reap(out);
                continue;
            }
            let Some(left) = timeout.checked_sub(start.elapsed()) else {
                return Err(Error::new(Errno::ETIMEDOUT, format!("{got} of {min} completions after {timeout:?}")));
            };
            // Announce the sleep, then look again: the daemon checks the flag after publishing.
            self.mem.client_waiting().store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            got += self.reap(out);
            if got < min {
                let slice = left.min(Duration::from_millis(100));
                let ts =
                    rustix::time::Timespec { tv_sec: slice.as_secs() as i64, tv_nsec: slice.subsec_nanos() as i64 };
                let mut fds = [PollFd::new(&self.completion, PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&ts));
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&self.completion, &mut buf);
            }
            self.mem.client_waiting().store(0, Ordering::SeqCst);
            got += self.reap(out);
        }
        Ok(got)
    }

    /// Submits one job and waits for its completion: the synchronous round trip.
    pub fn submit_wait(&mut self, op: &Op, timeout: Duration) -> Result<Cqe> {
        self.push(op, 0)?;
        self.flush()?;
        let mut out = Vec::with_capacity(1);
        self.wait(&mut out, 1, timeout)?;
        Ok(out[0])
    }
}
