//! Whole netlink messages of the family on the wire: requests, replies, dumps, acks and
//! errors, error events, and decoding what a peer sent.

use super::*;

/// Bytes of a netlink message header (`struct nlmsghdr`).
pub(super) const NLMSG_HDRLEN: usize = 16;
/// Bytes of a generic netlink header (`struct genlmsghdr`).
const GENL_HDRLEN: usize = 4;

/// A family message being written: headers first, then attributes, framed in place in one
/// buffer (after what it held before, from `start`); [`Frame::finish`] fills in the length.
struct Frame {
    buf: Vec<u8>,
    start: usize,
}

impl Frame {
    fn new(cmd: RasCmd, flags: u16, seq: u32, body: usize) -> Frame {
        Self::after(Vec::with_capacity(NLMSG_HDRLEN + GENL_HDRLEN + body), cmd, flags, seq)
    }

    /// A message written at the end of `buf`.
    fn after(mut buf: Vec<u8>, cmd: RasCmd, flags: u16, seq: u32) -> Frame {
        let start = buf.len();
        buf.extend_from_slice(&[0; 4]); // nlmsg_len, filled in by finish
        buf.extend_from_slice(&FAMILY_ID.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        // Port id 0: the sender is the daemon, as the kernel is.
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&[cmd as u8, FAMILY_VERSION, 0, 0]);
        Frame { buf, start }
    }

    /// An attribute of `id` with `payload`, padded to 4 bytes.
    fn put(&mut self, id: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&id.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(self.buf.len() + (len.next_multiple_of(4) - len), 0);
    }

    /// A string attribute (NUL-terminated, as the kernel's `string` type): [`Frame::put`] of
    /// the text and a NUL, without making that payload first.
    fn put_str(&mut self, id: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&id.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.resize(self.buf.len() + 1 + (len.next_multiple_of(4) - len), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// Encodes a family message with the given netlink flags and sequence number. The family's
/// frames are laid out here directly, into one buffer (every reply and event is encoded
/// here); netlink-packet decodes them to the same message (tests).
pub fn encode(msg: RasMsg, flags: u16, seq: u32) -> Vec<u8> {
    let body = msg.buffer_len();
    let mut frame = Frame::new(msg.cmd, flags, seq, body);
    let at = frame.buf.len();
    frame.buf.resize(at + body, 0);
    msg.emit(&mut frame.buf[at..]);
    frame.finish()
}

/// The fields of one `error-event`, borrowed from the daemon's state: encoded straight into
/// a frame ([`ErrorEvent::encode`]), as every subscriber gets every event, or made a message
/// ([`ErrorEvent::msg`]); both give the same bytes (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorEvent<'a> {
    /// `device-name` as the receiver numbers devices.
    pub device_name: &'a str,
    /// `node-id`.
    pub node_id: u32,
    /// `node-name`.
    pub node_name: &'a str,
    /// `error-id`.
    pub error_id: u32,
    /// `error-name`.
    pub error_name: &'a str,
    /// The counter's value after the event (`error-value` saturates to u32).
    pub value: u64,
    /// `severity` index.
    pub severity: u32,
    /// `event-seq`.
    pub seq: u64,
    /// `event-timestamp`.
    pub timestamp_ns: u64,
    /// `event-kind`.
    pub kind: u32,
    /// `event-delta`.
    pub delta: u64,
}

impl ErrorEvent<'_> {
    /// No names, every number 0.
    pub const EMPTY: ErrorEvent<'static> = ErrorEvent {
        device_name: "",
        node_id: 0,
        node_name: "",
        error_id: 0,
        error_name: "",
        value: 0,
        severity: 0,
        seq: 0,
        timestamp_ns: 0,
        kind: 0,
        delta: 0,
    };

