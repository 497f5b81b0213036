//! CUDA without accel, in the calling process: a context of its own, a module, a stream.
//! The baselines of `accel bench cuda` (what an application gets launching kernels itself,
//! and what N such processes get when the GPU time-slices between their contexts).

use std::ffi::{c_void, CString};

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::{check, device_count, ptx};

/// Kernels of one thread, for benchmarks and the GPU tests, each taking (buffer, u32):
/// `spin` waits `ns` nanoseconds on the global timer, then adds one to `out[0]`; `fault`
/// stores to an unmapped address; `hang` never ends.
pub const KERNELS_PTX: &str = r#"
.version 7.0
.target sm_70
.address_size 64

.visible .entry spin(.param .u64 out, .param .u32 ns)
.reqntid 1, 1, 1
{
	.reg .pred %p;
	.reg .b32 %r<3>;
	.reg .b64 %rd<6>;
	ld.param.u64 %rd1, [out];
	ld.param.u32 %r1, [ns];
	cvt.u64.u32 %rd2, %r1;
	mov.u64 %rd3, %globaltimer;
$Lspin:
	mov.u64 %rd4, %globaltimer;
	sub.u64 %rd5, %rd4, %rd3;
	setp.lt.u64 %p, %rd5, %rd2;
	@%p bra $Lspin;
	cvta.to.global.u64 %rd1, %rd1;
	ld.global.u32 %r2, [%rd1];
	add.u32 %r2, %r2, 1;
	st.global.u32 [%rd1], %r2;
	ret;
}

.visible .entry fault(.param .u64 out, .param .u32 ns)
.reqntid 1, 1, 1
{
	.reg .b32 %r<2>;
	.reg .b64 %rd<2>;
	mov.u64 %rd1, 0x0000dead00000000;
	mov.u32 %r1, 1;
	st.global.u32 [%rd1], %r1;
	ret;
}

.visible .entry hang(.param .u64 out, .param .u32 ns)
.reqntid 1, 1, 1
{
	.reg .pred %p;
	.reg .b32 %r<2>;
	.reg .b64 %rd<2>;
	ld.param.u64 %rd1, [out];
	cvta.to.global.u64 %rd1, %rd1;
$Lhang:
	ld.volatile.global.u32 %r1, [%rd1];
	setp.ne.u32 %p, %r1, 3735928559;
	@%p bra $Lhang;
	ret;
}
"#;

/// One process's own CUDA context with one kernel ready to launch.
pub struct Direct {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    function: sys::CUfunction,
    block: [u32; 3],
    scratch: sys::CUdeviceptr,
    /// A page-locked host page mapped for the GPU (its device address), made on first use by
    /// [`Direct::launch_sync_marked`].
    mark: Option<(*mut c_void, sys::CUdeviceptr)>,
    /// An event without timing, made on first use by [`Direct::launch_sync_evented`].
    event: Option<sys::CUevent>,
}

/// How [`Direct::launch_then`] learns that the kernel is done.
#[derive(Clone, Copy)]
enum Then {
    /// `cuStreamSynchronize` right after the launch.
    Sync,
    /// The token written to the mark after the kernel, then `cuStreamSynchronize`.
    Mark(sys::CUdeviceptr, u64),
    /// An event recorded after the kernel, the token written to the mark after it, then
    /// `cuEventSynchronize` and the token stored to the mark by the CPU.
    Event(sys::CUevent, *mut c_void, sys::CUdeviceptr, u64),
}

