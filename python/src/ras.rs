//! The daemon's statistics and its RAS error events.

use super::*;

/// Daemon-wide live object counts (an admin's view): clients (this call's own connection
/// not counted), buffers, buffer_bytes, fences, syncobjs, queues, jobs, rings.
#[pyfunction]
#[pyo3(signature = (socket = None))]
pub(crate) fn stats(
    py: Python<'_>,
    socket: Option<PathBuf>,
) -> PyResult<std::collections::BTreeMap<&'static str, u64>> {
    let socket = socket.unwrap_or_else(accel::default_socket_path);
    let s = py.detach(|| accel::Connection::connect(&socket).and_then(|mut c| c.stats())).map_err(raise)?;
    let own = accel::ObjectCounts { clients: s.clients.saturating_sub(1), ..s };
    Ok(own.fields().into_iter().collect())
}

/// One RAS error event of the daemon's `error-report` group (drm-ras `error-event`).
/// Without `ext`, the kernel's attributes only: `seq`, `timestamp_ns`, `kind`, `delta` and
/// `severity` read 0 and `value` is the 32-bit (saturated) one.
#[pyclass(module = "accel", frozen, get_all)]
pub(crate) struct RasEvent {
    /// Device name as this client numbers devices (`accelN`).
    pub(crate) device: String,
    /// RAS node id.
    pub(crate) node_id: u32,
    /// Node (block) name: `memory`, `compute`, ….
    pub(crate) node: String,
    /// Counter id in the node (0 for node-wide events such as recoveries).
    pub(crate) error_id: u32,
    /// Counter name.
    pub(crate) error: String,
    /// The counter's value after the event.
    pub(crate) value: u64,
    /// 0 corrected, 1 uncorrected, 2 fatal.
    pub(crate) severity: u32,
    /// Consecutive sequence number: a gap means missed events.
    pub(crate) seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds of the event.
    pub(crate) timestamp_ns: u64,
    /// 0 error, 1 cleared, 2 threshold set, 3 recovered.
    pub(crate) kind: u32,
    /// Errors the event added.
    pub(crate) delta: u64,
}

#[pymethods]
impl RasEvent {
    fn __repr__(&self) -> String {
        format!(
            "RasEvent(seq={}, device={:?}, node={:?}, error={:?}, kind={}, value={}, delta={})",
            self.seq, self.device, self.node, self.error, self.kind, self.value, self.delta
        )
    }
}

/// A subscription to the daemon's RAS events: iterate it for [`RasEvent`]s (each step
/// blocks, without the GIL, until one arrives), or call `next(timeout)`.
#[pyclass(module = "accel")]
pub(crate) struct RasEvents {
    pub(crate) inner: Mutex<accel::ras::RasEvents>,
}

#[pymethods]
impl RasEvents {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<RasEvent> {
        self.next(py, None)
    }

    /// The next event, waiting at most `timeout` seconds (`accel.Error` with `ETIMEDOUT`
    /// after that; `None`: as long as it takes).
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<RasEvent> {
        let t = seconds(timeout)?;
        py.detach(|| {
            let mut events = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let e = events.next_error_event_timeout(t)?;
            Ok(RasEvent {
                device: e.device_name.into(),
                node_id: e.node_id,
                node: e.node_name.into(),
                error_id: e.error_id,
                error: e.error_name.into(),
                value: e.value,
                severity: e.severity,
                seq: e.seq,
                timestamp_ns: e.timestamp_ns,
                kind: e.kind,
                delta: e.delta,
            })
        })
        .map_err(raise)
    }
}

/// Joins the daemon's RAS `error-report` group at `socket` (default: `$ACCEL_SOCKET`, else the
/// standard path): every later error event of the devices this client sees, with accel's
/// attributes (sequence number, timestamp, …) unless `ext` is false.
#[pyfunction]
#[pyo3(signature = (socket = None, ext = true))]
pub(crate) fn ras_events(py: Python<'_>, socket: Option<PathBuf>, ext: bool) -> PyResult<RasEvents> {
    let socket = socket.unwrap_or_else(accel::default_socket_path);
    let events = py
        .detach(|| {
            let ras = accel::ras::Ras::connect(&socket)?;
            if ext {
                ras.subscribe_ext()
            } else {
                ras.subscribe()
            }
        })
        .map_err(raise)?;
    Ok(RasEvents { inner: Mutex::new(events) })
}
