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

    /// Maps the first `size` bytes of a memfd sealed against shrinking, which must have
    /// them (`EINVAL` otherwise): memory another process made, imported at the size it says.
    pub fn import_prefix(fd: OwnedFd, size: u64) -> Result<Self> {
        let have = Self::importable_size(&fd)?;
        if have < size {
            bail!(EINVAL, "the memfd has {have} bytes, not {size}");
        }
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

/// Whether two descriptors are the same open file (`kcmp(2)` with `KCMP_FILE`): how a
/// runtime's exported descriptor is recognised where its files share one inode (an opaque
/// Vulkan descriptor of NVIDIA's driver, a CUDA POSIX handle, any anonymous inode), so the
/// inode names no one export. False where the kernel has no `kcmp`.
pub fn same_open_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    const KCMP_FILE: libc::c_int = 0;
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: kcmp reads two descriptor numbers of this process; it touches no memory.
    unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a.as_raw_fd(), b.as_raw_fd()) == 0 }
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

    /// A descriptor other processes can import this memory by (a dma-buf, a CUDA POSIX
    /// fd, a Vulkan external-memory fd): PRIME export. Memory the driver cannot export is
    /// `EOPNOTSUPP` — the core never copies instead.
    fn export(&self) -> Result<std::os::fd::OwnedFd, DriverError> {
        Err(DriverError::new(Errno::EOPNOTSUPP, "this driver cannot export its memory"))
    }

    /// A descriptor a client maps (`MAP_SHARED`) to reach this very memory, and where in the
    /// descriptor's file it starts (a multiple of the page size), for memory of a region the
    /// driver calls mappable ([`crate::driver::RegionDesc`]). The client must not be able to
    /// shrink what the daemon or the device maps through it (a memfd sealed against
    /// shrinking, a dma-buf). Other memory: `EOPNOTSUPP`.
    fn map_fd(&self) -> Result<(std::os::fd::OwnedFd, u64), DriverError> {
        Err(DriverError::new(Errno::EOPNOTSUPP, "clients cannot map this driver's memory"))
    }

    /// The driver's own type.
    fn as_any(&self) -> &dyn Any;
}

/// A bounds-checked view of memory that others may write at any time (a buffer clients map,
/// device memory the host reaches): bytes are copied in and out, never borrowed, so no Rust
/// reference ever promises an exclusivity shared memory cannot give (crosvm's
/// `VolatileSlice`). Every access is checked against the view's length.
#[derive(Debug, Clone, Copy)]
pub struct VolatileSlice<'a> {
    ptr: *mut u8,
    len: usize,
    _memory: std::marker::PhantomData<&'a ()>,
}

// SAFETY: the view is a pointer and a length into memory its owner keeps alive for 'a;
// accesses are copies, ordered by the users of the memory (like device memory).
unsafe impl Send for VolatileSlice<'_> {}
// SAFETY: as above.
unsafe impl Sync for VolatileSlice<'_> {}

