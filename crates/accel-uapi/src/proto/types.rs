//! The values requests and replies carry: device and region descriptions, operations and
//! their operands, wait and signal points, usage and object counts.

use serde::{Deserialize, Serialize};

use super::*;

/// What kind of memory a region is (TTM placement / Vulkan memory type / Level Zero
/// allocation type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RegionKind {
    /// Host memory shared with the client (memfd): mappable, zero copy.
    Host,
    /// Device memory the driver owns: not mappable by clients; reached by copies.
    Device,
    /// Device memory the host can also map (a BAR, unified memory).
    DeviceMappable,
}

/// A memory region of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// Index, what `BoCreate` takes (0 is always the host region).
    pub id: u32,
    /// Name (`host`, `vram`, ...).
    pub name: String,
    /// What kind of memory.
    pub kind: RegionKind,
    /// Capacity in bytes.
    pub size: u64,
    /// Bytes allocated now.
    pub used: u64,
    /// Clients can map its buffers (`BoMmap`).
    pub mappable: bool,
    /// Its buffers can be exported (`BoExport`).
    pub exportable: bool,
    /// Host and device see each other's writes without flushes.
    pub coherent: bool,
}

/// A parameter of a program's entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParamKind {
    /// A buffer view.
    Buffer,
    /// A 32-bit unsigned scalar.
    U32,
    /// A 64-bit unsigned scalar.
    U64,
    /// A 32-bit float scalar.
    F32,
}

/// An entry point of a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Name.
    pub name: String,
    /// Parameters, in order.
    pub params: Vec<ParamKind>,
}

/// Most arguments of one launch.
pub const MAX_LAUNCH_ARGS: usize = 8;

/// One argument of a launch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub enum LaunchArg {
    /// No argument (fills the fixed-size argument array past the last one).
    #[default]
    None,
    /// A buffer view.
    Buffer(BufView),
    /// A 32-bit unsigned scalar.
    U32(u32),
    /// A 64-bit unsigned scalar.
    U64(u64),
    /// A 32-bit float scalar.
    F32(f32),
}

/// A kernel launch: an entry point of a loaded program over a grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// The program.
    pub program: ProgramHandle,
    /// Index of the entry point ([`EntryInfo`] order).
    pub entry: u32,
    /// Work groups in x, y, z.
    pub grid: [u32; 3],
    /// Arguments, in parameter order; unused slots are [`LaunchArg::None`].
    pub args: [LaunchArg; MAX_LAUNCH_ARGS],
}

impl Launch {
    /// A launch of `entry` with `args` (at most [`MAX_LAUNCH_ARGS`]; extra ones are dropped).
    pub fn new(program: ProgramHandle, entry: u32, grid: [u32; 3], args: &[LaunchArg]) -> Launch {
        let mut a = [LaunchArg::None; MAX_LAUNCH_ARGS];
        for (slot, v) in a.iter_mut().zip(args) {
            *slot = *v;
        }
        Launch { program, entry, grid, args: a }
    }

    /// The arguments given (up to the first [`LaunchArg::None`]).
    pub fn given(&self) -> &[LaunchArg] {
        let n = self.args.iter().position(|a| *a == LaunchArg::None).unwrap_or(MAX_LAUNCH_ARGS);
        &self.args[..n]
    }
}

/// Device category, as agreed for accelerators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Category {
    /// Single-shot data processor: stateless jobs, any client.
    Oneshot,
    /// Single-user offload: one client at a time holds the device.
    Exclusive,
    /// Multi-application: many clients are scheduled on the device.
    Shared,
}

impl Category {
    /// Lower-case name used by the CLI and config.
    pub fn name(self) -> &'static str {
        match self {
            Category::Oneshot => "oneshot",
            Category::Exclusive => "exclusive",
            Category::Shared => "shared",
        }
    }

    /// Parses a lower-case category name.
    pub fn parse(s: &str) -> Option<Category> {
        match s {
            "oneshot" => Some(Category::Oneshot),
            "exclusive" => Some(Category::Exclusive),
            "shared" => Some(Category::Shared),
            _ => None,
        }
    }
}

