//! The submission path: a command buffer per job on an engine (a queue), completion through
//! the engine's timeline semaphore (polled, then waited for) — by the job's own thread, or
//! for all of an engine's jobs by the engine's completion thread — and what aborted jobs leave
//! behind until the device is done with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use accel_hal::bo::BoRange;
use accel_hal::driver::{AbortToken, DriverError};
use accel_hal::lock;
use accel_uapi::Errno;
use ash::vk;

use super::{vk_err, Gpu};

/// How long a job's thread polls the engine's timeline before it blocks on it:
/// `$ACCEL_VULKAN_WAIT_SPIN_US` microseconds (at most 100 ms), else 5 ms on machines with cores
/// to spare (as the cuda driver polls its completion marks) and none on smaller ones, where
/// the poll would take a core from the device itself when it runs on the CPU (lavapipe).
fn completion_poll() -> Duration {
    static POLL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *POLL.get_or_init(|| {
        accel_hal::spin::budget(
            "ACCEL_VULKAN_WAIT_SPIN_US",
            Duration::from_millis(5),
            Duration::ZERO,
            Duration::from_millis(100),
        )
    })
}

/// A queue the device exposes as an accel engine.
pub struct Engine {
    /// Queue family.
    pub family: u32,
    pub(crate) queue: Mutex<vk::Queue>,
    /// Signalled with each job's value when the job's commands are done.
    pub(crate) timeline: vk::Semaphore,
    /// The last timeline value handed out (jobs, sync-file batches).
    pub(crate) next: AtomicU64,
    /// Semaphores exported as sync files, destroyed once the timeline reaches their value.
    pub(crate) retired: Mutex<Vec<(u64, vk::Semaphore)>>,
    /// Command pools ready for reuse.
    idle: Mutex<Vec<Recorder>>,
    /// Work abandoned by aborted jobs, freed once the timeline passes its value.
    zombies: Mutex<Vec<Zombie>>,
    /// Jobs the completion thread waits for ([`Gpu::complete_later`]).
    pending: Mutex<Vec<Pending>>,
    /// Tells the completion thread of a new pending job.
    more: Condvar,
    /// The completion thread, started with the first pending job.
    completer: OnceLock<()>,
}

/// A job the device has: what it holds until its commands completed.
pub struct Submitted {
    engine: usize,
    /// The engine's timeline reaches it when the job's commands are done.
    value: u64,
    rec: Recorder,
    owned: Vec<Owned>,
    keep: Box<dyn std::any::Any + Send>,
}

/// What a submitted job's end is reported to.
pub type Then = Box<dyn FnOnce(Result<(), DriverError>) + Send>;

/// A job left to the engine's completion thread.
struct Pending {
    job: Submitted,
    abort: AbortToken,
    /// When the completion thread saw the job aborted.
    aborted_at: Option<Instant>,
    then: Then,
}

/// An aborted job's objects (and what it holds alive: buffers, its program), freed once the
/// engine's timeline reaches its value.
type Zombie = (u64, Recorder, Vec<Owned>, Box<dyn std::any::Any + Send>);

/// How long an aborted job's wait goes on before its objects are left for later reaping.
const ABORT_GRACE: Duration = Duration::from_secs(10);

/// A command pool with one command buffer and a descriptor pool, reused job after job.
pub struct Recorder {
    pool: vk::CommandPool,
    /// The command buffer jobs record into.
    pub cmd: vk::CommandBuffer,
    descriptors: vk::DescriptorPool,
}

/// Per-job Vulkan objects freed after the job's commands completed.
#[derive(Debug)]
pub enum Owned {
    /// A buffer and (when the job allocated it) its memory.
    Buffer(vk::Buffer, Option<vk::DeviceMemory>),
    /// A host operand staged through host-visible memory (mapped at `ptr`): copied back to
    /// `range` once the job succeeded, before it is freed.
    Staged { buffer: vk::Buffer, memory: vk::DeviceMemory, ptr: *mut u8, range: BoRange },
}

// SAFETY: `ptr` is the mapping of `memory`, which the value owns (nothing else maps it) until
// it is freed; it moves between the threads that submit and reap jobs, one at a time.
unsafe impl Send for Owned {}

