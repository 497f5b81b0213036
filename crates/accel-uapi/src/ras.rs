//! The RAS netlink family: nlmsghdr + genlmsghdr + attributes, encoded with
//! `netlink-packet-core` / `netlink-packet-generic`.
//!
//! It is the kernel's `drm-ras` family: the kernel's commands and attributes (and those of
//! the upstream threshold and error-event proposals) keep their ids and answer with exactly
//! the kernel's attributes, so a tool written from the kernel's spec works unchanged. accel's
//! additions live where upstream cannot collide with them: attributes from
//! [`ACCEL_ATTR_BASE`] (sent only when a request carries `accel-ext`) and commands from
//! [`ACCEL_CMD_BASE`]. `specs/drm-ras.yaml` describes the family in YNL form; tests check
//! it against [`ATTRIBUTES`] and [`COMMANDS`], against the kernel's genetlink schema, and
//! drive the daemon with a spec-driven codec built from the kernel's own spec file.
//!
//! Messages travel on the daemon socket inside [`crate::Request::Netlink`] /
//! [`crate::Reply::Netlink`]; events arrive on a connection that joined the
//! `error-report` group with [`crate::Request::RasSubscribe`].

use netlink_packet_core::{
    emit_u32, emit_u64, parse_string, DecodeError, Emitable, ErrorContext, ErrorMessage, NetlinkDeserializable,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NlaBuffer, NlasIterator, ParseableParametrized,
    NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::{GenlCtrlAttrs, McastGrpAttrs, OpAttrs};
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

/// Family name (the kernel's).
pub const FAMILY_NAME: &str = "drm-ras";
/// Family version (the kernel's).
pub const FAMILY_VERSION: u8 = 1;
/// The family's id on the accel socket; clients resolve it by name through the controller
/// ([`ctrl_get_family`]), as with any generic netlink family.
pub const FAMILY_ID: u16 = 0x20;
/// The generic netlink controller's family id (`GENL_ID_CTRL`).
pub const GENL_ID_CTRL: u16 = 0x10;
/// The multicast group error events go to (the upstream error-event patch's name).
pub const MCGRP_ERROR_REPORT: &str = "error-report";
/// The group's id, as `CTRL_CMD_GETFAMILY` reports it.
pub const MCGRP_ERROR_REPORT_ID: u32 = 1;
/// `node-type` value of error-counter nodes (the only kind).
pub const NODE_TYPE_ERROR_COUNTER: u32 = 1;
/// First id of accel's attributes inside the kernel's attribute sets: far above anything
/// upstream will number, so accel's additions never collide with the kernel's.
pub const ACCEL_ATTR_BASE: u16 = 0x1000;
/// First id of accel's own commands: the kernel numbers its commands from 1 upwards.
pub const ACCEL_CMD_BASE: u8 = 128;

/// `NLM_F_ACK`: the sender wants an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_CAPPED`: an error message carries only the request's header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS`: an error message carries extended-ack attributes.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable message.
pub const NLMSGERR_ATTR_MSG: u16 = 1;

/// Attribute sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrSet {
    /// `node-attrs` (drm-ras).
    Node,
    /// `error-counter-attrs` (drm-ras, with the upstream threshold proposal).
    ErrorCounter,
    /// `error-event-attrs` (the upstream error-event proposal).
    ErrorEvent,
    /// `reporter-attrs` (accel's own).
    Reporter,
}

impl AttrSet {
    /// Every set.
    pub const ALL: [AttrSet; 4] = [AttrSet::Node, AttrSet::ErrorCounter, AttrSet::ErrorEvent, AttrSet::Reporter];

    /// Name in the YNL spec.
    pub fn name(self) -> &'static str {
        match self {
            AttrSet::Node => "node-attrs",
            AttrSet::ErrorCounter => "error-counter-attrs",
            AttrSet::ErrorEvent => "error-event-attrs",
            AttrSet::Reporter => "reporter-attrs",
        }
    }
}

/// Attribute value types, as the YNL spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    /// `flag` (no payload).
    Flag,
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
            AttrType::Flag => "flag",
            AttrType::U8 => "u8",
            AttrType::U32 => "u32",
            AttrType::U64 => "u64",
            AttrType::String => "string",
        }
    }
}

const EXT: u16 = ACCEL_ATTR_BASE;

