//! The RAS netlink family: nlmsghdr + genlmsghdr + attributes, encoded with
//! `netlink-packet-core` / `netlink-packet-generic`.
//!
//! It is the kernel's `drm-ras` family (same name, version, command and attribute
//! ids) plus accel's additions, numbered after the kernel's, so a drm-ras client
//! works unchanged. `specs/drm-ras.yaml` describes the family in YNL form; a test
//! checks it against [`ATTRIBUTES`] and [`COMMANDS`] and against what the encoder emits.
//!
//! Messages travel on the daemon socket inside [`crate::Request::Netlink`] /
//! [`crate::Reply::Netlink`]; events arrive on a connection that joined the
//! `error-report` group with [`crate::Request::RasSubscribe`].

use netlink_packet_core::{
    emit_u32, emit_u64, parse_string, parse_u32, parse_u64, parse_u8, DecodeError, Emitable, ErrorContext,
    ErrorMessage, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, ParseableParametrized,
    NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

/// Family name (the kernel's).
pub const FAMILY_NAME: &str = "drm-ras";
/// Family version (the kernel's).
pub const FAMILY_VERSION: u8 = 1;
/// The family's id on the accel socket (there is no genl controller to resolve it).
pub const FAMILY_ID: u16 = 0x20;
/// The multicast group error events go to.
pub const MCGRP_ERROR_REPORT: &str = "error-report";
/// `node-type` value of error-counter nodes (the only kind).
pub const NODE_TYPE_ERROR_COUNTER: u32 = 1;

/// Attribute sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrSet {
    /// `node-attrs` (drm-ras).
    Node,
    /// `error-counter-attrs` (drm-ras, extended).
    ErrorCounter,
    /// `reporter-attrs` (accel).
    Reporter,
}

impl AttrSet {
    /// Name in the YNL spec.
    pub fn name(self) -> &'static str {
        match self {
            AttrSet::Node => "node-attrs",
            AttrSet::ErrorCounter => "error-counter-attrs",
            AttrSet::Reporter => "reporter-attrs",
        }
    }
}

/// Attribute value types, as the YNL spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    /// `u8`.
    U8,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `string` (NUL-terminated).
    String,
}

impl AttrType {
    /// Name in the YNL spec.
    pub fn name(self) -> &'static str {
        match self {
            AttrType::U8 => "u8",
            AttrType::U32 => "u32",
            AttrType::U64 => "u64",
            AttrType::String => "string",
        }
    }
}

/// Every attribute: (set, name, id, type). The kernel's come first in each set.
pub const ATTRIBUTES: &[(AttrSet, &str, u16, AttrType)] = &[
    (AttrSet::Node, "node-id", 1, AttrType::U32),
    (AttrSet::Node, "device-name", 2, AttrType::String),
    (AttrSet::Node, "node-name", 3, AttrType::String),
    (AttrSet::Node, "node-type", 4, AttrType::U32),
    (AttrSet::Node, "node-health", 5, AttrType::U32),
    (AttrSet::Node, "device-health", 6, AttrType::U32),
    (AttrSet::ErrorCounter, "node-id", 1, AttrType::U32),
    (AttrSet::ErrorCounter, "error-id", 2, AttrType::U32),
    (AttrSet::ErrorCounter, "error-name", 3, AttrType::String),
    (AttrSet::ErrorCounter, "error-value", 4, AttrType::U32),
    (AttrSet::ErrorCounter, "error-value-u64", 5, AttrType::U64),
    (AttrSet::ErrorCounter, "severity", 6, AttrType::U32),
    (AttrSet::ErrorCounter, "threshold", 7, AttrType::U64),
    (AttrSet::ErrorCounter, "event-seq", 8, AttrType::U64),
    (AttrSet::ErrorCounter, "event-timestamp", 9, AttrType::U64),
    (AttrSet::ErrorCounter, "event-kind", 10, AttrType::U32),
    (AttrSet::ErrorCounter, "event-delta", 11, AttrType::U64),
    (AttrSet::ErrorCounter, "count", 12, AttrType::U64),
    (AttrSet::Reporter, "node-id", 1, AttrType::U32),
    (AttrSet::Reporter, "error-count", 2, AttrType::U64),
    (AttrSet::Reporter, "recovery-count", 3, AttrType::U64),
    (AttrSet::Reporter, "grace-period-ms", 4, AttrType::U64),
    (AttrSet::Reporter, "auto-recover", 5, AttrType::U8),
    (AttrSet::Reporter, "healthy", 6, AttrType::U8),
    (AttrSet::Reporter, "diag-key", 7, AttrType::String),
    (AttrSet::Reporter, "diag-value", 8, AttrType::String),
    (AttrSet::Reporter, "node-health", 9, AttrType::U32),
];

