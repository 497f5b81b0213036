//! cuBLAS, loaded at run time by hand: only the four entry points the driver calls (the
//! worker's handle lives as long as its process).
//!
//! A generated binding that resolves every symbol of one toolkit's cuBLAS at load (and panics
//! on the first one missing) ties the daemon to that toolkit's major version; cuBLAS's
//! major version follows the toolkit's (`libcublas.so.12`, `.13`, …) while these calls
//! have kept their ABI since CUDA 4. So the library is looked up by every major version we
//! know, newest first, then in the toolkit's usual folders; not finding it is not fatal (the
//! device opens, GEMM says why it cannot run).

use std::ffi::{c_int, c_void};

use accel_hal::driver::DriverError;
use accel_uapi::Errno;

/// `cublasHandle_t`.
pub(crate) type Handle = *mut c_void;

/// `CUBLAS_OP_N`.
const OP_N: c_int = 0;

type Create = unsafe extern "C" fn(*mut Handle) -> c_int;
type SetStream = unsafe extern "C" fn(Handle, *mut c_void) -> c_int;
type SetWorkspace = unsafe extern "C" fn(Handle, *mut c_void, usize) -> c_int;
#[allow(clippy::type_complexity)]
type Sgemm = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    *const f32,
    *mut f32,
    c_int,
) -> c_int;

/// The names tried with the dynamic linker's own search (`LD_LIBRARY_PATH`, ld.so.cache).
const NAMES: &[&str] = &["libcublas.so.13", "libcublas.so.12", "libcublas.so.14", "libcublas.so"];

/// Folders tried after that: the toolkit's default install.
const DIRS: &[&str] = &["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"];

/// A loaded cuBLAS.
pub(crate) struct Cublas {
    create: Create,
    set_stream: SetStream,
    /// `cublasSetWorkspace_v2` (CUDA 11.4 on); without it cuBLAS keeps its default pool.
    set_workspace: Option<SetWorkspace>,
    sgemm: Sgemm,
    /// Where it was found (for `accel info`).
    pub(crate) path: String,
    _lib: libloading::Library,
}

impl Cublas {
    /// Finds and loads cuBLAS: `$ACCEL_CUBLAS` when set, else [`NAMES`] through the linker,
    /// then in [`DIRS`]. The error lists what was tried.
    pub(crate) fn load() -> Result<Cublas, String> {
        let mut tried = Vec::new();
        let mut candidates: Vec<String> = Vec::new();
        if let Ok(path) = std::env::var("ACCEL_CUBLAS") {
            candidates.push(path);
        }
        candidates.extend(NAMES.iter().map(|n| n.to_string()));
        for dir in DIRS {
            candidates.extend(NAMES.iter().map(|n| format!("{dir}/{n}")));
        }
        for name in candidates {
            // SAFETY: loading cuBLAS runs its initialisers, which have no preconditions.
            match unsafe { libloading::Library::new(&name) } {
                Ok(lib) => match Self::resolve(lib, &name) {
                    Ok(c) => return Ok(c),
                    Err(e) => tried.push(e),
                },
                Err(_) => tried.push(name),
            }
        }
        Err(format!("cuBLAS not found (tried {})", tried.join(", ")))
    }

    fn resolve(lib: libloading::Library, name: &str) -> Result<Cublas, String> {
        // SAFETY: the types are cuBLAS's documented prototypes of these symbols.
        unsafe {
            let get = |sym: &[u8]| lib.get::<*mut c_void>(sym).map(|s| *s).map_err(|e| format!("{name}: {e}"));
            let (create, set_stream, sgemm) =
                (get(b"cublasCreate_v2\0")?, get(b"cublasSetStream_v2\0")?, get(b"cublasSgemm_v2\0")?);
            let set_workspace = get(b"cublasSetWorkspace_v2\0").ok();
            Ok(Cublas {
                create: std::mem::transmute::<*mut c_void, Create>(create),
                set_stream: std::mem::transmute::<*mut c_void, SetStream>(set_stream),
                set_workspace: set_workspace.map(|f| std::mem::transmute::<*mut c_void, SetWorkspace>(f)),
                sgemm: std::mem::transmute::<*mut c_void, Sgemm>(sgemm),
                path: name.to_string(),
                _lib: lib,
            })
        }
    }

