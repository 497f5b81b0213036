//! The `cpu` driver: the embedded default device, doing real compute on host
//! threads. GEMM runs on the `gemm` crate (SIMD micro-kernels, multithreaded
//! through rayon for large problems).

use accel_core::driver::{host, Driver, DriverInfo, JobCtx, JobOp};
use accel_core::bo::BoMatrix;
use accel_uapi::{Category, Errno, OpKind};

/// Below this many multiply-adds a GEMM runs on one thread: spawning costs more.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// A CPU device.
#[derive(Debug, Clone)]
pub struct CpuDevice {
    threads: usize,
    memory_bytes: u64,
}

impl CpuDevice {
    /// A device using every available CPU and up to half the machine's memory.
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuDevice { threads, memory_bytes: mem_total().map_or(1 << 32, |m| m / 2) }
    }

    /// Sets how many threads a GEMM may use.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Sets how much memory buffers may take in total.
    pub fn with_memory(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
        self
    }
}

impl Default for CpuDevice {
    fn default() -> Self {
        Self::new()
    }
}

fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim();
    kb.parse::<u64>().ok().map(|k| k * 1024)
}

fn cpu_model() -> (String, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    (field("model name").unwrap_or_else(|| "host CPU".into()), field("vendor_id").unwrap_or_else(|| "unknown".into()))
}

/// `C = alpha·A·B + beta·C` on row-major matrices, with `threads` threads.
///
/// # Safety
/// The matrices must describe memory that stays mapped for the call, with C not
/// overlapping A or B. accel-core guarantees both for every job it hands a driver.
pub unsafe fn gemm_f32(a: &BoMatrix, b: &BoMatrix, c: &BoMatrix, alpha: f32, beta: f32, threads: usize) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_MIN_FLOPS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: per this function's contract; strides are in elements, rows are contiguous.
    // The gemm crate computes dst := alpha·dst + beta·lhs·rhs, so BLAS alpha/beta swap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.range.ptr().cast::<f32>(),
            1,
            c.row_stride as isize,
            beta != 0.0,
            a.range.ptr().cast::<f32>(),
            1,
            a.row_stride as isize,
            b.range.ptr().cast::<f32>(),
            1,
            b.row_stride as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}

impl Driver for CpuDevice {
    fn info(&self) -> DriverInfo {
        let (name, vendor) = cpu_model();
        DriverInfo {
            driver: "cpu",
            name,
            vendor,
            categories: vec![Category::Shared, Category::Exclusive, Category::Oneshot],
            ops: vec![OpKind::Nop, OpKind::Fill, OpKind::Copy, OpKind::GemmF32],
            memory_bytes: self.memory_bytes,
            compute_units: self.threads as u32,
        }
    }

    fn run_job(&self, op: &JobOp, _ctx: &JobCtx) -> Result<(), Errno> {
        match op {
            JobOp::Nop => {}
            JobOp::Fill { dst, pattern } => host::fill(dst, *pattern),
            JobOp::Copy { src, dst } => host::copy(src, dst),
            JobOp::GemmF32 { a, b, c, alpha, beta } => {
                if a.range.ptr().align_offset(4) != 0 || b.range.ptr().align_offset(4) != 0 || c.range.ptr().align_offset(4) != 0 {
                    return Err(Errno::EINVAL);
                }
                // SAFETY: core validated the views (in bounds, C disjoint from A and B) and the
                // job holds the buffers, so the memory stays mapped.
                unsafe { gemm_f32(a, b, c, *alpha, *beta, self.threads) }
            }
            JobOp::Driver { .. } => return Err(Errno::EOPNOTSUPP),
        }
        Ok(())
    }
}
