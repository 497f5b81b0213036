//! The `vulkan` driver: any GPU with a Vulkan 1.2 driver (NVIDIA, AMD, Intel, Arm,
//! Qualcomm, and Mesa's lavapipe on the CPU) through Vulkan compute.
//!
//! - **Loader at run time** (`ash`'s `loaded`): the daemon builds and runs with no Vulkan
//!   installed; opening a vulkan device then fails with the reason.
//! - **Memory**: a `vram` region of device-local memory (exportable as an opaque fd where the
//!   device has `VK_KHR_external_memory_fd`); a `visible` region of host-visible memory that
//!   clients map, where the device's exports map it; host memory (region 0, the clients'
//!   memfds) is imported in place with `VK_EXT_external_memory_host`, else staged.
//! - **Engines**: the compute queue, and a transfer-only queue as the copy engine where the
//!   device has one. Each job is one command buffer completed through the engine's timeline
//!   semaphore. The engines are the core's asynchronous kind: a job is recorded and submitted
//!   on the thread that dispatches it, and one completion thread per engine waits on the
//!   timeline for all its jobs (none per job; `ACCEL_VULKAN_ASYNC=0` runs each job on a slot
//!   thread of the core instead). Where the device exports `SYNC_FD` semaphores
//!   (`VK_KHR_external_semaphore_fd`) a job's fence is also the device's own kernel sync file
//!   on request (`native.rs`).
//! - **Ops**: fill and copy as transfer commands, GEMM (f32, and f16/bf16 operands summed in
//!   f32) as a tiled compute shader written in WGSL and compiled to SPIR-V at build time by
//!   naga (through workgroup memory; without it for devices with small work groups:
//!   [`GemmShader`]), and launches of `spirv` programs.
//! - **Faults**: `VK_ERROR_DEVICE_LOST` is reported to RAS (`device`/`device-lost`, fatal)
//!   and the logical device is re-created on the same physical device (a GPU reset). As
//!   Vulkan has it, what lived on the lost device is gone: device memory and programs made
//!   before the loss fail their later jobs with `ENODEV` (clients make them again), the rest
//!   carries on. The jobs the loss caught run again, each *alone* on the new device: one that
//!   loses the device again alone is the culprit and fails (`EIO`); the others complete. Only
//!   a failed re-creation wedges the device. An admin injects a loss through RAS
//!   (`inject-error device/device-lost`). A job that outlives its queue's timeout is ended
//!   the same way (Vulkan cannot cancel submitted work): the device is taken for lost and
//!   re-created, the job fails with `ETIME` and the core resubmits the others; the lost
//!   device, which may still run that job, is left to the process's end rather than
//!   destroyed under it. Where the device has `VK_EXT_device_fault`, what it reports about a
//!   loss (description, faulting addresses, vendor codes) goes to the log and into the
//!   culprit's error.

pub mod direct;
mod fault;
mod gpu;
mod memory;
mod native;
mod program;
mod record;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use accel_hal::driver::{DeviceMemory, Driver, DriverError, DriverInfo, JobCtx, JobDone, JobOp, Program, RegionDesc};
use accel_hal::lock;
use accel_hal::ras::{RasNodeDesc, RasSink};
use accel_hal::turns::Turns;
use accel_uapi::{Category, EngineInfo, Errno, OpKind, RegionKind, Severity};

use gpu::Gpu;
use memory::{Binder, Place, VkMem};
use program::VkProgram;

pub use program::{check as check_spirv, FORMAT};

/// The GEMM shader without workgroup memory, compiled from `shaders/gemm.wgsl` (with the
/// f32 operands of `gemm_f32.wgsl`) by the build script.
static GEMM_SPV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gemm.spv"));

/// The GEMM shader through workgroup memory, from `shaders/gemm_tiled.wgsl`.
static GEMM_TILED_SPV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gemm_tiled.spv"));

/// The same two kernels on 16-bit operands (f16, bf16; `shaders/gemm_16.wgsl`).
static GEMM16_SPV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gemm16.spv"));
static GEMM16_TILED_SPV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gemm16_tiled.spv"));

