//! A connection without a socket: a client's messages served one at a time, in process,
//! through the same dispatch as a socket connection's. For fuzzing the daemon's request
//! handling past the decoder (`fuzz/fuzz_targets/serve_requests.rs`) and for tests that want
//! a client without a process.

use std::sync::Arc;
use std::time::Duration;

use accel_core::credentials::PeerCred;
use accel_core::fence::wait_fences;
use accel_core::namespace::{PeerInfo, Revoke, Share, DEFAULT_SHARE_WEIGHT};
use accel_core::Subsystem;
use accel_uapi::transport::Received;
use accel_uapi::Reply;

use crate::dispatch::{self, encode_reply, error_reply, Action, Session};

/// One client's connection to a [`Subsystem`], served without a socket. Dropping it is the
/// client hanging up: what only it held goes.
pub struct Loopback {
    sub: Arc<Subsystem>,
    session: Session,
    wait_limit: Duration,
}

impl Loopback {
    /// A connection of `peer` (placed in a namespace as a socket's peer is, at its `Hello`).
    pub fn new(sub: &Arc<Subsystem>, peer: PeerInfo) -> Loopback {
        let admin = sub.namespaces().is_admin(&peer);
        Loopback {
            sub: sub.clone(),
            session: Session { client: None, peer, admin },
            wait_limit: Duration::from_secs(1),
        }
    }

    /// Waits longer than `limit` (1 s unless set) get no reply from [`Loopback::serve`] once
    /// `limit` has passed, as if still pending; shorter ones their timeout's error.
    pub fn with_wait_limit(mut self, limit: Duration) -> Loopback {
        self.wait_limit = limit;
        self
    }

    /// Serves one message, without descriptors, as a socket connection would; returns the
    /// encoded replies it gets. A wait blocks (at most the wait limit) and gets its answer; an
    /// `Open` that would queue for an exclusive device and the events after a subscription's
    /// `Ok` get none here.
    pub fn serve(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let received = Received { len: bytes.len(), fds: Vec::new(), truncated: false, extra_fds: false };
        let (seq, outcome, _) = dispatch::dispatch(&self.sub, &mut self.session, received, bytes);
        let replies = match outcome {
            Ok(Action::Reply(reply, _)) => vec![*reply],
            Ok(Action::Netlink(frames)) => frames.into_iter().map(Reply::Netlink).collect(),
            Ok(Action::Wait { fences, all, timeout, expired }) => {
                let limit = timeout.min(self.wait_limit);
                let reply = dispatch::waited_now(&fences, all).or_else(|| {
                    let _ = wait_fences(&fences, all, limit);
                    dispatch::waited_now(&fences, all).or((limit == timeout).then(|| dispatch::wait_expired(expired)))
                });
                reply.into_iter().collect()
            }
            Ok(Action::Open { .. }) => Vec::new(),
            Ok(Action::Subscribe(..)) => vec![Reply::Ok],
            Ok(Action::Failed(e)) | Err(e) => vec![error_reply(e)],
        };
        replies.iter().map(|r| encode_reply(seq, r)).collect()
    }
}

/// A subsystem of the devices `specs` names (as `--device` does) whose default namespace,
/// where clients of no admin group are placed, holds device 0 with `memory_limit` bytes of its
/// memory: the set-up of the fuzz target `serve_requests`, whose client is such a tenant.
pub fn tenant_subsystem(specs: &str, memory_limit: u64) -> Result<Arc<Subsystem>, String> {
    let devices = crate::parse_device_specs(specs).map_err(|e| e.to_string())?;
    let sub = Subsystem::new(devices).map_err(|e| e.to_string())?;
    let share = Share { memory_limit, weight: DEFAULT_SHARE_WEIGHT, max_clients: 0 };
    sub.assign_share(accel_core::namespace::DEFAULT, 0, share, Revoke::Refuse).map_err(|e| e.to_string())?;
    Ok(sub)
}

/// A peer of no admin group (neither root nor this process's user), which
/// [`tenant_subsystem`]'s daemon places in its default namespace.
pub fn tenant_peer() -> PeerInfo {
    let uid = rustix::process::geteuid().as_raw().wrapping_add(4242).max(1);
    PeerInfo { cred: PeerCred { pid: std::process::id() as i32, uid, gid: uid }, ..PeerInfo::default() }
}

