//! Caps on what one client or namespace may hold, so nobody can exhaust a daemon-wide
//! resource (descriptors above all: every buffer keeps a memfd open in the daemon).
//!
//! Each descriptor the daemon keeps for a client is charged three times: to the client,
//! to its namespace and to the daemon's budget. The daemon's budget keeps a reserve that
//! only admins may use, so an admin can always connect and clean up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use accel_uapi::Errno;

pub use crate::counters::Charge;

use crate::{Error, Result};

/// Resource caps. Zero in a per-client or per-namespace field means "no cap".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Descriptors the daemon may hold for one client (buffers, rings, exported fences).
    pub fds_per_client: u64,
    /// Descriptors the daemon may hold for one non-root namespace, all its clients together.
    pub fds_per_namespace: u64,
    /// Handles one client may hold, all kinds together (buffers, queues, fences, syncobjs).
    pub objects_per_client: u64,
    /// Handles one non-root namespace's clients may hold together.
    pub objects_per_namespace: u64,
    /// Jobs one client may have submitted and not yet done, socket and rings together (each
    /// holds daemon memory while it waits, whether or not the client kept its fence).
    pub jobs_per_client: u64,
    /// Largest single buffer (created or imported), in bytes.
    pub max_buffer_bytes: u64,
    /// Descriptors the daemon may use in all (set from `RLIMIT_NOFILE` by the daemon).
    pub fds_total: u64,
    /// Part of `fds_total` that only admins may use.
    pub admin_reserve: u64,
    /// Size the RAS log may reach before it is compacted (current state plus the recent
    /// events, written atomically over the old log), in bytes.
    pub ras_log_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fds_per_client: 1024,
            fds_per_namespace: 4096,
            objects_per_client: 65536,
            objects_per_namespace: 262_144,
            jobs_per_client: 16384,
            max_buffer_bytes: 64 << 30,
            fds_total: u64::MAX,
            admin_reserve: 0,
            ras_log_max_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// Fits the daemon-wide budget to a descriptor limit: a tenth (at least 64) is kept
    /// for admins, and a few for the daemon's own files.
    pub fn for_fd_limit(mut self, nofile: u64) -> Limits {
        self.fds_total = nofile.saturating_sub(32);
        self.admin_reserve = (nofile / 10).max(64).min(self.fds_total / 2);
        self
    }
}

/// Descriptor counters at one level (client, namespace, daemon).
pub type FdCount = Arc<AtomicU64>;

/// Charges `n` descriptors to a client, its namespace (unless root) and the daemon, or
/// fails with `EMFILE` naming the level that is full. The charges drop with the object.
pub(crate) fn charge_fds(
    limits: &Limits,
    n: u64,
    client: &FdCount,
    namespace: Option<&FdCount>,
    daemon: &FdCount,
    admin: bool,
) -> Result<Vec<Charge>> {
    let full = |what: &str, used: &FdCount, limit: u64| {
        Error::new(
            Errno::EMFILE,
            format!(
                "{what} holds {} daemon descriptors of its limit of {limit}; close buffers or rings first",
                used.load(Ordering::Relaxed)
            ),
        )
    };
    let mut charges = Vec::with_capacity(3);
    charges.push(
        Charge::try_new(client, n, cap(limits.fds_per_client))
            .ok_or_else(|| full("this client", client, limits.fds_per_client))?,
    );
    if let Some(ns) = namespace {
        charges.push(
            Charge::try_new(ns, n, cap(limits.fds_per_namespace))
                .ok_or_else(|| full("this namespace", ns, limits.fds_per_namespace))?,
        );
    }
    charges.push(charge_daemon(limits, n, daemon, admin)?);
    Ok(charges)
}

/// A client's jobs submitted and not yet done: each job holds a charge until it is freed.
#[derive(Debug, Clone)]
pub struct JobBudget {
    used: Arc<AtomicU64>,
    limit: u64,
}

impl JobBudget {
    /// A budget of `limit` jobs (0: no cap).
    pub fn new(limit: u64) -> JobBudget {
        JobBudget { used: Arc::default(), limit }
    }

    /// Charges one job, or fails with `EAGAIN` when the client has `limit` not yet done.
    pub fn charge(&self) -> Result<Charge> {
        Charge::try_new(&self.used, 1, cap(self.limit)).ok_or_else(|| {
            Error::new(
                Errno::EAGAIN,
                format!(
                    "this client has {} jobs submitted and not yet done (jobs_per_client); wait for some to finish",
                    self.limit
                ),
            )
        })
    }
}

/// A per-client or per-namespace limit as a bound: zero means no cap.
fn cap(limit: u64) -> u64 {
    if limit == 0 {
        u64::MAX
    } else {
        limit
    }
}

/// Charges `n` descriptors to the daemon's budget alone; non-admins may not take the
/// admins' reserve (`EMFILE`).
pub(crate) fn charge_daemon(limits: &Limits, n: u64, daemon: &FdCount, admin: bool) -> Result<Charge> {
    let total = if admin { limits.fds_total } else { limits.fds_total.saturating_sub(limits.admin_reserve) };
    Charge::try_new(daemon, n, total).ok_or_else(|| {
        Error::new(
            Errno::EMFILE,
            format!(
                "the daemon's descriptor budget is used up ({} of {total} for non-admins; {} kept for admins)",
                daemon.load(Ordering::Relaxed),
                limits.admin_reserve
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_caps_and_admins_get_the_reserve() {
        let limits = Limits { fds_per_client: 3, fds_per_namespace: 5, ..Limits::default() }.for_fd_limit(1000);
        assert_eq!((limits.fds_total, limits.admin_reserve), (968, 100));
        let (c1, c2, ns, daemon) = (FdCount::default(), FdCount::default(), FdCount::default(), FdCount::default());
        let a = charge_fds(&limits, 3, &c1, Some(&ns), &daemon, false).unwrap();
        let err = charge_fds(&limits, 1, &c1, Some(&ns), &daemon, false).unwrap_err();
        assert_eq!(err.code, Errno::EMFILE);
        assert!(err.message.contains("client"), "{}", err.message);
        let b = charge_fds(&limits, 2, &c2, Some(&ns), &daemon, false).unwrap();
        let err = charge_fds(&limits, 1, &c2, Some(&ns), &daemon, false).unwrap_err();
        assert!(err.message.contains("namespace"), "{}", err.message);
        // A failed charge leaves nothing behind.
        assert_eq!((c1.load(Ordering::Relaxed), c2.load(Ordering::Relaxed), ns.load(Ordering::Relaxed)), (3, 2, 5));
        drop((a, b));
        assert_eq!(daemon.load(Ordering::Relaxed), 0);

        daemon.store(limits.fds_total - limits.admin_reserve, Ordering::Relaxed);
        let err = charge_fds(&limits, 1, &FdCount::default(), None, &daemon, false).unwrap_err();
        assert!(err.message.contains("kept for admins"), "{}", err.message);
        charge_fds(&limits, 1, &FdCount::default(), None, &daemon, true).unwrap();
    }
}
