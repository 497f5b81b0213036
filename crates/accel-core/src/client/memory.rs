//! A client's buffers: creation in any region of its device, PRIME export and import,
//! mapping, and the charges every allocation carries.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use accel_uapi::BoHandle;

use super::Client;
use crate::bo::{Backing, BufferObject, Charge};
use crate::mem::HostMemory;
use crate::{bail, Result};

impl Client {
    fn add_bo(&mut self, bo: Arc<BufferObject>) -> Result<BoHandle> {
        let (size, region) = (bo.size(), bo.region());
        let h = self.with_object(|c| c.bos.insert(bo))?;
        self.usage_counter(region).fetch_add(size, Ordering::Relaxed);
        Ok(BoHandle(h))
    }

    /// The client's usage counter for memory of `region`.
    fn usage_counter(&self, region: u32) -> &std::sync::atomic::AtomicU64 {
        if region == 0 {
            &self.record.memory_bytes
        } else {
            &self.record.device_memory_bytes
        }
    }

    /// Charges `size` bytes of region `region` of the open device: the namespace's quota,
    /// which applies to each region on its own (`ENOSPC`), and the region's capacity
    /// (`ENOMEM`), with the single-buffer size cap.
    pub(super) fn charge_memory(&self, size: u64, region: u32) -> Result<Vec<Charge>> {
        let share = self.share()?;
        let dev = &share.device;
        let Some(r) = dev.regions.get(region as usize) else {
            bail!(EINVAL, "accel{} has no memory region {region} ({} regions)", dev.minor, dev.regions.len());
        };
        let max = self.sub.limits().max_buffer_bytes;
        if size > max {
            bail!(ENOMEM, "{size} bytes exceed the largest buffer allowed ({max} bytes)");
        }
        // The namespace's quota first (ENOSPC: the daemon enforces it, not the client). An
        // unlimited share still counts what it holds but never refuses.
        let used = &share.region_used[region as usize];
        let Some(quota) = Charge::try_new(used, size, share.memory_limit()) else {
            bail!(
                ENOSPC,
                "namespace {:?}: {size} bytes exceed its memory limit in region {} ({} of {} bytes used)",
                self.ns.name,
                r.desc.name,
                used.load(Ordering::Relaxed),
                share.memory_limit()
            );
        };
        let Some(charge) = Charge::try_new(&r.used, size, r.desc.size) else {
            bail!(
                ENOMEM,
                "{size} bytes exceed the {} bytes left in region {}",
                r.desc.size.saturating_sub(r.used.load(Ordering::Relaxed)),
                r.desc.name
            );
        };
        Ok(vec![charge, quota])
    }

    /// Creates a zero-filled buffer of `size` bytes (rounded up to the page size) in region
    /// `region` of the open device (0: host memory, mappable; others: the driver's).
    pub fn bo_create(&mut self, size: u64, region: u32) -> Result<(BoHandle, u64)> {
        self.check_live()?;
        self.device()?;
        if size == 0 {
            bail!(EINVAL, "buffer size must be non-zero");
        }
        let page = rustix::param::page_size() as u64;
        let Some(size) = size.checked_next_multiple_of(page) else { bail!(EOVERFLOW, "buffer size {size} overflows") };
        let mut charges = self.charge_memory(size, region)?;
        let bo = if region == 0 {
            charges.extend(self.charge_fds(1)?);
            let bo = BufferObject::new(&self.sub.counters, HostMemory::new("accel-bo", size)?, charges);
            self.sub.register_buffer(&bo, &self.ns.name);
            bo
        } else {
            let (driver, dev_minor) = {
                let dev = self.device()?;
                (dev.driver.clone(), dev.minor)
            };
            let mem = driver.alloc(region as usize - 1, size)?;
            if mem.len() < size {
                bail!(EIO, "the driver allocated {} bytes for {size}", mem.len());
            }
            // No client may see what the memory held before.
            mem.zero()?;
            BufferObject::with_backing(&self.sub.counters, Backing::Device(mem), region, Some(dev_minor), charges)
        };
        let h = self.add_bo(bo)?;
        Ok((h, size))
    }

    pub(super) fn bo(&self, h: BoHandle) -> Result<Arc<BufferObject>> {
        self.bos.get(h)
    }

    /// Size and region of a buffer.
    pub fn bo_info(&self, h: BoHandle) -> Result<(u64, u32)> {
        let bo = self.bo(h)?;
        Ok((bo.size(), bo.region()))
    }

    /// Drops the handle; the buffer lives on while jobs, mappings or other clients use it.
    pub fn bo_close(&mut self, h: BoHandle) -> Result<()> {
        let bo = self.bos.remove(h)?;
        self.released_object();
        self.usage_counter(bo.region()).fetch_sub(bo.size(), Ordering::Relaxed);
        Ok(())
    }

    fn region_name(&self, bo: &BufferObject) -> String {
        self.device()
            .ok()
            .and_then(|d| d.regions.get(bo.region() as usize))
            .map_or_else(|| format!("{}", bo.region()), |r| r.desc.name.clone())
    }

    /// A descriptor the client maps to reach the buffer (`BoMmap`): memory that starts at
    /// its descriptor's first byte ([`Client::bo_mapping`] for any).
    pub fn bo_mmap(&self, h: BoHandle) -> Result<OwnedFd> {
        match self.bo_mapping(h)? {
            (fd, 0) => Ok(fd),
            (_, offset) => {
                bail!(EINVAL, "buffer {:#x} starts {offset} bytes into its descriptor: map it with BoMapping", h.0)
            }
        }
    }