impl Direct {
    /// A context on GPU `ordinal` with entry `entry` of `ptx` loaded and 4 KiB of scratch
    /// memory for its buffer argument.
    pub fn new(ordinal: usize, text: &str, entry: &str) -> Result<Direct, DriverError> {
        if ordinal >= device_count()? {
            return Err(DriverError::new(Errno::ENODEV, format!("cuda: no device {ordinal}")));
        }
        let block = ptx::entries(text)
            .map_err(|e| DriverError::new(Errno::EINVAL, e))?
            .into_iter()
            .find(|e| e.info.name == entry)
            .ok_or_else(|| DriverError::new(Errno::EINVAL, format!("ptx: no entry {entry}")))?
            .block;
        let image = CString::new(text).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: a NUL inside"))?;
        let name = CString::new(entry).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: a NUL inside"))?;
        // SAFETY: out pointers to locals throughout; each handle is used after it was made.
        unsafe {
            let mut dev = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")?;
            let mut ctx = std::ptr::null_mut();
            check(sys::cuCtxCreate_v2(&mut ctx, 0, dev), "cuCtxCreate")?;
            let mut stream = std::ptr::null_mut();
            check(sys::cuStreamCreate(&mut stream, 0), "cuStreamCreate")?;
            let mut module = std::ptr::null_mut();
            check(sys::cuModuleLoadData(&mut module, image.as_ptr().cast()), "cuModuleLoadData")?;
            let mut function = std::ptr::null_mut();
            check(sys::cuModuleGetFunction(&mut function, module, name.as_ptr()), "cuModuleGetFunction")?;
            let mut scratch = 0;
            check(sys::cuMemAlloc_v2(&mut scratch, 4096), "cuMemAlloc")?;
            check(sys::cuMemsetD32_v2(scratch, 0, 1024), "cuMemsetD32")?;
            Ok(Direct { ctx, stream, function, block, scratch, mark: None, event: None })
        }
    }

    /// Launches the entry on one block with (scratch, `value`) and waits for it.
    pub fn launch_sync(&mut self, value: u32) -> Result<(), DriverError> {
        self.launch_then(value, Then::Sync)
    }

    /// [`Direct::launch_sync`] with what the accel worker adds on the GPU after each job: the
    /// write of `token` to a page-locked host page (`cuStreamWriteValue64`), which tells the
    /// daemon which jobs were done should the context die. What that write costs.
    pub fn launch_sync_marked(&mut self, value: u32, token: u64) -> Result<(), DriverError> {
        let (_, at) = self.mark_page()?;
        self.launch_then(value, Then::Mark(at, token))
    }

    /// What the accel worker does after each job: an event recorded after the kernel, the
    /// GPU's write of `token` to the mark after that, and as soon as the event completes the
    /// CPU's store of the same token (which the daemon sees at once). Returns once the store
    /// is done: what the daemon waits for.
    pub fn launch_sync_evented(&mut self, value: u32, token: u64) -> Result<(), DriverError> {
        let (host, at) = self.mark_page()?;
        let event = match self.event {
            Some(e) => e,
            None => {
                let mut e = std::ptr::null_mut();
                // SAFETY: our context; an out pointer to a local.
                unsafe {
                    check(sys::cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")?;
                    check(
                        sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32),
                        "cuEventCreate",
                    )?;
                }
                *self.event.insert(e)
            }
        };
        self.launch_then(value, Then::Event(event, host, at, token))
    }

