//! A job channel's mailbox: one request and one reply at a time in memory the daemon and the
//! worker share, so a job reaches the worker, and its answer comes back, without a syscall
//! while both sides poll (a ring of one entry each way, with the ring's Dekker wake-ups).
//! The channel's socket still carries what needs descriptors (host memory), requests too
//! large for the mailbox, and the wake-up of a side that went to sleep.
//!
//! ```text
//! offset 0     request seq (u32, daemon), request length (u32)
//! offset 64    reply seq (u32, worker), reply length (u32)
//! offset 128   worker sleeps (u32, worker): it blocks on the socket; wake it with Wake
//! offset 192   daemon sleeps (u32, daemon): likewise
//! offset 512   request bytes (AREA)
//! then         reply bytes (AREA)
//! ```
//!
//! A message is published by writing its bytes and length, then its seq (release); the
//! other side polls the seq (acquire). Requests and replies alternate, so the reply to
//! request `n` carries seq `n`.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};

use accel_hal::driver::DriverError;
use accel_hal::mem::{HostMemory, VolatileSlice};
use accel_uapi::Errno;

const LINE: usize = 64;
const REQUEST_SEQ: usize = 0;
const REPLY_SEQ: usize = LINE;
const WORKER_SLEEPS: usize = 2 * LINE;
const DAEMON_SLEEPS: usize = 3 * LINE;
const REQUEST: usize = 8 * LINE;
/// Bytes of the largest message a mailbox carries; larger ones go through the socket.
pub(crate) const AREA: usize = 3840;
const REPLY: usize = REQUEST + AREA;
/// Bytes of a mailbox.
const SIZE: usize = REPLY + AREA;

/// One channel's mailbox, mapped by both sides.
pub(crate) struct Mailbox {
    mem: HostMemory,
}

impl Mailbox {
    /// A new mailbox (the daemon's side).
    pub(crate) fn new() -> Result<Mailbox, DriverError> {
        let mem =
            HostMemory::new("accel-cuda-mailbox", SIZE as u64).map_err(|e| DriverError::new(e.code, e.message))?;
        Ok(Mailbox { mem })
    }

    /// The mailbox whose descriptor the daemon sent (the worker's side).
    pub(crate) fn import(fd: OwnedFd) -> Result<Mailbox, DriverError> {
        let mem = HostMemory::import(fd).map_err(|e| DriverError::new(e.code, e.message))?;
        if mem.len() < SIZE {
            return Err(DriverError::new(Errno::EINVAL, "cuda worker: a short mailbox"));
        }
        Ok(Mailbox { mem })
    }

    /// Its descriptor, to send to the worker.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.mem.fd()
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: every offset is a header constant (+4): in bounds and 4-byte aligned;
        // AtomicU32 may alias memory another process writes.
        unsafe { &*self.mem.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    fn area(&self, offset: usize) -> VolatileSlice<'_> {
        // SAFETY: both areas lie inside the mapping (SIZE bytes, checked at import).
        unsafe { VolatileSlice::new(self.mem.as_ptr().add(offset), AREA) }
    }

    /// Writes `bytes` into `area` and its length beside the seq word at `seq_at`, then
    /// publishes it as `seq`.
    fn put(&self, seq_at: usize, area: usize, bytes: &[u8], seq: u32) -> Result<(), DriverError> {
        if bytes.len() > AREA {
            return Err(DriverError::new(Errno::E2BIG, "cuda: a message larger than the mailbox"));
        }
        self.area(area).write(0, bytes)?;
        self.word(seq_at + 4).store(bytes.len() as u32, Ordering::Relaxed);
        self.word(seq_at).store(seq, Ordering::Release);
        Ok(())
    }

    fn take(&self, seq: usize, area: usize, want: impl Fn(u32) -> bool, out: &mut Vec<u8>) -> Option<u32> {
        let now = self.word(seq).load(Ordering::Acquire);
        if !want(now) {
            return None;
        }
        let len = (self.word(seq + 4).load(Ordering::Relaxed) as usize).min(AREA);
        out.resize(len, 0);
        self.area(area).read(0, out).ok()?;
        Some(now)
    }

