//! The device's CUDA context, and its recovery.
//!
//! One context per device, shared by every client (MPS-style throughput), with per-client
//! fault containment done here: an error that poisons a CUDA context (an illegal address)
//! or a kernel that never ends (the core's job timeout) is answered by **recovering**: the
//! context is destroyed (which ends whatever runs in it) and made anew, every live
//! allocation is imported again from the POSIX descriptor it was exported to at birth (the
//! descriptor keeps the physical memory, and so the data, alive across the context) and
//! mapped at its old address where the driver allows, and programs reload on their next
//! launch. Jobs that were running and did nothing wrong are replayed in the new context;
//! only the guilty job fails (the drm_sched/amdgpu model: guilty job errored, innocent
//! jobs resubmitted after the reset).
//!
//! Concurrency: jobs and memory operations [`Gpu::enter`] (a count of users); a recovery
//! raises `resetting`, waits for the count to reach zero (running jobs notice and step
//! out to be replayed), recovers, and lets everyone back in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use accel_hal::driver::{DriverError, JobCtx};
use accel_hal::lock;
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::check;
use crate::cublas::{Cublas, Handle};
use crate::memory::Mapping;

/// The handles of one incarnation of the device's context.
#[derive(Clone, Copy)]
pub(crate) struct Ctx {
    pub(crate) ctx: sys::CUcontext,
    /// Stream 0 computes, stream 1 copies.
    pub(crate) streams: [sys::CUstream; 2],
    /// This context's cuBLAS handle (none when cuBLAS was not found).
    pub(crate) blas: Option<Handle>,
    /// Counts recoveries: programs compare it to know they must reload.
    pub(crate) generation: u64,
}

/// Who may use the context now.
struct Gate {
    ctx: Ctx,
    /// Users inside (jobs, allocations, …).
    active: usize,
    /// A recovery waits for (or is doing) its turn.
    resetting: bool,
}

/// One GPU: its context, its allocations, its recoveries.
pub(crate) struct Gpu {
    pub(crate) ordinal: i32,
    dev: sys::CUdevice,
    pub(crate) blas_lib: Result<Cublas, String>,
    gate: Mutex<Gate>,
    turn: Condvar,
    /// The cuBLAS handle is not thread-safe: GEMMs take turns.
    pub(crate) blas_lock: Mutex<()>,
    /// Every live allocation, to be imported again after a recovery.
    pub(crate) mappings: Mutex<Vec<Weak<Mapping>>>,
    /// Recoveries so far.
    pub(crate) recoveries: AtomicU64,
}

// SAFETY: CUDA contexts, streams and cuBLAS handles may be used from any thread once the
// context is made current there; the cuBLAS handle is used under `blas_lock`.
unsafe impl Send for Gpu {}
// SAFETY: as above.
unsafe impl Sync for Gpu {}

/// A user's pass into the context: made current on this thread; leaving lets a waiting
/// recovery run.
pub(crate) struct Entered<'a> {
    gpu: &'a Gpu,
    pub(crate) ctx: Ctx,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let mut gate = lock(&self.gpu.gate);
        gate.active -= 1;
        if gate.active == 0 {
            self.gpu.turn.notify_all();
        }
    }
}

/// How waiting for a stream ended, when not with success.
pub(crate) enum Stop {
    /// An error; `lost` when it poisoned the context.
    Failed(DriverError),
    /// A recovery is waiting: step out, and run again once it is done.
    Recovering,
    /// The core aborted the job (timeout, reset, client gone).
    Aborted,
}

impl From<DriverError> for Stop {
    fn from(e: DriverError) -> Stop {
        Stop::Failed(e)
    }
}

impl Gpu {
    /// Opens GPU `ordinal` with a fresh context.
    pub(crate) fn open(ordinal: i32, dev: sys::CUdevice) -> Result<Gpu, DriverError> {
        let blas_lib = Cublas::load();
        match &blas_lib {
            Ok(lib) => tracing::info!("cuda: cuBLAS from {}", lib.path),
            Err(why) => tracing::warn!("cuda: GEMM unavailable: {why}"),
        }
        let ctx = new_ctx(dev, blas_lib.as_ref().ok(), 0)?;
        Ok(Gpu {
            ordinal,
            dev,
            blas_lib,
            gate: Mutex::new(Gate { ctx, active: 0, resetting: false }),
            turn: Condvar::new(),
            blas_lock: Mutex::new(()),
            mappings: Mutex::new(Vec::new()),
            recoveries: AtomicU64::new(0),
        })
    }

