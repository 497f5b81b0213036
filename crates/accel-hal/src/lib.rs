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

/// Runs `f`, turning a panic inside it into `Err` with the panic's message: for code that
/// handles a client's bytes or calls a driver and must not take a daemon thread down with
/// it (a third-party parser's bug, a driver's). The panic hook has reported it already.
///
/// Only for calls whose state stays consistent at every unlock point, as [`lock`] assumes.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_caught_panic_is_its_message() {
        // (The default hook prints each panic; the other tests' hooks are left alone.)
        assert_eq!(super::catch_panic(|| 7), Ok(7));
        assert_eq!(super::catch_panic(|| -> u32 { panic!("static words") }), Err("static words".into()));
        let n = 3;
        assert_eq!(super::catch_panic(|| -> u32 { panic!("formatted {n}") }), Err("formatted 3".into()));
        assert_eq!(super::catch_panic(|| std::panic::panic_any(5u8)), Err::<(), _>("a panic without a message".into()));
    }
}
