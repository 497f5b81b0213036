//! The `testdev` driver: deterministic fault injection for tests.
//!
//! Jobs are told what to do with driver-private ops ([`accel_uapi::Op::Driver`]):
//! take N ms ([`OP_DELAY`]), fail with an errno ([`OP_FAIL`]), hang until the
//! watchdog resets the engine ([`OP_HANG`]), or make the next reset fail
//! ([`OP_BREAK_RESET`]). Portable ops nop/fill/copy run on host memory; GEMM is
//! refused, which exercises the "not supported" path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Mutex;

use accel_core::driver::{host, Driver, DriverInfo, JobCtx, JobOp};
use accel_core::ras::{RasNodeDesc, RasSink};
use accel_uapi::{Category, EngineInfo, Errno, OpKind, Severity};

/// `args[0]` = milliseconds to take (ends early, with `ETIME` from the core, on abort).
pub const OP_DELAY: u32 = 1;
/// `args[0]` = raw errno the job fails with (`EIO` if unknown).
pub const OP_FAIL: u32 = 2;
/// Never completes on its own; ends when the watchdog aborts it.
pub const OP_HANG: u32 = 3;
/// The next engine reset fails, which wedges the device.
pub const OP_BREAK_RESET: u32 = 4;

/// Jobs the test device's engine runs at once unless told otherwise.
pub const DEFAULT_CREDITS: u32 = 2;

/// A fault-injection device with one engine that runs several jobs at once, so an
/// engine reset hits innocent jobs running beside the guilty one.
#[derive(Debug)]
pub struct TestDevice {
    credits: u32,
    resets: AtomicU64,
    break_reset: AtomicBool,
    ras: Mutex<Option<RasSink>>,
}

/// The RAS blocks of the test device: one of each kind, every severity.
pub fn ras_nodes() -> Vec<RasNodeDesc> {
    use Severity::*;
    vec![
        RasNodeDesc::new("memory", &[("ecc-corrected", Corrected), ("ecc-uncorrected", Uncorrected)]),
        RasNodeDesc::new("compute", &[("parity", Corrected), ("engine-hang", Uncorrected), ("fatal", Fatal)]),
        RasNodeDesc::new("interconnect", &[("link-crc", Corrected), ("link-down", Uncorrected)]),
        RasNodeDesc::new("firmware", &[("watchdog", Uncorrected)]),
        RasNodeDesc::new("thermal", &[("over-temperature", Corrected)]),
    ]
}

impl Default for TestDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDevice {
    /// A test device with [`DEFAULT_CREDITS`].
    pub fn new() -> Self {
        Self::with_credits(DEFAULT_CREDITS)
    }

    /// A test device whose engine runs `credits` jobs at once.
    pub fn with_credits(credits: u32) -> Self {
        TestDevice {
            credits: credits.max(1),
            resets: AtomicU64::new(0),
            break_reset: AtomicBool::new(false),
            ras: Mutex::new(None),
        }
    }

    /// Engine resets performed so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }
}

impl Driver for TestDevice {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            driver: "testdev",
            name: "accel fault-injection test device".into(),
            vendor: "accel".into(),
            categories: vec![Category::Shared, Category::Exclusive, Category::Oneshot],
            ops: vec![OpKind::Nop, OpKind::Fill, OpKind::Copy, OpKind::Driver],
            memory_bytes: 1 << 30,
            compute_units: 1,
            engines: vec![EngineInfo { name: "compute".into(), credits: self.credits }],
            ras_nodes: ras_nodes(),
        }
    }

    fn run_job(&self, _engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), Errno> {
        match op {
            JobOp::Nop => Ok(()),
            JobOp::Fill { dst, pattern } => {
                host::fill(dst, *pattern);
                Ok(())
            }
            JobOp::Copy { src, dst } => {
                host::copy(src, dst);
                Ok(())
            }
            JobOp::GemmF32 { .. } => Err(Errno::EOPNOTSUPP),
            JobOp::Driver { code: OP_DELAY, args } => {
                ctx.abort.sleep(Duration::from_millis(args[0]));
                Ok(())
            }
            JobOp::Driver { code: OP_FAIL, args } => {
                Err(u32::try_from(args[0]).ok().and_then(Errno::from_raw).unwrap_or(Errno::EIO))
            }
            JobOp::Driver { code: OP_HANG, .. } => {
                while !ctx.abort.sleep(Duration::from_secs(3600)) {}
                Ok(())
            }
            JobOp::Driver { code: OP_BREAK_RESET, .. } => {
                self.break_reset.store(true, Ordering::Relaxed);
                Ok(())
            }
            JobOp::Driver { .. } => Err(Errno::EINVAL),
        }
    }

    fn ras_attach(&self, sink: RasSink) {
        *self.ras.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    fn ras_inject(&self, node: &str, error: &str, count: u64) -> Result<(), Errno> {
        let sink = self.ras.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(Errno::ENODEV)?;
        sink.report(node, error, count).map(drop).map_err(|e| e.code)
    }

    fn timedout_job(&self, _engine: usize, _guilty: &JobCtx) -> Result<(), Errno> {
        self.resets.fetch_add(1, Ordering::Relaxed);
        if self.break_reset.swap(false, Ordering::Relaxed) {
            return Err(Errno::EIO);
        }
        Ok(())
    }
}
