//! Devices, buffers (host and device memory, import and export) and programs.

use super::*;

/// Opens device `minor` through the daemon at `socket` (NULL: `$ACCEL_SOCKET`, else the
/// default path). `$ACCEL_NS_TOKEN` places the client in a namespace.
///
/// # Safety
/// `socket` is NULL or NUL-terminated; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_device_open(socket: *const c_char, minor: u32, out: *mut *mut accel_device) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let dev = Device::open_at(&unsafe { path(socket) }?, minor)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_device { inner: dev })) }?;
        Ok(0)
    })
}

/// Closes a device handle (its connection ends when its last object is freed too).
///
/// # Safety
/// `dev` is NULL or from [`accel_device_open`], not yet closed.
#[no_mangle]
pub unsafe extern "C" fn accel_device_close(dev: *mut accel_device) {
    // SAFETY: forwarded contract.
    unsafe { free(dev) }
}

/// Describes the device.
///
/// # Safety
/// `dev` is live; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_device_get_info(dev: *const accel_device, out: *mut accel_device_info) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let d = unsafe { obj(dev, "device") }?.inner.info();
        let mut info = accel_device_info {
            minor: d.minor,
            compute_units: d.compute_units,
            memory_bytes: d.memory_bytes,
            category: d.category as u32,
            driver: [0; 32],
            name: [0; 64],
            vendor: [0; 64],
        };
        fill_str(&mut info.driver, &d.driver);
        fill_str(&mut info.name, &d.name);
        fill_str(&mut info.vendor, &d.vendor);
        // SAFETY: forwarded contract.
        unsafe { put(out, info) }?;
        Ok(0)
    })
}

// ---------------------------------------------------------------- buffers

/// Allocates a zeroed buffer of at least `size` bytes, mapped into this process.
///
/// # Safety
/// `dev` is live; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_buffer_alloc(dev: *const accel_device, size: u64, out: *mut *mut accel_buffer) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let b = unsafe { obj(dev, "device") }?.inner.alloc(size)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_buffer { inner: b })) }?;
        Ok(0)
    })
}

/// Allocates a zeroed buffer in memory region `region` (0: host memory, mapped; a device
/// region is mapped where it is mappable, as the vulkan driver's `visible` memory is; others
/// are not: [`accel_buffer_data`] is NULL and copies reach them).
///
/// # Safety
/// `dev` is live; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_buffer_alloc_in(
    dev: *const accel_device,
    size: u64,
    region: u32,
    out: *mut *mut accel_buffer,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let b = unsafe { obj(dev, "device") }?.inner.alloc_in(size, region)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_buffer { inner: b })) }?;
        Ok(0)
    })
}

/// Loads a program of `len` bytes in `format` (NUL-terminated: `builtin`, `testdev-cmdbuf`,
/// ...); the driver validates it (`-EINVAL`, reason in [`accel_last_error`]).
///
/// # Safety
/// `dev` is live; `format` is NUL-terminated; `bytes` holds `len` bytes (or is NULL with
/// `len` 0); `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_program_load(
    dev: *const accel_device,
    format: *const c_char,
    bytes: *const u8,
    len: usize,
    out: *mut *mut accel_program,
) -> c_int {
    guard(|| {
        if format.is_null() {
            return Err(err(Errno::EINVAL, "format is NULL"));
        }
        // SAFETY: non-null and NUL-terminated by contract.
        let format =
            unsafe { CStr::from_ptr(format) }.to_str().map_err(|_| err(Errno::EINVAL, "format is not UTF-8"))?;
        let data = if len == 0 {
            &[][..]
        } else if bytes.is_null() {
            return Err(err(Errno::EINVAL, "bytes is NULL"));
        } else {
            // SAFETY: the caller's contract: `bytes` holds `len` bytes.
            unsafe { std::slice::from_raw_parts(bytes, len) }
        };
        // SAFETY: forwarded contract.
        let p = unsafe { obj(dev, "device") }?.inner.load_program(format, data)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_program { inner: p })) }?;
        Ok(0)
    })
}

