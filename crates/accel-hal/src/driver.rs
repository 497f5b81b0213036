//! The driver interface: what a driver implements to get device nodes, memory
//! handles, scheduling, fences and accounting from the core.
//!
//! The hooks mirror `drm_sched_backend_ops`: [`Driver::run_job`] runs one job on
//! the engine, [`Driver::timedout_job`] resets the engine after the watchdog
//! fired. An engine that completes jobs by itself (a hardware ring with a fence write and
//! an interrupt) can instead be [`Driver::asynchronous`]: [`Driver::submit_job`] hands the
//! job to the device and returns, and the job's [`JobDone`] reports its end, as
//! drm_sched's `run_job` returns the hardware fence it waits on. Region 0 of every device is host memory the core allocates (memfd), so a
//! host-memory driver needs no allocator of its own; a driver with memory of its own
//! declares more regions ([`Driver::regions`]) and allocates them ([`Driver::alloc`]),
//! and one that runs userspace programs loads them ([`Driver::load_program`]).

use std::any::Any;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use accel_uapi::{Category, EngineInfo, EntryInfo, Errno, Float16, OpKind, RegionKind};

use crate::bo::{BoMatrix, BoRange};
use crate::fence::{Fence, NativeExport};
use crate::lock;
pub use crate::mem::{DeviceMemory, DriverError};
use crate::ras::{RasHooks, RasNodeDesc, RasSink};

/// What a driver says about its device.
#[derive(Debug, Clone)]
pub struct DriverInfo {
    /// Driver name (`cpu`, `testdev`).
    pub driver: &'static str,
    /// Device name.
    pub name: String,
    /// Vendor.
    pub vendor: String,
    /// Categories the hardware supports; the first is the default.
    pub categories: Vec<Category>,
    /// Operations the driver runs; others are refused with `EOPNOTSUPP`.
    pub ops: Vec<OpKind>,
    /// Memory the device may allocate, in bytes.
    pub memory_bytes: u64,
    /// Compute units (threads for the cpu driver).
    pub compute_units: u32,
    /// Engines and their credits (ring depth); jobs are routed by [`Driver::engine_for`].
    pub engines: Vec<EngineInfo>,
    /// RAS nodes (blocks) and their error counters.
    pub ras_nodes: Vec<RasNodeDesc>,
}

/// What a driver can read of its device's sensors and identity, for monitoring (`/metrics`).
/// Every field is optional: what the hardware does not report is left out, not faked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    /// Temperature, °C.
    pub temperature_c: Option<f64>,
    /// Power draw, W.
    pub power_w: Option<f64>,
    /// Why the device runs slower than it could right now (`thermal`, `power`, …).
    pub throttle_reasons: Vec<String>,
    /// A stable identity: UUID or serial number.
    pub serial: Option<String>,
    /// PCI address (`0000:03:00.0`).
    pub pci_address: Option<String>,
}

/// A memory region a driver has besides host memory (region 0, which the core provides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDesc {
    /// Name (`vram`, ...).
    pub name: String,
    /// What kind of memory.
    pub kind: RegionKind,
    /// Capacity in bytes.
    pub size: u64,
    /// Clients may map its buffers.
    pub mappable: bool,
    /// Its buffers can be exported.
    pub exportable: bool,
    /// Host and device see each other's writes without flushes.
    pub coherent: bool,
}

/// A program a driver loaded and validated (a module of kernels, a command buffer). The
/// driver finds its own type again through [`Program::as_any`] when a launch runs it.
pub trait Program: Send + Sync + std::fmt::Debug + 'static {
    /// Entry points and their parameters.
    fn entries(&self) -> &[EntryInfo];

    /// Checks a launch beyond what the core checks (argument kinds and buffer bounds):
    /// e.g. that a command buffer's references fit the buffers bound. Called before the
    /// job is queued, so a refused launch runs nothing.
    fn check_launch(&self, _entry: u32, _grid: [u32; 3], _args: &[JobArg]) -> Result<(), DriverError> {
        Ok(())
    }

    /// The driver's own type.
    fn as_any(&self) -> &dyn Any;
}

/// A launch argument, resolved and bounds-checked by the core.
#[derive(Debug, Clone)]
pub enum JobArg {
    /// A buffer range (of any region of the device).
    Buffer(BoRange),
    /// A 32-bit unsigned scalar.
    U32(u32),
    /// A 64-bit unsigned scalar.
    U64(u64),
    /// A 32-bit float scalar.
    F32(f32),
}

