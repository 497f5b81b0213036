//! Queues, fences and syncobjs.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use accel_uapi::{
    syncobj, Errno, FenceHandle, FenceStatus, Op, QueueHandle, Reply, Request, SignalPoint, SyncobjHandle, WaitPoint,
};

use crate::{conn::unexpected, timeout_ns, Error, QueueOptions, Result, Ring, Shared};

/// A submission queue (a scheduler entity). Jobs on one device run in order.
pub struct Queue {
    pub(crate) dev: Arc<Shared>,
    pub(crate) handle: QueueHandle,
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
            Reply::Waited { status, messages, .. } => match status.first() {
                Some(FenceStatus::Error(code)) => Err(job_error(*code, messages.first())),
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

/// A failed job's error: the driver's words when it gave some, else the errno's description.
fn job_error(code: Errno, message: Option<&String>) -> Error {
    match message.filter(|m| !m.is_empty()) {
        Some(m) => Error::new(code, format!("job failed: {m}")),
        None => Error::new(code, format!("job failed: {}", code.description())),
    }
}

fn wait_status(dev: &Shared, point: WaitPoint, timeout: Duration) -> Result<(FenceStatus, Option<String>)> {
    match dev.call(&Request::Wait { points: vec![point], all: true, timeout_ns: timeout_ns(timeout) })? {
        Reply::Waited { status, mut messages, .. } => {
            let st = status.first().copied().ok_or_else(|| Error::new(Errno::EPROTO, "wait returned no status"))?;
            Ok((st, messages.drain(..).next()))
        }
        other => Err(unexpected(&other)),
    }
}

fn wait_one(dev: &Shared, point: WaitPoint, timeout: Duration) -> Result<()> {
    match wait_status(dev, point, timeout)? {
        (FenceStatus::Signaled, _) => Ok(()),
        (FenceStatus::Error(code), message) => Err(job_error(code, message.as_ref())),
        (FenceStatus::Pending, _) => Err(Error::new(Errno::EPROTO, "wait returned while still pending")),
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
            other => other.map(|(st, _)| st),
        }
    }

    /// An eventfd that becomes readable when the fence signals (for poll/epoll loops).
    pub fn sync_fd(&self) -> Result<OwnedFd> {
        export_sync_fd(&self.dev, self.point())
    }

    /// The device's own fence for this job as a kernel `sync_file`, for consumers outside
    /// accel (`vkImportSemaphoreFdKHR` with `SYNC_FD`, a display's `IN_FENCE_FD`): `None`
    /// once the job is done (nothing to wait for, Vulkan's `-1`). `EOPNOTSUPP` on devices
    /// that make none, `EAGAIN` while the job waits to reach its device.
    pub fn native_sync_file(&self) -> Result<Option<OwnedFd>> {
        export_native_sync_file(&self.dev, self.point())
    }
}

fn export_sync_fd(dev: &Shared, point: WaitPoint) -> Result<OwnedFd> {
    dev.call_for_fd(&Request::ExportSyncFd { point })
}

fn export_native_sync_file(dev: &Shared, point: WaitPoint) -> Result<Option<OwnedFd>> {
    match dev.call_for_fd(&Request::ExportNativeSyncFile { point }) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.code == Errno::EALREADY => Ok(None),
        Err(e) => Err(e),
    }
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
    pub(crate) fn create(dev: Arc<Shared>, timeline: bool, signaled: bool) -> Result<Syncobj> {
        match dev.call(&Request::SyncobjCreate { timeline, signaled })? {
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

    /// The handle the daemon gave this syncobj (what DRM-style arrays carry).
    pub fn handle(&self) -> SyncobjHandle {
        self.handle
    }

    /// Signals `point` from the host: point 0 replaces the fence with a signalled one; any
    /// other point is added to the timeline, in order or not.
    pub fn signal(&self, point: u64) -> Result<()> {
        self.dev.call(&Request::SyncobjSignal { handle: self.handle, point }).map(drop)
    }

    /// Drops the fence, or a timeline's whole chain (`DRM_IOCTL_SYNCOBJ_RESET`).
    pub fn reset(&self) -> Result<()> {
        self.dev.call(&Request::SyncobjReset { handle: self.handle }).map(drop)
    }

    /// The highest contiguous signalled timeline point (0 without a timeline).
    pub fn query(&self) -> Result<u64> {
        match self.dev.call(&Request::SyncobjQuery { handle: self.handle })? {
            Reply::Point(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// The last submitted timeline point (`DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED`).
    pub fn last_submitted(&self) -> Result<u64> {
        let req = Request::SyncobjQueryMany { handles: vec![self.handle], flags: syncobj::QUERY_LAST_SUBMITTED };
        match self.dev.call(&req)? {
            Reply::Points(p) if p.len() == 1 => Ok(p[0]),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits for `point`; `Err` carries the error of a failed job behind it. A point not
    /// submitted yet is `EINVAL`; see [`Syncobj::wait_for_submit`].
    pub fn wait(&self, point: u64, timeout: Duration) -> Result<()> {
        wait_one(&self.dev, self.point(point), timeout)
    }

    /// Waits for `point`, first for it to be submitted if it has not been
    /// (`WAIT_FOR_SUBMIT`); `ETIME` when time runs out. Other threads may submit and
    /// signal on the same device meanwhile.
    pub fn wait_for_submit(&self, point: u64, timeout: Duration) -> Result<()> {
        let flags = syncobj::WAIT_ALL | syncobj::WAIT_FOR_SUBMIT | syncobj::WAIT_RELATIVE;
        let status = syncobj_wait(&self.dev, &[(self, point)], flags, relative_ns(timeout))?;
        match status.status.first() {
            Some(FenceStatus::Error(code)) => Err(Error::new(*code, "the job behind the point failed")),
            _ => Ok(()),
        }
    }

    /// `DRM_IOCTL_SYNCOBJ_TRANSFER`: `src`'s fence at `src_point` becomes this syncobj's
    /// fence (`dst_point` 0) or its point `dst_point`. `flags`: 0 or
    /// [`syncobj::WAIT_FOR_SUBMIT`] (a source point not submitted yet follows once it is).
    pub fn transfer_from(&self, src: &Syncobj, src_point: u64, dst_point: u64, flags: u32) -> Result<()> {
        let req = Request::SyncobjTransfer { src: src.handle, src_point, dst: self.handle, dst_point, flags };
        self.dev.call(&req).map(drop)
    }

    /// `DRM_IOCTL_SYNCOBJ_EVENTFD`: `eventfd` is incremented once `point` signals (with
    /// `available`, once it is submitted). May be armed before the point is submitted.
    pub fn notify_eventfd(&self, point: u64, eventfd: impl AsFd, available: bool) -> Result<()> {
        let flags = if available { syncobj::WAIT_AVAILABLE } else { 0 };
        let req = Request::SyncobjEventfd { handle: self.handle, point, flags };
        self.dev.call_fd(&req, Some(eventfd.as_fd())).map(drop)
    }

    /// The fence at `point` as a sync file: a descriptor that polls readable once the fence
    /// signals and that any client of this namespace can import into a syncobj.
    pub fn export_sync_file(&self, point: u64) -> Result<OwnedFd> {
        self.dev.call_for_fd(&Request::SyncobjExportSyncFile { handle: self.handle, point })
    }

    /// Imports a sync file: its fence becomes this syncobj's fence (`point` 0) or point `point`.
    pub fn import_sync_file(&self, point: u64, sync_file: impl AsFd) -> Result<()> {
        let req = Request::SyncobjImportSyncFile { handle: self.handle, point };
        self.dev.call_fd(&req, Some(sync_file.as_fd())).map(drop)
    }

    /// An eventfd that becomes readable when `point` is reached.
    pub fn sync_fd(&self, point: u64) -> Result<OwnedFd> {
        export_sync_fd(&self.dev, self.point(point))
    }

    /// The device's own fence at `point` as a kernel `sync_file` ([`Fence::native_sync_file`]).
    pub fn native_sync_file(&self, point: u64) -> Result<Option<OwnedFd>> {
        export_native_sync_file(&self.dev, self.point(point))
    }
}

fn relative_ns(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX)
}

/// `DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT` over `points` (each a syncobj of this connection and a
/// point); `timeout_ns` is an absolute `CLOCK_MONOTONIC` deadline unless `flags` has
/// [`syncobj::WAIT_RELATIVE`].
pub(crate) fn syncobj_wait(
    dev: &Shared,
    points: &[(&Syncobj, u64)],
    flags: u32,
    timeout_ns: i64,
) -> Result<crate::WaitResult> {
    let req = Request::SyncobjWaitMany {
        handles: points.iter().map(|(s, _)| s.handle).collect(),
        points: points.iter().map(|(_, p)| *p).collect(),
        flags,
        timeout_ns,
    };
    match dev.call(&req)? {
        Reply::Waited { first, status, timestamps, messages } => {
            Ok(crate::WaitResult { first, status, timestamps, messages })
        }
        other => Err(unexpected(&other)),
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