/// Every attribute: (set, name, id, type). The kernel's ids (and the upstream proposals')
/// come first; accel's start at [`ACCEL_ATTR_BASE`] with `accel-ext`, the request flag that
/// asks for them — replies to a request without it carry exactly the kernel's attributes.
pub const ATTRIBUTES: &[(AttrSet, &str, u16, AttrType)] = &[
    (AttrSet::Node, "node-id", 1, AttrType::U32),
    (AttrSet::Node, "device-name", 2, AttrType::String),
    (AttrSet::Node, "node-name", 3, AttrType::String),
    (AttrSet::Node, "node-type", 4, AttrType::U32),
    (AttrSet::Node, "accel-ext", EXT, AttrType::Flag),
    (AttrSet::Node, "node-health", EXT + 1, AttrType::U32),
    (AttrSet::Node, "device-health", EXT + 2, AttrType::U32),
    (AttrSet::ErrorCounter, "node-id", 1, AttrType::U32),
    (AttrSet::ErrorCounter, "error-id", 2, AttrType::U32),
    (AttrSet::ErrorCounter, "error-name", 3, AttrType::String),
    (AttrSet::ErrorCounter, "error-value", 4, AttrType::U32),
    (AttrSet::ErrorCounter, "error-threshold", 5, AttrType::U32),
    (AttrSet::ErrorCounter, "accel-ext", EXT, AttrType::Flag),
    (AttrSet::ErrorCounter, "error-value-u64", EXT + 1, AttrType::U64),
    (AttrSet::ErrorCounter, "severity", EXT + 2, AttrType::U32),
    (AttrSet::ErrorCounter, "count", EXT + 3, AttrType::U64),
    (AttrSet::ErrorEvent, "device-name", 1, AttrType::String),
    (AttrSet::ErrorEvent, "node-id", 2, AttrType::U32),
    (AttrSet::ErrorEvent, "node-name", 3, AttrType::String),
    (AttrSet::ErrorEvent, "error-id", 4, AttrType::U32),
    (AttrSet::ErrorEvent, "error-name", 5, AttrType::String),
    (AttrSet::ErrorEvent, "error-value", 6, AttrType::U32),
    (AttrSet::ErrorEvent, "accel-ext", EXT, AttrType::Flag),
    (AttrSet::ErrorEvent, "error-value-u64", EXT + 1, AttrType::U64),
    (AttrSet::ErrorEvent, "severity", EXT + 2, AttrType::U32),
    (AttrSet::ErrorEvent, "event-seq", EXT + 3, AttrType::U64),
    (AttrSet::ErrorEvent, "event-timestamp", EXT + 4, AttrType::U64),
    (AttrSet::ErrorEvent, "event-kind", EXT + 5, AttrType::U32),
    (AttrSet::ErrorEvent, "event-delta", EXT + 6, AttrType::U64),
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

/// The entry of attribute `name` in `set`.
pub fn attr_by_name(set: AttrSet, name: &str) -> Option<&'static (AttrSet, &'static str, u16, AttrType)> {
    ATTRIBUTES.iter().find(|a| a.0 == set && a.1 == name)
}

/// How an attribute's payload becomes the attribute (see `RasAttr::parser`): `None` if the
/// payload is malformed.
type Parse = fn(&[u8]) -> Option<RasAttr>;

/// A `u8` payload: exactly one byte.
fn u8_of(v: &[u8]) -> Option<u8> {
    <[u8; 1]>::try_from(v).ok().map(|b| b[0])
}

/// A `u32` payload: exactly four bytes, native byte order.
fn u32_of(v: &[u8]) -> Option<u32> {
    v.try_into().ok().map(u32::from_ne_bytes)
}

/// A `u64` payload: exactly eight bytes, native byte order.
fn u64_of(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_ne_bytes)
}

/// A `string` payload: UTF-8, one trailing NUL dropped.
fn text_of(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v.strip_suffix(&[0]).unwrap_or(v)).ok()
}

/// Each set's attributes (id, name, type, parser), looked up by id when a message is
/// parsed: the names are matched once, not for every attribute of every message.
fn by_id(set: AttrSet, id: u16) -> Option<&'static (&'static str, AttrType, Parse)> {
    /// A slot per id: the kernel's from 0, accel's from [`ACCEL_ATTR_BASE`] after them.
    const KERNEL_IDS: usize = 64;
    const SLOTS: usize = 2 * KERNEL_IDS;
    fn slot(id: u16) -> Option<usize> {
        match id.checked_sub(ACCEL_ATTR_BASE) {
            Some(ext) => Some(KERNEL_IDS + ext as usize).filter(|&s| s < SLOTS),
            None => Some(id as usize).filter(|&s| s < KERNEL_IDS),
        }
    }
    type Table = [Option<(&'static str, AttrType, Parse)>; SLOTS];
    static TABLES: std::sync::OnceLock<[Table; 4]> = std::sync::OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        let mut t: [Table; 4] = [[None; SLOTS]; 4];
        for &(s, name, id, ty) in ATTRIBUTES {
            let at = slot(id).expect("attribute ids fit the table");
            t[s as usize][at] = Some((name, ty, RasAttr::parser(name)));
        }
        t
    });
    tables[set as usize][slot(id)?].as_ref()
}

/// The entry of attribute `id` in `set`.
pub fn attr_by_id(set: AttrSet, id: u16) -> Option<&'static (AttrSet, &'static str, u16, AttrType)> {
    ATTRIBUTES.iter().find(|a| a.0 == set && a.2 == id)
}

/// What an operation offers: `do`, `dump`, and whether it needs admin rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpCaps {
    /// Has a `do`.
    pub doit: bool,
    /// Has a `dump`.
    pub dump: bool,
    /// Changes state: root or the daemon's user only (`GENL_ADMIN_PERM` on the kernel's).
    pub admin: bool,
}

macro_rules! commands {
    ($($variant:ident = $id:literal, $name:literal, $set:ident, do $doit:literal, dump $dump:literal, admin $admin:literal, $doc:literal;)*) => {
        /// Commands: the kernel's drm-ras ones (1–3), the upstream proposals' (4–6), then
        /// accel's from [`ACCEL_CMD_BASE`].
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
            /// What the operation offers.
            pub fn caps(self) -> OpCaps {
                match self { $(RasCmd::$variant => OpCaps { doit: $doit, dump: $dump, admin: $admin },)* }
            }
        }
    };
}

