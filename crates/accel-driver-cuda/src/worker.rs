//! The worker process: owns one GPU's CUDA context and runs what the daemon asks on it.
//!
//! Started by the daemon as `accel cuda-worker <ordinal> <streams>` with its channels at
//! descriptors 3 on (control, a channel per compute stream, copy: see `wire.rs`). A request that poisons the context is answered
//! (the guilty job learns CUDA's words) and the process exits; the daemon starts another and
//! maps the memory again from the descriptors it kept.

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use accel_hal::driver::DriverError;
use accel_hal::lock;
use accel_hal::mem::{HostMemory, VolatileSlice};
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::cublas::Elem;
use crate::gpu::Gpu;
use crate::inbox::Inbox;
use crate::mailbox::Mailbox;
use crate::memory::CudaMem;
use crate::program::Module;
use crate::wire::{self, Arg, Broken, Identity, Matrix, Op, ProgramFormat, Range, Reply, Request};
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
    /// Where each stream's jobs leave their tokens once done (see [`Marks`]).
    marks: std::sync::OnceLock<Marks>,
    /// Requests being handled now: a poisoned worker waits for their replies before it exits.
    busy: std::sync::atomic::AtomicUsize,
}

/// The daemon's page of completion marks, page-locked and mapped for the GPU: after each
/// job's work, its stream writes the job's token to the stream's own 64-byte line
/// (`cuStreamWriteValue64`), in stream order. When the context dies under several jobs at
/// once, the daemon reads the page (it outlives this process) to tell jobs whose work was
/// done from those to run again: the fence-seqno write of a hardware ring.
///
/// The daemon also learns each job's end from its mark, and the GPU's write lands a couple
/// of microseconds after the work (measured: +1.7–2.0 µs on an empty kernel's round trip on
/// an H200). So the worker records an event between the work and the write, and stores the
/// same token itself once the event completes ([`Marks::store`]); the GPU's write, which
/// lands whether this process lives or not, stays for the jobs caught by a context loss.
struct Marks {
    /// Kept registered (and mapped) while the worker lives.
    pinned: Pinned,
    device: sys::CUdeviceptr,
    /// Cleared if the driver refuses stream memory operations.
    working: std::sync::atomic::AtomicBool,
}

