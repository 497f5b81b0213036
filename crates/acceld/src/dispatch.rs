//! One message: decode, call the core, and say what to answer. The event loop
//! (`server.rs`) owns the sockets; this file owns the meaning of every request.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use accel_core::client::Client;
use accel_core::fence::Fence;
use accel_core::namespace::{PeerInfo, Revoke, Share};
use accel_core::{Error, Subsystem};
use accel_uapi::transport::Received;
use accel_uapi::wire::{self, Kind, ABI_MAJOR, ABI_MINOR, MAX_MESSAGE};
use accel_uapi::{transport, Errno, Reply, Request};

/// What to do with a request once the core has seen it.
pub(crate) enum Action {
    /// Answer now (boxed: a device description is large, the other actions small).
    Reply(Box<Reply>, Vec<OwnedFd>),
    /// Answer with these RAS netlink frames, each its own `Reply::Netlink`.
    Netlink(Vec<Vec<Vec<u8>>>),
    /// Answer when the fences satisfy the wait (all or any), or with `expired` at the
    /// timeout; the connection serves other requests meanwhile.
    Wait {
        /// What is waited for.
        fences: Vec<Arc<Fence>>,
        /// All of them, or any.
        all: bool,
        /// How long at most.
        timeout: Duration,
        /// The errno of a timeout: `ETIME` for syncobj waits (DRM), `ETIMEDOUT` for fence
        /// waits (ABI 2.1, kept).
        expired: Errno,
    },
    /// Open an exclusive device once its lease comes free (the client is in line), or
    /// answer `EBUSY` after `wait`.
    Open {
        /// Local minor.
        minor: u32,
        /// How long at most.
        wait: Duration,
    },
    /// Answer `Ok`, then stream RAS events on this connection.
    Subscribe(crate::ras_nl::View, bool),
    /// Serving the request panicked: answer with this error, then close the connection.
    Failed(Error),
}

/// A connection's protocol state.
pub(crate) struct Session {
    /// The client, after the handshake.
    pub client: Option<Client>,
    /// Who the peer is.
    pub peer: PeerInfo,
    /// Whether the peer is an admin (spared the tarpit).
    pub admin: bool,
}

type Outcome = Result<Action, Error>;

/// Encodes a reply; one too large for a message becomes an error reply.
pub(crate) fn encode_reply(seq: u32, reply: &Reply) -> Vec<u8> {
    match wire::encode(Kind::Reply, seq, reply) {
        Ok(b) => b,
        Err(code) => {
            let err = Reply::Error { code, message: "reply too large".into() };
            wire::encode(Kind::Reply, seq, &err).unwrap_or_default()
        }
    }
}

/// The answer to a wait that is satisfied already, if it is.
pub(crate) fn waited_now(fences: &[Arc<Fence>], all: bool) -> Option<Reply> {
    let (first, status) = accel_core::fence::poll_fences(fences, all)?;
    let timestamps = fences.iter().map(|f| f.timestamp()).collect();
    let messages = fences.iter().map(|f| f.message().unwrap_or_default()).collect();
    Some(Reply::Waited { first, status, timestamps, messages })
}

/// The answer to a wait whose time ran out (`code`: `ETIMEDOUT`, or `ETIME` for syncobjs).
pub(crate) fn wait_expired(code: Errno) -> Reply {
    error_reply(Error::new(code, "wait timed out"))
}

pub(crate) fn error_reply(e: Error) -> Reply {
    Reply::Error { code: e.code, message: e.message }
}

/// Answers a connection that is not admitted with the reason (the client reads it as the
/// reply to its handshake); the caller then closes it.
pub(crate) fn refuse(sock: BorrowedFd<'_>, e: Error) {
    let _ = transport::send(sock, &encode_reply(0, &error_reply(e)), &[]);
    // Drop a handshake that already arrived, so closing does not reset the peer (it would
    // then have to read past the reset to see the reason). Never blocks the accept loop.
    let mut buf = [0u8; 256];
    let _ = rustix::net::recv(sock, &mut buf, rustix::net::RecvFlags::DONTWAIT);
}

