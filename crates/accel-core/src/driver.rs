//! The driver interface: what a driver implements to get device nodes, memory
//! handles, scheduling, fences and accounting from the core.
//!
//! The hooks mirror `drm_sched_backend_ops`: [`Driver::run_job`] runs one job on
//! the engine, [`Driver::timedout_job`] resets the engine after the watchdog
//! fired. Buffers are host memory the core allocates (memfd), so a host-memory
//! driver needs no allocator of its own.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use accel_uapi::{Category, EngineInfo, Errno, OpKind};

use crate::bo::{BoMatrix, BoRange};
use crate::lock;
use crate::ras::{RasNodeDesc, RasSink};

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
    /// Driver-private operation.
    Driver {
        /// Driver-defined code.
        code: u32,
        /// Driver-defined arguments.
        args: [u64; 4],
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
}

/// One accelerator driver.
pub trait Driver: Send + Sync + 'static {
    /// Describes the device.
    fn info(&self) -> DriverInfo;

    /// Which engine (index into [`DriverInfo::engines`]) runs `op`. Default: engine 0.
    fn engine_for(&self, _op: &JobOp) -> usize {
        0
    }

    /// Runs a job to completion on the calling slot thread of `engine`. Up to the
    /// engine's credits run at once.
    ///
    /// An error becomes the job fence's error. Work that can take long must
    /// return once `ctx.abort` is set (timeout, reset, or the client went away).
    fn run_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), Errno>;

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
}

/// Host-memory implementations of the simple portable ops, for drivers whose
/// buffers are host memory (cpu, testdev).
pub mod host {
    use super::BoRange;

    /// Fills `dst` with the little-endian `pattern`.
    pub fn fill(dst: &BoRange, pattern: u32) {
        let bytes = pattern.to_le_bytes();
        let p = dst.ptr();
        for i in 0..dst.len {
            // SAFETY: i < dst.len and the range lies inside the live mapping (checked by core).
            unsafe { p.add(i).write_volatile(bytes[i % 4]) };
        }
    }

    /// Copies `src` to `dst` (equal lengths; overlap allowed).
    pub fn copy(src: &BoRange, dst: &BoRange) {
        // SAFETY: both ranges lie inside live mappings and have the same length (checked by
        // core); `copy` is memmove, so overlap is fine.
        unsafe { std::ptr::copy(src.ptr(), dst.ptr(), dst.len.min(src.len)) };
    }
}
