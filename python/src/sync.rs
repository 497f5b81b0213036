//! Fences and syncobjs: waiting for jobs, and DRM's binary and timeline sync objects.

use super::*;

/// A job's fence. `fence.wait(timeout)` blocks (releasing the GIL); `await fence` waits in
/// an asyncio loop on the fence's eventfd.
#[pyclass(module = "accel", frozen)]
pub(crate) struct Fence {
    pub(crate) inner: accel::Fence,
    /// Destroying a queue cancels its jobs: a fence keeps its queue alive, so
    /// `dev.queue().fill(...).wait()` works.
    pub(crate) _queue: Option<Py<Queue>>,
}

#[pymethods]
impl Fence {
    /// Waits up to `timeout` seconds (default: forever); raises `accel.Error` with the job's
    /// error (EIO, ETIME, ECANCELED, ...) or ETIMEDOUT.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let t = seconds(timeout)?;
        py.detach(|| self.inner.wait_timeout(t)).map_err(raise)
    }

    /// Whether it signalled (raises the job's error if it failed).
    fn done(&self, py: Python<'_>) -> PyResult<bool> {
        match py.detach(|| self.inner.status()).map_err(raise)? {
            accel::FenceStatus::Pending => Ok(false),
            accel::FenceStatus::Signaled => Ok(true),
            accel::FenceStatus::Error(e) => Err(raise(accel::Error { code: e, message: "the job failed".into() })),
        }
    }

    /// An eventfd (yours to close) that becomes readable when the fence signals.
    fn sync_fd(&self, py: Python<'_>) -> PyResult<i32> {
        Ok(py.detach(|| self.inner.sync_fd()).map_err(raise)?.into_raw_fd())
    }

    /// The device's own fence for this job as a kernel sync_file descriptor (yours to close),
    /// for consumers outside accel; None once the job is done (nothing to wait for). Raises
    /// EOPNOTSUPP on devices that make none, EAGAIN while the job waits to reach its device.
    fn native_sync_file(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        Ok(py.detach(|| self.inner.native_sync_file()).map_err(raise)?.map(|fd| fd.into_raw_fd()))
    }

    /// The job's device sequence number.
    #[getter]
    fn seqno(&self) -> u64 {
        self.inner.seqno()
    }

    fn __await__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("accel._aio")?.call_method1("wait", (slf,))?.call_method0("__await__")
    }
}

/// A syncobj: binary, or a timeline of points.
#[pyclass(module = "accel", frozen)]
pub(crate) struct Syncobj {
    pub(crate) inner: accel::Syncobj,
}

#[pymethods]
impl Syncobj {
    /// Signals `point` from the host: 0 replaces the fence with a signalled one; any other
    /// point joins the timeline, in order or not.
    #[pyo3(signature = (point = 0))]
    fn signal(&self, py: Python<'_>, point: u64) -> PyResult<()> {
        py.detach(|| self.inner.signal(point)).map_err(raise)
    }

    /// The highest contiguous signalled timeline point (0 without a timeline).
    fn query(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.query()).map_err(raise)
    }

    /// The last submitted timeline point.
    fn last_submitted(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.last_submitted()).map_err(raise)
    }

    /// Drops the fence, or a timeline's whole chain.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.reset()).map_err(raise)
    }

    /// Waits for `point`, first for it to be submitted (`WAIT_FOR_SUBMIT`).
    #[pyo3(signature = (point = 0, timeout = None))]
    fn wait_for_submit(&self, py: Python<'_>, point: u64, timeout: Option<f64>) -> PyResult<()> {
        let t = seconds(timeout)?;
        py.detach(|| self.inner.wait_for_submit(point, t)).map_err(raise)
    }

    /// `DRM_IOCTL_SYNCOBJ_TRANSFER`: `src`'s fence at `src_point` becomes this syncobj's fence
    /// (`dst_point` 0) or point `dst_point`; `for_submit` takes a source point not submitted yet.
    #[pyo3(signature = (src, src_point = 0, dst_point = 0, for_submit = false))]
    fn transfer_from(
        &self,
        py: Python<'_>,
        src: Bound<'_, Syncobj>,
        src_point: u64,
        dst_point: u64,
        for_submit: bool,
    ) -> PyResult<()> {
        let flags = if for_submit { accel::syncobj::WAIT_FOR_SUBMIT } else { 0 };
        let src = &src.get().inner;
        py.detach(|| self.inner.transfer_from(src, src_point, dst_point, flags)).map_err(raise)
    }

    /// `DRM_IOCTL_SYNCOBJ_EVENTFD`: the eventfd `fd` (stays yours) is incremented once `point`
    /// signals, or with `available` once it is submitted.
    #[pyo3(signature = (point, fd, available = false))]
    fn notify_eventfd(&self, py: Python<'_>, point: u64, fd: i32, available: bool) -> PyResult<()> {
        if fd < 0 {
            return Err(PyValueError::new_err("negative descriptor"));
        }
        // SAFETY: the caller passes an open descriptor; it is only borrowed for the call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        py.detach(|| self.inner.notify_eventfd(point, fd, available)).map_err(raise)
    }

    /// The fence at `point` as a sync file descriptor (yours to close): readable once it
    /// signals, importable with `import_sync_file`.
    #[pyo3(signature = (point = 0))]
    fn export_sync_file(&self, py: Python<'_>, point: u64) -> PyResult<i32> {
        Ok(py.detach(|| self.inner.export_sync_file(point)).map_err(raise)?.into_raw_fd())
    }

    /// Imports a sync file (stays yours) as this syncobj's fence (`point` 0) or point `point`.
    fn import_sync_file(&self, py: Python<'_>, point: u64, fd: i32) -> PyResult<()> {
        if fd < 0 {
            return Err(PyValueError::new_err("negative descriptor"));
        }
        // SAFETY: the caller passes an open descriptor; it is only borrowed for the call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        py.detach(|| self.inner.import_sync_file(point, fd)).map_err(raise)
    }

    /// Waits for `point` up to `timeout` seconds.
    #[pyo3(signature = (point = 0, timeout = None))]
    fn wait(&self, py: Python<'_>, point: u64, timeout: Option<f64>) -> PyResult<()> {
        let t = seconds(timeout)?;
        py.detach(|| self.inner.wait(point, t)).map_err(raise)
    }

    /// Exports as a descriptor (yours to close) another client can import.
    fn export(&self, py: Python<'_>) -> PyResult<i32> {
        Ok(py.detach(|| self.inner.export()).map_err(raise)?.into_raw_fd())
    }
}