    /// The seq of the last request published (daemon); 0 before the first.
    pub(crate) fn request_seq(&self) -> u32 {
        self.word(REQUEST_SEQ).load(Ordering::Relaxed)
    }

    /// Publishes a request (daemon); returns its seq.
    pub(crate) fn put_request(&self, bytes: &[u8]) -> Result<u32, DriverError> {
        let seq = self.request_seq().wrapping_add(1);
        self.put(REQUEST_SEQ, REQUEST, bytes, seq).map(|()| seq)
    }

    /// The reply to request `seq` into `out`, if it came (daemon).
    pub(crate) fn take_reply(&self, seq: u32, out: &mut Vec<u8>) -> bool {
        self.take(REPLY_SEQ, REPLY, |s| s == seq, out).is_some()
    }

    /// A request newer than `seen` into `out`, if one came; `seen` moves on (worker).
    pub(crate) fn take_request(&self, seen: &mut u32, out: &mut Vec<u8>) -> bool {
        match self.take(REQUEST_SEQ, REQUEST, |s| s != *seen, out) {
            Some(seq) => {
                *seen = seq;
                true
            }
            None => false,
        }
    }

    /// Whether a request newer than `seen` came (worker).
    pub(crate) fn request_waiting(&self, seen: u32) -> bool {
        self.word(REQUEST_SEQ).load(Ordering::Acquire) != seen
    }

    /// Publishes the reply to request `seq` (worker).
    pub(crate) fn put_reply(&self, seq: u32, bytes: &[u8]) -> Result<(), DriverError> {
        self.put(REPLY_SEQ, REPLY, bytes, seq)
    }

    /// After publishing: whether the worker sleeps and must be woken (daemon).
    pub(crate) fn worker_sleeps(&self) -> bool {
        fence(Ordering::SeqCst);
        self.word(WORKER_SLEEPS).load(Ordering::SeqCst) != 0
    }

    /// After publishing: whether the daemon sleeps and must be woken (worker).
    pub(crate) fn daemon_sleeps(&self) -> bool {
        fence(Ordering::SeqCst);
        self.word(DAEMON_SLEEPS).load(Ordering::SeqCst) != 0
    }

    /// The worker announces (or ends) a sleep; it looks at the mailbox again after this.
    pub(crate) fn worker_sleeping(&self, sleeping: bool) {
        self.word(WORKER_SLEEPS).store(u32::from(sleeping), Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The daemon announces (or ends) a sleep; it looks at the mailbox again after this.
    pub(crate) fn daemon_sleeping(&self, sleeping: bool) {
        self.word(DAEMON_SLEEPS).store(u32::from(sleeping), Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_alternate_and_a_stale_reply_is_not_taken() {
        let daemon = Mailbox::new().unwrap();
        let worker = Mailbox::import(daemon.mem.dup_fd().unwrap()).unwrap();
        let (mut seen, mut buf) = (0u32, Vec::new());
        assert!(!worker.take_request(&mut seen, &mut buf));
        let first = daemon.put_request(b"one").unwrap();
        assert!(worker.request_waiting(seen));
        assert!(worker.take_request(&mut seen, &mut buf));
        assert_eq!((buf.as_slice(), seen), (&b"one"[..], first));
        assert!(!daemon.take_reply(first, &mut buf));
        worker.put_reply(first, b"ok 1").unwrap();
        // The next request goes out before the daemon looked at the first reply: the old
        // reply is not the new one's.
        let second = daemon.put_request(b"two").unwrap();
        assert!(!daemon.take_reply(second, &mut buf));
        assert!(worker.take_request(&mut seen, &mut buf));
        assert_eq!(buf, b"two");
        worker.put_reply(second, b"ok 2").unwrap();
        assert!(daemon.take_reply(second, &mut buf));
        assert_eq!(buf, b"ok 2");
        assert!(daemon.put_request(&[0; AREA + 1]).is_err());
        assert!(!daemon.worker_sleeps());
        worker.worker_sleeping(true);
        assert!(daemon.worker_sleeps());
    }
}
