//! The RAS netlink family served on the daemon socket, with generic netlink's conventions:
//! the generic netlink controller resolves the family by name (`CTRL_CMD_GETFAMILY`); a
//! `do` answers with its reply, then an ACK when the request asked for one
//! (`NLM_F_ACK`); a dump answers with `NLM_F_MULTI` parts and `NLMSG_DONE`; a failure is
//! `NLMSG_ERROR` with `-errno`, the request's header and an extended-ACK message; every
//! answer carries the request's sequence number. Replies hold exactly the kernel's
//! attributes unless the request carried `accel-ext`.
//!
//! Who sees what ([`View`]): the root namespace sees every device; a tenant sees the RAS
//! nodes of its own devices, renumbered as it numbers them (`accel0`…), and nothing else.
//! Commands that change state need an admin of the root namespace.

use accel_core::ras::{EventKind, RasCore, RasEvent, RasNode};
use accel_core::{Error, Result};
use accel_uapi::ras::{
    self as nl, ctrl_decode, ErrorEvent, Parsed, RasAttr, RasCmd, RasMsg, RequestHeader, GENL_ID_CTRL, NLM_F_ACK,
    NODE_TYPE_ERROR_COUNTER,
};
use accel_uapi::{Errno, Health, Severity};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::GenlCtrlCmd;

/// Netlink bytes per reply frame, so that a long dump never exceeds the socket's message size.
const CHUNK: usize = 48 * 1024;

/// What one client may see and do of RAS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// May change state (clear, thresholds, recover, inject): an admin of the root namespace.
    pub admin: bool,
    /// Global minors of the devices it sees, in its own numbering; `None`: every device.
    pub devices: Option<Vec<u32>>,
}

impl View {
    /// Every device, as the root namespace sees them.
    pub fn all(admin: bool) -> View {
        View { admin, devices: None }
    }

    /// The device's number as this client knows it, if it sees the device.
    fn local(&self, global: u32) -> Option<u32> {
        match &self.devices {
            None => Some(global),
            Some(d) => d.iter().position(|g| *g == global).map(|i| i as u32),
        }
    }

    fn sees(&self, n: &RasNode) -> bool {
        self.local(n.device).is_some()
    }

    fn device_name<'a>(&self, n: &'a RasNode) -> std::borrow::Cow<'a, str> {
        match (&self.devices, self.local(n.device)) {
            (None, _) => (&n.device_name).into(),
            (Some(_), Some(local)) => format!("accel{local}").into(),
            (Some(_), None) => "".into(),
        }
    }
}

fn health_idx(h: Health) -> u32 {
    Health::ALL.iter().position(|x| *x == h).unwrap_or(0) as u32
}

fn severity_idx(s: Severity) -> u32 {
    Severity::ALL.iter().position(|x| *x == s).unwrap_or(0) as u32
}

fn sat32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn node_msg(ras: &RasCore, view: &View, n: &RasNode) -> RasMsg {
    RasMsg::new(
        RasCmd::ListNodes,
        vec![
            RasAttr::NodeId(n.id),
            RasAttr::DeviceName(view.device_name(n).into_owned()),
            RasAttr::NodeName(n.name.clone()),
            RasAttr::NodeType(NODE_TYPE_ERROR_COUNTER),
            RasAttr::NodeHealth(health_idx(n.health())),
            RasAttr::DeviceHealth(health_idx(ras.device_health(n.device))),
        ],
    )
}

/// The counter `error_id` of `n`: an id outside the node's range is `EINVAL`, as the kernel's.
fn counter(n: &RasNode, error_id: u32) -> Result<&accel_core::ras::ErrorCounter> {
    n.counter(error_id).map_err(|_| {
        Error::new(Errno::EINVAL, format!("error-id {error_id} is outside node {}'s 1..={}", n.id, n.counters.len()))
    })
}

fn counter_msg(n: &RasNode, error_id: u32) -> Result<RasMsg> {
    let c = counter(n, error_id)?;
    Ok(RasMsg::new(
        RasCmd::GetErrorCounter,
        vec![
            RasAttr::ErrorId(c.id),
            RasAttr::ErrorName(c.name.clone()),
            RasAttr::ErrorValue(sat32(c.value())),
            RasAttr::ErrorValueU64(c.value()),
            RasAttr::Severity(severity_idx(c.severity)),
        ],
    ))
}

