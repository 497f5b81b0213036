//! Queues, fences and syncobjs.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use accel_uapi::{
    Errno, FenceHandle, FenceStatus, Op, QueueHandle, Reply, Request, SignalPoint, SyncobjHandle, WaitPoint,
};

use crate::{conn::unexpected, timeout_ns, Error, QueueOptions, Result, Ring, Shared};

/// A submission queue (a scheduler entity). Jobs on one device run in order.
pub struct Queue {
    dev: Arc<Shared>,
    handle: QueueHandle,
}

impl Queue {
    pub(crate) fn create(dev: Arc<Shared>, o: QueueOptions) -> Result<Queue> {
        let timeout_ms = o.timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        match dev.call(&Request::QueueCreate { timeout_ms, priority: o.priority, weight: o.weight })? {
            Reply::Queue(handle) => Ok(Queue { dev, handle }),
            other => Err(unexpected(&other)),
        }
    }

    /// Turns the queue into a shared-memory ring of `entries` submissions (a power of
    /// two, at most 4096): the fast path, see [`Ring`]. The ring owns the queue; socket
    /// submissions remain possible through [`Ring::queue`].
    pub fn into_ring(self, entries: u32) -> Result<Ring> {
        let mut fds = self.dev.call_for_fds(&Request::RingCreate { queue: self.handle, entries }, 3)?;
        fds.push(self.dev.conn().watch_fd()?);
        Ring::new(self, fds)
    }

    /// Runs a job and waits for it, in one round trip to the daemon (no fence handle):
    /// the job's error if it failed, `ETIMEDOUT` after `timeout`.
    pub fn run(&self, op: Op, timeout: Duration) -> Result<()> {
        let req = Request::SubmitWait {
            queue: self.handle,
            op,
            wait: Vec::new(),
            signal: Vec::new(),
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
        };
        match self.dev.call(&req)? {
            Reply::Waited { status, .. } => match status.first() {
                Some(FenceStatus::Error(code)) => Err(Error::new(*code, "the job failed")),
                _ => Ok(()),
            },
            other => Err(unexpected(&other)),
        }
    }

    /// Submits a job with no dependencies.
    pub fn submit(&self, op: Op) -> Result<Fence> {
        self.submit_with(op, &[], &[])
    }

    /// Submits a job that waits for `wait` and, when done, signals `signal`.
    pub fn submit_with(&self, op: Op, wait: &[WaitPoint], signal: &[SignalPoint]) -> Result<Fence> {
        let req = Request::Submit { queue: self.handle, op, wait: wait.to_vec(), signal: signal.to_vec() };
        match self.dev.call(&req)? {
            Reply::Submitted { fence, seqno } => Ok(Fence { dev: self.dev.clone(), handle: fence, seqno }),
            other => Err(unexpected(&other)),
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("handle", &self.handle).finish()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.dev.release(&Request::QueueDestroy { handle: self.handle });
    }
}

/// Completion of one job. A job that failed, hung or was cancelled signals its
/// fence with that error, and every wait on it returns the error.
pub struct Fence {
    dev: Arc<Shared>,
    handle: FenceHandle,
    seqno: u64,
}

fn wait_status(dev: &Shared, point: WaitPoint, timeout: Duration) -> Result<FenceStatus> {
    match dev.call(&Request::Wait { points: vec![point], all: true, timeout_ns: timeout_ns(timeout) })? {
        Reply::Waited { status, .. } => {
            status.first().copied().ok_or_else(|| Error::new(Errno::EPROTO, "wait returned no status"))
        }
        other => Err(unexpected(&other)),
    }
}

fn wait_one(dev: &Shared, point: WaitPoint, timeout: Duration) -> Result<()> {
    match wait_status(dev, point, timeout)? {
        FenceStatus::Signaled => Ok(()),
        FenceStatus::Error(code) => Err(Error::new(code, format!("job failed: {}", code.description()))),
        FenceStatus::Pending => Err(Error::new(Errno::EPROTO, "wait returned while still pending")),
    }
}

impl Fence {
    /// The device sequence number of the job.
    pub fn seqno(&self) -> u64 {
        self.seqno
    }

