//! accel-hal: what a driver sees of the accel subsystem, and nothing more.
//!
//! A driver implements [`driver::Driver`] (with [`driver::DeviceMemory`] for memory it owns
//! and [`driver::Program`] for programs it loads) and reports errors through a
//! [`ras::RasSink`]. Jobs reach it as [`driver::JobOp`]s whose every buffer view the core
//! resolved and bounds-checked ([`bo::BoRange`]). Clients, namespaces, sockets and the
//! scheduler live above, in `accel-core`; drivers depend on this crate only, so they cannot
//! reach them. Host memory comes with the crate ([`mem::HostMemory`], [`driver::host`]), so
//! host-memory drivers stay small.

pub mod bo;
pub mod counters;
pub mod driver;
mod error;
pub mod fence;
pub mod files;
pub mod handles;
pub mod mem;
pub mod ras;
pub mod turns;
/// How long waiting threads poll before they block (shared with the client library).
pub use accel_uapi::spin;

use std::sync::{Mutex, MutexGuard};

pub use error::{Error, Result};

/// Locks a mutex, ignoring poisoning: state behind these mutexes stays consistent at every
/// unlock point, so a panicked holder leaves nothing half-done.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
