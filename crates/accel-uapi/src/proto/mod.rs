//! Control messages: requests a client sends and the replies it gets.
//!
//! Every request gets exactly one reply, matched by the header's sequence number.
//! Messages that carry a file descriptor (mmap, export, import) pass it as
//! `SCM_RIGHTS` ancillary data beside the message.

mod types;

use serde::{Deserialize, Serialize};

use crate::Errno;

pub use types::*;

macro_rules! handle_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);
    };
}

handle_type!(
    /// A buffer-object handle, local to one client (GEM handle).
    BoHandle
);
handle_type!(
    /// A queue (scheduler entity) handle, local to one client.
    QueueHandle
);
handle_type!(
    /// A fence handle, local to one client.
    FenceHandle
);
handle_type!(
    /// A syncobj handle, local to one client.
    SyncobjHandle
);
handle_type!(
    /// A program handle (a loaded module of kernels), local to one client.
    ProgramHandle
);

/// Requests a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Version handshake; must be the first message on a connection.
    Hello {
        /// ABI major version the client speaks.
        abi_major: u16,
        /// ABI minor version the client speaks.
        abi_minor: u16,
        /// Client name for usage stats.
        name: String,
        /// Namespace token: places the client in the namespace that has it.
        token: Option<String>,
    },
    /// List the devices.
    ListDevices,
    /// Describe one device.
    DeviceInfo {
        /// Minor number.
        minor: u32,
    },
    /// Open a device; this connection becomes that device's open file.
    Open {
        /// Minor number.
        minor: u32,
        /// Exclusive devices: how long to queue for the lease if another client holds it
        /// (0: fail at once with `EBUSY`; `u64::MAX`: wait indefinitely).
        wait_ms: u64,
    },
    /// Create a buffer object of `size` bytes, zero-filled.
    BoCreate {
        /// Size in bytes.
        size: u64,
        /// Memory region ([`RegionInfo::id`]; 0 is host memory).
        region: u32,
    },
    /// Describe a buffer object.
    BoInfo {
        /// The buffer.
        handle: BoHandle,
    },
    /// Drop this client's handle to a buffer object.
    BoClose {
        /// The buffer.
        handle: BoHandle,
    },
    /// Get a descriptor the client can `mmap` to reach the buffer's memory.
    BoMmap {
        /// The buffer.
        handle: BoHandle,
    },
    /// Export the buffer as a descriptor another client can import (PRIME export).
    BoExport {
        /// The buffer.
        handle: BoHandle,
    },
    /// Import the buffer whose descriptor travels with this message (PRIME import).
    BoImport,
    /// Create a queue (scheduler entity).
    QueueCreate {
        /// Per-job timeout in milliseconds; 0 means the device default.
        timeout_ms: u64,
        /// Priority class.
        priority: Priority,
        /// Share of the device within the class, relative to other queues (1..=10000; 0 means 100).
        weight: u32,
    },
    /// Destroy a queue; its queued jobs are cancelled.
    QueueDestroy {
        /// The queue.
        handle: QueueHandle,
    },
    /// Give a queue a shared-memory submission ring (see [`crate::ring`]). The reply is
    /// [`Reply::Fd`] with three descriptors: the ring memfd, the ring's doorbell
    /// eventfd, and the ring's completion eventfd.
    RingCreate {
        /// The queue.
        queue: QueueHandle,
        /// Submission entries: a power of two, at most [`crate::ring::MAX_RING_ENTRIES`].
        entries: u32,
    },
    /// Submit a job.
    Submit {
        /// Queue to submit on.
        queue: QueueHandle,
        /// The work.
        op: Op,
        /// Dependencies that must signal before the job runs.
        wait: Vec<WaitPoint>,
        /// Syncobjs the job's fence is attached to.
        signal: Vec<SignalPoint>,
    },
    /// Wait for fences or syncobj points.
    Wait {
        /// What to wait on.
        points: Vec<WaitPoint>,
        /// Wait for all (true) or any (false).
        all: bool,
        /// Relative timeout in nanoseconds; 0 polls.
        timeout_ns: u64,
    },
    /// Drop a fence handle.
    FenceClose {
        /// The fence.
        handle: FenceHandle,
    },
    /// Get an eventfd that becomes readable when the wait point signals.
    ExportSyncFd {
        /// What to export.
        point: WaitPoint,
    },
    /// Create a syncobj.
    SyncobjCreate {
        /// Timeline (true) or binary (false).
        timeline: bool,
        /// Binary only: start signalled.
        signaled: bool,
    },
    /// Destroy a syncobj handle.
    SyncobjDestroy {
        /// The syncobj.
        handle: SyncobjHandle,
    },
    /// Signal a syncobj point from the host.
    SyncobjSignal {
        /// The syncobj.
        handle: SyncobjHandle,
        /// Timeline point (0 for binary).
        point: u64,
    },
    /// Reset a binary syncobj to unsignalled.
    SyncobjReset {
        /// The syncobj.
        handle: SyncobjHandle,
    },
    /// Read a timeline syncobj's highest signalled point.
    SyncobjQuery {
        /// The syncobj.
        handle: SyncobjHandle,
    },
    /// Export a syncobj as a descriptor another client (of any device) can import.
    SyncobjExport {
        /// The syncobj.
        handle: SyncobjHandle,
    },
    /// Import the syncobj whose descriptor travels with this message.
    SyncobjImport,
    /// One message of the RAS netlink family ([`crate::ras`]), or of the generic netlink
    /// controller (`CTRL_CMD_GETFAMILY`, to resolve the family by name). Replies are
    /// [`Reply::Netlink`]; a dump may take several, the last ending in `NLMSG_DONE`. A tenant
    /// sees its own devices' nodes; changes need an admin of the root namespace.
    Netlink(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Join the RAS `error-report` multicast group: after the `Ok` reply, the connection
    /// only delivers events, each a [`Reply::Netlink`] with sequence number 0 holding an
    /// `error-event` with the kernel's attributes. A tenant gets its own devices' events.
    RasSubscribe,
    /// Create a namespace (admin, root namespace).
    NsCreate {
        /// Name.
        name: String,
        /// Token that places clients in it.
        token: Option<String>,
    },
    /// Delete a namespace (admin, root namespace). With clients connected it fails with
    /// `EBUSY` unless `evict` is set: then they are evicted (their jobs fail with `ENODEV`,
    /// their connections close, their memory is freed).
    NsDelete {
        /// Name.
        name: String,
        /// Evict connected clients instead of refusing.
        evict: bool,
    },
    /// Give a namespace a device or a share of one; again to change the share (admin).
    NsAssign {
        /// Namespace.
        name: String,
        /// Device minor as the root namespace numbers it.
        device: u32,
        /// Memory limit in bytes (0: the whole device).
        memory_limit: u64,
        /// Compute weight: the namespace's share of the device against other namespaces',
        /// however many queues it opens (100 = 1×; 0: 100).
        weight: u32,
        /// Most clients at once (0: no limit).
        max_clients: u32,
        /// A share that shrinks below what its clients use fails with `EBUSY` unless this
        /// is set: then that share's clients are evicted.
        evict: bool,
    },
    /// List namespaces (root namespace).
    NsList,
    /// Live object counts across the daemon.
    Stats,
    /// Per-client usage of every client.
    Clients,
    /// Give a namespace a new token (admin). Replies [`Reply::Token`] with it.
    NsToken {
        /// Namespace.
        name: String,
        /// The new token; `None`: the daemon generates 256 random bits.
        token: Option<String>,
        /// Keep the current tokens valid too (roll the new one out, then retire them).
        keep_old: bool,
    },
    /// Invalidate every token of a namespace but the newest (admin). Replies
    /// [`Reply::Point`] with how many were retired.
    NsRetireTokens {
        /// Namespace.
        name: String,
    },
    /// `Submit` and `Wait` in one round trip (ABI 2.1): queues a job and answers
    /// [`Reply::Waited`] (one point) when it completes, or `ETIMEDOUT` after `timeout_ns`.
    /// No fence handle is created.
    SubmitWait {
        /// The queue.
        queue: QueueHandle,
        /// What to run.
        op: Op,
        /// What it waits for first.
        wait: Vec<WaitPoint>,
        /// Syncobj points it signals.
        signal: Vec<SignalPoint>,
        /// How long to wait for it.
        timeout_ns: u64,
    },
    /// `DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT` (and `SYNCOBJ_WAIT` with `points` empty) (ABI 2.2):
    /// waits for all or any of the points; [`Reply::Waited`] with the first signalled index.
    /// No handles: answered at once. A timeout gives `ETIME`.
    SyncobjWaitMany {
        /// The syncobjs.
        handles: Vec<SyncobjHandle>,
        /// One point per handle, or empty for point 0 everywhere (binary wait).
        points: Vec<u64>,
        /// [`crate::syncobj`] `WAIT_*` flags.
        flags: u32,
        /// Deadline: absolute `CLOCK_MONOTONIC` ns, as DRM; relative ns with `WAIT_RELATIVE`.
        /// A deadline already past polls.
        timeout_ns: i64,
    },
    /// `DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL` (and `SYNCOBJ_SIGNAL` with `points` empty): signals
    /// each point from the host. Point 0 replaces the fence with a signalled one; any other
    /// point is added to the timeline, in or out of order.
    SyncobjSignalMany {
        /// The syncobjs (at least one).
        handles: Vec<SyncobjHandle>,
        /// One point per handle, or empty for point 0 everywhere.
        points: Vec<u64>,
    },
    /// `DRM_IOCTL_SYNCOBJ_RESET`: drops each syncobj's fence (a timeline's whole chain).
    SyncobjResetMany {
        /// The syncobjs (at least one).
        handles: Vec<SyncobjHandle>,
    },
    /// `DRM_IOCTL_SYNCOBJ_QUERY`: each syncobj's highest contiguous signalled point, or with
    /// `QUERY_LAST_SUBMITTED` its last submitted point. [`Reply::Points`].
    SyncobjQueryMany {
        /// The syncobjs (at least one).
        handles: Vec<SyncobjHandle>,
        /// [`crate::syncobj`] `QUERY_*` flags.
        flags: u32,
    },
    /// `DRM_IOCTL_SYNCOBJ_TRANSFER`: the fence of `src` at `src_point` becomes `dst`'s fence
    /// (`dst_point` 0) or its point `dst_point`.
    SyncobjTransfer {
        /// Source syncobj.
        src: SyncobjHandle,
        /// Source point (0: its current fence).
        src_point: u64,
        /// Destination syncobj.
        dst: SyncobjHandle,
        /// Destination point (0: replace its fence).
        dst_point: u64,
        /// 0 or `WAIT_FOR_SUBMIT` (transfer a point not submitted yet once it is).
        flags: u32,
    },
    /// `DRM_IOCTL_SYNCOBJ_EVENTFD`: the eventfd travelling with this message is signalled
    /// (incremented by 1) once `point` signals, or with `WAIT_AVAILABLE` once it is submitted.
    /// It may be armed before the point is submitted.
    SyncobjEventfd {
        /// The syncobj.
        handle: SyncobjHandle,
        /// The point.
        point: u64,
        /// 0 or `WAIT_AVAILABLE`.
        flags: u32,
    },
    /// `HANDLE_TO_FD` with `EXPORT_SYNC_FILE`: the fence at `point` as a sync file, a
    /// descriptor that polls readable once the fence signals and can be imported into any
    /// syncobj ([`Request::SyncobjImportSyncFile`]). [`Reply::Fd`].
    SyncobjExportSyncFile {
        /// The syncobj.
        handle: SyncobjHandle,
        /// The point (0: its current fence).
        point: u64,
    },
    /// `FD_TO_HANDLE` with `IMPORT_SYNC_FILE`: the sync file travelling with this message
    /// becomes `handle`'s fence (`point` 0) or its point `point`.
    SyncobjImportSyncFile {
        /// The syncobj.
        handle: SyncobjHandle,
        /// The point (0: replace its fence).
        point: u64,
    },
    /// Load a program (a module of kernels) in a format the driver declares; the driver
    /// validates it (`EINVAL` with its reason). [`Reply::Program`].
    ProgramLoad {
        /// Format (`builtin`, `testdev-cmdbuf`, `spirv`, ...).
        format: String,
        /// The binary.
        bytes: Vec<u8>,
    },
    /// Describe a loaded program. [`Reply::Program`].
    ProgramInfo {
        /// The program.
        handle: ProgramHandle,
    },
    /// Drop a program handle (launches already queued keep it).
    ProgramUnload {
        /// The program.
        handle: ProgramHandle,
    },
    /// Join the `error-report` group with accel's attributes in every event (sequence number,
    /// timestamp, kind, delta, severity, 64-bit value), as if each request carried `accel-ext`
    /// (ABI 3.1). [`Request::RasSubscribe`]'s events carry exactly the kernel's attributes.
    RasSubscribeExt,
    /// Take the messages of a ring's failed entries (ABI 3.1): a completion carries only an
    /// errno, so the words behind it (a refusal's reason, a driver's or compiler's error text)
    /// wait here, the newest [`crate::ring::MAX_RING_ERRORS`] of them. [`Reply::RingErrors`].
    RingErrors {
        /// The queue whose ring it is.
        queue: QueueHandle,
    },
    /// The device's own fence for the job behind `point`, as a kernel `sync_file` (ABI
    /// 3.3): what `vkGetSemaphoreFdKHR` with `SYNC_FD` gives, for a consumer outside accel —
    /// another Vulkan instance (`vkImportSemaphoreFdKHR`), a display (`IN_FENCE_FD`), any
    /// driver that takes sync files. [`Reply::Fd`]. `EALREADY` when the point has signalled
    /// (nothing to wait for: Vulkan's `-1`), `EAGAIN` while its job waits to reach the
    /// device, `EOPNOTSUPP` when its device makes none (only accel's own
    /// [`Request::SyncobjExportSyncFile`] then).
    ExportNativeSyncFile {
        /// What to export.
        point: WaitPoint,
    },
    /// Import device memory another runtime on this machine exported, whose descriptor
    /// travels with this message (ABI 3.4): a Vulkan opaque descriptor
    /// (`vkGetMemoryFdKHR`, `VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT`) on a vulkan device, a
    /// CUDA POSIX handle (`cuMemExportToShareableHandle`) on a cuda device, allocated on the
    /// same physical device. Such a descriptor does not say how large its memory is, so the
    /// importer does, as Vulkan's and CUDA's imports take it. The buffer is the exporter's
    /// memory, not a copy, charged like a created one. [`Reply::Bo`]. `EOPNOTSUPP` where the
    /// device imports none; `EINVAL` for a descriptor its driver refuses (another device's,
    /// not an export, smaller than `size`).
    BoImportExternal {
        /// The device region to import into (not 0: host memory is `BoImport`).
        region: u32,
        /// The size the exporter allocated, in bytes.
        size: u64,
    },
    /// Get a descriptor the client can `mmap` to reach the buffer's memory, and where in
    /// the descriptor's file the memory starts (ABI 3.5): any buffer of a mappable region,
    /// host memory (at 0, as [`Request::BoMmap`] gives it) and a driver's mappable memory,
    /// which need not start at its file's first byte. [`Reply::Mapping`].
    BoMapping {
        /// The buffer.
        handle: BoHandle,
    },
}