macro_rules! commands {
    ($($variant:ident = $id:literal, $name:literal, $set:ident, $doc:literal;)*) => {
        /// Commands: the kernel's drm-ras ones (1–6), then accel's.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RasCmd {
            $(#[doc = $doc] $variant = $id,)*
        }

        /// Every command: (name, id, attribute set).
        pub const COMMANDS: &[(&str, u8, AttrSet)] = &[$(($name, $id, AttrSet::$set),)*];

        impl RasCmd {
            /// The command with this id.
            pub fn from_id(id: u8) -> Option<RasCmd> {
                match id { $($id => Some(RasCmd::$variant),)* _ => None }
            }
            /// The attribute set its messages use.
            pub fn attr_set(self) -> AttrSet {
                match self { $(RasCmd::$variant => AttrSet::$set,)* }
            }
            /// Name in the YNL spec.
            pub fn name(self) -> &'static str {
                match self { $(RasCmd::$variant => $name,)* }
            }
        }
    };
}

commands! {
    ListNodes = 1, "list-nodes", Node, "Dump every node.";
    GetErrorCounter = 2, "get-error-counter", ErrorCounter, "Do: one counter (node-id, error-id). Dump: a node's counters.";
    ClearErrorCounter = 3, "clear-error-counter", ErrorCounter, "Set a counter to zero (admin).";
    ErrorEvent = 4, "error-event", ErrorCounter, "Notification on the error-report group; dump: recent events (resync).";
    GetErrorThreshold = 5, "get-error-threshold", ErrorCounter, "A counter's threshold.";
    SetErrorThreshold = 6, "set-error-threshold", ErrorCounter, "Set a counter's threshold (admin).";
    GetHealth = 7, "get-health", Reporter, "A node's reporter and health (do), or every node's (dump).";
    Recover = 8, "recover", Reporter, "Run a node's recovery (admin).";
    Diagnose = 9, "diagnose", Reporter, "A node's state as key/value pairs (dump).";
    SetReporter = 10, "set-reporter", Reporter, "Set grace period / auto-recover of a node's reporter (admin).";
    InjectError = 11, "inject-error", ErrorCounter, "Inject errors through the driver (admin, test devices).";
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RasAttr {
    /// `node-id` (every set).
    NodeId(u32),
    /// `device-name`.
    DeviceName(String),
    /// `node-name`.
    NodeName(String),
    /// `node-type`.
    NodeType(u32),
    /// `node-health` (node set) / reporter's `node-health`: a [`crate::Health`] index.
    NodeHealth(u32),
    /// `device-health`.
    DeviceHealth(u32),
    /// `error-id`.
    ErrorId(u32),
    /// `error-name`.
    ErrorName(String),
    /// `error-value` (u32, saturating: the kernel's type).
    ErrorValue(u32),
    /// `error-value-u64`.
    ErrorValueU64(u64),
    /// `severity`: a [`crate::Severity`] index.
    Severity(u32),
    /// `threshold`.
    Threshold(u64),
    /// `event-seq`.
    EventSeq(u64),
    /// `event-timestamp` (`CLOCK_MONOTONIC` ns).
    EventTimestamp(u64),
    /// `event-kind`: 0 error, 1 cleared, 2 threshold set, 3 recovered.
    EventKind(u32),
    /// `event-delta`.
    EventDelta(u64),
    /// `count` (inject).
    Count(u64),
    /// `error-count`.
    ErrorCount(u64),
    /// `recovery-count`.
    RecoveryCount(u64),
    /// `grace-period-ms`.
    GracePeriodMs(u64),
    /// `auto-recover`.
    AutoRecover(u8),
    /// `healthy`.
    Healthy(u8),
    /// `diag-key`.
    DiagKey(String),
    /// `diag-value`.
    DiagValue(String),
}

impl RasAttr {
    /// Spec name of the attribute.
    pub fn name(&self, set: AttrSet) -> &'static str {
        let id = self.id(set);
        ATTRIBUTES.iter().find(|a| a.0 == set && a.2 == id).map_or("?", |a| a.1)
    }

    /// Id of the attribute within `set`.
    pub fn id(&self, set: AttrSet) -> u16 {
        use RasAttr::*;
        match (set, self) {
            (_, NodeId(_)) => 1,
            (_, DeviceName(_)) => 2,
            (_, NodeName(_)) => 3,
            (_, NodeType(_)) => 4,
            (AttrSet::Reporter, NodeHealth(_)) => 9,
            (_, NodeHealth(_)) => 5,
            (_, DeviceHealth(_)) => 6,
            (_, ErrorId(_)) => 2,
            (_, ErrorName(_)) => 3,
            (_, ErrorValue(_)) => 4,
            (_, ErrorValueU64(_)) => 5,
            (_, Severity(_)) => 6,
            (_, Threshold(_)) => 7,
            (_, EventSeq(_)) => 8,
            (_, EventTimestamp(_)) => 9,
            (_, EventKind(_)) => 10,
            (_, EventDelta(_)) => 11,
            (_, Count(_)) => 12,
            (_, ErrorCount(_)) => 2,
            (_, RecoveryCount(_)) => 3,
            (_, GracePeriodMs(_)) => 4,
            (_, AutoRecover(_)) => 5,
            (_, Healthy(_)) => 6,
            (_, DiagKey(_)) => 7,
            (_, DiagValue(_)) => 8,
        }
    }

    fn parse(set: AttrSet, kind: u16, v: &[u8]) -> Result<Option<RasAttr>, DecodeError> {
        use RasAttr::*;
        let u32v = || parse_u32(v).context("u32 attribute");
        let u64v = || parse_u64(v).context("u64 attribute");
        let s = || parse_string(v).context("string attribute");
        Ok(Some(match (set, kind) {
            (_, 1) => NodeId(u32v()?),
            (AttrSet::Node, 2) => DeviceName(s()?),
            (AttrSet::Node, 3) => NodeName(s()?),
            (AttrSet::Node, 4) => NodeType(u32v()?),
            (AttrSet::Node, 5) => NodeHealth(u32v()?),
            (AttrSet::Node, 6) => DeviceHealth(u32v()?),
            (AttrSet::ErrorCounter, 2) => ErrorId(u32v()?),
            (AttrSet::ErrorCounter, 3) => ErrorName(s()?),
            (AttrSet::ErrorCounter, 4) => ErrorValue(u32v()?),
            (AttrSet::ErrorCounter, 5) => ErrorValueU64(u64v()?),
            (AttrSet::ErrorCounter, 6) => Severity(u32v()?),
            (AttrSet::ErrorCounter, 7) => Threshold(u64v()?),
            (AttrSet::ErrorCounter, 8) => EventSeq(u64v()?),
            (AttrSet::ErrorCounter, 9) => EventTimestamp(u64v()?),
            (AttrSet::ErrorCounter, 10) => EventKind(u32v()?),
            (AttrSet::ErrorCounter, 11) => EventDelta(u64v()?),
            (AttrSet::ErrorCounter, 12) => Count(u64v()?),
            (AttrSet::Reporter, 2) => ErrorCount(u64v()?),
            (AttrSet::Reporter, 3) => RecoveryCount(u64v()?),
            (AttrSet::Reporter, 4) => GracePeriodMs(u64v()?),
            (AttrSet::Reporter, 5) => AutoRecover(parse_u8(v).context("u8 attribute")?),
            (AttrSet::Reporter, 6) => Healthy(parse_u8(v).context("u8 attribute")?),
            (AttrSet::Reporter, 7) => DiagKey(s()?),
            (AttrSet::Reporter, 8) => DiagValue(s()?),
            (AttrSet::Reporter, 9) => NodeHealth(u32v()?),
            // Unknown attributes are skipped, as netlink does, so newer peers interoperate.
            _ => return Ok(None),
        }))
    }
}

