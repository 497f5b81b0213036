//! Option (c) of the context model, measured: green contexts (CUDA 12.4 on: a context over a
//! partition of the GPU's SMs) against streams of one ordinary context, which is what the
//! worker runs its queues on. Both live in one process, so the questions are what a
//! partition costs in throughput for many small kernels, and whether a fault in one green
//! context spares the others (it cannot spare them across a process, CUDA's sticky errors
//! being per process: this checks it inside one).

use std::ffi::{c_void, CString};
use std::time::{Duration, Instant};

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::direct::KERNELS_PTX;
use crate::{check, device_count};

/// One thread's place to launch: a context, a stream of it, the kernels, scratch memory.
struct Lane {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    functions: Vec<sys::CUfunction>,
    scratch: sys::CUdeviceptr,
}

// SAFETY: CUDA handles may be used from any thread once their context is made current there
// (each lane's thread does so first).
unsafe impl Send for Lane {}

/// Lanes on GPU `ordinal`, each with the entries `entries` of [`KERNELS_PTX`] loaded.
struct Lanes {
    lanes: Vec<Lane>,
    /// Green contexts made (destroyed on drop), empty for an ordinary context.
    green: Vec<sys::CUgreenCtx>,
    /// The ordinary context (destroyed on drop), null with green contexts.
    plain: sys::CUcontext,
    /// SMs each green context has (0: the whole GPU).
    sms_each: u32,
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // SAFETY: contexts this value made; what lives in them goes with them.
        unsafe {
            for g in self.green.drain(..) {
                sys::cuGreenCtxDestroy(g);
            }
            if !self.plain.is_null() {
                sys::cuCtxDestroy_v2(self.plain);
            }
        }
    }
}

/// Loads the kernels in the current context and makes the lane's scratch memory.
///
/// # Safety
/// `ctx` is current on this thread.
unsafe fn lane(ctx: sys::CUcontext, stream: sys::CUstream, entries: &[&str]) -> Result<Lane, DriverError> {
    let image = CString::new(KERNELS_PTX).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: a NUL inside"))?;
    // SAFETY: per the contract; out pointers to locals.
    unsafe {
        let mut module = std::ptr::null_mut();
        check(sys::cuModuleLoadData(&mut module, image.as_ptr().cast()), "cuModuleLoadData")?;
        let mut functions = Vec::new();
        for e in entries {
            let name = CString::new(*e).map_err(|_| DriverError::new(Errno::EINVAL, "a NUL inside"))?;
            let mut f = std::ptr::null_mut();
            check(sys::cuModuleGetFunction(&mut f, module, name.as_ptr()), "cuModuleGetFunction")?;
            functions.push(f);
        }
        let mut scratch = 0;
        check(sys::cuMemAlloc_v2(&mut scratch, 4096), "cuMemAlloc")?;
        check(sys::cuMemsetD32_v2(scratch, 0, 1024), "cuMemsetD32")?;
        Ok(Lane { ctx, stream, functions, scratch })
    }
}

