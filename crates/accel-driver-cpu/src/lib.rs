//! The `cpu` driver: the embedded default device, doing real compute on host
//! threads. GEMM runs on the `gemm` crate (SIMD micro-kernels, multithreaded
//! through rayon for large problems).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod builtin;
pub use builtin::Builtin;

use accel_hal::bo::BoMatrix;
use accel_hal::driver::{host, Driver, DriverError, DriverInfo, JobCtx, JobOp, Program};
use accel_hal::ras::{RasNodeDesc, RasSink};
use accel_uapi::{Category, EngineInfo, Errno, Float16, OpKind, Severity};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// How often the RAS monitor reads EDAC counters and thermal zones.
const RAS_POLL: Duration = Duration::from_secs(2);
/// Temperature (m°C) above which a thermal zone counts an over-temperature event.
const OVER_TEMPERATURE_MC: i64 = 95_000;

/// Sum of a counter file over Linux EDAC memory controllers (`None` without EDAC).
fn edac_total(root: &Path, file: &str) -> Option<u64> {
    let mut total = None;
    for mc in std::fs::read_dir(root).ok()?.flatten() {
        if let Some(v) = std::fs::read_to_string(mc.path().join(file)).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            *total.get_or_insert(0) += v;
        }
    }
    total
}

/// Hottest thermal zone, m°C (`None` without thermal zones).
fn max_temperature(root: &Path) -> Option<i64> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|z| std::fs::read_to_string(z.path().join("temp")).ok()?.trim().parse::<i64>().ok())
        .max()
}

/// Reports new EDAC errors (counted from the daemon's start, so a replayed log is
/// never counted twice) and each rise above [`OVER_TEMPERATURE_MC`], until the
/// daemon goes away.
fn ras_monitor(sink: RasSink) {
    let edac = Path::new("/sys/devices/system/edac/mc");
    let thermal = Path::new("/sys/class/thermal");
    let (mut ce, mut ue) = (edac_total(edac, "ce_count"), edac_total(edac, "ue_count"));
    let mut hot = false;
    while sink.is_alive() {
        std::thread::sleep(RAS_POLL);
        for (last, file, counter) in [(&mut ce, "ce_count", "ecc-corrected"), (&mut ue, "ue_count", "ecc-uncorrected")]
        {
            let now = edac_total(edac, file);
            if let (Some(before), Some(now)) = (*last, now) {
                if now > before {
                    let _ = sink.report("memory", counter, now - before);
                }
            }
            *last = now;
        }
        let over = max_temperature(thermal).is_some_and(|t| t > OVER_TEMPERATURE_MC);
        if over && !hot {
            let _ = sink.report("thermal", "over-temperature", 1);
        }
        hot = over;
    }
}

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
        info.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
    };
    (field("model name").unwrap_or_else(|| "host CPU".into()), field("vendor_id").unwrap_or_else(|| "unknown".into()))
}

/// `C = alpha·A·B + beta·C` on row-major f32 matrices (A m×k, B k×n, C m×n;
/// `lda`/`ldb`/`ldc` are row strides in elements), with up to `threads` threads.
///
/// The bench calls this same function in-process as the baseline for the daemon.
///
/// # Safety
/// The pointers must be valid for the spans the dimensions and strides describe,
/// for the whole call, with C not overlapping A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    let parallelism = if threads > 1 && m * n * k >= PARALLEL_MIN_FLOPS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: per this function's contract; column stride 1, row strides as given.
    // The gemm crate computes dst := alpha·dst + beta·lhs·rhs, so BLAS alpha/beta swap.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            beta != 0.0,
            a,
            1,
            lda as isize,
            b,
            1,
            ldb as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}

