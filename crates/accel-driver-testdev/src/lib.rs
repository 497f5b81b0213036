//! The `testdev` driver: an emulated accelerator with deterministic fault injection.
//!
//! Like an NPU or a GPU it has memory of its own (region 1, `vram`: daemon RAM clients
//! cannot map, reused from freed blocks), a copy engine beside its compute engine (copies
//! between any two regions run there, at a bandwidth a test may cap), and a program format
//! of its own ([`cmdbuf`]: a command stream referencing buffer arguments, validated before
//! anything runs).
//!
//! Jobs are told what to do with driver-private ops ([`accel_uapi::Op::Driver`]):
//! take N ms ([`OP_DELAY`]), fail with an errno ([`OP_FAIL`]), hang until the
//! watchdog resets the engine ([`OP_HANG`]), make the next reset fail
//! ([`OP_BREAK_RESET`]), cap the copy engine's bandwidth ([`OP_COPY_BANDWIDTH`]), or make
//! the next copy or the next touch of `vram` fail as a hardware fault would, reported
//! through RAS ([`OP_COPY_FAULT`], [`OP_VRAM_ECC`]), or panic as a driver's bug would
//! ([`OP_PANIC`], [`OP_PANIC_NEXT_LOAD`]). GEMM is refused, which exercises the
//! "not supported" path.
//!
//! `testdev-async` ([`TestDevice::asynchronous`]) is the same device with engines that
//! complete jobs by themselves ([`Driver::asynchronous`]): the core hands each job over with
//! [`Driver::submit_job`] and keeps no thread waiting on it; the device's own execution units
//! run it and report its end, as a device's interrupt would. Every fault above works the same
//! through it, which is how the core's asynchronous path is tested end to end.

pub mod cmdbuf;
pub mod vram;

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use accel_hal::driver::{
    DeviceMemory, Driver, DriverError, DriverInfo, JobArg, JobCtx, JobDone, JobOp, Program, RegionDesc,
};
use accel_hal::ras::{RasNodeDesc, RasSink};
use accel_uapi::{Category, EngineInfo, Errno, OpKind, RegionKind, Severity};

use vram::view_of;

/// `args[0]` = milliseconds to take (ends early, with `ETIME` from the core, on abort).
pub const OP_DELAY: u32 = 1;
/// `args[0]` = raw errno the job fails with (`EIO` if unknown).
pub const OP_FAIL: u32 = 2;
/// Never completes on its own; ends when the watchdog aborts it.
pub const OP_HANG: u32 = 3;
/// The next engine reset fails, which wedges the device.
pub const OP_BREAK_RESET: u32 = 4;
/// `args[0]` = the copy engine's bandwidth in bytes per second (0: as fast as memory).
pub const OP_COPY_BANDWIDTH: u32 = 5;
/// The next copy fails with `EIO` and reports `interconnect/link-crc` through RAS.
pub const OP_COPY_FAULT: u32 = 6;
/// The next job that touches `vram` fails with `EIO` and reports
/// `memory/ecc-uncorrected` through RAS.
pub const OP_VRAM_ECC: u32 = 7;

/// The next job reports the device lost (as `VK_ERROR_DEVICE_LOST` would): the core
/// wedges the device.
pub const OP_LOSE_DEVICE: u32 = 8;
/// Driver op: report `args[0]` corrected memory errors one by one, as a monitor seeing an
/// error storm does (`RasSink::report_async`: queued, written in batches).
pub const OP_RAS_STORM: u32 = 9;
/// The job panics in the driver, as a driver's bug would (in `run_job`, or in `submit_job`
/// on `testdev-async`): the core fails it with `EIO` and the engine runs on.
pub const OP_PANIC: u32 = 10;
/// The next program load panics in the driver, as a driver's bug would: the daemon fails
/// that request with `EIO` and closes its connection; the others are served on.
pub const OP_PANIC_NEXT_LOAD: u32 = 11;

/// Engine index of the compute engine.
pub const COMPUTE_ENGINE: usize = 0;
/// Engine index of the copy engine.
pub const COPY_ENGINE: usize = 1;

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
    pool: Arc<vram::Pool>,
    copy_bandwidth: AtomicU64,
    copy_fault: AtomicBool,
    vram_ecc: AtomicBool,
    lose: AtomicBool,
    /// [`OP_PANIC_NEXT_LOAD`] was run.
    panic_load: AtomicBool,
    /// `testdev-async`: the execution units jobs are handed to.
    units: Option<Execution>,
}

/// The execution units of a `testdev-async` device and the device for their jobs; they stop
/// with it.
#[derive(Debug)]
struct Execution {
    units: Arc<Units>,
    device: Weak<TestDevice>,
}

/// A job handed to the execution units.
type Task = Box<dyn FnOnce() + Send>;

/// The execution units of `testdev-async`: threads of the device's own, one per job its
/// engines may have in flight, each running a job handed over and completing it.
#[derive(Default)]
struct Units {
    queue: Mutex<VecDeque<Task>>,
    work: Condvar,
    stop: AtomicBool,
}

impl std::fmt::Debug for Units {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Units")
    }
}