    /// The event's attributes, accel's included.
    fn attrs(&self) -> [RasAttr; 12] {
        [
            RasAttr::DeviceName(String::new()),
            RasAttr::NodeId(self.node_id),
            RasAttr::NodeName(String::new()),
            RasAttr::ErrorId(self.error_id),
            RasAttr::ErrorName(String::new()),
            RasAttr::ErrorValue(u32::try_from(self.value).unwrap_or(u32::MAX)),
            RasAttr::ErrorValueU64(self.value),
            RasAttr::Severity(self.severity),
            RasAttr::EventSeq(self.seq),
            RasAttr::EventTimestamp(self.timestamp_ns),
            RasAttr::EventKind(self.kind),
            RasAttr::EventDelta(self.delta),
        ]
    }

    /// The text of a string attribute of [`Self::attrs`] (its value there is left empty, so
    /// listing the attributes allocates nothing).
    fn text(&self, a: &RasAttr) -> Option<&str> {
        match a {
            RasAttr::DeviceName(_) => Some(self.device_name),
            RasAttr::NodeName(_) => Some(self.node_name),
            RasAttr::ErrorName(_) => Some(self.error_name),
            _ => None,
        }
    }

    /// Where attribute `id` of the `error-event` set is in [`Self::attrs`], if it is there.
    fn slot(id: u16) -> Option<usize> {
        static IDS: std::sync::OnceLock<[Option<u16>; 12]> = std::sync::OnceLock::new();
        let ids = IDS.get_or_init(|| Self::EMPTY.attrs().map(|a| a.id(AttrSet::ErrorEvent)));
        ids.iter().position(|i| *i == Some(id))
    }

