//! The worker process: owns one GPU's CUDA context and runs what the daemon asks on it.
//!
//! Started by the daemon as `accel cuda-worker <ordinal>` with its three channels at
//! descriptors 3, 4 and 5 (see `wire.rs`). A request that poisons the context is answered
//! (the guilty job learns CUDA's words) and the process exits; the daemon starts another and
//! maps the memory again from the descriptors it kept.

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use accel_hal::driver::DriverError;
use accel_hal::lock;
use accel_hal::mem::{HostMemory, VolatileSlice};
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::gpu::Gpu;
use crate::memory::CudaMem;
use crate::program::Module;
use crate::wire::{self, Arg, Broken, Identity, Matrix, Op, Range, Reply, Request, CHANNELS};
use crate::{check, device_count};

/// The first of the channel descriptors.
pub const FIRST_FD: i32 = 3;

/// The worker's objects, by the daemon's ids.
struct Worker {
    gpu: Gpu,
    identity: Identity,
    mems: Mutex<HashMap<u64, Arc<CudaMem>>>,
    programs: Mutex<HashMap<u64, Arc<Module>>>,
    hosts: Mutex<HashMap<(u64, u64), Arc<Pinned>>>,
}

/// A client's host buffer mapped here and page-locked with the driver
/// (`cuMemHostRegister`), so copies to and from it are DMA rather than staged through the
/// driver's bounce buffers; left pageable if the driver refuses (e.g. `RLIMIT_MEMLOCK`).
struct Pinned {
    mem: HostMemory,
    pinned: bool,
}

impl Pinned {
    fn new(mem: HostMemory) -> Pinned {
        // SAFETY: a live mapping of `len` bytes, unregistered before it is unmapped (Drop).
        let r = unsafe { sys::cuMemHostRegister_v2(mem.as_ptr().cast(), mem.len(), sys::CU_MEMHOSTREGISTER_PORTABLE) };
        if r != sys::CUresult::CUDA_SUCCESS {
            tracing::debug!("cuda worker: host memory stays pageable ({r:?})");
        }
        Pinned { pinned: r == sys::CUresult::CUDA_SUCCESS, mem }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.pinned {
            // SAFETY: registered in `new`; no job uses it (jobs hold their `Arc`).
            unsafe { sys::cuMemHostUnregister(self.mem.as_ptr().cast()) };
        }
    }
}