/// SPIR-V of an empty kernel (`main`, one storage buffer it does not touch), for clients
/// that measure a launch's round trip (`accel bench vulkan`).
pub static NULL_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/null.spv"));

/// Which of the driver's GEMM shaders a device runs.
///
/// Devices take [`GemmShader::Tiled`]: each element of A and B a work group loads from device
/// memory is read 16 times from workgroup memory. It needs work groups of 256 invocations;
/// a device whose work groups are smaller (Vulkan guarantees 128) takes
/// [`GemmShader::Blocked`]. Even lavapipe, on the CPU, runs the tiled one faster (5.0–8.3
/// against 3.3–4.4 GFLOP/s, n = 256 to 1024, docs/PERFORMANCE.md). `ACCEL_VULKAN_GEMM=tiled`
/// or `blocked` in the daemon's environment overrides the choice (to measure one against the
/// other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmShader {
    /// `gemm.wgsl`: a 4×4 block of C per invocation in registers, A and B read from device
    /// memory; 8×8 invocations cover a 32×32 tile.
    Blocked,
    /// `gemm_tiled.wgsl`: 256 invocations cover a 128×128 tile, loading A and B through
    /// workgroup memory 8 columns (rows) at a time; an 8×8 block of C per invocation.
    Tiled,
}

impl GemmShader {
    /// Invocations in one of the tiled shader's work groups.
    const TILED_INVOCATIONS: u32 = 256;

    /// The shader for a device with `props`: `setting` (`ACCEL_VULKAN_GEMM`) where set, else
    /// tiled where its work groups hold 256 invocations (in one row) and blocked where they
    /// cannot.
    fn choose(props: &gpu::Props, setting: Option<&str>) -> Result<GemmShader, DriverError> {
        let fits = props.max_invocations.min(props.max_group_width) >= Self::TILED_INVOCATIONS;
        match setting {
            None | Some("") => Ok(if fits { GemmShader::Tiled } else { GemmShader::Blocked }),
            Some("blocked") => Ok(GemmShader::Blocked),
            Some("tiled") if fits => Ok(GemmShader::Tiled),
            Some("tiled") => Err(einval(format!(
                "ACCEL_VULKAN_GEMM=tiled: {} allows {} invocations per work group, the tiled shader needs {}",
                props.name,
                props.max_invocations.min(props.max_group_width),
                Self::TILED_INVOCATIONS
            ))),
            Some(other) => Err(einval(format!("ACCEL_VULKAN_GEMM={other}: `tiled` or `blocked`"))),
        }
    }

    /// Its name (`blocked`, `tiled`).
    pub fn name(self) -> &'static str {
        match self {
            GemmShader::Blocked => "blocked",
            GemmShader::Tiled => "tiled",
        }
    }

    /// The kernel on f32 operands and on 16-bit ones.
    fn spirv(self) -> [&'static [u8]; 2] {
        match self {
            GemmShader::Blocked => [GEMM_SPV, GEMM16_SPV],
            GemmShader::Tiled => [GEMM_TILED_SPV, GEMM16_TILED_SPV],
        }
    }

    /// Side of the tile of C one work group computes.
    fn tile(self) -> usize {
        match self {
            GemmShader::Blocked => 32,
            GemmShader::Tiled => 128,
        }
    }
}

/// How many Vulkan devices this machine has; `ENODEV` with the reason when there is no
/// loader.
pub fn device_count() -> Result<usize, DriverError> {
    gpu::count()
}

/// One Vulkan physical device as an accel device.
pub struct VulkanDevice {
    index: usize,
    /// The logical device now, replaced after a loss.
    current: RwLock<Arc<Generation>>,
    /// Jobs run beside each other; a job run again after a loss runs alone.
    turns: Turns,
    ras: Mutex<Option<RasSink>>,
    /// Logical devices made after losses.
    recreated: AtomicU64,
    /// Injected losses still to come: each new logical device is lost at once while any are.
    injected: AtomicU64,
    /// Whether the device has a `visible` region (clients map its memory).
    visible: bool,
    /// Its engines complete jobs on completion threads (`$ACCEL_VULKAN_ASYNC`, default on).
    asynchronous: bool,
    /// This device, for its jobs' completions.
    me: Weak<VulkanDevice>,
}