/// The index of entry point `name` of `p`, for [`accel_op`]'s `entry`.
///
/// # Safety
/// `p` is live; `name` is NUL-terminated; `index` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_program_entry(p: *const accel_program, name: *const c_char, index: *mut u32) -> c_int {
    guard(|| {
        if name.is_null() {
            return Err(err(Errno::EINVAL, "name is NULL"));
        }
        // SAFETY: non-null and NUL-terminated by contract.
        let name = unsafe { CStr::from_ptr(name) }.to_str().map_err(|_| err(Errno::EINVAL, "name is not UTF-8"))?;
        // SAFETY: forwarded contract.
        let i = unsafe { obj(p, "program") }?.inner.entry(name)?;
        // SAFETY: forwarded contract.
        unsafe { put(index, i) }?;
        Ok(0)
    })
}

/// Frees a program handle (launches already queued keep the program).
///
/// # Safety
/// `p` is NULL or from [`accel_program_load`], not yet freed.
#[no_mangle]
pub unsafe extern "C" fn accel_program_free(p: *mut accel_program) {
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

/// Imports a buffer descriptor (an exported buffer, or a memfd sealed against shrinking).
/// `fd` stays the caller's.
///
/// # Safety
/// `dev` is live; `fd` is an open descriptor; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_buffer_import(
    dev: *const accel_device,
    fd: c_int,
    out: *mut *mut accel_buffer,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { import_with(dev, fd, out, |dev, fd| dev.import(fd)) }
}

/// Imports `fd` into a new buffer through `import`, for the two import calls.
///
/// # Safety
/// As theirs: `dev` is live; `fd` is an open descriptor; `out` is valid for a write.
unsafe fn import_with(
    dev: *const accel_device,
    fd: c_int,
    out: *mut *mut accel_buffer,
    import: impl FnOnce(&accel::Device, BorrowedFd<'_>) -> accel::Result<accel::Buffer>,
) -> c_int {
    guard(|| {
        if fd < 0 {
            return Err(err(Errno::EBADF, "negative descriptor"));
        }
        // SAFETY: the caller's contract: fd is open for the duration of the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        // SAFETY: forwarded contract.
        let b = import(&unsafe { obj(dev, "device") }?.inner, fd)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, boxed(accel_buffer { inner: b })) }?;
        Ok(0)
    })
}

/// Imports device memory another runtime exported — a Vulkan opaque descriptor
/// (`vkGetMemoryFdKHR`) on a vulkan device, a CUDA POSIX handle
/// (`cuMemExportToShareableHandle`) on a cuda device, of the same physical device — as a
/// buffer of device region `region`; `size` is what the exporter allocated. The buffer is the
/// exporter's memory, not a copy. `fd` stays the caller's.
///
/// # Safety
/// `dev` is live; `fd` is an open descriptor; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_buffer_import_external(
    dev: *const accel_device,
    fd: c_int,
    region: u32,
    size: u64,
    out: *mut *mut accel_buffer,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { import_with(dev, fd, out, |dev, fd| dev.import_external(fd, region, size)) }
}

/// Exports the buffer: a new descriptor (the caller closes it) another client may import.
///
/// # Safety
/// `buf` is live; `fd` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn accel_buffer_export(buf: *const accel_buffer, fd: *mut c_int) -> c_int {
    guard(|| {
        // SAFETY: forwarded contract.
        let owned = unsafe { obj(buf, "buffer") }?.inner.export()?;
        // SAFETY: forwarded contract.
        unsafe { put(fd, owned.into_raw_fd()) }?;
        Ok(0)
    })
}

/// The buffer's memory in this process (shared with the device: zero copy), or NULL.
///
/// # Safety
/// `buf` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn accel_buffer_data(buf: *const accel_buffer) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { buf.as_ref() }.map_or(std::ptr::null_mut(), |b| b.inner.as_ptr().cast())
}

/// The buffer's size in bytes (0 for NULL).
///
/// # Safety
/// `buf` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn accel_buffer_size(buf: *const accel_buffer) -> u64 {
    // SAFETY: forwarded contract.
    unsafe { buf.as_ref() }.map_or(0, |b| b.inner.size())
}

/// Frees a buffer handle (jobs still using it keep the memory until they finish).
///
/// # Safety
/// `buf` is NULL or from this library, not yet freed; its data pointer dies with it.
#[no_mangle]
pub unsafe extern "C" fn accel_buffer_free(buf: *mut accel_buffer) {
    // SAFETY: forwarded contract.
    unsafe { free(buf) }
}
