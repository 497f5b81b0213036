//! The accel client library: open a device, allocate buffers, submit jobs, wait on fences.
//!
//! Every call is a request to the accel daemon over its Unix socket; buffers are
//! shared memory mapped into this process, so reading and writing them costs no
//! message.
//!
//! ```no_run
//! use accel::{Device, Op};
//! # fn main() -> accel::Result<()> {
//! let dev = Device::open(0)?;                      // accel0
//! let buf = dev.alloc(4096)?;                      // zero-filled, mapped here
//! let queue = dev.create_queue()?;
//! let fence = queue.submit(Op::Fill { dst: buf.view(0, 4096), pattern: 0xdead_beef })?;
//! fence.wait()?;                                   // a failed job returns its error
//! let mut word = [0u8; 4];
//! buf.read(0, &mut word)?;
//! assert_eq!(u32::from_le_bytes(word), 0xdead_beef);
//! # Ok(()) }
//! ```

mod buffer;
mod conn;
pub mod ras;
mod ring;
mod sync;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Syncobj flags, with DRM's values: `WAIT_ALL`, `WAIT_FOR_SUBMIT`, `WAIT_AVAILABLE`,
/// `QUERY_LAST_SUBMITTED`, and accel's `WAIT_RELATIVE`.
pub use accel_uapi::syncobj;
pub use accel_uapi::{
    BufView, Category, ClientUsage, DeviceInfo, EngineInfo, EntryInfo, Errno, FenceStatus, Float16, Gemm16, GemmF32,
    LaunchArg, MatView, ObjectCounts, Op, OpKind, ParamKind, Priority, RegionInfo, RegionKind, SignalPoint, WaitPoint,
};
pub use accel_uapi::{Launch, ProgramHandle, SyncobjHandle};
use accel_uapi::{Reply, Request};

pub use buffer::Buffer;
pub use conn::Connection;
pub use ring::{Cqe, Ring, WaitMode, WAIT_SPIN, WAIT_SPIN_MAX};
pub use sync::{Fence, Queue, Syncobj};

/// An error from the daemon (or from reaching it): errno-style code plus message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct Error {
    /// errno-style code.
    pub code: Errno,
    /// What went wrong.
    pub message: String,
}

impl Error {
    pub(crate) fn new(code: Errno, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }

    pub(crate) fn os(what: &str, e: rustix::io::Errno) -> Self {
        let code = u32::try_from(e.raw_os_error()).ok().and_then(Errno::from_raw).unwrap_or(Errno::EIO);
        Error::new(code, format!("{what}: {e}"))
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the daemon listens: `$ACCEL_SOCKET`, else `$XDG_RUNTIME_DIR/accel/accel.sock`,
/// else `/run/accel/accel.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ACCEL_SOCKET") {
        return p.into();
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR").map_or_else(|| PathBuf::from("/run"), PathBuf::from);
    dir.join("accel").join("accel.sock")
}

fn timeout_ns(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) struct Shared {
    /// Shared by every thread using the device: requests pipeline on it.
    conn: Connection,
    info: DeviceInfo,
}

impl Shared {
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn call(&self, req: &Request) -> Result<Reply> {
        self.conn.request(req)
    }

