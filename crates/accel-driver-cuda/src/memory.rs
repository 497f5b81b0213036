//! Device memory: a physical allocation (virtual memory management API) mapped at a
//! reserved virtual range, exported at birth to a POSIX descriptor that outlives contexts.

use std::any::Any;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use accel_hal::driver::{DeviceMemory, DriverError};
use accel_hal::lock;
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::check;
use crate::gpu::{Entered, Gpu};

const POSIX_FD: sys::CUmemAllocationHandleType = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;

/// Where an allocation is mapped now (it moves only across a recovery).
struct Place {
    ptr: sys::CUdeviceptr,
    handle: sys::CUmemGenericAllocationHandle,
    /// Unmapped for good (the memory was freed).
    dead: bool,
}

/// One allocation's mapping.
pub(crate) struct Mapping {
    place: Mutex<Place>,
    /// The mapping's size (a multiple of the granularity).
    size: usize,
    /// The physical memory, as a descriptor: it keeps the memory across contexts.
    fd: OwnedFd,
}

impl Mapping {
    /// The device address now.
    pub(crate) fn ptr(&self) -> sys::CUdeviceptr {
        lock(&self.place).ptr
    }

    /// Lets go of the mapping and the allocation handle in the current (dying) context; the
    /// descriptor keeps the memory. Errors are ignored: the context may be poisoned.
    pub(crate) fn unmap(&self) {
        let p = lock(&self.place);
        if !p.dead {
            self.release(&p);
        }
    }

    /// Unmaps for good (the memory is freed once the descriptor closes too).
    fn free(&self) {
        let mut p = lock(&self.place);
        if !p.dead {
            self.release(&p);
            p.dead = true;
        }
    }

    fn release(&self, p: &Place) {
        // SAFETY: the range and handle are this mapping's; no job uses them (recovery or drop).
        unsafe {
            sys::cuMemUnmap(p.ptr, self.size);
            sys::cuMemAddressFree(p.ptr, self.size);
            sys::cuMemRelease(p.handle);
        }
    }

    /// Imports the memory again from its descriptor into the current (new) context and maps
    /// it, at its old address when that is free.
    pub(crate) fn map(&self, ordinal: i32) -> Result<(), DriverError> {
        let mut p = lock(&self.place);
        if p.dead {
            return Ok(());
        }
        let mut handle = 0;
        let os_handle = self.fd.as_raw_fd() as usize as *mut c_void;
        // SAFETY: our own exported descriptor; out pointer to a local.
        check(
            // SAFETY: as stated above.
            unsafe { sys::cuMemImportFromShareableHandle(&mut handle, os_handle, POSIX_FD) },
            "cuMemImportFromShareableHandle",
        )?;
        let ptr = reserve_and_map(handle, self.size, p.ptr, ordinal)?;
        *p = Place { ptr, handle, dead: false };
        Ok(())
    }
}

/// Reserves `size` bytes of address space (at `hint` if free) and maps `handle` there,
/// read-write for device `ordinal`. On error the handle is released.
fn reserve_and_map(
    handle: sys::CUmemGenericAllocationHandle,
    size: usize,
    hint: sys::CUdeviceptr,
    ordinal: i32,
) -> Result<sys::CUdeviceptr, DriverError> {
    let mut ptr = 0;
    // SAFETY: out pointer to a local; the hint is only a wish.
    let reserved = check(unsafe { sys::cuMemAddressReserve(&mut ptr, size, 0, hint, 0) }, "cuMemAddressReserve");
    let mapped = reserved.and_then(|()| {
        // SAFETY: the range was reserved for this size; the handle is unmapped.
        check(unsafe { sys::cuMemMap(ptr, size, 0, handle, 0) }, "cuMemMap")
    });
    let accessible = mapped.and_then(|()| {
        let access = sys::CUmemAccessDesc {
            location: sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: ordinal },
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range is mapped; one access descriptor.
        check(unsafe { sys::cuMemSetAccess(ptr, size, &access, 1) }, "cuMemSetAccess")
    });
    if let Err(e) = accessible {
        // SAFETY: undoing what succeeded above (calls on what was not done fail harmlessly).
        unsafe {
            if ptr != 0 {
                sys::cuMemUnmap(ptr, size);
                sys::cuMemAddressFree(ptr, size);
            }
            sys::cuMemRelease(handle);
        }
        return Err(e);
    }
    Ok(ptr)
}

/// Device memory as the core sees it.
pub struct CudaMem {
    gpu: Arc<Gpu>,
    pub(crate) map: Arc<Mapping>,
    len: u64,
}

impl std::fmt::Debug for CudaMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaMem").field("len", &self.len).finish()
    }
}

impl CudaMem {
    /// Allocates `len` bytes in the entered context.
    pub(crate) fn new(gpu: &Arc<Gpu>, _pass: &Entered<'_>, len: u64) -> Result<CudaMem, DriverError> {
        // SAFETY: a zeroed property struct is valid; the fields that matter are set below.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.requestedHandleTypes = POSIX_FD;
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
        let mut raw: std::ffi::c_int = -1;
        // SAFETY: the allocation was made exportable as a POSIX descriptor; `raw` receives it.
        let exported = check(
            // SAFETY: as stated above.
            unsafe { sys::cuMemExportToShareableHandle((&mut raw as *mut std::ffi::c_int).cast(), handle, POSIX_FD, 0) },
            "cuMemExportToShareableHandle",
        );
        if let Err(e) = exported {
            // SAFETY: the handle was just made and is not mapped.
            unsafe { sys::cuMemRelease(handle) };
            return Err(e);
        }
        // SAFETY: the driver handed over a new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ptr = reserve_and_map(handle, size, 0, gpu.ordinal)?;
        let map = Arc::new(Mapping { place: Mutex::new(Place { ptr, handle, dead: false }), size, fd });
        lock(&gpu.mappings).push(Arc::downgrade(&map));
        Ok(CudaMem { gpu: gpu.clone(), map, len })
    }

    /// The device address now.
    pub(crate) fn ptr(&self) -> sys::CUdeviceptr {
        self.map.ptr()
    }

    /// The mapping's size.
    pub(crate) fn size(&self) -> usize {
        self.map.size
    }
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        // Not `enter`: a staged operand is dropped by a job that holds a pass.
        // SAFETY: a context of this device; jobs hold their operands until they completed.
        unsafe { sys::cuCtxSetCurrent(self.gpu.current().ctx) };
        self.map.free();
    }
}

impl DeviceMemory for CudaMem {
    fn len(&self) -> u64 {
        self.len
    }

    fn zero(&self) -> Result<(), DriverError> {
        let pass = self.gpu.enter()?;
        let stream = pass.ctx.streams[1];
        // SAFETY: the mapping is `size` bytes, a multiple of the granularity (of 4).
        check(unsafe { sys::cuMemsetD32Async(self.ptr(), 0, self.size() / 4, stream) }, "cuMemsetD32Async")?;
        // SAFETY: a stream of the entered context.
        check(unsafe { sys::cuStreamSynchronize(stream) }, "cuStreamSynchronize")
    }

    fn export(&self) -> Result<OwnedFd, DriverError> {
        self.map.fd.try_clone().map_err(|e| DriverError::new(Errno::EMFILE, format!("cuda: export: {e}")))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
