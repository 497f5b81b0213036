//! The `cuda` driver: NVIDIA GPUs through the CUDA driver API and cuBLAS, loaded at run time
//! (`cudarc`'s dynamic loading): the daemon builds and runs on machines without CUDA, and
//! opening a cuda device there fails with the reason.
//!
//! **A worker process per GPU** ([`worker`]) owns the device's one CUDA context; the daemon
//! talks to it over socket pairs (`wire.rs`: control, a channel per compute stream, copy) and,
//! for jobs, a shared-memory mailbox per channel (`mailbox.rs`). Every client's work shares
//! that context (MPS-style: one context, as many clients' kernels at once as there are compute
//! streams, no per-process context switches), and faults are contained anyway: CUDA poisons a
//! whole *process* on a sticky error (measured: after an illegal address, or after destroying
//! a context whose kernel never ends, even a new `cuCtxCreate` fails), so the process that dies
//! is the worker, never the daemon. A sticky error fails every stream's job at once; each
//! job's stream writes the job's token to the daemon's page of completion marks once its work
//! is done, so the daemon knows which jobs finished, starts a new worker (which maps every
//! live allocation again from the POSIX descriptor the daemon kept, and reloads every live
//! program), and runs each unfinished job again *alone on the device*: the guilty one faults
//! again and gets CUDA's words (`EFAULT`), the innocent ones complete. A job that outlives its
//! timeout gets `ETIME` and the worker is replaced the same way (the drm_sched/amdgpu model:
//! guilty job errored, innocent ones resubmitted after the reset).
//!
//! - **Memory**: a `vram` region allocated with the virtual memory management API
//!   (`cuMemCreate` with POSIX-fd shareable handles, `cuMemMap`), so export gives a
//!   descriptor another process imports into its own context. Host memory (the clients'
//!   memfds) is mapped into the worker and page-locked with the driver (`cuMemHostRegister`),
//!   so copies are DMA; kernels and cuBLAS get device copies of host operands (staged).
//! - **Engines**: compute, with several streams (`$ACCEL_CUDA_STREAMS`, 4 by default: the
//!   engine's credits, so as many queues' jobs run at once, each on a stream of its own while
//!   it runs), and copy, on its own stream; each stream has its own worker thread.
//! - **Ops**: fill (`cuMemsetD32Async`), copy between every pair of regions, GEMM f32 through
//!   cuBLAS, and launches of `ptx` programs (`cuModuleLoadData`, entries and parameters read
//!   from the PTX text) and `cubin`/fatbin programs (entries from the driver: 8-byte
//!   parameters take buffers, 4-byte ones u32s) with `cuLaunchKernel`.
//!
//! - **Health** ([`nvml`](nvml.rs)): NVML in the daemon feeds drm-ras nodes (ECC, retired
//!   pages, PCIe replay, NVLink, throttling, critical XIDs by code) and `/metrics` sensors.
//!
//! Also here: imports of memory other CUDA applications exported (`import_external`), green
//! contexts measured against streams ([`green`]: they divide SMs, not faults), the in-process
//! baselines the benchmarks compare against ([`direct`]). `scripts/gpu-check.sh` runs this
//! crate's tests and benchmarks on a lent GPU.

mod completer;
pub mod cubin;
mod cublas;
pub mod direct;
mod gpu;
pub mod green;
mod inbox;
mod mailbox;
mod memory;
mod nvml;
mod program;
mod ptx;
mod supervisor;
mod wire;
pub mod worker;

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use accel_hal::bo::{BoMatrix, BoRange, BufferObject};
use accel_hal::driver::{
    DeviceMemory, Driver, DriverError, DriverInfo, JobArg, JobCtx, JobOp, Program, RegionDesc, Telemetry,
};
use accel_hal::lock;
use accel_hal::mem::HostMemory;
use accel_uapi::{Category, EngineInfo, EntryInfo, Errno, Float16, OpKind, ParamKind, RegionKind};
use cudarc::driver::sys;

use cublas::Elem;
pub use ptx::{entries as ptx_entries, DEFAULT_BLOCK};
use supervisor::*;
use wire::{Broken, Identity, Reply, Request, CONTROL, MAX_CHANNELS};

/// Format name of PTX programs.
pub const FORMAT: &str = "ptx";
/// Format name of cubin (and fatbin) programs: machine code, loaded as it is.
pub const CUBIN: &str = "cubin";

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

/// The wire's name of a program format a client named.
fn program_format(format: &str) -> Result<wire::ProgramFormat, DriverError> {
    match format {
        FORMAT => Ok(wire::ProgramFormat::Ptx),
        CUBIN => Ok(wire::ProgramFormat::Cubin),
        _ => Err(DriverError::new(Errno::EOPNOTSUPP, format!("cuda loads {FORMAT} and {CUBIN}, not {format:?}"))),
    }
}

