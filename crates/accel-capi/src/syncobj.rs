//! Syncobjs: binary and timeline, waits, transfers, sync files and eventfds (DRM's).

use super::*;

/// Creates a syncobj. Every syncobj takes binary (point 0) and timeline operations, as in
/// DRM; `timeline` only documents the intent.
///
/// # Safety
/// `dev` is live; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_create(
    dev: *const accel_device,
    timeline: bool,
    out: *mut *mut accel_syncobj,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { obj(dev, "device") }?.inner.create_syncobj(timeline)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_syncobj { inner: s })) }?;
        Ok(0)
    })
}

/// Signals `point` from the host (0 for binary).
///
/// # Safety
/// `s` is live.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_signal(s: *const accel_syncobj, point: u64) -> c_int {
    // SAFETY: forwarded contract.
    guard(|| unsafe { obj(s, "syncobj") }?.inner.signal(point).map(|()| 0))
}

/// The highest contiguous signalled timeline point (0 without a timeline).
///
/// # Safety
/// `s` is live; `value` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_query(s: *const accel_syncobj, value: *mut u64) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let v = unsafe { obj(s, "syncobj") }?.inner.query()?;
        // SAFETY: forwarded contract.
        unsafe { put(value, v) }?;
        Ok(0)
    })
}

/// Waits up to `timeout_ns` for `point`; like [`accel_fence_wait`].
///
/// # Safety
/// `s` is live.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_wait(s: *const accel_syncobj, point: u64, timeout_ns: u64) -> c_int {
    // SAFETY: forwarded contract.
    guard(|| unsafe { obj(s, "syncobj") }?.inner.wait(point, timeout(timeout_ns)).map(|()| 0))
}

/// Exports the syncobj as a descriptor (the caller closes it) for [`accel_syncobj_import`].
///
/// # Safety
/// `s` is live; `fd` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_export(s: *const accel_syncobj, fd: *mut c_int) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let owned = unsafe { obj(s, "syncobj") }?.inner.export()?;
        // SAFETY: forwarded contract.
        unsafe { put(fd, owned.into_raw_fd()) }?;
        Ok(0)
    })
}

/// Imports a syncobj another client exported; `fd` stays the caller's.
///
/// # Safety
/// `dev` is live; `fd` is open; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_import(
    dev: *const accel_device,
    fd: c_int,
    out: *mut *mut accel_syncobj,
) -> c_int {
    guard(|| {
        if fd < 0 {
            return Err(err(Errno::EBADF, "negative descriptor"));
        }
        // SAFETY: the caller's contract: fd is open for the duration of the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        // SAFETY: forwarded contract.
        let s = unsafe { obj(dev, "device") }?.inner.import_syncobj(fd)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_syncobj { inner: s })) }?;
        Ok(0)
    })
}

/// Frees a syncobj handle.
///
/// # Safety
/// `s` is NULL or from this library, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_free(s: *mut accel_syncobj) {
    // SAFETY: forwarded contract.
    unsafe { free(s) }
}

/// `accel_syncobj_create_flags`: create the syncobj signalled (`DRM_SYNCOBJ_CREATE_SIGNALED`).
pub const ACCEL_SYNCOBJ_CREATE_SIGNALED: u32 = 1;
/// Wait for every point (`DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL`); without it, for any one.
pub const ACCEL_SYNCOBJ_WAIT_ALL: u32 = 1;
/// Wait for a point to be submitted, then for it (`DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT`).
pub const ACCEL_SYNCOBJ_WAIT_FOR_SUBMIT: u32 = 2;
/// A point is done once submitted (`DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE`).
pub const ACCEL_SYNCOBJ_WAIT_AVAILABLE: u32 = 4;
/// `timeout_ns` is relative to now instead of an absolute `CLOCK_MONOTONIC` deadline.
pub const ACCEL_SYNCOBJ_WAIT_RELATIVE: u32 = 0x8000_0000;
/// Query the last submitted point (`DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED`).
pub const ACCEL_SYNCOBJ_QUERY_LAST_SUBMITTED: u32 = 1;

// Literal values, so cbindgen can write them; they are the protocol's.
const _: () = assert!(
    ACCEL_SYNCOBJ_WAIT_ALL == accel::syncobj::WAIT_ALL
        && ACCEL_SYNCOBJ_WAIT_FOR_SUBMIT == accel::syncobj::WAIT_FOR_SUBMIT
        && ACCEL_SYNCOBJ_WAIT_AVAILABLE == accel::syncobj::WAIT_AVAILABLE
        && ACCEL_SYNCOBJ_WAIT_RELATIVE == accel::syncobj::WAIT_RELATIVE
        && ACCEL_SYNCOBJ_QUERY_LAST_SUBMITTED == accel::syncobj::QUERY_LAST_SUBMITTED
);