impl Marks {
    fn new(mem: HostMemory) -> Result<Marks, DriverError> {
        if mem.len() < wire::MAX_CHANNELS * 64 {
            return Err(DriverError::new(Errno::EINVAL, "cuda worker: a short marks page"));
        }
        let pinned = Pinned::with_flags(mem, sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_PORTABLE);
        if !pinned.pinned {
            return Err(DriverError::new(Errno::ENOMEM, "cuda worker: cannot page-lock the marks page"));
        }
        let mut device = 0;
        // SAFETY: a registered mapping; out pointer to a local.
        let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, pinned.mem.as_ptr().cast(), 0) };
        check(r, "cuMemHostGetDevicePointer")?;
        Ok(Marks { pinned, device, working: std::sync::atomic::AtomicBool::new(true) })
    }

    /// Stores `token` to stream `index`'s mark from here, once its job's work is done.
    fn store(&self, index: usize, token: u64) {
        // SAFETY: the line lies in the page (index < MAX_CHANNELS, checked at creation),
        // 8-byte aligned, and mapped while the worker lives; the GPU writes the same u64.
        let word = unsafe { &*self.pinned.mem.as_ptr().add(64 * index).cast::<std::sync::atomic::AtomicU64>() };
        word.store(token, Ordering::Release);
    }

    /// Enqueues the write of `token` to stream `index`'s mark on `stream`.
    fn write(&self, stream: sys::CUstream, index: usize, token: u64) -> Result<(), DriverError> {
        if !self.working.load(Ordering::Relaxed) {
            return Ok(());
        }
        // SAFETY: the address lies in the registered page (index < MAX_CHANNELS, checked at
        // creation against the page's length), which lives as long as the worker.
        let r = unsafe { sys::cuStreamWriteValue64_v2(stream, self.device + 64 * index as u64, token, 0) };
        match check(r, "cuStreamWriteValue64") {
            Err(e) if !e.lost => {
                // Stream memory operations unsupported here: jobs caught in a context loss
                // then all run again (their marks never say done).
                if self.working.swap(false, Ordering::Relaxed) {
                    tracing::warn!("cuda worker: no completion marks ({})", e.message);
                }
                Ok(())
            }
            other => other,
        }
    }
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
        Pinned::with_flags(mem, sys::CU_MEMHOSTREGISTER_PORTABLE)
    }

    fn with_flags(mem: HostMemory, flags: u32) -> Pinned {
        // SAFETY: a live mapping of `len` bytes, unregistered before it is unmapped (Drop).
        let r = unsafe { sys::cuMemHostRegister_v2(mem.as_ptr().cast(), mem.len(), flags) };
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

/// Serves the daemon until it hangs up, with `compute` compute streams; returns the
/// process's exit status.
pub fn main(ordinal: usize, compute: usize) -> i32 {
    let compute = compute.clamp(1, wire::MAX_COMPUTE);
    let channels = wire::copy_channel(compute) + 1;
    // SAFETY: the daemon started this process with the channels at these descriptors, and
    // nothing else here owns them.
    let socks: Vec<OwnedFd> = (0..channels as i32).map(|i| unsafe { OwnedFd::from_raw_fd(FIRST_FD + i) }).collect();
    let worker = match Worker::open(ordinal, compute) {
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
    // Control requests and copies use the copy stream; compute channel i its stream i.
    let threads: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(c, sock)| {
            let worker = worker.clone();
            let stream = if (1..=compute).contains(&c) { c - 1 } else { compute };
            std::thread::spawn(move || worker.serve(&sock, stream))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    0
}

impl Worker {
    fn open(ordinal: usize, compute: usize) -> Result<Worker, DriverError> {
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
            let gpu = Gpu::open(ordinal as i32, dev, compute)?;
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
                marks: std::sync::OnceLock::new(),
                busy: std::sync::atomic::AtomicUsize::new(0),
            })
        }
    }

    /// One channel's loop: its jobs run on stream `stream`. Requests come through the
    /// channel's mailbox once it has one (jobs) or its socket (everything with descriptors);
    /// each reply goes back the way its request came.
    fn serve(&self, sock: &OwnedFd, stream: usize) {
        let mut inbox = Inbox::default();
        loop {
            let (req, fds, via_mailbox) = match inbox.next(sock) {
                Ok(r) => r,
                Err(Broken::Gone) => return,
                Err(Broken::Local(why)) => {
                    let err = Reply::Err { code: Errno::EPROTO, message: format!("cuda worker: {why}"), fatal: false };
                    if inbox.answer(sock, err, &[], false).is_err() {
                        return;
                    }
                    continue;
                }
            };
            let mut out_fd = None;
            self.busy.fetch_add(1, Ordering::SeqCst);
            let reply = match req {
                Request::Mailbox => match fds.into_iter().next().map(Mailbox::import) {
                    Some(Ok(mailbox)) => {
                        inbox.mailbox = Some(mailbox);
                        Reply::Ok
                    }
                    Some(Err(e)) => Reply::Err { code: e.code, message: e.message, fatal: false },
                    None => Reply::Err { code: Errno::EINVAL, message: "cuda worker: no mailbox".into(), fatal: false },
                },
                req => match self.handle(req, fds, &mut out_fd, stream) {
                    Ok(r) => r,
                    Err(e) => Reply::Err { code: e.code, message: e.message, fatal: e.lost },
                },
            };
            let fatal = matches!(reply, Reply::Err { fatal: true, .. });
            let fds: Vec<_> = out_fd.iter().map(|f: &OwnedFd| f.as_fd()).collect();
            let sent = inbox.answer(sock, reply, &fds, via_mailbox);
            self.busy.fetch_sub(1, Ordering::SeqCst);
            if fatal {
                // The context is poisoned for this whole process: every stream's job fails
                // now. Let the other channels answer theirs (the daemon tells the finished
                // from the unfinished by their marks), then make room for a new worker.
                let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
                while self.busy.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                std::process::exit(70);
            }
            if sent.is_err() {
                return;
            }
        }
    }

    fn handle(
        &self,
        req: Request,
        mut fds: Vec<OwnedFd>,
        out_fd: &mut Option<OwnedFd>,
        stream: usize,
    ) -> Result<Reply, DriverError> {
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
                    unsafe { sys::cuMemsetD32Async(mem.ptr, 0, mem.size / 4, self.gpu.streams[stream]) },
                    "cuMemsetD32Async",
                )?;
                self.gpu.sync(stream)?;
            }
            Request::Load { id, format } => {
                let image = HostMemory::import(fd()?).map_err(|e| DriverError::new(e.code, e.message))?;
                let mut bytes = vec![0u8; image.len()];
                // SAFETY: a private mapping of the daemon's memfd, `len` bytes.
                unsafe { VolatileSlice::new(image.as_ptr(), image.len()) }.read(0, &mut bytes)?;
                match format {
                    ProgramFormat::Ptx => {
                        let text =
                            String::from_utf8(bytes).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: not UTF-8"))?;
                        lock(&self.programs).insert(id, Arc::new(Module::load(&text)?));
                    }
                    ProgramFormat::Cubin => {
                        let (module, entries) = Module::load_image(&bytes)?;
                        lock(&self.programs).insert(id, Arc::new(module));
                        return Ok(Reply::Program(entries));
                    }
                }
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
            Request::Run { op, token } => self.run(stream, &op, token)?,
            Request::Mailbox | Request::Wake => {
                return Err(DriverError::new(Errno::EPROTO, "cuda worker: a channel request out of place"))
            }
            Request::Marks => {
                let mem = HostMemory::import(fd()?).map_err(|e| DriverError::new(e.code, e.message))?;
                // Without marks, jobs caught in a context loss all run again: worse, not wrong.
                match Marks::new(mem) {
                    Ok(marks) => {
                        if self.marks.set(marks).is_err() {
                            return Err(DriverError::new(Errno::EBUSY, "cuda worker: completion marks already set"));
                        }
                    }
                    Err(e) => tracing::warn!("cuda worker: no completion marks ({})", e.message),
                }
            }
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

    /// Runs a job on `stream`: enqueues its work, then copies staged operands back, writes
    /// `token` to the stream's completion mark, and waits for the stream.
    fn run(&self, stream: usize, op: &Op, token: u64) -> Result<(), DriverError> {
        let mut held = Held::default();
        match op {
            Op::Fill { dst, pattern } => match self.place(dst, &mut held)? {
                Place::Host(p, len) => {
                    // SAFETY: `len` bytes of a live mapping.
                    unsafe { VolatileSlice::new(p, len) }.fill_u32(*pattern);
                }
                Place::Device(p) if p % 4 == 0 => {
                    // SAFETY: the range is `len` bytes (a multiple of 4) of mapped memory.
                    let r =
                        unsafe { sys::cuMemsetD32Async(p, *pattern, dst.len() as usize / 4, self.gpu.streams[stream]) };
                    check(r, "cuMemsetD32Async")?;
                }
                Place::Device(_) => return Err(DriverError::new(Errno::EINVAL, "cuda: fills start at multiples of 4")),
            },
            Op::Copy { src, dst } => {
                let (s, d) = (self.place(src, &mut held)?, self.place(dst, &mut held)?);
                self.copy(s, d, src.len() as usize, stream, &mut held)?;
            }
            Op::Gemm { a, b, c, alpha, beta, ty } => self.gemm(stream, *ty, (a, b, c), *alpha, *beta, &mut held)?,
            Op::Launch { program, entry, grid, args } => {
                self.launch(stream, *program, *entry, *grid, args, &mut held)?
            }
        }
        self.finish(stream, &held, token)
    }

    fn copy(&self, src: Place, dst: Place, len: usize, stream: usize, held: &mut Held) -> Result<(), DriverError> {
        let s = self.gpu.streams[stream];
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
                    let r = sys::cuMemcpyDtoDAsync_v2(b, tmp.ptr, len, s);
                    held.scratch.push(tmp);
                    r
                }
                (Place::Device(a), Place::Device(b)) => sys::cuMemcpyDtoDAsync_v2(b, a, len, s),
            }
        };
        check(r, "cuMemcpyAsync")
    }

    /// The device address of an operand, staging host memory (copied in on `stream` now).
    fn device_ptr(&self, stream: usize, r: &Range, held: &mut Held) -> Result<sys::CUdeviceptr, DriverError> {
        match self.place(r, held)? {
            Place::Device(p) => Ok(p),
            Place::Host(p, len) => {
                let (mem, _fd) = CudaMem::new(&self.gpu, len as u64)?;
                // SAFETY: `len` bytes of a held mapping into an allocation at least as large.
                let r =
                    unsafe { sys::cuMemcpyHtoDAsync_v2(mem.ptr, p as *const c_void, len, self.gpu.streams[stream]) };
                check(r, "cuMemcpyHtoDAsync")?;
                let d = mem.ptr;
                held.staged.push((mem, p, len));
                Ok(d)
            }
        }
    }

    /// After a job's work on `stream`: copies staged operands back to host memory, writes
    /// `token` to the stream's completion mark (from here as soon as the work is done, and
    /// from the GPU after it: see [`Marks`]), and waits for the work (with marks: not for the
    /// GPU's write after it, so the reply, which the channel's next job waits for, goes at
    /// once; the stream's next job is enqueued behind that write).
    fn finish(&self, stream: usize, held: &Held, token: u64) -> Result<(), DriverError> {
        for (mem, host, len) in &held.staged {
            // SAFETY: `len` bytes of a held mapping and of a staged allocation.
            let r = unsafe { sys::cuMemcpyDtoHAsync_v2(host.cast(), mem.ptr, *len, self.gpu.streams[stream]) };
            check(r, "cuMemcpyDtoHAsync")?;
        }
        if let Some(marks) = self.marks.get() {
            self.gpu.record(stream)?;
            marks.write(self.gpu.streams[stream], stream, token)?;
            self.gpu.finished(stream)?;
            marks.store(stream, token);
            return Ok(());
        }
        self.gpu.sync(stream)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        stream: usize,
        ty: Elem,
        (a, b, c): (&Matrix, &Matrix, &Matrix),
        alpha: f32,
        beta: f32,
        held: &mut Held,
    ) -> Result<(), DriverError> {
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| DriverError::new(Errno::EINVAL, "cuda: a GEMM dimension over 2^31"))
        };
        let (m, n, k) = (int(a.rows)?, int(b.cols)?, int(a.cols)?);
        let (lda, ldb, ldc) = (int(a.row_stride)?, int(b.row_stride)?, int(c.row_stride)?);
        let (blas, handles) = self
            .gpu
            .blas
            .as_ref()
            .map_err(|why| DriverError::new(Errno::EOPNOTSUPP, format!("cuda: GEMM needs cuBLAS: {why}")))?;
        let handle = handles
            .get(stream)
            .ok_or_else(|| DriverError::new(Errno::EINVAL, "cuda worker: GEMM on the copy channel"))?;
        let pa = self.device_ptr(stream, &a.range, held)?;
        let pb = self.device_ptr(stream, &b.range, held)?;
        let pc = self.device_ptr(stream, &c.range, held)?;
        {
            let handle = lock(handle);
            // SAFETY: the handle is ours (locked); every pointer spans its matrix (checked by
            // the core).
            unsafe { blas.gemm_row_major(*handle, ty, (m, n, k), alpha, (pa, lda), (pb, ldb), beta, (pc, ldc)) }?;
        }
        // Only C was written; staged A and B go back unchanged (in `finish`), which is harmless.
        Ok(())
    }

    fn launch(
        &self,
        stream: usize,
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
                Arg::Buffer(r) => v = self.device_ptr(stream, r, held)?.to_ne_bytes(),
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
                self.gpu.streams[stream],
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        check(r, "cuLaunchKernel")?;
        held.modules.push(module);
        Ok(())
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
    modules: Vec<Arc<Module>>,
    /// Scratch device memory (overlapping copies).
    scratch: Vec<CudaMem>,
    /// Device copies of host operands: (copy, host address, bytes).
    staged: Vec<(CudaMem, *mut u8, usize)>,
}