    pub(crate) fn call_fd(&self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(Reply, Vec<OwnedFd>)> {
        self.conn.request_fd(req, fd)
    }

    /// A request whose reply is [`Reply::Fd`] with `n` descriptors.
    pub(crate) fn call_for_fds(&self, req: &Request, n: usize) -> Result<Vec<OwnedFd>> {
        match self.call_fd(req, None)? {
            (Reply::Fd, fds) if fds.len() == n => Ok(fds),
            (other, fds) => Err(Error::new(
                Errno::EPROTO,
                format!("expected {n} descriptor(s), got {} with reply {other:?}", fds.len()),
            )),
        }
    }

    /// A request whose reply carries exactly one descriptor.
    pub(crate) fn call_for_fd(&self, req: &Request) -> Result<OwnedFd> {
        Ok(self.call_for_fds(req, 1)?.remove(0))
    }

    /// Fire-and-forget release used by destructors: errors are ignored because the
    /// daemon frees everything of a client when its connection closes anyway.
    pub(crate) fn release(&self, req: &Request) {
        let _ = self.call(req);
    }
}

/// How a queue is scheduled. `Default` is normal priority, weight 100, device timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// Priority class; high and kernel need root or the daemon's user.
    pub priority: Priority,
    /// Share within the class relative to other queues (1..=10000; 0 = 100).
    pub weight: u32,
    /// Job timeout; `None` takes the device default.
    pub timeout: Option<Duration>,
}

/// A loaded program: its entry points, launched with [`Op::Launch`] ([`Program::launch`]).
pub struct Program {
    dev: Arc<Shared>,
    handle: accel_uapi::ProgramHandle,
    entries: Vec<accel_uapi::EntryInfo>,
}

impl Program {
    /// The daemon's handle.
    pub fn handle(&self) -> accel_uapi::ProgramHandle {
        self.handle
    }

    /// Entry points and their parameters.
    pub fn entries(&self) -> &[accel_uapi::EntryInfo] {
        &self.entries
    }

    /// The index of entry point `name`.
    pub fn entry(&self, name: &str) -> Result<u32> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .map(|i| i as u32)
            .ok_or_else(|| Error::new(Errno::EINVAL, format!("the program has no entry point {name:?}")))
    }

    /// An op launching entry `name` over `grid` with `args` (submit it on a queue or ring).
    pub fn launch(&self, name: &str, grid: [u32; 3], args: &[LaunchArg]) -> Result<Op> {
        if args.len() > accel_uapi::MAX_LAUNCH_ARGS {
            return Err(Error::new(
                Errno::E2BIG,
                format!("{} arguments exceed {}", args.len(), accel_uapi::MAX_LAUNCH_ARGS),
            ));
        }
        Ok(Op::Launch(accel_uapi::Launch::new(self.handle, self.entry(name)?, grid, args)))
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("handle", &self.handle).field("entries", &self.entries).finish()
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.dev.release(&Request::ProgramUnload { handle: self.handle });
    }
}

/// What a wait returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitResult {
    /// Index of the first signalled point (for wait-any).
    pub first: u32,
    /// Status of each point.
    pub status: Vec<FenceStatus>,
    /// When each point signalled, `CLOCK_MONOTONIC` ns (0 if pending).
    pub timestamps: Vec<u64>,
    /// For each failed point, the driver's words if it gave any (else empty).
    pub messages: Vec<String>,
}

/// An open device: one connection to the daemon, bound to one `accelN`.
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct Device {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("minor", &self.shared.info.minor)
            .field("driver", &self.shared.info.driver)
            .finish()
    }
}

impl Device {
    /// Opens `accel<minor>` through the daemon at [`default_socket_path`].
    pub fn open(minor: u32) -> Result<Device> {
        Self::open_at(&default_socket_path(), minor)
    }

    /// Opens `accel<minor>` through the daemon listening at `socket`. An exclusive
    /// device held by another client fails at once with `EBUSY`.
    pub fn open_at(socket: &Path, minor: u32) -> Result<Device> {
        Self::open_wait(socket, minor, Duration::ZERO)
    }

    /// Like [`Device::open_at`], but queues up to `wait` for an exclusive device's lease
    /// (first come, first served); `EBUSY` if it is still held then.
    pub fn open_wait(socket: &Path, minor: u32, wait: Duration) -> Result<Device> {
        Self::open_conn(Connection::connect(socket)?, minor, wait)
    }

    /// Opens `accel<minor>` of the namespace that `token` names (devices are numbered
    /// from 0 inside a namespace).
    pub fn open_with_token(socket: &Path, minor: u32, token: &str) -> Result<Device> {
        Self::open_conn(Connection::connect_with_token(socket, Some(token))?, minor, Duration::ZERO)
    }