/// Copies a succeeded job's staged operands back to host memory, while they are mapped.
fn copy_back(owned: &[Owned]) {
    for o in owned {
        if let Owned::Staged { ptr, range, .. } = o {
            if let Some(dst) = range.host() {
                // SAFETY: the staging mapping is `range.len` bytes at least, alive until freed.
                let src = unsafe { accel_hal::mem::VolatileSlice::new(*ptr, range.len) };
                src.copy_to(&dst);
            }
        }
    }
}

/// Most descriptor sets (and storage buffers per set) a job binds.
const SETS_PER_JOB: u32 = 4;
const BUFFERS_PER_JOB: u32 = 64;

impl Gpu {
    /// Records a job's commands with `record` and runs them on `engine`, returning once
    /// they completed (the engine's timeline reached the job's value); `submitted` learns
    /// that value as soon as the device has the job. An abort stops the
    /// wait: the job's objects are kept until the device is done with them.
    pub fn submit(
        &self,
        engine: usize,
        abort: &AbortToken,
        keep: Box<dyn std::any::Any + Send>,
        record: impl FnOnce(&ash::Device, &Recorder, &mut Vec<Owned>) -> Result<(), DriverError>,
        submitted: impl FnOnce(u64),
    ) -> Result<(), DriverError> {
        let job = self.start(engine, keep, record, submitted)?;
        self.wait(job, abort)
    }

    /// Records a job's commands with `record` and hands them to `engine`; `submitted` learns
    /// the job's timeline value. What it returns is waited for with [`Gpu::wait`] or
    /// [`Gpu::complete_later`].
    pub fn start(
        &self,
        engine: usize,
        keep: Box<dyn std::any::Any + Send>,
        record: impl FnOnce(&ash::Device, &Recorder, &mut Vec<Owned>) -> Result<(), DriverError>,
        submitted: impl FnOnce(u64),
    ) -> Result<Submitted, DriverError> {
        if self.is_lost() {
            return Err(DriverError::device_lost("vulkan: the device was lost"));
        }
        let e = &self.engines[engine];
        self.reap(e);
        let rec = match lock(&e.idle).pop() {
            Some(r) => r,
            None => Recorder::new(&self.device, e.family)?,
        };
        let mut owned = Vec::new();
        let result = self.record_and_submit(e, &rec, &mut owned, record);
        let value = match result {
            Ok(v) => v,
            Err(err) => {
                self.free(owned);
                lock(&e.idle).push(rec);
                return Err(self.note(err));
            }
        };
        submitted(value);
        Ok(Submitted { engine, value, rec, owned, keep })
    }

    /// Waits on this thread until a started job's commands completed, then frees what it
    /// used. An aborted job (timeout, client gone) still waits a grace period: Vulkan cannot
    /// take back submitted work, and what it uses must outlive it.
    pub fn wait(&self, job: Submitted, abort: &AbortToken) -> Result<(), DriverError> {
        let (e, value) = (&self.engines[job.engine], job.value);
        let mut aborted_at = None;
        let mut done = self.poll_timeline(e.timeline, value);
        while !done {
            let sems = [e.timeline];
            let values = [value];
            let wait = vk::SemaphoreWaitInfo::default().semaphores(&sems).values(&values);
            // SAFETY: a live semaphore of this device.
            match unsafe { self.device.wait_semaphores(&wait, Duration::from_millis(20).as_nanos() as u64) } {
                Ok(()) => done = true,
                Err(vk::Result::TIMEOUT) => {
                    if self.is_lost() {
                        // Lost while it ran (a reset for another job's timeout): the device
                        // will not finish it.
                        self.abandon(job);
                        return Err(DriverError::device_lost("vulkan: the device was lost while the job ran"));
                    }
                    if !abort.is_aborted() {
                        continue;
                    }
                    let since = *aborted_at.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= ABORT_GRACE {
                        self.abandon(job);
                        return Err(DriverError::new(Errno::ECANCELED, "vulkan: job aborted while the device ran it"));
                    }
                }
                Err(r) => {
                    self.abandon(job);
                    return Err(self.note(vk_err("vkWaitSemaphores")(r)));
                }
            }
        }
        self.retire(job, aborted_at.is_some())
    }