    /// Enters the context (waiting out a recovery) and makes it current on this thread.
    /// Never nest: a recovery waits for every pass to be dropped.
    pub(crate) fn enter(&self) -> Result<Entered<'_>, DriverError> {
        let mut gate = lock(&self.gate);
        while gate.resetting {
            gate = self.turn.wait(gate).unwrap_or_else(|p| p.into_inner());
        }
        gate.active += 1;
        let pass = Entered { gpu: self, ctx: gate.ctx };
        drop(gate);
        // SAFETY: a live context (recoveries wait for this pass).
        check(unsafe { sys::cuCtxSetCurrent(pass.ctx.ctx) }, "cuCtxSetCurrent")?;
        Ok(pass)
    }

    /// The context's handles without entering (for teardown, which must not wait).
    pub(crate) fn current(&self) -> Ctx {
        lock(&self.gate).ctx
    }

    fn resetting(&self) -> bool {
        lock(&self.gate).resetting
    }

    /// Waits for `engine`'s stream of the entered context to drain, giving up when a
    /// recovery waits or the job is aborted. Polls, spinning briefly, then yielding, then
    /// sleeping: a job's latency stays in microseconds and a long kernel costs no core.
    pub(crate) fn wait(&self, pass: &Entered<'_>, engine: usize, job: Option<&JobCtx>) -> Result<(), Stop> {
        let start = Instant::now();
        let stream = pass.ctx.streams[engine];
        let mut polls = 0u32;
        loop {
            // SAFETY: a stream of the entered context.
            match unsafe { sys::cuStreamQuery(stream) } {
                sys::CUresult::CUDA_SUCCESS => return Ok(()),
                sys::CUresult::CUDA_ERROR_NOT_READY => {}
                r => return Err(Stop::Failed(check(r, "cuStreamQuery").unwrap_err())),
            }
            polls += 1;
            if polls.is_multiple_of(64) {
                if job.is_some_and(|j| j.abort.is_aborted()) {
                    return Err(Stop::Aborted);
                }
                if self.resetting() {
                    return Err(Stop::Recovering);
                }
            }
            let waited = start.elapsed();
            if waited < Duration::from_micros(50) {
                std::hint::spin_loop();
            } else if waited < Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Recovers the context, unless a recovery already did since `seen` (the generation
    /// the caller used): destroys it (ending what runs in it), makes a new one, maps every
    /// live allocation again. The caller holds no pass. An error means the device cannot
    /// be recovered.
    pub(crate) fn recover(&self, seen: Option<u64>, why: &str) -> Result<(), DriverError> {
        let mut gate = lock(&self.gate);
        while gate.resetting {
            gate = self.turn.wait(gate).unwrap_or_else(|p| p.into_inner());
        }
        if seen.is_some_and(|g| g != gate.ctx.generation) {
            return Ok(());
        }
        gate.resetting = true;
        while gate.active > 0 {
            gate = self.turn.wait(gate).unwrap_or_else(|p| p.into_inner());
        }
        let old = gate.ctx;
        drop(gate);
        let started = Instant::now();
        let result = self.rebuild(old);
        let mut gate = lock(&self.gate);
        gate.resetting = false;
        let outcome = match result {
            Ok(ctx) => {
                gate.ctx = ctx;
                self.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cuda{}: context recovered after {why} in {:.1} ms",
                    self.ordinal,
                    started.elapsed().as_secs_f64() * 1e3
                );
                Ok(())
            }
            Err(e) => Err(DriverError::device_lost(format!("cuda: recovery after {why} failed: {}", e.message))),
        };
        self.turn.notify_all();
        outcome
    }

    fn rebuild(&self, old: Ctx) -> Result<Ctx, DriverError> {
        let live: Vec<_> = {
            let mut m = lock(&self.mappings);
            m.retain(|w| w.strong_count() > 0);
            m.iter().filter_map(Weak::upgrade).collect()
        };
        // SAFETY: no pass is out; the old context's objects are let go of before it goes.
        unsafe {
            sys::cuCtxSetCurrent(old.ctx);
            for m in &live {
                m.unmap();
            }
            if let (Some(h), Ok(lib)) = (old.blas, &self.blas_lib) {
                lib.destroy(h);
            }
            check(sys::cuCtxDestroy_v2(old.ctx), "cuCtxDestroy")?;
            // Clears what the device holds for this process (a no-op when the primary
            // context was never used).
            let reset = sys::cuDevicePrimaryCtxReset_v2(self.dev);
            if reset != sys::CUresult::CUDA_SUCCESS {
                tracing::warn!("cuda{}: cuDevicePrimaryCtxReset: {reset:?}", self.ordinal);
            }
        }
        let ctx = new_ctx(self.dev, self.blas_lib.as_ref().ok(), old.generation + 1)?;
        for m in &live {
            m.map(self.ordinal)?;
        }
        Ok(ctx)
    }

    /// Recovers the context if `engine`'s stream still has work (or the context is
    /// poisoned): the job that put it there was aborted. Else nothing to do.
    pub(crate) fn recover_if_busy(&self, engine: usize, why: &str) -> Result<(), DriverError> {
        let (busy, generation) = {
            let pass = self.enter()?;
            // SAFETY: a stream of the entered context.
            let r = unsafe { sys::cuStreamQuery(pass.ctx.streams[engine]) };
            (r != sys::CUresult::CUDA_SUCCESS, pass.ctx.generation)
        };
        if busy {
            self.recover(Some(generation), why)
        } else {
            Ok(())
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let ctx = self.current();
        // SAFETY: every allocation and program holds the Gpu: nothing uses the context.
        unsafe {
            sys::cuCtxSetCurrent(ctx.ctx);
            if let (Some(h), Ok(lib)) = (ctx.blas, &self.blas_lib) {
                lib.destroy(h);
            }
            sys::cuCtxDestroy_v2(ctx.ctx);
        }
    }
}

/// A new context with two streams and a cuBLAS handle, current on this thread.
fn new_ctx(dev: sys::CUdevice, blas: Option<&Cublas>, generation: u64) -> Result<Ctx, DriverError> {
    let mut ctx = std::ptr::null_mut();
    // SAFETY: out pointers to locals throughout.
    unsafe {
        check(sys::cuCtxCreate_v2(&mut ctx, 0, dev), "cuCtxCreate")?;
        let mut streams = [std::ptr::null_mut(); 2];
        for s in &mut streams {
            check(sys::cuStreamCreate(s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32), "cuStreamCreate")?;
        }
        let blas = match blas {
            Some(lib) => Some(lib.create().map_err(|e| DriverError::new(Errno::ENODEV, e.message))?),
            None => None,
        };
        Ok(Ctx { ctx, streams, blas, generation })
    }
}