    fn open_conn(mut conn: Connection, minor: u32, wait: Duration) -> Result<Device> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let info = match conn.call(&Request::Open { minor, wait_ms })? {
            Reply::Device(info) => info,
            other => return Err(conn::unexpected(&other)),
        };
        Ok(Device { shared: Arc::new(Shared { conn, info }) })
    }

    /// The device as it was when opened.
    pub fn info(&self) -> &DeviceInfo {
        &self.shared.info
    }

    /// This client's id in the daemon.
    pub fn client_id(&self) -> u64 {
        self.shared.conn().client_id()
    }

    /// Allocates a zero-filled buffer of at least `size` bytes, mapped into this process.
    pub fn alloc(&self, size: u64) -> Result<Buffer> {
        self.alloc_in(size, 0)
    }

    /// Allocates a zero-filled buffer in memory region `region` ([`DeviceInfo::regions`]).
    /// Host memory (region 0, and any mappable region) is mapped into this process;
    /// device memory is not: fill it with `Copy` jobs from host buffers.
    pub fn alloc_in(&self, size: u64, region: u32) -> Result<Buffer> {
        match self.shared.call(&Request::BoCreate { size, region })? {
            Reply::Bo { handle, size, region } => self.buffer(handle, size, region),
            other => Err(conn::unexpected(&other)),
        }
    }

    /// A buffer handle the daemon gave: mapped if its region is mappable.
    fn buffer(&self, handle: accel_uapi::BoHandle, size: u64, region: u32) -> Result<Buffer> {
        let mappable = self.shared.info.regions.get(region as usize).is_none_or(|r| r.mappable);
        if mappable {
            Buffer::map(self.shared.clone(), handle, size, region)
        } else {
            Ok(Buffer::unmapped(self.shared.clone(), handle, size, region))
        }
    }

    /// Loads a program in one of the device's formats ([`DeviceInfo::program_formats`]);
    /// the driver validates it (`EINVAL` with its reason).
    pub fn load_program(&self, format: &str, bytes: &[u8]) -> Result<Program> {
        match self.shared.call(&Request::ProgramLoad { format: format.into(), bytes: bytes.to_vec() })? {
            Reply::Program { handle, entries } => Ok(Program { dev: self.shared.clone(), handle, entries }),
            other => Err(conn::unexpected(&other)),
        }
    }

    /// Imports a buffer another client exported ([`Buffer::export`]); both see the same
    /// memory (device memory stays unmapped, as it was for the exporter).
    pub fn import(&self, fd: impl AsFd) -> Result<Buffer> {
        match self.shared.call_fd(&Request::BoImport, Some(fd.as_fd()))?.0 {
            Reply::Bo { handle, size, region } => self.buffer(handle, size, region),
            other => Err(conn::unexpected(&other)),
        }
    }

    /// Imports device memory another runtime on this machine exported — a Vulkan opaque
    /// descriptor (`vkGetMemoryFdKHR`) on a vulkan device, a CUDA POSIX handle
    /// (`cuMemExportToShareableHandle`) on a cuda device, of the same physical device — as a
    /// buffer of device region `region`. `size` is the size the exporter allocated. The
    /// buffer is the exporter's memory, not a copy: writes through either side reach the
    /// other once ordered (a fence, a semaphore).
    pub fn import_external(&self, fd: impl AsFd, region: u32, size: u64) -> Result<Buffer> {
        match self.shared.call_fd(&Request::BoImportExternal { region, size }, Some(fd.as_fd()))?.0 {
            Reply::Bo { handle, size, region } => self.buffer(handle, size, region),
            other => Err(conn::unexpected(&other)),
        }
    }

    /// Creates a normal-priority queue with the default weight and job timeout.
    pub fn create_queue(&self) -> Result<Queue> {
        self.create_queue_with(QueueOptions::default())
    }

    /// Creates a queue whose jobs time out after `timeout` (at least 1 ms).
    pub fn create_queue_with_timeout(&self, timeout: Duration) -> Result<Queue> {
        self.create_queue_with(QueueOptions { timeout: Some(timeout), ..Default::default() })
    }

    /// Creates a queue with a priority class, weight and job timeout.
    pub fn create_queue_with(&self, options: QueueOptions) -> Result<Queue> {
        Queue::create(self.shared.clone(), options)
    }

    /// Imports a syncobj another client exported ([`Syncobj::export`]).
    pub fn import_syncobj(&self, fd: impl AsFd) -> Result<Syncobj> {
        Syncobj::import(self.shared.clone(), fd.as_fd())
    }

    /// Creates a syncobj. As in DRM, every syncobj takes both binary operations (point 0)
    /// and timeline points; `timeline` only documents the intent.
    pub fn create_syncobj(&self, timeline: bool) -> Result<Syncobj> {
        Syncobj::create(self.shared.clone(), timeline, false)
    }

    /// Creates a syncobj that is already signalled (`DRM_SYNCOBJ_CREATE_SIGNALED`).
    pub fn create_syncobj_signaled(&self) -> Result<Syncobj> {
        Syncobj::create(self.shared.clone(), false, true)
    }

    /// `DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT`: waits for all ([`syncobj::WAIT_ALL`]) or any of
    /// `points` (syncobjs of this device, each with a point; 0 for a binary wait). Flags
    /// [`syncobj::WAIT_FOR_SUBMIT`] and [`syncobj::WAIT_AVAILABLE`] as in DRM; `timeout_ns`
    /// is an absolute `CLOCK_MONOTONIC` deadline, or relative with [`syncobj::WAIT_RELATIVE`].
    /// No points: returns at once. Time running out is `ETIME`.
    pub fn syncobj_wait(&self, points: &[(&Syncobj, u64)], flags: u32, timeout_ns: i64) -> Result<WaitResult> {
        sync::syncobj_wait(&self.shared, points, flags, timeout_ns)
    }

    /// `DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL`: signals each point from the host, in one round trip.
    pub fn syncobj_signal(&self, points: &[(&Syncobj, u64)]) -> Result<()> {
        let handles = points.iter().map(|(s, _)| s.handle()).collect();
        let points = points.iter().map(|(_, p)| *p).collect();
        self.shared.call(&Request::SyncobjSignalMany { handles, points }).map(drop)
    }

    /// `DRM_IOCTL_SYNCOBJ_RESET` of several syncobjs in one round trip.
    pub fn syncobj_reset(&self, objs: &[&Syncobj]) -> Result<()> {
        self.shared.call(&Request::SyncobjResetMany { handles: objs.iter().map(|s| s.handle()).collect() }).map(drop)
    }

    /// `DRM_IOCTL_SYNCOBJ_QUERY` of several syncobjs: the highest contiguous signalled point
    /// of each, or with [`syncobj::QUERY_LAST_SUBMITTED`] the last submitted one.
    pub fn syncobj_query(&self, objs: &[&Syncobj], flags: u32) -> Result<Vec<u64>> {
        let req = Request::SyncobjQueryMany { handles: objs.iter().map(|s| s.handle()).collect(), flags };
        match self.shared.call(&req)? {
            Reply::Points(p) => Ok(p),
            other => Err(conn::unexpected(&other)),
        }
    }

    /// Waits for all (or any) of `points`; `ETIMEDOUT` if time runs out.
    pub fn wait(&self, points: &[WaitPoint], all: bool, timeout: Duration) -> Result<WaitResult> {
        match self.shared.call(&Request::Wait { points: points.to_vec(), all, timeout_ns: timeout_ns(timeout) })? {
            Reply::Waited { first, status, timestamps, messages } => {
                Ok(WaitResult { first, status, timestamps, messages })
            }
            other => Err(conn::unexpected(&other)),
        }
    }

    /// Sends any request on this device's connection (for tools and tests).
    pub fn request(&self, req: &Request) -> Result<Reply> {
        self.shared.call(req)
    }

    /// Sends any request with a descriptor (for tools and tests).
    pub fn request_with_fd(&self, req: &Request, fd: impl AsFd) -> Result<Reply> {
        Ok(self.shared.call_fd(req, Some(fd.as_fd()))?.0)
    }
}
