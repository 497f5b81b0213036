//! A client's syncobjs: the `DRM_IOCTL_SYNCOBJ_*` family, with DRM's errno for each failure.
//!
//! Errnos, as `drm_syncobj.c` gives them: a handle that names nothing is `ENOENT` where DRM
//! looks handles up in arrays (wait, signal, reset, query, transfer, eventfd, sync-file
//! import and export) and `EINVAL` for destroy and export; an empty array is `EINVAL`
//! (wait: answered at once); unknown flags are `EINVAL`; a descriptor that is not what the
//! request takes is `EINVAL`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use accel_uapi::syncobj::{QUERY_LAST_SUBMITTED, WAIT_ALL, WAIT_AVAILABLE, WAIT_FLAGS, WAIT_FOR_SUBMIT, WAIT_RELATIVE};
use accel_uapi::{Errno, SyncobjHandle};

use super::{Client, MAX_POINTS};
use crate::fence::{monotonic_ns, Fence};
use crate::syncobj::{Syncobj, Unsubmitted};
use crate::{bail, Error, Result};

/// What a `SyncobjWaitMany` waits for, resolved.
#[derive(Debug)]
pub struct SyncobjWait {
    /// One fence per point.
    pub fences: Vec<Arc<Fence>>,
    /// All of them, or any.
    pub all: bool,
    /// How long from now.
    pub timeout: Duration,
}

impl Client {
    /// Creates a syncobj, signalled or not (`DRM_IOCTL_SYNCOBJ_CREATE`).
    pub fn syncobj_create(&mut self, signaled: bool) -> Result<SyncobjHandle> {
        let so = Arc::new(Syncobj::new(&self.sub.counters, signaled));
        self.with_object(|c| c.syncobjs.insert(so))
    }

    /// Destroys a syncobj handle; `EINVAL` if it names nothing (DRM).
    pub fn syncobj_destroy(&mut self, h: SyncobjHandle) -> Result<()> {
        self.syncobjs
            .remove(h)
            .map(drop)
            .ok_or_else(|| Error::new(Errno::EINVAL, format!("no syncobj with handle {:#x}", h.0)))?;
        self.released_object();
        Ok(())
    }

    /// The syncobjs behind `handles`: `EINVAL` for none, `E2BIG` past [`MAX_POINTS`],
    /// `ENOENT` for a handle that names nothing.
    fn syncobjs_of(&self, handles: &[SyncobjHandle]) -> Result<Vec<Arc<Syncobj>>> {
        if handles.is_empty() {
            bail!(EINVAL, "no syncobj handles given");
        }
        if handles.len() > MAX_POINTS {
            bail!(E2BIG, "{} syncobj handles exceed the limit of {MAX_POINTS}", handles.len());
        }
        handles.iter().map(|h| self.syncobj(*h)).collect()
    }

    /// `points`, or 0 for each handle when empty; `EINVAL` when the counts differ.
    fn points_for(handles: &[SyncobjHandle], points: &[u64]) -> Result<Vec<u64>> {
        match points.len() {
            0 => Ok(vec![0; handles.len()]),
            n if n == handles.len() => Ok(points.to_vec()),
            n => bail!(EINVAL, "{n} points for {} handles", handles.len()),
        }
    }

    /// Resolves a `SyncobjWaitMany`: the fences to wait for (proxies for points not submitted
    /// yet, with `WAIT_FOR_SUBMIT`; signalled once submitted, with `WAIT_AVAILABLE`) and the
    /// time left. `None` for no handles (DRM answers 0 at once).
    pub fn syncobj_wait_many(
        &self,
        handles: &[SyncobjHandle],
        points: &[u64],
        flags: u32,
        timeout_ns: i64,
    ) -> Result<Option<SyncobjWait>> {
        if flags & !WAIT_FLAGS != 0 {
            bail!(EINVAL, "unknown wait flags {:#x}", flags & !WAIT_FLAGS);
        }
        if handles.is_empty() {
            return Ok(None);
        }
        let objs = self.syncobjs_of(handles)?;
        let points = Self::points_for(handles, points)?;
        let unsubmitted = if flags & WAIT_AVAILABLE != 0 {
            Unsubmitted::WaitAvailable
        } else if flags & WAIT_FOR_SUBMIT != 0 {
            Unsubmitted::WaitSubmit
        } else {
            Unsubmitted::Refuse
        };
        let fences = objs.iter().zip(&points).map(|(so, p)| so.fence_for(*p, unsubmitted)).collect::<Result<_>>()?;
        let timeout = if flags & WAIT_RELATIVE != 0 {
            Duration::from_nanos(timeout_ns.max(0) as u64)
        } else {
            Duration::from_nanos((timeout_ns.max(0) as u64).saturating_sub(monotonic_ns()))
        };
        Ok(Some(SyncobjWait { fences, all: flags & WAIT_ALL != 0, timeout }))
    }

    /// Signals each point from the host (`SIGNAL`, `TIMELINE_SIGNAL`).
    pub fn syncobj_signal_many(&self, handles: &[SyncobjHandle], points: &[u64]) -> Result<()> {
        let objs = self.syncobjs_of(handles)?;
        for (so, p) in objs.iter().zip(Self::points_for(handles, points)?) {
            so.signal(p);
        }
        Ok(())
    }

