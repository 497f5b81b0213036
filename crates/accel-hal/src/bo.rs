//! Buffer objects (GEM objects) and the views jobs take of them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, RwLock};

use accel_uapi::{BoHandle, BufView, Errno, MatView};
use slotmap::SlotMap;

use crate::counters::{Counters, Kind, Tracked};
use crate::handles::{insert, key};
use crate::mem::HostMemory;
use crate::mem::{DeviceMemory, VolatileSlice};
use crate::{bail, Error, Result};

/// Largest GEMM dimension accepted.
pub const MAX_GEMM_DIM: u64 = 1 << 20;

pub use crate::counters::Charge;

/// What holds a buffer's bytes.
#[derive(Debug)]
pub enum Backing {
    /// Host memory (region 0): a sealed memfd mapped here and by clients.
    Host(HostMemory),
    /// Memory a driver allocated in one of its regions.
    Device(Arc<dyn DeviceMemory>),
}

/// A buffer object: memory of one region, shared by every handle and import of it.
#[derive(Debug)]
pub struct BufferObject {
    backing: Backing,
    region: u32,
    /// The device whose memory it is (its minor), for device memory.
    device: Option<u32>,
    /// The descriptor its driver exported it as, kept once made (device memory only).
    exported: Mutex<Option<OwnedFd>>,
    _charges: Vec<Charge>,
    _tracked: Tracked,
}

impl BufferObject {
    /// Wraps host memory; `charges` are what it counts against (device memory, a
    /// namespace's share), released when the buffer is freed.
    pub fn new(counters: &Arc<Counters>, mem: HostMemory, charges: Vec<Charge>) -> Arc<Self> {
        Self::with_backing(counters, Backing::Host(mem), 0, None, charges)
    }

    /// Wraps memory of region `region`; `device` is the device (minor) whose memory it is,
    /// for device memory (host memory belongs to none: any device's jobs may use it).
    pub fn with_backing(
        counters: &Arc<Counters>,
        backing: Backing,
        region: u32,
        device: Option<u32>,
        charges: Vec<Charge>,
    ) -> Arc<Self> {
        let bytes = match &backing {
            Backing::Host(m) => m.len() as u64,
            Backing::Device(m) => m.len(),
        };
        Arc::new(BufferObject {
            backing,
            region,
            device,
            exported: Mutex::new(None),
            _charges: charges,
            _tracked: Tracked::with_bytes(counters, Kind::Buffer, bytes),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match &self.backing {
            Backing::Host(m) => m.len() as u64,
            Backing::Device(m) => m.len(),
        }
    }

    /// The region the buffer lives in (0: host).
    pub fn region(&self) -> u32 {
        self.region
    }

    /// The device (minor) whose memory it is; `None` for host memory.
    pub fn device_minor(&self) -> Option<u32> {
        self.device
    }

    /// The backing memory.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// The host memory, for a host buffer.
    pub fn host(&self) -> Option<&HostMemory> {
        match &self.backing {
            Backing::Host(m) => Some(m),
            Backing::Device(_) => None,
        }
    }

    /// The driver's memory, for a device buffer.
    pub fn device(&self) -> Option<&Arc<dyn DeviceMemory>> {
        match &self.backing {
            Backing::Device(m) => Some(m),
            Backing::Host(_) => None,
        }
    }

    /// A descriptor of the buffer's export: the first call keeps what `make` (the driver's
    /// export) gives, every call returns a duplicate of it. One open file thus names the
    /// buffer however often it is exported, and [`BufferObject::is_exported_as`] knows it
    /// again even where a runtime's descriptors all share one inode.
    pub fn export_with(&self, make: impl FnOnce() -> Result<OwnedFd>) -> Result<OwnedFd> {
        let mut kept = crate::lock(&self.exported);
        let fd = match &mut *kept {
            Some(fd) => fd,
            slot => slot.insert(make()?),
        };
        rustix::io::fcntl_dupfd_cloexec(&*fd, 0).map_err(|e| Error::new(Errno::EMFILE, format!("dup: {e}")))
    }

    /// Keeps `fd` as the buffer's export (one it was imported from), unless it has one.
    pub fn keep_export(&self, fd: OwnedFd) {
        crate::lock(&self.exported).get_or_insert(fd);
    }

    /// Whether `fd` is the open file this buffer was exported as.
    pub fn is_exported_as(&self, fd: BorrowedFd<'_>) -> bool {
        crate::lock(&self.exported).as_ref().is_some_and(|kept| crate::mem::same_open_file(kept.as_fd(), fd))
    }
}

/// A validated byte range of a buffer object; jobs hold it until they are freed.
#[derive(Debug, Clone)]
pub struct BoRange {
    /// The buffer (kept alive by the job).
    pub bo: Arc<BufferObject>,
    /// Byte offset; `offset + len <= bo.size()` was checked.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl BoRange {
    /// The range as a bounds-checked view, for a host buffer (`None` for device memory,
    /// which only its driver reaches, through [`BufferObject::device`]). The memory is
    /// shared with clients, which may write it concurrently: the view only copies.
    pub fn host(&self) -> Option<VolatileSlice<'_>> {
        let m = self.bo.host()?;
        // SAFETY: offset + len <= size was validated when the range was built, and the
        // buffer (held by self) keeps the mapping alive for the view's lifetime.
        Some(unsafe { VolatileSlice::new(m.as_ptr().add(self.offset), self.len) })
    }

    /// Whether two ranges share any byte.
    pub fn overlaps(&self, other: &BoRange) -> bool {
        Arc::ptr_eq(&self.bo, &other.bo)
            && self.offset < other.offset + other.len
            && other.offset < self.offset + self.len
    }
}

/// A validated row-major f32 matrix inside a buffer object.
#[derive(Debug, Clone)]
pub struct BoMatrix {
    /// The bytes the matrix spans (first to last element).
    pub range: BoRange,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Elements between consecutive rows.
    pub row_stride: usize,
}

slotmap::new_key_type! {
    struct BoKey;
}

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::new(Errno::EOVERFLOW, format!("{what} {v} overflows")))
}