/// An attribute bound to the set it is encoded in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetAttr(AttrSet, RasAttr);

impl Nla for SetAttr {
    fn value_len(&self) -> usize {
        use RasAttr::*;
        match &self.1 {
            DeviceName(s) | NodeName(s) | ErrorName(s) | DiagKey(s) | DiagValue(s) => s.len() + 1,
            AutoRecover(_) | Healthy(_) => 1,
            NodeId(_) | NodeType(_) | NodeHealth(_) | DeviceHealth(_) | ErrorId(_) | ErrorValue(_) | Severity(_)
            | EventKind(_) => 4,
            ErrorValueU64(_) | Threshold(_) | EventSeq(_) | EventTimestamp(_) | EventDelta(_) | Count(_)
            | ErrorCount(_) | RecoveryCount(_) | GracePeriodMs(_) => 8,
        }
    }

    fn kind(&self) -> u16 {
        self.1.id(self.0)
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use RasAttr::*;
        match &self.1 {
            DeviceName(s) | NodeName(s) | ErrorName(s) | DiagKey(s) | DiagValue(s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            AutoRecover(v) | Healthy(v) => buf[0] = *v,
            NodeId(v) | NodeType(v) | NodeHealth(v) | DeviceHealth(v) | ErrorId(v) | ErrorValue(v) | Severity(v)
            | EventKind(v) => {
                let _ = emit_u32(buf, *v);
            }
            ErrorValueU64(v) | Threshold(v) | EventSeq(v) | EventTimestamp(v) | EventDelta(v) | Count(v)
            | ErrorCount(v) | RecoveryCount(v) | GracePeriodMs(v) => {
                let _ = emit_u64(buf, *v);
            }
        }
    }
}

/// One family message: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RasMsg {
    /// The command.
    pub cmd: RasCmd,
    /// Attributes (in the command's set).
    pub attrs: Vec<RasAttr>,
}

