//! The worker's CUDA context: one per worker process, with a compute and a copy stream and
//! a cuBLAS handle.
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

/// One context and its streams.
pub(crate) struct Gpu {
    pub(crate) ordinal: i32,
    pub(crate) ctx: sys::CUcontext,
    /// Stream 0 computes, stream 1 copies.
    pub(crate) streams: [sys::CUstream; 2],
    /// cuBLAS and this context's handle, or why GEMM cannot run.
    pub(crate) blas: Result<(Cublas, std::sync::Mutex<Handle>), String>,
}

// SAFETY: CUDA contexts, streams and cuBLAS handles may be used from any thread once the
// context is made current there; the cuBLAS handle is behind a mutex (not thread-safe).
unsafe impl Send for Gpu {}
// SAFETY: as above.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// A new context on device `dev`.
    pub(crate) fn open(ordinal: i32, dev: sys::CUdevice) -> Result<Gpu, DriverError> {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: out pointers to locals throughout.
        unsafe {
            check(sys::cuCtxCreate_v2(&mut ctx, 0, dev), "cuCtxCreate")?;
            let mut streams = [std::ptr::null_mut(); 2];
            for s in &mut streams {
                check(sys::cuStreamCreate(s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32), "cuStreamCreate")?;
            }
            let blas = match Cublas::load() {
                Ok(lib) => {
                    tracing::info!("cuda: cuBLAS from {}", lib.path);
                    let handle = lib.create().map_err(|e| DriverError::new(Errno::ENODEV, e.message))?;
                    Ok((lib, std::sync::Mutex::new(handle)))
                }
                Err(why) => {
                    tracing::warn!("cuda: GEMM unavailable: {why}");
                    Err(why)
                }
            };
            Ok(Gpu { ordinal, ctx, streams, blas })
        }
    }

    /// Makes the context current on the calling thread.
    pub(crate) fn enter(&self) -> Result<(), DriverError> {
        // SAFETY: a live context.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    /// Waits for `engine`'s stream to drain. A kernel that never ends blocks here until the
    /// daemon kills this process (the job's timeout).
    pub(crate) fn sync(&self, engine: usize) -> Result<(), DriverError> {
        // SAFETY: a live stream of this context.
        check(unsafe { sys::cuStreamSynchronize(self.streams[engine]) }, "cuStreamSynchronize")
    }
}
