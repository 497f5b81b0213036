//! Flags of the syncobj requests, with DRM's values (`include/uapi/drm/drm.h`), so a port
//! of code written against `DRM_IOCTL_SYNCOBJ_*` keeps its constants.

/// Wait for every point (`DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL`); without it, for any one.
pub const WAIT_ALL: u32 = 1 << 0;
/// A point nothing was submitted for yet is waited for until it is submitted, then until
/// it signals (`DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT`); without it, such a point is `EINVAL`.
pub const WAIT_FOR_SUBMIT: u32 = 1 << 1;
/// A point counts as done once a fence is attached for it, signalled or not
/// (`DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE`).
pub const WAIT_AVAILABLE: u32 = 1 << 2;
/// accel's own: the wait's `timeout_ns` is relative to now, not an absolute
/// `CLOCK_MONOTONIC` deadline. (DRM has no such flag; libdrm converts relative timeouts
/// itself.)
pub const WAIT_RELATIVE: u32 = 1 << 31;
/// Flags a wait accepts; any other bit is `EINVAL`.
pub const WAIT_FLAGS: u32 = WAIT_ALL | WAIT_FOR_SUBMIT | WAIT_AVAILABLE | WAIT_RELATIVE;

/// Query the last submitted point instead of the last signalled one
/// (`DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED`).
pub const QUERY_LAST_SUBMITTED: u32 = 1 << 0;
