//! One connection: handshake, then request → core call → reply, until the peer goes away.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use accel_core::client::Client;
use accel_core::namespace::{PeerInfo, Revoke, Share};
use accel_core::{Error, Subsystem};
use accel_uapi::wire::{self, Kind, ABI_MAJOR, ABI_MINOR, MAX_MESSAGE};
use accel_uapi::{transport, Errno, Reply, Request};
use rustix::event::{PollFd, PollFlags};

type Outcome = Result<(Reply, Vec<OwnedFd>), Error>;

/// Sends RAS events to a subscribed connection until the peer goes away.
fn stream_events(sub: &Arc<Subsystem>, sock: BorrowedFd<'_>, rx: std::sync::mpsc::Receiver<accel_core::ras::RasEvent>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => {
                let msg = accel_uapi::ras::encode(crate::ras_nl::event_msg(sub.ras(), &ev), 0, 0);
                if !send_reply(sock, 0, &Reply::Netlink(vec![msg]), &[]) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) if peer_gone(sock) => return,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Whether the peer hung up (checked during long waits, so they end with the client).
fn peer_gone(sock: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&sock, PollFlags::RDHUP)];
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0
        && fds[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR))
}

fn send_reply(sock: BorrowedFd<'_>, seq: u32, reply: &Reply, fds: &[OwnedFd]) -> bool {
    let bytes = match wire::encode(Kind::Reply, seq, reply) {
        Ok(b) => b,
        Err(code) => {
            let err = Reply::Error { code, message: "reply too large".into() };
            wire::encode(Kind::Reply, seq, &err).unwrap_or_default()
        }
    };
    let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    transport::send(sock, &bytes, &fds).is_ok()
}

fn error_reply(e: Error) -> Reply {
    Reply::Error { code: e.code, message: e.message }
}

/// Answers a connection that is not admitted with the reason (the client reads it as the
/// reply to its handshake); the caller then closes it.
pub(crate) fn refuse(sock: BorrowedFd<'_>, e: Error) {
    send_reply(sock, 0, &error_reply(e), &[]);
    // Drop a handshake that already arrived, so closing does not reset the peer (it would
    // then have to read past the reset to see the reason). Never blocks the accept loop.
    let mut buf = [0u8; 256];
    let _ = rustix::net::recv(sock, &mut buf, rustix::net::RecvFlags::DONTWAIT);
}

/// Serves one client until it disconnects; everything it held is freed on return.
pub fn serve_connection(sub: &Arc<Subsystem>, sock: OwnedFd, peer: PeerInfo) {
    let cred = peer.cred;
    let admin = sub.namespaces().is_admin(&peer);
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut client: Option<Client> = None;
    let mut strikes = 0u32;
    loop {
        let received = match transport::recv(sock.as_fd(), &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                // A peer that never finishes the handshake ends here (SO_RCVTIMEO).
                tracing::debug!(pid = cred.pid, "recv: {e}");
                break;
            }
        };
        // Malformed framing or bytes always count as abuse; other errors by their code.
        let mut malformed = true;
        let (seq, outcome) = if received.truncated {
            (0, Err(Error::new(Errno::EMSGSIZE, format!("message exceeds {MAX_MESSAGE} bytes"))))
        } else if received.extra_fds {
            (0, Err(Error::new(Errno::EBADF, format!("message carries more than {} descriptors", wire::MAX_FDS))))
        } else {
            match wire::decode::<Request>(Kind::Request, &buf[..received.len]) {
                Err(e) => (e.seq.unwrap_or(0), Err(Error::new(e.code, e.message))),
                Ok((seq, Request::Netlink(_) | Request::RasSubscribe))
                    if client.as_ref().is_some_and(|c| !c.namespace().is_root()) =>
                {
                    // RAS covers every device of the daemon: only the root namespace sees it.
                    (seq, Err(Error::new(Errno::EPERM, "RAS is the admin view: only the root namespace may use it")))
                }
                Ok((seq, Request::Netlink(bytes))) if client.is_some() => {
                    // A dump may take several frames; each is a reply with the request's seq.
                    let admin = client.as_ref().is_some_and(Client::is_admin);
                    let frames = crate::ras_nl::handle(sub.ras(), admin, &bytes);
                    if frames.iter().any(|f| !send_reply(sock.as_fd(), seq, &Reply::Netlink(f.clone()), &[])) {
                        break;
                    }
                    continue;
                }
                Ok((seq, Request::RasSubscribe)) if client.is_some() => {
                    // Subscribe before acknowledging, so no event after the ack is missed.
                    let rx = sub.ras().subscribe();
                    if send_reply(sock.as_fd(), seq, &Reply::Ok, &[]) {
                        stream_events(sub, sock.as_fd(), rx);
                    }
                    break;
                }
                Ok((seq, req)) => {
                    malformed = false;
                    (seq, handle(sub, &mut client, &peer, req, received.fds, sock.as_fd()))
                }
            }
        };
        let abusive = outcome.as_ref().is_err_and(|e| malformed || is_abuse(e.code));
        let (reply, fds) = match outcome {
            Ok((reply, fds)) => (reply, fds),
            Err(e) => (error_reply(e), Vec::new()),
        };
        if !send_reply(sock.as_fd(), seq, &reply, &fds) {
            break;
        }
        strikes = if abusive { strikes.saturating_add(1) } else { 0 };
        if let Some(pause) = tarpit(strikes, admin) {
            std::thread::sleep(pause);
        }
    }
    if let Some(c) = &client {
        if c.is_revoked() {
            c.settle(Duration::from_secs(2));
        }
        tracing::debug!(client = c.id(), pid = cred.pid, "client disconnected");
    }
}