commands! {
    ListNodes = 1, "list-nodes", Node, do false, dump true, admin false, "Dump every node.";
    GetErrorCounter = 2, "get-error-counter", ErrorCounter, do true, dump true, admin false, "Do: one counter (node-id, error-id). Dump: a node's counters.";
    ClearErrorCounter = 3, "clear-error-counter", ErrorCounter, do true, dump false, admin true, "Set a counter to zero.";
    GetErrorThreshold = 4, "get-error-threshold", ErrorCounter, do true, dump false, admin false, "A counter's threshold (upstream proposal).";
    SetErrorThreshold = 5, "set-error-threshold", ErrorCounter, do true, dump false, admin true, "Set a counter's threshold (upstream proposal).";
    ErrorEvent = 6, "error-event", ErrorEvent, do false, dump false, admin false, "Notification on the error-report group (upstream proposal).";
    GetHealth = 128, "get-health", Reporter, do true, dump true, admin false, "accel: a node's reporter and health (do), or every node's (dump).";
    Recover = 129, "recover", Reporter, do true, dump false, admin true, "accel: run a node's recovery.";
    Diagnose = 130, "diagnose", Reporter, do false, dump true, admin false, "accel: a node's state as key/value pairs.";
    SetReporter = 131, "set-reporter", Reporter, do true, dump false, admin true, "accel: set grace period / auto-recover of a node's reporter.";
    InjectError = 132, "inject-error", ErrorCounter, do true, dump false, admin true, "accel: inject errors through the driver (test devices).";
    DumpEvents = 133, "dump-events", ErrorEvent, do false, dump true, admin false, "accel: the recent error events, for resynchronisation after a gap.";
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
    /// `accel-ext`: in a request, asks for accel's attributes in the replies.
    AccelExt,
    /// `node-health` (node and reporter sets): a [`crate::Health`] index.
    NodeHealth(u32),
    /// `device-health`.
    DeviceHealth(u32),
    /// `error-id`.
    ErrorId(u32),
    /// `error-name`.
    ErrorName(String),
    /// `error-value` (u32, saturating: the kernel's type).
    ErrorValue(u32),
    /// `error-threshold` (u32, saturating; 0 means none).
    ErrorThreshold(u32),
    /// `error-value-u64`.
    ErrorValueU64(u64),
    /// `severity`: a [`crate::Severity`] index.
    Severity(u32),
    /// `event-seq`: consecutive; a gap means missed events.
    EventSeq(u64),
    /// `event-timestamp` (`CLOCK_MONOTONIC` ns).
    EventTimestamp(u64),
    /// `event-kind`: 0 error, 1 cleared, 2 threshold set, 3 recovered.
    EventKind(u32),
    /// `event-delta`: errors the event added.
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
    pub fn name(&self) -> &'static str {
        use RasAttr::*;
        match self {
            NodeId(_) => "node-id",
            DeviceName(_) => "device-name",
            NodeName(_) => "node-name",
            NodeType(_) => "node-type",
            AccelExt => "accel-ext",
            NodeHealth(_) => "node-health",
            DeviceHealth(_) => "device-health",
            ErrorId(_) => "error-id",
            ErrorName(_) => "error-name",
            ErrorValue(_) => "error-value",
            ErrorThreshold(_) => "error-threshold",
            ErrorValueU64(_) => "error-value-u64",
            Severity(_) => "severity",
            EventSeq(_) => "event-seq",
            EventTimestamp(_) => "event-timestamp",
            EventKind(_) => "event-kind",
            EventDelta(_) => "event-delta",
            Count(_) => "count",
            ErrorCount(_) => "error-count",
            RecoveryCount(_) => "recovery-count",
            GracePeriodMs(_) => "grace-period-ms",
            AutoRecover(_) => "auto-recover",
            Healthy(_) => "healthy",
            DiagKey(_) => "diag-key",
            DiagValue(_) => "diag-value",
        }
    }

    /// Id of the attribute within `set`, if the set has it (a match, not a table search:
    /// this runs for every attribute of every message encoded; the tests check it against
    /// [`ATTRIBUTES`]).
    pub fn id(&self, set: AttrSet) -> Option<u16> {
        use RasAttr::*;
        match self {
            NodeId(_) => match set {
                AttrSet::Node => Some(1),
                AttrSet::ErrorCounter => Some(1),
                AttrSet::ErrorEvent => Some(2),
                AttrSet::Reporter => Some(1),
            },
            DeviceName(_) => match set {
                AttrSet::Node => Some(2),
                AttrSet::ErrorEvent => Some(1),
                _ => None,
            },
            NodeName(_) => match set {
                AttrSet::Node => Some(3),
                AttrSet::ErrorEvent => Some(3),
                _ => None,
            },
            NodeType(_) => match set {
                AttrSet::Node => Some(4),
                _ => None,
            },
            AccelExt => match set {
                AttrSet::Node => Some(EXT),
                AttrSet::ErrorCounter => Some(EXT),
                AttrSet::ErrorEvent => Some(EXT),
                _ => None,
            },
            NodeHealth(_) => match set {
                AttrSet::Node => Some(EXT + 1),
                AttrSet::Reporter => Some(9),
                _ => None,
            },
            DeviceHealth(_) => match set {
                AttrSet::Node => Some(EXT + 2),
                _ => None,
            },
            ErrorId(_) => match set {
                AttrSet::ErrorCounter => Some(2),
                AttrSet::ErrorEvent => Some(4),
                _ => None,
            },
            ErrorName(_) => match set {
                AttrSet::ErrorCounter => Some(3),
                AttrSet::ErrorEvent => Some(5),
                _ => None,
            },
            ErrorValue(_) => match set {
                AttrSet::ErrorCounter => Some(4),
                AttrSet::ErrorEvent => Some(6),
                _ => None,
            },
            ErrorThreshold(_) => match set {
                AttrSet::ErrorCounter => Some(5),
                _ => None,
            },
            ErrorValueU64(_) => match set {
                AttrSet::ErrorCounter => Some(EXT + 1),
                AttrSet::ErrorEvent => Some(EXT + 1),
                _ => None,
            },
            Severity(_) => match set {
                AttrSet::ErrorCounter => Some(EXT + 2),
                AttrSet::ErrorEvent => Some(EXT + 2),
                _ => None,
            },
            Count(_) => match set {
                AttrSet::ErrorCounter => Some(EXT + 3),
                _ => None,
            },
            EventSeq(_) => match set {
                AttrSet::ErrorEvent => Some(EXT + 3),
                _ => None,
            },
            EventTimestamp(_) => match set {
                AttrSet::ErrorEvent => Some(EXT + 4),
                _ => None,
            },
            EventKind(_) => match set {
                AttrSet::ErrorEvent => Some(EXT + 5),
                _ => None,
            },
            EventDelta(_) => match set {
                AttrSet::ErrorEvent => Some(EXT + 6),
                _ => None,
            },
            ErrorCount(_) => match set {
                AttrSet::Reporter => Some(2),
                _ => None,
            },
            RecoveryCount(_) => match set {
                AttrSet::Reporter => Some(3),
                _ => None,
            },
            GracePeriodMs(_) => match set {
                AttrSet::Reporter => Some(4),
                _ => None,
            },
            AutoRecover(_) => match set {
                AttrSet::Reporter => Some(5),
                _ => None,
            },
            Healthy(_) => match set {
                AttrSet::Reporter => Some(6),
                _ => None,
            },
            DiagKey(_) => match set {
                AttrSet::Reporter => Some(7),
                _ => None,
            },
            DiagValue(_) => match set {
                AttrSet::Reporter => Some(8),
                _ => None,
            },
        }
    }

    /// Whether this is one of accel's additions (not in the kernel's sets or the proposals).
    pub fn is_extension(&self, set: AttrSet) -> bool {
        set == AttrSet::Reporter || self.id(set).is_some_and(|id| id >= ACCEL_ATTR_BASE)
    }

    /// How a payload of attribute `name` becomes its variant: numbers of exactly their size
    /// (native byte order), strings with one trailing NUL dropped and checked UTF-8, flags
    /// empty. A plain function per attribute, so parsing goes through no intermediate value.
    fn parser(name: &str) -> Parse {
        use RasAttr::*;
        fn text(v: &[u8]) -> Option<String> {
            text_of(v).map(str::to_owned)
        }
        match name {
            "accel-ext" => |v| v.is_empty().then_some(AccelExt),
            "auto-recover" => |v| Some(AutoRecover(u8_of(v)?)),
            "healthy" => |v| Some(Healthy(u8_of(v)?)),
            "node-id" => |v| Some(NodeId(u32_of(v)?)),
            "node-type" => |v| Some(NodeType(u32_of(v)?)),
            "node-health" => |v| Some(NodeHealth(u32_of(v)?)),
            "device-health" => |v| Some(DeviceHealth(u32_of(v)?)),
            "error-id" => |v| Some(ErrorId(u32_of(v)?)),
            "error-value" => |v| Some(ErrorValue(u32_of(v)?)),
            "error-threshold" => |v| Some(ErrorThreshold(u32_of(v)?)),
            "severity" => |v| Some(Severity(u32_of(v)?)),
            "event-kind" => |v| Some(EventKind(u32_of(v)?)),
            "error-value-u64" => |v| Some(ErrorValueU64(u64_of(v)?)),
            "event-seq" => |v| Some(EventSeq(u64_of(v)?)),
            "event-timestamp" => |v| Some(EventTimestamp(u64_of(v)?)),
            "event-delta" => |v| Some(EventDelta(u64_of(v)?)),
            "count" => |v| Some(Count(u64_of(v)?)),
            "error-count" => |v| Some(ErrorCount(u64_of(v)?)),
            "recovery-count" => |v| Some(RecoveryCount(u64_of(v)?)),
            "grace-period-ms" => |v| Some(GracePeriodMs(u64_of(v)?)),
            "device-name" => |v| Some(DeviceName(text(v)?)),
            "node-name" => |v| Some(NodeName(text(v)?)),
            "error-name" => |v| Some(ErrorName(text(v)?)),
            "diag-key" => |v| Some(DiagKey(text(v)?)),
            "diag-value" => |v| Some(DiagValue(text(v)?)),
            _ => |_| None,
        }
    }

    fn parse(set: AttrSet, kind: u16, v: &[u8]) -> Result<Option<RasAttr>, DecodeError> {
        // Unknown attributes are skipped, as netlink does, so newer peers interoperate.
        let Some(&(name, ty, parse)) = by_id(set, kind) else { return Ok(None) };
        match parse(v) {
            Some(a) => Ok(Some(a)),
            None if ty == AttrType::String => Err(DecodeError::from(format!("{name}: not UTF-8"))),
            None => Err(DecodeError::from(format!("{name}: {} bytes are no {}", v.len(), ty.name()))),
        }
    }
}