    /// A job whose commands completed: copies its staged operands back (unless it was
    /// aborted), frees what it used, and says how it ended.
    fn retire(&self, job: Submitted, aborted: bool) -> Result<(), DriverError> {
        if !aborted {
            copy_back(&job.owned);
        }
        self.free(job.owned);
        lock(&self.engines[job.engine].idle).push(job.rec);
        drop(job.keep);
        if aborted {
            return Err(DriverError::new(Errno::ECANCELED, "vulkan: job aborted"));
        }
        Ok(())
    }

    /// A job the device will not finish (lost) or has not yet (given up on): what it uses
    /// stays until the engine's timeline passes it.
    fn abandon(&self, job: Submitted) {
        lock(&self.engines[job.engine].zombies).push((job.value, job.rec, job.owned, job.keep));
    }

    /// Leaves a started job to its engine's completion thread, which reports its end to
    /// `then` (as [`Gpu::wait`] would return it) and frees what it used: one thread per
    /// engine waits for all its jobs, none per job.
    pub fn complete_later(self: &Arc<Gpu>, job: Submitted, abort: AbortToken, then: Then) {
        let e = &self.engines[job.engine];
        let engine = job.engine;
        lock(&e.pending).push(Pending { job, abort, aborted_at: None, then });
        e.more.notify_one();
        e.completer.get_or_init(|| {
            let gpu = Arc::downgrade(self);
            let started =
                std::thread::Builder::new().name(format!("vk-complete{engine}")).spawn(move || completer(&gpu, engine));
            if let Err(err) = started {
                // Without it nothing pending ends: fail what is there (a machine that cannot
                // start a thread cannot go on anyway).
                tracing::error!("vulkan: no completion thread ({err})");
                for p in std::mem::take(&mut *lock(&e.pending)) {
                    (p.then)(Err(DriverError::new(Errno::EAGAIN, "vulkan: no completion thread")));
                }
            }
        });
    }

