//! PTX programs: the text is kept, and the module loads into each context it runs in (a
//! recovery makes a new context, and the program reloads on its next launch).

use std::any::Any;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

use accel_hal::driver::{DriverError, Program};
use accel_hal::lock;
use accel_uapi::{EntryInfo, Errno};
use cudarc::driver::sys;

use crate::check;
use crate::gpu::{Entered, Gpu};
use crate::ptx;

/// The module as loaded into one context.
struct Loaded {
    generation: u64,
    module: sys::CUmodule,
    functions: Vec<sys::CUfunction>,
}

/// A PTX program.
pub struct CudaProgram {
    gpu: Arc<Gpu>,
    image: CString,
    pub(crate) entries: Vec<EntryInfo>,
    pub(crate) blocks: Vec<[u32; 3]>,
    loaded: Mutex<Loaded>,
}

// SAFETY: module and function handles are plain values used with their context current.
unsafe impl Send for CudaProgram {}
// SAFETY: as above.
unsafe impl Sync for CudaProgram {}

impl std::fmt::Debug for CudaProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaProgram").field("entries", &self.entries).finish()
    }
}

impl CudaProgram {
    /// Validates and reflects `text`, then loads it (JIT) into the entered context.
    pub(crate) fn load(gpu: &Arc<Gpu>, pass: &Entered<'_>, text: &str) -> Result<CudaProgram, DriverError> {
        let entries = ptx::entries(text).map_err(|e| DriverError::new(Errno::EINVAL, e))?;
        let image = CString::new(text).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: a NUL inside the text"))?;
        let (blocks, entries) = entries.into_iter().map(|e| (e.block, e.info)).unzip();
        let mut program = CudaProgram {
            gpu: gpu.clone(),
            image,
            entries,
            blocks,
            loaded: Mutex::new(Loaded { generation: u64::MAX, module: std::ptr::null_mut(), functions: Vec::new() }),
        };
        let loaded = program.load_into(pass)?;
        *program.loaded.get_mut().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(program)
    }

    fn load_into(&self, pass: &Entered<'_>) -> Result<Loaded, DriverError> {
        let mut module = std::ptr::null_mut();
        // SAFETY: a NUL-terminated PTX image; the driver JIT-compiles and validates it.
        check(unsafe { sys::cuModuleLoadData(&mut module, self.image.as_ptr().cast()) }, "cuModuleLoadData")?;
        let mut functions = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let name = CString::new(e.name.clone()).map_err(|_| DriverError::new(Errno::EINVAL, "ptx: bad name"))?;
            let mut f = std::ptr::null_mut();
            // SAFETY: a loaded module and a NUL-terminated name.
            let found = check(unsafe { sys::cuModuleGetFunction(&mut f, module, name.as_ptr()) }, "cuModuleGetFunction");
            if let Err(e) = found {
                // SAFETY: the module was just loaded and is not used.
                unsafe { sys::cuModuleUnload(module) };
                return Err(e);
            }
            functions.push(f);
        }
        Ok(Loaded { generation: pass.ctx.generation, module, functions })
    }

    /// Entry `entry`'s function in the entered context, loading the module there first if
    /// it was loaded into an earlier one.
    pub(crate) fn function(&self, pass: &Entered<'_>, entry: usize) -> Result<sys::CUfunction, DriverError> {
        let mut loaded = lock(&self.loaded);
        if loaded.generation != pass.ctx.generation {
            // The old module went with its context.
            *loaded = self.load_into(pass)?;
        }
        Ok(loaded.functions[entry])
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
        let loaded = lock(&self.loaded);
        let ctx = self.gpu.current();
        if loaded.generation == ctx.generation {
            // SAFETY: the module belongs to the current context; launches hold their
            // program until they completed.
            unsafe {
                sys::cuCtxSetCurrent(ctx.ctx);
                sys::cuModuleUnload(loaded.module);
            }
        }
    }
}
