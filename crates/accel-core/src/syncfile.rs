//! Sync files (`sync_file`): one fence as a descriptor, pollable and importable.
//!
//! A sync file is the read end of a pipe. The daemon keeps the write end and writes one
//! byte when the fence signals (0 for success, else the errno), so the descriptor polls
//! readable from then on, in any process it was passed to. Importing one finds the fence
//! again by the pipe's inode. When every copy of the read end is closed, the write end
//! reports `EPOLLERR`; the daemon notices on its next export or import and forgets the
//! entry, so entries live exactly as long as someone can still import them.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use accel_uapi::{Errno, FenceStatus};
use rustix::event::epoll;

use crate::bo::Charge;
use crate::counters::Counters;
use crate::fence::Fence;
use crate::{bail, lock, Error, Result};

enum Held {
    Pending(Arc<Fence>),
    Done(FenceStatus),
}

struct Entry {
    /// Device of the pipe's inode (pipefs): checked on import with the inode, the key.
    dev: u64,
    /// The exporter's namespace: only it may import the file (others get `EINVAL`, as for a
    /// descriptor that is no sync file at all).
    ns: String,
    /// The fence until it signals, then only its status (so a signalled file holds nothing).
    fence: Arc<Mutex<Held>>,
    write: Arc<OwnedFd>,
    _charges: Vec<Charge>,
}

/// Every exported sync file that someone still holds.
pub struct SyncFiles {
    files: Mutex<HashMap<u64, Entry>>,
    /// The write ends, to learn when their last reader is gone.
    reaper: OwnedFd,
}

fn os(what: &str) -> impl Fn(rustix::io::Errno) -> Error + '_ {
    move |e| Error::new(Errno::ENOMEM, format!("{what}: {e}"))
}

impl SyncFiles {
    /// An empty table.
    pub fn new() -> Result<SyncFiles> {
        let reaper = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(os("epoll_create"))?;
        Ok(SyncFiles { files: Mutex::default(), reaper })
    }

    /// Forgets sync files whose every reader closed.
    fn reap(&self, files: &mut HashMap<u64, Entry>) {
        let mut events = Vec::with_capacity(64);
        loop {
            events.clear();
            let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
            if epoll::wait(&self.reaper, rustix::buffer::spare_capacity(&mut events), Some(&zero)).is_err() {
                return;
            }
            if events.is_empty() {
                return;
            }
            for ev in &events {
                if let Some(e) = files.remove(&ev.data.u64()) {
                    let _ = epoll::delete(&self.reaper, e.write.as_fd());
                }
            }
        }
    }

    /// A sync file for `fence`; `charges` (the write end the daemon keeps) drop with it.
    pub fn export(&self, fence: Arc<Fence>, ns: &str, charges: Vec<Charge>) -> Result<OwnedFd> {
        let mut files = lock(&self.files);
        self.reap(&mut files);
        let (read, write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
                .map_err(os("pipe"))?;
        let st = rustix::fs::fstat(&read).map_err(os("fstat"))?;
        epoll::add(&self.reaper, &write, epoll::EventData::new_u64(st.st_ino), epoll::EventFlags::ERR)
            .map_err(os("epoll_ctl"))?;
        let write = Arc::new(write);
        let (w, held) = (write.clone(), Arc::new(Mutex::new(Held::Pending(fence.clone()))));
        let h = held.clone();
        fence.on_signal(move |st| {
            let byte = match st {
                FenceStatus::Error(e) => u8::try_from(e.raw()).unwrap_or(u8::MAX),
                _ => 0,
            };
            let _ = rustix::io::write(&*w, &[byte]);
            *lock(&h) = Held::Done(st);
        });
        files.insert(st.st_ino, Entry { dev: st.st_dev, ns: ns.to_string(), fence: held, write, _charges: charges });
        Ok(read)
    }

    /// The fence of a sync file; anything else is `EINVAL` (as `sync_file_get_fence` failing).
    /// A file whose fence signalled gives a new fence signalled alike.
    pub fn import(&self, fd: &OwnedFd, ns: &str, counters: &Arc<Counters>) -> Result<Arc<Fence>> {
        let mut files = lock(&self.files);
        self.reap(&mut files);
        let st = rustix::fs::fstat(fd).map_err(|e| Error::new(Errno::EINVAL, format!("fstat: {e}")))?;
        match files.get(&st.st_ino) {
            Some(e) if e.dev == st.st_dev && e.ns == ns => Ok(match &*lock(&e.fence) {
                Held::Pending(f) => f.clone(),
                Held::Done(FenceStatus::Error(code)) => Fence::signaled(counters, Err(*code)),
                Held::Done(_) => Fence::signaled(counters, Ok(())),
            }),
            _ => bail!(EINVAL, "the descriptor is not a sync file this daemon exported"),
        }
    }
}