    /// An `error-event` (or `dump-events` part) read in place: the names borrow `bytes`, and
    /// nothing is allocated (what a netlink monitor in C does with `nla_parse`). Attributes the
    /// message lacks read as 0 or "" (a subscriber without `accel-ext` gets no sequence
    /// number, timestamp, kind or delta); `value` is the 64-bit value, else the 32-bit one.
    /// Fails as [`decode`] does on a malformed frame, and on another command.
    pub fn decode(bytes: &[u8]) -> Result<ErrorEvent<'_>, DecodeError> {
        if !of_family(bytes) {
            return Err(DecodeError::from(format!("not a {FAMILY_NAME} message")));
        }
        let (_, _, cmd, attrs) = family_frame(bytes)?;
        if cmd.attr_set() != AttrSet::ErrorEvent {
            return Err(DecodeError::from(format!("{} is no event", cmd.name())));
        }
        let mut e = Self::EMPTY;
        let (mut value32, mut value64) = (None, None);
        for_each_attr(attrs, |kind, v| {
            let bad = || DecodeError::from(format!("attribute {kind}: malformed payload of {} bytes", v.len()));
            let text = || text_of(v).ok_or_else(bad);
            let u32 = || u32_of(v).ok_or_else(bad);
            let u64 = || u64_of(v).ok_or_else(bad);
            match Self::slot(kind) {
                Some(0) => e.device_name = text()?,
                Some(1) => e.node_id = u32()?,
                Some(2) => e.node_name = text()?,
                Some(3) => e.error_id = u32()?,
                Some(4) => e.error_name = text()?,
                Some(5) => value32 = Some(u32()?),
                Some(6) => value64 = Some(u64()?),
                Some(7) => e.severity = u32()?,
                Some(8) => e.seq = u64()?,
                Some(9) => e.timestamp_ns = u64()?,
                Some(10) => e.kind = u32()?,
                Some(11) => e.delta = u64()?,
                // The rest (a request's `accel-ext`, newer attributes) the full decoder
                // checks; here they are skipped, as netlink skips what it does not know.
                _ => {}
            }
            Ok(())
        })?;
        e.value = value64.or(value32.map(u64::from)).unwrap_or(0);
        Ok(e)
    }

    /// The event as a `cmd` message (`error-event`, or a `dump-events` part).
    pub fn msg(&self, cmd: RasCmd) -> RasMsg {
        let attrs = self
            .attrs()
            .into_iter()
            .map(|a| match (self.text(&a), a) {
                (Some(t), RasAttr::DeviceName(_)) => RasAttr::DeviceName(t.into()),
                (Some(t), RasAttr::NodeName(_)) => RasAttr::NodeName(t.into()),
                (Some(t), RasAttr::ErrorName(_)) => RasAttr::ErrorName(t.into()),
                (_, a) => a,
            })
            .collect();
        RasMsg::new(cmd, attrs)
    }

    /// The event encoded as `encode(self.msg(cmd), flags, seq)` would (with only the kernel's
    /// attributes unless `ext`), written straight into one buffer: the attributes' ids (and
    /// whether each is accel's) are looked up once per command, not per event.
    pub fn encode(&self, cmd: RasCmd, ext: bool, flags: u16, seq: u32) -> Vec<u8> {
        self.encode_after(Vec::with_capacity(NLMSG_HDRLEN + GENL_HDRLEN + 160), cmd, ext, flags, seq)
    }

    /// [`ErrorEvent::encode`] at the end of `buf` (which is returned with the message after
    /// what it held): many events framed in one buffer, with no allocation each.
    pub fn encode_after(&self, buf: Vec<u8>, cmd: RasCmd, ext: bool, flags: u16, seq: u32) -> Vec<u8> {
        type Ids = [Option<(u16, bool)>; 12];
        static IDS: std::sync::OnceLock<Vec<(RasCmd, Ids)>> = std::sync::OnceLock::new();
        let ids = IDS.get_or_init(|| {
            COMMANDS
                .iter()
                .filter_map(|c| RasCmd::from_id(c.1))
                .map(|cmd| {
                    let set = cmd.attr_set();
                    let kernel = (cmd as u8) < ACCEL_CMD_BASE;
                    (cmd, Self::EMPTY.attrs().map(|a| a.id(set).map(|id| (id, kernel && a.is_extension(set)))))
                })
                .collect()
        });
        let Some((_, ids)) = ids.iter().find(|(c, _)| *c == cmd) else {
            let mut buf = buf;
            buf.extend_from_slice(&encode(self.msg(cmd), flags, seq));
            return buf;
        };
        let value32 = u32::try_from(self.value).unwrap_or(u32::MAX);
        let mut frame = Frame::after(buf, cmd, flags, seq);
        // In the order of `attrs`.
        let payloads: [&[u8]; 12] = [
            &[],
            &self.node_id.to_ne_bytes(),
            &[],
            &self.error_id.to_ne_bytes(),
            &[],
            &value32.to_ne_bytes(),
            &self.value.to_ne_bytes(),
            &self.severity.to_ne_bytes(),
            &self.seq.to_ne_bytes(),
            &self.timestamp_ns.to_ne_bytes(),
            &self.kind.to_ne_bytes(),
            &self.delta.to_ne_bytes(),
        ];
        let texts = [Some(self.device_name), None, Some(self.node_name), None, Some(self.error_name)];
        for (i, slot) in ids.iter().enumerate() {
            let Some((id, extension)) = *slot else { continue };
            if extension && !ext {
                continue;
            }
            match texts.get(i).copied().flatten() {
                Some(t) => frame.put_str(id, t),
                None => frame.put(id, payloads[i]),
            }
        }
        frame.finish()
    }
}

/// A request: `NLM_F_REQUEST | NLM_F_ACK`, plus `NLM_F_DUMP` for dumps.
pub fn request(msg: RasMsg, dump: bool, seq: u32) -> Vec<u8> {
    encode(msg, NLM_F_REQUEST | NLM_F_ACK | if dump { NLM_F_DUMP } else { 0 }, seq)
}

/// One part of a dump reply (`NLM_F_MULTI`).
pub fn multipart(msg: RasMsg, seq: u32) -> Vec<u8> {
    encode(msg, NLM_F_MULTIPART, seq)
}

