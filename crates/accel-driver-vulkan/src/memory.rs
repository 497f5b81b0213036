//! Memory: device-local buffers (the `vram` region), host-visible ones clients map (the
//! `visible` region, where the device's exports map), and how a job's operands become
//! Vulkan buffers — device memory as it is, host memory (memfds) imported in place through
//! `VK_EXT_external_memory_host`, or staged through host-visible memory where the device
//! cannot import it.

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use accel_hal::bo::BoRange;
use accel_hal::driver::{DeviceMemory, DriverError};
use accel_uapi::Errno;
use ash::vk;
use rustix::fs::SealFlags;

use crate::gpu::{vk_err, Gpu, Owned};

/// Where a driver allocation lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Device-local memory (`vram`).
    Vram,
    /// Host-visible, coherent memory that clients map (`visible`).
    Visible,
}

/// A device allocation: one buffer over all of it.
pub struct VkMem {
    gpu: Arc<Gpu>,
    /// The buffer jobs bind.
    pub buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    len: u64,
    /// Bytes of the buffer: `len` rounded up to whole 32-bit words for the driver's own
    /// allocations (Vulkan fills, and 16-bit GEMM operands are read, by the word).
    size: u64,
    exportable: bool,
    place: Place,
    /// `visible` memory: where it starts in its export's file (lavapipe's memfds begin with a
    /// header of the driver's own).
    map_offset: u64,
}

impl std::fmt::Debug for VkMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VkMem").field("len", &self.len).finish()
    }
}

impl VkMem {
    /// Allocates `len` bytes of device-local memory (exportable where the device has
    /// `VK_KHR_external_memory_fd`).
    pub fn new(gpu: &Arc<Gpu>, len: u64) -> Result<Arc<VkMem>, DriverError> {
        VkMem::new_in(gpu, len, Place::Vram)
    }

    /// Allocates `len` bytes in `place` (exportable where the device has
    /// `VK_KHR_external_memory_fd`: clients map `visible` memory through its export).
    pub fn new_in(gpu: &Arc<Gpu>, len: u64, place: Place) -> Result<Arc<VkMem>, DriverError> {
        if len > gpu.props.max_alloc {
            return Err(DriverError::new(
                Errno::ENOMEM,
                format!("vulkan: {len} bytes exceed the device's largest allocation ({})", gpu.props.max_alloc),
            ));
        }
        let exportable = gpu.memory_fd.is_some();
        let size = len.max(4).next_multiple_of(4);
        let memory_type = match place {
            Place::Vram => gpu.device_type,
            Place::Visible => gpu.visible_type,
        };
        let (buffer, memory) = gpu.buffer(size, memory_type, exportable)?;
        let mut mem = VkMem { gpu: gpu.clone(), buffer, memory, len, size, exportable, place, map_offset: 0 };
        if place == Place::Visible {
            mem.map_offset = mem.offset_in_export()?;
        }
        Ok(Arc::new(mem))
    }
}

/// How a device imports other runtimes' opaque descriptors (`VK_KHR_external_memory_fd`).
#[derive(Debug, Clone, Copy)]
pub struct OpaqueImport {
    /// The import must be a dedicated allocation of its buffer.
    pub dedicated: bool,
    /// The driver closes the descriptor of a failed import too. The spec leaves it the
    /// caller's, and closing it again would close whatever descriptor took its number in
    /// between; lavapipe closes it.
    pub closes_on_failure: bool,
}

impl OpaqueImport {
    /// Whether buffers of a physical device can be imported from opaque descriptors, and how.
    pub fn query(
        instance: &ash::Instance,
        phys: vk::PhysicalDevice,
        memory_fd: bool,
        driver: vk::DriverId,
    ) -> Option<OpaqueImport> {
        if !memory_fd {
            return None;
        }
        let info = vk::PhysicalDeviceExternalBufferInfo::default()
            .usage(crate::gpu::buffer_usage())
            .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        let mut props = vk::ExternalBufferProperties::default();
        // SAFETY: `phys` came from `instance` (Vulkan 1.1 core, which the driver requires).
        unsafe { instance.get_physical_device_external_buffer_properties(phys, &info, &mut props) };
        let features = props.external_memory_properties.external_memory_features;
        features.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE).then_some(OpaqueImport {
            dedicated: features.contains(vk::ExternalMemoryFeatureFlags::DEDICATED_ONLY),
            closes_on_failure: driver == vk::DriverId::MESA_LLVMPIPE,
        })
    }
}

