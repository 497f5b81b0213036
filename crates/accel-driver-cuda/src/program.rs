//! PTX programs in the worker: a loaded module and its entries' functions.

use std::ffi::CString;

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::{check, ptx};

/// A loaded module.
pub(crate) struct Module {
    module: sys::CUmodule,
    pub(crate) functions: Vec<sys::CUfunction>,
    pub(crate) blocks: Vec<[u32; 3]>,
}

// SAFETY: module and function handles are plain values, used with their context current.
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

impl Module {
    /// JIT-compiles `text` in the current context and finds its entries.
    pub(crate) fn load(text: &str) -> Result<Module, DriverError> {
        let entries = ptx::entries(text).map_err(|e| DriverError::new(Errno::EINVAL, e))?;
        let image = CString::new(text).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: a NUL inside the text"))?;
        let mut module = std::ptr::null_mut();
        // SAFETY: a NUL-terminated PTX image; the driver JIT-compiles and validates it.
        check(unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr().cast()) }, "cuModuleLoadData")?;
        let mut m = Module { module, functions: Vec::new(), blocks: Vec::new() };
        for e in entries {
            let name = CString::new(e.info.name).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: bad name"))?;
            let mut f = std::ptr::null_mut();
            // SAFETY: a loaded module and a NUL-terminated name.
            check(unsafe { sys::cuModuleGetFunction(&mut f, module, name.as_ptr()) }, "cuModuleGetFunction")?;
            m.functions.push(f);
            m.blocks.push(e.block);
        }
        Ok(m)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: the daemon unloads a program only once the launches holding it completed.
        unsafe { sys::cuModuleUnload(self.module) };
    }
}