/// Handles one received message: its sequence number, what to do, and whether it counts
/// as abuse (malformed, or refused for a reason a well-behaved client does not repeat).
pub(crate) fn dispatch(
    sub: &Arc<Subsystem>,
    session: &mut Session,
    received: Received,
    bytes: &[u8],
) -> (u32, Outcome, bool) {
    if received.truncated {
        return (0, Err(Error::new(Errno::EMSGSIZE, format!("message exceeds {MAX_MESSAGE} bytes"))), true);
    }
    if received.extra_fds {
        let e = Error::new(Errno::EBADF, format!("message carries more than {} descriptors", wire::MAX_FDS));
        return (0, Err(e), true);
    }
    let (seq, req) = match wire::decode::<Request>(Kind::Request, bytes) {
        Ok(r) => r,
        Err(e) => return (e.seq.unwrap_or(0), Err(Error::new(e.code, e.message)), true),
    };
    // A panic in serving it (a bug: the daemon's, a driver's, a library's) fails this request
    // and closes its connection, as a process whose system call met a kernel oops; the
    // thread serves its other connections on.
    let pid = session.peer.cred.pid;
    let outcome = accel_core::catch_panic(|| match (&session.client, req) {
        // Evicted: nothing more, until the connection closes (after its jobs report ENODEV).
        (Some(c), _) if c.is_revoked() => {
            Err(Error::new(Errno::ENODEV, format!("this client was evicted from namespace {:?}", c.namespace().name)))
        }
        (Some(c), Request::Netlink(bytes)) => {
            Ok(Action::Netlink(crate::ras_nl::handle(sub.ras(), &ras_view(c), &bytes)))
        }
        (Some(c), Request::RasSubscribe) => Ok(Action::Subscribe(ras_view(c), false)),
        (Some(c), Request::RasSubscribeExt) => Ok(Action::Subscribe(ras_view(c), true)),
        (_, req) => handle(sub, session, req, received.fds),
    })
    .unwrap_or_else(|why| {
        tracing::error!(pid, "a request met a bug in the daemon and failed ({why}); its connection is closed");
        Ok(Action::Failed(Error::new(
            Errno::EIO,
            format!("the daemon failed on this request ({why}); this connection is closed"),
        )))
    });
    let abusive = outcome.as_ref().is_err_and(|e| is_abuse(e.code));
    (seq, outcome, abusive)
}

/// What a client sees of RAS: the root namespace every device (and changes them if it is an
/// admin); a tenant its own devices, read-only.
fn ras_view(c: &accel_core::client::Client) -> crate::ras_nl::View {
    let ns = c.namespace();
    if ns.is_root() {
        crate::ras_nl::View::all(c.is_admin())
    } else {
        crate::ras_nl::View { admin: false, devices: Some(ns.devices().iter().map(|d| d.device.minor).collect()) }
    }
}