/// Scheduling priority class of a queue. Higher classes are served first, with a
/// bounded wait for lower ones (see the scheduler's starvation bound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Latency-sensitive work; needs the daemon's user or root.
    High,
    /// System work; needs the daemon's user or root.
    Kernel,
}

impl Priority {
    /// All classes, lowest first.
    pub const ALL: [Priority; 4] = [Priority::Low, Priority::Normal, Priority::High, Priority::Kernel];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Kernel => "kernel",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Severity of a RAS error counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// Corrected by hardware (e.g. single-bit ECC); a trend predicts failure.
    Corrected,
    /// Not corrected; data or work was lost, the device goes on.
    Uncorrected,
    /// The device (or block) cannot go on.
    Fatal,
}

impl Severity {
    /// All severities, mildest first.
    pub const ALL: [Severity; 3] = [Severity::Corrected, Severity::Uncorrected, Severity::Fatal];

    /// Lower-case name (metrics labels, CLI).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Corrected => "corrected",
            Severity::Uncorrected => "uncorrected",
            Severity::Fatal => "fatal",
        }
    }
}

/// Health of a RAS node or a whole device, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Health {
    /// No errors that matter.
    Ok,
    /// Corrected errors crossed a threshold: failure is likely ahead.
    PredictedFailure,
    /// Uncorrected errors happened; the device still works.
    Degraded,
    /// A fatal error happened.
    Failed,
}

impl Health {
    /// All states, best first.
    pub const ALL: [Health; 4] = [Health::Ok, Health::PredictedFailure, Health::Degraded, Health::Failed];

    /// Lower-case name (metrics labels, CLI).
    pub fn name(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::PredictedFailure => "predicted-failure",
            Health::Degraded => "degraded",
            Health::Failed => "failed",
        }
    }
}

/// One engine of a device, as drivers describe it and `accel info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// Engine name (`compute`, `copy`, …).
    pub name: String,
    /// Ring depth: how many jobs the engine takes at once.
    pub credits: u32,
}

/// The portable operations a driver may advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpKind {
    /// Does nothing; signals its fence.
    Nop,
    /// Fills a buffer range with a 32-bit pattern.
    Fill,
    /// Copies between buffer ranges.
    Copy,
    /// f32 general matrix multiply.
    GemmF32,
    /// A driver-private operation.
    Driver,
    /// A program launch.
    Launch,
    /// IEEE half-precision (f16) general matrix multiply, f32 accumulation.
    GemmF16,
    /// bfloat16 general matrix multiply, f32 accumulation.
    GemmBf16,
}

impl OpKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Nop => "nop",
            OpKind::Fill => "fill",
            OpKind::Copy => "copy",
            OpKind::GemmF32 => "gemm-f32",
            OpKind::Driver => "driver",
            OpKind::Launch => "launch",
            OpKind::GemmF16 => "gemm-f16",
            OpKind::GemmBf16 => "gemm-bf16",
        }
    }
}

/// What a device is, as `accel list` / `accel info` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Minor number: the device is `accel<minor>`.
    pub minor: u32,
    /// Driver name (`cpu`, `testdev`, `cuda`).
    pub driver: String,
    /// Human-readable device name.
    pub name: String,
    /// Vendor string.
    pub vendor: String,
    /// Category this device runs in.
    pub category: Category,
    /// Categories the hardware supports.
    pub supported_categories: Vec<Category>,
    /// Operations the driver accepts.
    pub ops: Vec<OpKind>,
    /// Host-visible memory the device may allocate, in bytes.
    pub memory_bytes: u64,
    /// Number of compute units (threads, SMs, ...).
    pub compute_units: u32,
    /// Engines the scheduler feeds.
    pub engines: Vec<EngineInfo>,
    /// Memory regions, with their use (ABI 3.0).
    pub regions: Vec<RegionInfo>,
    /// Program formats the driver loads (`builtin`, `spirv`, ...).
    pub program_formats: Vec<String>,
    /// Jobs waiting to be dispatched.
    pub queued_jobs: u64,
    /// Engine resets so far.
    pub resets: u64,
    /// True when a reset failed and the device refuses work.
    pub wedged: bool,
    /// Clients that currently have the device open.
    pub open_clients: u32,
    /// Client id holding an exclusive device, if any.
    pub exclusive_owner: Option<u64>,
}