/// `NLMSG_DONE`, ending a dump.
pub fn done(seq: u32) -> Vec<u8> {
    let nl: NetlinkMessage<GenlMessage<RasMsg>> =
        NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Done(Default::default()));
    to_bytes(nl, NLM_F_MULTIPART, seq)
}

/// The fields of a request's `nlmsghdr` a reply echoes: its first 16 bytes (or what there
/// is of them), and its sequence number and port id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeader {
    /// The raw header (up to 16 bytes).
    pub raw: Vec<u8>,
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
}

/// Reads the header of a request, however broken the rest is.
pub fn request_header(bytes: &[u8]) -> RequestHeader {
    let word = |at: usize| bytes.get(at..at + 4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let half = |at: usize| bytes.get(at..at + 2).map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
    RequestHeader {
        raw: bytes[..bytes.len().min(16)].to_vec(),
        kind: half(4),
        flags: half(6),
        seq: word(8),
        pid: word(12),
    }
}

/// `NLMSG_ERROR` for `req`: `-errno` (0 is an ACK), the request's header echoed (capped, as
/// the kernel does with `NETLINK_CAP_ACK`), and the message as the extended ACK's
/// `NLMSGERR_ATTR_MSG` when there is one.
pub fn error_for(req: &RequestHeader, errno: i32, message: &str) -> Vec<u8> {
    let mut err = ErrorMessage::default();
    err.code = std::num::NonZeroI32::new(-errno.abs());
    let mut payload = req.raw.clone();
    payload.resize(16, 0);
    let mut flags = NLM_F_CAPPED;
    if !message.is_empty() && errno != 0 {
        flags |= NLM_F_ACK_TLVS;
        let len = 4 + message.len() + 1;
        payload.extend_from_slice(&(len as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(message.as_bytes());
        payload.push(0);
        payload.resize(payload.len().next_multiple_of(4), 0);
    }
    err.header = payload;
    let nl: NetlinkMessage<GenlMessage<RasMsg>> =
        NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Error(err));
    let mut bytes = to_bytes(nl, flags, req.seq);
    bytes[12..16].copy_from_slice(&req.pid.to_ne_bytes());
    bytes
}

/// `NLMSG_ERROR` with `-errno` and no request to echo (tests, old callers).
pub fn error(errno: i32, seq: u32) -> Vec<u8> {
    error_for(&RequestHeader { seq, ..Default::default() }, errno, "")
}

/// The extended ACK message of an `NLMSG_ERROR`'s payload (after the error code), if any.
pub fn ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // With NLM_F_CAPPED the request's header (16 bytes) precedes the TLVs.
    let start = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        payload.get(0..4).map_or(16, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let tlvs = payload.get(start..)?;
    for nla in NlasIterator::new(tlvs) {
        let nla: NlaBuffer<&[u8]> = nla.ok()?;
        if nla.kind() == NLMSGERR_ATTR_MSG {
            return parse_string(nla.value()).ok();
        }
    }
    None
}

/// What a received netlink message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A family message, with its flags and sequence number.
    Msg {
        /// The message.
        msg: RasMsg,
        /// Netlink flags.
        flags: u16,
        /// Sequence number.
        seq: u32,
    },
    /// End of a dump.
    Done,
    /// An error (`Some(-errno)`) or an ack (`None`), with the extended ACK's message.
    Error(Option<i32>, Option<String>),
}

/// Decodes one netlink message of the family. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Parsed, DecodeError> {
    if of_family(bytes) {
        decode_family(bytes)
    } else {
        decode_netlink(bytes)
    }
}

