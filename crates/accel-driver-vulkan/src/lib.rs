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
//!   semaphore. Where the device exports `SYNC_FD` semaphores (`VK_KHR_external_semaphore_fd`)
//!   a job's fence is also the device's own kernel sync file on request (`native.rs`).
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

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use accel_hal::bo::BoMatrix;
use accel_hal::driver::{DeviceMemory, Driver, DriverError, DriverInfo, JobArg, JobCtx, JobOp, Program, RegionDesc};
use accel_hal::lock;
use accel_hal::ras::{RasNodeDesc, RasSink};
use accel_uapi::{Category, EngineInfo, Errno, Float16, OpKind, RegionKind, Severity};
use ash::vk;

use gpu::{Gpu, Recorder};
use memory::{Binder, Bound, Place, VkMem};
use program::VkProgram;

pub use program::FORMAT;

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
    /// Jobs take it shared; a job run again after a loss takes it alone.
    solo: RwLock<()>,
    ras: Mutex<Option<RasSink>>,
    /// Logical devices made after losses.
    recreated: AtomicU64,
    /// Injected losses still to come: each new logical device is lost at once while any are.
    injected: AtomicU64,
    /// Whether the device has a `visible` region (clients map its memory).
    visible: bool,
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

fn einval(message: impl Into<String>) -> DriverError {
    DriverError::new(Errno::EINVAL, message)
}

impl VulkanDevice {
    /// Opens Vulkan physical device `index`.
    pub fn open(index: usize) -> Result<VulkanDevice, DriverError> {
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
        Ok(VulkanDevice {
            index,
            current: RwLock::new(Arc::new(first)),
            solo: RwLock::new(()),
            ras: Mutex::new(None),
            recreated: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            visible,
        })
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
        g.gpu.submit(engine, &ctx.abort, Box::new(op.clone()), record, submitted)
    }

    /// Binds a matrix operand of `elem`-byte elements from the nearest offset the device's
    /// alignment allows; the elements before it the shader skips. The binding covers whole
    /// 32-bit words (16-bit operands are read two to a word) where the buffer has them.
    fn bind_matrix(
        &self,
        g: &Generation,
        binder: &mut Binder<'_>,
        m: &BoMatrix,
        elem: u64,
    ) -> Result<(Bound, u32), DriverError> {
        let b = binder.bind(&m.range)?;
        let base = b.offset - b.offset % g.gpu.props.storage_align;
        let skew = b.offset - base;
        if !skew.is_multiple_of(elem) {
            return Err(einval(format!(
                "vulkan: a matrix at byte offset {} is not aligned to its {elem}-byte elements",
                m.range.offset
            )));
        }
        let elems = u32::try_from(skew / elem).map_err(|_| einval("vulkan: offset too large"))?;
        let len = (b.len + skew).next_multiple_of(4).min(b.size - base);
        Ok((Bound { buffer: b.buffer, offset: base, len, size: b.size }, elems))
    }

    /// Records a GEMM of `a`·`b` into `c`: on f32 operands, or 16-bit ones of type `ty`.
    #[allow(clippy::too_many_arguments)]
    fn record_gemm(
        &self,
        g: &Generation,
        d: &ash::Device,
        rec: &Recorder,
        binder: &mut Binder<'_>,
        [a, b, c]: [&BoMatrix; 3],
        [alpha, beta]: [f32; 2],
        ty: Option<Float16>,
    ) -> Result<(), DriverError> {
        let dims = [a.rows, b.cols, a.cols, a.row_stride, b.row_stride, c.row_stride];
        let dims: Vec<u32> = dims
            .iter()
            .map(|v| u32::try_from(*v).map_err(|_| einval("vulkan: a GEMM dimension over 2^32")))
            .collect::<Result<_, _>>()?;
        let (program, elem) = if ty.is_some() { (&g.gemm16, 2) } else { (&g.gemm, 4) };
        let (ba, oa) = self.bind_matrix(g, binder, a, elem)?;
        let (bb, ob) = self.bind_matrix(g, binder, b, elem)?;
        let (bc, oc) = self.bind_matrix(g, binder, c, elem)?;
        let mut scalars: Vec<JobArg> = dims.iter().map(|v| JobArg::U32(*v)).collect();
        scalars.extend([
            JobArg::U32(oa),
            JobArg::U32(ob),
            JobArg::U32(oc),
            JobArg::F32(alpha),
            JobArg::F32(beta),
            JobArg::U32(match ty {
                Some(Float16::Bf16) => 1,
                _ => 0,
            }),
        ]);
        let tile = g.gemm_shader.tile();
        let grid = [c.cols.div_ceil(tile) as u32, c.rows.div_ceil(tile) as u32, 1];
        program.record(d, rec, 0, grid, &[ba, bb, bc], &scalars)
    }

