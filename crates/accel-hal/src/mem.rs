//! Host-visible memory backed by a sealed memfd, mapped in the daemon and
//! shareable with clients by descriptor.
//!
//! Sealing matters: a client that could shrink the file would make the daemon's
//! own mapping fault (`SIGBUS`) on access. Every memfd the core maps carries
//! `F_SEAL_SHRINK`, and imports without it are refused.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use accel_uapi::shm::Mapping;
use rustix::fs::SealFlags;

use crate::{bail, Error, Result};
use accel_uapi::Errno;
use std::any::Any;

/// A shared mapping of a sealed memfd.
#[derive(Debug)]
pub struct HostMemory {
    map: Mapping,
    fd: OwnedFd,
    inode: (u64, u64),
}

fn os_err(code: Errno, what: &str) -> impl FnOnce(rustix::io::Errno) -> Error + '_ {
    move |e| Error::new(code, format!("{what}: {e}"))
}

impl HostMemory {
    /// Allocates `len` zeroed bytes in a new sealed memfd (a fresh memfd's pages read as zero).
    pub fn new(name: &str, len: u64) -> Result<Self> {
        if len == 0 {
            bail!(EINVAL, "buffer size must be non-zero");
        }
        let Ok(size) = usize::try_from(len) else { bail!(ENOMEM, "buffer size {len} does not fit in memory") };
        let fd = accel_uapi::shm::sealed_memfd(name, len).map_err(os_err(Errno::ENOMEM, "creating buffer memory"))?;
        Self::map(fd, size)
    }

    /// The size a descriptor would be imported with, after checking that it is a memfd
    /// sealed against shrinking (charge it before mapping).
    pub fn importable_size(fd: &OwnedFd) -> Result<u64> {
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| {
            Error::new(Errno::EINVAL, "descriptor is not a memfd (no seals); only accel buffer fds can be imported")
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            bail!(EINVAL, "memfd is not sealed against shrinking; refusing to map it");
        }
        let size = rustix::fs::fstat(fd).map_err(os_err(Errno::EBADF, "fstat"))?.st_size as u64;
        if size == 0 {
            bail!(EINVAL, "imported memfd is empty");
        }
        Ok(size)
    }

    /// Maps a descriptor a client passed in. It must be a memfd sealed against shrinking.
    pub fn import(fd: OwnedFd) -> Result<Self> {
        let size = Self::importable_size(&fd)?;
        Self::import_exact(fd, size)
    }

    /// Maps the first `size` bytes of a memfd that [`HostMemory::importable_size`] checked.
    /// The memfd cannot shrink below them, and growing it later changes nothing here.
    pub fn import_exact(fd: OwnedFd, size: u64) -> Result<Self> {
        let Ok(size) = usize::try_from(size) else { bail!(ENOMEM, "buffer size {size} does not fit in memory") };
        Self::map(fd, size)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self> {
        let stat = rustix::fs::fstat(&fd).map_err(os_err(Errno::EBADF, "fstat"))?;
        // Callers checked the shrink seal, so the mapping stays valid for its whole length.
        let map = Mapping::new(&fd, len).map_err(os_err(Errno::ENOMEM, "mmap"))?;
        Ok(HostMemory { map, fd, inode: (stat.st_dev, stat.st_ino) })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: zero-length memory is refused at creation.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new close-on-exec descriptor for the same memory, to send to a client.
    pub fn dup_fd(&self) -> Result<OwnedFd> {
        rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(os_err(Errno::EBADF, "dup"))
    }

    /// (device, inode) of the memfd: the identity an import is matched by.
    pub fn inode(&self) -> (u64, u64) {
        self.inode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_memory_is_zeroed_and_sealed() {
        let m = HostMemory::new("t", 8192).unwrap();
        // SAFETY: the mapping is 8192 bytes and nobody else writes it.
        let bytes = unsafe { std::slice::from_raw_parts(m.as_ptr(), m.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        let err = rustix::fs::ftruncate(m.fd(), 10).unwrap_err();
        assert_eq!(err, rustix::io::Errno::PERM);
    }

    #[test]
    fn unsealed_fd_is_refused() {
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert_eq!(HostMemory::import(fd).unwrap_err().code, Errno::EINVAL);
    }

    #[test]
    fn import_maps_the_same_pages() {
        let a = HostMemory::new("a", 4096).unwrap();
        let b = HostMemory::import(a.dup_fd().unwrap()).unwrap();
        // SAFETY: both mappings are 4096 bytes long.
        unsafe {
            *a.as_ptr().add(100) = 42;
            assert_eq!(*b.as_ptr().add(100), 42);
        }
        assert_eq!(a.inode(), b.inode());
    }
}

/// An error from a driver hook, with the driver's own words (a compiler's or a runtime's
/// message reaches the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError {
    /// errno-style code.
    pub code: Errno,
    /// What went wrong, in the driver's words.
    pub message: String,
    /// The device is lost (`VK_ERROR_DEVICE_LOST`, a fallen-off-the-bus GPU): the core
    /// wedges it, failing every queued and running job with `EIO`.
    pub lost: bool,
}

impl DriverError {
    /// An error with a message.
    pub fn new(code: Errno, message: impl Into<String>) -> DriverError {
        DriverError { code, message: message.into(), lost: false }
    }

    /// The device is lost: this job fails with `EIO` and `message`, and the device is wedged.
    pub fn device_lost(message: impl Into<String>) -> DriverError {
        DriverError { code: Errno::EIO, message: message.into(), lost: true }
    }
}

impl From<Errno> for DriverError {
    /// An error with no words of the driver's own (clients see the errno's description).
    fn from(code: Errno) -> DriverError {
        DriverError { code, message: String::new(), lost: false }
    }
}

impl From<DriverError> for crate::Error {
    fn from(e: DriverError) -> crate::Error {
        crate::Error::new(e.code, e.message)
    }
}

/// Memory a driver allocated in one of its regions. The driver finds its own type again
/// through [`DeviceMemory::as_any`] when a job uses it.
pub trait DeviceMemory: Send + Sync + std::fmt::Debug + 'static {
    /// Size in bytes.
    fn len(&self) -> u64;

    /// Whether the allocation is empty (never, for allocations the core made).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Zeroes the memory. The core calls it before a client sees the allocation, so no
    /// client ever reads what another one left.
    fn zero(&self) -> Result<(), DriverError>;

    /// The driver's own type.
    fn as_any(&self) -> &dyn Any;
}