fn gemm_job(a: &BoMatrix, b: &BoMatrix, c: &BoMatrix, alpha: f32, beta: f32, threads: usize) -> Result<(), Errno> {
    let ptr = |m: &BoMatrix| m.range.host().map(|v| v.as_mut_ptr().cast::<f32>()).ok_or(Errno::EINVAL);
    let (pa, pb, pc) = (ptr(a)?, ptr(b)?, ptr(c)?);
    if !pa.is_aligned() || !pb.is_aligned() || !pc.is_aligned() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: core validated the views (in bounds, C disjoint from A and B) and the job
    // holds the buffers, so the memory stays mapped for the call.
    unsafe {
        sgemm(c.rows, c.cols, a.cols, pa, a.row_stride, pb, b.row_stride, pc, c.row_stride, alpha, beta, threads)
    };
    Ok(())
}

/// A 16-bit float matrix's elements, row after row, as f32 (packed: `cols` apart).
fn widen(m: &BoMatrix, ty: Float16) -> Result<Vec<f32>, Errno> {
    let host = m.range.host().ok_or(Errno::EINVAL)?;
    let (mut bytes, mut out) = (vec![0u8; m.cols * 2], vec![0f32; m.rows * m.cols]);
    let mut bits = vec![0u16; m.cols];
    for (r, row) in out.chunks_exact_mut(m.cols).enumerate() {
        host.read(r * m.row_stride * 2, &mut bytes)?;
        for (b, pair) in bits.iter_mut().zip(bytes.chunks_exact(2)) {
            *b = u16::from_le_bytes([pair[0], pair[1]]);
        }
        match ty {
            Float16::F16 => bits.reinterpret_cast::<half::f16>().convert_to_f32_slice(row),
            Float16::Bf16 => bits.reinterpret_cast::<half::bf16>().convert_to_f32_slice(row),
        }
    }
    Ok(out)
}

/// Rounds packed f32 rows to the nearest 16-bit float (ties to even) into `m`.
fn narrow(m: &BoMatrix, ty: Float16, values: &[f32]) -> Result<(), Errno> {
    let host = m.range.host().ok_or(Errno::EINVAL)?;
    let (mut bits, mut bytes) = (vec![0u16; m.cols], vec![0u8; m.cols * 2]);
    for (r, row) in values.chunks_exact(m.cols).enumerate() {
        match ty {
            Float16::F16 => bits.reinterpret_cast_mut::<half::f16>().convert_from_f32_slice(row),
            Float16::Bf16 => bits.reinterpret_cast_mut::<half::bf16>().convert_from_f32_slice(row),
        }
        for (pair, b) in bytes.chunks_exact_mut(2).zip(&bits) {
            pair.copy_from_slice(&b.to_le_bytes());
        }
        host.write(r * m.row_stride * 2, &bytes)?;
    }
    Ok(())
}

/// `C = alpha·A·B + beta·C` on 16-bit floats: the operands widened to f32, one f32 GEMM
/// (products summed in f32), the result rounded once — what cuBLAS's `CUBLAS_COMPUTE_32F`
/// gives, so both drivers agree to the last rounding.
fn gemm16_job([a, b, c]: [&BoMatrix; 3], alpha: f32, beta: f32, ty: Float16, threads: usize) -> Result<(), Errno> {
    let (wa, wb) = (widen(a, ty)?, widen(b, ty)?);
    let mut wc = if beta != 0.0 { widen(c, ty)? } else { vec![0f32; c.rows * c.cols] };
    let (m, n, k) = (c.rows, c.cols, a.cols);
    // SAFETY: packed vectors of exactly m×k, k×n and m×n elements, C apart from A and B.
    unsafe { sgemm(m, n, k, wa.as_ptr(), k, wb.as_ptr(), n, wc.as_mut_ptr(), n, alpha, beta, threads) };
    narrow(c, ty, &wc)
}