fn handle(sub: &Arc<Subsystem>, session: &mut Session, req: Request, fds: Vec<OwnedFd>) -> Outcome {
    let Session { client, peer, .. } = session;
    // Requests that take a descriptor take exactly one; no other request takes any.
    let takes_fd = matches!(
        req,
        Request::BoImport
            | Request::BoImportExternal { .. }
            | Request::SyncobjImport
            | Request::SyncobjEventfd { .. }
            | Request::SyncobjImportSyncFile { .. }
    );
    if fds.len() > usize::from(takes_fd) {
        return Err(Error::new(Errno::EBADF, "this request does not take (that many) descriptors"));
    }
    let fd = fds.into_iter().next();
    let Some(c) = client.as_mut() else {
        let Request::Hello { abi_major, abi_minor: _, name, token } = req else {
            return Err(Error::new(Errno::EPROTO, "the first message must be Hello (version handshake)"));
        };
        if abi_major != ABI_MAJOR {
            return Err(Error::new(Errno::EPROTO, format!("client speaks ABI {abi_major}, daemon speaks {ABI_MAJOR}")));
        }
        let placement = sub.namespaces().place(peer, token.as_deref())?;
        let c = client.insert(sub.connect_in(placement, peer.cred, &name));
        let reply = Reply::Hello {
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            client_id: c.id(),
            server: concat!("acceld ", env!("CARGO_PKG_VERSION")).into(),
        };
        return Ok(Action::Reply(Box::new(reply), Vec::new()));
    };
    let ok = |r: Reply| Ok(Action::Reply(Box::new(r), Vec::new()));
    match req {
        Request::Hello { .. } => Err(Error::new(Errno::EPROTO, "handshake already done on this connection")),
        Request::ListDevices => ok(Reply::Devices(c.namespace().describe_all())),
        Request::DeviceInfo { minor } => ok(Reply::Device(c.namespace().describe(minor)?)),
        Request::Open { minor, wait_ms } => {
            if c.open_poll(minor, wait_ms > 0)? {
                ok(Reply::Device(c.namespace().describe(minor)?))
            } else {
                Ok(Action::Open { minor, wait: Duration::from_millis(wait_ms) })
            }
        }
        Request::BoCreate { size, region } => {
            let (handle, size) = c.bo_create(size, region)?;
            ok(Reply::Bo { handle, size, region })
        }
        Request::BoInfo { handle } => {
            let (size, region) = c.bo_info(handle)?;
            ok(Reply::Bo { handle, size, region })
        }
        Request::BoClose { handle } => c.bo_close(handle).and(ok(Reply::Ok)),
        Request::BoMmap { handle } => Ok(Action::Reply(Box::new(Reply::Fd), vec![c.bo_mmap(handle)?])),
        Request::BoMapping { handle } => {
            let (fd, offset) = c.bo_mapping(handle)?;
            Ok(Action::Reply(Box::new(Reply::Mapping { offset }), vec![fd]))
        }
        Request::BoExport { handle } => Ok(Action::Reply(Box::new(Reply::Fd), vec![c.bo_export(handle)?])),
        Request::BoImport => {
            let fd = fd.ok_or_else(|| Error::new(Errno::EBADF, "BoImport needs a descriptor"))?;
            let (handle, size, region) = c.bo_import(fd)?;
            ok(Reply::Bo { handle, size, region })
        }
        Request::BoImportExternal { region, size } => {
            let fd = fd.ok_or_else(|| Error::new(Errno::EBADF, "BoImportExternal needs a descriptor"))?;
            let handle = c.bo_import_external(fd, region, size)?;
            ok(Reply::Bo { handle, size, region })
        }
        Request::QueueCreate { timeout_ms, priority, weight } => {
            ok(Reply::Queue(c.queue_create(timeout_ms, priority, weight)?))
        }
        Request::RingCreate { queue, entries } => {
            let fds = c.ring_create(queue, entries)?;
            Ok(Action::Reply(Box::new(Reply::Fd), vec![fds.ring, fds.doorbell, fds.completion]))
        }
        Request::RingErrors { queue } => {
            let (errors, dropped) = c.ring_errors(queue)?;
            ok(Reply::RingErrors { errors, dropped })
        }
        Request::QueueDestroy { handle } => c.queue_destroy(handle).and(ok(Reply::Ok)),
        Request::Submit { queue, op, wait, signal } => {
            let (fence, seqno) = c.submit(queue, &op, &wait, &signal)?;
            ok(Reply::Submitted { fence, seqno })
        }
        Request::SubmitWait { queue, op, wait, signal, timeout_ns } => {
            let (fence, _) = c.submit_job(queue, &op, &wait, &signal)?;
            let timeout = Duration::from_nanos(timeout_ns);
            Ok(Action::Wait { fences: vec![fence], all: true, timeout, expired: Errno::ETIMEDOUT })
        }
        Request::Wait { points, all, timeout_ns } => {
            let fences = c.wait_fences_of(&points)?;
            Ok(Action::Wait { fences, all, timeout: Duration::from_nanos(timeout_ns), expired: Errno::ETIMEDOUT })
        }
        Request::FenceClose { handle } => c.fence_close(handle).and(ok(Reply::Ok)),
        Request::ExportSyncFd { point } => Ok(Action::Reply(Box::new(Reply::Fd), vec![c.export_sync_fd(&point)?])),
        Request::ExportNativeSyncFile { point } => {
            Ok(Action::Reply(Box::new(Reply::Fd), vec![c.export_native_sync_file(&point)?]))
        }
        // Every syncobj takes binary and timeline operations, as in DRM: `timeline` is kept
        // for ABI 2.1 and changes nothing.
        Request::SyncobjCreate { timeline: _, signaled } => ok(Reply::Syncobj(c.syncobj_create(signaled)?)),
        Request::SyncobjDestroy { handle } => c.syncobj_destroy(handle).and(ok(Reply::Ok)),
        Request::SyncobjSignal { handle, point } => c.syncobj_signal(handle, point).and(ok(Reply::Ok)),
        Request::SyncobjReset { handle } => c.syncobj_reset(handle).and(ok(Reply::Ok)),
        Request::SyncobjQuery { handle } => ok(Reply::Point(c.syncobj_query(handle)?)),
        Request::SyncobjExport { handle } => Ok(Action::Reply(Box::new(Reply::Fd), vec![c.syncobj_export(handle)?])),
        Request::SyncobjImport => {
            let fd = fd.ok_or_else(|| Error::new(Errno::EBADF, "SyncobjImport needs a descriptor"))?;
            ok(Reply::Syncobj(c.syncobj_import(fd)?))
        }
        Request::ProgramLoad { format, bytes } => {
            let (handle, entries) = c.program_load(&format, &bytes)?;
            ok(Reply::Program { handle, entries })
        }
        Request::ProgramInfo { handle } => ok(Reply::Program { handle, entries: c.program_info(handle)? }),
        Request::ProgramUnload { handle } => c.program_unload(handle).and(ok(Reply::Ok)),
        Request::SyncobjWaitMany { handles, points, flags, timeout_ns } => {
            match c.syncobj_wait_many(&handles, &points, flags, timeout_ns)? {
                Some(w) => Ok(Action::Wait { fences: w.fences, all: w.all, timeout: w.timeout, expired: Errno::ETIME }),
                None => {
                    ok(Reply::Waited { first: 0, status: Vec::new(), timestamps: Vec::new(), messages: Vec::new() })
                }
            }
        }
        Request::SyncobjSignalMany { handles, points } => c.syncobj_signal_many(&handles, &points).and(ok(Reply::Ok)),
        Request::SyncobjResetMany { handles } => c.syncobj_reset_many(&handles).and(ok(Reply::Ok)),
        Request::SyncobjQueryMany { handles, flags } => ok(Reply::Points(c.syncobj_query_many(&handles, flags)?)),
        Request::SyncobjTransfer { src, src_point, dst, dst_point, flags } => {
            c.syncobj_transfer(src, src_point, dst, dst_point, flags).and(ok(Reply::Ok))
        }
        Request::SyncobjEventfd { handle, point, flags } => {
            let fd = fd.ok_or_else(|| Error::new(Errno::EBADF, "SyncobjEventfd needs an eventfd"))?;
            c.syncobj_eventfd(handle, point, flags, fd).and(ok(Reply::Ok))
        }
        Request::SyncobjExportSyncFile { handle, point } => {
            Ok(Action::Reply(Box::new(Reply::Fd), vec![c.syncobj_export_sync_file(handle, point)?]))
        }
        Request::SyncobjImportSyncFile { handle, point } => {
            let fd = fd.ok_or_else(|| Error::new(Errno::EBADF, "SyncobjImportSyncFile needs a sync file"))?;
            c.syncobj_import_sync_file(handle, point, &fd).and(ok(Reply::Ok))
        }
        // Served by the connection loop once the handshake is done; never reaches here then.
        Request::Netlink(_) | Request::RasSubscribe | Request::RasSubscribeExt => {
            Err(Error::new(Errno::EPROTO, "RAS requests need the handshake first"))
        }
        Request::Stats if c.namespace().is_root() => ok(Reply::Stats(sub.stats())),
        Request::Stats => Err(Error::new(Errno::EPERM, "daemon-wide object counts are the root namespace's view")),
        Request::Clients => ok(Reply::Clients(sub.client_usage_in(c.namespace(), c.cred().uid))),
        Request::NsCreate { .. }
        | Request::NsDelete { .. }
        | Request::NsAssign { .. }
        | Request::NsList
        | Request::NsToken { .. }
        | Request::NsRetireTokens { .. }
            if !c.namespace().is_root() || !c.is_admin() =>
        {
            Err(Error::new(
                Errno::EPERM,
                "namespaces are managed by root or the daemon's user, from the root namespace",
            ))
        }
        Request::NsCreate { name, token } => sub.namespaces().create(&name, token).and(ok(Reply::Ok)),
        Request::NsDelete { name, evict } => sub.delete_namespace(&name, revoke(evict)).and(ok(Reply::Ok)),
        Request::NsAssign { name, device, memory_limit, weight, max_clients, evict } => {
            let share = Share { memory_limit, weight, max_clients };
            sub.assign_share(&name, device, share, revoke(evict)).and(ok(Reply::Ok))
        }
        Request::NsToken { name, token, keep_old } => {
            ok(Reply::Token(sub.namespaces().rotate_token(&name, token, keep_old)?))
        }
        Request::NsRetireTokens { name } => ok(Reply::Point(sub.namespaces().retire_tokens(&name)? as u64)),
        Request::NsList => ok(Reply::Namespaces(
            sub.namespaces()
                .list()
                .iter()
                .map(|ns| accel_uapi::NamespaceInfo {
                    name: ns.name.clone(),
                    has_token: ns.has_token(),
                    devices: ns
                        .devices()
                        .iter()
                        .map(|d| {
                            let share = d.share();
                            accel_uapi::NsDeviceInfo {
                                device: d.device.minor,
                                memory_limit: share.memory_limit,
                                memory_used: d.memory_used(),
                                region_used: d.region_used(),
                                weight: share.weight,
                                max_clients: share.max_clients,
                                clients: d.clients(),
                            }
                        })
                        .collect(),
                })
                .collect(),
        )),
    }
}

