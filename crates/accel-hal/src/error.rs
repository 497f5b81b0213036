//! The core's error type: an errno-style code plus a message for humans.

use accel_uapi::Errno;

/// An error the core reports; it travels to the client as code + message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct Error {
    /// errno-style code.
    pub code: Errno,
    /// What went wrong.
    pub message: String,
}

impl Error {
    /// Builds an error from a code and a message.
    pub fn new(code: Errno, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }
}

/// Result alias used across the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns early with an [`Error`] built from a code and a format string.
#[macro_export]
macro_rules! bail {
    ($code:ident, $($fmt:tt)*) => {
        return Err($crate::Error::new(accel_uapi::Errno::$code, format!($($fmt)*)))
    };
}

impl From<Errno> for Error {
    fn from(code: Errno) -> Self {
        Error::new(code, code.description())
    }
}
