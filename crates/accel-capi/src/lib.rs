//! libaccel: the accel client library for C, a thin layer over the Rust `accel` crate.
//!
//! Conventions (like libdrm's): every fallible function returns 0 (or a count) on success
//! and a negative Linux errno on failure, and [`accel_last_error`] gives the message for
//! the calling thread. Objects are opaque pointers owned by the caller and freed with
//! their `*_free`/`*_close` function; each keeps the connection alive, so they may be
//! freed in any order. No function unwinds into C: a panic becomes `-EIO`.
#![allow(non_camel_case_types)]

mod device;
mod queue;
mod ring;
mod syncobj;

pub use device::*;
pub use queue::*;
pub use ring::*;
pub use syncobj::*;

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
