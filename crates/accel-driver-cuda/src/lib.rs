//! The `cuda` driver: NVIDIA GPUs through the CUDA driver API and cuBLAS, loaded at run time
//! (`cudarc`'s dynamic loading): the daemon builds and runs on machines without CUDA, and
//! opening a cuda device there fails with the reason.
//!
//! - **Memory**: a `vram` region allocated with the virtual memory management API
//!   (`cuMemCreate` with POSIX-fd shareable handles, `cuMemMap`), so export gives a descriptor
//!   another process imports into its own context (`cuMemImportFromShareableHandle`). Host
//!   memory (the clients' memfds) is reached with pageable copies; kernels and cuBLAS get
//!   device copies of host operands (staged in and out).
//! - **Engines**: compute and copy, each its own stream of the device's primary context; a
//!   job is enqueued on its engine's stream and waited for (`cuStreamSynchronize`).
//! - **Ops**: fill (`cuMemsetD32Async`), copy between every pair of regions, GEMM f32 through
//!   cuBLAS, and launches of `ptx` programs (`cuModuleLoadData`, `cuLaunchKernel`) whose
//!   entries and parameters are read from the PTX text.
//! - **Faults**: the sticky errors that corrupt a CUDA context (illegal address, launch
//!   failure, …) are device loss: the core wedges the device.
//!
//! Not done yet (they need a GPU to be written against): NVML telemetry and RAS, `cubin`
//! programs, imports of other processes' exports, per-client contexts, green contexts and the
//! context-model measurements. `scripts/gpu-check.sh` runs this crate's tests on a lent GPU.

mod cublas;
mod ptx;

use std::any::Any;
use std::ffi::{c_void, CStr, CString};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use accel_hal::bo::{BoMatrix, BoRange};
use accel_hal::driver::{
    DeviceMemory, Driver, DriverError, DriverInfo, JobArg, JobCtx, JobOp, Program, RegionDesc, Telemetry,
};
use accel_hal::lock;
use accel_uapi::{Category, EngineInfo, EntryInfo, Errno, OpKind, ParamKind, RegionKind};
use cudarc::driver::sys;

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

/// The device's primary context and streams, shared by its memory and programs.
struct Gpu {
    ordinal: i32,
    ctx: sys::CUcontext,
    /// Stream 0 computes, stream 1 copies.
    streams: [sys::CUstream; 2],
    /// cuBLAS and this device's handle, or why GEMM cannot run (the library was not found).
    blas: Result<(cublas::Cublas, Mutex<cublas::Handle>), String>,
}

// SAFETY: CUDA contexts, streams and cuBLAS handles may be used from any thread once made
// current there; the cuBLAS handle is behind a mutex (it is not thread-safe).
unsafe impl Send for Gpu {}
// SAFETY: as above.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Makes the context current on the calling thread (slot threads change over time).
    fn enter(&self) -> Result<(), DriverError> {
        // SAFETY: a live context.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    fn sync(&self, engine: usize) -> Result<(), DriverError> {
        // SAFETY: a live stream of the current context.
        check(unsafe { sys::cuStreamSynchronize(self.streams[engine]) }, "cuStreamSynchronize")
    }
}

/// Device memory: a physical allocation mapped at a reserved virtual range.
pub struct CudaMem {
    gpu: Arc<Gpu>,
    ptr: sys::CUdeviceptr,
    size: usize,
    len: u64,
    handle: sys::CUmemGenericAllocationHandle,
}

impl std::fmt::Debug for CudaMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaMem").field("len", &self.len).finish()
    }
}