    /// One round of an engine's completion thread: waits (polls, then blocks for at most
    /// 20 ms) for the first pending job, then ends every job the timeline passed, fails them
    /// all if the device was lost, and gives up on aborted ones after the grace period.
    /// Returns false once the engine has nothing pending for a while.
    fn complete_round(&self, engine: usize) -> bool {
        let e = &self.engines[engine];
        let first = {
            let mut pending = lock(&e.pending);
            if pending.is_empty() {
                pending = e.more.wait_timeout(pending, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
            }
            match pending.iter().map(|p| p.job.value).min() {
                Some(v) => v,
                None => return false,
            }
        };
        let mut lost = self.is_lost();
        if !lost && !self.poll_timeline(e.timeline, first) {
            let (sems, values) = ([e.timeline], [first]);
            let wait = vk::SemaphoreWaitInfo::default().semaphores(&sems).values(&values);
            // SAFETY: a live semaphore of this device.
            match unsafe { self.device.wait_semaphores(&wait, Duration::from_millis(20).as_nanos() as u64) } {
                Ok(()) | Err(vk::Result::TIMEOUT) => {}
                Err(r) => {
                    let _ = self.note(vk_err("vkWaitSemaphores")(r));
                    lost = self.is_lost();
                }
            }
        }
        // SAFETY: a live semaphore of this device.
        let reached = unsafe { self.device.get_semaphore_counter_value(e.timeline) }.unwrap_or(0);
        let lost = lost || self.is_lost();
        let now = Instant::now();
        let mut ended = Vec::new();
        {
            let mut pending = lock(&e.pending);
            let mut i = 0;
            while i < pending.len() {
                let p = &mut pending[i];
                if p.abort.is_aborted() && p.aborted_at.is_none() {
                    p.aborted_at = Some(now);
                }
                let done = p.job.value <= reached;
                let given_up = p.aborted_at.is_some_and(|t| now.duration_since(t) >= ABORT_GRACE);
                if done || lost || given_up {
                    ended.push((pending.swap_remove(i), done));
                } else {
                    i += 1;
                }
            }
        }
        for (p, done) in ended {
            let Pending { job, aborted_at, then, .. } = p;
            if !done {
                self.abandon(job);
                then(Err(if lost {
                    DriverError::device_lost("vulkan: the device was lost while the job ran")
                } else {
                    DriverError::new(Errno::ECANCELED, "vulkan: job aborted while the device ran it")
                }));
                continue;
            }
            then(self.retire(job, aborted_at.is_some()));
        }
        true
    }

    /// Polls `timeline` for `value` for [`completion_poll`]'s time at most: whether it got
    /// there. A blocked wait's wake-up costs tens of microseconds, more than many jobs take;
    /// an error is left to the blocking wait after this to report.
    fn poll_timeline(&self, timeline: vk::Semaphore, value: u64) -> bool {
        let poll = completion_poll();
        if poll.is_zero() {
            return false;
        }
        let start = std::time::Instant::now();
        loop {
            // SAFETY: a live semaphore of this device.
            match unsafe { self.device.get_semaphore_counter_value(timeline) } {
                Ok(now) if now >= value => return true,
                Ok(_) if start.elapsed() < poll => std::hint::spin_loop(),
                _ => return false,
            }
        }
    }

    fn record_and_submit(
        &self,
        e: &Engine,
        rec: &Recorder,
        owned: &mut Vec<Owned>,
        record: impl FnOnce(&ash::Device, &Recorder, &mut Vec<Owned>) -> Result<(), DriverError>,
    ) -> Result<u64, DriverError> {
        let d = &self.device;
        // SAFETY: the recorder is this job's alone; its pool is reset only when the device
        // is done with it (idle recorders have completed).
        unsafe {
            d.reset_command_pool(rec.pool, vk::CommandPoolResetFlags::empty()).map_err(vk_err("vkResetCommandPool"))?;
            d.reset_descriptor_pool(rec.descriptors, vk::DescriptorPoolResetFlags::empty())
                .map_err(vk_err("vkResetDescriptorPool"))?;
            let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
            d.begin_command_buffer(rec.cmd, &begin).map_err(vk_err("vkBeginCommandBuffer"))?;
        }
        record(d, rec, owned)?;
        // Make the job's writes visible to the host (clients read host memory directly).
        let to_host = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ | vk::AccessFlags::MEMORY_READ);
        // SAFETY: recording into this job's command buffer.
        unsafe {
            d.cmd_pipeline_barrier(
                rec.cmd,
                vk::PipelineStageFlags::ALL_COMMANDS,
                vk::PipelineStageFlags::HOST | vk::PipelineStageFlags::ALL_COMMANDS,
                vk::DependencyFlags::empty(),
                &[to_host],
                &[],
                &[],
            );
            d.end_command_buffer(rec.cmd).map_err(vk_err("vkEndCommandBuffer"))?;
        }
        let queue = lock(&e.queue);
        let value = e.next.fetch_add(1, Ordering::AcqRel) + 1;
        let values = [value];
        let mut timeline = vk::TimelineSemaphoreSubmitInfo::default().signal_semaphore_values(&values);
        let cmds = [rec.cmd];
        let sems = [e.timeline];
        let submit = vk::SubmitInfo::default().command_buffers(&cmds).signal_semaphores(&sems).push_next(&mut timeline);
        // SAFETY: the queue is held; the command buffer is recorded; the value increases.
        unsafe { d.queue_submit(*queue, &[submit], vk::Fence::null()) }.map_err(vk_err("vkQueueSubmit"))?;
        Ok(value)
    }

    /// Frees what aborted jobs and sync-file exports left once the device is done with it.
    fn reap(&self, e: &Engine) {
        let mut zombies = lock(&e.zombies);
        let mut retired = lock(&e.retired);
        if zombies.is_empty() && retired.is_empty() {
            return;
        }
        // SAFETY: a live semaphore of this device.
        let Ok(done) = (unsafe { self.device.get_semaphore_counter_value(e.timeline) }) else { return };
        retired.retain(|&(mark, sem)| {
            let keep = mark > done;
            if !keep {
                // SAFETY: the batch that signalled it has run (the timeline passed its mark).
                unsafe { self.device.destroy_semaphore(sem, None) };
            }
            keep
        });
        drop(retired);
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *zombies).into_iter().partition(|z| z.0 <= done);
        *zombies = keep;
        drop(zombies);
        for (_, rec, owned, _keep) in ready {
            self.free(owned);
            lock(&e.idle).push(rec);
        }
    }

    /// Destroys per-job objects.
    pub fn free(&self, owned: Vec<Owned>) {
        // On a device taken for lost a job may still run (one that never ends): what it uses
        // stays (see Drop).
        if !self.is_lost() {
            free_owned(&self.device, owned);
        }
    }
}

