//! A registered device: driver, category and open policy, scheduler, memory accounting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accel_uapi::{Category, DeviceInfo, Errno, RegionInfo, RegionKind};

use crate::driver::{Driver, DriverInfo, RegionDesc};
use crate::sched::{SchedConfig, Scheduler};
use crate::{bail, lock, Error, Result};

/// How a device is registered.
pub struct DeviceConfig {
    /// The driver instance.
    pub driver: Arc<dyn Driver>,
    /// Category to run in; `None` takes the driver's first.
    pub category: Option<Category>,
    /// Job timeout for queues that do not set one.
    pub job_timeout: Duration,
    /// Hangs after which a queue is banned.
    pub hang_limit: u32,
}

impl DeviceConfig {
    /// A device with the driver's default category, a 10 s job timeout and a hang limit of 2.
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        DeviceConfig {
            driver,
            category: None,
            job_timeout: Duration::from_secs(10),
            hang_limit: SchedConfig::default().hang_limit,
        }
    }
}

/// Who holds an exclusive device, and who queues for it (FIFO).
#[derive(Default)]
struct Lease {
    owner: Option<u64>,
    waiters: VecDeque<u64>,
    /// Called once, outside the lock, when the lease may have come free for a waiter.
    watchers: Vec<LeaseWatcher>,
}

/// A memory region of a device, with what is allocated in it.
#[derive(Debug)]
pub struct Region {
    /// Id (index), name, kind, capacity and flags.
    pub desc: RegionDesc,
    /// Bytes allocated now, across every client.
    pub used: Arc<AtomicU64>,
}

impl Region {
    /// Region 0 (host memory of `host_bytes`) and the driver's own after it.
    fn all(driver: &[RegionDesc], host_bytes: u64) -> Vec<Region> {
        let host = RegionDesc {
            name: "host".into(),
            kind: RegionKind::Host,
            size: host_bytes,
            mappable: true,
            exportable: true,
            coherent: true,
        };
        std::iter::once(host)
            .chain(driver.iter().cloned())
            .map(|desc| Region { desc, used: Arc::new(AtomicU64::new(0)) })
            .collect()
    }

    /// The region as `DeviceInfo` shows it.
    pub fn info(&self, id: u32) -> RegionInfo {
        let d = &self.desc;
        RegionInfo {
            id,
            name: d.name.clone(),
            kind: d.kind,
            size: d.size,
            used: self.used.load(Ordering::Relaxed),
            mappable: d.mappable,
            exportable: d.exportable,
            coherent: d.coherent,
        }
    }
}

/// A callback for a lease change (the client's `on_lease_change`).
pub type LeaseWatcher = Box<dyn FnOnce() + Send>;

/// One device node, `accel<minor>`.
pub struct Device {
    /// Minor number.
    pub minor: u32,
    /// What the driver said about the device.
    pub info: DriverInfo,
    /// Category the device runs in.
    pub category: Category,
    /// Default job timeout.
    pub job_timeout: Duration,
    /// The device's scheduler.
    pub sched: Scheduler,
    /// The driver (memory and program hooks; jobs reach it through the scheduler).
    pub driver: Arc<dyn Driver>,
    /// Memory regions: 0 is host memory, then the driver's own ([`Driver::regions`]).
    pub regions: Vec<Region>,
    /// What [`Driver::load_program`] takes.
    pub program_formats: Vec<String>,
    lease: Mutex<Lease>,
    open_clients: AtomicU32,
    seqno: AtomicU64,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("minor", &self.minor)
            .field("driver", &self.info.driver)
            .field("category", &self.category)
            .finish()
    }
}

impl Device {
    /// Registers a device under `minor` and starts its scheduler.
    pub fn new(minor: u32, config: DeviceConfig) -> Result<Device> {
        let info = config.driver.info();
        let category = match config.category {
            None => *info.categories.first().ok_or_else(|| Error::new(Errno::EINVAL, "driver supports no category"))?,
            Some(c) if info.categories.contains(&c) => c,
            Some(c) => bail!(EINVAL, "driver {} does not support the {} category", info.driver, c.name()),
        };
        let (driver_regions, info_memory) = (config.driver.regions(), info.memory_bytes);
        let program_formats = config.driver.program_formats();
        let driver = config.driver.clone();
        let sched_config = SchedConfig { hang_limit: config.hang_limit, fifo: category == Category::Oneshot };
        let sched = Scheduler::new(config.driver, &format!("accel{minor}"), sched_config)
            .map_err(|e| Error::new(Errno::ENOMEM, format!("starting scheduler: {e}")))?;
        Ok(Device {
            minor,
            info,
            category,
            job_timeout: config.job_timeout,
            sched,
            driver,
            regions: Region::all(&driver_regions, info_memory),
            program_formats,
            lease: Mutex::new(Lease::default()),
            open_clients: AtomicU32::new(0),
            seqno: AtomicU64::new(0),
        })
    }