impl<'a> VolatileSlice<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` stays valid (mapped, not freed) for `'a`.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> VolatileSlice<'a> {
        VolatileSlice { ptr, len, _memory: std::marker::PhantomData }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes `[offset, offset + len)`; `ERANGE` outside the view.
    pub fn subslice(&self, offset: usize, len: usize) -> Result<VolatileSlice<'a>, Errno> {
        match offset.checked_add(len) {
            // SAFETY: inside this view, so valid for 'a.
            Some(end) if end <= self.len => Ok(unsafe { VolatileSlice::new(self.ptr.add(offset), len) }),
            _ => Err(Errno::ERANGE),
        }
    }

    /// Copies bytes at `offset` into `out`; `ERANGE` outside the view.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), Errno> {
        let src = self.subslice(offset, out.len())?;
        // SAFETY: in bounds (checked); a copy out forms no reference into the memory.
        unsafe { std::ptr::copy(src.ptr, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copies `data` in at `offset`; `ERANGE` outside the view.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), Errno> {
        let dst = self.subslice(offset, data.len())?;
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::copy(data.as_ptr(), dst.ptr, data.len()) };
        Ok(())
    }

    /// Fills the view with the little-endian `pattern` (a partial last word gets its
    /// leading bytes).
    pub fn fill_u32(&self, pattern: u32) {
        let bytes = pattern.to_le_bytes();
        if bytes.iter().all(|&b| b == bytes[0]) {
            // SAFETY: the view's bytes (memset).
            unsafe { std::ptr::write_bytes(self.ptr, bytes[0], self.len) };
            return;
        }
        // Small fills are written directly; large ones copy a block of the pattern in (the
        // library's copy uses the widest stores). Both keep each word in phase with the view's
        // start. (Byte by byte, volatile, fills ran at a quarter of the memory's speed.)
        const BLOCK: usize = 4096;
        if self.len <= BLOCK {
            // SAFETY: the view's bytes.
            unsafe { fill_pattern(self.ptr, self.len, bytes) };
            return;
        }
        let mut block = std::mem::MaybeUninit::<[u8; BLOCK]>::uninit();
        let block = block.as_mut_ptr().cast::<u8>();
        // SAFETY: the block's bytes, this function's own.
        unsafe { fill_pattern(block, BLOCK, bytes) };
        let mut offset = 0;
        while offset < self.len {
            let n = (self.len - offset).min(BLOCK);
            // SAFETY: `offset + n <= len`; the block's bytes are written above.
            unsafe { std::ptr::copy_nonoverlapping(block, self.ptr.add(offset), n) };
            offset += n;
        }
    }

    /// Copies this view into `dst` (the shorter length; the two may overlap).
    pub fn copy_to(&self, dst: &VolatileSlice<'_>) {
        // SAFETY: both in bounds for the shorter length; `copy` is memmove.
        unsafe { std::ptr::copy(self.ptr, dst.ptr, self.len.min(dst.len)) };
    }

    /// The little-endian f32s of the view (a partial last value is dropped).
    pub fn read_f32s(&self) -> Vec<f32> {
        let mut bytes = vec![0u8; self.len - self.len % 4];
        self.read(0, &mut bytes).expect("within the view");
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// Writes little-endian f32s at the start; `ERANGE` if they do not fit.
    pub fn write_f32s(&self, values: &[f32]) -> Result<(), Errno> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write(0, &bytes)
    }

    /// The start of the view, for kernels that must address it directly (a GEMM). The
    /// caller keeps to `len` bytes and to the lifetime of the view.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

/// Writes `len` bytes at `ptr` with `bytes` repeated from `ptr` on: eight bytes at a time (the
/// compiler widens the loop to vector stores), then the tail.
///
/// # Safety
/// `ptr..ptr + len` is valid for writes.
unsafe fn fill_pattern(ptr: *mut u8, len: usize, bytes: [u8; 4]) {
    let word = u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[0], bytes[1], bytes[2], bytes[3]]);
    let whole = len - len % 8;
    let mut i = 0;
    while i < whole {
        // SAFETY: `i + 8 <= len`.
        unsafe { ptr.add(i).cast::<u64>().write_unaligned(word) };
        i += 8;
    }
    for i in whole..len {
        // SAFETY: `i < len`.
        unsafe { ptr.add(i).write(bytes[i % 4]) };
    }
}

#[cfg(test)]
mod volatile_tests {
    use super::*;

    #[test]
    fn every_access_is_checked_against_the_view() {
        let mut backing = [0u8; 16];
        // SAFETY: the array outlives the view.
        let v = unsafe { VolatileSlice::new(backing.as_mut_ptr(), 16) };
        assert_eq!(v.subslice(8, 9).unwrap_err(), Errno::ERANGE);
        assert_eq!(v.subslice(usize::MAX, 2).unwrap_err(), Errno::ERANGE);
        assert_eq!(v.write(14, &[1, 2, 3]).unwrap_err(), Errno::ERANGE);
        v.subslice(4, 8).unwrap().fill_u32(0xaabb_ccdd);
        let mut out = [0u8; 16];
        v.read(0, &mut out).unwrap();
        assert_eq!(out[..4], [0; 4]);
        assert_eq!(out[4..12], [0xdd, 0xcc, 0xbb, 0xaa, 0xdd, 0xcc, 0xbb, 0xaa]);
        // Every length and start, across blocks, against the pattern byte by byte; and a
        // pattern of equal bytes (a memset).
        let mut big = vec![0u8; 3 * 4096 + 64];
        for (start, len) in
            (0..8).flat_map(|s| [0, 1, 3, 4, 5, 7, 4095, 4096, 4097, 8193, 3 * 4096 + 50].map(|l| (s, l)))
        {
            for pattern in [0x0403_0201u32, 0x7f7f_7f7f] {
                big.fill(0xee);
                // SAFETY: the vector outlives the view.
                let view = unsafe { VolatileSlice::new(big.as_mut_ptr(), big.len()) };
                view.subslice(start, len).unwrap().fill_u32(pattern);
                let p = pattern.to_le_bytes();
                for (i, &b) in big.iter().enumerate() {
                    let want = if (start..start + len).contains(&i) { p[(i - start) % 4] } else { 0xee };
                    assert_eq!(b, want, "byte {i} of a fill of {len} at {start} with {pattern:#x}");
                }
            }
        }
        // Overlapping copy (memmove) within one view.
        v.subslice(4, 8).unwrap().copy_to(&v.subslice(6, 8).unwrap());
        v.read(0, &mut out).unwrap();
        assert_eq!(out[6..14], [0xdd, 0xcc, 0xbb, 0xaa, 0xdd, 0xcc, 0xbb, 0xaa]);
        v.write_f32s(&[1.5, -2.0]).unwrap();
        assert_eq!(v.subslice(0, 8).unwrap().read_f32s(), vec![1.5, -2.0]);
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
