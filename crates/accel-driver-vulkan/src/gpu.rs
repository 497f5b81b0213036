//! One Vulkan device: instance, logical device, queues as engines, memory types, and the
//! submission path (a command buffer per job, completion through an engine's timeline
//! semaphore — the same semantics as a drm_syncobj timeline).

use std::ffi::CStr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use accel_hal::driver::{AbortToken, DriverError};
use accel_hal::lock;
use accel_uapi::Errno;
use ash::vk;

use crate::fault::{self, FaultQuery};
use crate::memory::OpaqueImport;
use crate::native::{self, SemaphoreFd};

/// A Vulkan call's failure as a driver error: `VK_ERROR_DEVICE_LOST` is device loss (the
/// core wedges the device), out-of-memory is `ENOMEM`, the rest `EIO`; the message names
/// the call and Vulkan's result.
pub fn vk_err(what: &str) -> impl Fn(vk::Result) -> DriverError + '_ {
    move |r| {
        let message = format!("vulkan: {what}: {r:?}");
        match r {
            vk::Result::ERROR_DEVICE_LOST => DriverError::device_lost(message),
            vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY => {
                DriverError::new(Errno::ENOMEM, message)
            }
            _ => DriverError::new(Errno::EIO, message),
        }
    }
}

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

/// What a physical device says about itself.
#[derive(Debug, Clone, Default)]
pub struct Props {
    /// `deviceName`.
    pub name: String,
    /// PCI vendor id.
    pub vendor_id: u32,
    /// `driverName` (`llvmpipe`, `NVIDIA`, ...).
    pub driver_name: String,
    /// `driverInfo` (the driver's version string).
    pub driver_info: String,
    /// Vulkan API version the device supports, as `major.minor.patch`.
    pub api_version: String,
    /// Memory heaps: size and whether device-local.
    pub heaps: Vec<(u64, bool)>,
    /// Storage-buffer binding offsets must be multiples of this.
    pub storage_align: u64,
    /// Imported host pointers and sizes must be multiples of this (0: no import).
    pub host_import_align: u64,
    /// Largest work-group count per dimension.
    pub max_groups: [u32; 3],
    /// Largest push-constant block.
    pub max_push: u32,
    /// Largest single allocation.
    pub max_alloc: u64,
    /// `deviceUUID`, as text.
    pub uuid: String,
    /// Whether the device is the CPU (`VK_PHYSICAL_DEVICE_TYPE_CPU`: lavapipe, SwiftShader).
    pub cpu: bool,
    /// Most invocations in one work group.
    pub max_invocations: u32,
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
}

/// Most descriptor sets (and storage buffers per set) a job binds.
const SETS_PER_JOB: u32 = 4;
const BUFFERS_PER_JOB: u32 = 64;

/// A Vulkan device and what the driver keeps of it.
pub struct Gpu {
    _entry: ash::Entry,
    instance: ash::Instance,
    /// The logical device.
    pub device: ash::Device,
    /// Properties and limits.
    pub props: Props,
    /// Engines: compute first, then a transfer-only queue when the device has one.
    pub engines: Vec<Engine>,
    /// Memory type for device-local buffers.
    pub device_type: u32,
    /// Memory type for staging (host-visible and coherent).
    pub staging_type: u32,
    /// `VK_EXT_external_memory_host`, when the device has it.
    pub host_import: Option<ash::ext::external_memory_host::Device>,
    /// `VK_KHR_external_memory_fd`, when the device has it.
    pub memory_fd: Option<ash::khr::external_memory_fd::Device>,
    /// How the device imports other runtimes' opaque descriptors, where it can.
    pub opaque_import: Option<OpaqueImport>,
    /// `VK_EXT_device_fault`, when the device has it: details of a loss.
    pub fault: Option<FaultQuery>,
    /// `VK_KHR_external_semaphore_fd` with `SYNC_FD` export, when the device has it.
    pub semaphore_fd: Option<SemaphoreFd>,
    /// Set once a call returned `VK_ERROR_DEVICE_LOST`.
    pub lost: AtomicBool,
}

// SAFETY: Vulkan handles are plain values; the objects that need external synchronisation
// (queues, command and descriptor pools) are each behind a mutex or owned by one job.
unsafe impl Send for Gpu {}
// SAFETY: as above.
unsafe impl Sync for Gpu {}