impl Driver for CpuDevice {
    fn info(&self) -> DriverInfo {
        let (name, vendor) = cpu_model();
        DriverInfo {
            driver: "cpu",
            name,
            vendor,
            categories: vec![Category::Shared, Category::Exclusive, Category::Oneshot],
            ops: vec![
                OpKind::Nop,
                OpKind::Fill,
                OpKind::Copy,
                OpKind::GemmF32,
                OpKind::GemmF16,
                OpKind::GemmBf16,
                OpKind::Launch,
            ],
            memory_bytes: self.memory_bytes,
            compute_units: self.threads as u32,
            // One job at a time: a GEMM already spreads over every thread.
            engines: vec![EngineInfo { name: "compute".into(), credits: 1 }],
            ras_nodes: vec![
                RasNodeDesc::new(
                    "memory",
                    &[("ecc-corrected", Severity::Corrected), ("ecc-uncorrected", Severity::Uncorrected)],
                ),
                RasNodeDesc::new("thermal", &[("over-temperature", Severity::Corrected)]),
            ],
        }
    }

    fn telemetry(&self) -> accel_hal::driver::Telemetry {
        accel_hal::driver::Telemetry {
            temperature_c: max_temperature(Path::new("/sys/class/thermal")).map(|mc| mc as f64 / 1000.0),
            ..Default::default()
        }
    }

    fn ras_attach(&self, sink: RasSink) {
        let spawned = std::thread::Builder::new().name("cpu-ras".into()).spawn(move || ras_monitor(sink));
        if let Err(e) = spawned {
            tracing::warn!("cpu RAS monitor not started: {e}");
        }
    }

    fn run_job(&self, _engine: usize, op: &JobOp, _ctx: &JobCtx) -> Result<(), DriverError> {
        match op {
            JobOp::Nop => {}
            JobOp::Fill { dst, pattern } => host::fill(dst, *pattern)?,
            JobOp::Copy { src, dst } => host::copy(src, dst)?,
            JobOp::GemmF32 { a, b, c, alpha, beta } => gemm_job(a, b, c, *alpha, *beta, self.threads)?,
            JobOp::Gemm16 { a, b, c, alpha, beta, ty } => gemm16_job([a, b, c], *alpha, *beta, *ty, self.threads)?,
            JobOp::Driver { .. } => return Err(Errno::EOPNOTSUPP.into()),
            JobOp::Launch { program, entry, args, .. } => {
                let builtin = program.as_any().downcast_ref::<Builtin>().ok_or(Errno::EINVAL)?;
                builtin.run(*entry, args, self.threads)?;
            }
        }
        Ok(())
    }

    fn program_formats(&self) -> Vec<String> {
        vec!["builtin".into()]
    }

    fn load_program(&self, format: &str, bytes: &[u8]) -> Result<Arc<dyn Program>, DriverError> {
        match format {
            "builtin" => Ok(Arc::new(Builtin::load(bytes)?)),
            other => Err(DriverError::new(
                Errno::EOPNOTSUPP,
                format!("the cpu driver loads builtin programs, not {other:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edac_counts_are_summed_over_memory_controllers() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(edac_total(&root.path().join("missing"), "ce_count"), None);
        for (mc, ce) in [("mc0", "3\n"), ("mc1", "4\n")] {
            std::fs::create_dir(root.path().join(mc)).unwrap();
            std::fs::write(root.path().join(mc).join("ce_count"), ce).unwrap();
        }
        assert_eq!(edac_total(root.path(), "ce_count"), Some(7));
        assert_eq!(edac_total(root.path(), "ue_count"), None);
    }

    #[test]
    fn hottest_thermal_zone_is_found() {
        let root = tempfile::tempdir().unwrap();
        for (zone, t) in [("thermal_zone0", "45000\n"), ("thermal_zone1", "97000\n"), ("cooling_device0", "1\n")] {
            std::fs::create_dir(root.path().join(zone)).unwrap();
            std::fs::write(root.path().join(zone).join("temp"), t).unwrap();
        }
        assert_eq!(max_temperature(root.path()), Some(97_000));
        assert!(max_temperature(root.path()).unwrap() > OVER_TEMPERATURE_MC);
    }

    #[test]
    fn cpu_device_declares_memory_and_thermal_nodes() {
        let names: Vec<String> = CpuDevice::new().info().ras_nodes.into_iter().map(|n| n.name).collect();
        assert_eq!(names, vec!["memory", "thermal"]);
    }
}