/// Bytes of an attribute's payload.
fn value_len(a: &RasAttr) -> usize {
    use RasAttr::*;
    match a {
        AccelExt => 0,
        AutoRecover(_) | Healthy(_) => 1,
        NodeId(_) | NodeType(_) | NodeHealth(_) | DeviceHealth(_) | ErrorId(_) | ErrorValue(_) | ErrorThreshold(_)
        | Severity(_) | EventKind(_) => 4,
        ErrorValueU64(_) | EventSeq(_) | EventTimestamp(_) | EventDelta(_) | Count(_) | ErrorCount(_)
        | RecoveryCount(_) | GracePeriodMs(_) => 8,
        DeviceName(s) | NodeName(s) | ErrorName(s) | DiagKey(s) | DiagValue(s) => s.len() + 1,
    }
}

/// Writes an attribute's payload.
fn emit_value(a: &RasAttr, buf: &mut [u8]) {
    use RasAttr::*;
    match a {
        AccelExt => {}
        AutoRecover(v) | Healthy(v) => buf[0] = *v,
        NodeId(v) | NodeType(v) | NodeHealth(v) | DeviceHealth(v) | ErrorId(v) | ErrorValue(v) | ErrorThreshold(v)
        | Severity(v) | EventKind(v) => {
            let _ = emit_u32(buf, *v);
        }
        ErrorValueU64(v) | EventSeq(v) | EventTimestamp(v) | EventDelta(v) | Count(v) | ErrorCount(v)
        | RecoveryCount(v) | GracePeriodMs(v) => {
            let _ = emit_u64(buf, *v);
        }
        DeviceName(s) | NodeName(s) | ErrorName(s) | DiagKey(s) | DiagValue(s) => {
            buf[..s.len()].copy_from_slice(s.as_bytes());
            buf[s.len()] = 0;
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

    /// Whether the message asks for accel's attributes (`accel-ext`).
    pub fn wants_ext(&self) -> bool {
        self.attrs.contains(&RasAttr::AccelExt)
    }

    /// The message without accel's attributes: what a client of the kernel's spec gets.
    /// accel's own commands have no kernel form and keep everything.
    pub fn kernel_only(mut self) -> Self {
        if self.cmd as u8 >= ACCEL_CMD_BASE {
            return self;
        }
        let set = self.cmd.attr_set();
        self.attrs.retain(|a| !a.is_extension(set));
        self
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
    value32: ErrorValue -> u32;
    value: ErrorValueU64 -> u64;
    severity: Severity -> u32;
    threshold: ErrorThreshold -> u32;
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
    // Attributes are framed in place (no copies: every event to every subscriber goes
    // through here).
    fn buffer_len(&self) -> usize {
        let set = self.cmd.attr_set();
        self.attrs.iter().filter(|a| a.id(set).is_some()).map(|a| (4 + value_len(a)).next_multiple_of(4)).sum()
    }
    fn emit(&self, buffer: &mut [u8]) {
        let set = self.cmd.attr_set();
        let mut at = 0;
        for a in &self.attrs {
            let Some(id) = a.id(set) else { continue };
            let len = 4 + value_len(a);
            buffer[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
            buffer[at + 2..at + 4].copy_from_slice(&id.to_ne_bytes());
            emit_value(a, &mut buffer[at + 4..at + len]);
            let padded = len.next_multiple_of(4);
            buffer[at + len..at + padded].fill(0);
            at += padded;
        }
    }
}

impl ParseableParametrized<[u8], GenlHeader> for RasMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd =
            RasCmd::from_id(header.cmd).ok_or_else(|| DecodeError::from(format!("unknown command {}", header.cmd)))?;
        let set = cmd.attr_set();
        let mut attrs = Vec::with_capacity(16);
        for nla in NlasIterator::new(buf) {
            let nla: NlaBuffer<&[u8]> = nla.context("malformed attribute")?;
            if let Some(a) = RasAttr::parse(set, nla.kind(), nla.value())? {
                attrs.push(a);
            }
        }
        Ok(RasMsg { cmd, attrs })
    }
}

/// A complete netlink message of the family.
pub type RasNetlink = NetlinkMessage<GenlMessage<RasMsg>>;

/// Sets flags and sequence number, fixes up length and type, and serialises.
fn to_bytes<T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug>(
    mut nl: NetlinkMessage<T>,
    flags: u16,
    seq: u32,
) -> Vec<u8> {
    nl.header.flags = flags;
    nl.header.sequence_number = seq;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// Bytes of a netlink message header (`struct nlmsghdr`).
const NLMSG_HDRLEN: usize = 16;
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
fn decode_family(bytes: &[u8]) -> Result<Parsed, DecodeError> {
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
fn decode_netlink(bytes: &[u8]) -> Result<Parsed, DecodeError> {
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

/// A controller message (`nlctrl`).
pub type CtrlNetlink = NetlinkMessage<GenlMessage<GenlCtrl>>;

/// `CTRL_CMD_GETFAMILY` for `name`: how tools resolve a family's id.
pub fn ctrl_get_family(name: &str, seq: u32) -> Vec<u8> {
    let msg = GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName(name.into())] };
    let mut nl = NetlinkMessage::from(GenlMessage::from_payload(msg));
    nl.header.message_type = GENL_ID_CTRL;
    to_bytes(nl, NLM_F_REQUEST | NLM_F_ACK, seq)
}

/// The controller's description of the family (`CTRL_CMD_NEWFAMILY`): id, name, version,
/// header size, largest attribute id, every operation with its flags
/// (`GENL_ADMIN_PERM`, `GENL_CMD_CAP_DO`, `GENL_CMD_CAP_DUMP`), and the multicast group.
pub fn ctrl_family(seq: u32, pid: u32) -> Vec<u8> {
    const ADMIN_PERM: u32 = 0x1;
    const CAP_DO: u32 = 0x2;
    const CAP_DUMP: u32 = 0x4;
    let ops = COMMANDS
        .iter()
        .filter_map(|&(_, id, _)| {
            let caps = RasCmd::from_id(id)?.caps();
            let flags = [(caps.admin, ADMIN_PERM), (caps.doit, CAP_DO), (caps.dump, CAP_DUMP)]
                .iter()
                .filter(|(on, _)| *on)
                .fold(0, |acc, (_, bit)| acc | bit);
            (flags & (CAP_DO | CAP_DUMP) != 0).then(|| vec![OpAttrs::Id(u32::from(id)), OpAttrs::Flags(flags)])
        })
        .collect();
    let max_attr = ATTRIBUTES.iter().map(|a| a.2).max().unwrap_or(0);
    let msg = GenlCtrl {
        cmd: GenlCtrlCmd::NewFamily,
        nlas: vec![
            GenlCtrlAttrs::FamilyId(FAMILY_ID),
            GenlCtrlAttrs::FamilyName(FAMILY_NAME.into()),
            GenlCtrlAttrs::Version(u32::from(FAMILY_VERSION)),
            GenlCtrlAttrs::HdrSize(0),
            GenlCtrlAttrs::MaxAttr(u32::from(max_attr)),
            GenlCtrlAttrs::Ops(ops),
            GenlCtrlAttrs::McastGroups(vec![vec![
                McastGrpAttrs::Name(MCGRP_ERROR_REPORT.into()),
                McastGrpAttrs::Id(MCGRP_ERROR_REPORT_ID),
            ]]),
        ],
    };
    let mut nl = NetlinkMessage::from(GenlMessage::from_payload(msg));
    nl.header.message_type = GENL_ID_CTRL;
    nl.header.port_number = pid;
    to_bytes(nl, 0, seq)
}

/// Whether every attribute in `buf` is well framed, nested ones `depth` levels down.
fn well_framed(buf: &[u8], depth: u8) -> bool {
    NlasIterator::new(buf).all(|nla: Result<NlaBuffer<&[u8]>, DecodeError>| match nla {
        Ok(nla) => depth == 0 || well_framed(nla.value(), depth - 1),
        Err(_) => false,
    })
}

/// A decoded controller message: its command and attributes. Only the attributes a family
/// description has (id, name, version, header size, largest attribute, ops, groups) are
/// accepted, each checked for framing before the generic parser sees it (it indexes nested
/// policy attributes without checks).
pub fn ctrl_decode(bytes: &[u8]) -> Result<(GenlCtrlCmd, Vec<GenlCtrlAttrs>), DecodeError> {
    const CTRL_ATTR_OPS: u16 = 6;
    const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
    let attrs = bytes.get(20..).ok_or_else(|| DecodeError::from("short controller message"))?;
    for nla in NlasIterator::new(attrs) {
        let nla: NlaBuffer<&[u8]> = nla.context("malformed controller attribute")?;
        let ok = match nla.kind() & 0x3fff {
            1..=5 => true,
            CTRL_ATTR_OPS | CTRL_ATTR_MCAST_GROUPS => well_framed(nla.value(), 1),
            _ => false,
        };
        if !ok {
            return Err(DecodeError::from(format!("controller attribute {} is not accepted here", nla.kind())));
        }
    }
    let nl = CtrlNetlink::deserialize(bytes)?;
    match nl.payload {
        NetlinkPayload::InnerMessage(genl) => Ok((genl.payload.cmd, genl.payload.nlas)),
        _ => Err(DecodeError::from("not a controller message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload of type `ty`: `n` in its size, `text` NUL-terminated.
    fn payload(ty: AttrType, n: u64, text: &str) -> Vec<u8> {
        match ty {
            AttrType::Flag => vec![],
            AttrType::U8 => vec![n as u8],
            AttrType::U32 => (n as u32).to_ne_bytes().to_vec(),
            AttrType::U64 => n.to_ne_bytes().to_vec(),
            AttrType::String => [text.as_bytes(), &[0]].concat(),
        }
    }

    fn sample(name: &str, ty: AttrType) -> RasAttr {
        let n = if ty == AttrType::U64 { u64::MAX } else { 7 };
        RasAttr::parser(name)(&payload(ty, n, &format!("{name}-value")))
            .unwrap_or_else(|| panic!("{name} has no variant"))
    }

    #[test]
    fn every_attribute_is_emitted_with_its_table_id_and_size() {
        // Attributes a set lacks have no id there.
        for set in AttrSet::ALL {
            for &(_, name, _, ty) in ATTRIBUTES {
                let in_set = attr_by_name(set, name).is_some();
                assert_eq!(sample(name, ty).id(set).is_some(), in_set, "{name} in {}", set.name());
            }
        }
        for &(set, name, id, ty) in ATTRIBUTES {
            let attr = sample(name, ty);
            assert_eq!(attr.id(set), Some(id), "{name} in {}", set.name());
            let size = match ty {
                AttrType::Flag => 0,
                AttrType::U8 => 1,
                AttrType::U32 => 4,
                AttrType::U64 => 8,
                AttrType::String => name.len() + "-value".len() + 1,
            };
            assert_eq!(value_len(&attr), size, "{name} in {}", set.name());
            assert_eq!(attr.name(), name);
            assert_eq!(attr.is_extension(set), set == AttrSet::Reporter || id >= ACCEL_ATTR_BASE);
        }
    }

    #[test]
    fn messages_round_trip_through_netlink_framing() {
        for &(name, id, set) in COMMANDS {
            let cmd = RasCmd::from_id(id).unwrap();
            assert_eq!(cmd.name(), name);
            let attrs: Vec<RasAttr> =
                ATTRIBUTES.iter().filter(|a| a.0 == set).map(|&(_, name, _, ty)| sample(name, ty)).collect();
            let bytes = request(RasMsg::new(cmd, attrs.clone()), true, 42);
            match decode(&bytes).unwrap() {
                Parsed::Msg { msg, flags, seq } => {
                    assert_eq!((msg.cmd, msg.attrs, seq, is_dump(flags)), (cmd, attrs, 42, true));
                    assert_eq!(flags & NLM_F_ACK, NLM_F_ACK);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(decode(&done(3)).unwrap(), Parsed::Done);
        assert_eq!(decode(&error(22, 3)).unwrap(), Parsed::Error(Some(-22), None));
    }

    #[test]
    fn errors_echo_the_request_and_carry_an_extended_ack_message() {
        let req = request_header(&request(RasMsg::new(RasCmd::ListNodes, vec![]), false, 77));
        let bytes = error_for(&req, 95, "list-nodes is a dump");
        assert_eq!(request_header(&bytes).seq, 77);
        assert_eq!(&bytes[20..36], &req.raw[..], "the request's header follows the error code");
        assert_eq!(decode(&bytes).unwrap(), Parsed::Error(Some(-95), Some("list-nodes is a dump".into())));
        let ack = error_for(&req, 0, "");
        assert_eq!(decode(&ack).unwrap(), Parsed::Error(None, None));
    }

    #[test]
    fn kernel_only_drops_accel_attributes() {
        let msg = RasMsg::new(
            RasCmd::GetErrorCounter,
            vec![RasAttr::ErrorId(1), RasAttr::ErrorValue(2), RasAttr::ErrorValueU64(2), RasAttr::Severity(0)],
        );
        assert_eq!(msg.kernel_only().attrs, vec![RasAttr::ErrorId(1), RasAttr::ErrorValue(2)]);
    }

    #[test]
    fn the_controller_describes_the_family() {
        let (cmd, attrs) = ctrl_decode(&ctrl_family(5, 0)).unwrap();
        assert_eq!(cmd, GenlCtrlCmd::NewFamily);
        assert!(attrs.contains(&GenlCtrlAttrs::FamilyId(FAMILY_ID)));
        assert!(attrs.contains(&GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())));
        let (cmd, attrs) = ctrl_decode(&ctrl_get_family(FAMILY_NAME, 1)).unwrap();
        assert_eq!((cmd, attrs), (GenlCtrlCmd::GetFamily, vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())]));
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
    fn a_fuzzed_controller_message_does_not_panic() {
        let bytes = [
            0x1d, 0, 0, 0, 0xfc, 0xfc, 0xfc, 0xfc, 0xfc, 0xff, 0xff, 0xff, 0x02, 0, 0xff, 0x01, 0x03, 0, 0, 0, 0x04, 0,
            0x09, 0, 0, 0, 0, 0, 0, 0x14, 0, 0x29, 0x85, 0xfc, 0xff, 0x28,
        ];
        let _ = ctrl_decode(&bytes);
        let _ = decode(&bytes);
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode(&bytes);
            let _ = ctrl_decode(&bytes);
            let _ = request_header(&bytes);
        }
    }

    /// A family message as netlink-packet's generic layers encode it: the reference the
    /// direct encoder is held to.
    fn reference_encode(msg: RasMsg, flags: u16, seq: u32) -> Vec<u8> {
        to_bytes(NetlinkMessage::from(GenlMessage::from_payload(msg)), flags, seq)
    }

    /// Any attribute of `set` (or of another set: those are not emitted) with any value.
    fn any_attr() -> impl proptest::strategy::Strategy<Value = RasAttr> {
        use proptest::prelude::*;
        (0..ATTRIBUTES.len(), any::<u64>(), "[a-z0-9-]{0,24}").prop_map(|(i, n, text)| {
            let (_, name, _, ty) = ATTRIBUTES[i];
            RasAttr::parser(name)(&payload(ty, n, &text)).unwrap()
        })
    }

    proptest::proptest! {
        #[test]
        fn the_direct_encoder_writes_what_netlink_packet_writes(
            cmd in proptest::sample::select(COMMANDS.iter().map(|c| c.1).collect::<Vec<u8>>()),
            attrs in proptest::collection::vec(any_attr(), 0..16),
            flags: u16,
            seq: u32,
        ) {
            let msg = RasMsg::new(RasCmd::from_id(cmd).unwrap(), attrs);
            let bytes = encode(msg.clone(), flags, seq);
            proptest::prop_assert_eq!(&bytes, &reference_encode(msg.clone(), flags, seq));
            let set = msg.cmd.attr_set();
            let emitted: Vec<RasAttr> = msg.attrs.iter().filter(|a| a.id(set).is_some()).cloned().collect();
            let expect = Parsed::Msg { msg: RasMsg::new(msg.cmd, emitted), flags, seq };
            proptest::prop_assert_eq!(decode(&bytes).unwrap(), expect.clone());
            proptest::prop_assert_eq!(decode_netlink(&bytes).unwrap(), expect);
        }

        #[test]
        fn the_direct_decoder_agrees_with_netlink_packet_on_any_frame(
            len_delta in -8i32..8,
            cmd in proptest::prop_oneof![proptest::sample::select(COMMANDS.iter().map(|c| c.1).collect::<Vec<u8>>()), proptest::prelude::any::<u8>()],
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
            attrs in proptest::collection::vec(any_attr(), 0..6),
            mangle in proptest::option::of((0usize..128, proptest::prelude::any::<u8>())),
            cut in 0usize..8,
        ) {
            // A well-formed frame of the family, then damaged: its length field, its command,
            // bytes overwritten, bytes appended, the end cut off.
            let cmd_ok = RasCmd::from_id(cmd).unwrap_or(RasCmd::ListNodes);
            let mut bytes = encode(RasMsg::new(cmd_ok, attrs), 0, 9);
            bytes[NLMSG_HDRLEN] = cmd;
            bytes.extend_from_slice(&body);
            let len = (bytes.len() as i32 - body.len() as i32 + len_delta).max(0) as u32;
            bytes[0..4].copy_from_slice(&len.to_ne_bytes());
            if let Some((at, byte)) = mangle {
                if at < bytes.len() && !(4..6).contains(&at) {
                    bytes[at] = byte;
                }
            }
            bytes.truncate(bytes.len().saturating_sub(cut).max(6));
            let (direct, generic) = (decode_family(&bytes), decode_netlink(&bytes));
            proptest::prop_assert_eq!(direct.is_ok(), generic.is_ok(), "{:?} vs {:?} on {:?}", direct, generic, bytes);
            if let (Ok(d), Ok(g)) = (direct, generic) {
                proptest::prop_assert_eq!(d, g);
            }
        }
    }

    /// Names, ids and numbers of an event ([`any_event`] makes it).
    type EventParts = ((String, String, String), (u32, u32, u32, u32), (u64, u64, u64, u64));

    fn event_parts() -> impl proptest::strategy::Strategy<Value = EventParts> {
        use proptest::prelude::*;
        (
            ("[a-z0-9]{0,12}", "[a-z0-9-]{0,20}", "[a-z0-9-]{0,24}"),
            any::<(u32, u32, u32, u32)>(),
            any::<(u64, u64, u64, u64)>(),
        )
    }

    /// An event of the given names and numbers (values of any width).
    fn any_event((names, ids, numbers): &EventParts) -> ErrorEvent<'_> {
        let (ids, numbers) = (*ids, *numbers);
        ErrorEvent {
            device_name: &names.0,
            node_id: ids.0,
            node_name: &names.1,
            error_id: ids.1,
            error_name: &names.2,
            value: numbers.0 >> (numbers.1 % 64),
            severity: ids.2,
            seq: numbers.1,
            timestamp_ns: numbers.2,
            kind: ids.3,
            delta: numbers.3,
        }
    }

    proptest::proptest! {
        #[test]
        fn an_error_event_encodes_as_its_message_does(
            parts in event_parts(),
            ext: bool,
            dump: bool,
            header: (u16, u32),
        ) {
            let (flags, seq) = header;
            let ev = any_event(&parts);
            let cmd = if dump { RasCmd::DumpEvents } else { RasCmd::ErrorEvent };
            let msg = if ext { ev.msg(cmd) } else { ev.msg(cmd).kernel_only() };
            let bytes = ev.encode(cmd, ext, flags, seq);
            proptest::prop_assert_eq!(&bytes, &reference_encode(msg, flags, seq));
            // Framed after other bytes in one buffer, it is the same message.
            let before = format!("{:?}", parts.1).into_bytes();
            let both = ev.encode_after(before.clone(), cmd, ext, flags, seq);
            proptest::prop_assert_eq!(&both[..before.len()], &before[..]);
            proptest::prop_assert_eq!(&both[before.len()..], &bytes[..]);
        }
    }

    proptest::proptest! {
        #[test]
        fn an_error_event_reads_in_place_as_it_was_written(
            parts in event_parts(),
            ext: bool,
            cut in proptest::option::of(0usize..160),
        ) {
            let ev = any_event(&parts);
            let mut bytes = ev.encode(RasCmd::ErrorEvent, ext, 0, 1);
            if let Some(at) = cut {
                // A damaged frame fails here exactly when it fails the full decoder.
                bytes.truncate(at);
                if bytes.len() >= 4 {
                    let len = (bytes.len() as u32).to_ne_bytes();
                    bytes[..4].copy_from_slice(&len);
                }
                proptest::prop_assert_eq!(ErrorEvent::decode(&bytes).is_ok(), decode(&bytes).is_ok());
                return Ok(());
            }
            let read = ErrorEvent::decode(&bytes).unwrap();
            if ext {
                proptest::prop_assert_eq!(read, ev);
            } else {
                // The kernel's attributes only: a 32-bit value, no accel fields.
                let value = ev.value.min(u32::MAX as u64);
                let kernel = ErrorEvent { value, severity: 0, seq: 0, timestamp_ns: 0, kind: 0, delta: 0, ..ev };
                proptest::prop_assert_eq!(read, kernel);
            }
        }
    }

    #[test]
    fn only_events_read_as_events() {
        let list = encode(RasMsg::new(RasCmd::ListNodes, vec![RasAttr::NodeId(1)]), 0, 0);
        assert!(ErrorEvent::decode(&list).unwrap_err().to_string().contains("no event"));
        assert!(ErrorEvent::decode(&done(1)).is_err());
        assert!(ErrorEvent::decode(&[]).is_err());
    }
}