/// A job's operation with every buffer view resolved and bounds-checked by the core.
#[derive(Debug, Clone)]
pub enum JobOp {
    /// No work.
    Nop,
    /// Fill with a 32-bit pattern; `dst.len` is a multiple of 4.
    Fill {
        /// Destination.
        dst: BoRange,
        /// Pattern.
        pattern: u32,
    },
    /// Copy; lengths are equal; ranges may overlap (memmove semantics).
    Copy {
        /// Source.
        src: BoRange,
        /// Destination.
        dst: BoRange,
    },
    /// `C = alpha·A·B + beta·C`; C does not overlap A or B.
    GemmF32 {
        /// m×k.
        a: BoMatrix,
        /// k×n.
        b: BoMatrix,
        /// m×n.
        c: BoMatrix,
        /// Product scale.
        alpha: f32,
        /// C scale.
        beta: f32,
    },
    /// `C = alpha·A·B + beta·C` on 16-bit floats of type `ty`, summed in f32; C does not
    /// overlap A or B.
    Gemm16 {
        /// m×k.
        a: BoMatrix,
        /// k×n.
        b: BoMatrix,
        /// m×n.
        c: BoMatrix,
        /// Product scale.
        alpha: f32,
        /// C scale.
        beta: f32,
        /// Element type of A, B and C.
        ty: Float16,
    },
    /// Driver-private operation.
    Driver {
        /// Driver-defined code.
        code: u32,
        /// Driver-defined arguments.
        args: [u64; 4],
    },
    /// An entry point of a loaded program over a grid.
    Launch {
        /// The program (kept alive by the job).
        program: Arc<dyn Program>,
        /// Entry point index.
        entry: u32,
        /// Work groups in x, y, z.
        grid: [u32; 3],
        /// Arguments, checked against the entry's parameters.
        args: Vec<JobArg>,
    },
}

/// Lets the core stop a running job: set when the job timed out or its client went away.
#[derive(Debug, Clone, Default)]
pub struct AbortToken(Arc<(Mutex<bool>, Condvar)>);

impl AbortToken {
    /// Requests that the job stop.
    pub fn abort(&self) {
        *lock(&self.0 .0) = true;
        self.0 .1.notify_all();
    }

    /// Whether an abort was requested.
    pub fn is_aborted(&self) -> bool {
        *lock(&self.0 .0)
    }

    /// Sleeps up to `timeout`, waking early on abort; returns true if aborted.
    pub fn sleep(&self, timeout: Duration) -> bool {
        let g = lock(&self.0 .0);
        let (g, _) = self.0 .1.wait_timeout_while(g, timeout, |a| !*a).unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// What a running job can see of its context.
#[derive(Debug, Clone)]
pub struct JobCtx {
    /// Set when the job must stop; long-running work should check it.
    pub abort: AbortToken,
    /// Client that submitted the job.
    pub client_id: u64,
    /// The job's fence, for a driver that makes native sync files to hand its exporter
    /// to ([`NativeFence::set`]).
    pub native: NativeFence,
}

/// How a job handed to an asynchronous engine ([`Driver::submit_job`]) reports its end:
/// once, from any thread (a completion thread, an interrupt handler's). The result is what
/// [`Driver::run_job`] would have returned. Dropped without a result, the job fails with
/// `ECANCELED` (`EIO` when a panic dropped it), so a job is never lost.
///
/// Complete it without holding a lock that [`Driver::submit_job`] takes: completing a job
/// may dispatch the next one, on this thread.
pub struct JobDone(Option<Finish>);

/// What a [`JobDone`] calls with the job's result.
type Finish = Box<dyn FnOnce(Result<(), DriverError>) + Send>;

impl JobDone {
    /// A completion that calls `f` with the job's result.
    pub fn new(f: impl FnOnce(Result<(), DriverError>) + Send + 'static) -> JobDone {
        JobDone(Some(Box::new(f)))
    }

    /// The job ended with `result`.
    pub fn complete(mut self, result: Result<(), DriverError>) {
        if let Some(f) = self.0.take() {
            f(result);
        }
    }

    /// Completes the job with what `f` returns, on a thread of its own (`{driver}-job`): for
    /// what may take long, a device's re-creation or a run alone. `EAGAIN` if no thread starts.
    pub fn complete_on_thread(self, driver: &str, f: impl FnOnce() -> Result<(), DriverError> + Send + 'static) {
        // The completion is taken back should the thread not start.
        let slot = Arc::new(Mutex::new(Some(self)));
        let job = slot.clone();
        let started = std::thread::Builder::new().name(format!("{driver}-job")).spawn(move || {
            if let Some(done) = lock(&job).take() {
                done.complete(f());
            }
        });
        if let Err(e) = started {
            if let Some(done) = lock(&slot).take() {
                done.complete(Err(DriverError::new(Errno::EAGAIN, format!("{driver}: no thread for the job: {e}"))));
            }
        }
    }
}

impl Drop for JobDone {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(if std::thread::panicking() {
                // Dropped by a panic in the driver (the core caught it): a driver's bug.
                DriverError::new(Errno::EIO, "the driver panicked with the job")
            } else {
                DriverError::new(Errno::ECANCELED, "the driver dropped the job")
            }));
        }
    }
}

