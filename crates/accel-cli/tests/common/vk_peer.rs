//! Another Vulkan instance on the daemon's physical device, in the test process: it
//! allocates device-local memory, exports it as an opaque descriptor
//! (`VK_KHR_external_memory_fd`), and fills and reads it with its own commands — what a
//! Vulkan application sharing memory with accel does.

use std::os::fd::{FromRawFd, OwnedFd};

use ash::vk;

/// One exportable allocation of a Vulkan instance of its own, with the means to fill and
/// read it.
pub struct Peer {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    queue: vk::Queue,
    pool: vk::CommandPool,
    fence: vk::Fence,
    fd_ext: ash::khr::external_memory_fd::Device,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    staging: vk::Buffer,
    staging_memory: vk::DeviceMemory,
    mapped: *const u32,
}

const USAGE: vk::BufferUsageFlags = vk::BufferUsageFlags::from_raw(
    vk::BufferUsageFlags::STORAGE_BUFFER.as_raw()
        | vk::BufferUsageFlags::TRANSFER_SRC.as_raw()
        | vk::BufferUsageFlags::TRANSFER_DST.as_raw(),
);

/// Whether physical device 0 says it exports binary semaphores as sync files
/// (`VK_KHR_external_semaphore_fd` listed and `SYNC_FD` exportable), asked of Vulkan here,
/// apart from the daemon. (Not on Mesa's lavapipe; not where the kernel has no sync files,
/// as under gVisor, where NVIDIA's driver says no.)
pub fn exports_sync_files() -> bool {
    // SAFETY: the system's loader; the instance is destroyed before returning.
    unsafe {
        let Ok(entry) = ash::Entry::load() else { return false };
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_2);
        let Ok(instance) = entry.create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None)
        else {
            return false;
        };
        let phys = instance.enumerate_physical_devices().unwrap_or_default().first().copied();
        let can = phys.is_some_and(|phys| {
            let name = ash::khr::external_semaphore_fd::NAME;
            let listed = instance
                .enumerate_device_extension_properties(phys)
                .is_ok_and(|exts| exts.iter().any(|e| e.extension_name_as_c_str() == Ok(name)));
            let info = vk::PhysicalDeviceExternalSemaphoreInfo::default()
                .handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
            let mut props = vk::ExternalSemaphoreProperties::default();
            instance.get_physical_device_external_semaphore_properties(phys, &info, &mut props);
            listed && props.external_semaphore_features.contains(vk::ExternalSemaphoreFeatureFlags::EXPORTABLE)
        });
        instance.destroy_instance(None);
        can
    }
}