/// `n` lanes: in green contexts over the SMs split `n` ways (`green`), else streams of one
/// ordinary context.
fn lanes(ordinal: usize, n: usize, green: bool, entries: &[&str]) -> Result<Lanes, DriverError> {
    if ordinal >= device_count()? {
        return Err(DriverError::new(Errno::ENODEV, format!("cuda: no device {ordinal}")));
    }
    let non_blocking = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
    // SAFETY: out pointers to locals; every handle is used after it was made, in its context.
    unsafe {
        let mut dev = 0;
        check(sys::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")?;
        let mut out = Lanes { lanes: Vec::new(), green: Vec::new(), plain: std::ptr::null_mut(), sms_each: 0 };
        if !green {
            check(sys::cuCtxCreate_v2(&mut out.plain, 0, dev), "cuCtxCreate")?;
            for _ in 0..n {
                let mut stream = std::ptr::null_mut();
                check(sys::cuStreamCreate(&mut stream, non_blocking), "cuStreamCreate")?;
                out.lanes.push(lane(out.plain, stream, entries)?);
            }
            return Ok(out);
        }
        let mut all: sys::CUdevResource = std::mem::zeroed();
        check(
            sys::cuDeviceGetDevResource(dev, &mut all, sys::CUdevResourceType::CU_DEV_RESOURCE_TYPE_SM),
            "cuDeviceGetDevResource",
        )?;
        let total = all.__bindgen_anon_1.sm.smCount;
        let mut groups: Vec<sys::CUdevResource> = vec![std::mem::zeroed(); n];
        let (mut count, mut rest) = (n as u32, std::mem::zeroed::<sys::CUdevResource>());
        let min = (total / n as u32).max(1);
        check(
            sys::cuDevSmResourceSplitByCount(groups.as_mut_ptr(), &mut count, &all, &mut rest, 0, min),
            "cuDevSmResourceSplitByCount",
        )?;
        if count == 0 {
            return Err(DriverError::new(Errno::EINVAL, format!("cuda: {total} SMs do not split {n} ways")));
        }
        out.sms_each = groups[0].__bindgen_anon_1.sm.smCount;
        for g in groups.iter_mut().take(count as usize) {
            let mut desc = std::ptr::null_mut();
            check(sys::cuDevResourceGenerateDesc(&mut desc, g, 1), "cuDevResourceGenerateDesc")?;
            let mut green = std::ptr::null_mut();
            let flags = sys::CUgreenCtxCreate_flags::CU_GREEN_CTX_DEFAULT_STREAM as u32;
            check(sys::cuGreenCtxCreate(&mut green, desc, dev, flags), "cuGreenCtxCreate")?;
            out.green.push(green);
        }
        // Lanes take the green contexts in turn (the split may give fewer than asked).
        for i in 0..n {
            let green = out.green[i % out.green.len()];
            let mut ctx = std::ptr::null_mut();
            check(sys::cuCtxFromGreenCtx(&mut ctx, green), "cuCtxFromGreenCtx")?;
            check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            let mut stream = std::ptr::null_mut();
            check(sys::cuGreenCtxStreamCreate(&mut stream, green, non_blocking, 0), "cuGreenCtxStreamCreate")?;
            out.lanes.push(lane(ctx, stream, entries)?);
        }
        Ok(out)
    }
}

/// Launches function `f` of the lane on one block with (scratch, `value`) and waits for it.
fn launch(l: &Lane, f: usize, value: u32) -> Result<(), DriverError> {
    let (mut p, mut v) = (l.scratch, value);
    let mut params: [*mut c_void; 2] = [(&mut p as *mut u64).cast(), (&mut v as *mut u32).cast()];
    // Every kernel of KERNELS_PTX is one thread (`.reqntid 1, 1, 1`).
    let b = [1u32; 3];
    // SAFETY: the lane's context, function and stream; the parameters point at live locals.
    unsafe {
        check(sys::cuCtxSetCurrent(l.ctx), "cuCtxSetCurrent")?;
        let r = sys::cuLaunchKernel(
            l.functions[f],
            1,
            1,
            1,
            b[0],
            b[1],
            b[2],
            0,
            l.stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        );
        check(r, "cuLaunchKernel")?;
        check(sys::cuStreamSynchronize(l.stream), "cuStreamSynchronize")
    }
}

/// What [`throughput`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Kernels completed per second, all threads together.
    pub kernels_per_s: f64,
    /// Green contexts made (0: streams of one ordinary context).
    pub contexts: usize,
    /// SMs of each green context (0: the whole GPU).
    pub sms_each: u32,
}

/// `threads` threads, each on a lane of its own, launch the `spin` kernel of `kernel_ns`
/// back to back for `seconds`: in green contexts (`green`) or streams of one context.
pub fn throughput(
    ordinal: usize,
    threads: usize,
    green: bool,
    kernel_ns: u32,
    seconds: f64,
) -> Result<Throughput, DriverError> {
    let mut set = lanes(ordinal, threads.max(1), green, &["spin"])?;
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    // Each thread owns its lane; the contexts (in `set`) outlive the threads.
    let counts: Vec<Result<u64, DriverError>> = std::thread::scope(|s| {
        let handles: Vec<_> = std::mem::take(&mut set.lanes)
            .into_iter()
            .map(|l| {
                s.spawn(move || {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        launch(&l, 0, kernel_ns)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Errno::EIO.into()))).collect()
    });
    let total: u64 = counts.into_iter().collect::<Result<Vec<_>, _>>()?.iter().sum();
    Ok(Throughput { kernels_per_s: total as f64 / seconds, contexts: set.green.len(), sms_each: set.sms_each })
}

/// Two green contexts in this process: the `fault` kernel in the first, then the `spin`
/// kernel in the second. Returns the fault's error and what the second launch gave (`None`:
/// it ran). This poisons the process when CUDA's sticky errors are per process: call it in
/// a process of its own.
pub fn fault_in_one_green_context() -> Result<(String, Option<String>), DriverError> {
    let set = lanes(0, 2, true, &["spin", "fault"])?;
    let fault = match launch(&set.lanes[0], 1, 0) {
        Ok(()) => return Err(DriverError::new(Errno::EIO, "cuda: the fault kernel did not fault")),
        Err(e) => e.message,
    };
    let other = launch(&set.lanes[1], 0, 1_000).err().map(|e| e.message);
    Ok((fault, other))
}