/// What a load checks of a client's program in the daemon, before the worker's driver sees
/// it: `ptx` text's entries, read here (`Some`), or a `cubin`/fatbin's header (`None`: the
/// driver reports its entries). The `EINVAL` or `EOPNOTSUPP` a load gives otherwise. Needs no
/// GPU; the fuzz target `load_cuda_program` runs it.
pub fn check_program(format: &str, bytes: &[u8]) -> Result<Option<Vec<EntryInfo>>, DriverError> {
    check_image(program_format(format)?, bytes)
}

/// Checks a program image before it goes to the worker: PTX text, whose entries are read
/// here, or a cubin/fatbin, whose entries the worker reports (`None`).
fn check_image(format: wire::ProgramFormat, bytes: &[u8]) -> Result<Option<Vec<EntryInfo>>, DriverError> {
    match format {
        wire::ProgramFormat::Ptx => {
            let text =
                std::str::from_utf8(bytes).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: not UTF-8 text"))?;
            if text.contains('\0') {
                return Err(DriverError::new(Errno::EINVAL, "ptx: a NUL inside the text"));
            }
            let entries = ptx::entries(text).map_err(|e| DriverError::new(Errno::EINVAL, e))?;
            launchable(entries.into_iter().map(|e| e.info).collect()).map(Some)
        }
        wire::ProgramFormat::Cubin => {
            // ELF (a cubin) or a fatbin's header magic.
            if !(bytes.starts_with(b"\x7fELF") || bytes.starts_with(&0xBA55_ED50u32.to_le_bytes())) {
                return Err(DriverError::new(Errno::EINVAL, "cubin: neither an ELF cubin nor a fatbin"));
            }
            Ok(None)
        }
    }
}

/// `entries`, if a launch can carry each one's buffer parameters.
fn launchable(entries: Vec<EntryInfo>) -> Result<Vec<EntryInfo>, DriverError> {
    if entries.iter().any(|e| e.params.iter().filter(|p| **p == ParamKind::Buffer).count() > 8) {
        return Err(DriverError::new(Errno::EINVAL, "cuda: more buffer parameters than a launch carries"));
    }
    Ok(entries)
}

/// A cubin's entries as accel checks launches against them: parameters of 8 bytes take a
/// buffer (what a `T*` is), of 4 bytes a u32 (pass an f32 as its bits); a cubin does not say
/// more, so other sizes are refused.
fn cubin_entries(found: Vec<wire::Entry>) -> Result<Vec<EntryInfo>, DriverError> {
    found
        .into_iter()
        .map(|e| {
            let params = e
                .params
                .iter()
                .enumerate()
                .map(|(i, size)| match size {
                    8 => Ok(ParamKind::Buffer),
                    4 => Ok(ParamKind::U32),
                    _ => Err(DriverError::new(
                        Errno::EINVAL,
                        format!("cubin: parameter {i} of {} is {size} bytes; launches pass 4 or 8", e.name),
                    )),
                })
                .collect::<Result<_, _>>()?;
            Ok(EntryInfo { name: e.name, params })
        })
        .collect()
}

/// A reply that must be `Ok`.
fn expect_ok(r: Result<(Reply, Vec<OwnedFd>), Broken>, what: &str) -> Result<Vec<OwnedFd>, DriverError> {
    match r {
        Ok((Reply::Ok, fds)) => Ok(fds),
        Ok((Reply::Err { code, message, .. }, _)) => Err(DriverError::new(code, format!("cuda: {what}: {message}"))),
        Ok((other, _)) => Err(DriverError::new(Errno::EPROTO, format!("cuda: {what}: unexpected {other:?}"))),
        Err(e) => Err(DriverError::new(Errno::EIO, format!("cuda: {what}: {e:?}"))),
    }
}

/// A program's image in a memfd, for the worker (messages are small; programs need not be).
fn image_memfd(image: &[u8]) -> Result<HostMemory, DriverError> {
    let mem =
        HostMemory::new("accel-program", image.len().max(1) as u64).map_err(|e| DriverError::new(e.code, e.message))?;
    // SAFETY: the mapping is ours and `len` bytes.
    unsafe { accel_hal::mem::VolatileSlice::new(mem.as_ptr(), mem.len()) }.write(0, image)?;
    Ok(mem)
}

/// Device memory: the worker's allocation, by id, and its descriptor.
pub struct CudaMem {
    shared: Arc<Shared>,
    record: Arc<MemRecord>,
}

impl std::fmt::Debug for CudaMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaMem").field("id", &self.record.id).field("len", &self.record.len).finish()
    }
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        lock(&self.shared.mems).remove(&self.record.id);
        // Best effort: a dead worker freed it already (and the descriptor closes now).
        let (chan, _) = self.shared.control_channel();
        let _ = wire::call(&lock(&chan.sock), &Request::Free { id: self.record.id }, &[]);
    }
}

