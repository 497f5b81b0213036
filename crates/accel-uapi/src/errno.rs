//! Errno-style error codes carried on the wire.
//!
//! The numbers are Linux's, so a C client can hand them straight to `strerror`.

use serde::{Deserialize, Serialize};

macro_rules! errnos {
    ($($name:ident = $val:literal, $desc:literal;)*) => {
        /// An errno-style error code. Values match Linux `errno.h`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[repr(u32)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Errno {
            $(#[doc = $desc] $name = $val,)*
        }

        impl Errno {
            /// The symbolic name, e.g. `"EBUSY"`.
            pub fn name(self) -> &'static str {
                match self { $(Errno::$name => stringify!($name),)* }
            }
            /// A short description, as `strerror` would give.
            pub fn description(self) -> &'static str {
                match self { $(Errno::$name => $desc,)* }
            }
            /// The code for a raw errno value, if it is one accel uses.
            pub fn from_raw(raw: u32) -> Option<Errno> {
                match raw { $($val => Some(Errno::$name),)* _ => None }
            }
        }
    };
}

errnos! {
    EPERM = 1, "operation not permitted";
    ENOENT = 2, "no such object";
    EINTR = 4, "interrupted";
    EIO = 5, "input/output error";
    E2BIG = 7, "argument list too long";
    EBADF = 9, "bad file descriptor";
    EAGAIN = 11, "resource temporarily unavailable";
    ENOMEM = 12, "out of memory";
    EACCES = 13, "permission denied";
    EFAULT = 14, "bad address";
    EBUSY = 16, "device or resource busy";
    EEXIST = 17, "already exists";
    ENODEV = 19, "no such device";
    EINVAL = 22, "invalid argument";
    ENOSPC = 28, "no space left on device";
    EPIPE = 32, "broken pipe";
    ERANGE = 34, "result out of range";
    ENOSYS = 38, "function not implemented";
    ETIME = 62, "timer expired";
    EPROTO = 71, "protocol error";
    EOVERFLOW = 75, "value too large for defined data type";
    EUSERS = 87, "too many users";
    EMSGSIZE = 90, "message too long";
    EOPNOTSUPP = 95, "operation not supported";
    ETIMEDOUT = 110, "timed out";
    ECONNREFUSED = 111, "connection refused";
    ECANCELED = 125, "operation canceled";
    // Later additions go last: the wire carries the declaration index (until the ABI
    // moves to raw values), so inserting in numeric order would renumber the others.
    EMFILE = 24, "too many open files";
    ENOTCONN = 107, "transport endpoint is not connected";
}

impl Errno {
    /// The raw errno value.
    pub fn raw(self) -> u32 {
        self as u32
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip() {
        for e in [Errno::EBUSY, Errno::ETIME, Errno::ECANCELED, Errno::EINVAL] {
            assert_eq!(Errno::from_raw(e.raw()), Some(e));
        }
        assert_eq!(Errno::EBUSY.raw(), 16);
        assert_eq!(Errno::from_raw(9999), None);
    }
}
