//! libaccel: the accel client library for C, a thin layer over the Rust `accel` crate.
//!
//! Conventions (like libdrm's): every fallible function returns 0 (or a count) on success
//! and a negative Linux errno on failure, and [`accel_last_error`] gives the message for
//! the calling thread. Objects are opaque pointers owned by the caller and freed with
//! their `*_free`/`*_close` function; each keeps the connection alive, so they may be
//! freed in any order. No function unwinds into C: a panic becomes `-EIO`.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::path::PathBuf;
use std::time::Duration;

use accel::{
    BufView, Buffer, Cqe, Device, Errno, Fence, Float16, Gemm16, GemmF32, LaunchArg, MatView, Op, Priority, Queue,
    QueueOptions, Ring, Syncobj,
};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

type Outcome<T> = Result<T, accel::Error>;

fn err(code: Errno, message: &str) -> accel::Error {
    accel::Error { code, message: message.into() }
}

/// Runs `f`, turning an error into `-errno` (message kept for [`accel_last_error`]) and a
/// panic into `-EIO`.
fn guard(f: impl FnOnce() -> Outcome<c_int>) -> c_int {
    let e = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(_) => err(Errno::EIO, "internal error (panic) in libaccel"),
    };
    let message = CString::new(format!("{}: {}", e.code.name(), e.message).replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = message);
    -(e.code.raw() as c_int)
}

/// The message of the calling thread's last failure ("" if none). Valid until the next
/// libaccel call on this thread.
#[no_mangle]
pub extern "C" fn accel_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// # Safety
/// `p` is null or points to a live `T` for `'a`.
unsafe fn obj<'a, T>(p: *const T, what: &str) -> Outcome<&'a T> {
    // SAFETY: the caller's contract: null or a live object.
    unsafe { p.as_ref() }.ok_or_else(|| err(Errno::EINVAL, &format!("{what} is NULL")))
}

/// # Safety
/// `out` is null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T) -> Outcome<()> {
    if out.is_null() {
        return Err(err(Errno::EINVAL, "output pointer is NULL"));
    }
    // SAFETY: non-null and, by the caller's contract, valid for writes.
    unsafe { out.write(value) };
    Ok(())
}

fn boxed<T>(v: T) -> *mut T {
    Box::into_raw(Box::new(v))
}

/// # Safety
/// `p` is null or came from `boxed` and was not freed.
unsafe fn free<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: the caller's contract: a pointer from Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(p) });
    }
}

fn timeout(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// An open device (one connection to the daemon).
pub struct accel_device {
    inner: Device,
}

/// A buffer object mapped into this process.
pub struct accel_buffer {
    inner: Buffer,
}

/// A queue (scheduler entity).
pub struct accel_queue {
    inner: Queue,
}

/// A job's fence.
pub struct accel_fence {
    inner: Fence,
}

/// A syncobj (binary or timeline).
pub struct accel_syncobj {
    inner: Syncobj,
}

/// A queue with a shared-memory submission/completion ring.
pub struct accel_ring {
    inner: Ring,
    pending: std::collections::VecDeque<Cqe>,
    scratch: Vec<Cqe>,
}

/// What a device is.
#[repr(C)]
pub struct accel_device_info {
    /// Minor number in the caller's namespace.
    pub minor: u32,
    /// Compute units (threads, SMs, ...).
    pub compute_units: u32,
    /// Device memory in bytes.
    pub memory_bytes: u64,
    /// 0 oneshot, 1 exclusive, 2 shared.
    pub category: u32,
    /// Driver name, NUL-terminated.
    pub driver: [c_char; 32],
    /// Device name, NUL-terminated (truncated to fit).
    pub name: [c_char; 64],
    /// Vendor, NUL-terminated (truncated to fit).
    pub vendor: [c_char; 64],
}

/// Which operation an [`accel_op`] describes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum accel_op_kind {
    /// Does nothing (a null job).
    Nop = 0,
    /// Fills `dst` with the 32-bit `pattern`.
    Fill = 1,
    /// Copies `src` to `dst` (same length).
    Copy = 2,
    /// C = alpha·A·B + beta·C, f32, row-major: `m`, `n`, `k`, `a`, `b`, `c`, `alpha`, `beta`.
    GemmF32 = 3,
    /// A driver-specific job: `driver_code`, `driver_args`.
    Driver = 4,
    /// A program launch: `program`, `entry`, `grid`, `n_args`, `args`.
    Launch = 5,
    /// As `GemmF32` on IEEE half floats (2-byte elements, strides in elements), summed in
    /// f32 and rounded once.
    GemmF16 = 6,
    /// As `GemmF16` on bfloat16.
    GemmBf16 = 7,
}