impl std::fmt::Debug for JobDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "JobDone(pending)" } else { "JobDone(done)" })
    }
}

/// The one thing a driver may do with a job's fence: say how to make the device's own
/// sync file for it once the device has the job ([`Driver::native_sync_files`]).
#[derive(Debug, Clone)]
pub struct NativeFence(Arc<Fence>);

impl NativeFence {
    /// For the job whose fence is `fence`.
    pub fn new(fence: Arc<Fence>) -> NativeFence {
        NativeFence(fence)
    }

    /// The device has the job: `export` makes its sync file from now until it completes.
    pub fn set(&self, export: NativeExport) {
        self.0.set_native(export);
    }
}

/// One accelerator driver.
///
/// Errors are `DriverError`s, never panics. A panic is contained all the same, as a bug: one
/// in [`Driver::run_job`] or [`Driver::submit_job`] fails that job with `EIO` and the engine
/// goes on; one while serving a client's request (a program load, an allocation) fails that
/// request with `EIO` and closes the client's connection. Wrap third-party code that may panic
/// on hostile input (a shader parser) in [`crate::catch_panic`] and answer `EINVAL` instead.
pub trait Driver: Send + Sync + 'static {
    /// Describes the device.
    fn info(&self) -> DriverInfo;

    /// Which engine (index into [`DriverInfo::engines`]) runs `op`. Default: engine 0.
    fn engine_for(&self, _op: &JobOp) -> usize {
        0
    }

    /// Whether the device makes native sync files for its jobs (kernel `sync_file`s, handed
    /// to [`JobCtx::native`] once a job is submitted). Asked once, at device creation.
    fn native_sync_files(&self) -> bool {
        false
    }

    /// Runs a job to completion on the calling slot thread of `engine`. Up to the
    /// engine's credits run at once.
    ///
    /// An error becomes the job fence's error, its message (a runtime's or compiler's
    /// words) reaches the client beside the errno. Work that can take long must
    /// return once `ctx.abort` is set (timeout, reset, or the client went away).
    fn run_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), DriverError>;

    /// Whether `engine` completes its jobs by itself: the core then starts each job with
    /// [`Driver::submit_job`] on the thread that dispatches it, keeps no thread waiting for
    /// it, and finishes it when its [`JobDone`] completes. Asked once, at device creation.
    /// Default: no (jobs run on the core's slot threads through [`Driver::run_job`]).
    fn asynchronous(&self, _engine: usize) -> bool {
        false
    }

    /// Starts a job on an asynchronous engine and returns without waiting for it; `done`
    /// reports its end. Up to the engine's credits are in flight at once.
    ///
    /// It runs on the thread that dispatched the job (a ring's poller, a client's
    /// connection, the thread that finished the job before), so it must not block for
    /// long. The rules of [`Driver::run_job`] hold for the result, and for aborts: once
    /// `ctx.abort` is set the job must end soon, and after [`Driver::timedout_job`] every
    /// aborted job must still complete its `done` (with any result: the core decides).
    /// Default: runs [`Driver::run_job`] here.
    fn submit_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx, done: JobDone) {
        done.complete(self.run_job(engine, op, ctx));
    }

    /// Called after a job on `engine` exceeded its timeout (`guilty` is its context).
    /// Every job running on that engine has been aborted; reset the engine. The core
    /// then resubmits the innocent jobs. An error means the reset failed and wedges
    /// the device.
    fn timedout_job(&self, _engine: usize, _guilty: &JobCtx) -> Result<(), Errno> {
        Ok(())
    }

    /// Called once a job's fence has signalled, before the core drops the job.
    fn free_job(&self, _op: &JobOp) {}

    /// Hands the driver its RAS sink, through which it reports errors (from a monitor
    /// thread, an interrupt handler, a job…). Called once, at registration.
    fn ras_attach(&self, _sink: RasSink) {}

    /// Recovers a RAS node (e.g. resets the block). Called by the node's reporter.
    fn ras_recover(&self, _node: &str) -> Result<(), Errno> {
        Ok(())
    }

    /// Injects `count` errors of `error` in block `node` (test devices). Default: `EOPNOTSUPP`.
    fn ras_inject(&self, _node: &str, _error: &str, _count: u64) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }

    /// The device's sensors and identity, read when monitoring asks (each `/metrics` scrape):
    /// cheap, non-blocking. Default: nothing known.
    fn telemetry(&self) -> Telemetry {
        Telemetry::default()
    }

    /// Regions besides host memory; they get ids 1, 2, … in this order. Default: none.
    fn regions(&self) -> Vec<RegionDesc> {
        Vec::new()
    }

    /// Allocates `size` bytes in region `region` (an index into [`Driver::regions`], from
    /// 0). The core zeroes it ([`DeviceMemory::zero`]) before a client sees it.
    fn alloc(&self, _region: usize, _size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        Err(DriverError::new(Errno::EOPNOTSUPP, "this driver has no memory of its own"))
    }

    /// Imports device memory another runtime exported (`BoImportExternal`): a Vulkan opaque
    /// descriptor, a CUDA POSIX handle, of `size` bytes as its exporter allocated them, into
    /// region `region` (an index into [`Driver::regions`]). The memory is the exporter's,
    /// shared, never copied, and never zeroed (its contents are the point). A descriptor the
    /// driver cannot take is `EINVAL`; a driver that imports none (the default) `EOPNOTSUPP`.
    fn import_external(
        &self,
        _region: usize,
        _fd: std::os::fd::OwnedFd,
        _size: u64,
    ) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        Err(DriverError::new(Errno::EOPNOTSUPP, "this driver imports no memory of other runtimes"))
    }

    /// Program formats [`Driver::load_program`] takes (`builtin`, `spirv`, ...). Default: none.
    fn program_formats(&self) -> Vec<String> {
        Vec::new()
    }

    /// Loads and validates a program; a bad one is `EINVAL` with the driver's reason.
    fn load_program(&self, format: &str, _bytes: &[u8]) -> Result<Arc<dyn Program>, DriverError> {
        Err(DriverError::new(Errno::EOPNOTSUPP, format!("this driver loads no programs (format {format:?})")))
    }
}

