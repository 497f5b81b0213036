//! One Vulkan device: instance, logical device, queues as engines, memory types; the
//! submission path in `engine` (a command buffer per job, completion through an engine's
//! timeline semaphore — the same semantics as a drm_syncobj timeline), buffers in `buffers`.

mod buffers;
mod engine;

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use ash::vk;

use crate::fault::{self, FaultQuery};
use crate::memory::OpaqueImport;
use crate::native::{self, SemaphoreFd};

pub use buffers::buffer_usage;
pub use engine::{Engine, Owned, Recorder, Submitted};

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
    /// The size of the heap of [`Gpu::visible_type`].
    pub visible_heap: u64,
    /// Storage-buffer binding offsets must be multiples of this.
    pub storage_align: u64,
    /// Imported host pointers and sizes must be multiples of this (0: no import).
    pub host_import_align: u64,
    /// Largest work-group count per dimension.
    pub max_groups: [u32; 3],
    /// Largest push-constant block.
    pub max_push: u32,
    /// Largest range one storage-buffer binding covers (`maxStorageBufferRange`).
    pub max_storage_range: u64,
    /// Largest single allocation.
    pub max_alloc: u64,
    /// `deviceUUID`, as text.
    pub uuid: String,
    /// Most invocations in one work group.
    pub max_invocations: u32,
    /// Widest work group (`maxComputeWorkGroupSize[0]`).
    pub max_group_width: u32,
}

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
    /// Memory type of the `visible` region: host-visible and coherent, device-local too
    /// where the device has such a type (a BAR), else [`Gpu::staging_type`].
    pub visible_type: u32,
    /// `VK_EXT_external_memory_host`, when the device has it.
    pub host_import: Option<ash::ext::external_memory_host::Device>,
    /// `VK_KHR_external_memory_fd`, when the device has it.
    pub memory_fd: Option<ash::khr::external_memory_fd::Device>,
    /// How the device imports other runtimes' opaque descriptors, where it can.
    pub opaque_import: Option<OpaqueImport>,
    /// The kind of file the device's own opaque exports are (learned at the first import):
    /// those of another instance of its driver are the same kind.
    pub export_kind: std::sync::OnceLock<Option<rustix::fs::FileType>>,
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
                    visible_type: types.2,
                    host_import,
                    memory_fd,
                    opaque_import: ext.opaque_import,
                    export_kind: std::sync::OnceLock::new(),
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
    ) -> Result<(ash::Device, Props, Vec<u32>, (u32, u32, u32), Extensions), DriverError> {
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
        let coherent = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let staging_type =
            find(coherent).ok_or_else(|| no_vulkan("vulkan: no host-visible coherent memory type".into()))? as u32;
        let visible_type = find(coherent | vk::MemoryPropertyFlags::DEVICE_LOCAL).map_or(staging_type, |t| t as u32);
        let visible_heap = mem.memory_heaps[types[visible_type as usize].heap_index as usize].size;
        let heaps = mem.memory_heaps[..mem.memory_heap_count as usize]
            .iter()
            .map(|h| (h.size, h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL)))
            .collect();
        let memory_fd = has_ext(&exts, ash::khr::external_memory_fd::NAME);
        let ext = Extensions {
            // `ACCEL_VULKAN_HOST_IMPORT=0` stages every host operand instead (a driver whose
            // import misbehaves; the tests of the staged path).
            host_import: has_ext(&exts, ash::ext::external_memory_host::NAME)
                && std::env::var("ACCEL_VULKAN_HOST_IMPORT").map_or(true, |v| v.trim() != "0"),
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
            max_storage_range: u64::from(p.limits.max_storage_buffer_range),
            max_alloc,
            uuid,
            max_invocations: p.limits.max_compute_work_group_invocations,
            max_group_width: p.limits.max_compute_work_group_size[0],
            visible_heap,
        };
        Ok((device, props, engine_families, (device_type, staging_type, visible_type), ext))
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

    /// Whether the device was lost (or taken for lost by a reset).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
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