impl RasMsg {
    /// A message.
    pub fn new(cmd: RasCmd, attrs: Vec<RasAttr>) -> Self {
        RasMsg { cmd, attrs }
    }

    fn set_attrs(&self) -> Vec<SetAttr> {
        self.attrs.iter().map(|a| SetAttr(self.cmd.attr_set(), a.clone())).collect()
    }
}

macro_rules! accessors {
    ($($name:ident: $variant:ident -> $ty:ty;)*) => {
        impl RasMsg {
            $(
                #[doc = concat!("The `", stringify!($variant), "` attribute, if present.")]
                pub fn $name(&self) -> Option<$ty> {
                    self.attrs.iter().find_map(|a| if let RasAttr::$variant(v) = a { Some(v.clone()) } else { None })
                }
            )*
        }
    };
}

accessors! {
    node_id: NodeId -> u32;
    device_name: DeviceName -> String;
    node_name: NodeName -> String;
    node_health: NodeHealth -> u32;
    error_id: ErrorId -> u32;
    error_name: ErrorName -> String;
    value: ErrorValueU64 -> u64;
    severity: Severity -> u32;
    threshold: Threshold -> u64;
    event_seq: EventSeq -> u64;
    event_timestamp: EventTimestamp -> u64;
    event_kind: EventKind -> u32;
    event_delta: EventDelta -> u64;
    count: Count -> u64;
    error_count: ErrorCount -> u64;
    recovery_count: RecoveryCount -> u64;
    grace_period_ms: GracePeriodMs -> u64;
    auto_recover: AutoRecover -> u8;
    healthy: Healthy -> u8;
}

