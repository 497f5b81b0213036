//! The RAS netlink family served on the daemon socket: decode, run against the RAS
//! core, encode. Dumps end with `NLMSG_DONE`; errors are `NLMSG_ERROR` with `-errno`.

use accel_core::ras::{EventKind, RasCore, RasEvent, RasNode};
use accel_core::{Error, Result};
use accel_uapi::ras::{self as nl, Parsed, RasAttr, RasCmd, RasMsg, NODE_TYPE_ERROR_COUNTER};
use accel_uapi::{Errno, Health, Severity};

/// Netlink bytes per reply frame, so that a long dump never exceeds the socket's message size.
const CHUNK: usize = 48 * 1024;

fn health_idx(h: Health) -> u32 {
    Health::ALL.iter().position(|x| *x == h).unwrap_or(0) as u32
}

fn severity_idx(s: Severity) -> u32 {
    Severity::ALL.iter().position(|x| *x == s).unwrap_or(0) as u32
}

fn node_msg(ras: &RasCore, n: &RasNode) -> RasMsg {
    RasMsg::new(
        RasCmd::ListNodes,
        vec![
            RasAttr::NodeId(n.id),
            RasAttr::DeviceName(n.device_name.clone()),
            RasAttr::NodeName(n.name.clone()),
            RasAttr::NodeType(NODE_TYPE_ERROR_COUNTER),
            RasAttr::NodeHealth(health_idx(n.health())),
            RasAttr::DeviceHealth(health_idx(ras.device_health(n.device))),
        ],
    )
}

fn counter_msg(n: &RasNode, error_id: u32) -> Result<RasMsg> {
    let c = n.counter(error_id)?;
    Ok(RasMsg::new(
        RasCmd::GetErrorCounter,
        vec![
            RasAttr::NodeId(n.id),
            RasAttr::ErrorId(c.id),
            RasAttr::ErrorName(c.name.clone()),
            RasAttr::ErrorValue(u32::try_from(c.value()).unwrap_or(u32::MAX)),
            RasAttr::ErrorValueU64(c.value()),
            RasAttr::Severity(severity_idx(c.severity)),
            RasAttr::Threshold(c.threshold()),
        ],
    ))
}

/// An `error-event` message for `ev`.
pub fn event_msg(ras: &RasCore, ev: &RasEvent) -> RasMsg {
    let mut attrs = vec![RasAttr::NodeId(ev.node_id), RasAttr::ErrorId(ev.error_id)];
    if let Some(c) = ras.node(ev.node_id).ok().and_then(|n| n.counter(ev.error_id).ok()) {
        attrs.push(RasAttr::ErrorName(c.name.clone()));
    }
    let kind = match ev.kind {
        EventKind::Error => 0,
        EventKind::Cleared => 1,
        EventKind::ThresholdSet => 2,
        EventKind::Recovered => 3,
    };
    attrs.extend([
        RasAttr::ErrorValue(u32::try_from(ev.value).unwrap_or(u32::MAX)),
        RasAttr::ErrorValueU64(ev.value),
        RasAttr::Severity(severity_idx(ev.severity)),
        RasAttr::EventSeq(ev.seq),
        RasAttr::EventTimestamp(ev.timestamp_ns),
        RasAttr::EventKind(kind),
        RasAttr::EventDelta(ev.delta),
    ]);
    RasMsg::new(RasCmd::ErrorEvent, attrs)
}

