//! Shared mappings of memfds: how both the daemon and clients reach buffer memory.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A close-on-exec memfd of `len` zero bytes, sealed so that its size can never change
/// (a peer that could shrink it would make every mapping of it fault).
pub fn sealed_memfd(name: &str, len: u64) -> rustix::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// A read-write `MAP_SHARED` mapping, unmapped on drop.
///
/// It hands out only a raw pointer: the memory is shared with other processes,
/// so Rust references to it would promise an exclusivity nobody can give.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and exposed only as a raw pointer.
unsafe impl Send for Mapping {}
// SAFETY: as above; &Mapping grants no access to the bytes by itself.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` read-write and shared.
    ///
    /// The caller must make sure the file cannot shrink below `len` while mapped
    /// (accel's memfds carry `F_SEAL_SHRINK`), or access past the new end faults.
    pub fn new(fd: impl AsFd, len: usize) -> rustix::io::Result<Mapping> {
        Mapping::new_at(fd, len, 0)
    }

    /// Maps `len` bytes of `fd` from `offset` (a multiple of the page size) read-write and
    /// shared; as [`Mapping::new`].
    pub fn new_at(fd: impl AsFd, len: usize, offset: u64) -> rustix::io::Result<Mapping> {
        if len == 0 {
            return Err(rustix::io::Errno::INVAL);
        }
        let rw = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a new shared mapping at a kernel-chosen address (null hint) overlaps no
        // existing Rust object.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, rw, MapFlags::SHARED, fd, offset)? };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(rustix::io::Errno::NOMEM)?;
        Ok(Mapping { ptr, len })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty mappings are refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the region mapped in `new`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
