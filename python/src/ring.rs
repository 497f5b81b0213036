//! Shared-memory rings: jobs submitted without a syscall, their completions.

use super::*;

/// A queue with a shared-memory ring: `push` and `wait` cost no syscall while the
/// daemon is busy.
#[pyclass(module = "accel", frozen)]
pub(crate) struct Ring {
    pub(crate) inner: Mutex<accel::Ring>,
}

pub(crate) fn ring_op(kind: &str, args: Option<Bound<'_, PyAny>>) -> PyResult<accel::Op> {
    match kind {
        "nop" => Ok(accel::Op::Nop),
        "fill" => {
            let args = args.ok_or_else(|| PyValueError::new_err("fill takes args=(buffer, pattern)"))?;
            let (dst, pattern): (Bound<'_, PyAny>, u32) = args.extract()?;
            Ok(accel::Op::Fill { dst: buffer_of(&dst)?.view(0, None)?, pattern })
        }
        other => Err(PyValueError::new_err(format!("ring ops are \"nop\" and \"fill\", not {other:?}"))),
    }
}

#[pymethods]
impl Ring {
    /// Publishes a job (`"nop"`, or `"fill"` with `(buffer, pattern)`), tagged `user_data`.
    #[pyo3(signature = (op = "nop", args = None, user_data = 0))]
    fn push(&self, op: &str, args: Option<Bound<'_, PyAny>>, user_data: u64) -> PyResult<()> {
        let op = ring_op(op, args)?;
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).push(&op, user_data).map_err(raise)
    }

    /// Publishes a sync entry: a null job that waits for `waits` and then signals `signals`
    /// (`(Syncobj, point)` pairs, six in all at most); later entries wait with it.
    #[pyo3(signature = (waits = Vec::new(), signals = Vec::new(), user_data = 0))]
    fn push_sync(
        &self,
        waits: Vec<(Bound<'_, Syncobj>, u64)>,
        signals: Vec<(Bound<'_, Syncobj>, u64)>,
        user_data: u64,
    ) -> PyResult<()> {
        let w: Vec<(&accel::Syncobj, u64)> = waits.iter().map(|(s, p)| (&s.get().inner, *p)).collect();
        let s: Vec<(&accel::Syncobj, u64)> = signals.iter().map(|(s, p)| (&s.get().inner, *p)).collect();
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).push_sync(&w, &s, user_data).map_err(raise)
    }

    /// How `wait` waits: `"auto"` (spin as long as the daemon suggests for the machine's
    /// load, 5 ms or 50 µs, `$ACCEL_WAIT_SPIN_US` overriding, then block; the default), `"spin"` (until the completions come: the lowest latency, a core busy) or
    /// `"block"`.
    #[getter]
    fn get_wait_mode(&self) -> &'static str {
        match self.inner.lock().unwrap_or_else(|e| e.into_inner()).wait_mode() {
            accel::WaitMode::Auto => "auto",
            accel::WaitMode::Spin => "spin",
            accel::WaitMode::Block => "block",
        }
    }

    #[setter]
    fn set_wait_mode(&self, mode: &str) -> PyResult<()> {
        let mode = match mode {
            "auto" => accel::WaitMode::Auto,
            "spin" => accel::WaitMode::Spin,
            "block" => accel::WaitMode::Block,
            _ => {
                return Err(raise(accel::Error {
                    code: accel::Errno::EINVAL,
                    message: format!("wait mode {mode:?}: not \"auto\", \"spin\" or \"block\""),
                }))
            }
        };
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).set_wait_mode(mode);
        Ok(())
    }

    /// Wakes the daemon if it sleeps.
    fn flush(&self) -> PyResult<()> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).flush().map_err(raise)
    }

    /// Waits for at least `min` completions; returns `(user_data, errno or 0)` pairs.
    #[pyo3(signature = (min = 1, timeout = None))]
    fn wait(&self, py: Python<'_>, min: usize, timeout: Option<f64>) -> PyResult<Vec<(u64, i32)>> {
        let t = seconds(timeout)?;
        let mut out = Vec::new();
        py.detach(|| self.inner.lock().unwrap_or_else(|e| e.into_inner()).wait(&mut out, min, t)).map_err(raise)?;
        Ok(out.iter().map(|c| (c.user_data, -c.result)).collect())
    }

    /// Submits a null job and waits for it: the synchronous round trip. Returns its seqno.
    #[pyo3(signature = (timeout = None))]
    fn nop_sync(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u64> {
        let t = seconds(timeout)?;
        let c = py
            .detach(|| self.inner.lock().unwrap_or_else(|e| e.into_inner()).submit_wait(&accel::Op::Nop, t))
            .map_err(raise)?;
        c.status().map_err(|e| raise(accel::Error { code: e, message: "null job failed".into() }))?;
        Ok(c.seqno)
    }
}