/// One logical device and the driver's own program on it.
struct Generation {
    gpu: Arc<Gpu>,
    gemm: VkProgram,
    /// The same kernel on f16 and bf16 operands.
    gemm16: VkProgram,
    gemm_shader: GemmShader,
    /// `VK_EXT_device_fault`'s report, once the device was lost.
    fault: OnceLock<Option<String>>,
}

impl Generation {
    fn open(index: usize) -> Result<Generation, DriverError> {
        let gpu = Arc::new(Gpu::open(index)?);
        let gemm_shader = GemmShader::choose(&gpu.props, std::env::var("ACCEL_VULKAN_GEMM").ok().as_deref())?;
        let [f32_spv, f16_spv] = gemm_shader.spirv();
        let gemm = VkProgram::load(&gpu, f32_spv, usize::MAX)?;
        let gemm16 = VkProgram::load(&gpu, f16_spv, usize::MAX)?;
        Ok(Generation { gpu, gemm, gemm16, gemm_shader, fault: OnceLock::new() })
    }

    /// What the device reported about its loss, asked once (the logical device stays alive
    /// while anyone holds the generation).
    fn fault(&self) -> Option<String> {
        self.fault.get_or_init(|| self.gpu.fault.as_ref().and_then(|q| q.report())).clone()
    }
}

fn vendor_name(id: u32) -> &'static str {
    match id {
        0x10de => "NVIDIA",
        0x1002 => "AMD",
        0x8086 => "Intel",
        0x13b5 => "Arm",
        0x5143 => "Qualcomm",
        0x10005 => "Mesa",
        _ => "unknown vendor",
    }
}

/// Nothing to submit: Vulkan refuses zero-sized fills and copies (the core allows them, and
/// refuses zero GEMM dimensions).
fn empty(op: &JobOp) -> bool {
    match op {
        JobOp::Nop => true,
        JobOp::Fill { dst, .. } => dst.len == 0,
        JobOp::Copy { src, .. } => src.len == 0,
        _ => false,
    }
}

fn einval(message: impl Into<String>) -> DriverError {
    DriverError::new(Errno::EINVAL, message)
}

impl VulkanDevice {
    /// Opens Vulkan physical device `index`.
    pub fn open(index: usize) -> Result<Arc<VulkanDevice>, DriverError> {
        let first = Generation::open(index)?;
        let (g, on) = (&first.gpu, |b: bool| if b { "on" } else { "off" });
        let visible = memory::visible_maps(g);
        tracing::info!(
            "vulkan{index}: {} ({}): host memory import {}, memory export {}, mapped visible memory {}, sync file export {}, fault details {}, GEMM shader {}, storage bindings up to {} bytes",
            g.props.name,
            g.props.driver_name,
            on(g.host_import.is_some()),
            on(g.memory_fd.is_some()),
            on(visible),
            on(g.semaphore_fd.is_some()),
            on(g.fault.is_some()),
            first.gemm_shader.name(),
            g.props.max_storage_range
        );
        let asynchronous = std::env::var("ACCEL_VULKAN_ASYNC").map_or(true, |v| v.trim() != "0");
        Ok(Arc::new_cyclic(|me| VulkanDevice {
            index,
            current: RwLock::new(Arc::new(first)),
            turns: Turns::default(),
            ras: Mutex::new(None),
            recreated: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            visible,
            asynchronous,
            me: me.clone(),
        }))
    }

    /// The GEMM shader this device runs.
    pub fn gemm_shader(&self) -> GemmShader {
        self.now().gemm_shader
    }

    /// Bytes one storage-buffer binding covers at most (`maxStorageBufferRange`): a launch
    /// argument or GEMM operand beyond it fails with `E2BIG`.
    pub fn max_binding(&self) -> u64 {
        self.gpu().props.max_storage_range
    }

    /// The logical device now.
    fn now(&self) -> Arc<Generation> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The physical device's properties (the same across re-creations).
    fn gpu(&self) -> Arc<Gpu> {
        self.now().gpu.clone()
    }