impl Peer {
    /// `size` bytes of exportable memory on physical device 0, in its first device-local
    /// memory type (the one accel's `vram` uses), or `None` where the device cannot export
    /// opaque descriptors.
    pub fn new(size: u64) -> Option<Peer> {
        // SAFETY: the system's loader, as the daemon loads it; every object made below is
        // destroyed in Drop, children first.
        unsafe {
            let entry = ash::Entry::load().ok()?;
            let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_2);
            let instance =
                entry.create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None).ok()?;
            let phys = instance.enumerate_physical_devices().ok()?[0];
            let exts = instance.enumerate_device_extension_properties(phys).ok()?;
            let name = ash::khr::external_memory_fd::NAME;
            if !exts.iter().any(|e| e.extension_name_as_c_str() == Ok(name)) {
                instance.destroy_instance(None);
                return None;
            }
            let family = instance
                .get_physical_device_queue_family_properties(phys)
                .iter()
                .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))? as u32;
            let priorities = [1.0f32];
            let queues =
                [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities)];
            let names = [name.as_ptr()];
            let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues).enabled_extension_names(&names);
            let device = instance.create_device(phys, &info, None).unwrap();
            let queue = device.get_device_queue(family, 0);
            let pool = device
                .create_command_pool(&vk::CommandPoolCreateInfo::default().queue_family_index(family), None)
                .unwrap();
            let fence = device.create_fence(&vk::FenceCreateInfo::default(), None).unwrap();
            let fd_ext = ash::khr::external_memory_fd::Device::new(&instance, &device);
            let props = instance.get_physical_device_memory_properties(phys);
            let types = &props.memory_types[..props.memory_type_count as usize];
            let find = |want| types.iter().position(|t| t.property_flags.contains(want)).unwrap() as u32;
            let handle = vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD;
            let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle);
            let info = vk::BufferCreateInfo::default().size(size).usage(USAGE).push_next(&mut external);
            let buffer = device.create_buffer(&info, None).unwrap();
            let mut export = vk::ExportMemoryAllocateInfo::default().handle_types(handle);
            let alloc = vk::MemoryAllocateInfo::default()
                .allocation_size(device.get_buffer_memory_requirements(buffer).size)
                .memory_type_index(find(vk::MemoryPropertyFlags::DEVICE_LOCAL))
                .push_next(&mut export);
            let memory = device.allocate_memory(&alloc, None).unwrap();
            device.bind_buffer_memory(buffer, memory, 0).unwrap();
            let info = vk::BufferCreateInfo::default().size(4).usage(vk::BufferUsageFlags::TRANSFER_DST);
            let staging = device.create_buffer(&info, None).unwrap();
            let host = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
            let alloc = vk::MemoryAllocateInfo::default()
                .allocation_size(device.get_buffer_memory_requirements(staging).size)
                .memory_type_index(find(host));
            let staging_memory = device.allocate_memory(&alloc, None).unwrap();
            device.bind_buffer_memory(staging, staging_memory, 0).unwrap();
            let mapped = device.map_memory(staging_memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()).unwrap();
            Some(Peer {
                _entry: entry,
                instance,
                device,
                queue,
                pool,
                fence,
                fd_ext,
                buffer,
                memory,
                staging,
                staging_memory,
                mapped: mapped.cast(),
            })
        }
    }

    /// A new opaque descriptor of the memory.
    pub fn export(&self) -> OwnedFd {
        let info = vk::MemoryGetFdInfoKHR::default()
            .memory(self.memory)
            .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        // SAFETY: the memory was allocated exportable as an opaque descriptor.
        unsafe { OwnedFd::from_raw_fd(self.fd_ext.get_memory_fd(&info).unwrap()) }
    }

    /// Records commands with `record`, submits them and waits for them.
    fn run(&self, record: impl FnOnce(&ash::Device, vk::CommandBuffer)) {
        // SAFETY: one command buffer at a time, waited for before it is freed.
        unsafe {
            let info = vk::CommandBufferAllocateInfo::default().command_pool(self.pool).command_buffer_count(1);
            let cmd = self.device.allocate_command_buffers(&info).unwrap()[0];
            self.device.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default()).unwrap();
            record(&self.device, cmd);
            let barrier = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ | vk::AccessFlags::MEMORY_READ);
            self.device.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST | vk::PipelineStageFlags::ALL_COMMANDS,
                vk::DependencyFlags::empty(),
                &[barrier],
                &[],
                &[],
            );
            self.device.end_command_buffer(cmd).unwrap();
            let cmds = [cmd];
            let submit = vk::SubmitInfo::default().command_buffers(&cmds);
            self.device.queue_submit(self.queue, &[submit], self.fence).unwrap();
            self.device.wait_for_fences(&[self.fence], true, u64::MAX).unwrap();
            self.device.reset_fences(&[self.fence]).unwrap();
            self.device.free_command_buffers(self.pool, &cmds);
        }
    }

    /// Fills `len` bytes at `offset` with `word`.
    pub fn fill(&self, offset: u64, len: u64, word: u32) {
        // SAFETY: recording into a live command buffer; the range is in the buffer.
        self.run(|d, cmd| unsafe { d.cmd_fill_buffer(cmd, self.buffer, offset, len, word) });
    }

    /// The word at `offset`, as the device has it.
    pub fn read(&self, offset: u64) -> u32 {
        let region = vk::BufferCopy { src_offset: offset, dst_offset: 0, size: 4 };
        // SAFETY: as above.
        self.run(|d, cmd| unsafe { d.cmd_copy_buffer(cmd, self.buffer, self.staging, &[region]) });
        // SAFETY: a coherent mapping of 4 bytes at least, written by the copy waited for.
        unsafe { self.mapped.read_volatile() }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: the device is idle (every submission was waited for).
        unsafe {
            self.device.unmap_memory(self.staging_memory);
            self.device.destroy_buffer(self.staging, None);
            self.device.free_memory(self.staging_memory, None);
            self.device.destroy_buffer(self.buffer, None);
            self.device.free_memory(self.memory, None);
            self.device.destroy_fence(self.fence, None);
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}