/// A byte range of a buffer object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufView {
    /// Buffer object.
    pub bo: BoHandle,
    /// Byte offset into the buffer.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A row-major matrix operand inside a buffer object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatView {
    /// Buffer object.
    pub bo: BoHandle,
    /// Byte offset of element (0, 0); must be aligned to the element's size.
    pub offset: u64,
    /// Distance between rows, in elements (≥ the number of columns).
    pub row_stride: u64,
}

/// `C = alpha * A·B + beta * C` with A m×k, B k×n, C m×n, all row-major f32.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GemmF32 {
    /// Rows of A and C.
    pub m: u64,
    /// Columns of B and C.
    pub n: u64,
    /// Columns of A, rows of B.
    pub k: u64,
    /// Left operand.
    pub a: MatView,
    /// Right operand.
    pub b: MatView,
    /// Destination (read when beta ≠ 0).
    pub c: MatView,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the existing C.
    pub beta: f32,
}

/// A 16-bit floating-point element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Float16 {
    /// IEEE 754 binary16: 5 exponent bits, 10 mantissa bits.
    F16,
    /// bfloat16: f32's 8 exponent bits, 7 mantissa bits.
    Bf16,
}

impl Float16 {
    /// The operation kind of a GEMM on this type.
    pub fn gemm_kind(self) -> OpKind {
        match self {
            Float16::F16 => OpKind::GemmF16,
            Float16::Bf16 => OpKind::GemmBf16,
        }
    }
}

/// `C = alpha * A·B + beta * C` on 16-bit floats: A m×k, B k×n, C m×n, all row-major of
/// type `ty` (each [`MatView`] offset 2-byte aligned, strides in elements). Products are
/// summed in f32 and the result rounded to `ty` once, as cuBLAS's `CUBLAS_COMPUTE_32F` and
/// `torch.matmul` on such tensors do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gemm16 {
    /// Rows of A and C.
    pub m: u64,
    /// Columns of B and C.
    pub n: u64,
    /// Columns of A, rows of B.
    pub k: u64,
    /// Left operand.
    pub a: MatView,
    /// Right operand.
    pub b: MatView,
    /// Destination (read when beta ≠ 0).
    pub c: MatView,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the existing C.
    pub beta: f32,
    /// Element type of A, B and C.
    pub ty: Float16,
}

impl Gemm16 {
    /// The product `g` describes, on operands of 16-bit type `ty` (same views and scales).
    pub fn of(g: GemmF32, ty: Float16) -> Gemm16 {
        let GemmF32 { m, n, k, a, b, c, alpha, beta } = g;
        Gemm16 { m, n, k, a, b, c, alpha, beta, ty }
    }

    /// The inverse of [`Gemm16::of`]: the product's shape, views and scales, and the type.
    pub fn split(self) -> (GemmF32, Float16) {
        let Gemm16 { m, n, k, a, b, c, alpha, beta, ty } = self;
        (GemmF32 { m, n, k, a, b, c, alpha, beta }, ty)
    }
}

/// The work a job does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// No work.
    Nop,
    /// Fill `dst` with the little-endian 32-bit `pattern`; `dst.len` must be a multiple of 4.
    Fill {
        /// Destination range.
        dst: BufView,
        /// Pattern repeated over the range.
        pattern: u32,
    },
    /// Copy `src` to `dst`; the lengths must match.
    Copy {
        /// Source range.
        src: BufView,
        /// Destination range.
        dst: BufView,
    },
    /// f32 GEMM.
    GemmF32(GemmF32),
    /// Driver-private operation; `code` and `args` mean what the driver says.
    Driver {
        /// Driver-defined operation code.
        code: u32,
        /// Driver-defined arguments.
        args: [u64; 4],
    },
    /// Run an entry point of a loaded program (ABI 3.0).
    Launch(Launch),
    /// 16-bit float GEMM (ABI 3.3).
    Gemm16(Gemm16),
}

