//! How messages travel: one `SOCK_SEQPACKET` datagram per message, with at most
//! [`MAX_FDS`] descriptor(s) as `SCM_RIGHTS` ancillary data. Shared by the daemon
//! and the client library so both sides frame the same way.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::wire::{MAX_FDS, MAX_MESSAGE};

/// A received message.
#[derive(Debug)]
pub struct Received {
    /// Bytes of the message in the caller's buffer.
    pub len: usize,
    /// The descriptors that came with it (at most [`MAX_FDS`]).
    pub fds: Vec<OwnedFd>,
    /// The message was longer than [`MAX_MESSAGE`] and was cut.
    pub truncated: bool,
    /// More descriptors came than [`MAX_FDS`]; the extras were closed.
    pub extra_fds: bool,
}

/// Sends one message with up to [`MAX_FDS`] descriptors.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> rustix::io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(rustix::io::Errno::TOOMANYREFS);
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    let sent = rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL)?;
    if sent != bytes.len() {
        return Err(rustix::io::Errno::MSGSIZE);
    }
    Ok(())
}

/// Receives one message into `buf` (which should be [`MAX_MESSAGE`] + 1 bytes so
/// truncation is detectable). `Ok(None)` means the peer closed the connection.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> rustix::io::Result<Option<Received>> {
    recv_with(sock, buf, RecvFlags::empty())
}

/// [`recv`] that returns `EAGAIN` at once when no message is waiting, for callers that
/// poll briefly before they block (a wake-up from a blocked receive costs microseconds).
pub fn try_recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> rustix::io::Result<Option<Received>> {
    recv_with(sock, buf, RecvFlags::DONTWAIT)
}

fn recv_with(sock: BorrowedFd<'_>, buf: &mut [u8], flags: RecvFlags) -> rustix::io::Result<Option<Received>> {
    // Room for more descriptors than we accept, so extras are seen (and closed) rather than lost silently.
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS + 4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC | flags) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    let extra_fds = fds.len() > MAX_FDS || msg.flags.contains(ReturnFlags::CTRUNC);
    if extra_fds {
        fds.clear();
    }
    Ok(Some(Received {
        len: msg.bytes.min(buf.len()),
        fds,
        truncated: msg.flags.contains(ReturnFlags::TRUNC) || msg.bytes > MAX_MESSAGE,
        extra_fds,
    }))
}

/// A new close-on-exec `SOCK_SEQPACKET` Unix socket.
pub fn socket() -> rustix::io::Result<OwnedFd> {
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
}

/// Connects to the daemon socket at `path`.
pub fn connect(path: &Path) -> rustix::io::Result<OwnedFd> {
    let fd = socket()?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn message_and_descriptor_arrive_together() {
        let (a, b) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        send(a.as_fd(), b"hello", &[memfd.as_fd()]).unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let r = recv(b.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..r.len], b"hello");
        assert!(r.fds.len() == 1 && !r.truncated && !r.extra_fds);
        drop(a);
        assert!(recv(b.as_fd(), &mut buf).unwrap().is_none());
    }

    #[test]
    fn oversized_message_is_flagged_truncated() {
        let (a, b) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&a, 4 * MAX_MESSAGE).unwrap();
        send(a.as_fd(), &vec![7u8; MAX_MESSAGE + 100], &[]).unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        assert!(recv(b.as_fd(), &mut buf).unwrap().unwrap().truncated);
    }
}
