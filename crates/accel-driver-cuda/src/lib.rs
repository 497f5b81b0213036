//! The `cuda` driver: NVIDIA GPUs through the CUDA driver API and cuBLAS, loaded at run time
//! (`cudarc`'s dynamic loading): the daemon builds and runs on machines without CUDA, and
//! opening a cuda device there fails with the reason.
//!
//! - **Memory** ([`memory`]): a `vram` region allocated with the virtual memory management
//!   API (`cuMemCreate` with POSIX-fd shareable handles, `cuMemMap`), so export gives a
//!   descriptor another process imports into its own context
//!   (`cuMemImportFromShareableHandle`). Host memory (the clients' memfds) is reached with
//!   pageable copies; kernels and cuBLAS get device copies of host operands (staged).
//! - **Engines**: compute and copy, each its own stream of the device's one context ([`gpu`]);
//!   a job is enqueued on its engine's stream and its completion polled, so an aborted job
//!   (timeout, client gone) returns at once.
//! - **Ops**: fill (`cuMemsetD32Async`), copy between every pair of regions, GEMM f32 through
//!   cuBLAS, and launches of `ptx` programs (`cuModuleLoadData`, `cuLaunchKernel`) whose
//!   entries and parameters are read from the PTX text.
//! - **Faults are contained** ([`gpu`]): an error that poisons the context (illegal address,
//!   …) or a kernel that outlives its queue's timeout is answered by recovering the context;
//!   the guilty job fails, every other client's jobs and memory carry on. Only a failed
//!   recovery is device loss (the core wedges the device).
//!
//! Not done yet: NVML telemetry and RAS, `cubin` programs, imports of other processes'
//! exports, green contexts. `scripts/gpu-check.sh` runs this crate's tests on a lent GPU.

mod cublas;
pub mod direct;
pub mod gpu;
pub mod memory;
mod program;
mod ptx;

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use accel_hal::bo::BoRange;
use accel_hal::driver::{
    DeviceMemory, Driver, DriverError, DriverInfo, JobArg, JobCtx, JobOp, Program, RegionDesc, Telemetry,
};
use accel_uapi::{Category, EngineInfo, Errno, OpKind, ParamKind, RegionKind};
use cudarc::driver::sys;

use gpu::{Entered, Gpu, Stop};
use memory::CudaMem;
pub use program::CudaProgram;
pub use ptx::{entries as ptx_entries, DEFAULT_BLOCK};

/// Format name of PTX programs.
pub const FORMAT: &str = "ptx";

/// Errors that leave a CUDA context unusable: every later call fails, so the device is lost.
const STICKY: &[sys::CUresult] = &[
    sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
    sys::CUresult::CUDA_ERROR_LAUNCH_FAILED,
    sys::CUresult::CUDA_ERROR_HARDWARE_STACK_ERROR,
    sys::CUresult::CUDA_ERROR_ILLEGAL_INSTRUCTION,
    sys::CUresult::CUDA_ERROR_MISALIGNED_ADDRESS,
    sys::CUresult::CUDA_ERROR_INVALID_PC,
    sys::CUresult::CUDA_ERROR_ECC_UNCORRECTABLE,
];

/// A CUDA call's result as a driver error carrying CUDA's own name and text.
fn check(r: sys::CUresult, what: &str) -> Result<(), DriverError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let e = cudarc::driver::result::DriverError(r);
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{r:?}"));
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let message = format!("cuda: {what}: {name}: {text}");
    Err(match r {
        r if STICKY.contains(&r) => DriverError::device_lost(message),
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => DriverError::new(Errno::ENOMEM, message),
        sys::CUresult::CUDA_ERROR_INVALID_PTX
        | sys::CUresult::CUDA_ERROR_INVALID_IMAGE
        | sys::CUresult::CUDA_ERROR_NOT_FOUND
        | sys::CUresult::CUDA_ERROR_INVALID_VALUE => DriverError::new(Errno::EINVAL, message),
        _ => DriverError::new(Errno::EIO, message),
    })
}

fn no_cuda() -> Result<(), DriverError> {
    // SAFETY: only probes for the library; loads nothing it keeps.
    if !unsafe { sys::is_culib_present() } {
        return Err(DriverError::new(
            Errno::ENODEV,
            "cuda: no NVIDIA driver here (libcuda.so.1 not found): install the NVIDIA driver",
        ));
    }
    // SAFETY: cuInit may be called any number of times.
    check(unsafe { sys::cuInit(0) }, "cuInit")
}