/// What an [`accel_arg`] holds.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum accel_arg_kind {
    /// A buffer range: `view`.
    Buffer = 1,
    /// A u32 scalar: `u`.
    U32 = 2,
    /// A u64 scalar: `u`.
    U64 = 3,
    /// An f32 scalar: `f`.
    F32 = 4,
}

/// One launch argument; only the field of its `kind` is read.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct accel_arg {
    /// What it is.
    pub kind: accel_arg_kind,
    /// An f32 scalar.
    pub f: f32,
    /// A u32 or u64 scalar.
    pub u: u64,
    /// A buffer range.
    pub view: accel_view,
}

/// Most arguments of one launch.
pub const ACCEL_MAX_LAUNCH_ARGS: usize = 8;

/// A loaded program.
pub struct accel_program {
    inner: accel::Program,
}

/// A byte range of a buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct accel_view {
    /// The buffer.
    pub buffer: *const accel_buffer,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A row-major f32 matrix inside a buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct accel_matrix {
    /// The buffer.
    pub buffer: *const accel_buffer,
    /// Byte offset of element (0, 0).
    pub offset: u64,
    /// Elements between consecutive rows.
    pub row_stride: u64,
}

/// One job. Only the fields of its `kind` are read; zero the rest.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct accel_op {
    /// Which operation.
    pub kind: accel_op_kind,
    /// Fill pattern.
    pub pattern: u32,
    /// Fill and copy destination.
    pub dst: accel_view,
    /// Copy source.
    pub src: accel_view,
    /// GEMM rows of A and C.
    pub m: u64,
    /// GEMM columns of B and C.
    pub n: u64,
    /// GEMM columns of A, rows of B.
    pub k: u64,
    /// GEMM A.
    pub a: accel_matrix,
    /// GEMM B.
    pub b: accel_matrix,
    /// GEMM C.
    pub c: accel_matrix,
    /// GEMM alpha.
    pub alpha: f32,
    /// GEMM beta.
    pub beta: f32,
    /// Driver job code.
    pub driver_code: u32,
    /// Driver job arguments.
    pub driver_args: [u64; 4],
    /// Launch: the program.
    pub program: *const accel_program,
    /// Launch: entry point index ([`accel_program_entry`]).
    pub entry: u32,
    /// Launch: work groups in x, y, z.
    pub grid: [u32; 3],
    /// Launch: arguments given.
    pub n_args: u32,
    /// Launch: the arguments.
    pub args: [accel_arg; ACCEL_MAX_LAUNCH_ARGS],
}

/// Something a job waits for: a fence, or a syncobj point (0 for binary). Set one pointer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct accel_wait {
    /// A fence, or NULL.
    pub fence: *const accel_fence,
    /// A syncobj, or NULL.
    pub syncobj: *const accel_syncobj,
    /// The syncobj's point.
    pub point: u64,
}

/// A syncobj point a job signals when it completes (0 for binary).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct accel_signal {
    /// The syncobj.
    pub syncobj: *const accel_syncobj,
    /// The point.
    pub point: u64,
}

/// A ring completion.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct accel_completion {
    /// The submission's user data.
    pub user_data: u64,
    /// 0, or a negative errno.
    pub result: i32,
    /// `CLOCK_MONOTONIC` nanoseconds at completion.
    pub timestamp: u64,
    /// The job's device sequence number.
    pub seqno: u64,
}

impl From<Cqe> for accel_completion {
    fn from(c: Cqe) -> Self {
        accel_completion { user_data: c.user_data, result: c.result, timestamp: c.timestamp, seqno: c.seqno }
    }
}

/// # Safety
/// Buffer pointers in `v` are null or live.
unsafe fn view(v: &accel_view) -> Outcome<BufView> {
    // SAFETY: forwarded contract.
    let b = unsafe { obj(v.buffer, "view buffer") }?;
    Ok(BufView { bo: b.inner.handle(), offset: v.offset, len: v.len })
}