fn cstr(raw: &[std::ffi::c_char]) -> String {
    // SAFETY: Vulkan fills these fixed arrays with NUL-terminated strings.
    unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().into_owned()
}

fn version(v: u32) -> String {
    format!("{}.{}.{}", vk::api_version_major(v), vk::api_version_minor(v), vk::api_version_patch(v))
}

fn no_vulkan(message: String) -> DriverError {
    DriverError::new(Errno::ENODEV, message)
}

/// Loads the Vulkan loader (`libvulkan.so.1`) and makes an instance.
fn instance() -> Result<(ash::Entry, ash::Instance), DriverError> {
    // SAFETY: loading the system's Vulkan loader runs its initialisers, as any Vulkan
    // application does.
    let entry = unsafe { ash::Entry::load() }.map_err(|e| {
        no_vulkan(format!(
            "vulkan: no Vulkan loader ({e}); install libvulkan1 and a Vulkan driver (e.g. mesa-vulkan-drivers)"
        ))
    })?;
    let app = vk::ApplicationInfo::default()
        .application_name(c"accel")
        .engine_name(c"accel")
        .api_version(vk::API_VERSION_1_2);
    let info = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: the create info and what it points to outlive the call.
    let instance = unsafe { entry.create_instance(&info, None) }.map_err(vk_err("vkCreateInstance"))?;
    Ok((entry, instance))
}

/// How many Vulkan devices there are (`ENODEV` with the reason when there is no loader).
pub fn count() -> Result<usize, DriverError> {
    let (_entry, instance) = instance()?;
    // SAFETY: a live instance.
    let n = unsafe { instance.enumerate_physical_devices() }.map(|d| d.len());
    // SAFETY: nothing made from the instance is alive.
    unsafe { instance.destroy_instance(None) };
    n.map_err(vk_err("vkEnumeratePhysicalDevices"))
}

/// The optional device extensions a physical device has; each is enabled where it is.
#[derive(Debug, Clone, Copy)]
struct Extensions {
    /// `VK_EXT_external_memory_host`.
    host_import: bool,
    /// `VK_KHR_external_memory_fd`.
    memory_fd: bool,
    /// Buffers importable from opaque descriptors (with `memory_fd`).
    opaque_import: Option<OpaqueImport>,
    /// `VK_EXT_device_fault` with its `deviceFault` feature.
    fault: bool,
    /// `VK_KHR_external_semaphore_fd` with `SYNC_FD` export.
    sync_fd: bool,
}

fn has_ext(exts: &[vk::ExtensionProperties], name: &CStr) -> bool {
    exts.iter().any(|e| e.extension_name_as_c_str().is_ok_and(|n| n == name))
}