impl VkMem {
    /// Imports `size` bytes of memory another runtime exported as an opaque descriptor. A
    /// descriptor that is a memfd (lavapipe's memory) is sealed against shrinking first: its
    /// exporter could otherwise truncate it under the daemon's mapping.
    pub fn import(gpu: &Arc<Gpu>, fd: OwnedFd, size: u64) -> Result<Arc<VkMem>, DriverError> {
        if size > gpu.props.max_alloc {
            return Err(DriverError::new(
                Errno::EINVAL,
                format!("vulkan: {size} bytes exceed the device's largest allocation ({})", gpu.props.max_alloc),
            ));
        }
        let st = rustix::fs::fstat(&fd).map_err(|e| DriverError::new(Errno::EBADF, format!("vulkan: fstat: {e}")))?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        // Drivers tell a stranger descriptor from a short export badly (NVIDIA's says "out of
        // device memory" for a memfd): one of another kind than this device's own exports
        // is refused here.
        if let Some(own) = *gpu.export_kind.get_or_init(|| VkMem::export_kind(gpu)) {
            if kind != own {
                return Err(DriverError::new(
                    Errno::EINVAL,
                    format!("vulkan: not memory of this device exported as an opaque descriptor (a {kind:?}; its exports are a {own:?})"),
                ));
            }
        }
        let file = kind == rustix::fs::FileType::RegularFile;
        if file && (st.st_size as u64) < size {
            return Err(DriverError::new(
                Errno::EINVAL,
                format!("vulkan: the descriptor's file has {} bytes, fewer than {size}", st.st_size),
            ));
        }
        seal_shrinking(&fd)?;
        let (buffer, memory) = gpu.import_opaque(fd, size)?;
        let place = Place::Vram;
        Ok(Arc::new(VkMem {
            gpu: gpu.clone(),
            buffer,
            memory,
            len: size,
            size,
            exportable: false,
            place,
            map_offset: 0,
        }))
    }

    /// The kind of file an opaque export of `gpu` is (from one of a small allocation), if
    /// it exports.
    fn export_kind(gpu: &Arc<Gpu>) -> Option<rustix::fs::FileType> {
        let probe = VkMem::new(gpu, 4096).ok()?;
        let fd = probe.export().ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        tracing::info!("vulkan: the device's opaque memory exports are {kind:?} files; imports of others are refused");
        Some(kind)
    }
}

impl VkMem {
    /// Where this host-visible memory starts in its export's file: found from the device's
    /// own mapping of it (`vkMapMemory`) in `/proc/self/maps` where that maps the export's
    /// file itself (lavapipe's memfds), else 0 (a dma-buf, whose mapping is the memory).
    fn offset_in_export(&self) -> Result<u64, DriverError> {
        let fd = self.export()?;
        // SAFETY: host-visible memory of ours, not mapped elsewhere; unmapped below.
        let ptr = unsafe { self.gpu.device.map_memory(self.memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) }
            .map_err(vk_err("vkMapMemory"))?;
        let offset = file_offset(ptr as usize, &fd);
        // SAFETY: mapped just above.
        unsafe { self.gpu.device.unmap_memory(self.memory) };
        Ok(offset.unwrap_or(0))
    }
}

/// Where address `ptr` of this process lies in the file `fd` is open on, if
/// `/proc/self/maps` shows it inside a mapping of that very file (same device and inode).
fn file_offset(ptr: usize, fd: &OwnedFd) -> Option<u64> {
    let st = rustix::fs::fstat(fd).ok()?;
    let dev = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        // start-end perms offset major:minor inode [path]
        let mut fields = line.split_whitespace();
        let (range, _, offset, device, inode) =
            (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let (start, end) = range.split_once('-')?;
        let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
        let (major, minor) = device.split_once(':')?;
        let same = inode.parse::<u64>().ok()? == st.st_ino as u64
            && (u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?) == dev;
        if !same || !(start..end).contains(&ptr) {
            return None;
        }
        u64::from_str_radix(offset, 16).ok().map(|o| o + (ptr - start) as u64)
    })
}

