//! accel wire ABI (the analogue of `include/uapi/drm`).
//!
//! Types only: the message header ([`wire`]), requests and replies ([`proto`]) with their
//! fixed tags ([`catalog`]), and
//! errno-style codes ([`Errno`]). Both the daemon and the client library depend on
//! this crate and on nothing else of each other.

pub mod catalog;
pub mod errno;
pub mod proto;
pub mod ras;
pub mod ring;
pub mod shm;
pub mod spin;
pub mod syncobj;
pub mod transport;
pub mod wire;

pub use errno::Errno;
pub use proto::*;