impl Gpu {
    /// Opens physical device `index`: one compute queue, one transfer-only queue where
    /// the device has such a family, timeline semaphores, and the external-memory
    /// extensions it offers.
    pub fn open(index: usize) -> Result<Gpu, DriverError> {
        let (entry, instance) = instance()?;
        let gpu = Self::open_on(&instance, index);
        match gpu {
            Ok((device, props, engines_families, types, ext)) => {
                let mut engines = Vec::new();
                for family in engines_families {
                    match Engine::new(&device, family) {
                        Ok(e) => engines.push(e),
                        Err(e) => {
                            for e in engines {
                                e.destroy(&device);
                            }
                            // SAFETY: the device and instance are idle and made here.
                            unsafe {
                                device.destroy_device(None);
                                instance.destroy_instance(None);
                            }
                            return Err(e);
                        }
                    }
                }
                let host_import =
                    ext.host_import.then(|| ash::ext::external_memory_host::Device::new(&instance, &device));
                let memory_fd = ext.memory_fd.then(|| ash::khr::external_memory_fd::Device::new(&instance, &device));
                let fault = ext.fault.then(|| FaultQuery::new(&instance, &device));
                let semaphore_fd = ext.sync_fd.then(|| SemaphoreFd::new(&instance, &device));
                Ok(Gpu {
                    _entry: entry,
                    instance,
                    device,
                    props,
                    engines,
                    device_type: types.0,
                    staging_type: types.1,
                    host_import,
                    memory_fd,
                    opaque_import: ext.opaque_import,
                    fault,
                    semaphore_fd,
                    lost: AtomicBool::new(false),
                })
            }
            Err(e) => {
                // SAFETY: nothing made from the instance is alive.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn open_on(
        instance: &ash::Instance,
        index: usize,
    ) -> Result<(ash::Device, Props, Vec<u32>, (u32, u32), Extensions), DriverError> {
        // SAFETY: a live instance.
        let physical =
            unsafe { instance.enumerate_physical_devices() }.map_err(vk_err("vkEnumeratePhysicalDevices"))?;
        let Some(&phys) = physical.get(index) else {
            return Err(no_vulkan(format!("vulkan: no device {index} ({} Vulkan devices here)", physical.len())));
        };
        // SAFETY: `phys` came from this instance; the out structures are chained correctly.
        let (p, driver, host_props, families, mem, exts) = unsafe {
            let mut driver = vk::PhysicalDeviceDriverProperties::default();
            let mut host_props = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
            let mut maint3 = vk::PhysicalDeviceMaintenance3Properties::default();
            let mut ids = vk::PhysicalDeviceIDProperties::default();
            let mut p2 = vk::PhysicalDeviceProperties2::default()
                .push_next(&mut driver)
                .push_next(&mut host_props)
                .push_next(&mut maint3)
                .push_next(&mut ids);
            instance.get_physical_device_properties2(phys, &mut p2);
            let p = p2.properties;
            let driver = (cstr(&driver.driver_name), cstr(&driver.driver_info), driver.driver_id);
            let host_align = host_props.min_imported_host_pointer_alignment;
            let max_alloc = maint3.max_memory_allocation_size;
            let u = ids.device_uuid;
            let uuid = format!(
                "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]
            );
            (
                (p, max_alloc, uuid),
                driver,
                host_align,
                instance.get_physical_device_queue_family_properties(phys),
                instance.get_physical_device_memory_properties(phys),
                instance
                    .enumerate_device_extension_properties(phys)
                    .map_err(vk_err("vkEnumerateDeviceExtensionProperties"))?,
            )
        };
        let (p, max_alloc, uuid) = p;
        if p.api_version < vk::API_VERSION_1_2 {
            return Err(no_vulkan(format!(
                "vulkan: {} supports Vulkan {}; accel needs 1.2 (timeline semaphores)",
                cstr(&p.device_name),
                version(p.api_version)
            )));
        }
        let compute = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or_else(|| no_vulkan(format!("vulkan: {} has no compute queue", cstr(&p.device_name))))?
            as u32;
        let transfer = families
            .iter()
            .position(|f| {
                f.queue_flags.contains(vk::QueueFlags::TRANSFER)
                    && !f.queue_flags.intersects(vk::QueueFlags::COMPUTE | vk::QueueFlags::GRAPHICS)
            })
            .map(|i| i as u32);
        let types = &mem.memory_types[..mem.memory_type_count as usize];
        let find = |want: vk::MemoryPropertyFlags| types.iter().position(|t| t.property_flags.contains(want));
        let device_type = find(vk::MemoryPropertyFlags::DEVICE_LOCAL)
            .ok_or_else(|| no_vulkan("vulkan: no device-local memory type".into()))? as u32;
        let staging_type = find(vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT)
            .ok_or_else(|| no_vulkan("vulkan: no host-visible coherent memory type".into()))?
            as u32;
        let heaps = mem.memory_heaps[..mem.memory_heap_count as usize]
            .iter()
            .map(|h| (h.size, h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL)))
            .collect();
        let memory_fd = has_ext(&exts, ash::khr::external_memory_fd::NAME);
        let ext = Extensions {
            host_import: has_ext(&exts, ash::ext::external_memory_host::NAME),
            memory_fd,
            opaque_import: OpaqueImport::query(instance, phys, memory_fd, driver.2),
            fault: fault::supported(instance, phys, has_ext(&exts, ash::ext::device_fault::NAME)),
            sync_fd: native::supported(instance, phys, has_ext(&exts, ash::khr::external_semaphore_fd::NAME)),
        };
        let enabled: Vec<_> = [
            (ext.sync_fd, ash::khr::external_semaphore_fd::NAME),
            (ext.fault, ash::ext::device_fault::NAME),
            (ext.host_import, ash::ext::external_memory_host::NAME),
            (ext.memory_fd, ash::khr::external_memory_fd::NAME),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.as_ptr())
        .collect();
        let priorities = [1.0f32];
        let mut queues =
            vec![vk::DeviceQueueCreateInfo::default().queue_family_index(compute).queue_priorities(&priorities)];
        let mut engine_families = vec![compute];
        if let Some(t) = transfer {
            queues.push(vk::DeviceQueueCreateInfo::default().queue_family_index(t).queue_priorities(&priorities));
            engine_families.push(t);
        }
        let mut v12 = vk::PhysicalDeviceVulkan12Features::default().timeline_semaphore(true);
        let mut fault_on = vk::PhysicalDeviceFaultFeaturesEXT::default().device_fault(true);
        let mut info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&enabled)
            .push_next(&mut v12);
        if ext.fault {
            info = info.push_next(&mut fault_on);
        }
        // SAFETY: `phys` came from this instance; the create info outlives the call.
        let device = unsafe { instance.create_device(phys, &info, None) }.map_err(vk_err("vkCreateDevice"))?;
        let props = Props {
            name: cstr(&p.device_name),
            vendor_id: p.vendor_id,
            driver_name: driver.0,
            driver_info: driver.1,
            api_version: version(p.api_version),
            heaps,
            storage_align: p.limits.min_storage_buffer_offset_alignment.max(4),
            host_import_align: if ext.host_import { host_props.max(1) } else { 0 },
            max_groups: p.limits.max_compute_work_group_count,
            max_push: p.limits.max_push_constants_size,
            max_alloc,
            uuid,
            cpu: p.device_type == vk::PhysicalDeviceType::CPU,
            max_invocations: p.limits.max_compute_work_group_invocations,
        };
        Ok((device, props, engine_families, (device_type, staging_type), ext))
    }

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
        // An aborted job (timeout, client gone) still waits a grace period: Vulkan cannot
        // take back submitted work, and what it uses must outlive it.
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
                        lock(&e.zombies).push((value, rec, owned, keep));
                        return Err(DriverError::device_lost("vulkan: the device was lost while the job ran"));
                    }
                    if !abort.is_aborted() {
                        continue;
                    }
                    let since = *aborted_at.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= ABORT_GRACE {
                        lock(&e.zombies).push((value, rec, owned, keep));
                        return Err(DriverError::new(Errno::ECANCELED, "vulkan: job aborted while the device ran it"));
                    }
                }
                Err(r) => {
                    lock(&e.zombies).push((value, rec, owned, keep));
                    return Err(self.note(vk_err("vkWaitSemaphores")(r)));
                }
            }
        }
        self.free(owned);
        lock(&e.idle).push(rec);
        if aborted_at.is_some() {
            return Err(DriverError::new(Errno::ECANCELED, "vulkan: job aborted"));
        }
        Ok(())
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

    /// Marks the device lost, as `VK_ERROR_DEVICE_LOST` does: every later submission fails.
    pub fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Marks the device lost when `e` says so; returns `e`.
    pub(crate) fn note(&self, e: DriverError) -> DriverError {
        if e.lost {
            self.lost.store(true, Ordering::Release);
        }
        e
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

    /// Whether the device was lost (or taken for lost by a reset).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// A buffer over `size` bytes of new memory of type `type_index` (exportable as an
    /// opaque fd when `export`), bound at offset 0.
    pub fn buffer(
        &self,
        size: u64,
        type_index: u32,
        export: bool,
    ) -> Result<(vk::Buffer, vk::DeviceMemory), DriverError> {
        let handle = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;
        let mut ext_buf = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle);
        let mut info = vk::BufferCreateInfo::default().size(size).usage(buffer_usage());
        if export {
            info = info.push_next(&mut ext_buf);
        }
        // SAFETY: valid create info.
        let buffer = unsafe { self.device.create_buffer(&info, None) }.map_err(vk_err("vkCreateBuffer"))?;
        // SAFETY: a buffer just made.
        let req = unsafe { self.device.get_buffer_memory_requirements(buffer) };
        let mut export_info = vk::ExportMemoryAllocateInfo::default().handle_types(handle);
        let mut alloc = vk::MemoryAllocateInfo::default().allocation_size(req.size).memory_type_index(type_index);
        if export {
            alloc = alloc.push_next(&mut export_info);
        }
        if req.memory_type_bits & (1 << type_index) == 0 {
            // SAFETY: unused buffer.
            unsafe { self.device.destroy_buffer(buffer, None) };
            return Err(DriverError::new(Errno::EIO, "vulkan: buffers cannot live in the chosen memory type"));
        }
        // SAFETY: valid allocate info.
        let memory = match unsafe { self.device.allocate_memory(&alloc, None) } {
            Ok(m) => m,
            Err(r) => {
                // SAFETY: unused buffer.
                unsafe { self.device.destroy_buffer(buffer, None) };
                return Err(self.note(vk_err("vkAllocateMemory")(r)));
            }
        };
        // SAFETY: fresh buffer and memory, large enough.
        if let Err(r) = unsafe { self.device.bind_buffer_memory(buffer, memory, 0) } {
            self.free(vec![Owned::Buffer(buffer, Some(memory))]);
            return Err(vk_err("vkBindBufferMemory")(r));
        }
        Ok((buffer, memory))
    }

    /// A buffer over memory another runtime exported as an opaque descriptor, `size` bytes
    /// as allocated there, imported into the device-local memory type
    /// (`VkImportMemoryFdInfoKHR`). The descriptor is the driver's once imported.
    pub fn import_opaque(&self, fd: OwnedFd, size: u64) -> Result<(vk::Buffer, vk::DeviceMemory), DriverError> {
        let how = self
            .opaque_import
            .ok_or_else(|| DriverError::new(Errno::EOPNOTSUPP, "vulkan: the device imports no opaque descriptors"))?;
        let handle = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;
        let mut ext_buf = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle);
        let info = vk::BufferCreateInfo::default().size(size).usage(buffer_usage()).push_next(&mut ext_buf);
        // SAFETY: valid create info.
        let buffer = unsafe { self.device.create_buffer(&info, None) }.map_err(vk_err("vkCreateBuffer"))?;
        // SAFETY: a buffer just made.
        let req = unsafe { self.device.get_buffer_memory_requirements(buffer) };
        let unusable = if req.memory_type_bits & (1 << self.device_type) == 0 {
            Some(DriverError::new(Errno::EIO, "vulkan: buffers cannot live in the device-local memory type"))
        } else if req.size > size {
            Some(DriverError::new(
                Errno::EINVAL,
                format!("vulkan: a buffer over {size} bytes needs {} bytes of memory here", req.size),
            ))
        } else {
            None
        };
        if let Some(e) = unusable {
            // SAFETY: unused buffer.
            unsafe { self.device.destroy_buffer(buffer, None) };
            return Err(e);
        }
        let raw = fd.into_raw_fd();
        let mut import = vk::ImportMemoryFdInfoKHR::default().handle_type(handle).fd(raw);
        let mut dedicated = vk::MemoryDedicatedAllocateInfo::default().buffer(buffer);
        let mut alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(size)
            .memory_type_index(self.device_type)
            .push_next(&mut import);
        if how.dedicated {
            alloc = alloc.push_next(&mut dedicated);
        }
        // SAFETY: valid allocate info; on success the descriptor is the implementation's.
        let memory = match unsafe { self.device.allocate_memory(&alloc, None) } {
            Ok(m) => m,
            Err(r) => {
                if !how.closes_on_failure {
                    // SAFETY: a failed import leaves the descriptor the caller's (the spec).
                    drop(unsafe { OwnedFd::from_raw_fd(raw) });
                }
                // SAFETY: unused buffer.
                unsafe { self.device.destroy_buffer(buffer, None) };
                let e = self.note(vk_err("vkAllocateMemory (opaque descriptor)")(r));
                return Err(match r {
                    vk::Result::ERROR_INVALID_EXTERNAL_HANDLE => DriverError::new(
                        Errno::EINVAL,
                        format!("{}: not memory of this device exported as an opaque descriptor", e.message),
                    ),
                    vk::Result::ERROR_OUT_OF_DEVICE_MEMORY => DriverError::new(
                        Errno::ENOMEM,
                        format!("{}: out of device memory, or the export is smaller than {size} bytes", e.message),
                    ),
                    _ => e,
                });
            }
        };
        // SAFETY: fresh buffer and memory, large enough.
        if let Err(r) = unsafe { self.device.bind_buffer_memory(buffer, memory, 0) } {
            self.free(vec![Owned::Buffer(buffer, Some(memory))]);
            return Err(vk_err("vkBindBufferMemory")(r));
        }
        Ok((buffer, memory))
    }

    /// A buffer over host memory at `ptr` (`len` bytes, both aligned to
    /// `host_import_align`), through `VK_EXT_external_memory_host`.
    ///
    /// # Safety
    /// `ptr..ptr + len` stays mapped until the buffer and memory are freed.
    pub unsafe fn import_host(&self, ptr: *mut u8, len: u64) -> Result<(vk::Buffer, vk::DeviceMemory), DriverError> {
        let ext = self.host_import.as_ref().ok_or_else(|| DriverError::new(Errno::EOPNOTSUPP, "no host import"))?;
        let kind = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        let mut host_props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: the caller keeps the pointer mapped.
        unsafe { (ext.fp().get_memory_host_pointer_properties_ext)(ext.device(), kind, ptr.cast(), &mut host_props) }
            .result()
            .map_err(vk_err("vkGetMemoryHostPointerPropertiesEXT"))?;
        let mut ext_buf = vk::ExternalMemoryBufferCreateInfo::default().handle_types(kind);
        let info = vk::BufferCreateInfo::default().size(len).usage(buffer_usage()).push_next(&mut ext_buf);
        // SAFETY: valid create info.
        let buffer = unsafe { self.device.create_buffer(&info, None) }.map_err(vk_err("vkCreateBuffer"))?;
        // SAFETY: a buffer just made.
        let req = unsafe { self.device.get_buffer_memory_requirements(buffer) };
        let bits = req.memory_type_bits & host_props.memory_type_bits;
        if bits == 0 || req.size > len {
            // SAFETY: unused buffer.
            unsafe { self.device.destroy_buffer(buffer, None) };
            return Err(DriverError::new(Errno::EOPNOTSUPP, "vulkan: host memory cannot back a buffer here"));
        }
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default().handle_type(kind).host_pointer(ptr.cast());
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(len)
            .memory_type_index(bits.trailing_zeros())
            .push_next(&mut import);
        // SAFETY: the caller keeps the pointer mapped for the memory's life.
        let memory = match unsafe { self.device.allocate_memory(&alloc, None) } {
            Ok(m) => m,
            Err(r) => {
                // SAFETY: unused buffer.
                unsafe { self.device.destroy_buffer(buffer, None) };
                return Err(vk_err("vkAllocateMemory (host pointer)")(r));
            }
        };
        // SAFETY: fresh buffer and memory, large enough.
        if let Err(r) = unsafe { self.device.bind_buffer_memory(buffer, memory, 0) } {
            self.free(vec![Owned::Buffer(buffer, Some(memory))]);
            return Err(vk_err("vkBindBufferMemory")(r));
        }
        Ok((buffer, memory))
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
        }
    }
}

/// Every buffer can be a storage buffer and a transfer source and destination.
pub fn buffer_usage() -> vk::BufferUsageFlags {
    vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST
}

impl Engine {
    fn new(device: &ash::Device, family: u32) -> Result<Engine, DriverError> {
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
        })
    }

    fn destroy(self, device: &ash::Device) {
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

impl Drop for Gpu {
    fn drop(&mut self) {
        if *self.lost.get_mut() {
            // A device taken for lost may still run a job that never ends (the reset after a
            // timeout): waiting for it would never return, and destroying it under running
            // work is undefined. It is left to the process's end.
            return;
        }
        // SAFETY: waiting for idle first; every object the driver made is destroyed before
        // its device, and the device before the instance.
        unsafe {
            let _ = self.device.device_wait_idle();
            for e in std::mem::take(&mut self.engines) {
                e.destroy(&self.device);
            }
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}