impl CudaMem {
    fn new(gpu: &Arc<Gpu>, len: u64) -> Result<CudaMem, DriverError> {
        gpu.enter()?;
        // SAFETY: a zeroed property struct is valid; the fields that matter are set below.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.requestedHandleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = gpu.ordinal;
        let mut gran = 0usize;
        let minimum = sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM;
        // SAFETY: valid pointers to locals.
        let r = unsafe { sys::cuMemGetAllocationGranularity(&mut gran, &prop, minimum) };
        check(r, "cuMemGetAllocationGranularity")?;
        let size = usize::try_from(len.max(1))
            .map_err(|_| DriverError::new(Errno::ENOMEM, "allocation too large"))?
            .next_multiple_of(gran.max(1));
        let mut handle = 0;
        // SAFETY: valid property and out pointer.
        check(unsafe { sys::cuMemCreate(&mut handle, size, &prop, 0) }, "cuMemCreate")?;
        let mut ptr = 0;
        // SAFETY: out pointer to a local; no fixed address asked.
        let reserved = check(unsafe { sys::cuMemAddressReserve(&mut ptr, size, 0, 0, 0) }, "cuMemAddressReserve");
        if let Err(e) = reserved {
            // SAFETY: the handle was just made and is not mapped.
            unsafe { sys::cuMemRelease(handle) };
            return Err(e);
        }
        let mem = CudaMem { gpu: gpu.clone(), ptr, size, len, handle };
        // SAFETY: the range was reserved for this size; the handle is unmapped.
        check(unsafe { sys::cuMemMap(ptr, size, 0, handle, 0) }, "cuMemMap")?;
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range is mapped; one access descriptor.
        check(unsafe { sys::cuMemSetAccess(ptr, size, &access, 1) }, "cuMemSetAccess")?;
        Ok(mem)
    }
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        let _ = self.gpu.enter();
        // SAFETY: jobs hold their operands until they completed, so nothing uses the range.
        unsafe {
            sys::cuMemUnmap(self.ptr, self.size);
            sys::cuMemAddressFree(self.ptr, self.size);
            sys::cuMemRelease(self.handle);
        }
    }
}

impl DeviceMemory for CudaMem {
    fn len(&self) -> u64 {
        self.len
    }

    fn zero(&self) -> Result<(), DriverError> {
        self.gpu.enter()?;
        // SAFETY: the mapping is `size` bytes, a multiple of the granularity (of 4).
        check(unsafe { sys::cuMemsetD32Async(self.ptr, 0, self.size / 4, self.gpu.streams[1]) }, "cuMemsetD32Async")?;
        self.gpu.sync(1)
    }

    fn export(&self) -> Result<OwnedFd, DriverError> {
        self.gpu.enter()?;
        let mut fd: std::ffi::c_int = -1;
        let kind = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        // SAFETY: the allocation was made exportable as a POSIX descriptor; `fd` receives it.
        check(
            // SAFETY: as stated above.
            unsafe {
                sys::cuMemExportToShareableHandle((&mut fd as *mut std::ffi::c_int).cast(), self.handle, kind, 0)
            },
            "cuMemExportToShareableHandle",
        )?;
        // SAFETY: the driver handed over a new descriptor.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A loaded PTX module.
pub struct CudaProgram {
    gpu: Arc<Gpu>,
    module: sys::CUmodule,
    functions: Vec<sys::CUfunction>,
    entries: Vec<EntryInfo>,
    blocks: Vec<[u32; 3]>,
}

// SAFETY: module and function handles are plain values used with the context current.
unsafe impl Send for CudaProgram {}
// SAFETY: as above.
unsafe impl Sync for CudaProgram {}

impl std::fmt::Debug for CudaProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaProgram").field("entries", &self.entries).finish()
    }
}