/// A driver seen by RAS (which sits below drivers and knows only [`RasHooks`]).
pub struct RasOf(pub Arc<dyn Driver>);

impl RasHooks for RasOf {
    fn ras_attach(&self, sink: RasSink) {
        self.0.ras_attach(sink)
    }

    fn ras_recover(&self, node: &str) -> Result<(), Errno> {
        self.0.ras_recover(node)
    }

    fn ras_inject(&self, node: &str, error: &str, count: u64) -> Result<(), Errno> {
        self.0.ras_inject(node, error, count)
    }
}

/// Host-memory implementations of the simple portable ops, for drivers whose
/// buffers are host memory (cpu, testdev).
pub mod host {
    use super::BoRange;

    use accel_uapi::Errno;

    /// Fills `dst` (host memory) with the little-endian `pattern`.
    pub fn fill(dst: &BoRange, pattern: u32) -> Result<(), Errno> {
        dst.host().ok_or(Errno::EOPNOTSUPP)?.fill_u32(pattern);
        Ok(())
    }

    /// Copies `src` to `dst` (host memory; equal lengths; overlap allowed).
    pub fn copy(src: &BoRange, dst: &BoRange) -> Result<(), Errno> {
        let (s, d) = (src.host().ok_or(Errno::EOPNOTSUPP)?, dst.host().ok_or(Errno::EOPNOTSUPP)?);
        s.copy_to(&d);
        Ok(())
    }
}