impl GenlFamily for RasMsg {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn family_id(&self) -> u16 {
        FAMILY_ID
    }
    fn command(&self) -> u8 {
        self.cmd as u8
    }
    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for RasMsg {
    fn buffer_len(&self) -> usize {
        self.set_attrs().as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.set_attrs().as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for RasMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd =
            RasCmd::from_id(header.cmd).ok_or_else(|| DecodeError::from(format!("unknown command {}", header.cmd)))?;
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla: NlaBuffer<&[u8]> = nla.context("malformed attribute")?;
            if let Some(a) = RasAttr::parse(cmd.attr_set(), nla.kind(), nla.value())? {
                attrs.push(a);
            }
        }
        Ok(RasMsg { cmd, attrs })
    }
}

/// A complete netlink message of the family.
pub type RasNetlink = NetlinkMessage<GenlMessage<RasMsg>>;

/// Sets flags and sequence number, fixes up length and type, and serialises.
fn to_bytes(mut nl: RasNetlink, flags: u16, seq: u32) -> Vec<u8> {
    nl.header.flags = flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// Encodes a family message with the given netlink flags and sequence number.
pub fn encode(msg: RasMsg, flags: u16, seq: u32) -> Vec<u8> {
    to_bytes(NetlinkMessage::from(GenlMessage::from_payload(msg)), flags, seq)
}

/// A request: `NLM_F_REQUEST`, plus `NLM_F_DUMP` for dumps.
pub fn request(msg: RasMsg, dump: bool, seq: u32) -> Vec<u8> {
    encode(msg, NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 }, seq)
}

/// One part of a dump reply (`NLM_F_MULTIPART`).
pub fn multipart(msg: RasMsg, seq: u32) -> Vec<u8> {
    encode(msg, NLM_F_MULTIPART, seq)
}

/// `NLMSG_DONE`, ending a dump.
pub fn done(seq: u32) -> Vec<u8> {
    let nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Done(Default::default()));
    to_bytes(nl, NLM_F_MULTIPART, seq)
}

/// `NLMSG_ERROR` carrying `-errno` (0 is an ack).
pub fn error(errno: i32, seq: u32) -> Vec<u8> {
    let mut err = ErrorMessage::default();
    err.code = std::num::NonZeroI32::new(-errno.abs());
    to_bytes(NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Error(err)), 0, seq)
}

/// What a received netlink message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A family message, with the request's flags and sequence number.
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
    /// An error (`Some(-errno)`) or an ack (`None`).
    Error(Option<i32>),
}

/// Decodes one netlink message of the family. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Parsed, DecodeError> {
    let nl = RasNetlink::deserialize(bytes)?;
    if nl.header.message_type >= 16 && nl.header.message_type != FAMILY_ID {
        return Err(DecodeError::from(format!("not the {FAMILY_NAME} family (type {})", nl.header.message_type)));
    }
    Ok(match nl.payload {
        NetlinkPayload::InnerMessage(genl) => {
            Parsed::Msg { msg: genl.payload, flags: nl.header.flags, seq: nl.header.sequence_number }
        }
        NetlinkPayload::Done(_) => Parsed::Done,
        NetlinkPayload::Error(e) => Parsed::Error(e.code.map(|c| c.get())),
        _ => return Err(DecodeError::from("unexpected netlink message type")),
    })
}

