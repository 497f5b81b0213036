//! Messages of the family: attribute values ([`RasAttr`]) and a command with its attributes
//! ([`RasMsg`]), as `netlink-packet-generic` encodes and parses them.

use super::*;

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
    pub(super) fn parser(name: &str) -> Parse {
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

    pub(super) fn parse(set: AttrSet, kind: u16, v: &[u8]) -> Result<Option<RasAttr>, DecodeError> {
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
pub(super) fn value_len(a: &RasAttr) -> usize {
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
pub(super) fn to_bytes<T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug>(
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