    /// This fence as a dependency of another job or wait.
    pub fn point(&self) -> WaitPoint {
        WaitPoint::Fence(self.handle)
    }

    /// Waits until the job completes; `Err` carries the job's error.
    pub fn wait(&self) -> Result<()> {
        self.wait_timeout(Duration::MAX)
    }

    /// Waits up to `timeout`; `ETIMEDOUT` if the job is still running then.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        wait_one(&self.dev, self.point(), timeout)
    }

    /// Current status, without waiting.
    pub fn status(&self) -> Result<FenceStatus> {
        match wait_status(&self.dev, self.point(), Duration::ZERO) {
            Err(e) if e.code == Errno::ETIMEDOUT => Ok(FenceStatus::Pending),
            other => other,
        }
    }

    /// An eventfd that becomes readable when the fence signals (for poll/epoll loops).
    pub fn sync_fd(&self) -> Result<OwnedFd> {
        export_sync_fd(&self.dev, self.point())
    }
}

fn export_sync_fd(dev: &Shared, point: WaitPoint) -> Result<OwnedFd> {
    dev.call_for_fd(&Request::ExportSyncFd { point })
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("handle", &self.handle).field("seqno", &self.seqno).finish()
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.dev.release(&Request::FenceClose { handle: self.handle });
    }
}

/// A syncobj: a binary slot or a timeline that jobs signal and wait on.
pub struct Syncobj {
    dev: Arc<Shared>,
    handle: SyncobjHandle,
}

impl Syncobj {
    pub(crate) fn create(dev: Arc<Shared>, timeline: bool) -> Result<Syncobj> {
        match dev.call(&Request::SyncobjCreate { timeline, signaled: false })? {
            Reply::Syncobj(handle) => Ok(Syncobj { dev, handle }),
            other => Err(unexpected(&other)),
        }
    }

    pub(crate) fn import(dev: Arc<Shared>, fd: std::os::fd::BorrowedFd<'_>) -> Result<Syncobj> {
        match dev.call_fd(&Request::SyncobjImport, Some(fd))?.0 {
            Reply::Syncobj(handle) => Ok(Syncobj { dev, handle }),
            other => Err(unexpected(&other)),
        }
    }

    /// Exports the syncobj as a descriptor another client, of any device, can import
    /// ([`crate::Device::import_syncobj`]) to wait on it or to signal it from its jobs.
    pub fn export(&self) -> Result<OwnedFd> {
        self.dev.call_for_fd(&Request::SyncobjExport { handle: self.handle })
    }

    /// Point `point` as a dependency (0 for a binary syncobj).
    pub fn point(&self, point: u64) -> WaitPoint {
        WaitPoint::Syncobj { handle: self.handle, point }
    }

    /// Point `point` as something a job signals (0 for a binary syncobj).
    pub fn signal_point(&self, point: u64) -> SignalPoint {
        SignalPoint { handle: self.handle, point }
    }

    /// Signals `point` from the host.
    pub fn signal(&self, point: u64) -> Result<()> {
        self.dev.call(&Request::SyncobjSignal { handle: self.handle, point }).map(drop)
    }

    /// Binary only: back to unsignalled.
    pub fn reset(&self) -> Result<()> {
        self.dev.call(&Request::SyncobjReset { handle: self.handle }).map(drop)
    }

    /// Timeline: highest point reached; binary: 1 if signalled.
    pub fn query(&self) -> Result<u64> {
        match self.dev.call(&Request::SyncobjQuery { handle: self.handle })? {
            Reply::Point(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits for `point`; `Err` carries the error of a failed job behind it.
    pub fn wait(&self, point: u64, timeout: Duration) -> Result<()> {
        wait_one(&self.dev, self.point(point), timeout)
    }

    /// An eventfd that becomes readable when `point` is reached.
    pub fn sync_fd(&self, point: u64) -> Result<OwnedFd> {
        export_sync_fd(&self.dev, self.point(point))
    }
}

impl std::fmt::Debug for Syncobj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncobj").field("handle", &self.handle).finish()
    }
}

impl Drop for Syncobj {
    fn drop(&mut self) {
        self.dev.release(&Request::SyncobjDestroy { handle: self.handle });
    }
}