    /// Describes the device for `list`/`info`.
    pub fn describe(&self) -> DeviceInfo {
        DeviceInfo {
            minor: self.minor,
            driver: self.info.driver.to_string(),
            name: self.info.name.clone(),
            vendor: self.info.vendor.clone(),
            category: self.category,
            supported_categories: self.info.categories.clone(),
            ops: self.info.ops.clone(),
            memory_bytes: self.info.memory_bytes,
            compute_units: self.info.compute_units,
            engines: self.info.engines.clone(),
            regions: self.regions.iter().zip(0..).map(|(r, id)| r.info(id)).collect(),
            program_formats: self.program_formats.clone(),
            queued_jobs: self.sched.queued() as u64,
            resets: self.sched.resets(),
            wedged: self.sched.is_wedged(),
            open_clients: self.open_clients.load(Ordering::Relaxed),
            exclusive_owner: lock(&self.lease).owner,
        }
    }

    /// Closes the device for a client, handing an exclusive lease it held to the next waiter.
    ///
    /// The leaving client's buffers were freed with it, and new buffers are fresh zeroed
    /// memfds, so the next holder finds no trace of the previous one (scrubbed hand-over).
    /// Non-blocking lease step for event loops: takes the exclusive lease if it is this
    /// client's turn (`Ok(true)`), else joins the queue once if `queue` and returns `Ok(false)`
    /// (`EBUSY` without `queue`). Shared and oneshot devices open at once.
    pub(crate) fn open_poll(&self, client_id: u64, queue: bool) -> Result<bool> {
        if self.category == Category::Exclusive {
            let mut lease = lock(&self.lease);
            let first = lease.waiters.front().is_none_or(|w| *w == client_id);
            if lease.owner.is_none() && first {
                if lease.waiters.front() == Some(&client_id) {
                    lease.waiters.pop_front();
                }
                lease.owner = Some(client_id);
            } else if queue {
                if !lease.waiters.contains(&client_id) {
                    lease.waiters.push_back(client_id);
                }
                return Ok(false);
            } else {
                let holder = lease.owner.map_or("a waiting client".into(), |o| format!("client {o}"));
                bail!(EBUSY, "accel{} is exclusive and held by {holder}", self.minor);
            }
        }
        self.open_clients.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Leaves the lease queue (a waiting open that gave up).
    pub(crate) fn open_cancel(&self, client_id: u64) {
        let watchers = {
            let mut lease = lock(&self.lease);
            lease.waiters.retain(|w| *w != client_id);
            std::mem::take(&mut lease.watchers)
        };
        watchers.into_iter().for_each(|w| w());
    }

    /// Calls `watcher` once the exclusive lease may be free for `client_id` (at once if it
    /// is now): when its holder closes or a waiter ahead gives up. The caller then tries
    /// [`Device::open_poll`] again. No polling: this is how an event loop waits for a lease.
    pub(crate) fn on_lease_change(&self, client_id: u64, watcher: LeaseWatcher) {
        {
            let mut lease = lock(&self.lease);
            let first = lease.waiters.front().is_none_or(|w| *w == client_id);
            if lease.owner.is_some() || !first {
                lease.watchers.push(watcher);
                return;
            }
        }
        watcher();
    }

    pub(crate) fn close(&self, client_id: u64) {
        let watchers = {
            let mut lease = lock(&self.lease);
            if lease.owner == Some(client_id) {
                lease.owner = None;
            }
            std::mem::take(&mut lease.watchers)
        };
        self.open_clients.fetch_sub(1, Ordering::Relaxed);
        watchers.into_iter().for_each(|w| w());
    }

    /// `EOPNOTSUPP` unless the driver runs this kind of operation.
    pub fn check_op(&self, op: &accel_uapi::Op) -> Result<()> {
        if !self.info.ops.contains(&op.kind()) {
            bail!(
                EOPNOTSUPP,
                "accel{} ({}) does not support the {} operation",
                self.minor,
                self.info.driver,
                op.kind().name()
            );
        }
        Ok(())
    }

    /// The next job sequence number on this device.
    pub(crate) fn next_seqno(&self) -> u64 {
        self.reserve_seqnos(1)
    }

    /// Reserves `n` consecutive sequence numbers; returns the first.
    pub(crate) fn reserve_seqnos(&self, n: u64) -> u64 {
        self.seqno.fetch_add(n, Ordering::Relaxed) + 1
    }
}