/// A message of the family, parsed straight from its frame: the generic layers cost more
/// than the message itself, and every event a subscriber gets comes through here. It checks
/// what netlink-packet checks (lengths of the netlink and generic headers and of every
/// attribute; unknown attributes skipped) and agrees with it on every input (tests).
pub(super) fn decode_family(bytes: &[u8]) -> Result<Parsed, DecodeError> {
    let (flags, seq, cmd, attrs_bytes) = family_frame(bytes)?;
    let set = cmd.attr_set();
    let mut attrs = Vec::with_capacity(16);
    for_each_attr(attrs_bytes, |kind, value| {
        if let Some(a) = RasAttr::parse(set, kind, value)? {
            attrs.push(a);
        }
        Ok(())
    })?;
    Ok(Parsed::Msg { msg: RasMsg { cmd, attrs }, flags, seq })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Whether `bytes` carry a message of the family (its netlink type is the family's id).
fn of_family(bytes: &[u8]) -> bool {
    bytes.len() >= 6 && u16_at(bytes, 4) == FAMILY_ID
}

/// The netlink flags, sequence number, command and attribute bytes of a frame of the family,
/// its lengths checked as netlink-packet checks them.
fn family_frame(bytes: &[u8]) -> Result<(u16, u32, RasCmd, &[u8]), DecodeError> {
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if bytes.len() < NLMSG_HDRLEN {
        return Err(DecodeError::from(format!(
            "a netlink message of {} bytes is shorter than its header",
            bytes.len()
        )));
    }
    let len = u32_at(bytes, 0) as usize;
    if !(NLMSG_HDRLEN..=bytes.len()).contains(&len) {
        return Err(DecodeError::from(format!("netlink length field {len} for a buffer of {} bytes", bytes.len())));
    }
    let (flags, seq) = (u16_at(bytes, 6), u32_at(bytes, 8));
    let payload = &bytes[NLMSG_HDRLEN..len];
    let Some((header, rest)) = payload.split_at_checked(GENL_HDRLEN) else {
        return Err(DecodeError::from(format!(
            "a generic netlink header needs {GENL_HDRLEN} bytes, not {}",
            payload.len()
        )));
    };
    let cmd = RasCmd::from_id(header[0]).ok_or_else(|| DecodeError::from(format!("unknown command {}", header[0])))?;
    Ok((flags, seq, cmd, rest))
}

/// Calls `f` with each attribute's type (flags masked off) and payload, in order.
fn for_each_attr<'a>(
    mut rest: &'a [u8],
    mut f: impl FnMut(u16, &'a [u8]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    while !rest.is_empty() {
        let nla_len = if rest.len() < 4 { 0 } else { u16_at(rest, 0) as usize };
        if nla_len < 4 || nla_len > rest.len() {
            return Err(DecodeError::from("malformed attribute"));
        }
        f(u16_at(rest, 2) & NLA_TYPE_MASK, &rest[4..nla_len])?;
        rest = &rest[nla_len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(())
}

/// Decodes any netlink message through netlink-packet: acks, errors, the end of a dump.
pub(super) fn decode_netlink(bytes: &[u8]) -> Result<Parsed, DecodeError> {
    let nl = RasNetlink::deserialize(bytes)?;
    if nl.header.message_type >= 16 && nl.header.message_type != FAMILY_ID {
        return Err(DecodeError::from(format!("not the {FAMILY_NAME} family (type {})", nl.header.message_type)));
    }
    Ok(match nl.payload {
        NetlinkPayload::InnerMessage(genl) => {
            Parsed::Msg { msg: genl.payload, flags: nl.header.flags, seq: nl.header.sequence_number }
        }
        NetlinkPayload::Done(_) => Parsed::Done,
        NetlinkPayload::Error(e) => Parsed::Error(e.code.map(|c| c.get()), ack_message(nl.header.flags, &e.header)),
        _ => return Err(DecodeError::from("unexpected netlink message type")),
    })
}

/// Whether a request asked for a dump.
pub fn is_dump(flags: u16) -> bool {
    flags & NLM_F_DUMP == NLM_F_DUMP
}
