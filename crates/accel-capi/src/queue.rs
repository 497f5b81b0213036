//! Queues, submission of jobs, and fences.

use super::*;

/// Creates a queue: `priority` 0 low, 1 normal, 2 high, 3 kernel (high and kernel need an
/// admin), `weight` 1..=10000 (0: 100), `timeout_ms` per job (0: the device's default).
///
/// # Safety
/// `dev` is live; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_queue_create(
    dev: *const accel_device,
    priority: u32,
    weight: u32,
    timeout_ms: u64,
    out: *mut *mut accel_queue,
) -> c_int {
    guard(|| {
        let priority = match priority {
            0 => Priority::Low,
            1 => Priority::Normal,
            2 => Priority::High,
            3 => Priority::Kernel,
            p => return Err(err(Errno::EINVAL, &format!("priority {p} is not 0..=3"))),
        };
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        // SAFETY: forwarded contract.
        let q = unsafe { obj(dev, "device") }?.inner.create_queue_with(QueueOptions { priority, weight, timeout })?;
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_queue { inner: q })) }?;
        Ok(0)
    })
}

/// Destroys a queue; its queued jobs fail with `ECANCELED`.
///
/// # Safety
/// `q` is NULL or from [`accel_queue_create`], not yet freed.
#[no_mangle]
pub unsafe extern "C" fn accel_queue_free(q: *mut accel_queue) {
    // SAFETY: forwarded contract.
    unsafe { free(q) }
}

/// # Safety
/// `p` is NULL with `n == 0`, or points to `n` live entries for `'a`.
unsafe fn slice<'a, T>(p: *const T, n: usize) -> Outcome<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(err(Errno::EINVAL, "array is NULL but its count is not 0"));
    }
    // SAFETY: non-null with n entries by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Submits `op` after everything in `waits` (`nwaits` entries), signalling `signals` when it
/// completes. `fence` (may be NULL) receives the job's fence.
///
/// # Safety
/// `q` and `op` are live (and the buffers, fences and syncobjs they name); `waits` and
/// `signals` point to that many entries (or are NULL with a count of 0); `fence` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_submit(
    q: *const accel_queue,
    op: *const accel_op,
    waits: *const accel_wait,
    nwaits: usize,
    signals: *const accel_signal,
    nsignals: usize,
    fence: *mut *mut accel_fence,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let q = unsafe { obj(q, "queue") }?;
        // SAFETY: forwarded contract.
        let op = unsafe { to_op(op) }?;
        let mut wait = Vec::with_capacity(nwaits);
        // SAFETY: forwarded contract.
        for w in unsafe { slice(waits, nwaits) }? {
            // SAFETY: null or live by the caller's contract.
            let fence = unsafe { w.fence.as_ref() };
            // SAFETY: as above.
            let syncobj = unsafe { w.syncobj.as_ref() };
            let point = match (fence, syncobj) {
                (Some(f), None) => f.inner.point(),
                (None, Some(s)) => s.inner.point(w.point),
                _ => return Err(err(Errno::EINVAL, "a wait names exactly one of a fence and a syncobj")),
            };
            wait.push(point);
        }
        let mut signal = Vec::with_capacity(nsignals);
        // SAFETY: forwarded contract.
        for s in unsafe { slice(signals, nsignals) }? {
            // SAFETY: null or live by contract.
            let so = unsafe { obj(s.syncobj, "signal syncobj") }?;
            signal.push(so.inner.signal_point(s.point));
        }
        let f = q.inner.submit_with(op, &wait, &signal)?;
        if !fence.is_null() {
            // SAFETY: non-null and valid for a write by contract.
            unsafe { fence.write(boxed(accel_fence { inner: f })) };
        }
        Ok(0)
    })
}

/// Waits up to `timeout_ns` for the fence: 0 once it signalled, else the job's error
/// (`-EIO`, `-ETIME`, `-ECANCELED`, ...) or `-ETIMEDOUT`.
///
/// # Safety
/// `f` is live.
#[no_mangle]
pub unsafe extern "C" fn accel_fence_wait(f: *const accel_fence, timeout_ns: u64) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        unsafe { obj(f, "fence") }?.inner.wait_timeout(timeout(timeout_ns))?;
        Ok(0)
    })
}

/// An eventfd (the caller closes it) that becomes readable when the fence signals.
///
/// # Safety
/// `f` is live; `fd` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_fence_sync_fd(f: *const accel_fence, fd: *mut c_int) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let owned = unsafe { obj(f, "fence") }?.inner.sync_fd()?;
        // SAFETY: forwarded contract.
        unsafe { put(fd, owned.into_raw_fd()) }?;
        Ok(0)
    })
}

/// The device's own fence for the job as a kernel `sync_file` in `*fd` (the caller closes
/// it), for `vkImportSemaphoreFdKHR` with `VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_SYNC_FD_BIT` or
/// a display's `IN_FENCE_FD`; `*fd` is -1 when the job is done already (Vulkan's
/// convention: nothing to wait for). `-EOPNOTSUPP` on devices that make none, `-EAGAIN`
/// while the job waits to reach its device.
///
/// # Safety
/// `f` is live; `fd` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_fence_native_sync_file(f: *const accel_fence, fd: *mut c_int) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let native = unsafe { obj(f, "fence") }?.inner.native_sync_file()?;
        // SAFETY: forwarded contract.
        unsafe { put(fd, native.map_or(-1, |o| o.into_raw_fd())) }?;
        Ok(0)
    })
}

/// The job's device sequence number (0 for NULL).
///
/// # Safety
/// `f` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn accel_fence_seqno(f: *const accel_fence) -> u64 {
    // SAFETY: forwarded contract.
    unsafe { f.as_ref() }.map_or(0, |f| f.inner.seqno())
}

/// Frees a fence handle (the job runs on).
///
/// # Safety
/// `f` is NULL or from [`accel_submit`], not yet freed.
#[no_mangle]
pub unsafe extern "C" fn accel_fence_free(f: *mut accel_fence) {
    // SAFETY: forwarded contract.
    unsafe { free(f) }
}