/// An engine's completion thread: rounds of [`Gpu::complete_round`] while its device lives
/// (it holds the device only during a round, so the device can go; what is still pending
/// then was failed by the device's loss or ends with it).
fn completer(gpu: &Weak<Gpu>, engine: usize) {
    while let Some(g) = gpu.upgrade() {
        g.complete_round(engine);
    }
}

/// Destroys per-job objects the device is done with.
fn free_owned(device: &ash::Device, owned: Vec<Owned>) {
    for o in owned {
        match o {
            Owned::Buffer(b, m) => {
                // SAFETY: the job that used them has completed.
                unsafe {
                    device.destroy_buffer(b, None);
                    if let Some(m) = m {
                        device.free_memory(m, None);
                    }
                }
            }
            Owned::Staged { buffer, memory, .. } => {
                // SAFETY: as above; freeing the memory unmaps it.
                unsafe {
                    device.destroy_buffer(buffer, None);
                    device.free_memory(memory, None);
                }
            }
        }
    }
}

impl Engine {
    pub(super) fn new(device: &ash::Device, family: u32) -> Result<Engine, DriverError> {
        let mut kind =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE).initial_value(0);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut kind);
        // SAFETY: valid create info; the queue family was created with one queue.
        let (timeline, queue) = unsafe {
            (
                device.create_semaphore(&info, None).map_err(vk_err("vkCreateSemaphore"))?,
                device.get_device_queue(family, 0),
            )
        };
        Ok(Engine {
            family,
            queue: Mutex::new(queue),
            timeline,
            next: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            zombies: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            more: Condvar::new(),
            completer: OnceLock::new(),
        })
    }

    pub(super) fn destroy(self, device: &ash::Device) {
        // SAFETY: the device is idle (callers wait first).
        unsafe {
            for r in lock(&self.idle).drain(..) {
                r.destroy(device);
            }
            for (_, r, owned, _keep) in lock(&self.zombies).drain(..) {
                r.destroy(device);
                free_owned(device, owned);
            }
            for (_, sem) in lock(&self.retired).drain(..) {
                device.destroy_semaphore(sem, None);
            }
            device.destroy_semaphore(self.timeline, None);
        }
    }
}

impl Recorder {
    fn new(device: &ash::Device, family: u32) -> Result<Recorder, DriverError> {
        let info = vk::CommandPoolCreateInfo::default().queue_family_index(family);
        let sizes =
            [vk::DescriptorPoolSize { ty: vk::DescriptorType::STORAGE_BUFFER, descriptor_count: BUFFERS_PER_JOB }];
        let dp = vk::DescriptorPoolCreateInfo::default().max_sets(SETS_PER_JOB).pool_sizes(&sizes);
        // SAFETY: valid create infos.
        unsafe {
            let pool = device.create_command_pool(&info, None).map_err(vk_err("vkCreateCommandPool"))?;
            let alloc = vk::CommandBufferAllocateInfo::default().command_pool(pool).command_buffer_count(1);
            let cmd = match device.allocate_command_buffers(&alloc) {
                Ok(c) => c[0],
                Err(r) => {
                    device.destroy_command_pool(pool, None);
                    return Err(vk_err("vkAllocateCommandBuffers")(r));
                }
            };
            let descriptors = match device.create_descriptor_pool(&dp, None) {
                Ok(d) => d,
                Err(r) => {
                    device.destroy_command_pool(pool, None);
                    return Err(vk_err("vkCreateDescriptorPool")(r));
                }
            };
            Ok(Recorder { pool, cmd, descriptors })
        }
    }

    /// Allocates a descriptor set of `layout` from this job's pool.
    pub fn descriptor_set(
        &self,
        d: &ash::Device,
        layout: vk::DescriptorSetLayout,
    ) -> Result<vk::DescriptorSet, DriverError> {
        let layouts = [layout];
        let info = vk::DescriptorSetAllocateInfo::default().descriptor_pool(self.descriptors).set_layouts(&layouts);
        // SAFETY: the pool is this job's; the layout is live.
        unsafe { d.allocate_descriptor_sets(&info) }.map(|s| s[0]).map_err(vk_err("vkAllocateDescriptorSets"))
    }

    /// # Safety
    /// The device is done with the recorder.
    unsafe fn destroy(self, device: &ash::Device) {
        // SAFETY: per the contract.
        unsafe {
            device.destroy_descriptor_pool(self.descriptors, None);
            device.destroy_command_pool(self.pool, None);
        }
    }
}
