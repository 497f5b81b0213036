//! Errno-style error codes carried on the wire.
//!
//! The numbers are Linux's and travel as such (a `u32` on the wire, not an index), so a C
//! client can hand them straight to `strerror`. A value this side does not know decodes
//! as `EIO` (a newer peer may add codes in a minor version).

use serde::{Deserialize, Serialize};

macro_rules! errnos {
    ($($name:ident = $val:literal, $desc:literal;)*) => {
        /// An errno-style error code. Values match Linux `errno.h`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Errno {
            $(#[doc = $desc] $name = $val,)*
        }

        impl Errno {
            /// Every code, in numeric order.
            pub const ALL: &'static [Errno] = &[$(Errno::$name),*];

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
    EMFILE = 24, "too many open files";
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
    ENOBUFS = 105, "no buffer space available";
    ENOTCONN = 107, "transport endpoint is not connected";
    ETIMEDOUT = 110, "timed out";
    ECONNREFUSED = 111, "connection refused";
    EALREADY = 114, "already done";
    ECANCELED = 125, "operation canceled";
}

impl Errno {
    /// The raw errno value.
    pub fn raw(self) -> u32 {
        self as u32
    }
}

impl Serialize for Errno {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.raw())
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Errno::from_raw(u32::deserialize(d)?).unwrap_or(Errno::EIO))
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

    #[test]
    fn the_wire_carries_linux_numbers() {
        // postcard writes a u32 as a LEB128 varint: EPROTO is 71, EINVAL 22, ECANCELED 125.
        assert_eq!(postcard::to_stdvec(&Errno::EPROTO).unwrap(), [71]);
        assert_eq!(postcard::to_stdvec(&Errno::EINVAL).unwrap(), [22]);
        assert_eq!(postcard::to_stdvec(&Errno::ECANCELED).unwrap(), [125]);
        assert_eq!(postcard::from_bytes::<Errno>(&[110]).unwrap(), Errno::ETIMEDOUT);
        assert_eq!(postcard::from_bytes::<Errno>(&[0xe7, 0x07]).unwrap(), Errno::EIO, "unknown 999 reads as EIO");
    }
}