/// A client's buffer handles (its GEM handle table), shared with its rings so that
/// ring entries are validated exactly like socket submissions.
#[derive(Default)]
pub struct BoTable {
    map: RwLock<SlotMap<BoKey, Arc<BufferObject>>>,
}

impl BoTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, SlotMap<BoKey, Arc<BufferObject>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The buffer behind a handle; `ENOENT` for stale or forged handles.
    pub fn get(&self, h: BoHandle) -> Result<Arc<BufferObject>> {
        self.read().get(key(h.0)).cloned().ok_or_else(|| {
            Error::new(Errno::ENOENT, format!("no buffer with handle {:#x} (stale or never issued)", h.0))
        })
    }

    /// Handles held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no handle is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a handle.
    pub fn insert(&self, bo: Arc<BufferObject>) -> Result<u64> {
        insert(&mut self.map.write().unwrap_or_else(|e| e.into_inner()), "buffer", bo)
    }

    /// Removes a handle.
    pub fn remove(&self, h: BoHandle) -> Result<Arc<BufferObject>> {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key(h.0))
            .ok_or_else(|| Error::new(Errno::ENOENT, format!("no buffer with handle {:#x}", h.0)))
    }

    /// A bounds-checked range of a buffer.
    pub fn range(&self, v: &BufView) -> Result<BoRange> {
        let bo = self.get(v.bo)?;
        match v.offset.checked_add(v.len) {
            Some(end) if end <= bo.size() => {}
            Some(end) => {
                bail!(ERANGE, "view [{}, {end}) is outside buffer {:#x} of {} bytes", v.offset, v.bo.0, bo.size())
            }
            None => bail!(EOVERFLOW, "view offset {} + length {} overflows", v.offset, v.len),
        }
        Ok(BoRange { bo: bo.clone(), offset: to_usize(v.offset, "offset")?, len: to_usize(v.len, "length")? })
    }

    /// A bounds-checked row-major matrix of `rows` × `cols` elements of `elem` bytes (4 for
    /// f32, 2 for f16/bf16) in a buffer.
    pub fn matrix(&self, name: &str, v: &MatView, rows: u64, cols: u64, elem: u64) -> Result<BoMatrix> {
        if !v.offset.is_multiple_of(elem) {
            bail!(EINVAL, "matrix {name}: offset {} is not {elem}-byte aligned", v.offset);
        }
        if v.row_stride < cols {
            bail!(EINVAL, "matrix {name}: row stride {} is below its {cols} columns", v.row_stride);
        }
        let span = (rows - 1)
            .checked_mul(v.row_stride)
            .and_then(|e| e.checked_add(cols))
            .and_then(|e| e.checked_mul(elem))
            .ok_or_else(|| Error::new(Errno::EOVERFLOW, format!("matrix {name}: size overflows")))?;
        let range = self
            .range(&BufView { bo: v.bo, offset: v.offset, len: span })
            .map_err(|e| Error::new(e.code, format!("matrix {name}: {}", e.message)))?;
        Ok(BoMatrix {
            range,
            rows: to_usize(rows, "rows")?,
            cols: to_usize(cols, "cols")?,
            row_stride: to_usize(v.row_stride, "stride")?,
        })
    }
}
