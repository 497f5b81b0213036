//! Buffers: device memory mapped into this process.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use accel_uapi::shm::Mapping;
use accel_uapi::{BoHandle, BufView, Errno, MatView, Reply, Request};

use crate::{conn, Error, Result, Shared};

/// A buffer object, mapped read-write into this process.
///
/// The memory is shared with the device (and with any client that imported it),
/// so access goes through copies ([`Buffer::read`], [`Buffer::write`]) rather than
/// Rust references, which would promise an exclusivity shared memory cannot give.
///
/// A buffer in a device region clients cannot map ([`crate::Device::alloc_in`]) has no
/// mapping: reach it with `Copy` jobs to and from host buffers.
pub struct Buffer {
    dev: Arc<Shared>,
    handle: BoHandle,
    map: Option<Mapping>,
    size: u64,
    region: u32,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("handle", &self.handle)
            .field("size", &self.size)
            .field("region", &self.region)
            .finish()
    }
}

impl Buffer {
    pub(crate) fn map(dev: Arc<Shared>, handle: BoHandle, size: u64, region: u32) -> Result<Buffer> {
        // Host memory starts at its memfd's first byte (`BoMmap`, which every daemon of ABI 3
        // answers); a driver's mappable memory may start further in (`BoMapping`, ABI 3.5).
        let got = if region == 0 {
            dev.call_for_fd(&Request::BoMmap { handle }).map(|fd| (fd, 0))
        } else {
            match dev.call_fd(&Request::BoMapping { handle }, None) {
                Ok((Reply::Mapping { offset }, mut fds)) if fds.len() == 1 => Ok((fds.remove(0), offset)),
                Ok((other, _)) => Err(conn::unexpected(&other)),
                Err(e) => Err(e),
            }
        };
        let (fd, offset) = match got {
            Ok(got) => got,
            Err(e) => {
                dev.release(&Request::BoClose { handle });
                return Err(e);
            }
        };
        let len =
            usize::try_from(size).map_err(|_| Error::new(Errno::EOVERFLOW, "buffer larger than address space"))?;
        // The daemon seals buffer memfds against shrinking, and drivers hand out memory
        // clients cannot shrink, so the mapping stays valid.
        match Mapping::new_at(&fd, len, offset) {
            Ok(map) => Ok(Buffer { dev, handle, map: Some(map), size, region }),
            Err(e) => {
                dev.release(&Request::BoClose { handle });
                Err(Error::os("mmap of buffer", e))
            }
        }
    }

    /// A buffer in a region clients cannot map.
    pub(crate) fn unmapped(dev: Arc<Shared>, handle: BoHandle, size: u64, region: u32) -> Buffer {
        Buffer { dev, handle, map: None, size, region }
    }

    /// The memory region the buffer is in (0: host).
    pub fn region(&self) -> u32 {
        self.region
    }

    /// Whether the buffer is mapped into this process (host memory).
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// The daemon's handle for this buffer.
    pub fn handle(&self) -> BoHandle {
        self.handle
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A byte range, for use in job operands.
    pub fn view(&self, offset: u64, len: u64) -> BufView {
        BufView { bo: self.handle, offset, len }
    }

    /// The whole buffer as a view.
    pub fn whole(&self) -> BufView {
        self.view(0, self.size())
    }

    /// A row-major f32 matrix starting at byte `offset` with `row_stride` elements per row.
    pub fn matrix(&self, offset: u64, row_stride: u64) -> MatView {
        MatView { bo: self.handle, offset, row_stride }
    }

    fn check(&self, offset: usize, len: usize) -> Result<*mut u8> {
        let Some(map) = &self.map else {
            return Err(Error::new(
                Errno::EINVAL,
                format!(
                    "buffer {:#x} is device memory (region {}): copy it to a host buffer",
                    self.handle.0, self.region
                ),
            ));
        };
        match offset.checked_add(len) {
            Some(end) if end <= map.len() => Ok(map.as_ptr()),
            _ => Err(Error::new(Errno::ERANGE, format!("[{offset}, +{len}) is outside the {}-byte buffer", map.len()))),
        }
    }

    /// Copies `data` into the buffer at byte `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        let base = self.check(offset, data.len())?;
        // SAFETY: in bounds (checked); raw copy into shared memory, no reference formed.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), data.len()) };
        Ok(())
    }

    /// Copies bytes from the buffer at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let base = self.check(offset, out.len())?;
        // SAFETY: in bounds (checked); raw copy out of shared memory.
        unsafe { std::ptr::copy_nonoverlapping(base.add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Writes f32 values (native endianness) starting at byte `offset`.
    pub fn write_f32(&self, offset: usize, data: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.write(offset, &bytes)
    }

    /// Reads `count` f32 values starting at byte `offset`.
    pub fn read_f32(&self, offset: usize, count: usize) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; count.checked_mul(4).ok_or_else(|| Error::new(Errno::EOVERFLOW, "count overflows"))?];
        self.read(offset, &mut bytes)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Raw pointer to the mapping, for zero-copy use; valid while `self` lives. Null for
    /// device memory, which is not mapped.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ref().map_or(std::ptr::null_mut(), |m| m.as_ptr())
    }

    /// Exports the buffer as a descriptor another client can [`crate::Device::import`].
    pub fn export(&self) -> Result<OwnedFd> {
        self.dev.call_for_fd(&Request::BoExport { handle: self.handle })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.dev.release(&Request::BoClose { handle: self.handle });
    }
}
