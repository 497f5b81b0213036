//! Programs in the worker: a loaded module (PTX text, JIT-compiled, or a cubin/fatbin) and
//! its entries' functions.

use std::ffi::CString;

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use cudarc::driver::sys;

use crate::wire::Entry;
use crate::{check, cubin, ptx};

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

impl Module {
    /// Loads a cubin or fatbin in the current context; its entries, named and sized by the
    /// driver (sorted by name). The block is the one the kernel states in the image
    /// (`.reqntid`, `.maxntid`: [`cubin::blocks`]), else the function's own thread limit where
    /// it is below 1024, else [`ptx::DEFAULT_BLOCK`].
    pub(crate) fn load_image(image: &[u8]) -> Result<(Module, Vec<Entry>), DriverError> {
        let mut module = std::ptr::null_mut();
        // SAFETY: the driver validates the image (its headers carry its sizes); `image`
        // stays alive for the call.
        check(unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr().cast()) }, "cuModuleLoadData")?;
        let mut m = Module { module, functions: Vec::new(), blocks: Vec::new() };
        let stated = cubin::blocks(image);
        let mut count = 0u32;
        // SAFETY: a loaded module; out pointer to a local.
        check(unsafe { sys::cuModuleGetFunctionCount(&mut count, module) }, "cuModuleGetFunctionCount")?;
        let mut functions = vec![std::ptr::null_mut(); count as usize];
        // SAFETY: room for `count` handles.
        check(
            // SAFETY: as stated above.
            unsafe { sys::cuModuleEnumerateFunctions(functions.as_mut_ptr(), count, module) },
            "cuModuleEnumerateFunctions",
        )?;
        let mut entries = Vec::with_capacity(functions.len());
        for f in functions {
            let mut name = std::ptr::null();
            // SAFETY: a function of the loaded module; the name lives as long as the module.
            check(unsafe { sys::cuFuncGetName(&mut name, f) }, "cuFuncGetName")?;
            // SAFETY: a NUL-terminated string owned by the driver.
            let cname = unsafe { std::ffi::CStr::from_ptr(name) }.to_owned();
            let name = cname.to_string_lossy().into_owned();
            // Enumerated handles may not be loaded yet (lazy module loading): getting the
            // function by name loads it.
            let mut f = f;
            // SAFETY: a loaded module and a NUL-terminated name; out pointer to a local.
            check(unsafe { sys::cuModuleGetFunction(&mut f, module, cname.as_ptr()) }, "cuModuleGetFunction")?;
            let mut params = Vec::new();
            loop {
                let (mut offset, mut size) = (0usize, 0usize);
                // SAFETY: out pointers to locals; an index past the last parameter is refused.
                let r = unsafe { sys::cuFuncGetParamInfo(f, params.len(), &mut offset, &mut size) };
                if r != sys::CUresult::CUDA_SUCCESS {
                    break;
                }
                params.push(size as u32);
            }
            let stated = stated.get(&name).map(|b| b.shape());
            let mut max = 0;
            use sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK;
            // SAFETY: out pointer to a local.
            check(
                // SAFETY: as stated above.
                unsafe { sys::cuFuncGetAttribute(&mut max, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f) },
                "cuFuncGetAttribute",
            )?;
            // The block the kernel states (`.reqntid`, else `.maxntid`, read from the image);
            // else one held down by its registers reports fewer threads per block than any
            // GPU's 1024, and runs with that many; others with the default.
            let block = match (stated, max) {
                (Some(block), _) => block,
                (None, 1..1024) => [max as u32, 1, 1],
                (None, _) => ptx::DEFAULT_BLOCK,
            };
            entries.push((Entry { name, params, block }, f));
        }
        entries.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        for (e, f) in &entries {
            m.functions.push(*f);
            m.blocks.push(e.block);
        }
        Ok((m, entries.into_iter().map(|(e, _)| e).collect()))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: the daemon unloads a program only once the launches holding it completed.
        unsafe { sys::cuModuleUnload(self.module) };
    }
}