impl Program for CudaProgram {
    fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for CudaProgram {
    fn drop(&mut self) {
        let _ = self.gpu.enter();
        // SAFETY: launches hold their program until they completed.
        unsafe { sys::cuModuleUnload(self.module) };
    }
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
        return Ok(Place::Device(m.ptr + r.offset as u64));
    }
    r.host().map(Place::Host).ok_or_else(|| DriverError::new(Errno::EINVAL, "cuda: a buffer with no memory"))
}

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
    /// Opens CUDA device `ordinal` (its primary context, two streams, a cuBLAS handle).
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
            let mut ctx = std::ptr::null_mut();
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
            check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            let mut streams = [std::ptr::null_mut(); 2];
            for s in &mut streams {
                check(sys::cuStreamCreate(s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32), "cuStreamCreate")?;
            }
            let blas = match cublas::Cublas::load() {
                Ok(lib) => {
                    tracing::info!("cuda: cuBLAS from {}", lib.path);
                    let handle = lib.create()?;
                    Ok((lib, Mutex::new(handle)))
                }
                Err(why) => {
                    tracing::warn!("cuda: GEMM unavailable: {why}");
                    Err(why)
                }
            };
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
                gpu: Arc::new(Gpu { ordinal: ordinal as i32, ctx, streams, blas }),
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

    /// A device copy of a host operand, for kernels and cuBLAS (copied in now).
    fn stage(&self, host: &accel_hal::mem::VolatileSlice<'_>, engine: usize) -> Result<CudaMem, DriverError> {
        let mem = CudaMem::new(&self.gpu, host.len() as u64)?;
        // SAFETY: `host` is `len` bytes the job holds; the device range is at least as large.
        check(
            // SAFETY: as stated above.
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(mem.ptr, host.as_mut_ptr().cast(), host.len(), self.gpu.streams[engine])
            },
            "cuMemcpyHtoDAsync",
        )?;
        Ok(mem)
    }

    /// The device address of a matrix or buffer operand, staging host memory.
    fn device_ptr<'a>(
        &self,
        r: &'a BoRange,
        engine: usize,
        staged: &mut Vec<(CudaMem, accel_hal::mem::VolatileSlice<'a>)>,
    ) -> Result<sys::CUdeviceptr, DriverError> {
        match place(r)? {
            Place::Device(p) => Ok(p),
            Place::Host(h) => {
                let mem = self.stage(&h, engine)?;
                let p = mem.ptr;
                staged.push((mem, h));
                Ok(p)
            }
        }
    }

    /// Copies staged operands back to host memory once the work is done.
    fn unstage(
        &self,
        staged: Vec<(CudaMem, accel_hal::mem::VolatileSlice<'_>)>,
        engine: usize,
    ) -> Result<(), DriverError> {
        for (mem, host) in &staged {
            // SAFETY: both ranges are `host.len()` bytes and alive.
            check(
                // SAFETY: as stated above.
                unsafe {
                    sys::cuMemcpyDtoHAsync_v2(host.as_mut_ptr().cast(), mem.ptr, host.len(), self.gpu.streams[engine])
                },
                "cuMemcpyDtoHAsync",
            )?;
        }
        self.gpu.sync(engine)
    }

    fn gemm(&self, a: &BoMatrix, b: &BoMatrix, c: &BoMatrix, alpha: f32, beta: f32) -> Result<(), DriverError> {
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| DriverError::new(Errno::EINVAL, "cuda: a GEMM dimension over 2^31"))
        };
        let (m, n, k) = (int(a.rows)?, int(b.cols)?, int(a.cols)?);
        let (lda, ldb, ldc) = (int(a.row_stride)?, int(b.row_stride)?, int(c.row_stride)?);
        let mut staged = Vec::new();
        let pa = self.device_ptr(&a.range, 0, &mut staged)?;
        let pb = self.device_ptr(&b.range, 0, &mut staged)?;
        let pc = self.device_ptr(&c.range, 0, &mut staged)?;
        let (blas, handle) = self.gpu.blas.as_ref().map_err(|why| {
            DriverError::new(Errno::EOPNOTSUPP, format!("cuda: GEMM needs cuBLAS: {why}"))
        })?;
        let handle = lock(handle);
        // SAFETY: the handle is ours (locked); every pointer spans its matrix (checked by the core).
        unsafe {
            blas.sgemm_row_major(
                *handle,
                self.gpu.streams[0].cast(),
                (m, n, k),
                alpha,
                (pa as *const f32, lda),
                (pb as *const f32, ldb),
                beta,
                (pc as *mut f32, ldc),
            )
        }?;
        drop(handle);
        // Only C was written; staged A and B go back unchanged, which is harmless.
        self.unstage(staged, 0)
    }

    fn launch(
        &self,
        program: &Arc<dyn Program>,
        entry: u32,
        grid: [u32; 3],
        args: &[JobArg],
    ) -> Result<(), DriverError> {
        let p = program
            .as_any()
            .downcast_ref::<CudaProgram>()
            .ok_or_else(|| DriverError::new(Errno::EINVAL, "cuda: a program of another driver"))?;
        let (f, block) = (p.functions[entry as usize], p.blocks[entry as usize]);
        let mut staged = Vec::new();
        // Each parameter's value, 8 bytes of room each; kernelParams points at them.
        let mut values: Vec<[u8; 8]> = Vec::with_capacity(args.len());
        for a in args {
            let mut v = [0u8; 8];
            match a {
                JobArg::Buffer(r) => v = self.device_ptr(r, 0, &mut staged)?.to_ne_bytes(),
                JobArg::U32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                JobArg::F32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                JobArg::U64(x) => v = x.to_ne_bytes(),
            }
            values.push(v);
        }
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
        // SAFETY: the function belongs to a loaded module; `params` has one pointer per PTX
        // parameter (checked by the core against the entry), each to 8 live bytes.
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
                    self.gpu.streams[0],
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )?;
        self.unstage(staged, 0)
    }

    fn copy(&self, src: &BoRange, dst: &BoRange, engine: usize) -> Result<(), DriverError> {
        let s = self.gpu.streams[engine];
        let len = src.len;
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
                    let tmp = CudaMem::new(&self.gpu, len as u64)?;
                    check(sys::cuMemcpyDtoDAsync_v2(tmp.ptr, a, len, s), "cuMemcpyDtoDAsync")?;
                    check(sys::cuMemcpyDtoDAsync_v2(b, tmp.ptr, len, s), "cuMemcpyDtoDAsync")?;
                    return self.gpu.sync(engine);
                }
                (Place::Device(a), Place::Device(b)) => sys::cuMemcpyDtoDAsync_v2(b, a, len, s),
            }
        };
        check(r, "cuMemcpyAsync")?;
        self.gpu.sync(engine)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let _ = self.gpu.enter();
        // SAFETY: the device is idle once the core drops it.
        unsafe {
            if let Ok((blas, handle)) = &self.gpu.blas {
                blas.destroy(*lock(handle));
            }
            for s in self.gpu.streams {
                sys::cuStreamDestroy_v2(s);
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
                .filter(|op| *op != OpKind::GemmF32 || self.gpu.blas.is_ok())
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

    fn run_job(&self, engine: usize, op: &JobOp, _ctx: &JobCtx) -> Result<(), DriverError> {
        self.gpu.enter()?;
        match op {
            JobOp::Nop => Ok(()),
            JobOp::Fill { dst, pattern } => match place(dst)? {
                Place::Host(h) => {
                    h.fill_u32(*pattern);
                    Ok(())
                }
                Place::Device(p) if p % 4 == 0 => {
                    // SAFETY: the range is `dst.len` bytes (a multiple of 4) of mapped memory.
                    check(
                        // SAFETY: as stated above.
                        unsafe { sys::cuMemsetD32Async(p, *pattern, dst.len / 4, self.gpu.streams[engine]) },
                        "cuMemsetD32Async",
                    )?;
                    self.gpu.sync(engine)
                }
                Place::Device(_) => Err(DriverError::new(Errno::EINVAL, "cuda: fills start at multiples of 4")),
            },
            JobOp::Copy { src, dst } => self.copy(src, dst, engine),
            JobOp::GemmF32 { a, b, c, alpha, beta } => self.gemm(a, b, c, *alpha, *beta),
            JobOp::Launch { program, entry, grid, args } => self.launch(program, *entry, *grid, args),
            JobOp::Driver { code, .. } => {
                Err(DriverError::new(Errno::EOPNOTSUPP, format!("cuda: no driver op {code}")))
            }
        }
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
        Ok(Arc::new(CudaMem::new(&self.gpu, size)?))
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
        let image = CString::new(text).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: a NUL inside the text"))?;
        self.gpu.enter()?;
        let mut module = std::ptr::null_mut();
        // SAFETY: a NUL-terminated PTX image; the driver JIT-compiles and validates it.
        check(unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr().cast()) }, "cuModuleLoadData")?;
        let mut program = CudaProgram {
            gpu: self.gpu.clone(),
            module,
            functions: Vec::new(),
            entries: Vec::new(),
            blocks: Vec::new(),
        };
        for e in entries {
            let name =
                CString::new(e.info.name.clone()).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: bad name"))?;
            let mut f = std::ptr::null_mut();
            // SAFETY: a loaded module and a NUL-terminated name.
            check(unsafe { sys::cuModuleGetFunction(&mut f, module, name.as_ptr()) }, "cuModuleGetFunction")?;
            program.functions.push(f);
            program.blocks.push(e.block);
            program.entries.push(e.info);
        }
        Ok(Arc::new(program))
    }
}
