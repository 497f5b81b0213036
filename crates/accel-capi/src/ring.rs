//! Shared-memory rings: submissions without a syscall, completions, and how to wait for them.

use super::syncobj::points_of;
use super::*;

/// Creates a queue with a shared-memory ring of `entries` submissions (a power of two up
/// to 4096): jobs then cost no syscall while the daemon is busy.
///
/// # Safety
/// `dev` is live; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_ring_create(dev: *const accel_device, entries: u32, out: *mut *mut accel_ring) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let ring = unsafe { obj(dev, "device") }?.inner.create_queue()?.into_ring(entries)?;
        let r = accel_ring { inner: ring, pending: Default::default(), scratch: Vec::new() };
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(r)) }?;
        Ok(0)
    })
}

/// Publishes a job (no syscall); `-EAGAIN` when the ring is full. Call
/// [`accel_ring_flush`] after a batch.
///
/// # Safety
/// `r` and `op` are live, and so are the op's buffers.
#[no_mangle]
pub unsafe extern "C" fn accel_ring_push(r: *mut accel_ring, op: *const accel_op, user_data: u64) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let op = unsafe { to_op(op) }?;
        // SAFETY: forwarded contract; the ring is used by one thread at a time.
        let r = unsafe { r.as_mut() }.ok_or_else(|| err(Errno::EINVAL, "ring is NULL"))?;
        r.inner.push(&op, user_data)?;
        Ok(0)
    })
}

/// Queues a sync entry: a null job that waits for `n_waits` syncobj points (one not
/// submitted yet is waited for) and then signals `n_signals` points; later entries wait with
/// it. At most six points in all (`-E2BIG`).
///
/// # Safety
/// `r` is live; `wait_objs`/`wait_points` hold `n_waits` live syncobjs and points, and
/// `signal_objs`/`signal_points` `n_signals` (points arrays may be NULL for all 0).
#[no_mangle]
pub unsafe extern "C" fn accel_ring_push_sync(
    r: *mut accel_ring,
    wait_objs: *const *const accel_syncobj,
    wait_points: *const u64,
    n_waits: u32,
    signal_objs: *const *const accel_syncobj,
    signal_points: *const u64,
    n_signals: u32,
    user_data: u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let waits = unsafe { points_of(wait_objs, wait_points, n_waits) }?;
        // SAFETY: forwarded contract.
        let signals = unsafe { points_of(signal_objs, signal_points, n_signals) }?;
        // SAFETY: forwarded contract; the ring is used by one thread at a time.
        let r = unsafe { r.as_mut() }.ok_or_else(|| err(Errno::EINVAL, "ring is NULL"))?;
        r.inner.push_sync(&waits, &signals, user_data)?;
        Ok(0)
    })
}

/// Wakes the daemon if it sleeps (a syscall only then).
///
/// # Safety
/// `r` is live.
#[no_mangle]
pub unsafe extern "C" fn accel_ring_flush(r: *mut accel_ring) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let r = unsafe { r.as_mut() }.ok_or_else(|| err(Errno::EINVAL, "ring is NULL"))?;
        r.inner.flush()?;
        Ok(0)
    })
}

/// `accel_ring_set_wait_mode`: spin as long as the daemon suggests for the machine's load (5 ms
/// while the busy rings and their relays fit the CPUs, else 50 µs; `$ACCEL_WAIT_SPIN_US`
/// overrides), then block (the default).
pub const ACCEL_WAIT_AUTO: c_int = 0;
/// `accel_ring_set_wait_mode`: spin until the completions come (lowest latency, a core busy;
/// the daemon's poller keeps watching the ring while its jobs run).
pub const ACCEL_WAIT_SPIN: c_int = 1;
/// `accel_ring_set_wait_mode`: block at once.
pub const ACCEL_WAIT_BLOCK: c_int = 2;

/// Chooses how [`accel_ring_wait`] and [`accel_ring_submit_wait`] wait: `ACCEL_WAIT_AUTO`,
/// `ACCEL_WAIT_SPIN` or `ACCEL_WAIT_BLOCK` (CUDA's context scheduling flags, for a ring);
/// `-EINVAL` for anything else.
///
/// # Safety
/// `r` is live.
#[no_mangle]
pub unsafe extern "C" fn accel_ring_set_wait_mode(r: *mut accel_ring, mode: c_int) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let r = unsafe { r.as_mut() }.ok_or_else(|| err(Errno::EINVAL, "ring is NULL"))?;
        let mode = match mode {
            ACCEL_WAIT_AUTO => accel::WaitMode::Auto,
            ACCEL_WAIT_SPIN => accel::WaitMode::Spin,
            ACCEL_WAIT_BLOCK => accel::WaitMode::Block,
            _ => return Err(err(Errno::EINVAL, "wait mode: not ACCEL_WAIT_AUTO, _SPIN or _BLOCK")),
        };
        r.inner.set_wait_mode(mode);
        Ok(0)
    })
}

/// Waits up to `timeout_ns` until at least `min` completions are available, then copies
/// up to `max` into `out`; returns how many (or `-ETIMEDOUT`, `-EPIPE` if the daemon died).
///
/// # Safety
/// `r` is live; `out` has room for `max` entries.
#[no_mangle]
pub unsafe extern "C" fn accel_ring_wait(
    r: *mut accel_ring,
    out: *mut accel_completion,
    max: usize,
    min: usize,
    timeout_ns: u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let r = unsafe { r.as_mut() }.ok_or_else(|| err(Errno::EINVAL, "ring is NULL"))?;
        if out.is_null() && max > 0 {
            return Err(err(Errno::EINVAL, "output array is NULL"));
        }
        let min = min.min(max);
        if r.pending.len() < min {
            let mut got = std::mem::take(&mut r.scratch);
            got.clear();
            let result = r.inner.wait(&mut got, min - r.pending.len(), timeout(timeout_ns));
            r.pending.extend(got.drain(..));
            r.scratch = got;
            result?;
        } else {
            let mut got = std::mem::take(&mut r.scratch);
            got.clear();
            r.inner.reap(&mut got);
            r.pending.extend(got.drain(..));
            r.scratch = got;
        }
        let n = r.pending.len().min(max);
        for (i, c) in r.pending.drain(..n).enumerate() {
            // SAFETY: i < max, within the caller's array.
            unsafe { out.add(i).write(c.into()) };
        }
        Ok(n as c_int)
    })
}

/// Submits one job and waits for its completion: the synchronous round trip.
///
/// # Safety
/// `r`, `op` and the op's buffers are live; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_ring_submit_wait(
    r: *mut accel_ring,
    op: *const accel_op,
    timeout_ns: u64,
    out: *mut accel_completion,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let op = unsafe { to_op(op) }?;
        // SAFETY: forwarded contract.
        let r = unsafe { r.as_mut() }.ok_or_else(|| err(Errno::EINVAL, "ring is NULL"))?;
        if !r.pending.is_empty() {
            return Err(err(Errno::EBUSY, "completions are pending: reap them with accel_ring_wait first"));
        }
        let c = r.inner.submit_wait(&op, timeout(timeout_ns))?;
        // SAFETY: forwarded contract.
        unsafe { put(out, c.into()) }?;
        Ok(0)
    })
}

/// Frees a ring and its queue.
///
/// # Safety
/// `r` is NULL or from [`accel_ring_create`], not yet freed.
#[no_mangle]
pub unsafe extern "C" fn accel_ring_free(r: *mut accel_ring) {
    // SAFETY: forwarded contract.
    unsafe { free(r) }
}
