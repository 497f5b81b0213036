//! Framing: a fixed 16-byte little-endian header followed by a postcard-encoded body
//! whose first varint is the message's **tag**, a fixed number from the message's table
//! ([`Message::TAGS`]), not its declaration order. Request and reply tags are disjoint, so
//! a body of one kind never decodes as the other. docs/PROTOCOL.md is the full spec.
//!
//! The socket is `SOCK_SEQPACKET`, so one `sendmsg` is one message and no
//! length-delimited stream parsing is needed; the header's length still has to
//! match what arrived, which catches truncation.

use serde::{de::DeserializeOwned, Serialize};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::Errno;

/// `"ACCL"` in little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ACCL");
/// ABI major version: changes break compatibility.
pub const ABI_MAJOR: u16 = 3;
/// ABI minor version: additions only.
pub const ABI_MINOR: u16 = 6;
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

/// The fixed header in front of every message; every field little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Header {
    /// Always [`MAGIC`] (the bytes `ACCL`).
    pub magic: U32,
    /// [`ABI_MAJOR`] of the sender.
    pub abi_major: U16,
    /// [`Kind`] as u16.
    pub kind: U16,
    /// Request sequence number; a reply carries the request's.
    pub seq: U32,
    /// Length of the body after the header.
    pub body_len: U32,
}

impl Header {
    /// A header of this ABI for a body of `body_len` bytes.
    pub fn new(kind: Kind, seq: u32, body_len: u32) -> Header {
        Header {
            magic: MAGIC.into(),
            abi_major: ABI_MAJOR.into(),
            kind: (kind as u16).into(),
            seq: seq.into(),
            body_len: body_len.into(),
        }
    }
}

/// A message type: its direction and the fixed tag of each variant, in declaration
/// order (the tag table is the ABI; the order of the Rust enum is not).
pub trait Message: Serialize + DeserializeOwned {
    /// Which direction it travels.
    const KIND: Kind;
    /// `TAGS[i]` is the wire tag of the variant declared `i`-th.
    const TAGS: &'static [u32];
}

/// Reads a LEB128 varint `u32` (postcard's encoding) from the front of `bytes`.
fn read_varint(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(5).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(value).ok().map(|v| (v, i + 1));
        }
    }
    None
}

fn write_varint(mut v: u32, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
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

/// The tag of an encoded message (the varint after the header), if it has one.
pub fn tag_of(message: &[u8]) -> Option<u32> {
    read_varint(message.get(HEADER_LEN..)?).map(|(t, _)| t)
}

/// Encodes `body` behind a header, its variant index replaced by its tag. Fails only if
/// the message would exceed [`MAX_MESSAGE`].
pub fn encode<T: Message>(kind: Kind, seq: u32, body: &T) -> Result<Vec<u8>, Errno> {
    let plain = postcard::to_stdvec(body).map_err(|_| Errno::EINVAL)?;
    let (index, n) = read_varint(&plain).ok_or(Errno::EINVAL)?;
    let tag = *T::TAGS.get(index as usize).ok_or(Errno::EINVAL)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + 2);
    out.resize(HEADER_LEN, 0);
    write_varint(tag, &mut out);
    out.extend_from_slice(&plain[n..]);
    if out.len() > MAX_MESSAGE {
        return Err(Errno::EMSGSIZE);
    }
    let header = Header::new(kind, seq, (out.len() - HEADER_LEN) as u32);
    out[..HEADER_LEN].copy_from_slice(header.as_bytes());
    Ok(out)
}

/// Encodes `empty` — a variant whose last field is an empty sequence of byte strings, such as
/// `Reply::Netlink(vec![])` — with that sequence holding `items`, laid end to end in one
/// buffer, `ends[i]` where the `i`-th ends: the bytes [`encode`] gives for the variant holding
/// them, with no buffer per item and no second pass (a subscriber's events travel this way).
/// Fails as `encode` does, and with `EINVAL` if `empty` does not end in an empty sequence.
pub fn encode_with_items<T: Message>(
    kind: Kind,
    seq: u32,
    empty: &T,
    items: &[u8],
    ends: &[usize],
) -> Result<Vec<u8>, Errno> {
    let head = encode(kind, seq, empty)?;
    // An empty sequence is its length, the varint 0, last.
    let Some((&0, prefix)) = head.split_last() else { return Err(Errno::EINVAL) };
    let mut out = Vec::with_capacity(head.len() + items.len() + 3 * ends.len() + 4);
    out.extend_from_slice(prefix);
    write_varint(u32::try_from(ends.len()).map_err(|_| Errno::EMSGSIZE)?, &mut out);
    let mut start = 0;
    for &end in ends {
        let item = items.get(start..end).ok_or(Errno::EINVAL)?;
        write_varint(item.len() as u32, &mut out);
        out.extend_from_slice(item);
        start = end;
    }
    if out.len() > MAX_MESSAGE {
        return Err(Errno::EMSGSIZE);
    }
    let header = Header::new(kind, seq, (out.len() - HEADER_LEN) as u32);
    out[..HEADER_LEN].copy_from_slice(header.as_bytes());
    Ok(out)
}