/// Why one ring entry failed (ABI 3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingError {
    /// The entry's `user_data`, as in its completion.
    pub user_data: u64,
    /// The job's device sequence number (0 if the entry was refused before it became a job).
    pub seqno: u64,
    /// The errno of the completion.
    pub code: Errno,
    /// What went wrong, for humans.
    pub message: String,
}

/// Replies the daemon sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Handshake accepted.
    Hello {
        /// ABI major the daemon speaks.
        abi_major: u16,
        /// ABI minor the daemon speaks.
        abi_minor: u16,
        /// Id the daemon gave this client.
        client_id: u64,
        /// Daemon version string.
        server: String,
    },
    /// Success with nothing to return.
    Ok,
    /// Device list.
    Devices(Vec<DeviceInfo>),
    /// One device.
    Device(DeviceInfo),
    /// A buffer object handle and its size.
    Bo {
        /// The handle.
        handle: BoHandle,
        /// Size in bytes.
        size: u64,
        /// Memory region (ABI 3.0): whether the client may map it follows from the region.
        region: u32,
    },
    /// A descriptor travels with this reply.
    Fd,
    /// A queue handle.
    Queue(QueueHandle),
    /// A job was queued.
    Submitted {
        /// Fence signalled when the job completes.
        fence: FenceHandle,
        /// Per-device sequence number of the job.
        seqno: u64,
    },
    /// A wait completed.
    Waited {
        /// Index of the first signalled point (for wait-any).
        first: u32,
        /// Status of each point waited on.
        status: Vec<FenceStatus>,
        /// When each signalled point signalled (`CLOCK_MONOTONIC` ns; 0 while pending).
        timestamps: Vec<u64>,
        /// For each point that failed, the driver's words if it gave any, else empty (ABI 3.0).
        messages: Vec<String>,
    },
    /// A syncobj handle.
    Syncobj(SyncobjHandle),
    /// A timeline value.
    Point(u64),
    /// Netlink messages of the RAS family.
    Netlink(#[serde(with = "frames")] Vec<Vec<u8>>),
    /// Namespaces.
    Namespaces(Vec<NamespaceInfo>),
    /// Object counts.
    Stats(ObjectCounts),
    /// Client usage.
    Clients(Vec<ClientUsage>),
    /// The request failed.
    Error {
        /// errno-style code.
        code: Errno,
        /// What went wrong, for humans.
        message: String,
    },
    /// A namespace token, shown once: the daemon keeps only its hash.
    Token(String),
    /// Timeline values, one per handle asked.
    Points(Vec<u64>),
    /// A loaded program.
    Program {
        /// Its handle.
        handle: ProgramHandle,
        /// Its entry points.
        entries: Vec<EntryInfo>,
    },
    /// Messages of failed ring entries, oldest first (ABI 3.1).
    RingErrors {
        /// The messages taken.
        errors: Vec<RingError>,
        /// Older messages dropped since the last take because more failed than are kept.
        dropped: u64,
    },
    /// A descriptor travels with this reply; the buffer's memory starts `offset` bytes into
    /// its file, a multiple of the page size (ABI 3.5).
    Mapping {
        /// Where the memory starts in the descriptor's file.
        offset: u64,
    },
}

/// Netlink messages as a sequence of byte strings: in postcard the same bytes as a sequence of
/// `u8` sequences (a length, then the bytes), written and read as blocks rather than byte by
/// byte (a RAS storm's events cost a third of their delivery in that).
mod frames {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(frames: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(frames.iter().map(|f| serde_bytes::Bytes::new(f)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<serde_bytes::ByteBuf>::deserialize(d)?.into_iter().map(serde_bytes::ByteBuf::into_vec).collect())
    }
}