/// Whether a request asked for a dump.
pub fn is_dump(flags: u16) -> bool {
    flags & NLM_F_DUMP == NLM_F_DUMP
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_attrs() -> Vec<(AttrSet, RasAttr)> {
        use RasAttr::*;
        vec![
            (AttrSet::Node, NodeId(7)),
            (AttrSet::Node, DeviceName("accel0".into())),
            (AttrSet::Node, NodeName("memory".into())),
            (AttrSet::Node, NodeType(NODE_TYPE_ERROR_COUNTER)),
            (AttrSet::Node, NodeHealth(2)),
            (AttrSet::Node, DeviceHealth(3)),
            (AttrSet::ErrorCounter, NodeId(1)),
            (AttrSet::ErrorCounter, ErrorId(2)),
            (AttrSet::ErrorCounter, ErrorName("ecc".into())),
            (AttrSet::ErrorCounter, ErrorValue(5)),
            (AttrSet::ErrorCounter, ErrorValueU64(u64::MAX)),
            (AttrSet::ErrorCounter, Severity(1)),
            (AttrSet::ErrorCounter, Threshold(10)),
            (AttrSet::ErrorCounter, EventSeq(99)),
            (AttrSet::ErrorCounter, EventTimestamp(123)),
            (AttrSet::ErrorCounter, EventKind(0)),
            (AttrSet::ErrorCounter, EventDelta(4)),
            (AttrSet::ErrorCounter, Count(3)),
            (AttrSet::Reporter, NodeId(1)),
            (AttrSet::Reporter, ErrorCount(1)),
            (AttrSet::Reporter, RecoveryCount(2)),
            (AttrSet::Reporter, GracePeriodMs(1000)),
            (AttrSet::Reporter, AutoRecover(1)),
            (AttrSet::Reporter, Healthy(0)),
            (AttrSet::Reporter, DiagKey("k".into())),
            (AttrSet::Reporter, DiagValue("v".into())),
            (AttrSet::Reporter, NodeHealth(1)),
        ]
    }

    #[test]
    fn every_attribute_is_emitted_with_its_table_id_and_size() {
        let attrs = all_attrs();
        assert_eq!(attrs.len(), ATTRIBUTES.len(), "every table entry has a sample");
        for (set, attr) in attrs {
            let sa = SetAttr(set, attr.clone());
            let entry = ATTRIBUTES.iter().find(|a| a.0 == set && a.2 == sa.kind()).expect("id in table");
            let size = match entry.3 {
                AttrType::U8 => 1,
                AttrType::U32 => 4,
                AttrType::U64 => 8,
                AttrType::String => sa.value_len(),
            };
            assert_eq!(sa.value_len(), size, "{} in {}", entry.1, set.name());
            assert_eq!(attr.name(set), entry.1);
        }
    }

    #[test]
    fn messages_round_trip_through_netlink_framing() {
        for &(name, id, set) in COMMANDS {
            let cmd = RasCmd::from_id(id).unwrap();
            assert_eq!(cmd.name(), name);
            let attrs: Vec<RasAttr> = all_attrs().into_iter().filter(|(s, _)| *s == set).map(|(_, a)| a).collect();
            let bytes = request(RasMsg::new(cmd, attrs.clone()), true, 42);
            match decode(&bytes).unwrap() {
                Parsed::Msg { msg, flags, seq } => {
                    assert_eq!((msg.cmd, msg.attrs, seq, is_dump(flags)), (cmd, attrs, 42, true));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(decode(&done(3)).unwrap(), Parsed::Done);
        assert_eq!(decode(&error(22, 3)).unwrap(), Parsed::Error(Some(-22)));
    }

    #[test]
    fn a_drm_ras_list_nodes_request_is_understood() {
        // What a drm-ras client sends: nlmsghdr(type=family, flags=REQUEST|DUMP) + genlmsghdr(cmd=1, version=1).
        let mut bytes = vec![0u8; 20];
        bytes[0..4].copy_from_slice(&20u32.to_ne_bytes());
        bytes[4..6].copy_from_slice(&FAMILY_ID.to_ne_bytes());
        bytes[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        bytes[8..12].copy_from_slice(&9u32.to_ne_bytes());
        bytes[16] = 1; // DRM_RAS_CMD_LIST_NODES
        bytes[17] = 1; // version
        match decode(&bytes).unwrap() {
            Parsed::Msg { msg, flags, seq } => {
                assert_eq!((msg.cmd, msg.attrs.len(), is_dump(flags), seq), (RasCmd::ListNodes, 0, true, 9))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode(&bytes);
        }
    }
}