/// Whether clients can map `visible` memory of `gpu`: its export (at the offset found) maps
/// the memory itself. Tried on a page: a word written through such a mapping must be what
/// the device's own mapping of the memory (`vkMapMemory`) reads. Lavapipe's memfds map (past
/// their header); NVIDIA's opaque descriptors are not memory files, and are not tried.
pub fn visible_maps(gpu: &Arc<Gpu>) -> bool {
    if gpu.memory_fd.is_none() {
        return false;
    }
    let Ok(mem) = VkMem::new_in(gpu, 4096, Place::Visible) else { return false };
    let Ok((fd, offset)) = mem.map_fd() else { return false };
    // Only files that map memory are tried: a memfd, a dma-buf. Another runtime's special
    // file (NVIDIA's descriptors are its device's) is not written through a mapping.
    let memory_file = rustix::fs::fstat(&fd)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile)
        || std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .is_ok_and(|target| target.to_string_lossy().contains("dmabuf"));
    if !memory_file {
        return false;
    }
    let Ok(mapping) = accel_uapi::shm::Mapping::new_at(&fd, 4096, offset) else { return false };
    let stamp = 0x7e57_ab1eu32;
    // SAFETY: word 7 of a page mapped above; the device's mapping of the same memory, read
    // while nothing else uses it, and unmapped at once.
    unsafe {
        mapping.as_ptr().cast::<u32>().add(7).write_volatile(stamp);
        let flags = vk::MemoryMapFlags::empty();
        let Ok(seen) = gpu.device.map_memory(mem.memory, 0, 4096, flags) else { return false };
        let seen = seen.cast::<u32>().add(7).read_volatile();
        gpu.device.unmap_memory(mem.memory);
        seen == stamp
    }
}

/// Seals a memfd against shrinking (a descriptor of another kind is left as it is): whoever
/// holds it can then not truncate memory the daemon or the device maps.
fn seal_shrinking(fd: &OwnedFd) -> Result<(), DriverError> {
    if let Ok(seals) = rustix::fs::fcntl_get_seals(fd) {
        if !seals.contains(SealFlags::SHRINK) {
            rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK).map_err(|e| {
                DriverError::new(Errno::EINVAL, format!("vulkan: the memfd cannot be sealed against shrinking: {e}"))
            })?;
        }
    }
    Ok(())
}

impl Drop for VkMem {
    fn drop(&mut self) {
        // Jobs hold their operands until they completed, so the device is done with it.
        self.gpu.free(vec![Owned::Buffer(self.buffer, Some(self.memory))]);
    }
}

impl DeviceMemory for VkMem {
    fn len(&self) -> u64 {
        self.len
    }

    fn zero(&self) -> Result<(), DriverError> {
        // The whole buffer: the last bytes of a length that is not whole words too.
        let (buffer, len) = (self.buffer, self.size);
        self.gpu.submit(
            0,
            &Default::default(),
            Box::new(()),
            |d, rec, _| {
                // SAFETY: recording into this job's command buffer; the buffer is live.
                unsafe { d.cmd_fill_buffer(rec.cmd, buffer, 0, len & !3, 0) };
                Ok(())
            },
            |_| {},
        )
    }

    fn export(&self) -> Result<OwnedFd, DriverError> {
        let ext = match (&self.gpu.memory_fd, self.exportable) {
            (Some(ext), true) => ext,
            _ => {
                return Err(DriverError::new(
                    Errno::EOPNOTSUPP,
                    "vulkan: the device has no VK_KHR_external_memory_fd; its memory cannot be exported",
                ))
            }
        };
        let info = vk::MemoryGetFdInfoKHR::default()
            .memory(self.memory)
            .handle_type(vk::ExternalMemoryHandleTypeFlags::OPAQUE_FD);
        // SAFETY: the memory was allocated exportable as an opaque fd.
        let fd = unsafe { ext.get_memory_fd(&info) }.map_err(vk_err("vkGetMemoryFdKHR"))?;
        // SAFETY: vkGetMemoryFdKHR hands ownership of a new descriptor to the caller.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Whoever imports it must not truncate memory the device maps (lavapipe's memfds).
        seal_shrinking(&fd)?;
        Ok(fd)
    }