/// Frames messages for the fuzz target `serve_requests`: each as a little-endian u16 length,
/// then its bytes.
pub fn frame(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        let m = &m[..m.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// The messages `frame` framed; a short last one is taken as it is.
pub fn unframe(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [lo, hi, rest @ ..] = bytes {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        out.push(&rest[..len]);
        bytes = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use accel_uapi::wire::{self, Kind, ABI_MAJOR, ABI_MINOR};
    use accel_uapi::{BufView, GemmF32, MatView, Op, Priority, Request, SignalPoint, WaitPoint};

    use super::*;

    struct Script {
        lb: Loopback,
        seq: u32,
        sent: Vec<Vec<u8>>,
    }

    impl Script {
        fn call(&mut self, req: Request) -> Reply {
            self.seq += 1;
            let bytes = wire::encode(Kind::Request, self.seq, &req).unwrap();
            let replies = self.lb.serve(&bytes);
            self.sent.push(bytes);
            assert_eq!(replies.len(), 1, "{req:?}");
            let (seq, reply) = wire::decode::<Reply>(Kind::Reply, &replies[0]).unwrap();
            assert_eq!(seq, self.seq);
            assert!(!matches!(reply, Reply::Error { .. }), "{req:?}: {reply:?}");
            reply
        }
    }

    /// The session the fuzz target's seed holds (`ACCEL_WRITE_FUZZ_SEED=<file>` writes it):
    /// a device opened, buffers, a queue, fills, a copy, a GEMM, syncobjs and waits, all closed.
    #[test]
    fn a_session_is_served_as_on_a_socket_and_leaves_nothing_behind() {
        let sub = tenant_subsystem("cpu", 16 << 20).unwrap();
        let before = sub.stats();
        let mut lb = Loopback::new(&sub, tenant_peer());
        let hello = Request::Hello { abi_major: ABI_MAJOR, abi_minor: ABI_MINOR, name: "loop".into(), token: None };
        assert_eq!(lb.serve(&wire::encode(Kind::Request, 0, &hello).unwrap()).len(), 1);
        let mut s = Script { lb, seq: 0, sent: Vec::new() };
        s.call(Request::ListDevices);
        s.call(Request::Open { minor: 0, wait_ms: 0 });
        let bo = |r: Reply| match r {
            Reply::Bo { handle, .. } => handle,
            r => panic!("{r:?}"),
        };
        let (x, y) = (
            bo(s.call(Request::BoCreate { size: 4096, region: 0 })),
            bo(s.call(Request::BoCreate { size: 4096, region: 0 })),
        );
        let Reply::Queue(q) = s.call(Request::QueueCreate { timeout_ms: 0, priority: Priority::Normal, weight: 0 })
        else {
            panic!()
        };
        let Reply::Syncobj(so) = s.call(Request::SyncobjCreate { timeline: true, signaled: false }) else { panic!() };
        let fill = Op::Fill { dst: BufView { bo: x, offset: 0, len: 4096 }, pattern: 0x3f80_0000 };
        let signal = vec![SignalPoint { handle: so, point: 1 }];
        let Reply::Submitted { fence, .. } = s.call(Request::Submit { queue: q, op: fill, wait: vec![], signal })
        else {
            panic!()
        };
        let copy =
            Op::Copy { src: BufView { bo: x, offset: 0, len: 2048 }, dst: BufView { bo: y, offset: 2048, len: 2048 } };
        let wait = vec![WaitPoint::Syncobj { handle: so, point: 1 }];
        s.call(Request::SubmitWait { queue: q, op: copy, wait, signal: vec![], timeout_ns: 5_000_000_000 });
        let m = |bo, offset| MatView { bo, offset, row_stride: 8 };
        let gemm = GemmF32 { m: 8, n: 8, k: 8, a: m(x, 0), b: m(x, 256), c: m(y, 0), alpha: 1.0, beta: 0.0 };
        s.call(Request::SubmitWait {
            queue: q,
            op: Op::GemmF32(gemm),
            wait: vec![],
            signal: vec![],
            timeout_ns: 5_000_000_000,
        });
        s.call(Request::Wait { points: vec![WaitPoint::Fence(fence)], all: true, timeout_ns: 0 });
        s.call(Request::SyncobjQuery { handle: so });
        s.call(Request::SyncobjSignal { handle: so, point: 2 });
        s.call(Request::BoInfo { handle: y });
        s.call(Request::Clients);
        s.call(Request::FenceClose { handle: fence });
        s.call(Request::SyncobjDestroy { handle: so });
        s.call(Request::QueueDestroy { handle: q });
        s.call(Request::BoClose { handle: x });
        if let Some(path) = std::env::var_os("ACCEL_WRITE_FUZZ_SEED") {
            std::fs::write(path, frame(&s.sent)).unwrap();
        }
        assert_eq!(unframe(&frame(&s.sent)), s.sent.iter().map(|m| m.as_slice()).collect::<Vec<_>>());
        // y is still open: the hang-up frees it.
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sub.stats() != before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sub.stats(), before);
    }
}