    /// Signals one point from the host.
    pub fn syncobj_signal(&self, h: SyncobjHandle, point: u64) -> Result<()> {
        self.syncobj_signal_many(&[h], &[point])
    }

    /// Drops each syncobj's fence and chain (`RESET`).
    pub fn syncobj_reset_many(&self, handles: &[SyncobjHandle]) -> Result<()> {
        self.syncobjs_of(handles)?.iter().for_each(|so| so.reset());
        Ok(())
    }

    /// Resets one syncobj.
    pub fn syncobj_reset(&self, h: SyncobjHandle) -> Result<()> {
        self.syncobj_reset_many(&[h])
    }

    /// Each syncobj's highest contiguous signalled point, or last submitted one (`QUERY`).
    pub fn syncobj_query_many(&self, handles: &[SyncobjHandle], flags: u32) -> Result<Vec<u64>> {
        if flags & !QUERY_LAST_SUBMITTED != 0 {
            bail!(EINVAL, "unknown query flags {:#x}", flags & !QUERY_LAST_SUBMITTED);
        }
        let last_submitted = flags & QUERY_LAST_SUBMITTED != 0;
        Ok(self.syncobjs_of(handles)?.iter().map(|so| so.query(last_submitted)).collect())
    }

    /// One syncobj's highest contiguous signalled point.
    pub fn syncobj_query(&self, h: SyncobjHandle) -> Result<u64> {
        Ok(self.syncobj_query_many(&[h], 0)?[0])
    }

    /// `TRANSFER`: `src`'s fence at `src_point` becomes `dst`'s fence (point 0) or point
    /// `dst_point`. With `WAIT_FOR_SUBMIT`, a source point not submitted yet is transferred
    /// as a fence that follows it once it is (DRM blocks the caller until then instead).
    pub fn syncobj_transfer(
        &self,
        src: SyncobjHandle,
        src_point: u64,
        dst: SyncobjHandle,
        dst_point: u64,
        flags: u32,
    ) -> Result<()> {
        if flags & !WAIT_FOR_SUBMIT != 0 {
            bail!(EINVAL, "unknown transfer flags {:#x}", flags & !WAIT_FOR_SUBMIT);
        }
        let dst = self.syncobj(dst)?;
        let unsubmitted = if flags & WAIT_FOR_SUBMIT != 0 { Unsubmitted::WaitSubmit } else { Unsubmitted::Refuse };
        let fence = self.syncobj(src)?.fence_for(src_point, unsubmitted)?;
        dst.add_point(dst_point, fence);
        Ok(())
    }

    /// `EVENTFD`: `fd` (an eventfd) is incremented once `point` signals, or with
    /// `WAIT_AVAILABLE` once it is submitted. The daemon holds it until then (charged).
    pub fn syncobj_eventfd(&self, h: SyncobjHandle, point: u64, flags: u32, fd: OwnedFd) -> Result<()> {
        if flags & !WAIT_AVAILABLE != 0 {
            bail!(EINVAL, "unknown eventfd flags {:#x}", flags & !WAIT_AVAILABLE);
        }
        let so = self.syncobj(h)?;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
        if link.as_os_str() != "anon_inode:[eventfd]" {
            bail!(EINVAL, "the descriptor is not an eventfd");
        }
        let charges = self.charge_fds(1)?;
        so.add_eventfd(point, flags & WAIT_AVAILABLE != 0, fd, charges);
        Ok(())
    }

    /// `HANDLE_TO_FD` with `EXPORT_SYNC_FILE`: the fence at `point` as a sync file.
    pub fn syncobj_export_sync_file(&self, h: SyncobjHandle, point: u64) -> Result<OwnedFd> {
        let fence = self.syncobj(h)?.find(point)?;
        let charges = self.charge_fds(1)?;
        self.sub.sync_files.export(fence, &self.ns.name, charges)
    }

    /// `FD_TO_HANDLE` with `IMPORT_SYNC_FILE`: a sync file's fence becomes `h`'s fence
    /// (point 0) or point `point`.
    pub fn syncobj_import_sync_file(&self, h: SyncobjHandle, point: u64, fd: &OwnedFd) -> Result<()> {
        let fence = self.sub.sync_files.import(fd, &self.ns.name, &self.sub.counters)?;
        self.syncobj(h)?.add_point(point, fence);
        Ok(())
    }

    /// Exports a syncobj (`HANDLE_TO_FD`): any client of any device in the namespace can
    /// import the descriptor and wait on or signal the same syncobj. `EINVAL` for a handle
    /// that names nothing (DRM).
    pub fn syncobj_export(&self, h: SyncobjHandle) -> Result<OwnedFd> {
        let so = self.syncobj(h).map_err(|e| Error::new(Errno::EINVAL, e.message))?;
        self.sub.export_syncobj(&so, &self.ns.name)
    }

    /// Imports a syncobj descriptor another client exported (`FD_TO_HANDLE`).
    pub fn syncobj_import(&mut self, fd: OwnedFd) -> Result<SyncobjHandle> {
        let so = self.sub.import_syncobj(&fd, &self.ns.name)?;
        self.with_object(|c| c.syncobjs.insert(so))
    }
}