/// `ev` as `view` sees it, handed to `f` (`None` if it does not see the device).
pub fn with_event<R>(ras: &RasCore, view: &View, ev: &RasEvent, f: impl FnOnce(ErrorEvent<'_>) -> R) -> Option<R> {
    let node = ras.node(ev.node_id).ok()?;
    if !view.sees(node) {
        return None;
    }
    let device_name = view.device_name(node);
    let kind = match ev.kind {
        EventKind::Error => 0,
        EventKind::Cleared => 1,
        EventKind::ThresholdSet => 2,
        EventKind::Recovered => 3,
    };
    Some(f(ErrorEvent {
        device_name: &device_name,
        node_id: ev.node_id,
        node_name: &node.name,
        error_id: ev.error_id,
        error_name: node.counter(ev.error_id).map_or("", |c| &c.name),
        value: ev.value,
        severity: severity_idx(ev.severity),
        seq: ev.seq,
        timestamp_ns: ev.timestamp_ns,
        kind,
        delta: ev.delta,
    }))
}

/// An `error-event` (or `dump-events`) message for `ev` as `view` sees it.
pub fn event_msg(ras: &RasCore, view: &View, ev: &RasEvent, cmd: RasCmd) -> Option<RasMsg> {
    with_event(ras, view, ev, |e| e.msg(cmd))
}

/// `ev` encoded for a subscriber with `view` (accel's attributes too if `ext`), straight
/// into its frame: every subscriber gets every event.
pub fn event_frame(ras: &RasCore, view: &View, ev: &RasEvent, ext: bool) -> Option<Vec<u8>> {
    with_event(ras, view, ev, |e| e.encode(RasCmd::ErrorEvent, ext, 0, 0))
}

/// [`event_frame`] at the end of `buf`; whether the subscriber sees the event (else `buf`
/// is left as it was).
pub fn event_frame_after(ras: &RasCore, view: &View, ev: &RasEvent, ext: bool, buf: &mut Vec<u8>) -> bool {
    with_event(ras, view, ev, |e| *buf = e.encode_after(std::mem::take(buf), RasCmd::ErrorEvent, ext, 0, 0)).is_some()
}

fn health_msg(n: &RasNode) -> RasMsg {
    let r = n.reporter();
    RasMsg::new(
        RasCmd::GetHealth,
        vec![
            RasAttr::NodeId(n.id),
            RasAttr::ErrorCount(r.error_count),
            RasAttr::RecoveryCount(r.recovery_count),
            RasAttr::GracePeriodMs(r.grace_period_ms),
            RasAttr::AutoRecover(u8::from(r.auto_recover)),
            RasAttr::Healthy(u8::from(r.healthy)),
            RasAttr::NodeHealth(health_idx(n.health())),
        ],
    )
}

fn need<T>(value: Option<T>, msg: &RasMsg, what: &str) -> Result<T> {
    value.ok_or_else(|| Error::new(Errno::EINVAL, format!("{} needs the {what} attribute", msg.cmd.name())))
}

/// The node a request names, if the client sees it (`ENOENT` otherwise, as for no node).
fn node<'a>(ras: &'a RasCore, view: &View, msg: &RasMsg) -> Result<&'a RasNode> {
    let id = need(msg.node_id(), msg, "node-id")?;
    ras.node(id).ok().filter(|n| view.sees(n)).ok_or_else(|| Error::new(Errno::ENOENT, format!("no RAS node {id}")))
}

fn error_id(msg: &RasMsg) -> Result<u32> {
    need(msg.error_id(), msg, "error-id")
}

/// The replies to one command.
fn run(ras: &RasCore, view: &View, msg: &RasMsg, dump: bool) -> Result<Vec<RasMsg>> {
    let caps = msg.cmd.caps();
    if (dump && !caps.dump) || (!dump && !caps.doit) {
        let how = if dump { "dump" } else { "do" };
        return Err(Error::new(Errno::EOPNOTSUPP, format!("{} has no {how}", msg.cmd.name())));
    }
    if caps.admin && !view.admin {
        return Err(Error::new(Errno::EPERM, format!("{} needs an admin of the root namespace", msg.cmd.name())));
    }
    let visible = || -> Result<Vec<&RasNode>> {
        match msg.node_id() {
            Some(_) => Ok(vec![node(ras, view, msg)?]),
            None => Ok(ras.nodes().iter().filter(|n| view.sees(n)).collect()),
        }
    };
    Ok(match msg.cmd {
        RasCmd::ListNodes => ras.nodes().iter().filter(|n| view.sees(n)).map(|n| node_msg(ras, view, n)).collect(),
        RasCmd::GetErrorCounter if dump => {
            let n = node(ras, view, msg)?;
            n.counters.iter().map(|c| counter_msg(n, c.id)).collect::<Result<_>>()?
        }
        RasCmd::GetErrorCounter => vec![counter_msg(node(ras, view, msg)?, error_id(msg)?)?],
        RasCmd::ClearErrorCounter => {
            let n = node(ras, view, msg)?;
            let e = counter(n, error_id(msg)?)?.id;
            ras.clear(n.id, e)?;
            Vec::new()
        }
        RasCmd::GetErrorThreshold => {
            let n = node(ras, view, msg)?;
            let c = counter(n, error_id(msg)?)?;
            vec![RasMsg::new(
                RasCmd::GetErrorThreshold,
                vec![
                    RasAttr::ErrorId(c.id),
                    RasAttr::ErrorName(c.name.clone()),
                    RasAttr::ErrorThreshold(sat32(c.threshold())),
                ],
            )]
        }
        RasCmd::SetErrorThreshold => {
            let t = need(msg.threshold(), msg, "error-threshold")?;
            let n = node(ras, view, msg)?;
            let e = counter(n, error_id(msg)?)?.id;
            ras.set_threshold(n.id, e, u64::from(t))?;
            Vec::new()
        }
        RasCmd::GetHealth if dump => visible()?.into_iter().map(health_msg).collect(),
        RasCmd::GetHealth => vec![health_msg(node(ras, view, msg)?)],
        RasCmd::Recover => {
            ras.recover(node(ras, view, msg)?.id)?;
            Vec::new()
        }
        RasCmd::Diagnose => ras
            .diagnose(node(ras, view, msg)?.id)?
            .into_iter()
            .map(|(k, v)| RasMsg::new(RasCmd::Diagnose, vec![RasAttr::DiagKey(k), RasAttr::DiagValue(v)]))
            .collect(),
        RasCmd::SetReporter => {
            let grace = msg.grace_period_ms();
            let auto = msg.auto_recover().map(|v| v != 0);
            ras.configure_reporter(node(ras, view, msg)?.id, grace, auto)?;
            Vec::new()
        }
        RasCmd::InjectError => {
            let n = node(ras, view, msg)?;
            let e = counter(n, error_id(msg)?)?.id;
            ras.inject(n.id, e, msg.count().unwrap_or(1))?;
            Vec::new()
        }
        RasCmd::DumpEvents => {
            let only = msg.node_id();
            ras.recent()
                .iter()
                .filter(|e| only.is_none_or(|n| n == e.node_id))
                .filter_map(|e| event_msg(ras, view, e, RasCmd::DumpEvents))
                .collect()
        }
        RasCmd::ErrorEvent => unreachable!("error-event has neither do nor dump"),
    })
}