    /// Bytes of device-local memory (the largest device-local heap).
    fn vram_bytes(&self) -> u64 {
        self.gpu().props.heaps.iter().filter(|h| h.1).map(|h| h.0).max().unwrap_or(0)
    }

    /// Runs a job on this thread: beside other jobs (`solo` false) or alone on the device
    /// (a run again after a loss), again alone if the device is lost under it.
    fn run_sync(&self, engine: usize, op: &JobOp, ctx: &JobCtx, mut solo: bool) -> Result<(), DriverError> {
        loop {
            // A turn beside other jobs, or alone on the device (a run again after a loss).
            let _beside = (!solo).then(|| self.turns.beside());
            let _alone = solo.then(|| self.turns.alone());
            let g = self.now();
            match self.run_on(&g, engine, op, ctx) {
                Err(e) if e.lost => {
                    let fault = self.recreate(&g, &e.message)?;
                    if ctx.abort.is_aborted() {
                        // A reset for a timeout (this job's or another's): the core decides.
                        return Err(DriverError::new(Errno::ECANCELED, "vulkan: job aborted by a device reset"));
                    }
                    if solo {
                        return Err(DriverError::new(
                            Errno::EIO,
                            format!(
                                "{} (this job's: it lost the device again alone on it; the device was re-created){}",
                                e.message,
                                fault.map(|f| format!("; the device reported: {f}")).unwrap_or_default()
                            ),
                        ));
                    }
                    solo = true;
                }
                other => return other,
            }
        }
    }

    /// A job the device was lost under (on generation `lost`): re-create the device (unless
    /// done already) and run the job again alone, as `run_job` does.
    fn recover(
        &self,
        lost: &Arc<Generation>,
        engine: usize,
        op: &JobOp,
        ctx: &JobCtx,
        e: DriverError,
    ) -> Result<(), DriverError> {
        self.recreate(lost, &e.message)?;
        if ctx.abort.is_aborted() {
            return Err(DriverError::new(Errno::ECANCELED, "vulkan: job aborted by a device reset"));
        }
        self.run_sync(engine, op, ctx, true)
    }

    /// The device `lost` was lost: report it once, and make a new logical device (unless
    /// another job did already). An error here is a device loss for good (the core wedges).
    /// Returns what the device said about the loss (`VK_EXT_device_fault`), if anything.
    fn recreate(&self, lost: &Arc<Generation>, why: &str) -> Result<Option<String>, DriverError> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let fault = lost.fault();
        if !Arc::ptr_eq(&current, lost) {
            return Ok(fault);
        }
        if let Some(f) = &fault {
            tracing::warn!("vulkan{}: the lost device reports: {f}", self.index);
        }
        if let Some(sink) = lock(&self.ras).clone() {
            let _ = sink.report("device", "device-lost", 1);
        }
        let fresh = Generation::open(self.index)
            .map_err(|e| DriverError::device_lost(format!("{why}; re-creating the device failed: {}", e.message)))?;
        if self.injected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok() {
            fresh.gpu.lose();
        }
        *current = Arc::new(fresh);
        let n = self.recreated.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!("vulkan{}: device lost ({why}); re-created it ({n} so far)", self.index);
        Ok(fault)
    }

    /// Records and runs one job on logical device `g`.
    fn run_on(&self, g: &Generation, engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), DriverError> {
        let job = self.start_on(g, engine, op, ctx)?;
        g.gpu.wait(job, &ctx.abort)
    }

    /// Records one job and hands it to logical device `g`.
    fn start_on(&self, g: &Generation, engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<gpu::Submitted, DriverError> {
        let mut binder = Binder::new(&g.gpu);
        let record = |d: &ash::Device, rec: &gpu::Recorder, owned: &mut Vec<gpu::Owned>| {
            let r = self.record(g, d, rec, &mut binder, op);
            owned.append(&mut binder.owned);
            r
        };
        // Once the device has the job, its fence can be exported as the device's own sync file.
        let submitted = |value: u64| {
            if g.gpu.semaphore_fd.is_some() {
                let gpu = Arc::downgrade(&g.gpu);
                ctx.native.set(Arc::new(move || match gpu.upgrade() {
                    Some(gpu) => {
                        gpu.export_sync_file(engine, value).map_err(|e| accel_hal::Error::new(e.code, e.message))
                    }
                    None => Err(accel_hal::Error::new(Errno::EAGAIN, "vulkan: the device was replaced: try again")),
                }));
            }
        };
        g.gpu.start(engine, Box::new(op.clone()), record, submitted)
    }
}