    /// A descriptor the client maps to reach the buffer, and where the memory starts in it:
    /// host memory's memfd (at 0), or the driver's descriptor for memory of a region it calls
    /// mappable; `EINVAL` for memory clients cannot map (device memory: reach it with copies).
    pub fn bo_mapping(&self, h: BoHandle) -> Result<(OwnedFd, u64)> {
        let bo = self.bo(h)?;
        let mappable =
            || self.device().is_ok_and(|d| d.regions.get(bo.region() as usize).is_some_and(|r| r.desc.mappable));
        match (bo.host(), bo.device()) {
            (Some(m), _) => Ok((m.dup_fd()?, 0)),
            (None, Some(mem)) if mappable() => Ok(mem.map_fd()?),
            _ => bail!(
                EINVAL,
                "buffer {:#x} is in region {}, which clients cannot map: copy it to a host buffer",
                h.0,
                self.region_name(&bo)
            ),
        }
    }

    /// Exports the buffer (PRIME export): any client of the same namespace may import it,
    /// and gets the same object. Device memory is exported by its driver where the region
    /// allows; otherwise `EOPNOTSUPP` (never a silent copy).
    pub fn bo_export(&self, h: BoHandle) -> Result<OwnedFd> {
        let bo = self.bo(h)?;
        if let Some(m) = bo.host() {
            return m.dup_fd();
        }
        let dev = self.device()?;
        let exportable = dev.regions.get(bo.region() as usize).is_some_and(|r| r.desc.exportable);
        let (Some(mem), true) = (bo.device(), exportable) else {
            bail!(EOPNOTSUPP, "the driver cannot export memory of region {}", self.region_name(&bo));
        };
        // Kept by the buffer and registered, so an import in this daemon finds this very
        // buffer (PRIME), not a second one.
        let fd = bo.export_with(|| Ok(mem.export()?))?;
        self.sub.register_export(&bo, &fd, &self.ns.name);
        Ok(fd)
    }

    /// Imports a buffer descriptor (PRIME import): an exported buffer resolves to the
    /// same object, so both clients see the same pages.
    ///
    /// A foreign memfd becomes a new buffer charged like a created one (quota, device
    /// memory, size cap, a descriptor), so importing never bypasses a limit. Returns the
    /// handle, the size and the region.
    pub fn bo_import(&mut self, fd: OwnedFd) -> Result<(BoHandle, u64, u32)> {
        self.check_live()?;
        self.device()?;
        let bo = match self.sub.find_buffer(&fd, &self.ns.name)? {
            Some(bo) => self.same_device(bo)?,
            None => {
                let size = HostMemory::importable_size(&fd)?;
                let mut charges = self.charge_memory(size, 0)?;
                charges.extend(self.charge_fds(1)?);
                let bo = BufferObject::new(&self.sub.counters, HostMemory::import_exact(fd, size)?, charges);
                self.sub.register_buffer(&bo, &self.ns.name);
                bo
            }
        };
        let (size, region) = (bo.size(), bo.region());
        let h = self.add_bo(bo)?;
        Ok((h, size, region))
    }

    /// `bo`, if this client's device may use it: host memory any device's may, device memory
    /// only its own device's (another device's driver would take it for its own: `EINVAL`).
    fn same_device(&self, bo: Arc<BufferObject>) -> Result<Arc<BufferObject>> {
        let minor = self.device()?.minor;
        match bo.device_minor() {
            Some(owner) if owner != minor => bail!(
                EINVAL,
                "descriptor is device memory of accel{owner}, not of this client's accel{minor}: copy it through host memory"
            ),
            _ => Ok(bo),
        }
    }

    /// Imports device memory another runtime exported (`BoImportExternal`) into device
    /// region `region`: `size` bytes as the exporter allocated them, charged like a created
    /// buffer (whole pages, and the descriptor kept, before the driver maps anything), shared
    /// with the exporter, not zeroed. An
    /// import of it afterwards (`BoImport` of the same open file, or of its export) is this
    /// very buffer. Returns the handle.
    pub fn bo_import_external(&mut self, fd: OwnedFd, region: u32, size: u64) -> Result<BoHandle> {
        self.check_live()?;
        let dev = self.device()?;
        if region == 0 {
            bail!(EINVAL, "region 0 is host memory: import a memfd with BoImport");
        }
        if size == 0 {
            bail!(EINVAL, "an imported buffer's size must be non-zero");
        }
        if let Some(bo) = self.sub.find_buffer(&fd, &self.ns.name)? {
            let bo = self.same_device(bo)?;
            if (bo.region(), bo.size()) != (region, size) {
                bail!(
                    EINVAL,
                    "descriptor is buffer of {} bytes in region {}, not {size} bytes in region {region}",
                    bo.size(),
                    bo.region()
                );
            }
            return self.add_bo(bo);
        }
        // Charged in whole pages, as a created buffer, plus the descriptor the daemon keeps.
        let page = rustix::param::page_size() as u64;
        let Some(charged) = size.checked_next_multiple_of(page) else {
            bail!(EOVERFLOW, "buffer size {size} overflows")
        };
        let mut charges = self.charge_memory(charged, region)?;
        charges.extend(self.charge_fds(1)?);
        let keep = fd.try_clone().map_err(|e| crate::Error::new(accel_uapi::Errno::EMFILE, format!("dup: {e}")))?;
        let mem = dev.driver.import_external(region as usize - 1, fd, size)?;
        let bo = BufferObject::with_backing(&self.sub.counters, Backing::Device(mem), region, Some(dev.minor), charges);
        self.sub.register_export(&bo, &keep, &self.ns.name);
        bo.keep_export(keep);
        self.add_bo(bo)
    }
}
