//! Buffers: device memory mapped into this process.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use accel_uapi::shm::Mapping;
use accel_uapi::{BoHandle, BufView, Errno, MatView, Request};

use crate::{Error, Result, Shared};

/// A buffer object, mapped read-write into this process.
///
/// The memory is shared with the device (and with any client that imported it),
/// so access goes through copies ([`Buffer::read`], [`Buffer::write`]) rather than
/// Rust references, which would promise an exclusivity shared memory cannot give.
pub struct Buffer {
    dev: Arc<Shared>,
    handle: BoHandle,
    map: Mapping,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("handle", &self.handle).field("size", &self.map.len()).finish()
    }
}

impl Buffer {
    pub(crate) fn map(dev: Arc<Shared>, handle: BoHandle, size: u64) -> Result<Buffer> {
        let fd = match dev.call_for_fd(&Request::BoMmap { handle }) {
            Ok(fd) => fd,
            Err(e) => {
                dev.release(&Request::BoClose { handle });
                return Err(e);
            }
        };
        let len =
            usize::try_from(size).map_err(|_| Error::new(Errno::EOVERFLOW, "buffer larger than address space"))?;
        // The daemon seals buffer memfds against shrinking, so the mapping stays valid.
        match Mapping::new(&fd, len) {
            Ok(map) => Ok(Buffer { dev, handle, map }),
            Err(e) => {
                dev.release(&Request::BoClose { handle });
                Err(Error::os("mmap of buffer", e))
            }
        }
    }

    /// The daemon's handle for this buffer.
    pub fn handle(&self) -> BoHandle {
        self.handle
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
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

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.map.len() => Ok(()),
            _ => Err(Error::new(
                Errno::ERANGE,
                format!("[{offset}, +{len}) is outside the {}-byte buffer", self.map.len()),
            )),
        }
    }

    /// Copies `data` into the buffer at byte `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: in bounds (checked); raw copy into shared memory, no reference formed.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Copies bytes from the buffer at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: in bounds (checked); raw copy out of shared memory.
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
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

    /// Raw pointer to the mapping, for zero-copy use; valid while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
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
