//! Vulkan used directly, in one process, as the baseline of a launch's round trip through
//! accel (`accel bench vulkan`): the empty kernel ([`crate::NULL_SPIRV`]) dispatched as one
//! work group — record a command buffer, `vkQueueSubmit`, wait for its fence — on the same
//! physical device, with nothing of accel in between.

use std::ffi::CStr;

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use ash::vk;

use crate::gpu::vk_err;

/// A device, the empty kernel's pipeline and what one dispatch of it needs.
pub struct Direct {
    _entry: ash::Entry,
    instance: ash::Instance,
    /// Made in `build`; `None` only while it runs (Drop destroys whatever was made).
    device: Option<ash::Device>,
    queue: vk::Queue,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    set_layout: vk::DescriptorSetLayout,
    descriptors: vk::DescriptorPool,
    set: vk::DescriptorSet,
    layout: vk::PipelineLayout,
    module: vk::ShaderModule,
    pipeline: vk::Pipeline,
}

impl Direct {
    /// Opens physical device `index` (as `vulkan:N` numbers them) with one compute queue
    /// and builds the empty kernel's pipeline over a 4 KiB device-local buffer.
    pub fn new(index: usize) -> Result<Direct, DriverError> {
        // SAFETY: the system's loader, as the driver loads it.
        let entry = unsafe { ash::Entry::load() }
            .map_err(|e| DriverError::new(Errno::ENODEV, format!("vulkan: no Vulkan loader ({e})")))?;
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_2);
        // SAFETY: a valid create info.
        let instance =
            unsafe { entry.create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None) }
                .map_err(vk_err("vkCreateInstance"))?;
        // From here on, `Direct`'s Drop destroys whatever was made (null handles are no-ops).
        let mut d = Direct {
            _entry: entry,
            instance,
            device: None,
            queue: vk::Queue::null(),
            pool: vk::CommandPool::null(),
            cmd: vk::CommandBuffer::null(),
            fence: vk::Fence::null(),
            buffer: vk::Buffer::null(),
            memory: vk::DeviceMemory::null(),
            set_layout: vk::DescriptorSetLayout::null(),
            descriptors: vk::DescriptorPool::null(),
            set: vk::DescriptorSet::null(),
            layout: vk::PipelineLayout::null(),
            module: vk::ShaderModule::null(),
            pipeline: vk::Pipeline::null(),
        };
        d.build(index)?;
        Ok(d)
    }

    fn build(&mut self, index: usize) -> Result<(), DriverError> {
        // SAFETY: every call gets valid create infos and handles made here, in order.
        unsafe {
            let physical = self.instance.enumerate_physical_devices().map_err(vk_err("vkEnumeratePhysicalDevices"))?;
            let &phys = physical
                .get(index)
                .ok_or_else(|| DriverError::new(Errno::ENODEV, format!("vulkan: no device {index}")))?;
            let family =
                self.instance
                    .get_physical_device_queue_family_properties(phys)
                    .iter()
                    .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
                    .ok_or_else(|| DriverError::new(Errno::ENODEV, "vulkan: no compute queue"))? as u32;
            let priorities = [1.0f32];
            let queues =
                [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities)];
            let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues);
            let device = self.instance.create_device(phys, &info, None).map_err(vk_err("vkCreateDevice"))?;
            let device = self.device.insert(device);
            self.queue = device.get_device_queue(family, 0);
            let info = vk::CommandPoolCreateInfo::default()
                .queue_family_index(family)
                .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
            self.pool = device.create_command_pool(&info, None).map_err(vk_err("vkCreateCommandPool"))?;
            let info = vk::CommandBufferAllocateInfo::default().command_pool(self.pool).command_buffer_count(1);
            self.cmd = device.allocate_command_buffers(&info).map_err(vk_err("vkAllocateCommandBuffers"))?[0];
            self.fence = device.create_fence(&vk::FenceCreateInfo::default(), None).map_err(vk_err("vkCreateFence"))?;

            let info = vk::BufferCreateInfo::default().size(4096).usage(vk::BufferUsageFlags::STORAGE_BUFFER);
            self.buffer = device.create_buffer(&info, None).map_err(vk_err("vkCreateBuffer"))?;
            let req = device.get_buffer_memory_requirements(self.buffer);
            let props = self.instance.get_physical_device_memory_properties(phys);
            let type_index = (0..props.memory_type_count)
                .find(|&i| {
                    req.memory_type_bits & (1 << i) != 0
                        && props.memory_types[i as usize].property_flags.contains(vk::MemoryPropertyFlags::DEVICE_LOCAL)
                })
                .ok_or_else(|| DriverError::new(Errno::ENODEV, "vulkan: no device-local memory for a buffer"))?;
            let alloc = vk::MemoryAllocateInfo::default().allocation_size(req.size).memory_type_index(type_index);
            self.memory = device.allocate_memory(&alloc, None).map_err(vk_err("vkAllocateMemory"))?;
            device.bind_buffer_memory(self.buffer, self.memory, 0).map_err(vk_err("vkBindBufferMemory"))?;

            let bindings = [vk::DescriptorSetLayoutBinding::default()
                .binding(0)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)];
            let info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
            self.set_layout =
                device.create_descriptor_set_layout(&info, None).map_err(vk_err("vkCreateDescriptorSetLayout"))?;
            let sizes = [vk::DescriptorPoolSize { ty: vk::DescriptorType::STORAGE_BUFFER, descriptor_count: 1 }];
            let info = vk::DescriptorPoolCreateInfo::default().max_sets(1).pool_sizes(&sizes);
            self.descriptors = device.create_descriptor_pool(&info, None).map_err(vk_err("vkCreateDescriptorPool"))?;
            let layouts = [self.set_layout];
            let info = vk::DescriptorSetAllocateInfo::default().descriptor_pool(self.descriptors).set_layouts(&layouts);
            self.set = device.allocate_descriptor_sets(&info).map_err(vk_err("vkAllocateDescriptorSets"))?[0];
            let buffers = [vk::DescriptorBufferInfo { buffer: self.buffer, offset: 0, range: vk::WHOLE_SIZE }];
            let write = vk::WriteDescriptorSet::default()
                .dst_set(self.set)
                .dst_binding(0)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .buffer_info(&buffers);
            device.update_descriptor_sets(&[write], &[]);

            let info = vk::PipelineLayoutCreateInfo::default().set_layouts(&layouts);
            self.layout = device.create_pipeline_layout(&info, None).map_err(vk_err("vkCreatePipelineLayout"))?;
            let words: Vec<u32> =
                crate::NULL_SPIRV.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
            let info = vk::ShaderModuleCreateInfo::default().code(&words);
            self.module = device.create_shader_module(&info, None).map_err(vk_err("vkCreateShaderModule"))?;
            let name: &CStr = c"main";
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(self.module)
                .name(name);
            let info = [vk::ComputePipelineCreateInfo::default().stage(stage).layout(self.layout)];
            self.pipeline = device
                .create_compute_pipelines(vk::PipelineCache::null(), &info, None)
                .map_err(|(_, r)| vk_err("vkCreateComputePipelines")(r))?[0];
        }
        Ok(())
    }

    /// One dispatch of the empty kernel, submitted and waited for: the command buffer is
    /// recorded again each time, as the driver records each job's.
    pub fn launch_sync(&mut self) -> Result<(), DriverError> {
        let Some(d) = &self.device else { return Err(DriverError::new(Errno::ENODEV, "vulkan: no device")) };
        // SAFETY: the command buffer is idle (the previous submission was waited for);
        // every handle recorded is live.
        unsafe {
            d.reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty())
                .map_err(vk_err("vkResetCommandBuffer"))?;
            let begin = vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT);
            d.begin_command_buffer(self.cmd, &begin).map_err(vk_err("vkBeginCommandBuffer"))?;
            d.cmd_bind_pipeline(self.cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            d.cmd_bind_descriptor_sets(self.cmd, vk::PipelineBindPoint::COMPUTE, self.layout, 0, &[self.set], &[]);
            d.cmd_dispatch(self.cmd, 1, 1, 1);
            d.end_command_buffer(self.cmd).map_err(vk_err("vkEndCommandBuffer"))?;
            let cmds = [self.cmd];
            let submit = vk::SubmitInfo::default().command_buffers(&cmds);
            d.queue_submit(self.queue, &[submit], self.fence).map_err(vk_err("vkQueueSubmit"))?;
            d.wait_for_fences(&[self.fence], true, u64::MAX).map_err(vk_err("vkWaitForFences"))?;
            d.reset_fences(&[self.fence]).map_err(vk_err("vkResetFences"))
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: the device is idle (every submission was waited for); children go first,
        // and destroying a null handle does nothing.
        unsafe {
            if let Some(d) = &self.device {
                let _ = d.device_wait_idle();
                d.destroy_pipeline(self.pipeline, None);
                d.destroy_shader_module(self.module, None);
                d.destroy_pipeline_layout(self.layout, None);
                d.destroy_descriptor_pool(self.descriptors, None);
                d.destroy_descriptor_set_layout(self.set_layout, None);
                d.destroy_buffer(self.buffer, None);
                d.free_memory(self.memory, None);
                d.destroy_fence(self.fence, None);
                d.destroy_command_pool(self.pool, None);
                d.destroy_device(None);
            }
            self.instance.destroy_instance(None);
        }
    }
}