/// # Safety
/// Buffer pointers in `m` are null or live.
unsafe fn matrix(m: &accel_matrix) -> Outcome<MatView> {
    // SAFETY: forwarded contract.
    let b = unsafe { obj(m.buffer, "matrix buffer") }?;
    Ok(MatView { bo: b.inner.handle(), offset: m.offset, row_stride: m.row_stride })
}

/// # Safety
/// `op` is null or live, and so are the buffers its kind uses.
unsafe fn to_op(op: *const accel_op) -> Outcome<Op> {
    // SAFETY: forwarded contract.
    let op = unsafe { obj(op, "op") }?;
    // SAFETY: the buffers of the op's kind are live by the caller's contract.
    let v = |x: &accel_view| unsafe { view(x) };
    // SAFETY: as above.
    let m = |x: &accel_matrix| unsafe { matrix(x) };
    Ok(match op.kind {
        accel_op_kind::Nop => Op::Nop,
        accel_op_kind::Fill => Op::Fill { dst: v(&op.dst)?, pattern: op.pattern },
        accel_op_kind::Copy => Op::Copy { src: v(&op.src)?, dst: v(&op.dst)? },
        accel_op_kind::GemmF32 | accel_op_kind::GemmF16 | accel_op_kind::GemmBf16 => {
            let g = GemmF32 {
                m: op.m,
                n: op.n,
                k: op.k,
                a: m(&op.a)?,
                b: m(&op.b)?,
                c: m(&op.c)?,
                alpha: op.alpha,
                beta: op.beta,
            };
            match op.kind {
                accel_op_kind::GemmF16 => Op::Gemm16(Gemm16::of(g, Float16::F16)),
                accel_op_kind::GemmBf16 => Op::Gemm16(Gemm16::of(g, Float16::Bf16)),
                _ => Op::GemmF32(g),
            }
        }
        accel_op_kind::Driver => Op::Driver { code: op.driver_code, args: op.driver_args },
        accel_op_kind::Launch => {
            // SAFETY: the program is live by the caller's contract.
            let program = unsafe { obj(op.program, "program") }?;
            let n = op.n_args as usize;
            if n > ACCEL_MAX_LAUNCH_ARGS {
                return Err(err(Errno::E2BIG, "more than 8 launch arguments"));
            }
            let args = op.args[..n]
                .iter()
                .map(|a| {
                    Ok(match a.kind {
                        accel_arg_kind::Buffer => LaunchArg::Buffer(v(&a.view)?),
                        accel_arg_kind::U32 => LaunchArg::U32(
                            u32::try_from(a.u).map_err(|_| err(Errno::EINVAL, "u32 argument out of range"))?,
                        ),
                        accel_arg_kind::U64 => LaunchArg::U64(a.u),
                        accel_arg_kind::F32 => LaunchArg::F32(a.f),
                    })
                })
                .collect::<Outcome<Vec<_>>>()?;
            Op::Launch(accel::Launch::new(program.inner.handle(), op.entry, op.grid, &args))
        }
    })
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn path(p: *const c_char) -> Outcome<PathBuf> {
    if p.is_null() {
        return Ok(accel::default_socket_path());
    }
    // SAFETY: non-null and NUL-terminated by contract.
    let s = unsafe { CStr::from_ptr(p) };
    Ok(PathBuf::from(s.to_str().map_err(|_| err(Errno::EINVAL, "socket path is not UTF-8"))?))
}

fn fill_str(dst: &mut [c_char], s: &str) {
    let n = s.len().min(dst.len() - 1);
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as c_char;
    }
    dst[n] = 0;
}

// ---------------------------------------------------------------- devices

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

/// Allocates a zeroed buffer in memory region `region` (0: host memory, mapped; the device's
/// own regions are not mapped: [`accel_buffer_data`] is NULL and copies reach them).
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

// ---------------------------------------------------------------- queues and jobs

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

// ---------------------------------------------------------------- syncobjs

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
unsafe fn points_of<'a>(
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

// ---------------------------------------------------------------- rings

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

/// `accel_ring_set_wait_mode`: spin briefly (50 µs), then block (the default).
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