    /// The mark page (host address, device address), made on first use.
    fn mark_page(&mut self) -> Result<(*mut c_void, sys::CUdeviceptr), DriverError> {
        match self.mark {
            Some(page) => Ok(page),
            None => {
                let (mut host, mut device) = (std::ptr::null_mut(), 0);
                // SAFETY: our context; out pointers to locals; the page is freed on drop (or here,
                // when it cannot be mapped).
                unsafe {
                    check(sys::cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")?;
                    check(sys::cuMemHostAlloc(&mut host, 4096, sys::CU_MEMHOSTALLOC_DEVICEMAP), "cuMemHostAlloc")?;
                    let r = sys::cuMemHostGetDevicePointer_v2(&mut device, host, 0);
                    if let Err(e) = check(r, "cuMemHostGetDevicePointer") {
                        sys::cuMemFreeHost(host);
                        return Err(e);
                    }
                }
                Ok(*self.mark.insert((host, device)))
            }
        }
    }

    /// Launches, then waits as `then` says.
    fn launch_then(&mut self, value: u32, then: Then) -> Result<(), DriverError> {
        let (mut p, mut v) = (self.scratch, value);
        let mut params: [*mut c_void; 2] = [(&mut p as *mut u64).cast(), (&mut v as *mut u32).cast()];
        let b = self.block;
        // SAFETY: our context, function and stream; the parameters point at live locals.
        unsafe {
            check(sys::cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")?;
            check(
                sys::cuLaunchKernel(
                    self.function,
                    1,
                    1,
                    1,
                    b[0],
                    b[1],
                    b[2],
                    0,
                    self.stream,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                ),
                "cuLaunchKernel",
            )?;
            match then {
                Then::Sync => {}
                Then::Mark(at, token) => {
                    check(sys::cuStreamWriteValue64_v2(self.stream, at, token, 0), "cuStreamWriteValue64")?
                }
                Then::Event(event, host, at, token) => {
                    check(sys::cuEventRecord(event, self.stream), "cuEventRecord")?;
                    check(sys::cuStreamWriteValue64_v2(self.stream, at, token, 0), "cuStreamWriteValue64")?;
                    check(sys::cuEventSynchronize(event), "cuEventSynchronize")?;
                    // The page is page-aligned, so 8-byte aligned; the GPU's write of the
                    // same token may land before or after this one.
                    (*host.cast::<std::sync::atomic::AtomicU64>()).store(token, std::sync::atomic::Ordering::Release);
                    return Ok(());
                }
            }
            check(sys::cuStreamSynchronize(self.stream), "cuStreamSynchronize")
        }
    }
}

/// Compiles PTX `text` to a cubin for GPU `ordinal` with the driver's own linker
/// (`cuLinkAddData` + `cuLinkComplete`), in a context of its own: how the tests get machine
/// code on a machine without a CUDA toolkit.
pub fn ptx_to_cubin(ordinal: usize, text: &str) -> Result<Vec<u8>, DriverError> {
    if ordinal >= device_count()? {
        return Err(DriverError::new(Errno::ENODEV, format!("cuda: no device {ordinal}")));
    }
    let image = CString::new(text).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: a NUL inside"))?;
    let name = CString::new("program.ptx").map_err(|_| DriverError::new(Errno::EINVAL, "a NUL inside"))?;
    // SAFETY: out pointers to locals; the image outlives the link; the cubin is copied out
    // before the link state (which owns it) is destroyed, and the context after that.
    unsafe {
        let mut dev = 0;
        check(sys::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")?;
        let mut ctx = std::ptr::null_mut();
        check(sys::cuCtxCreate_v2(&mut ctx, 0, dev), "cuCtxCreate")?;
        let mut link = std::ptr::null_mut();
        let linked = (|| {
            check(sys::cuLinkCreate_v2(0, std::ptr::null_mut(), std::ptr::null_mut(), &mut link), "cuLinkCreate")?;
            check(
                sys::cuLinkAddData_v2(
                    link,
                    sys::CUjitInputType::CU_JIT_INPUT_PTX,
                    image.as_ptr() as *mut c_void,
                    text.len() + 1,
                    name.as_ptr(),
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                ),
                "cuLinkAddData",
            )?;
            let (mut cubin, mut size) = (std::ptr::null_mut(), 0usize);
            check(sys::cuLinkComplete(link, &mut cubin, &mut size), "cuLinkComplete")?;
            Ok(std::slice::from_raw_parts(cubin.cast::<u8>(), size).to_vec())
        })();
        if !link.is_null() {
            sys::cuLinkDestroy(link);
        }
        sys::cuCtxDestroy_v2(ctx);
        linked
    }
}

/// Device memory another process exported (accel's `vram`), mapped into this process on the
/// GPU that holds it, at an address valid in that GPU's primary context — the one PyTorch and
/// CuPy use — so a DLPack `kDLCUDA` tensor can point at it without a copy. Unmapped on drop.
pub struct DeviceMapping {
    mem: Option<crate::memory::CudaMem>,
    ordinal: i32,
    dev: sys::CUdevice,
    /// The GPU's primary context, retained while the mapping lives.
    ctx: sys::CUcontext,
}

// SAFETY: the mapping is an address range of the process, a device number and a retained
// primary context; CUDA allows using and releasing them from any thread.
unsafe impl Send for DeviceMapping {}
// SAFETY: as above; nothing in it changes after it is made.
unsafe impl Sync for DeviceMapping {}

impl DeviceMapping {
    /// Maps the allocation behind `fd` (at least `len` bytes), retaining its GPU's primary
    /// context for as long as the mapping lives.
    pub fn new(fd: &std::os::fd::OwnedFd, len: u64) -> Result<DeviceMapping, DriverError> {
        device_count()?;
        let (mem, ordinal) = crate::memory::import_anywhere(fd, len)?;
        Self::retaining(mem, ordinal)
    }

    /// The mapping of `mem`, on device `ordinal`, with that device's primary context retained.
    fn retaining(mem: crate::memory::CudaMem, ordinal: i32) -> Result<DeviceMapping, DriverError> {
        let mut dev = 0;
        let mut ctx = std::ptr::null_mut();
        // SAFETY: out pointers to locals; the ordinal came from the driver.
        unsafe {
            check(sys::cuDeviceGet(&mut dev, ordinal), "cuDeviceGet")?;
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
        }
        Ok(DeviceMapping { mem: Some(mem), ordinal, dev, ctx })
    }

    /// Allocates `len` bytes (rounded up to the allocation granularity) on device `ordinal`
    /// with the virtual memory management API, exportable as a POSIX descriptor, as another
    /// CUDA application would share memory with accel (`BoImportExternal`). Returns the
    /// mapping and the descriptor.
    pub fn allocate(ordinal: usize, len: u64) -> Result<(DeviceMapping, std::os::fd::OwnedFd), DriverError> {
        if ordinal >= device_count()? {
            return Err(DriverError::new(Errno::ENODEV, format!("cuda: no device {ordinal}")));
        }
        let (mem, fd) = crate::memory::CudaMem::new_on(ordinal as i32, len)?;
        Ok((Self::retaining(mem, ordinal as i32)?, fd))
    }

    /// Copies `out.len()` bytes at `offset` of the memory to `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), DriverError> {
        self.check_range(offset, out.len())?;
        self.in_context(|| {
            // SAFETY: inside the mapping (checked above).
            check(
                unsafe { sys::cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), self.ptr() + offset as u64, out.len()) },
                "cuMemcpyDtoH",
            )
        })
    }