/// Creates a syncobj with `ACCEL_SYNCOBJ_CREATE_*` flags (other bits: `-EINVAL`).
///
/// # Safety
/// `dev` is live; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_create_flags(
    dev: *const accel_device,
    flags: u32,
    out: *mut *mut accel_syncobj,
) -> c_int {
    guard(|| {
        if flags & !ACCEL_SYNCOBJ_CREATE_SIGNALED != 0 {
            return Err(err(Errno::EINVAL, "unknown syncobj create flags"));
        }
        // SAFETY: forwarded contract.
        let dev = &unsafe { obj(dev, "device") }?.inner;
        let s = if flags & ACCEL_SYNCOBJ_CREATE_SIGNALED != 0 {
            dev.create_syncobj_signaled()?
        } else {
            dev.create_syncobj(false)?
        };
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_syncobj { inner: s })) }?;
        Ok(0)
    })
}

/// `count` syncobjs and their points (`points` NULL: point 0 for each).
///
/// # Safety
/// `objs` holds `count` live syncobjs; `points` is NULL or holds `count` values.
pub(crate) unsafe fn points_of<'a>(
    objs: *const *const accel_syncobj,
    points: *const u64,
    count: u32,
) -> Outcome<Vec<(&'a Syncobj, u64)>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if objs.is_null() {
        return Err(err(Errno::EINVAL, "syncobj array is NULL"));
    }
    let n = count as usize;
    // SAFETY: the caller's contract: `objs` holds `count` pointers.
    let objs = unsafe { std::slice::from_raw_parts(objs, n) };
    let points = if points.is_null() {
        vec![0; n]
    } else {
        // SAFETY: the caller's contract: `points` holds `count` values.
        unsafe { std::slice::from_raw_parts(points, n) }.to_vec()
    };
    objs.iter()
        .zip(points)
        // SAFETY: the caller's contract: each pointer is a live syncobj.
        .map(|(o, p)| Ok((&unsafe { obj(*o, "syncobj") }?.inner, p)))
        .collect()
}

/// `DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT`: waits for all (`ACCEL_SYNCOBJ_WAIT_ALL`) or any of
/// `count` points (`points` NULL: point 0, a binary wait). `timeout_ns` is an absolute
/// `CLOCK_MONOTONIC` deadline unless `ACCEL_SYNCOBJ_WAIT_RELATIVE`. Time running out is
/// `-ETIME`; an unsubmitted point without `ACCEL_SYNCOBJ_WAIT_FOR_SUBMIT` is `-EINVAL`.
/// `first_signaled` (may be NULL) gets the index of the first signalled point.
///
/// # Safety
/// `dev` is live; `objs`/`points` as for [`accel_syncobj_timeline_signal`].
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_timeline_wait(
    dev: *const accel_device,
    objs: *const *const accel_syncobj,
    points: *const u64,
    count: u32,
    flags: u32,
    timeout_ns: i64,
    first_signaled: *mut u32,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let dev = &unsafe { obj(dev, "device") }?.inner;
        // SAFETY: forwarded contract.
        let pts = unsafe { points_of(objs, points, count) }?;
        let r = dev.syncobj_wait(&pts, flags, timeout_ns)?;
        if !first_signaled.is_null() {
            // SAFETY: non-null, valid for a write by the caller's contract.
            unsafe { first_signaled.write(r.first) };
        }
        Ok(0)
    })
}

/// `DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL`: signals `count` points from the host (`points`
/// NULL: point 0, replacing each fence with a signalled one).
///
/// # Safety
/// `dev` is live; `objs` holds `count` live syncobjs; `points` is NULL or holds `count`.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_timeline_signal(
    dev: *const accel_device,
    objs: *const *const accel_syncobj,
    points: *const u64,
    count: u32,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let dev = &unsafe { obj(dev, "device") }?.inner;
        // SAFETY: forwarded contract.
        dev.syncobj_signal(&unsafe { points_of(objs, points, count) }?)?;
        Ok(0)
    })
}

/// `DRM_IOCTL_SYNCOBJ_RESET` of `count` syncobjs (a timeline's whole chain too).
///
/// # Safety
/// `dev` is live; `objs` holds `count` live syncobjs.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_reset(
    dev: *const accel_device,
    objs: *const *const accel_syncobj,
    count: u32,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let dev = &unsafe { obj(dev, "device") }?.inner;
        // SAFETY: forwarded contract.
        let pts = unsafe { points_of(objs, std::ptr::null(), count) }?;
        dev.syncobj_reset(&pts.iter().map(|(s, _)| *s).collect::<Vec<_>>())?;
        Ok(0)
    })
}

