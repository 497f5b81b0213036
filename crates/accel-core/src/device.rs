//! A registered device: driver, category and open policy, scheduler, memory accounting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use accel_uapi::{Category, DeviceInfo, Errno};

use crate::driver::{Driver, DriverInfo};
use crate::ring::RingPoller;
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
}

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
    pub(crate) mem_used: Arc<AtomicU64>,
    pub(crate) poller: RingPoller,
    lease: Mutex<Lease>,
    lease_cond: Condvar,
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

/// How often a lease waiter checks whether its client went away.
const LEASE_POLL: Duration = Duration::from_millis(50);

impl Device {
    /// Registers a device under `minor` and starts its scheduler.
    pub fn new(minor: u32, config: DeviceConfig) -> Result<Device> {
        let info = config.driver.info();
        let category = match config.category {
            None => *info.categories.first().ok_or_else(|| Error::new(Errno::EINVAL, "driver supports no category"))?,
            Some(c) if info.categories.contains(&c) => c,
            Some(c) => bail!(EINVAL, "driver {} does not support the {} category", info.driver, c.name()),
        };
        let sched_config = SchedConfig { hang_limit: config.hang_limit, fifo: category == Category::Oneshot };
        let sched = Scheduler::new(config.driver, &format!("accel{minor}"), sched_config)
            .map_err(|e| Error::new(Errno::ENOMEM, format!("starting scheduler: {e}")))?;
        Ok(Device {
            minor,
            info,
            category,
            job_timeout: config.job_timeout,
            sched,
            mem_used: Arc::new(AtomicU64::new(0)),
            poller: RingPoller::new()?,
            lease: Mutex::new(Lease::default()),
            lease_cond: Condvar::new(),
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
            queued_jobs: self.sched.queued() as u64,
            resets: self.sched.resets(),
            wedged: self.sched.is_wedged(),
            open_clients: self.open_clients.load(Ordering::Relaxed),
            exclusive_owner: lock(&self.lease).owner,
        }
    }

    /// Opens the device for a client.
    ///
    /// An exclusive device held by another client is `EBUSY` at once when `wait` is
    /// zero; otherwise the client queues (first come, first served) for up to `wait`.
    /// A waiter whose client went away (`interrupted`) leaves the queue with `ECANCELED`.
    pub(crate) fn open(&self, client_id: u64, wait: Duration, interrupted: &dyn Fn() -> bool) -> Result<()> {
        if self.category == Category::Exclusive {
            self.acquire_lease(client_id, wait, interrupted)?;
        }
        self.open_clients.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn acquire_lease(&self, client_id: u64, wait: Duration, interrupted: &dyn Fn() -> bool) -> Result<()> {
        let mut lease = lock(&self.lease);
        if lease.owner.is_none() && lease.waiters.is_empty() {
            lease.owner = Some(client_id);
            return Ok(());
        }
        if wait.is_zero() {
            let holder = lease.owner.map_or("a waiting client".into(), |o| format!("client {o}"));
            bail!(EBUSY, "accel{} is exclusive and held by {holder}", self.minor);
        }
        lease.waiters.push_back(client_id);
        let deadline = Instant::now().checked_add(wait);
        loop {
            if lease.owner.is_none() && lease.waiters.front() == Some(&client_id) {
                lease.waiters.pop_front();
                lease.owner = Some(client_id);
                return Ok(());
            }
            let now = Instant::now();
            let give_up = if deadline.is_some_and(|d| d <= now) {
                Some(Error::new(Errno::EBUSY, format!("accel{} still held after waiting {wait:?}", self.minor)))
            } else if interrupted() {
                Some(Error::new(Errno::ECANCELED, "client went away while waiting for the lease"))
            } else {
                None
            };
            if let Some(err) = give_up {
                lease.waiters.retain(|w| *w != client_id);
                self.lease_cond.notify_all();
                return Err(err);
            }
            let slice = deadline.map_or(LEASE_POLL, |d| (d - now).min(LEASE_POLL));
            lease = self.lease_cond.wait_timeout(lease, slice).unwrap_or_else(|e| e.into_inner()).0;
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
        let mut lease = lock(&self.lease);
        lease.waiters.retain(|w| *w != client_id);
        self.lease_cond.notify_all();
    }

    pub(crate) fn close(&self, client_id: u64) {
        let mut lease = lock(&self.lease);
        if lease.owner == Some(client_id) {
            lease.owner = None;
            self.lease_cond.notify_all();
        }
        self.open_clients.fetch_sub(1, Ordering::Relaxed);
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

impl Drop for Device {
    fn drop(&mut self) {
        self.poller.stop();
    }
}