    fn record(
        &self,
        g: &Generation,
        d: &ash::Device,
        rec: &Recorder,
        binder: &mut Binder<'_>,
        op: &JobOp,
    ) -> Result<(), DriverError> {
        let before = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::MEMORY_WRITE | vk::AccessFlags::HOST_WRITE)
            .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE);
        let barrier = |src: vk::PipelineStageFlags| {
            // SAFETY: recording into this job's command buffer.
            unsafe {
                d.cmd_pipeline_barrier(
                    rec.cmd,
                    src,
                    vk::PipelineStageFlags::ALL_COMMANDS,
                    vk::DependencyFlags::empty(),
                    &[before],
                    &[],
                    &[],
                )
            }
        };
        let all = vk::PipelineStageFlags::ALL_COMMANDS | vk::PipelineStageFlags::HOST;
        match op {
            JobOp::Fill { dst, pattern } => {
                let b = binder.bind(dst)?;
                if b.offset % 4 != 0 {
                    return Err(einval(format!(
                        "vulkan: fill at byte offset {}: fills start at multiples of 4",
                        dst.offset
                    )));
                }
                barrier(all);
                // SAFETY: recording; the range is inside the buffer (checked by the core).
                unsafe { d.cmd_fill_buffer(rec.cmd, b.buffer, b.offset, b.len, *pattern) };
            }
            JobOp::Copy { src, dst } => {
                let (s, t) = (binder.bind(src)?, binder.bind(dst)?);
                barrier(all);
                let overlap = s.buffer == t.buffer && s.offset < t.offset + t.len && t.offset < s.offset + s.len;
                if overlap {
                    // Vulkan copies must not overlap: go through a scratch buffer.
                    let (tmp, mem) = g.gpu.buffer(s.len, g.gpu.device_type, false)?;
                    binder.owned.push(gpu::Owned::Buffer(tmp, Some(mem)));
                    let there = vk::BufferCopy { src_offset: s.offset, dst_offset: 0, size: s.len };
                    let back = vk::BufferCopy { src_offset: 0, dst_offset: t.offset, size: s.len };
                    // SAFETY: recording; ranges checked by the core.
                    unsafe { d.cmd_copy_buffer(rec.cmd, s.buffer, tmp, &[there]) };
                    barrier(vk::PipelineStageFlags::ALL_COMMANDS);
                    // SAFETY: as above.
                    unsafe { d.cmd_copy_buffer(rec.cmd, tmp, t.buffer, &[back]) };
                } else {
                    let region = vk::BufferCopy { src_offset: s.offset, dst_offset: t.offset, size: s.len };
                    // SAFETY: recording; ranges checked by the core.
                    unsafe { d.cmd_copy_buffer(rec.cmd, s.buffer, t.buffer, &[region]) };
                }
            }
            JobOp::GemmF32 { a, b, c, alpha, beta } => {
                self.record_gemm(g, d, rec, binder, [a, b, c], [*alpha, *beta], None)?;
            }
            JobOp::Gemm16 { a, b, c, alpha, beta, ty } => {
                self.record_gemm(g, d, rec, binder, [a, b, c], [*alpha, *beta], Some(*ty))?;
            }
            JobOp::Launch { program, entry, grid, args } => {
                let p = program
                    .as_any()
                    .downcast_ref::<VkProgram>()
                    .ok_or_else(|| einval("vulkan: a program of another driver"))?;
                if !p.is_on(&g.gpu) {
                    return Err(DriverError::new(
                        Errno::ENODEV,
                        "vulkan: the program was lost with the device it was loaded on (a device reset): load it again",
                    ));
                }
                let mut buffers = Vec::new();
                let mut scalars = Vec::new();
                for a in args {
                    match a {
                        JobArg::Buffer(r) => buffers.push(binder.bind(r)?),
                        s => scalars.push(s.clone()),
                    }
                }
                p.record(d, rec, *entry, *grid, &buffers, &scalars)?;
            }
            JobOp::Nop => {}
            JobOp::Driver { code, .. } => {
                return Err(DriverError::new(Errno::EOPNOTSUPP, format!("vulkan: no driver op {code}")))
            }
        }
        Ok(())
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
        // Nothing to submit (Vulkan refuses zero-sized fills and copies; the core allows
        // them, and refuses zero GEMM dimensions).
        let empty = match op {
            JobOp::Nop => true,
            JobOp::Fill { dst, .. } => dst.len == 0,
            JobOp::Copy { src, .. } => src.len == 0,
            _ => false,
        };
        if empty {
            return Ok(());
        }
        let mut solo = false;
        loop {
            // A turn beside other jobs, or alone on the device (a run again after a loss).
            let _beside = (!solo).then(|| self.solo.read().unwrap_or_else(|e| e.into_inner()));
            let _alone = solo.then(|| self.solo.write().unwrap_or_else(|e| e.into_inner()));
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