/// Decodes one message of the given kind. Never panics on any input.
pub fn decode<T: Message>(kind: Kind, bytes: &[u8]) -> Result<(u32, T), DecodeError> {
    let fail = |seq, code, message: String| DecodeError { seq, code, message };
    let Ok((header, body)) = Header::read_from_prefix(bytes) else {
        return Err(fail(None, Errno::EPROTO, format!("message of {} bytes is shorter than the header", bytes.len())));
    };
    if header.magic.get() != MAGIC {
        return Err(fail(None, Errno::EPROTO, format!("bad magic {:#010x}", header.magic.get())));
    }
    let seq = Some(header.seq.get());
    if header.abi_major.get() != ABI_MAJOR {
        return Err(fail(
            seq,
            Errno::EPROTO,
            format!("ABI major {} is not supported (this side speaks {ABI_MAJOR})", header.abi_major.get()),
        ));
    }
    if header.kind.get() != kind as u16 || T::KIND != kind {
        return Err(fail(seq, Errno::EPROTO, format!("unexpected message kind {}", header.kind.get())));
    }
    if header.body_len.get() as usize != body.len() {
        return Err(fail(
            seq,
            Errno::EPROTO,
            format!("header says {} body bytes, {} arrived", header.body_len.get(), body.len()),
        ));
    }
    let Some((tag, n)) = read_varint(body) else {
        return Err(fail(seq, Errno::EINVAL, "malformed body: no message tag".into()));
    };
    let Some(index) = T::TAGS.iter().position(|t| *t == tag) else {
        return Err(fail(seq, Errno::EPROTO, format!("unknown {kind:?} tag {tag}")));
    };
    let mut plain = Vec::with_capacity(body.len() + 1);
    write_varint(index as u32, &mut plain);
    plain.extend_from_slice(&body[n..]);
    match postcard::take_from_bytes::<T>(&plain) {
        Ok((value, [])) => Ok((header.seq.get(), value)),
        Ok((_, rest)) => Err(fail(seq, Errno::EPROTO, format!("{} trailing bytes after the body", rest.len()))),
        Err(e) => Err(fail(seq, Errno::EINVAL, format!("malformed body: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BoHandle, Reply, Request};
    use proptest::prelude::*;

    proptest! {
        /// A reply of netlink messages written from one buffer is the reply encoded whole.
        #[test]
        fn items_written_in_place_give_the_encoded_reply(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..200),
            seq in any::<u32>(),
        ) {
            let (mut items, mut ends) = (Vec::new(), Vec::new());
            for m in &msgs {
                items.extend_from_slice(m);
                ends.push(items.len());
            }
            let whole = encode(Kind::Reply, seq, &Reply::Netlink(msgs.clone()));
            let in_place = encode_with_items(Kind::Reply, seq, &Reply::Netlink(Vec::new()), &items, &ends);
            prop_assert_eq!(&in_place, &whole);
            if let Ok(bytes) = in_place {
                prop_assert_eq!(decode::<Reply>(Kind::Reply, &bytes).unwrap(), (seq, Reply::Netlink(msgs)));
            }
        }
    }

    #[test]
    fn items_need_a_variant_ending_in_an_empty_sequence() {
        let not_a_sequence = Reply::Ok;
        assert_eq!(encode_with_items(Kind::Reply, 1, &not_a_sequence, b"ab", &[2]), Err(Errno::EINVAL));
        assert_eq!(encode_with_items(Kind::Reply, 1, &Reply::Netlink(Vec::new()), b"ab", &[3]), Err(Errno::EINVAL));
    }

    #[test]
    fn request_round_trips() {
        let req = Request::BoClose { handle: BoHandle(0x1_0000_0002) };
        let bytes = encode(Kind::Request, 7, &req).unwrap();
        assert_eq!(decode::<Request>(Kind::Request, &bytes).unwrap(), (7, req));
    }

    #[test]
    fn truncated_message_is_rejected_with_its_seq() {
        let bytes = encode(Kind::Request, 9, &Request::BoCreate { size: 4096, region: 0 }).unwrap();
        let err = decode::<Request>(Kind::Request, &bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!((err.seq, err.code), (Some(9), Errno::EPROTO));
    }

    #[test]
    fn tags_come_from_the_table_and_a_reply_body_is_no_request() {
        let bytes = encode(Kind::Request, 1, &Request::ListDevices).unwrap();
        assert_eq!(&bytes[HEADER_LEN..], [2], "ListDevices is tag 2");
        let ok = encode(Kind::Reply, 1, &Reply::Ok).unwrap();
        assert_eq!(&ok[HEADER_LEN..], [0x81, 0x02], "Ok is tag 257");
        let mut forged = ok.clone();
        forged[..HEADER_LEN].copy_from_slice(Header::new(Kind::Request, 1, 2).as_bytes());
        let err = decode::<Request>(Kind::Request, &forged).unwrap_err();
        assert_eq!(err.code, Errno::EPROTO, "{err}");
        assert_eq!(&bytes[..4], b"ACCL");
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut out = Vec::new();
            write_varint(v, &mut out);
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
        assert_eq!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), None);
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
            let req = Request::BoCreate { size, region: 0 };
            let bytes = encode(Kind::Request, seq, &req).unwrap();
            prop_assert_eq!(decode::<Request>(Kind::Request, &bytes).unwrap(), (seq, req));
        }

        #[test]
        fn header_fuzzed_body_never_panics(seq in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let header = Header::new(Kind::Request, seq, body.len() as u32);
            let mut bytes = header.as_bytes().to_vec();
            bytes.extend_from_slice(&body);
            if let Err(e) = decode::<Request>(Kind::Request, &bytes) {
                prop_assert_eq!(e.seq, Some(seq));
            }
        }
    }
}