fn revoke(evict: bool) -> Revoke {
    if evict {
        Revoke::Evict
    } else {
        Revoke::Refuse
    }
}

/// Errors of well-formed requests that a well-behaved client does not provoke again and
/// again: forged handles, requests beyond its caps or rights. (Not `EINVAL`, `EBUSY` or
/// timeouts: polling for a point or a lease legitimately repeats those.)
fn is_abuse(code: Errno) -> bool {
    matches!(
        code,
        Errno::EPROTO | Errno::ENOENT | Errno::EMFILE | Errno::ENOSPC | Errno::EUSERS | Errno::EPERM | Errno::EACCES
    )
}

/// Consecutive abusive errors a non-admin connection gets for free.
const FREE_STRIKES: u32 = 32;
/// Longest pause before serving a connection's next message.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// How long to pause a non-admin connection after `strikes` consecutive abusive errors:
/// nothing for the first [`FREE_STRIKES`], then 1 ms more per strike up to [`MAX_PAUSE`].
/// A hostile client then costs the daemon at most ~20 replies a second per connection;
/// the first success clears its strikes.
pub(crate) fn tarpit(strikes: u32, admin: bool) -> Option<Duration> {
    (!admin && strikes > FREE_STRIKES).then(|| Duration::from_millis(u64::from(strikes - FREE_STRIKES)).min(MAX_PAUSE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarpit_spares_admins_and_grows_to_its_cap() {
        assert_eq!(tarpit(FREE_STRIKES, false), None);
        assert_eq!(tarpit(1000, true), None);
        assert_eq!(tarpit(FREE_STRIKES + 1, false), Some(Duration::from_millis(1)));
        assert_eq!(tarpit(FREE_STRIKES + 10, false), Some(Duration::from_millis(10)));
        assert_eq!(tarpit(u32::MAX, false), Some(MAX_PAUSE));
        assert!(
            is_abuse(Errno::EMFILE)
                && !is_abuse(Errno::ETIMEDOUT)
                && !is_abuse(Errno::EBUSY)
                && !is_abuse(Errno::EINVAL)
        );
    }
}