impl DeviceMemory for CudaMem {
    fn len(&self) -> u64 {
        self.record.len
    }

    fn zero(&self) -> Result<(), DriverError> {
        self.shared.control(&Request::Zero { id: self.record.id }, &[]).map(drop)
    }

    fn export(&self) -> Result<OwnedFd, DriverError> {
        self.record.fd.try_clone().map_err(|e| DriverError::new(Errno::EMFILE, format!("cuda: export: {e}")))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A PTX program: its entries (read from the text here) and the worker's module, by id.
pub struct CudaProgram {
    shared: Arc<Shared>,
    record: Arc<ProgramRecord>,
    entries: Vec<EntryInfo>,
}

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
        lock(&self.shared.programs).remove(&self.record.id);
        let (chan, _) = self.shared.control_channel();
        let _ = wire::call(&lock(&chan.sock), &Request::Unload { id: self.record.id }, &[]);
    }
}

/// One NVIDIA GPU as an accel device (its CUDA context lives in a worker process).
pub struct CudaDevice {
    shared: Arc<Shared>,
    /// NVML health and sensors, once RAS is attached.
    monitor: Mutex<Option<nvml::Monitor>>,
}

impl CudaDevice {
    /// Opens CUDA device `ordinal`: starts its worker process.
    pub fn open(ordinal: usize) -> Result<CudaDevice, DriverError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(DriverError::new(
                Errno::ENODEV,
                format!("cuda: no device {ordinal} ({count} CUDA devices here)"),
            ));
        }
        let compute = wire::compute_streams();
        let marks = HostMemory::new("accel-cuda-marks", (MAX_CHANNELS * 64) as u64)
            .map_err(|e| DriverError::new(e.code, e.message))?;
        let (worker, identity) = spawn_worker(ordinal, compute, &marks, 0)?;
        Ok(CudaDevice {
            shared: Arc::new(Shared {
                ordinal,
                compute,
                marks,
                turns: accel_hal::turns::Turns::default(),
                asynchronous: std::env::var("ACCEL_CUDA_ASYNC").is_ok_and(|v| v.trim() == "1"),
                completer: completer::Completer::default(),
                identity,
                worker: Mutex::new(worker),
                mems: Mutex::new(HashMap::new()),
                programs: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                restarts: AtomicU64::new(0),
            }),
            monitor: Mutex::new(None),
        })
    }

    /// The telemetry that needs no sensor: identity.
    fn identity_telemetry(&self) -> Telemetry {
        let id = &self.shared.identity;
        Telemetry {
            serial: Some(id.uuid.clone()).filter(|s| !s.is_empty()),
            pci_address: Some(id.pci.clone()).filter(|s| !s.is_empty()),
            ..Default::default()
        }
    }

    /// Workers restarted so far (faults and hangs contained).
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let mut w = lock(&self.shared.worker);
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}

impl Driver for CudaDevice {
    fn info(&self) -> DriverInfo {
        let id = &self.shared.identity;
        let (major, minor) = id.capability;
        let v = id.driver_version;
        DriverInfo {
            driver: "cuda",
            name: format!(
                "{} (sm_{major}{minor}, {} SMs, CUDA driver {}.{})",
                id.name,
                id.sms,
                v / 1000,
                (v % 1000) / 10
            ),
            vendor: "NVIDIA".into(),
            categories: vec![Category::Shared, Category::Exclusive, Category::Oneshot],
            // GEMM only where cuBLAS was found (else the op is refused with the reason), and
            // 16-bit GEMM on the GPUs cuBLAS runs it on: f16 from sm_53, bf16 from sm_80.
            ops: [
                OpKind::Nop,
                OpKind::Fill,
                OpKind::Copy,
                OpKind::GemmF32,
                OpKind::GemmF16,
                OpKind::GemmBf16,
                OpKind::Launch,
            ]
            .into_iter()
            .filter(|op| match op {
                OpKind::GemmF32 => id.no_gemm.is_none(),
                OpKind::GemmF16 => id.no_gemm.is_none() && id.capability >= (5, 3),
                OpKind::GemmBf16 => id.no_gemm.is_none() && id.capability >= (8, 0),
                _ => true,
            })
            .collect(),
            memory_bytes: id.memory,
            compute_units: id.sms,
            engines: vec![
                EngineInfo { name: "compute".into(), credits: self.shared.compute as u32 },
                EngineInfo { name: "copy".into(), credits: 1 },
            ],
            ras_nodes: nvml::ras_nodes(),
        }
    }

