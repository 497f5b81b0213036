//! DLPack: a buffer as a tensor other frameworks take without a copy (NumPy, PyTorch, CuPy):
//! the C structures of `dlpack.h` (unversioned and versioned), the capsules that carry them,
//! and what keeps the buffer (and its GPU mapping) alive until the consumer is done.

use super::*;

/// What a DLPack capsule keeps alive: the buffer (and its device mapping), the shape array
/// and the tensor.
pub(crate) struct DlpackCtx<M> {
    pub(crate) _buffer: Arc<accel::Buffer>,
    pub(crate) _mapping: Option<Arc<accel_driver_cuda::direct::DeviceMapping>>,
    pub(crate) shape: [i64; 1],
    pub(crate) managed: M,
}

#[repr(C)]
pub(crate) struct DLDevice {
    pub(crate) device_type: i32,
    pub(crate) device_id: i32,
}

#[repr(C)]
pub(crate) struct DLDataType {
    pub(crate) code: u8,
    pub(crate) bits: u8,
    pub(crate) lanes: u16,
}

#[repr(C)]
pub(crate) struct DLTensor {
    pub(crate) data: *mut c_void,
    pub(crate) device: DLDevice,
    pub(crate) ndim: i32,
    pub(crate) dtype: DLDataType,
    pub(crate) shape: *mut i64,
    pub(crate) strides: *mut i64,
    pub(crate) byte_offset: u64,
}

#[repr(C)]
pub(crate) struct DLManagedTensor {
    pub(crate) dl_tensor: DLTensor,
    pub(crate) manager_ctx: *mut c_void,
    pub(crate) deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
pub(crate) struct DLPackVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

/// DLPack 1.x's tensor: carries a version and flags (not read-only, so NumPy may write).
#[repr(C)]
pub(crate) struct DLManagedTensorVersioned {
    pub(crate) version: DLPackVersion,
    pub(crate) manager_ctx: *mut c_void,
    pub(crate) deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    pub(crate) flags: u64,
    pub(crate) dl_tensor: DLTensor,
}

/// `kDLCPU`: host memory (accel's host region).
pub(crate) const DL_CPU: i32 = 1;
/// `kDLCUDA`: memory of a CUDA device.
pub(crate) const DL_CUDA: i32 = 2;
/// `kDLUInt`.
pub(crate) const DL_UINT: u8 = 1;
pub(crate) const DLTENSOR: &CStr = c"dltensor";
pub(crate) const DLTENSOR_VERSIONED: &CStr = c"dltensor_versioned";

pub(crate) unsafe extern "C" fn dlpack_deleter(managed: *mut DLManagedTensor) {
    // SAFETY: manager_ctx is the Box<DlpackCtx> that owns `managed`; called once by the consumer
    // or by the capsule destructor, never both (the consumer renames the capsule).
    unsafe { drop(Box::from_raw((*managed).manager_ctx.cast::<DlpackCtx<DLManagedTensor>>())) };
}

pub(crate) unsafe extern "C" fn dlpack_versioned_deleter(managed: *mut DLManagedTensorVersioned) {
    // SAFETY: as for dlpack_deleter.
    unsafe { drop(Box::from_raw((*managed).manager_ctx.cast::<DlpackCtx<DLManagedTensorVersioned>>())) };
}

pub(crate) unsafe extern "C" fn dlpack_capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with the capsule; it still has its original name only if no
    // consumer took the tensor, and then we own the tensor.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
            let managed = ffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr()).cast::<DLManagedTensor>();
            if let Some(deleter) = (*managed).deleter {
                deleter(managed);
            }
        }
    }
}

pub(crate) unsafe extern "C" fn dlpack_versioned_capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: as for dlpack_capsule_destructor, with the versioned name.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, DLTENSOR_VERSIONED.as_ptr()) == 1 {
            let managed =
                ffi::PyCapsule_GetPointer(capsule, DLTENSOR_VERSIONED.as_ptr()).cast::<DLManagedTensorVersioned>();
            if let Some(deleter) = (*managed).deleter {
                deleter(managed);
            }
        }
    }
}

/// The two DLPack tensor layouts, as far as exporting them goes.
pub(crate) trait Managed {
    fn parts(&mut self) -> (&mut DLTensor, &mut *mut c_void);
}

impl Managed for DLManagedTensor {
    fn parts(&mut self) -> (&mut DLTensor, &mut *mut c_void) {
        (&mut self.dl_tensor, &mut self.manager_ctx)
    }
}

impl Managed for DLManagedTensorVersioned {
    fn parts(&mut self) -> (&mut DLTensor, &mut *mut c_void) {
        (&mut self.dl_tensor, &mut self.manager_ctx)
    }
}

/// Wraps `managed` (which keeps `buffer` alive) in a capsule named `name`.
pub(crate) fn export_capsule<'py, M: Managed>(
    py: Python<'py>,
    buffer: &Arc<accel::Buffer>,
    mapping: Option<Arc<accel_driver_cuda::direct::DeviceMapping>>,
    managed: M,
    name: &'static CStr,
    destructor: unsafe extern "C" fn(*mut ffi::PyObject),
) -> PyResult<Bound<'py, PyCapsule>> {
    let shape = [buffer.size() as i64];
    let raw = Box::into_raw(Box::new(DlpackCtx { _buffer: buffer.clone(), _mapping: mapping, shape, managed }));
    // SAFETY: `raw` is a live Box; the tensor points at its shape and back at its owner,
    // which the deleter frees.
    let managed = unsafe {
        let ctx = &mut *raw;
        let (tensor, manager_ctx) = ctx.managed.parts();
        tensor.shape = ctx.shape.as_mut_ptr();
        *manager_ctx = raw.cast();
        std::ptr::addr_of_mut!((*raw).managed)
    };
    let ptr = NonNull::new(managed.cast::<c_void>()).ok_or_else(|| PyBufferError::new_err("null tensor"))?;
    // SAFETY: `ptr` is the managed tensor; the destructor frees it unless a consumer took it.
    unsafe { PyCapsule::new_with_pointer_and_destructor(py, ptr, name, Some(destructor)) }
}

impl Buffer {
    /// The tensor over the buffer: its host pages, or its memory on the GPU (`mapping`).
    pub(crate) fn dl_tensor(&self, mapping: Option<&accel_driver_cuda::direct::DeviceMapping>) -> PyResult<DLTensor> {
        let (data, device) = match mapping {
            Some(m) => (m.ptr() as *mut c_void, DLDevice { device_type: DL_CUDA, device_id: m.ordinal() }),
            None => (self.mapped()?.cast(), DLDevice { device_type: DL_CPU, device_id: 0 }),
        };
        Ok(DLTensor {
            data,
            device,
            ndim: 1,
            dtype: DLDataType { code: DL_UINT, bits: 8, lanes: 1 },
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        })
    }
}