    /// `visible` memory's export and where the memory starts in it: the client maps the
    /// memory itself, and cannot shrink it under the device (the export is sealed).
    fn map_fd(&self) -> Result<(OwnedFd, u64), DriverError> {
        if self.place != Place::Visible {
            return Err(DriverError::new(Errno::EINVAL, "vulkan: only visible memory is mapped by clients"));
        }
        Ok((self.export()?, self.map_offset))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A job operand as the device sees it.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The buffer.
    pub buffer: vk::Buffer,
    /// Byte offset of the operand in it.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Bytes of the whole buffer (a binding may reach past `len` up to it).
    pub size: u64,
}

/// Turns one job's operands into buffers: device memory as it is, host memory imported in
/// place or staged (copied in now, and out by the submission once the job succeeded:
/// [`Owned::Staged`]).
pub struct Binder<'a> {
    gpu: &'a Gpu,
    /// Buffers imported or staged for this job.
    pub owned: Vec<Owned>,
    imported: HashMap<usize, vk::Buffer>,
}

impl<'a> Binder<'a> {
    /// A binder for one job on `gpu`.
    pub fn new(gpu: &'a Gpu) -> Binder<'a> {
        Binder { gpu, owned: Vec::new(), imported: HashMap::new() }
    }

    /// The buffer, offset and length of `r`.
    pub fn bind(&mut self, r: &BoRange) -> Result<Bound, DriverError> {
        if let Some(mem) = r.bo.device() {
            let mem = mem
                .as_any()
                .downcast_ref::<VkMem>()
                .ok_or_else(|| DriverError::new(Errno::EINVAL, "vulkan: a buffer of another device's memory"))?;
            if !std::ptr::eq(Arc::as_ptr(&mem.gpu), self.gpu) {
                return Err(DriverError::new(
                    Errno::ENODEV,
                    "vulkan: the buffer's device memory was lost with the device (a device reset): allocate it again",
                ));
            }
            return Ok(Bound { buffer: mem.buffer, offset: r.offset as u64, len: r.len as u64, size: mem.size });
        }
        let host = r.bo.host().ok_or_else(|| DriverError::new(Errno::EINVAL, "vulkan: a buffer with no memory"))?;
        let (ptr, whole) = (host.as_ptr(), host.len() as u64);
        let align = self.gpu.props.host_import_align;
        if align > 0 && (ptr as u64).is_multiple_of(align) && whole.is_multiple_of(align) {
            if let Some(&buffer) = self.imported.get(&(ptr as usize)) {
                return Ok(Bound { buffer, offset: r.offset as u64, len: r.len as u64, size: whole });
            }
            // SAFETY: the job holds the buffer object (and so its mapping) until it completed,
            // and the imported memory is freed with the job.
            match unsafe { self.gpu.import_host(ptr, whole) } {
                Ok((buffer, memory)) => {
                    self.owned.push(Owned::Buffer(buffer, Some(memory)));
                    self.imported.insert(ptr as usize, buffer);
                    return Ok(Bound { buffer, offset: r.offset as u64, len: r.len as u64, size: whole });
                }
                Err(e) => tracing::debug!("host memory staged, not imported: {}", e.message),
            }
        }
        self.stage(r)
    }

    fn stage(&mut self, r: &BoRange) -> Result<Bound, DriverError> {
        tracing::trace!("staging {} bytes", r.len);
        let size = (r.len as u64).max(4).next_multiple_of(4);
        let (buffer, memory) = self.gpu.buffer(size, self.gpu.staging_type, false)?;
        // SAFETY: host-visible memory just allocated; freeing it unmaps it.
        let ptr = match unsafe { self.gpu.device.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) } {
            Ok(p) => p.cast::<u8>(),
            Err(r) => {
                self.owned.push(Owned::Buffer(buffer, Some(memory)));
                return Err(vk_err("vkMapMemory")(r));
            }
        };
        self.owned.push(Owned::Staged { buffer, memory, ptr, range: r.clone() });
        let src = r.host().ok_or(Errno::EINVAL)?;
        // SAFETY: the mapping is `size >= r.len` bytes and this job's alone.
        let dst = unsafe { accel_hal::mem::VolatileSlice::new(ptr, r.len) };
        src.copy_to(&dst);
        Ok(Bound { buffer, offset: 0, len: r.len as u64, size })
    }
}
