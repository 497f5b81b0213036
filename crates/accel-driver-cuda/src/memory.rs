//! Device memory in the worker: a physical allocation (virtual memory management API) mapped
//! at a reserved virtual range, exported at birth to a POSIX descriptor. The daemon keeps
//! that descriptor: it keeps the memory alive when the worker dies, and a new worker maps it
//! again ([`CudaMem::import`]).

use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::check;
use crate::gpu::Gpu;

const POSIX_FD: sys::CUmemAllocationHandleType =
    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;

/// One allocation, mapped.
pub(crate) struct CudaMem {
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) size: usize,
    handle: sys::CUmemGenericAllocationHandle,
}

/// The allocation properties: pinned device memory exportable as a POSIX descriptor.
fn properties(ordinal: i32) -> sys::CUmemAllocationProp {
    // SAFETY: a zeroed property struct is valid; the fields that matter are set below.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.requestedHandleTypes = POSIX_FD;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = ordinal;
    prop
}

/// `len` bytes (at least one) rounded up to the allocation granularity of `prop`.
fn rounded(prop: &sys::CUmemAllocationProp, len: u64) -> Result<usize, DriverError> {
    let mut gran = 0usize;
    let minimum = sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM;
    // SAFETY: valid pointers to a local and to the caller's property struct.
    check(unsafe { sys::cuMemGetAllocationGranularity(&mut gran, prop, minimum) }, "cuMemGetAllocationGranularity")?;
    usize::try_from(len.max(1))
        .ok()
        .and_then(|len| len.checked_next_multiple_of(gran.max(1)))
        .ok_or_else(|| DriverError::new(Errno::ENOMEM, "allocation too large"))
}

impl CudaMem {
    /// Allocates `len` bytes (rounded up to the granularity); returns the memory and its
    /// exported descriptor.
    pub(crate) fn new(gpu: &Gpu, len: u64) -> Result<(CudaMem, OwnedFd), DriverError> {
        Self::new_on(gpu.ordinal, len)
    }

    /// [`CudaMem::new`] on device `ordinal` of this process (needs no current context).
    pub(crate) fn new_on(ordinal: i32, len: u64) -> Result<(CudaMem, OwnedFd), DriverError> {
        let prop = properties(ordinal);
        let size = rounded(&prop, len)?;
        let mut handle = 0;
        // SAFETY: valid property and out pointer.
        check(unsafe { sys::cuMemCreate(&mut handle, size, &prop, 0) }, "cuMemCreate")?;
        let mut raw: std::ffi::c_int = -1;
        let exported = check(
            // SAFETY: the allocation was made exportable as a POSIX descriptor; `raw` receives it.
            unsafe {
                sys::cuMemExportToShareableHandle((&mut raw as *mut std::ffi::c_int).cast(), handle, POSIX_FD, 0)
            },
            "cuMemExportToShareableHandle",
        );
        if let Err(e) = exported {
            // SAFETY: the handle was just made and is not mapped.
            unsafe { sys::cuMemRelease(handle) };
            return Err(e);
        }
        // SAFETY: the driver handed over a new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ptr = map(handle, size, ordinal)?;
        Ok((CudaMem { ptr, size, handle }, fd))
    }

    /// Maps the allocation behind `fd` of at least `len` bytes: exported by [`CudaMem::new`]
    /// (maybe by an earlier worker), or by another process on this GPU (an external
    /// import). An allocation of another GPU, or a descriptor that is none, is `EINVAL`.
    pub(crate) fn import(gpu: &Gpu, fd: &OwnedFd, len: u64) -> Result<CudaMem, DriverError> {
        import_on(fd, len, Some(gpu.ordinal)).map(|(mem, _)| mem)
    }
}

/// Maps an allocation another process exported as `fd` (at least `len` bytes) on whichever
/// GPU holds it — found from the allocation itself, in this process's numbering of devices
/// — and returns it with that device's ordinal. Needs no current context.
pub(crate) fn import_anywhere(fd: &OwnedFd, len: u64) -> Result<(CudaMem, i32), DriverError> {
    import_on(fd, len, None)
}

/// Imports and maps the allocation behind `fd` on the GPU that holds it, which must be
/// `want` where given.
fn import_on(fd: &OwnedFd, len: u64, want: Option<i32>) -> Result<(CudaMem, i32), DriverError> {
    let mut handle = 0;
    let os_handle = fd.as_raw_fd() as usize as *mut c_void;
    check(
        // SAFETY: any descriptor (the driver checks it is an export); out pointer to a local.
        unsafe { sys::cuMemImportFromShareableHandle(&mut handle, os_handle, POSIX_FD) },
        "cuMemImportFromShareableHandle",
    )
    .map_err(|e| {
        DriverError::new(Errno::EINVAL, format!("{} (not a CUDA allocation's POSIX descriptor)", e.message))
    })?;
    // SAFETY: a zeroed property struct is valid to overwrite; the handle is live.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    let sized = check(
        // SAFETY: as above.
        unsafe { sys::cuMemGetAllocationPropertiesFromHandle(&mut prop, handle) },
        "cuMemGetAllocationPropertiesFromHandle",
    )
    .and_then(|()| {
        let on_device = prop.location.type_ == sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        match want {
            Some(ordinal) if !on_device || prop.location.id != ordinal => Err(DriverError::new(
                Errno::EINVAL,
                format!("cuda: the allocation is memory of device {}, not of device {ordinal}", prop.location.id),
            )),
            _ => rounded(&prop, len),
        }
    });
    let size = match sized {
        Ok(size) => size,
        Err(e) => {
            // SAFETY: imported above, not mapped.
            unsafe { sys::cuMemRelease(handle) };
            return Err(e);
        }
    };
    let ordinal = prop.location.id;
    // A mapping past the allocation's end is CUDA_ERROR_INVALID_VALUE: EINVAL.
    let ptr = map(handle, size, ordinal)?;
    Ok((CudaMem { ptr, size, handle }, ordinal))
}

/// Reserves address space for `size` bytes and maps `handle` there, read-write for device
/// `ordinal`. On error the handle is released.
fn map(handle: sys::CUmemGenericAllocationHandle, size: usize, ordinal: i32) -> Result<sys::CUdeviceptr, DriverError> {
    let mut ptr = 0;
    // SAFETY: out pointer to a local; no fixed address asked.
    let reserved = check(unsafe { sys::cuMemAddressReserve(&mut ptr, size, 0, 0, 0) }, "cuMemAddressReserve");
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

impl Drop for CudaMem {
    fn drop(&mut self) {
        // SAFETY: the range and handle are this allocation's; no job uses it any more (the
        // daemon frees memory only once the jobs holding it completed).
        unsafe {
            sys::cuMemUnmap(self.ptr, self.size);
            sys::cuMemAddressFree(self.ptr, self.size);
            sys::cuMemRelease(self.handle);
        }
    }
}