    /// Copies `bytes` to `offset` of the memory, and waits until the device has them (a copy
    /// from pageable memory may return before its DMA ends): other processes see them then.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), DriverError> {
        self.check_range(offset, bytes.len())?;
        self.in_context(|| {
            // SAFETY: inside the mapping (checked above).
            unsafe {
                check(
                    sys::cuMemcpyHtoD_v2(self.ptr() + offset as u64, bytes.as_ptr().cast(), bytes.len()),
                    "cuMemcpyHtoD",
                )?;
                check(sys::cuCtxSynchronize(), "cuCtxSynchronize")
            }
        })
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), DriverError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(DriverError::new(Errno::ERANGE, "cuda: beyond the mapped memory")),
        }
    }

    /// The device address of the memory's first byte.
    pub fn ptr(&self) -> u64 {
        self.mem.as_ref().map_or(0, |m| m.ptr)
    }

    /// Bytes mapped (the allocation's size, at least the length asked for).
    pub fn len(&self) -> usize {
        self.mem.as_ref().map_or(0, |m| m.size)
    }

    /// Whether nothing is mapped (never, for a mapping that was made).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GPU's ordinal in this process.
    pub fn ordinal(&self) -> i32 {
        self.ordinal
    }

    /// Runs `f` with the GPU's primary context current on this thread.
    fn in_context<T>(&self, f: impl FnOnce() -> Result<T, DriverError>) -> Result<T, DriverError> {
        // SAFETY: the primary context is retained by this mapping; pushed and popped here.
        unsafe {
            check(sys::cuCtxPushCurrent_v2(self.ctx), "cuCtxPushCurrent")?;
            let r = f();
            let mut popped = std::ptr::null_mut();
            sys::cuCtxPopCurrent_v2(&mut popped);
            r
        }
    }
}

impl Drop for DeviceMapping {
    fn drop(&mut self) {
        drop(self.mem.take());
        // SAFETY: retained in `new`.
        unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.dev) };
    }
}

/// What another process does with a `vram` export — zero-copy, as a framework would take it:
/// maps it ([`DeviceMapping`]), reads its first `len` bytes in the GPU's primary context,
/// then writes `stamp` at its start.
pub fn import_read_write(fd: &std::os::fd::OwnedFd, len: usize, stamp: &[u8]) -> Result<Vec<u8>, DriverError> {
    let m = DeviceMapping::new(fd, len as u64)?;
    let mut out = vec![0u8; len];
    m.read(0, &mut out)?;
    m.write(0, stamp)?;
    Ok(out)
}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: our context and our page; everything in the context goes with it.
        unsafe {
            if let Some((host, _)) = self.mark {
                sys::cuMemFreeHost(host);
            }
            if let Some(event) = self.event {
                sys::cuEventDestroy_v2(event);
            }
            sys::cuCtxDestroy_v2(self.ctx)
        };
    }
}