fn handle(
    sub: &Arc<Subsystem>,
    client: &mut Option<Client>,
    peer: &PeerInfo,
    req: Request,
    fds: Vec<OwnedFd>,
    sock: BorrowedFd<'_>,
) -> Outcome {
    // Requests that take a descriptor take exactly one; no other request takes any.
    let takes_fd = matches!(req, Request::BoImport | Request::SyncobjImport);
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
        // Eviction closes the connection: the loop then ends and drops the client.
        let dup = rustix::io::fcntl_dupfd_cloexec(sock, 0)
            .map_err(|e| Error::new(Errno::EMFILE, format!("daemon out of descriptors: {e}")))?;
        // Shutting down only our reading side wakes this loop without the peer seeing a
        // hang-up yet: it sees one when the socket closes, after the client settled.
        c.set_revoke_hook(Box::new(move || {
            let _ = rustix::net::shutdown(&dup, rustix::net::Shutdown::Read);
        }));
        // The handshake is done: from now on the peer may stay idle as long as it likes.
        let _ = rustix::net::sockopt::set_socket_timeout(sock, rustix::net::sockopt::Timeout::Recv, None);
        let reply = Reply::Hello {
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            client_id: c.id(),
            server: concat!("acceld ", env!("CARGO_PKG_VERSION")).into(),
        };
        return Ok((reply, Vec::new()));
    };
    let ok = |r: Reply| Ok((r, Vec::new()));
    match req {
        Request::Hello { .. } => Err(Error::new(Errno::EPROTO, "handshake already done on this connection")),
        Request::ListDevices => ok(Reply::Devices(c.namespace().describe_all())),
        Request::DeviceInfo { minor } => ok(Reply::Device(c.namespace().describe(minor)?)),
        Request::Open { minor, wait_ms } => {
            c.open(minor, Duration::from_millis(wait_ms), &|| peer_gone(sock))?;
            ok(Reply::Device(c.namespace().describe(minor)?))
        }
        Request::BoCreate { size } => {
            let (handle, size) = c.bo_create(size)?;
            ok(Reply::Bo { handle, size })
        }
        Request::BoInfo { handle } => ok(Reply::Bo { handle, size: c.bo_size(handle)? }),
        Request::BoClose { handle } => c.bo_close(handle).and(ok(Reply::Ok)),
        Request::BoMmap { handle } => Ok((Reply::Fd, vec![c.bo_mmap(handle)?])),
        Request::BoExport { handle } => Ok((Reply::Fd, vec![c.bo_export(handle)?])),
        Request::BoImport => {
            let fd = fd.ok_or_else(|| Error::new(Errno::EBADF, "BoImport needs a descriptor"))?;
            let (handle, size) = c.bo_import(fd)?;
            ok(Reply::Bo { handle, size })
        }
        Request::QueueCreate { timeout_ms, priority, weight } => {
            ok(Reply::Queue(c.queue_create(timeout_ms, priority, weight)?))
        }
        Request::RingCreate { queue, entries } => {
            let fds = c.ring_create(queue, entries)?;
            Ok((Reply::Fd, vec![fds.ring, fds.doorbell, fds.completion]))
        }
        Request::QueueDestroy { handle } => c.queue_destroy(handle).and(ok(Reply::Ok)),
        Request::Submit { queue, op, wait, signal } => {
            let (fence, seqno) = c.submit(queue, &op, &wait, &signal)?;
            ok(Reply::Submitted { fence, seqno })
        }
        Request::Wait { points, all, timeout_ns } => {
            let (first, status, timestamps) =
                c.wait(&points, all, Duration::from_nanos(timeout_ns), &|| peer_gone(sock))?;
            ok(Reply::Waited { first, status, timestamps })
        }
        Request::FenceClose { handle } => c.fence_close(handle).and(ok(Reply::Ok)),
        Request::ExportSyncFd { point } => Ok((Reply::Fd, vec![c.export_sync_fd(&point)?])),
        Request::SyncobjCreate { timeline, signaled } => ok(Reply::Syncobj(c.syncobj_create(timeline, signaled)?)),
        Request::SyncobjDestroy { handle } => c.syncobj_destroy(handle).and(ok(Reply::Ok)),
        Request::SyncobjSignal { handle, point } => c.syncobj_signal(handle, point).and(ok(Reply::Ok)),
        Request::SyncobjReset { handle } => c.syncobj_reset(handle).and(ok(Reply::Ok)),
        Request::SyncobjQuery { handle } => ok(Reply::Point(c.syncobj_query(handle)?)),
        Request::SyncobjExport { handle } => Ok((Reply::Fd, vec![c.syncobj_export(handle)?])),
        Request::SyncobjImport => {
            let fd = fd.ok_or_else(|| Error::new(Errno::EBADF, "SyncobjImport needs a descriptor"))?;
            ok(Reply::Syncobj(c.syncobj_import(fd)?))
        }
        // Served by the connection loop once the handshake is done; never reaches here then.
        Request::Netlink(_) | Request::RasSubscribe => {
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
fn tarpit(strikes: u32, admin: bool) -> Option<Duration> {
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
