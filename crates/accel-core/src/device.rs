//! A registered device: driver, category and open policy, scheduler, memory accounting.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accel_uapi::{Category, DeviceInfo};

use crate::driver::{Driver, DriverInfo};
use crate::sched::Scheduler;
use crate::{bail, lock, Error, Result};

/// How a device is registered.
pub struct DeviceConfig {
    /// The driver instance.
    pub driver: Arc<dyn Driver>,
    /// Category to run in; `None` takes the driver's first.
    pub category: Option<Category>,
    /// Job timeout for queues that do not set one.
    pub job_timeout: Duration,
}

impl DeviceConfig {
    /// A device with the driver's default category and a 10 s job timeout.
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        DeviceConfig {
            driver,
            category: None,
            job_timeout: Duration::from_secs(10),
        }
    }
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
    owner: Mutex<Option<u64>>,
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
            None => *info.categories.first().ok_or_else(|| {
                Error::new(accel_uapi::Errno::EINVAL, "driver supports no category")
            })?,
            Some(c) if info.categories.contains(&c) => c,
            Some(c) => bail!(
                EINVAL,
                "driver {} does not support the {} category",
                info.driver,
                c.name()
            ),
        };
        let sched = Scheduler::new(config.driver, &format!("accel{minor}")).map_err(|e| {
            Error::new(
                accel_uapi::Errno::ENOMEM,
                format!("starting scheduler: {e}"),
            )
        })?;
        Ok(Device {
            minor,
            info,
            category,
            job_timeout: config.job_timeout,
            sched,
            mem_used: Arc::new(AtomicU64::new(0)),
            owner: Mutex::new(None),
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
            open_clients: self.open_clients.load(Ordering::Relaxed),
            exclusive_owner: *lock(&self.owner),
        }
    }

    /// Opens the device for a client; an exclusive device held by another client is `EBUSY`.
    pub(crate) fn open(&self, client_id: u64) -> Result<()> {
        if self.category == Category::Exclusive {
            let mut owner = lock(&self.owner);
            if let Some(o) = *owner {
                bail!(
                    EBUSY,
                    "accel{} is exclusive and held by client {o}",
                    self.minor
                );
            }
            *owner = Some(client_id);
        }
        self.open_clients.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the device for a client, releasing an exclusive lease it held.
    pub(crate) fn close(&self, client_id: u64) {
        let mut owner = lock(&self.owner);
        if *owner == Some(client_id) {
            *owner = None;
        }
        self.open_clients.fetch_sub(1, Ordering::Relaxed);
    }

    /// The next job sequence number on this device.
    pub(crate) fn next_seqno(&self) -> u64 {
        self.seqno.fetch_add(1, Ordering::Relaxed) + 1
    }
}
