//! cuBLAS, loaded at run time by hand: only the six entry points the driver calls (the
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
/// `cudaDataType_t`: `CUDA_R_16F`.
const CUDA_R_16F: c_int = 2;
/// `cudaDataType_t`: `CUDA_R_16BF`.
const CUDA_R_16BF: c_int = 14;
/// `cublasComputeType_t`: `CUBLAS_COMPUTE_32F` (f32 sums; tensor cores for 16-bit inputs).
const COMPUTE_32F: c_int = 68;
/// `cublasGemmAlgo_t`: `CUBLAS_GEMM_DEFAULT`.
const GEMM_DEFAULT: c_int = -1;
/// `cublasMath_t`: `CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION`:
/// no TF32 for f32, and 16-bit GEMMs keep f32 sums even across split-K reductions.
const MATH_F32_SUMS: c_int = 16;

/// A GEMM's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Elem {
    /// f32, through `cublasSgemm` (no TF32: exact f32 products).
    F32,
    /// IEEE half, through `cublasGemmEx`, summed in f32.
    F16,
    /// bfloat16, through `cublasGemmEx`, summed in f32.
    Bf16,
}

type Create = unsafe extern "C" fn(*mut Handle) -> c_int;
type SetStream = unsafe extern "C" fn(Handle, *mut c_void) -> c_int;
type SetWorkspace = unsafe extern "C" fn(Handle, *mut c_void, usize) -> c_int;
type SetMathMode = unsafe extern "C" fn(Handle, c_int) -> c_int;
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
#[allow(clippy::type_complexity)]
type GemmEx = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_void,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    *mut c_void,
    c_int,
    c_int,
    c_int,
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
    /// `cublasGemmEx` (CUDA 8 on), for 16-bit floats.
    gemm_ex: Option<GemmEx>,
    /// `cublasSetMathMode` (CUDA 9 on).
    set_math_mode: Option<SetMathMode>,
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
            let gemm_ex = get(b"cublasGemmEx\0").ok();
            let set_math_mode = get(b"cublasSetMathMode\0").ok();
            Ok(Cublas {
                create: std::mem::transmute::<*mut c_void, Create>(create),
                set_stream: std::mem::transmute::<*mut c_void, SetStream>(set_stream),
                set_workspace: set_workspace.map(|f| std::mem::transmute::<*mut c_void, SetWorkspace>(f)),
                sgemm: std::mem::transmute::<*mut c_void, Sgemm>(sgemm),
                gemm_ex: gemm_ex.map(|f| std::mem::transmute::<*mut c_void, GemmEx>(f)),
                set_math_mode: set_math_mode.map(|f| std::mem::transmute::<*mut c_void, SetMathMode>(f)),
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
        if let Some(set) = self.set_math_mode {
            // SAFETY: a handle just made. A cuBLAS before 11 does not know the flag: it keeps
            // its default (the same but for split-K reductions of 16-bit GEMMs).
            if let Err(e) = status_ok(unsafe { set(handle, MATH_F32_SUMS) }, "cublasSetMathMode") {
                tracing::debug!("{}: cuBLAS keeps its default math mode", e.message);
            }
        }
        if let Some(set) = self.set_workspace.filter(|_| workspace.1 > 0) {
            // SAFETY: per this function's contract.
            let status = unsafe { set(handle, workspace.0 as *mut c_void, workspace.1) };
            if let Err(e) = status_ok(status, "cublasSetWorkspace") {
                tracing::debug!("{}: cuBLAS keeps its default workspace", e.message);
            }
        }
        Ok(handle)
    }

    /// Row-major `C = alpha·A·B + beta·C` of device pointers to `ty` elements on the
    /// handle's stream: as column-major `Cᵀ = Bᵀ·Aᵀ`, the operands swapped and the layout
    /// kept. f32 through `cublasSgemm`; 16-bit floats through `cublasGemmEx` with f32 sums
    /// (`CUBLAS_COMPUTE_32F`: tensor cores where the GPU has them), as `torch.matmul` does.
    ///
    /// # Safety
    /// `handle` is exclusively the caller's; each pointer spans its matrix with its stride.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm_row_major(
        &self,
        handle: Handle,
        ty: Elem,
        (m, n, k): (c_int, c_int, c_int),
        alpha: f32,
        (a, lda): (u64, c_int),
        (b, ldb): (u64, c_int),
        beta: f32,
        (c, ldc): (u64, c_int),
    ) -> Result<(), DriverError> {
        let data = match ty {
            Elem::F32 => {
                let (a, b, c) = (a as *const f32, b as *const f32, c as *mut f32);
                // SAFETY: per this function's contract.
                let status =
                    unsafe { (self.sgemm)(handle, OP_N, OP_N, n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc) };
                return status_ok(status, "cublasSgemm");
            }
            Elem::F16 => CUDA_R_16F,
            Elem::Bf16 => CUDA_R_16BF,
        };
        let gemm_ex = self
            .gemm_ex
            .ok_or_else(|| DriverError::new(Errno::EOPNOTSUPP, format!("cuda: {} has no cublasGemmEx", self.path)))?;
        let (a, b, c) = (a as *const c_void, b as *const c_void, c as *mut c_void);
        let (alpha, beta) = (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void);
        // SAFETY: per this function's contract; alpha and beta are f32 as COMPUTE_32F wants.
        let status = unsafe {
            gemm_ex(
                handle,
                OP_N,
                OP_N,
                n,
                m,
                k,
                alpha,
                b,
                data,
                ldb,
                a,
                data,
                lda,
                beta,
                c,
                data,
                ldc,
                COMPUTE_32F,
                GEMM_DEFAULT,
            )
        };
        status_ok(status, "cublasGemmEx")
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