impl Driver for VulkanDevice {
    fn native_sync_files(&self) -> bool {
        self.gpu().semaphore_fd.is_some()
    }

    fn info(&self) -> DriverInfo {
        let gpu = self.gpu();
        let p = &gpu.props;
        let mut engines = vec![EngineInfo { name: "compute".into(), credits: 4 }];
        if gpu.engines.len() > 1 {
            engines.push(EngineInfo { name: "copy".into(), credits: 2 });
        }
        DriverInfo {
            driver: "vulkan",
            name: format!("{} ({} {}, Vulkan {})", p.name, p.driver_name, p.driver_info, p.api_version),
            vendor: vendor_name(p.vendor_id).into(),
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
            memory_bytes: self.vram_bytes(),
            compute_units: 1,
            engines,
            ras_nodes: vec![RasNodeDesc::new("device", &[("device-lost", Severity::Fatal)])],
        }
    }

    fn engine_for(&self, op: &JobOp) -> usize {
        match op {
            JobOp::Fill { .. } | JobOp::Copy { .. } if self.gpu().engines.len() > 1 => 1,
            _ => 0,
        }
    }

    fn run_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), DriverError> {
        if empty(op) {
            return Ok(());
        }
        self.run_sync(engine, op, ctx, false)
    }

    fn asynchronous(&self, _engine: usize) -> bool {
        self.asynchronous
    }

    /// Records and submits the job here and leaves it to the engine's completion thread; a
    /// job lost with the device, or one arriving while another runs alone, goes on a thread
    /// of its own through the path of `run_job` (rare and slow: a re-creation, a run alone).
    fn submit_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx, done: JobDone) {
        if empty(op) {
            return done.complete(Ok(()));
        }
        let Some(me) = self.me.upgrade() else {
            return done.complete(Err(DriverError::new(Errno::ENODEV, "vulkan: the device is gone")));
        };
        if !self.turns.start_async() {
            let (op, ctx) = (op.clone(), ctx.clone());
            return done.complete_on_thread("vulkan", move || me.run_job(engine, &op, &ctx));
        }
        let g = self.now();
        match self.start_on(&g, engine, op, ctx) {
            Ok(job) => {
                let (op, ctx_then, lost_on) = (op.clone(), ctx.clone(), g.clone());
                let then = Box::new(move |result: Result<(), DriverError>| {
                    me.turns.end_async();
                    match result {
                        Err(e) if e.lost => {
                            done.complete_on_thread("vulkan", move || me.recover(&lost_on, engine, &op, &ctx_then, e))
                        }
                        other => done.complete(other),
                    }
                });
                g.gpu.complete_later(job, ctx.abort.clone(), then);
            }
            Err(e) => {
                self.turns.end_async();
                if e.lost {
                    let (op, ctx) = (op.clone(), ctx.clone());
                    done.complete_on_thread("vulkan", move || me.recover(&g, engine, &op, &ctx, e));
                } else {
                    done.complete(Err(e));
                }
            }
        }
    }

    fn telemetry(&self) -> accel_hal::driver::Telemetry {
        accel_hal::driver::Telemetry { serial: Some(self.gpu().props.uuid.clone()), ..Default::default() }
    }

    fn ras_attach(&self, sink: RasSink) {
        *lock(&self.ras) = Some(sink);
    }

    /// A job outlived its timeout: its work may never end, and only a new logical device
    /// ends it for the others (the running ones are resubmitted by the core).
    fn timedout_job(&self, _engine: usize, _guilty: &JobCtx) -> Result<(), Errno> {
        let g = self.now();
        g.gpu.lose();
        self.recreate(&g, "a job timeout").map(drop).map_err(|e| {
            tracing::error!("{}", e.message);
            Errno::EIO
        })
    }

    /// `device`/`device-lost`: loses the logical device now, as a GPU fault would (the next
    /// job finds it lost; re-creation follows), and `count - 1` re-created ones after it as
    /// soon as they are made. Admins only, through RAS.
    fn ras_inject(&self, node: &str, error: &str, count: u64) -> Result<(), Errno> {
        if (node, error) != ("device", "device-lost") || count == 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        self.injected.store(count - 1, Ordering::Release);
        self.gpu().lose();
        Ok(())
    }

    /// `vram` (device-local memory), and `visible` where clients can map host-visible memory
    /// (`memory::visible_maps`): coherent memory the device and its clients both reach in
    /// place, a BAR's where the device has device-local host-visible memory.
    fn regions(&self) -> Vec<RegionDesc> {
        let gpu = self.gpu();
        let mut regions = vec![RegionDesc {
            name: "vram".into(),
            kind: RegionKind::Device,
            size: self.vram_bytes(),
            mappable: false,
            exportable: gpu.memory_fd.is_some(),
            coherent: false,
        }];
        if self.visible {
            regions.push(RegionDesc {
                name: "visible".into(),
                kind: RegionKind::DeviceMappable,
                size: gpu.props.visible_heap,
                mappable: true,
                exportable: true,
                coherent: true,
            });
        }
        regions
    }

    fn alloc(&self, region: usize, size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        match region {
            0 => Ok(VkMem::new(&self.gpu(), size)?),
            1 if self.visible => Ok(VkMem::new_in(&self.gpu(), size, Place::Visible)?),
            _ => Err(einval(format!("vulkan has no region {}", region + 1))),
        }
    }

    /// Memory another Vulkan instance on this physical device exported as an opaque
    /// descriptor (`vkGetMemoryFdKHR`), in `vram`.
    fn import_external(&self, region: usize, fd: OwnedFd, size: u64) -> Result<Arc<dyn DeviceMemory>, DriverError> {
        if region != 0 {
            return Err(einval(format!("vulkan has no region {}", region + 1)));
        }
        Ok(VkMem::import(&self.gpu(), fd, size)?)
    }

    fn program_formats(&self) -> Vec<String> {
        vec![FORMAT.into()]
    }

    fn load_program(&self, format: &str, bytes: &[u8]) -> Result<Arc<dyn Program>, DriverError> {
        if format != FORMAT {
            return Err(DriverError::new(Errno::EOPNOTSUPP, format!("vulkan loads {FORMAT}, not {format:?}")));
        }
        Ok(Arc::new(VkProgram::load(&self.gpu(), bytes, accel_uapi::MAX_LAUNCH_ARGS)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_take_the_tiled_gemm_where_their_work_groups_hold_it() {
        let props = |name: &str, max_invocations, max_group_width| gpu::Props {
            name: name.into(),
            max_invocations,
            max_group_width,
            ..Default::default()
        };
        let (gpu, exact) = (props("gpu", 1024, 1024), props("exact", 256, 256));
        let (small, narrow) = (props("small", 128, 1024), props("narrow", 1024, 128));
        assert_eq!(GemmShader::choose(&gpu, None).unwrap(), GemmShader::Tiled);
        assert_eq!(GemmShader::choose(&gpu, Some("")).unwrap(), GemmShader::Tiled);
        assert_eq!(GemmShader::choose(&exact, None).unwrap(), GemmShader::Tiled);
        assert_eq!(GemmShader::choose(&small, None).unwrap(), GemmShader::Blocked);
        assert_eq!(GemmShader::choose(&narrow, None).unwrap(), GemmShader::Blocked);
        assert_eq!(GemmShader::choose(&gpu, Some("blocked")).unwrap(), GemmShader::Blocked);
        assert_eq!(GemmShader::choose(&small, Some("blocked")).unwrap(), GemmShader::Blocked);
        let e = GemmShader::choose(&small, Some("tiled")).unwrap_err();
        assert_eq!(e.code, Errno::EINVAL);
        assert!(e.message.contains("small allows 128 invocations"), "{}", e.message);
        let e = GemmShader::choose(&gpu, Some("fast")).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (Errno::EINVAL, "ACCEL_VULKAN_GEMM=fast: `tiled` or `blocked`"));
    }
}
