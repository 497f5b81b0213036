//! Buffer objects (GEM objects) and the views jobs take of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::counters::{Counters, Kind, Tracked};
use crate::mem::HostMemory;

/// Memory charged to a device until the buffer that holds it is freed.
#[derive(Debug)]
pub struct Charge {
    used: Arc<AtomicU64>,
    bytes: u64,
}

impl Charge {
    /// Adds `bytes` to `used` if the total stays within `limit`.
    pub fn try_new(used: &Arc<AtomicU64>, bytes: u64, limit: u64) -> Option<Charge> {
        used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(bytes).filter(|t| *t <= limit))
            .ok()
            .map(|_| Charge { used: used.clone(), bytes })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A buffer object: host-visible memory shared by every handle and import of it.
#[derive(Debug)]
pub struct BufferObject {
    mem: HostMemory,
    _charge: Option<Charge>,
    _tracked: Tracked,
}

impl BufferObject {
    /// Wraps memory; `charge` is what it counts against a device's memory, if anything.
    pub fn new(counters: &Arc<Counters>, mem: HostMemory, charge: Option<Charge>) -> Arc<Self> {
        let bytes = mem.len() as u64;
        Arc::new(BufferObject { mem, _charge: charge, _tracked: Tracked::with_bytes(counters, Kind::Buffer, bytes) })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.mem.len() as u64
    }

    /// The backing memory.
    pub fn memory(&self) -> &HostMemory {
        &self.mem
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
    /// Pointer to the first byte of the range.
    ///
    /// The memory is shared with clients, which may write it concurrently;
    /// drivers must treat it as device memory (no references held across that).
    pub fn ptr(&self) -> *mut u8 {
        // SAFETY: offset <= size was validated when the range was built.
        unsafe { self.bo.memory().as_ptr().add(self.offset) }
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