fn health_msg(cmd: RasCmd, n: &RasNode) -> RasMsg {
    let r = n.reporter();
    RasMsg::new(
        cmd,
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

fn node_id(msg: &RasMsg) -> Result<u32> {
    need(msg.node_id(), msg, "node-id")
}

fn error_id(msg: &RasMsg) -> Result<u32> {
    need(msg.error_id(), msg, "error-id")
}

/// Replies of one command: (messages, is it a dump).
fn run(ras: &RasCore, admin: bool, msg: &RasMsg, dump: bool) -> Result<Vec<RasMsg>> {
    let mutating = matches!(
        msg.cmd,
        RasCmd::ClearErrorCounter
            | RasCmd::SetErrorThreshold
            | RasCmd::Recover
            | RasCmd::SetReporter
            | RasCmd::InjectError
    );
    if mutating && !admin {
        return Err(Error::new(Errno::EPERM, format!("{} needs root or the daemon's user", msg.cmd.name())));
    }
    let optional_node = msg.node_id();
    let nodes = || -> Result<Vec<&RasNode>> {
        match optional_node {
            Some(id) => Ok(vec![ras.node(id)?]),
            None => Ok(ras.nodes().iter().collect()),
        }
    };
    Ok(match (msg.cmd, dump) {
        (RasCmd::ListNodes, _) => ras.nodes().iter().map(|n| node_msg(ras, n)).collect(),
        (RasCmd::GetErrorCounter, false) => vec![counter_msg(ras.node(node_id(msg)?)?, error_id(msg)?)?],
        (RasCmd::GetErrorCounter, true) => {
            let mut out = Vec::new();
            for n in nodes()? {
                for c in &n.counters {
                    out.push(counter_msg(n, c.id)?);
                }
            }
            out
        }
        (RasCmd::ClearErrorCounter, _) => {
            ras.clear(node_id(msg)?, error_id(msg)?)?;
            Vec::new()
        }
        (RasCmd::ErrorEvent, true) => ras
            .recent()
            .iter()
            .filter(|e| optional_node.is_none_or(|n| n == e.node_id))
            .map(|e| event_msg(ras, e))
            .collect(),
        (RasCmd::GetErrorThreshold, _) => {
            let (n, e) = (node_id(msg)?, error_id(msg)?);
            let t = ras.node(n)?.counter(e)?.threshold();
            vec![RasMsg::new(
                RasCmd::GetErrorThreshold,
                vec![RasAttr::NodeId(n), RasAttr::ErrorId(e), RasAttr::Threshold(t)],
            )]
        }
        (RasCmd::SetErrorThreshold, _) => {
            let t = need(msg.threshold(), msg, "threshold")?;
            ras.set_threshold(node_id(msg)?, error_id(msg)?, t)?;
            Vec::new()
        }
        (RasCmd::GetHealth, false) => vec![health_msg(RasCmd::GetHealth, ras.node(node_id(msg)?)?)],
        (RasCmd::GetHealth, true) => nodes()?.into_iter().map(|n| health_msg(RasCmd::GetHealth, n)).collect(),
        (RasCmd::Recover, _) => {
            ras.recover(node_id(msg)?)?;
            Vec::new()
        }
        (RasCmd::Diagnose, _) => ras
            .diagnose(node_id(msg)?)?
            .into_iter()
            .map(|(k, v)| RasMsg::new(RasCmd::Diagnose, vec![RasAttr::DiagKey(k), RasAttr::DiagValue(v)]))
            .collect(),
        (RasCmd::SetReporter, _) => {
            let grace = msg.grace_period_ms();
            let auto = msg.auto_recover().map(|v| v != 0);
            ras.configure_reporter(node_id(msg)?, grace, auto)?;
            Vec::new()
        }
        (RasCmd::InjectError, _) => {
            let count = msg.count().unwrap_or(1);
            ras.inject(node_id(msg)?, error_id(msg)?, count)?;
            Vec::new()
        }
        (RasCmd::ErrorEvent, false) => {
            return Err(Error::new(
                Errno::EOPNOTSUPP,
                "error-event is a notification: subscribe, or dump for the recent ones",
            ))
        }
    })
}

/// Handles one netlink request; returns the reply frames, each a list of netlink messages.
pub fn handle(ras: &RasCore, admin: bool, bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let (msg, flags, seq) = match nl::decode(bytes) {
        Ok(Parsed::Msg { msg, flags, seq }) => (msg, flags, seq),
        Ok(_) => return vec![vec![nl::error(Errno::EINVAL.raw() as i32, 0)]],
        Err(_) => return vec![vec![nl::error(Errno::EINVAL.raw() as i32, 0)]],
    };
    let dump = nl::is_dump(flags);
    match run(ras, admin, &msg, dump) {
        Err(e) => vec![vec![nl::error(e.code.raw() as i32, seq)]],
        Ok(replies) if dump => {
            let mut frames = vec![Vec::new()];
            let mut size = 0;
            for r in replies {
                let bytes = nl::multipart(r, seq);
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
        Ok(replies) if replies.is_empty() => vec![vec![nl::error(0, seq)]],
        Ok(replies) => vec![replies.into_iter().map(|r| nl::encode(r, 0, seq)).collect()],
    }
}