/// How many CUDA devices this machine has; `ENODEV` with the reason when there is no driver.
pub fn device_count() -> Result<usize, DriverError> {
    no_cuda()?;
    let mut n = 0;
    // SAFETY: out pointer to a local.
    check(unsafe { sys::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount")?;
    Ok(n.max(0) as usize)
}


/// A job operand: a device address, or host memory.
enum Place<'a> {
    Device(sys::CUdeviceptr),
    Host(accel_hal::mem::VolatileSlice<'a>),
}

fn place(r: &BoRange) -> Result<Place<'_>, DriverError> {
    if let Some(m) = r.bo.device() {
        let m = m
            .as_any()
            .downcast_ref::<CudaMem>()
            .ok_or_else(|| DriverError::new(Errno::EINVAL, "cuda: another device's memory"))?;
        return Ok(Place::Device(m.ptr() + r.offset as u64));
    }
    r.host().map(Place::Host).ok_or_else(|| DriverError::new(Errno::EINVAL, "cuda: a buffer with no memory"))
}

/// Host operands staged in device memory for the job, copied back after it.
type Staged<'a> = Vec<(CudaMem, accel_hal::mem::VolatileSlice<'a>)>;

/// One NVIDIA GPU as an accel device.
pub struct CudaDevice {
    gpu: Arc<Gpu>,
    name: String,
    memory: u64,
    sms: u32,
    capability: (i32, i32),
    driver_version: i32,
    uuid: String,
    pci: String,
}

