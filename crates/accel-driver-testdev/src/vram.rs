//! The test device's own memory: daemon RAM the clients cannot map, handed out from a
//! pool of freed blocks first (so a block a client gets may hold another client's data
//! until the core's zeroing hook runs, as on real hardware). Blocks of the `opaque` region
//! export as a GPU runtime's do: descriptors that share one anonymous inode with every other
//! (NVIDIA's opaque Vulkan descriptors and CUDA's POSIX handles), known only as open files.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use accel_hal::bo::BoRange;
use accel_hal::driver::{DeviceMemory, DriverError};
use accel_hal::mem::{HostMemory, VolatileSlice};
use accel_uapi::Errno;

/// Capacity of the test device's `vram` region.
pub const VRAM_BYTES: u64 = 256 << 20;

/// Freed blocks by size, reused before new ones are made.
#[derive(Debug, Default)]
pub struct Pool {
    free: Mutex<HashMap<u64, Vec<Box<[u8]>>>>,
}

/// One block of `vram`.
pub struct VramBuf {
    block: Option<Box<[u8]>>,
    ptr: *mut u8,
    len: u64,
    pool: Weak<Pool>,
    /// What the block exports as (`opaque` blocks): an eventfd, an anonymous inode.
    handle: Option<std::os::fd::OwnedFd>,
}

// SAFETY: the block is owned by this value and only reached through raw pointers by jobs
// that hold the buffer; concurrent access is the clients' to order (like device memory).
unsafe impl Send for VramBuf {}
// SAFETY: as above.
unsafe impl Sync for VramBuf {}

impl std::fmt::Debug for VramBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VramBuf").field("len", &self.len).finish()
    }
}

impl Pool {
    /// A block of `len` bytes: a freed one if there is one (not zeroed), else a new one.
    pub fn alloc(self: &Arc<Self>, len: u64) -> Result<Arc<VramBuf>, DriverError> {
        self.alloc_with(len, None)
    }

    /// A block of `len` bytes that exports as an anonymous descriptor (the `opaque` region).
    pub fn alloc_opaque(self: &Arc<Self>, len: u64) -> Result<Arc<VramBuf>, DriverError> {
        let handle = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|e| DriverError::new(Errno::EMFILE, format!("eventfd: {e}")))?;
        self.alloc_with(len, Some(handle))
    }

    fn alloc_with(
        self: &Arc<Self>,
        len: u64,
        handle: Option<std::os::fd::OwnedFd>,
    ) -> Result<Arc<VramBuf>, DriverError> {
        let size = usize::try_from(len).map_err(|_| DriverError::new(Errno::ENOMEM, "block too large"))?;
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&len).and_then(Vec::pop);
        let mut block = reused.unwrap_or_else(|| vec![0u8; size].into_boxed_slice());
        let ptr = block.as_mut_ptr();
        Ok(Arc::new(VramBuf { block: Some(block), ptr, len, pool: Arc::downgrade(self), handle }))
    }
}

impl VramBuf {
    /// Start of the block.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for VramBuf {
    fn drop(&mut self) {
        if let (Some(block), Some(pool)) = (self.block.take(), self.pool.upgrade()) {
            pool.free.lock().unwrap_or_else(|e| e.into_inner()).entry(self.len).or_default().push(block);
        }
    }
}

impl DeviceMemory for VramBuf {
    fn len(&self) -> u64 {
        self.len
    }

    fn zero(&self) -> Result<(), DriverError> {
        // SAFETY: the block is `len` bytes and owned by self.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.len as usize) };
        Ok(())
    }

    fn export(&self) -> Result<std::os::fd::OwnedFd, DriverError> {
        match &self.handle {
            Some(h) => h.try_clone().map_err(|e| DriverError::new(Errno::EMFILE, format!("dup: {e}"))),
            None => Err(DriverError::new(Errno::EOPNOTSUPP, "this driver cannot export its memory")),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A block of the `shared` region: device memory other processes can import (emulated with
/// a sealed memfd the daemon maps; the driver exports its descriptor, as a real one exports a
/// dma-buf).
#[derive(Debug)]
pub struct SharedBuf(pub HostMemory);

impl DeviceMemory for SharedBuf {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn zero(&self) -> Result<(), DriverError> {
        // SAFETY: the mapping is len bytes and lives as long as self.
        unsafe { std::ptr::write_bytes(self.0.as_ptr(), 0, self.0.len()) };
        Ok(())
    }

    fn export(&self) -> Result<std::os::fd::OwnedFd, DriverError> {
        self.0.dup_fd().map_err(|e| DriverError::new(e.code, e.message))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A range of host memory or of `vram` as a bounds-checked view (bounds were checked by the
/// core; the view checks every access again).
pub fn view_of(r: &BoRange) -> Result<VolatileSlice<'_>, Errno> {
    if let Some(v) = r.host() {
        return Ok(v);
    }
    let mem = r.bo.device().ok_or(Errno::EINVAL)?;
    let whole = if let Some(vram) = mem.as_any().downcast_ref::<VramBuf>() {
        // SAFETY: the block is `len` bytes, alive while the range (which holds the buffer) is.
        unsafe { VolatileSlice::new(vram.ptr(), vram.len as usize) }
    } else {
        let shared = mem.as_any().downcast_ref::<SharedBuf>().ok_or(Errno::EINVAL)?;
        // SAFETY: as above, for the mapping.
        unsafe { VolatileSlice::new(shared.0.as_ptr(), shared.0.len()) }
    };
    whole.subslice(r.offset, r.len)
}
