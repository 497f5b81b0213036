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
//!
//! Here: the attributes and commands; messages in `msg`, whole netlink messages on the wire
//! in `frame`, the generic netlink controller in `ctrl`.

mod ctrl;
mod frame;
mod msg;

use netlink_packet_core::{
    emit_u32, emit_u64, parse_string, DecodeError, Emitable, ErrorContext, ErrorMessage, NetlinkDeserializable,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NlaBuffer, NlasIterator, ParseableParametrized,
    NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::{GenlCtrlAttrs, McastGrpAttrs, OpAttrs};
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

pub use ctrl::*;
pub use frame::*;
pub use msg::*;

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

#[cfg(test)]
mod tests;