impl Op {
    /// Which kind of operation this is.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Nop => OpKind::Nop,
            Op::Fill { .. } => OpKind::Fill,
            Op::Copy { .. } => OpKind::Copy,
            Op::GemmF32(_) => OpKind::GemmF32,
            Op::Driver { .. } => OpKind::Driver,
            Op::Launch(_) => OpKind::Launch,
            Op::Gemm16(g) => g.ty.gemm_kind(),
        }
    }
}

/// Something a job or a wait can depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitPoint {
    /// A fence.
    Fence(FenceHandle),
    /// A syncobj; `point` is the timeline point (ignored for binary syncobjs).
    Syncobj {
        /// The syncobj.
        handle: SyncobjHandle,
        /// Timeline point.
        point: u64,
    },
}

/// A syncobj a job signals when it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalPoint {
    /// The syncobj.
    pub handle: SyncobjHandle,
    /// Timeline point (must be 0 for binary syncobjs).
    pub point: u64,
}

/// State of a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FenceStatus {
    /// Not signalled yet.
    Pending,
    /// Signalled without error.
    Signaled,
    /// Signalled with an error (the job failed, hung or was cancelled).
    Error(Errno),
}

/// Live object counts of the whole daemon (for leak checks and `accel info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCounts {
    /// Connected clients.
    pub clients: u64,
    /// Buffer objects.
    pub buffers: u64,
    /// Bytes of buffer memory.
    pub buffer_bytes: u64,
    /// Fences.
    pub fences: u64,
    /// Syncobjs.
    pub syncobjs: u64,
    /// Queues.
    pub queues: u64,
    /// Jobs submitted and not yet freed.
    pub jobs: u64,
    /// Submission rings.
    pub rings: u64,
    /// Loaded programs (ABI 3.0).
    pub programs: u64,
}

impl ObjectCounts {
    /// Every count with its name (`clients`, `buffers`, `buffer_bytes`, ...), for exporters.
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("clients", self.clients),
            ("buffers", self.buffers),
            ("buffer_bytes", self.buffer_bytes),
            ("fences", self.fences),
            ("syncobjs", self.syncobjs),
            ("queues", self.queues),
            ("jobs", self.jobs),
            ("rings", self.rings),
            ("programs", self.programs),
        ]
    }
}

/// A namespace as `accel ns list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Whether a token places clients in it.
    pub has_token: bool,
    /// Assigned devices, in local order (the first is the namespace's accel0).
    pub devices: Vec<NsDeviceInfo>,
}

/// One device of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsDeviceInfo {
    /// Minor in the root namespace.
    pub device: u32,
    /// Memory limit (0: whole device).
    pub memory_limit: u64,
    /// Bytes of buffers held (host region).
    pub memory_used: u64,
    /// Bytes held in each region, by region id (ABI 3.0; the limit applies to each).
    pub region_used: Vec<u64>,
    /// Compute weight.
    pub weight: u32,
    /// Most clients (0: no limit).
    pub max_clients: u32,
    /// Clients with it open.
    pub clients: u32,
}

/// Per-client usage, in the spirit of DRM fdinfo `drm-usage-stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientUsage {
    /// Client id.
    pub client_id: u64,
    /// Process id of the peer.
    pub pid: i32,
    /// Client name given at handshake.
    pub name: String,
    /// Device minor the client opened, if any.
    pub device: Option<u32>,
    /// Nanoseconds of engine time used (`drm-engine-compute`).
    pub engine_ns: u64,
    /// Jobs completed.
    pub jobs_completed: u64,
    /// Bytes of host-memory buffers the client holds (`drm-memory-host`).
    pub memory_bytes: u64,
    /// Bytes of buffers in the device's own regions (`drm-memory-vram`; ABI 3.0).
    pub device_memory_bytes: u64,
}