/// Frames of a dump: parts, then `NLMSG_DONE`, split so no frame exceeds [`CHUNK`].
fn dump_frames(parts: Vec<Vec<u8>>, seq: u32) -> Vec<Vec<Vec<u8>>> {
    let mut frames = vec![Vec::new()];
    let mut size = 0;
    for bytes in parts {
        if size + bytes.len() > CHUNK {
            frames.push(Vec::new());
            size = 0;
        }
        size += bytes.len();
        frames.last_mut().expect("one frame at least").push(bytes);
    }
    frames.last_mut().expect("one frame at least").push(nl::done(seq));
    frames
}

fn fail(req: &RequestHeader, e: &Error) -> Vec<Vec<Vec<u8>>> {
    vec![vec![nl::error_for(req, e.code.raw() as i32, &e.message)]]
}

/// The generic netlink controller, for the one family it knows.
fn controller(req: &RequestHeader, bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let (cmd, attrs) = match ctrl_decode(bytes) {
        Ok(m) => m,
        Err(e) => return fail(req, &Error::new(Errno::EINVAL, format!("bad controller request: {e}"))),
    };
    if cmd != GenlCtrlCmd::GetFamily {
        return fail(
            req,
            &Error::new(Errno::EOPNOTSUPP, format!("the controller here answers GETFAMILY, not {cmd:?}")),
        );
    }
    if nl::is_dump(req.flags) {
        return dump_frames(vec![nl::ctrl_family(req.seq, req.pid)], req.seq);
    }
    let wanted = attrs.iter().find_map(|a| match a {
        GenlCtrlAttrs::FamilyName(n) => Some(n.as_str() == nl::FAMILY_NAME),
        GenlCtrlAttrs::FamilyId(id) => Some(*id == nl::FAMILY_ID),
        _ => None,
    });
    match wanted {
        Some(true) => {
            let mut frame = vec![nl::ctrl_family(req.seq, req.pid)];
            if req.flags & NLM_F_ACK != 0 {
                frame.push(nl::error_for(req, 0, ""));
            }
            vec![frame]
        }
        Some(false) => fail(req, &Error::new(Errno::ENOENT, format!("the only family here is {}", nl::FAMILY_NAME))),
        None => fail(req, &Error::new(Errno::EINVAL, "GETFAMILY needs a family name or id")),
    }
}

/// Handles one netlink request; returns the reply frames, each a list of netlink messages.
pub fn handle(ras: &RasCore, view: &View, bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let req = nl::request_header(bytes);
    if req.kind == GENL_ID_CTRL {
        return controller(&req, bytes);
    }
    let msg = match nl::decode(bytes) {
        Ok(Parsed::Msg { msg, .. }) => msg,
        Ok(other) => return fail(&req, &Error::new(Errno::EINVAL, format!("not a request: {other:?}"))),
        Err(e) => return fail(&req, &Error::new(Errno::EINVAL, format!("malformed request: {e}"))),
    };
    let dump = nl::is_dump(req.flags);
    let ext = msg.wants_ext();
    let replies = match run(ras, view, &msg, dump) {
        Ok(r) => r.into_iter().map(|m| if ext { m } else { m.kernel_only() }),
        Err(e) => return fail(&req, &e),
    };
    if dump {
        let parts = replies.map(|r| nl::multipart(r, req.seq)).collect();
        return dump_frames(parts, req.seq);
    }
    let mut frame: Vec<Vec<u8>> = replies.map(|r| nl::encode(r, 0, req.seq)).collect();
    if req.flags & NLM_F_ACK != 0 {
        frame.push(nl::error_for(&req, 0, ""));
    }
    vec![frame]
}