    fn ras_attach(&self, sink: accel_hal::ras::RasSink) {
        let id = &self.shared.identity;
        if !id.uuid.is_empty() {
            *lock(&self.monitor) = Some(nvml::Monitor::start(id.uuid.clone(), self.identity_telemetry(), sink));
        }
    }

    fn engine_for(&self, op: &JobOp) -> usize {
        usize::from(matches!(op, JobOp::Fill { .. } | JobOp::Copy { .. }))
    }

    /// Runs the job in the worker. When the worker's context is lost under it (a fault:
    /// every stream's job fails at once; or the worker died), the worker is replaced and the
    /// job's completion mark says whether its work was done (then it succeeded); if not, it
    /// runs again *alone* on the device: a fault then is its own (`EFAULT` with CUDA's
    /// words), and an innocent job caught in another's fault simply completes.
    fn run_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), DriverError> {
        self.shared.run_sync(engine, op, ctx, false, 0)
    }

    /// The compute engine where `$ACCEL_CUDA_ASYNC=1`: see `completer.rs`.
    fn asynchronous(&self, engine: usize) -> bool {
        engine == 0 && self.shared.asynchronous
    }

    fn submit_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx, done: accel_hal::driver::JobDone) {
        self.shared.submit_async(engine, op, ctx, done);
    }

    /// A job outlived its timeout: its kernel may never end, and only the end of the worker
    /// ends it. The core replays the innocent.
    fn timedout_job(&self, _engine: usize, _guilty: &JobCtx) -> Result<(), Errno> {
        let generation = lock(&self.shared.worker).generation;
        self.shared.restart(generation, "a job timeout").map_err(|e| {
            tracing::error!("{}", e.message);
            Errno::EIO
        })
    }

    fn telemetry(&self) -> Telemetry {
        match &*lock(&self.monitor) {
            Some(m) => m.telemetry(),
            None => self.identity_telemetry(),
        }
    }

    fn regions(&self) -> Vec<RegionDesc> {
        vec![RegionDesc {
            name: "vram".into(),
            kind: RegionKind::Device,
            size: self.shared.identity.memory,
            mappable: false,
            exportable: true,
            coherent: false,
        }]
    }

    fn alloc(&self, region: usize, size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        if region != 0 {
            return Err(DriverError::new(Errno::EINVAL, format!("cuda has no region {}", region + 1)));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (_, mut fds) = self.shared.control(&Request::Alloc { id, size }, &[])?;
        let fd = fds.pop().ok_or_else(|| DriverError::new(Errno::EPROTO, "cuda: the worker sent no descriptor"))?;
        let record = Arc::new(MemRecord { id, fd, len: size });
        lock(&self.shared.mems).insert(id, Arc::downgrade(&record));
        Ok(Arc::new(CudaMem { shared: self.shared.clone(), record }))
    }

    /// An allocation another process on this GPU exported as a POSIX descriptor
    /// (`cuMemExportToShareableHandle`), in `vram`: the worker maps it as it maps its own
    /// (and a new worker maps it again from the descriptor kept here).
    fn import_external(&self, region: usize, fd: OwnedFd, size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        if region != 0 {
            return Err(DriverError::new(Errno::EINVAL, format!("cuda has no region {}", region + 1)));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.control(&Request::Import { id, len: size }, &[fd.as_fd()])?;
        let record = Arc::new(MemRecord { id, fd, len: size });
        lock(&self.shared.mems).insert(id, Arc::downgrade(&record));
        Ok(Arc::new(CudaMem { shared: self.shared.clone(), record }))
    }

    fn program_formats(&self) -> Vec<String> {
        vec![FORMAT.into(), CUBIN.into()]
    }

    fn load_program(&self, format: &str, bytes: &[u8]) -> Result<Arc<dyn Program>, DriverError> {
        let format = program_format(format)?;
        let entries = check_image(format, bytes)?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let memfd = image_memfd(bytes)?;
        let fd = memfd.dup_fd().map_err(|e| DriverError::new(e.code, e.message))?;
        let (reply, _) = self.shared.control(&Request::Load { id, format }, &[fd.as_fd()])?;
        let entries = match (entries, reply) {
            (Some(entries), _) => Ok(entries),
            (None, Reply::Program(found)) => cubin_entries(found).and_then(launchable),
            (None, other) => {
                Err(DriverError::new(Errno::EPROTO, format!("cuda: loading a cubin: unexpected {other:?}")))
            }
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                // Refused after the worker loaded it: the worker must not keep it.
                let _ = self.shared.control(&Request::Unload { id }, &[]);
                return Err(e);
            }
        };
        let record = Arc::new(ProgramRecord { id, format, image: bytes.to_vec() });
        lock(&self.shared.programs).insert(id, Arc::downgrade(&record));
        Ok(Arc::new(CudaProgram { shared: self.shared.clone(), record, entries }))
    }
}