/// `DRM_IOCTL_SYNCOBJ_QUERY`: each syncobj's highest contiguous signalled point into
/// `values`, or with `ACCEL_SYNCOBJ_QUERY_LAST_SUBMITTED` its last submitted one.
///
/// # Safety
/// `dev` is live; `objs` holds `count` live syncobjs; `values` has room for `count`.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_timeline_query(
    dev: *const accel_device,
    objs: *const *const accel_syncobj,
    values: *mut u64,
    count: u32,
    flags: u32,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let dev = &unsafe { obj(dev, "device") }?.inner;
        // SAFETY: forwarded contract.
        let pts = unsafe { points_of(objs, std::ptr::null(), count) }?;
        let got = dev.syncobj_query(&pts.iter().map(|(s, _)| *s).collect::<Vec<_>>(), flags)?;
        if values.is_null() {
            return Err(err(Errno::EINVAL, "values is NULL"));
        }
        // SAFETY: the caller's contract: room for `count` values, and `got` has `count`.
        unsafe { std::ptr::copy_nonoverlapping(got.as_ptr(), values, got.len().min(count as usize)) };
        Ok(0)
    })
}

/// `DRM_IOCTL_SYNCOBJ_TRANSFER`: `src`'s fence at `src_point` becomes `dst`'s fence
/// (`dst_point` 0) or point `dst_point`; `flags` 0 or `ACCEL_SYNCOBJ_WAIT_FOR_SUBMIT`.
///
/// # Safety
/// `dst` and `src` are live syncobjs of the same device.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_transfer(
    dst: *const accel_syncobj,
    dst_point: u64,
    src: *const accel_syncobj,
    src_point: u64,
    flags: u32,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let (dst, src) = unsafe { (obj(dst, "dst syncobj")?, obj(src, "src syncobj")?) };
        dst.inner.transfer_from(&src.inner, src_point, dst_point, flags)?;
        Ok(0)
    })
}

/// `DRM_IOCTL_SYNCOBJ_EVENTFD`: `eventfd` (stays the caller's) is incremented once `point`
/// signals, or with `ACCEL_SYNCOBJ_WAIT_AVAILABLE` once it is submitted.
///
/// # Safety
/// `s` is live; `eventfd` is open for the call.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_eventfd(
    s: *const accel_syncobj,
    point: u64,
    eventfd: c_int,
    flags: u32,
) -> c_int {
    guard(|| {
        if eventfd < 0 {
            return Err(err(Errno::EBADF, "negative descriptor"));
        }
        if flags & !ACCEL_SYNCOBJ_WAIT_AVAILABLE != 0 {
            return Err(err(Errno::EINVAL, "unknown eventfd flags"));
        }
        // SAFETY: the caller's contract: the descriptor is open for the call.
        let fd = unsafe { BorrowedFd::borrow_raw(eventfd) };
        // SAFETY: forwarded contract.
        let s = unsafe { obj(s, "syncobj") }?;
        s.inner.notify_eventfd(point, fd, flags & ACCEL_SYNCOBJ_WAIT_AVAILABLE != 0)?;
        Ok(0)
    })
}

/// The fence at `point` as a sync file (the caller closes `*fd`): it polls readable once
/// the fence signals and imports with [`accel_syncobj_import_sync_file`].
///
/// # Safety
/// `s` is live; `fd` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_export_sync_file(s: *const accel_syncobj, point: u64, fd: *mut c_int) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let owned = unsafe { obj(s, "syncobj") }?.inner.export_sync_file(point)?;
        // SAFETY: forwarded contract.
        unsafe { put(fd, owned.into_raw_fd()) }?;
        Ok(0)
    })
}

/// Imports a sync file (stays the caller's) as `s`'s fence (`point` 0) or point `point`.
///
/// # Safety
/// `s` is live; `fd` is open for the call.
#[no_mangle]
pub unsafe extern "C" fn accel_syncobj_import_sync_file(s: *const accel_syncobj, point: u64, fd: c_int) -> c_int {
    guard(|| {
        if fd < 0 {
            return Err(err(Errno::EBADF, "negative descriptor"));
        }
        // SAFETY: the caller's contract: the descriptor is open for the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        // SAFETY: forwarded contract.
        unsafe { obj(s, "syncobj") }?.inner.import_sync_file(point, fd)?;
        Ok(0)
    })
}
