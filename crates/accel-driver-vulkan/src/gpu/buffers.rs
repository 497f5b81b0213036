//! Buffers over device memory: new allocations, other runtimes' opaque descriptors, and
//! host memory imported in place.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use accel_hal::driver::DriverError;
use accel_uapi::Errno;
use ash::vk;

use super::{vk_err, Gpu, Owned};

impl Gpu {
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

/// Every buffer can be a storage buffer and a transfer source and destination.
pub fn buffer_usage() -> vk::BufferUsageFlags {
    vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST
}
