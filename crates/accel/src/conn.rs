//! One connection to the daemon: handshake, numbered requests, replies with descriptors.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use accel_uapi::wire::{self, Kind, ABI_MAJOR, ABI_MINOR, MAX_MESSAGE};
use accel_uapi::{catalog, transport, ClientUsage, DeviceInfo, Errno, ObjectCounts, Reply, Request};

use crate::{Error, Result};

pub(crate) fn unexpected(reply: &Reply) -> Error {
    Error::new(Errno::EPROTO, format!("unexpected reply from daemon: {reply:?}"))
}

/// A handshaken connection to the daemon. [`crate::Device`] wraps one; use it
/// directly for device-independent requests (`list`, `info`, stats).
pub struct Connection {
    sock: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    /// Tag of the last reply received.
    last_tag: u32,
    client_id: u64,
    server: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("client_id", &self.client_id).field("server", &self.server).finish()
    }
}

impl Connection {
    /// Connects to the daemon at `socket` and performs the version handshake. The
    /// namespace token, if any, comes from `$ACCEL_NS_TOKEN`.
    pub fn connect(socket: &Path) -> Result<Connection> {
        Self::connect_with_token(socket, std::env::var("ACCEL_NS_TOKEN").ok().as_deref())
    }

    /// Like [`Connection::connect`], presenting `token` to be placed in its namespace.
    pub fn connect_with_token(socket: &Path, token: Option<&str>) -> Result<Connection> {
        let sock = transport::connect(socket).map_err(|e| {
            Error::os(&format!("cannot reach the accel daemon at {} (is `accel daemon` running?)", socket.display()), e)
        })?;
        let mut conn = Connection {
            sock,
            seq: 0,
            buf: vec![0; MAX_MESSAGE + 1],
            last_tag: 0,
            client_id: 0,
            server: String::new(),
        };
        let name = std::env::args().next().unwrap_or_default();
        let name = Path::new(&name).file_name().map_or(name.clone(), |n| n.to_string_lossy().into_owned());
        let token = token.map(str::to_string);
        match conn.call(&Request::Hello { abi_major: ABI_MAJOR, abi_minor: ABI_MINOR, name, token })? {
            Reply::Hello { client_id, server, .. } => {
                conn.client_id = client_id;
                conn.server = server;
                Ok(conn)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// A duplicate of the connection's socket, to watch for the daemon going away while
    /// blocked elsewhere (ring waits poll it beside their eventfd).
    pub(crate) fn watch_fd(&self) -> Result<OwnedFd> {
        rustix::io::fcntl_dupfd_cloexec(&self.sock, 0).map_err(|e| Error::os("dup of the daemon socket", e))
    }

    /// Id the daemon gave this client.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Daemon version string.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends a request and returns its reply; an error reply becomes `Err`.
    pub fn call(&mut self, req: &Request) -> Result<Reply> {
        Ok(self.call_fd(req, None)?.0)
    }

    /// Sends a request with an optional descriptor; returns the reply and any descriptor in it.
    /// A reply of another kind, or with other descriptors, than the catalogue gives for the
    /// request is `EPROTO`.
    pub fn call_fd(&mut self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(Reply, Vec<OwnedFd>)> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = wire::encode(Kind::Request, self.seq, req).map_err(|c| Error::new(c, "request too large"))?;
        let spec = wire::tag_of(&bytes).and_then(catalog::request);
        let (reply, fds) = self.call_raw(&bytes, fd.as_slice())?;
        if let Some(spec) = spec {
            if self.last_tag != spec.reply || fds.len() != usize::from(spec.fds_out) {
                let got = catalog::reply(self.last_tag).map_or("an unknown reply", |r| r.name);
                return Err(Error::new(
                    Errno::EPROTO,
                    format!(
                        "daemon answered {} with {got} and {} descriptors, against the catalogue",
                        spec.name,
                        fds.len()
                    ),
                ));
            }
        }
        Ok((reply, fds))
    }

    /// Sends raw bytes as one message and reads one reply (tests use it to send garbage).
    pub fn call_raw(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(Reply, Vec<OwnedFd>)> {
        if let Err(e) = transport::send(self.sock.as_fd(), bytes, fds) {
            // A daemon that refuses a connection (a cap was reached) says why and closes
            // without reading: the reason may already wait in our queue.
            return match self.recv_reply() {
                Err(r) if r.code == Errno::EPIPE => Err(Error::os("send to daemon", e)),
                other => other,
            };
        }
        self.recv_reply()
    }

    /// Reads the next reply: a further frame of a multi-frame reply (RAS dumps) or an
    /// event on a subscribed connection.
    pub fn recv_reply(&mut self) -> Result<(Reply, Vec<OwnedFd>)> {
        let received = match transport::recv(self.sock.as_fd(), &mut self.buf) {
            // The daemon closed with our request unread (it refused the connection); the
            // reset is reported first, its reason after it.
            Err(rustix::io::Errno::CONNRESET) => transport::recv(self.sock.as_fd(), &mut self.buf),
            other => other,
        };
        let r = received
            .map_err(|e| Error::os("receive from daemon", e))?
            .ok_or_else(|| Error::new(Errno::EPIPE, "the daemon closed the connection"))?;
        let (_, reply) =
            wire::decode::<Reply>(Kind::Reply, &self.buf[..r.len]).map_err(|e| Error::new(e.code, e.message))?;
        self.last_tag = wire::tag_of(&self.buf[..r.len]).unwrap_or(0);
        match reply {
            Reply::Error { code, message } => Err(Error { code, message }),
            reply => Ok((reply, r.fds)),
        }
    }

    /// All devices.
    pub fn list_devices(&mut self) -> Result<Vec<DeviceInfo>> {
        match self.call(&Request::ListDevices)? {
            Reply::Devices(d) => Ok(d),
            other => Err(unexpected(&other)),
        }
    }

    /// One device.
    pub fn device_info(&mut self, minor: u32) -> Result<DeviceInfo> {
        match self.call(&Request::DeviceInfo { minor })? {
            Reply::Device(d) => Ok(d),
            other => Err(unexpected(&other)),
        }
    }

    /// Live object counts of the whole daemon.
    pub fn stats(&mut self) -> Result<ObjectCounts> {
        match self.call(&Request::Stats)? {
            Reply::Stats(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Usage of every client.
    pub fn clients(&mut self) -> Result<Vec<ClientUsage>> {
        match self.call(&Request::Clients)? {
            Reply::Clients(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }
}