/// Serves the daemon until it hangs up; returns the process's exit status.
pub fn main(ordinal: usize) -> i32 {
    // SAFETY: the daemon started this process with the channels at these descriptors, and
    // nothing else here owns them.
    let socks: Vec<OwnedFd> = (0..CHANNELS as i32).map(|i| unsafe { OwnedFd::from_raw_fd(FIRST_FD + i) }).collect();
    let worker = match Worker::open(ordinal) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            // Say why to the first request (the daemon's Hello), then go.
            if let Ok((_, _)) = wire::recv::<Request>(&socks[wire::CONTROL]) {
                let _ = wire::send(
                    &socks[wire::CONTROL],
                    &Reply::Err { code: e.code, message: e.message, fatal: true },
                    &[],
                );
            }
            return 1;
        }
    };
    let threads: Vec<_> = socks
        .into_iter()
        .map(|sock| {
            let worker = worker.clone();
            std::thread::spawn(move || worker.serve(&sock))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    0
}

impl Worker {
    fn open(ordinal: usize) -> Result<Worker, DriverError> {
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
                sys::CUresult::CUDA_SUCCESS => std::ffi::CStr::from_ptr(pci.as_ptr()).to_string_lossy().into_owned(),
                _ => String::new(),
            };
            let identity = Identity {
                name: std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                memory: memory as u64,
                sms: sms.max(0) as u32,
                capability,
                driver_version,
                uuid,
                pci,
                no_gemm: gpu.blas.as_ref().err().cloned(),
            };
            Ok(Worker {
                gpu,
                identity,
                mems: Mutex::new(HashMap::new()),
                programs: Mutex::new(HashMap::new()),
                hosts: Mutex::new(HashMap::new()),
            })
        }
    }

    /// One channel's loop.
    fn serve(&self, sock: &OwnedFd) {
        loop {
            let (req, fds) = match wire::recv::<Request>(sock) {
                Ok(r) => r,
                Err(Broken::Gone) => return,
                Err(Broken::Local(why)) => {
                    let err = Reply::Err { code: Errno::EPROTO, message: format!("cuda worker: {why}"), fatal: false };
                    if wire::send(sock, &err, &[]).is_err() {
                        return;
                    }
                    continue;
                }
            };
            let mut out_fd = None;
            let reply = match self.handle(req, fds, &mut out_fd) {
                Ok(r) => r,
                Err(e) => Reply::Err { code: e.code, message: e.message, fatal: e.lost },
            };
            let fatal = matches!(reply, Reply::Err { fatal: true, .. });
            let fds: Vec<_> = out_fd.iter().map(|f: &OwnedFd| f.as_fd()).collect();
            let sent = wire::send(sock, &reply, &fds);
            if fatal {
                // The context is poisoned for this whole process: make room for a new one.
                std::process::exit(70);
            }
            if sent.is_err() {
                return;
            }
        }
    }

    fn handle(&self, req: Request, mut fds: Vec<OwnedFd>, out_fd: &mut Option<OwnedFd>) -> Result<Reply, DriverError> {
        self.gpu.enter()?;
        let mut fd =
            || fds.pop().ok_or_else(|| DriverError::new(Errno::EINVAL, "cuda worker: a descriptor is missing"));
        match req {
            Request::Hello => return Ok(Reply::Hello(self.identity.clone())),
            Request::Alloc { id, size } => {
                let (mem, exported) = CudaMem::new(&self.gpu, size)?;
                lock(&self.mems).insert(id, Arc::new(mem));
                *out_fd = Some(exported);
            }
            Request::Import { id, len } => {
                let mem = CudaMem::import(&self.gpu, &fd()?, len)?;
                lock(&self.mems).insert(id, Arc::new(mem));
            }
            Request::Free { id } => {
                lock(&self.mems).remove(&id);
            }
            Request::Zero { id } => {
                let mem = self.mem(id)?;
                // SAFETY: the mapping is `size` bytes, a multiple of the granularity (of 4).
                check(
                    // SAFETY: as stated above.
                    unsafe { sys::cuMemsetD32Async(mem.ptr, 0, mem.size / 4, self.gpu.streams[1]) },
                    "cuMemsetD32Async",
                )?;
                self.gpu.sync(1)?;
            }
            Request::Load { id } => {
                let text = HostMemory::import(fd()?).map_err(|e| DriverError::new(e.code, e.message))?;
                let mut bytes = vec![0u8; text.len()];
                // SAFETY: a private mapping of the daemon's memfd, `len` bytes.
                unsafe { VolatileSlice::new(text.as_ptr(), text.len()) }.read(0, &mut bytes)?;
                let text = String::from_utf8(bytes).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: not UTF-8"))?;
                let module = Module::load(&text)?;
                lock(&self.programs).insert(id, Arc::new(module));
            }
            Request::Unload { id } => {
                lock(&self.programs).remove(&id);
            }
            Request::Host { key } => {
                let host = HostMemory::import(fd()?).map_err(|e| DriverError::new(e.code, e.message))?;
                lock(&self.hosts).insert(key, Arc::new(Pinned::new(host)));
            }
            Request::Forget { key } => {
                lock(&self.hosts).remove(&key);
            }
            Request::Run { engine, op } => self.run(engine.min(1), &op)?,
        }
        Ok(Reply::Ok)
    }

    fn mem(&self, id: u64) -> Result<Arc<CudaMem>, DriverError> {
        lock(&self.mems)
            .get(&id)
            .cloned()
            .ok_or_else(|| DriverError::new(Errno::EINVAL, format!("cuda worker: no memory {id}")))
    }

    /// Resolves an operand; `held` keeps what it points into alive for the job.
    fn place(&self, r: &Range, held: &mut Held) -> Result<Place, DriverError> {
        let bounds = |offset: u64, len: u64, size: u64| {
            if offset.checked_add(len).is_none_or(|end| end > size) {
                Err(DriverError::new(Errno::EINVAL, "cuda worker: an operand out of bounds"))
            } else {
                Ok(())
            }
        };
        match *r {
            Range::Device { id, offset, len } => {
                let mem = self.mem(id)?;
                bounds(offset, len, mem.size as u64)?;
                let p = mem.ptr + offset;
                held.mems.push(mem);
                Ok(Place::Device(p))
            }
            Range::Host { key, offset, len } => {
                let host = lock(&self.hosts)
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| DriverError::new(Errno::EINVAL, "cuda worker: unknown host memory"))?;
                bounds(offset, len, host.mem.len() as u64)?;
                // SAFETY: inside the mapping (checked), which `held` keeps.
                let p = unsafe { host.mem.as_ptr().add(offset as usize) };
                held.hosts.push(host);
                Ok(Place::Host(p, len as usize))
            }
        }
    }

    fn run(&self, engine: usize, op: &Op) -> Result<(), DriverError> {
        let mut held = Held::default();
        match op {
            Op::Fill { dst, pattern } => match self.place(dst, &mut held)? {
                Place::Host(p, len) => {
                    // SAFETY: `len` bytes of a live mapping.
                    unsafe { VolatileSlice::new(p, len) }.fill_u32(*pattern);
                    Ok(())
                }
                Place::Device(p) if p % 4 == 0 => {
                    // SAFETY: the range is `len` bytes (a multiple of 4) of mapped memory.
                    let r =
                        unsafe { sys::cuMemsetD32Async(p, *pattern, dst.len() as usize / 4, self.gpu.streams[engine]) };
                    check(r, "cuMemsetD32Async")?;
                    self.gpu.sync(engine)
                }
                Place::Device(_) => Err(DriverError::new(Errno::EINVAL, "cuda: fills start at multiples of 4")),
            },
            Op::Copy { src, dst } => {
                let (s, d) = (self.place(src, &mut held)?, self.place(dst, &mut held)?);
                self.copy(s, d, src.len() as usize, engine)
            }
            Op::Gemm { a, b, c, alpha, beta } => self.gemm(a, b, c, *alpha, *beta, &mut held),
            Op::Launch { program, entry, grid, args } => self.launch(*program, *entry, *grid, args, &mut held),
        }
    }

    fn copy(&self, src: Place, dst: Place, len: usize, engine: usize) -> Result<(), DriverError> {
        let s = self.gpu.streams[engine];
        // SAFETY: both ranges are `len` bytes (checked by the core and in `place`) and held.
        let r = unsafe {
            match (src, dst) {
                (Place::Host(a, _), Place::Host(b, _)) => {
                    VolatileSlice::new(a, len).copy_to(&VolatileSlice::new(b, len));
                    return Ok(());
                }
                (Place::Host(a, _), Place::Device(d)) => sys::cuMemcpyHtoDAsync_v2(d, a as *const c_void, len, s),
                (Place::Device(d), Place::Host(b, _)) => sys::cuMemcpyDtoHAsync_v2(b.cast(), d, len, s),
                (Place::Device(a), Place::Device(b)) if a < b + len as u64 && b < a + len as u64 => {
                    // Overlapping device ranges go through a scratch copy (memmove semantics).
                    let (tmp, _fd) = CudaMem::new(&self.gpu, len as u64)?;
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

    /// The device address of an operand, staging host memory (copied in now).
    fn device_ptr(&self, r: &Range, held: &mut Held) -> Result<sys::CUdeviceptr, DriverError> {
        match self.place(r, held)? {
            Place::Device(p) => Ok(p),
            Place::Host(p, len) => {
                let (mem, _fd) = CudaMem::new(&self.gpu, len as u64)?;
                // SAFETY: `len` bytes of a held mapping into an allocation at least as large.
                let r = unsafe { sys::cuMemcpyHtoDAsync_v2(mem.ptr, p as *const c_void, len, self.gpu.streams[0]) };
                check(r, "cuMemcpyHtoDAsync")?;
                let d = mem.ptr;
                held.staged.push((mem, p, len));
                Ok(d)
            }
        }
    }

    /// Waits for the compute stream, then copies staged operands back to host memory.
    fn finish(&self, held: &Held) -> Result<(), DriverError> {
        for (mem, host, len) in &held.staged {
            // SAFETY: `len` bytes of a held mapping and of a staged allocation.
            let r = unsafe { sys::cuMemcpyDtoHAsync_v2(host.cast(), mem.ptr, *len, self.gpu.streams[0]) };
            check(r, "cuMemcpyDtoHAsync")?;
        }
        self.gpu.sync(0)
    }

    fn gemm(
        &self,
        a: &Matrix,
        b: &Matrix,
        c: &Matrix,
        alpha: f32,
        beta: f32,
        held: &mut Held,
    ) -> Result<(), DriverError> {
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| DriverError::new(Errno::EINVAL, "cuda: a GEMM dimension over 2^31"))
        };
        let (m, n, k) = (int(a.rows)?, int(b.cols)?, int(a.cols)?);
        let (lda, ldb, ldc) = (int(a.row_stride)?, int(b.row_stride)?, int(c.row_stride)?);
        let (blas, handle) = self
            .gpu
            .blas
            .as_ref()
            .map_err(|why| DriverError::new(Errno::EOPNOTSUPP, format!("cuda: GEMM needs cuBLAS: {why}")))?;
        let pa = self.device_ptr(&a.range, held)?;
        let pb = self.device_ptr(&b.range, held)?;
        let pc = self.device_ptr(&c.range, held)?;
        {
            let handle = lock(handle);
            // SAFETY: the handle is ours (locked); every pointer spans its matrix (checked by
            // the core).
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
        }
        // Only C was written; staged A and B go back unchanged, which is harmless.
        self.finish(held)
    }

    fn launch(
        &self,
        program: u64,
        entry: u32,
        grid: [u32; 3],
        args: &[Arg],
        held: &mut Held,
    ) -> Result<(), DriverError> {
        let module = lock(&self.programs)
            .get(&program)
            .cloned()
            .ok_or_else(|| DriverError::new(Errno::EINVAL, format!("cuda worker: no program {program}")))?;
        let (f, block) = module
            .functions
            .get(entry as usize)
            .zip(module.blocks.get(entry as usize))
            .ok_or_else(|| DriverError::new(Errno::EINVAL, format!("cuda worker: no entry {entry}")))?;
        // Each parameter's value, 8 bytes of room each; kernelParams points at them.
        let mut values: Vec<[u8; 8]> = Vec::with_capacity(args.len());
        for a in args {
            let mut v = [0u8; 8];
            match a {
                Arg::Buffer(r) => v = self.device_ptr(r, held)?.to_ne_bytes(),
                Arg::U32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                Arg::F32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                Arg::U64(x) => v = x.to_ne_bytes(),
            }
            values.push(v);
        }
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
        // SAFETY: the function belongs to a loaded module (held); `params` has one pointer per
        // PTX parameter (checked by the core against the entry), each to 8 live bytes.
        let r = unsafe {
            sys::cuLaunchKernel(
                *f,
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
        };
        check(r, "cuLaunchKernel")?;
        let done = self.finish(held);
        drop(module);
        done
    }
}

/// A resolved operand.
#[derive(Clone, Copy)]
enum Place {
    Device(sys::CUdeviceptr),
    Host(*mut u8, usize),
}

/// What a job's operands point into, kept alive until it is done.
#[derive(Default)]
struct Held {
    mems: Vec<Arc<CudaMem>>,
    hosts: Vec<Arc<Pinned>>,
    /// Device copies of host operands: (copy, host address, bytes).
    staged: Vec<(CudaMem, *mut u8, usize)>,
}
