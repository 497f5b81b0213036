//! Native sync files: a job's completion as a kernel `sync_file`, through
//! `VK_KHR_external_semaphore_fd` — what a Vulkan application, a display (`IN_FENCE_FD`) or
//! another driver waits on without accel.
//!
//! A job signals its engine's timeline semaphore, and Vulkan exports timelines only as
//! opaque fds, never as sync files; so an export is one empty batch on the job's queue that
//! waits for the job's timeline value and signals a binary semaphore made exportable as
//! `SYNC_FD`, which is then exported (the kernel fence of that batch). The batch also
//! signals the timeline with a value of its own, so the driver knows when the semaphore may
//! be destroyed. A job that is done already gives `None` (Vulkan's `-1`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use accel_hal::driver::DriverError;
use accel_hal::lock;
use accel_uapi::Errno;
use ash::vk;

use crate::gpu::{vk_err, Gpu};

/// `VK_KHR_external_semaphore_fd` on one logical device.
pub struct SemaphoreFd {
    ext: ash::khr::external_semaphore_fd::Device,
}

impl SemaphoreFd {
    /// The extension's entry points on `device` (made with the extension enabled).
    pub fn new(instance: &ash::Instance, device: &ash::Device) -> SemaphoreFd {
        SemaphoreFd { ext: ash::khr::external_semaphore_fd::Device::new(instance, device) }
    }
}

/// Whether physical device `phys` exports binary semaphores as sync files (the extension
/// listed, and `SYNC_FD` exportable).
pub fn supported(instance: &ash::Instance, phys: vk::PhysicalDevice, listed: bool) -> bool {
    if !listed {
        return false;
    }
    let info =
        vk::PhysicalDeviceExternalSemaphoreInfo::default().handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
    let mut props = vk::ExternalSemaphoreProperties::default();
    // SAFETY: `phys` came from `instance` (Vulkan 1.1 core, which the driver requires).
    unsafe { instance.get_physical_device_external_semaphore_properties(phys, &info, &mut props) };
    props.external_semaphore_features.contains(vk::ExternalSemaphoreFeatureFlags::EXPORTABLE)
}

impl Gpu {
    /// A sync file that signals when `engine`'s timeline reaches `value` (a job's), or
    /// `None` when it has.
    pub fn export_sync_file(&self, engine: usize, value: u64) -> Result<Option<OwnedFd>, DriverError> {
        let ext = self.semaphore_fd.as_ref().ok_or_else(|| {
            DriverError::new(Errno::EOPNOTSUPP, "vulkan: this device has no VK_KHR_external_semaphore_fd")
        })?;
        if self.is_lost() {
            return Err(DriverError::new(
                Errno::EAGAIN,
                "vulkan: the device was lost; the job runs again on a new one: try again",
            ));
        }
        let e = &self.engines[engine];
        // SAFETY: a live semaphore of this device.
        let reached = unsafe { self.device.get_semaphore_counter_value(e.timeline) }
            .map_err(vk_err("vkGetSemaphoreCounterValue"))?;
        if reached >= value {
            return Ok(None);
        }
        let mut export =
            vk::ExportSemaphoreCreateInfo::default().handle_types(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut export);
        // SAFETY: valid create info.
        let binary = unsafe { self.device.create_semaphore(&info, None) }.map_err(vk_err("vkCreateSemaphore"))?;
        let submitted = {
            let queue = lock(&e.queue);
            let mark = e.next.fetch_add(1, Ordering::AcqRel) + 1;
            let (waits, wait_values, stages) = ([e.timeline], [value], [vk::PipelineStageFlags::ALL_COMMANDS]);
            let (signals, signal_values) = ([binary, e.timeline], [0, mark]);
            let mut timeline = vk::TimelineSemaphoreSubmitInfo::default()
                .wait_semaphore_values(&wait_values)
                .signal_semaphore_values(&signal_values);
            let submit = vk::SubmitInfo::default()
                .wait_semaphores(&waits)
                .wait_dst_stage_mask(&stages)
                .signal_semaphores(&signals)
                .push_next(&mut timeline);
            // SAFETY: the queue is held; the timeline value increases; `binary` is unsignalled
            // with no pending operation.
            unsafe { self.device.queue_submit(*queue, &[submit], vk::Fence::null()) }
                .map(|()| mark)
                .map_err(|r| self.note(vk_err("vkQueueSubmit (sync file)")(r)))
        };
        let mark = match submitted {
            Ok(mark) => mark,
            Err(err) => {
                // SAFETY: never submitted.
                unsafe { self.device.destroy_semaphore(binary, None) };
                return Err(err);
            }
        };
        let get = vk::SemaphoreGetFdInfoKHR::default()
            .semaphore(binary)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
        // SAFETY: `binary` has a signal operation pending, as a SYNC_FD export requires.
        let fd = unsafe { ext.ext.get_semaphore_fd(&get) };
        // Destroyed once the batch that signals it has run (the timeline passes `mark`).
        lock(&e.retired).push((mark, binary));
        match fd {
            // SAFETY: a new descriptor the call handed over.
            Ok(fd) if fd >= 0 => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
            Ok(_) => Ok(None),
            Err(r) => Err(self.note(vk_err("vkGetSemaphoreFdKHR (SYNC_FD)")(r))),
        }
    }
}