    /// A new handle (in the calling thread's current context) working on `stream`, with
    /// `workspace` (device pointer, bytes) as its workspace where cuBLAS takes one: a
    /// workspace set once, as frameworks do, rather than cuBLAS's default pool (setting the
    /// stream resets the workspace, so both are set here, once).
    ///
    /// # Safety
    /// `stream` belongs to the current context; the workspace is device memory of it that
    /// outlives the handle.
    pub(crate) unsafe fn create(&self, stream: *mut c_void, workspace: (u64, usize)) -> Result<Handle, DriverError> {
        let mut handle = std::ptr::null_mut();
        // SAFETY: out pointer to a local.
        let status = unsafe { (self.create)(&mut handle) };
        status_ok(status, "cublasCreate")?;
        // SAFETY: per this function's contract.
        status_ok(unsafe { (self.set_stream)(handle, stream) }, "cublasSetStream")?;
        if let Some(set) = self.set_workspace.filter(|_| workspace.1 > 0) {
            // SAFETY: per this function's contract.
            let status = unsafe { set(handle, workspace.0 as *mut c_void, workspace.1) };
            if let Err(e) = status_ok(status, "cublasSetWorkspace") {
                tracing::debug!("{}: cuBLAS keeps its default workspace", e.message);
            }
        }
        Ok(handle)
    }

    /// Row-major `C = alpha·A·B + beta·C` of device pointers on the handle's stream: as
    /// column-major `Cᵀ = Bᵀ·Aᵀ`, the operands swapped and the layout kept.
    ///
    /// # Safety
    /// `handle` is exclusively the caller's; each pointer spans its matrix with its stride.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm_row_major(
        &self,
        handle: Handle,
        (m, n, k): (c_int, c_int, c_int),
        alpha: f32,
        (a, lda): (*const f32, c_int),
        (b, ldb): (*const f32, c_int),
        beta: f32,
        (c, ldc): (*mut f32, c_int),
    ) -> Result<(), DriverError> {
        // SAFETY: per this function's contract.
        let status = unsafe { (self.sgemm)(handle, OP_N, OP_N, n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc) };
        status_ok(status, "cublasSgemm")
    }
}

/// cuBLAS's status names (`cublasStatus_t`).
fn status_ok(status: c_int, what: &str) -> Result<(), DriverError> {
    let (name, errno) = match status {
        0 => return Ok(()),
        1 => ("CUBLAS_STATUS_NOT_INITIALIZED", Errno::ENODEV),
        3 => ("CUBLAS_STATUS_ALLOC_FAILED", Errno::ENOMEM),
        7 => ("CUBLAS_STATUS_INVALID_VALUE", Errno::EINVAL),
        8 => ("CUBLAS_STATUS_ARCH_MISMATCH", Errno::EOPNOTSUPP),
        11 => ("CUBLAS_STATUS_MAPPING_ERROR", Errno::EIO),
        13 => ("CUBLAS_STATUS_EXECUTION_FAILED", Errno::EIO),
        14 => ("CUBLAS_STATUS_INTERNAL_ERROR", Errno::EIO),
        15 => ("CUBLAS_STATUS_NOT_SUPPORTED", Errno::EOPNOTSUPP),
        16 => ("CUBLAS_STATUS_LICENSE_ERROR", Errno::EIO),
        _ => ("unknown cuBLAS status", Errno::EIO),
    };
    Err(DriverError::new(errno, format!("cuda: {what}: {name} ({status})")))
}
