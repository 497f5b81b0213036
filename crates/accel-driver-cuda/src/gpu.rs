//! The worker's CUDA context: one per worker process, with its compute streams (a cuBLAS
//! handle each) and a copy stream.
//!
//! Why a worker process: a CUDA context poisoned by a sticky error (an illegal address, …)
//! poisons the whole process: measured on driver 580, even destroying the context and
//! creating a new one (`cuCtxCreate`) fails with the same error afterwards, and so does
//! destroying a context whose kernel never ends. So the only way to contain a client's fault
//! is to lose the process, not the daemon: see [`crate::worker`] and the daemon side in
//! the crate root.

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::check;
use crate::cublas::{Cublas, Handle};

/// Bytes of cuBLAS's workspace, per compute stream.
const CUBLAS_WORKSPACE: usize = 32 << 20;

/// One context and its streams.
pub(crate) struct Gpu {
    pub(crate) ordinal: i32,
    pub(crate) ctx: sys::CUcontext,
    /// The compute streams (one per compute channel), then the copy stream.
    pub(crate) streams: Vec<sys::CUstream>,
    /// An event per stream (no timing), recorded after each job's work: see [`Gpu::finished`].
    events: Vec<sys::CUevent>,
    /// cuBLAS and a handle per compute stream, or why GEMM cannot run.
    pub(crate) blas: Result<(Cublas, Vec<std::sync::Mutex<Handle>>), String>,
}

// SAFETY: CUDA contexts, streams and cuBLAS handles may be used from any thread once the
// context is made current there; each cuBLAS handle is behind a mutex (not thread-safe).
unsafe impl Send for Gpu {}
// SAFETY: as above.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// A new context on device `dev` with `compute` compute streams and a copy stream.
    pub(crate) fn open(ordinal: i32, dev: sys::CUdevice, compute: usize) -> Result<Gpu, DriverError> {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: out pointers to locals throughout.
        unsafe {
            check(sys::cuCtxCreate_v2(&mut ctx, 0, dev), "cuCtxCreate")?;
            let mut streams = vec![std::ptr::null_mut(); compute + 1];
            for s in &mut streams {
                check(sys::cuStreamCreate(s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32), "cuStreamCreate")?;
            }
            let mut events = vec![std::ptr::null_mut(); streams.len()];
            for e in &mut events {
                check(sys::cuEventCreate(e, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32), "cuEventCreate")?;
            }
            let blas = match Cublas::load() {
                Ok(lib) => {
                    tracing::info!("cuda: cuBLAS from {}", lib.path);
                    let mut handles = Vec::with_capacity(compute);
                    for stream in &streams[..compute] {
                        // The workspace NVIDIA recommends for Hopper (4 MiB suffices before
                        // it); without one cuBLAS picks slower kernels for some shapes.
                        let mut workspace = 0;
                        let size = match sys::cuMemAlloc_v2(&mut workspace, CUBLAS_WORKSPACE) {
                            sys::CUresult::CUDA_SUCCESS => CUBLAS_WORKSPACE,
                            _ => 0,
                        };
                        let handle = lib
                            .create(stream.cast(), (workspace, size))
                            .map_err(|e| DriverError::new(Errno::ENODEV, e.message))?;
                        handles.push(std::sync::Mutex::new(handle));
                    }
                    Ok((lib, handles))
                }
                Err(why) => {
                    tracing::warn!("cuda: GEMM unavailable: {why}");
                    Err(why)
                }
            };
            Ok(Gpu { ordinal, ctx, streams, events, blas })
        }
    }

    /// Makes the context current on the calling thread.
    pub(crate) fn enter(&self) -> Result<(), DriverError> {
        // SAFETY: a live context.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    /// Marks the end of the work enqueued on `stream` so far, for [`Gpu::finished`].
    pub(crate) fn record(&self, stream: usize) -> Result<(), DriverError> {
        // SAFETY: a live event and stream of this context.
        check(unsafe { sys::cuEventRecord(self.events[stream], self.streams[stream]) }, "cuEventRecord")
    }

    /// Waits until the work recorded last on `stream` ([`Gpu::record`]) is done, though what
    /// was enqueued after it may not be: how the worker learns a job's end before its
    /// completion mark (enqueued after the record) has landed.
    pub(crate) fn finished(&self, stream: usize) -> Result<(), DriverError> {
        // SAFETY: a live event of this context.
        check(unsafe { sys::cuEventSynchronize(self.events[stream]) }, "cuEventSynchronize")
    }

    /// Waits for stream `stream` to drain. A kernel that never ends blocks here until the
    /// daemon kills this process (the job's timeout).
    pub(crate) fn sync(&self, stream: usize) -> Result<(), DriverError> {
        // SAFETY: a live stream of this context.
        check(unsafe { sys::cuStreamSynchronize(self.streams[stream]) }, "cuStreamSynchronize")
    }
}
