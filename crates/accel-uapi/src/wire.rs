//! Framing: a fixed 16-byte header followed by a postcard-encoded body.
//!
//! The socket is `SOCK_SEQPACKET`, so one `sendmsg` is one message and no
//! length-delimited stream parsing is needed; the header's length still has to
//! match what arrived, which catches truncation.

use serde::{de::DeserializeOwned, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::Errno;

/// `"ACCL"` in little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ACCL");
/// ABI major version: changes break compatibility.
pub const ABI_MAJOR: u16 = 1;
/// ABI minor version: additions only.
pub const ABI_MINOR: u16 = 1;
/// Largest message either side accepts, header included.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 3;

/// Message direction, in the header's `kind` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// Client to daemon.
    Request = 1,
    /// Daemon to client.
    Reply = 2,
}

/// The fixed header in front of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Header {
    /// Always [`MAGIC`].
    pub magic: u32,
    /// [`ABI_MAJOR`] of the sender.
    pub abi_major: u16,
    /// [`Kind`] as u16.
    pub kind: u16,
    /// Request sequence number; a reply carries the request's.
    pub seq: u32,
    /// Length of the body after the header.
    pub body_len: u32,
}

/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = std::mem::size_of::<Header>();

/// Why bytes could not be decoded as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Sequence number, if the header could be read.
    pub seq: Option<u32>,
    /// The errno-style code to answer with.
    pub code: Errno,
    /// What was wrong.
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `body` behind a header. Fails only if the message would exceed [`MAX_MESSAGE`].
pub fn encode<T: Serialize>(kind: Kind, seq: u32, body: &T) -> Result<Vec<u8>, Errno> {
    let mut out = vec![0u8; HEADER_LEN];
    let mut out = postcard::to_extend(body, std::mem::take(&mut out)).map_err(|_| Errno::EINVAL)?;
    if out.len() > MAX_MESSAGE {
        return Err(Errno::EMSGSIZE);
    }
    let header = Header {
        magic: MAGIC,
        abi_major: ABI_MAJOR,
        kind: kind as u16,
        seq,
        body_len: (out.len() - HEADER_LEN) as u32,
    };
    out[..HEADER_LEN].copy_from_slice(header.as_bytes());
    Ok(out)
}

/// Decodes one message of the given kind. Never panics on any input.
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<(u32, T), DecodeError> {
    let fail = |seq, code, message: String| DecodeError { seq, code, message };
    let Ok((header, body)) = Header::read_from_prefix(bytes) else {
        return Err(fail(None, Errno::EPROTO, format!("message of {} bytes is shorter than the header", bytes.len())));
    };
    if header.magic != MAGIC {
        return Err(fail(None, Errno::EPROTO, format!("bad magic {:#010x}", header.magic)));
    }
    let seq = Some(header.seq);
    if header.abi_major != ABI_MAJOR {
        return Err(fail(
            seq,
            Errno::EPROTO,
            format!("ABI major {} is not supported (this side speaks {ABI_MAJOR})", header.abi_major),
        ));
    }
    if header.kind != kind as u16 {
        return Err(fail(seq, Errno::EPROTO, format!("unexpected message kind {}", header.kind)));
    }
    if header.body_len as usize != body.len() {
        return Err(fail(
            seq,
            Errno::EPROTO,
            format!("header says {} body bytes, {} arrived", header.body_len, body.len()),
        ));
    }
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok((header.seq, value)),
        Ok((_, rest)) => Err(fail(seq, Errno::EPROTO, format!("{} trailing bytes after the body", rest.len()))),
        Err(e) => Err(fail(seq, Errno::EINVAL, format!("malformed body: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BoHandle, Reply, Request};
    use proptest::prelude::*;

    #[test]
    fn request_round_trips() {
        let req = Request::BoClose { handle: BoHandle(0x1_0000_0002) };
        let bytes = encode(Kind::Request, 7, &req).unwrap();
        assert_eq!(decode::<Request>(Kind::Request, &bytes).unwrap(), (7, req));
    }

    #[test]
    fn truncated_message_is_rejected_with_its_seq() {
        let bytes = encode(Kind::Request, 9, &Request::BoCreate { size: 4096 }).unwrap();
        let err = decode::<Request>(Kind::Request, &bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!((err.seq, err.code), (Some(9), Errno::EPROTO));
    }

    #[test]
    fn wrong_kind_is_rejected() {
        let bytes = encode(Kind::Reply, 1, &Reply::Ok).unwrap();
        let err = decode::<Request>(Kind::Request, &bytes).unwrap_err();
        assert_eq!(err.code, Errno::EPROTO);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Request>(Kind::Request, &bytes);
        }

        #[test]
        fn bo_create_round_trips(seq in any::<u32>(), size in any::<u64>()) {
            let req = Request::BoCreate { size };
            let bytes = encode(Kind::Request, seq, &req).unwrap();
            prop_assert_eq!(decode::<Request>(Kind::Request, &bytes).unwrap(), (seq, req));
        }

        #[test]
        fn header_fuzzed_body_never_panics(seq in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let header = Header { magic: MAGIC, abi_major: ABI_MAJOR, kind: Kind::Request as u16, seq, body_len: body.len() as u32 };
            let mut bytes = header.as_bytes().to_vec();
            bytes.extend_from_slice(&body);
            if let Err(e) = decode::<Request>(Kind::Request, &bytes) {
                prop_assert_eq!(e.seq, Some(seq));
            }
        }
    }
}