impl CudaDevice {
    /// Opens CUDA device `ordinal` (a context of its own, two streams, a cuBLAS handle).
    pub fn open(ordinal: usize) -> Result<CudaDevice, DriverError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(DriverError::new(
                Errno::ENODEV,
                format!("cuda: no device {ordinal} ({count} CUDA devices here)"),
            ));
        }
        let mut dev = 0;
        // SAFETY: out pointers to locals throughout; the ordinal was checked.
        unsafe {
            check(sys::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")?;
            let gpu = Gpu::open(ordinal as i32, dev)?;
            let mut name = [0 as std::ffi::c_char; 256];
            check(sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, dev), "cuDeviceGetName")?;
            let mut memory = 0usize;
            check(sys::cuDeviceTotalMem_v2(&mut memory, dev), "cuDeviceTotalMem")?;
            let attr = |a| {
                let mut v = 0;
                check(sys::cuDeviceGetAttribute(&mut v, a, dev), "cuDeviceGetAttribute").map(|()| v)
            };
            use sys::CUdevice_attribute::*;
            let sms = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            let capability = (
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let mut driver_version = 0;
            check(sys::cuDriverGetVersion(&mut driver_version), "cuDriverGetVersion")?;
            let mut uuid: sys::CUuuid = std::mem::zeroed();
            let uuid = match sys::cuDeviceGetUuid_v2(&mut uuid, dev) {
                sys::CUresult::CUDA_SUCCESS => {
                    let b: Vec<u8> = uuid.bytes.iter().map(|c| *c as u8).collect();
                    format!(
                        "GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
                    )
                }
                _ => String::new(),
            };
            let mut pci = [0 as std::ffi::c_char; 32];
            let pci = match sys::cuDeviceGetPCIBusId(pci.as_mut_ptr(), pci.len() as i32, dev) {
                sys::CUresult::CUDA_SUCCESS => CStr::from_ptr(pci.as_ptr()).to_string_lossy().into_owned(),
                _ => String::new(),
            };
            Ok(CudaDevice {
                gpu: Arc::new(gpu),
                name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                memory: memory as u64,
                sms: sms.max(0) as u32,
                capability,
                driver_version,
                uuid,
                pci,
            })
        }
    }

    /// Context recoveries so far (faults and hangs contained).
    pub fn recoveries(&self) -> u64 {
        self.gpu.recoveries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A device copy of a host operand, for kernels and cuBLAS (copied in now).
    fn stage(
        &self,
        pass: &Entered<'_>,
        host: &accel_hal::mem::VolatileSlice<'_>,
        engine: usize,
    ) -> Result<CudaMem, DriverError> {
        let mem = CudaMem::new(&self.gpu, pass, host.len() as u64)?;
        // SAFETY: `host` is `len` bytes the job holds; the device range is at least as large.
        check(
            // SAFETY: as stated above.
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(mem.ptr(), host.as_mut_ptr().cast(), host.len(), pass.ctx.streams[engine])
            },
            "cuMemcpyHtoDAsync",
        )?;
        Ok(mem)
    }

    /// The device address of a matrix or buffer operand, staging host memory.
    fn device_ptr<'a>(
        &self,
        pass: &Entered<'_>,
        r: &'a BoRange,
        engine: usize,
        staged: &mut Staged<'a>,
    ) -> Result<sys::CUdeviceptr, DriverError> {
        match place(r)? {
            Place::Device(p) => Ok(p),
            Place::Host(h) => {
                let mem = self.stage(pass, &h, engine)?;
                let p = mem.ptr();
                staged.push((mem, h));
                Ok(p)
            }
        }
    }

    /// Waits for the work, then copies staged operands back to host memory.
    fn finish(&self, pass: &Entered<'_>, staged: Staged<'_>, engine: usize, job: &JobCtx) -> Result<(), Stop> {
        for (mem, host) in &staged {
            // SAFETY: both ranges are `host.len()` bytes and alive.
            check(
                // SAFETY: as stated above.
                unsafe {
                    sys::cuMemcpyDtoHAsync_v2(host.as_mut_ptr().cast(), mem.ptr(), host.len(), pass.ctx.streams[engine])
                },
                "cuMemcpyDtoHAsync",
            )?;
        }
        self.gpu.wait(pass, engine, Some(job))
    }

    fn gemm(&self, pass: &Entered<'_>, op: &JobOp, job: &JobCtx) -> Result<(), Stop> {
        let JobOp::GemmF32 { a, b, c, alpha, beta } = op else { unreachable!("gemm of another op") };
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| DriverError::new(Errno::EINVAL, "cuda: a GEMM dimension over 2^31"))
        };
        let (m, n, k) = (int(a.rows)?, int(b.cols)?, int(a.cols)?);
        let (lda, ldb, ldc) = (int(a.row_stride)?, int(b.row_stride)?, int(c.row_stride)?);
        let (Ok(blas), Some(handle)) = (&self.gpu.blas_lib, pass.ctx.blas) else {
            let why = self.gpu.blas_lib.as_ref().err().cloned().unwrap_or_default();
            return Err(DriverError::new(Errno::EOPNOTSUPP, format!("cuda: GEMM needs cuBLAS: {why}")).into());
        };
        let mut staged = Vec::new();
        let pa = self.device_ptr(pass, &a.range, 0, &mut staged)?;
        let pb = self.device_ptr(pass, &b.range, 0, &mut staged)?;
        let pc = self.device_ptr(pass, &c.range, 0, &mut staged)?;
        {
            let _turn = accel_hal::lock(&self.gpu.blas_lock);
            // SAFETY: the handle is this context's and ours (turn taken); every pointer spans
            // its matrix (checked by the core).
            unsafe {
                blas.sgemm_row_major(
                    handle,
                    pass.ctx.streams[0].cast(),
                    (m, n, k),
                    *alpha,
                    (pa as *const f32, lda),
                    (pb as *const f32, ldb),
                    *beta,
                    (pc as *mut f32, ldc),
                )
            }?;
        }
        // Only C was written; staged A and B go back unchanged, which is harmless.
        self.finish(pass, staged, 0, job)
    }

    fn launch(&self, pass: &Entered<'_>, op: &JobOp, job: &JobCtx) -> Result<(), Stop> {
        let JobOp::Launch { program, entry, grid, args } = op else { unreachable!("launch of another op") };
        let p = program
            .as_any()
            .downcast_ref::<CudaProgram>()
            .ok_or_else(|| DriverError::new(Errno::EINVAL, "cuda: a program of another driver"))?;
        let (f, block) = (p.function(pass, *entry as usize)?, p.blocks[*entry as usize]);
        let mut staged = Vec::new();
        // Each parameter's value, 8 bytes of room each; kernelParams points at them.
        let mut values: Vec<[u8; 8]> = Vec::with_capacity(args.len());
        for a in args {
            let mut v = [0u8; 8];
            match a {
                JobArg::Buffer(r) => v = self.device_ptr(pass, r, 0, &mut staged)?.to_ne_bytes(),
                JobArg::U32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                JobArg::F32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                JobArg::U64(x) => v = x.to_ne_bytes(),
            }
            values.push(v);
        }
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
        // SAFETY: the function belongs to a module of the entered context; `params` has one
        // pointer per PTX parameter (checked by the core against the entry), each to 8 live
        // bytes.
        check(
            // SAFETY: as stated above.
            unsafe {
                sys::cuLaunchKernel(
                    f,
                    grid[0],
                    grid[1],
                    grid[2],
                    block[0],
                    block[1],
                    block[2],
                    0,
                    pass.ctx.streams[0],
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )?;
        self.finish(pass, staged, 0, job)
    }

    fn fill(&self, pass: &Entered<'_>, dst: &BoRange, pattern: u32, engine: usize, job: &JobCtx) -> Result<(), Stop> {
        match place(dst)? {
            Place::Host(h) => {
                h.fill_u32(pattern);
                Ok(())
            }
            Place::Device(p) if p % 4 == 0 => {
                // SAFETY: the range is `dst.len` bytes (a multiple of 4) of mapped memory.
                check(
                    // SAFETY: as stated above.
                    unsafe { sys::cuMemsetD32Async(p, pattern, dst.len / 4, pass.ctx.streams[engine]) },
                    "cuMemsetD32Async",
                )?;
                self.gpu.wait(pass, engine, Some(job))
            }
            Place::Device(_) => Err(DriverError::new(Errno::EINVAL, "cuda: fills start at multiples of 4").into()),
        }
    }

    fn copy(&self, pass: &Entered<'_>, src: &BoRange, dst: &BoRange, engine: usize, job: &JobCtx) -> Result<(), Stop> {
        let s = pass.ctx.streams[engine];
        let len = src.len;
        let mut scratch = None;
        // SAFETY: both ranges are `len` bytes (checked by the core) and held by the job.
        let r = unsafe {
            match (place(src)?, place(dst)?) {
                (Place::Host(a), Place::Host(b)) => {
                    a.copy_to(&b);
                    return Ok(());
                }
                (Place::Host(a), Place::Device(d)) => sys::cuMemcpyHtoDAsync_v2(d, a.as_mut_ptr().cast(), len, s),
                (Place::Device(d), Place::Host(b)) => sys::cuMemcpyDtoHAsync_v2(b.as_mut_ptr().cast(), d, len, s),
                (Place::Device(a), Place::Device(b)) if a < b + len as u64 && b < a + len as u64 => {
                    // Overlapping device ranges go through a scratch copy (memmove semantics).
                    let tmp = CudaMem::new(&self.gpu, pass, len as u64)?;
                    check(sys::cuMemcpyDtoDAsync_v2(tmp.ptr(), a, len, s), "cuMemcpyDtoDAsync")?;
                    let r = sys::cuMemcpyDtoDAsync_v2(b, tmp.ptr(), len, s);
                    scratch = Some(tmp);
                    r
                }
                (Place::Device(a), Place::Device(b)) => sys::cuMemcpyDtoDAsync_v2(b, a, len, s),
            }
        };
        check(r, "cuMemcpyAsync")?;
        let done = self.gpu.wait(pass, engine, Some(job));
        drop(scratch);
        done
    }

    /// One attempt at a job in the entered context.
    fn attempt(&self, pass: &Entered<'_>, engine: usize, op: &JobOp, job: &JobCtx) -> Result<(), Stop> {
        match op {
            JobOp::Nop => Ok(()),
            JobOp::Fill { dst, pattern } => self.fill(pass, dst, *pattern, engine, job),
            JobOp::Copy { src, dst } => self.copy(pass, src, dst, engine, job),
            JobOp::GemmF32 { .. } => self.gemm(pass, op, job),
            JobOp::Launch { .. } => self.launch(pass, op, job),
            JobOp::Driver { code, .. } => {
                Err(DriverError::new(Errno::EOPNOTSUPP, format!("cuda: no driver op {code}")).into())
            }
        }
    }
}

impl Driver for CudaDevice {
    fn info(&self) -> DriverInfo {
        let (major, minor) = self.capability;
        let v = self.driver_version;
        DriverInfo {
            driver: "cuda",
            name: format!(
                "{} (sm_{major}{minor}, {} SMs, CUDA driver {}.{})",
                self.name,
                self.sms,
                v / 1000,
                (v % 1000) / 10
            ),
            vendor: "NVIDIA".into(),
            categories: vec![Category::Shared, Category::Exclusive, Category::Oneshot],
            // GEMM only where cuBLAS was found (else the op is refused with the reason).
            ops: [OpKind::Nop, OpKind::Fill, OpKind::Copy, OpKind::GemmF32, OpKind::Launch]
                .into_iter()
                .filter(|op| *op != OpKind::GemmF32 || self.gpu.blas_lib.is_ok())
                .collect(),
            memory_bytes: self.memory,
            compute_units: self.sms,
            engines: vec![
                EngineInfo { name: "compute".into(), credits: 1 },
                EngineInfo { name: "copy".into(), credits: 1 },
            ],
            ras_nodes: Vec::new(),
        }
    }

    fn engine_for(&self, op: &JobOp) -> usize {
        usize::from(matches!(op, JobOp::Fill { .. } | JobOp::Copy { .. }))
    }

    /// Runs the job; contains faults. A poisoned context is recovered: a launch that
    /// poisoned it is guilty (`EFAULT`, CUDA's words); any other job (fills, copies, GEMMs
    /// cannot fault on ranges the core checked) was caught in another's fault and runs again.
    /// A job interrupted by a recovery runs again in the new context.
    fn run_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), DriverError> {
        let mut replays = 0;
        loop {
            let pass = self.gpu.enter()?;
            let generation = pass.ctx.generation;
            let result = self.attempt(&pass, engine, op, ctx);
            drop(pass);
            match result {
                Ok(()) => return Ok(()),
                Err(Stop::Aborted) => {
                    // Its kernel may run on (a hang, or a client gone mid-launch): end it
                    // before it holds up the jobs queued behind it.
                    self.gpu.recover_if_busy(engine, "an aborted job")?;
                    return Err(DriverError::new(Errno::ECANCELED, "cuda: job aborted"));
                }
                Err(Stop::Recovering) => {}
                Err(Stop::Failed(e)) if !e.lost => return Err(e),
                Err(Stop::Failed(e)) => {
                    self.gpu.recover(Some(generation), &e.message)?;
                    if matches!(op, JobOp::Launch { .. }) || replays > 0 {
                        return Err(DriverError::new(
                            Errno::EFAULT,
                            format!("{} (the context was recovered; other clients are unaffected)", e.message),
                        ));
                    }
                }
            }
            replays += 1;
        }
    }

    /// A job outlived its timeout: its kernel may run forever, so the context is recovered
    /// (destroying it ends the kernel). The core replays the innocent.
    fn timedout_job(&self, engine: usize, _guilty: &JobCtx) -> Result<(), Errno> {
        self.gpu.recover_if_busy(engine, "a job timeout").map_err(|e| {
            tracing::error!("{}", e.message);
            Errno::EIO
        })
    }

    fn telemetry(&self) -> Telemetry {
        Telemetry {
            serial: Some(self.uuid.clone()).filter(|s| !s.is_empty()),
            pci_address: Some(self.pci.clone()).filter(|s| !s.is_empty()),
            ..Default::default()
        }
    }

    fn regions(&self) -> Vec<RegionDesc> {
        vec![RegionDesc {
            name: "vram".into(),
            kind: RegionKind::Device,
            size: self.memory,
            mappable: false,
            exportable: true,
            coherent: false,
        }]
    }

    fn alloc(&self, region: usize, size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        if region != 0 {
            return Err(DriverError::new(Errno::EINVAL, format!("cuda has no region {}", region + 1)));
        }
        let pass = self.gpu.enter()?;
        Ok(Arc::new(CudaMem::new(&self.gpu, &pass, size)?))
    }

    fn program_formats(&self) -> Vec<String> {
        vec![FORMAT.into()]
    }

    fn load_program(&self, format: &str, bytes: &[u8]) -> Result<Arc<dyn Program>, DriverError> {
        if format != FORMAT {
            return Err(DriverError::new(Errno::EOPNOTSUPP, format!("cuda loads {FORMAT}, not {format:?}")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: not UTF-8 text"))?;
        let entries = ptx::entries(text).map_err(|e| DriverError::new(Errno::EINVAL, e))?;
        if entries.iter().any(|e| e.info.params.iter().filter(|p| **p == ParamKind::Buffer).count() > 8) {
            return Err(DriverError::new(Errno::EINVAL, "ptx: more parameters than a launch carries"));
        }
        let pass = self.gpu.enter()?;
        Ok(Arc::new(CudaProgram::load(&self.gpu, &pass, text)?))
    }
}