/// [`OP_PANIC`]: panics in the driver's entry point `call`.
fn panic_if_asked(op: &JobOp, call: &str) {
    if matches!(op, JobOp::Driver { code: OP_PANIC, .. }) {
        panic!("testdev: an injected bug in {call}");
    }
}

impl Units {
    /// Starts `count` execution units.
    fn start(count: u32) -> Arc<Units> {
        let units = Arc::new(Units::default());
        for i in 0..count {
            let u = units.clone();
            // Without them the device completes nothing: a machine that cannot start a thread
            // cannot run the daemon either.
            std::thread::Builder::new()
                .name(format!("testdev-unit{i}"))
                .spawn(move || u.run())
                .expect("starting a testdev execution unit");
        }
        units
    }

    fn run(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(task) = q.pop_front() {
                drop(q);
                task();
                q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            } else if self.stop.load(Ordering::Acquire) {
                return;
            } else {
                q = self.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    fn push(&self, task: Task) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push_back(task);
        self.work.notify_one();
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        self.units.stop.store(true, Ordering::Release);
        // Under the queue's lock: a unit between its last look and its wait still sees it.
        let _q = self.units.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.units.work.notify_all();
    }
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

    /// A test device whose engines complete jobs by themselves (`testdev-async`), with
    /// [`DEFAULT_CREDITS`].
    pub fn asynchronous() -> Arc<Self> {
        let credits = DEFAULT_CREDITS;
        // As many execution units as jobs the engines may have in flight (compute and copy).
        let units = Units::start(credits + 1);
        Arc::new_cyclic(|me| TestDevice {
            units: Some(Execution { units, device: me.clone() }),
            ..Self::with_credits(credits)
        })
    }

    /// A test device whose engine runs `credits` jobs at once.
    pub fn with_credits(credits: u32) -> Self {
        TestDevice {
            units: None,
            credits: credits.max(1),
            resets: AtomicU64::new(0),
            break_reset: AtomicBool::new(false),
            ras: Mutex::new(None),
            pool: Arc::default(),
            copy_bandwidth: AtomicU64::new(0),
            copy_fault: AtomicBool::new(false),
            vram_ecc: AtomicBool::new(false),
            lose: AtomicBool::new(false),
            panic_load: AtomicBool::new(false),
        }
    }

    /// Engine resets performed so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Runs a job; an injected fault is `EIO` (its message is added by `run_job`).
    fn run(&self, op: &JobOp, ctx: &JobCtx) -> Result<(), Errno> {
        match op {
            JobOp::Nop => Ok(()),
            JobOp::Fill { dst, pattern } => {
                self.vram_fault(&[dst])?;
                view_of(dst)?.fill_u32(*pattern);
                Ok(())
            }
            JobOp::Copy { src, dst } => self.copy(src, dst, ctx),
            JobOp::Launch { program, args, .. } => {
                let ranges: Vec<&accel_hal::bo::BoRange> = args
                    .iter()
                    .filter_map(|a| match a {
                        JobArg::Buffer(r) => Some(r),
                        _ => None,
                    })
                    .collect();
                self.vram_fault(&ranges)?;
                let cmd = program.as_any().downcast_ref::<cmdbuf::CmdBuf>().ok_or(Errno::EINVAL)?;
                cmd.run(args, &ctx.abort)
            }
            JobOp::Driver { code: OP_COPY_BANDWIDTH, args } => {
                self.copy_bandwidth.store(args[0], Ordering::Relaxed);
                Ok(())
            }
            JobOp::Driver { code: OP_RAS_STORM, args } => {
                let sink = self.ras.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(Errno::ENODEV)?;
                for _ in 0..args[0] {
                    sink.report_async("memory", "ecc-corrected", 1).map_err(|e| e.code)?;
                }
                Ok(())
            }
            JobOp::Driver { code: OP_COPY_FAULT, .. } => {
                self.copy_fault.store(true, Ordering::Release);
                Ok(())
            }
            JobOp::Driver { code: OP_VRAM_ECC, .. } => {
                self.vram_ecc.store(true, Ordering::Release);
                Ok(())
            }
            JobOp::Driver { code: OP_LOSE_DEVICE, .. } => {
                self.lose.store(true, Ordering::Release);
                Ok(())
            }
            JobOp::Driver { code: OP_PANIC_NEXT_LOAD, .. } => {
                self.panic_load.store(true, Ordering::Release);
                Ok(())
            }
            JobOp::GemmF32 { .. } | JobOp::Gemm16 { .. } => Err(Errno::EOPNOTSUPP),
            JobOp::Driver { code: OP_DELAY, args } => {
                // Cut short by a reset, the job's work is not done: it runs again.
                if ctx.abort.sleep(Duration::from_millis(args[0])) {
                    return Err(Errno::ECANCELED);
                }
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

    fn report(&self, node: &str, error: &str) {
        if let Some(sink) = self.ras.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            let _ = sink.report(node, error, 1);
        }
    }

    /// An injected `vram` fault hits the first job that touches device memory.
    fn vram_fault(&self, ranges: &[&accel_hal::bo::BoRange]) -> Result<(), Errno> {
        if ranges.iter().any(|r| r.bo.device().is_some()) && self.vram_ecc.swap(false, Ordering::AcqRel) {
            self.report("memory", "ecc-uncorrected");
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn copy(&self, src: &accel_hal::bo::BoRange, dst: &accel_hal::bo::BoRange, ctx: &JobCtx) -> Result<(), Errno> {
        self.vram_fault(&[src, dst])?;
        if self.copy_fault.swap(false, Ordering::AcqRel) {
            self.report("interconnect", "link-crc");
            return Err(Errno::EIO);
        }
        let start = Instant::now();
        view_of(src)?.copy_to(&view_of(dst)?);
        let bw = self.copy_bandwidth.load(Ordering::Relaxed);
        if bw > 0 {
            let due = Duration::from_secs_f64(dst.len as f64 / bw as f64);
            if let Some(left) = due.checked_sub(start.elapsed()) {
                ctx.abort.sleep(left);
            }
        }
        Ok(())
    }
}

impl Driver for TestDevice {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            driver: "testdev",
            name: "accel fault-injection test device".into(),
            vendor: "accel".into(),
            categories: vec![Category::Shared, Category::Exclusive, Category::Oneshot],
            ops: vec![OpKind::Nop, OpKind::Fill, OpKind::Copy, OpKind::Driver, OpKind::Launch],
            memory_bytes: 1 << 30,
            compute_units: 1,
            engines: vec![
                EngineInfo { name: "compute".into(), credits: self.credits },
                EngineInfo { name: "copy".into(), credits: 1 },
            ],
            ras_nodes: ras_nodes(),
        }
    }

    fn engine_for(&self, op: &JobOp) -> usize {
        match op {
            JobOp::Copy { .. } => COPY_ENGINE,
            _ => COMPUTE_ENGINE,
        }
    }

    fn regions(&self) -> Vec<RegionDesc> {
        let device = |name: &str, exportable| RegionDesc {
            name: name.into(),
            kind: RegionKind::Device,
            size: vram::VRAM_BYTES,
            mappable: false,
            exportable,
            coherent: false,
        };
        vec![device("vram", false), device("shared", true), device("opaque", true)]
    }

    fn alloc(&self, region: usize, size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        match region {
            0 => Ok(self.pool.alloc(size)?),
            1 => Ok(Arc::new(vram::SharedBuf(
                accel_hal::mem::HostMemory::new("testdev-shared", size)
                    .map_err(|e| DriverError::new(e.code, e.message))?,
            ))),
            2 => Ok(self.pool.alloc_opaque(size)?),
            r => Err(DriverError::new(Errno::EINVAL, format!("testdev has no region {}", r + 1))),
        }
    }

    /// The `shared` region takes memfds another process made (as a GPU runtime's memory, a
    /// file the daemon maps): sealed against shrinking and at least `size` bytes long.
    fn import_external(&self, region: usize, fd: OwnedFd, size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        if region != 1 {
            return Err(DriverError::new(
                Errno::EOPNOTSUPP,
                "testdev imports external memory into its shared region only",
            ));
        }
        let mem =
            accel_hal::mem::HostMemory::import_prefix(fd, size).map_err(|e| DriverError::new(e.code, e.message))?;
        Ok(Arc::new(vram::SharedBuf(mem)))
    }

    fn program_formats(&self) -> Vec<String> {
        vec![cmdbuf::FORMAT.into()]
    }

    fn load_program(&self, format: &str, bytes: &[u8]) -> Result<Arc<dyn Program>, DriverError> {
        if self.panic_load.swap(false, Ordering::AcqRel) {
            panic!("testdev: an injected bug in load_program");
        }
        match format {
            cmdbuf::FORMAT => Ok(Arc::new(cmdbuf::CmdBuf::load(bytes)?)),
            other => {
                Err(DriverError::new(Errno::EOPNOTSUPP, format!("testdev loads {}, not {other:?}", cmdbuf::FORMAT)))
            }
        }
    }

    fn asynchronous(&self, _engine: usize) -> bool {
        self.units.is_some()
    }

    fn submit_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx, done: JobDone) {
        panic_if_asked(op, "submit_job");
        match &self.units {
            Some(Execution { units, device }) => match device.upgrade() {
                Some(me) => {
                    let (op, ctx) = (op.clone(), ctx.clone());
                    units.push(Box::new(move || done.complete(me.run_job(engine, &op, &ctx))));
                }
                None => done.complete(Err(DriverError::new(Errno::ENODEV, "testdev: the device is gone"))),
            },
            None => done.complete(self.run_job(engine, op, ctx)),
        }
    }

    fn run_job(&self, _engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), DriverError> {
        panic_if_asked(op, "run_job");
        if !matches!(op, JobOp::Driver { code: OP_LOSE_DEVICE, .. }) && self.lose.swap(false, Ordering::AcqRel) {
            self.report("compute", "fatal");
            return Err(DriverError::device_lost("testdev: the device fell off the bus"));
        }
        self.run(op, ctx).map_err(|e| match e {
            Errno::EIO => DriverError::new(e, "testdev: injected hardware fault"),
            e => e.into(),
        })
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
