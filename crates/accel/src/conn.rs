//! One connection to the daemon: handshake, numbered requests, replies with descriptors.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use accel_uapi::wire::{self, Kind, ABI_MAJOR, ABI_MINOR, MAX_MESSAGE};
use accel_uapi::{catalog, transport, ClientUsage, DeviceInfo, Errno, ObjectCounts, Reply, Request};

use crate::{Error, Result};

pub(crate) fn unexpected(reply: &Reply) -> Error {
    Error::new(Errno::EPROTO, format!("unexpected reply from daemon: {reply:?}"))
}

/// One message from the daemon: its reply tag, the reply (an error reply as `Err`) and
/// the descriptors that came with it.
type Frame = (u32, Result<Reply>, Vec<OwnedFd>);

/// The receiving side, shared by every thread that waits for a reply.
struct Rx {
    /// Some thread is reading the socket: the others wait for it to hand them their reply.
    reading: bool,
    buf: Vec<u8>,
    /// Frames one thread read for another, by sequence number, in arrival order.
    parked: HashMap<u32, VecDeque<Frame>>,
    /// Why the connection can no longer be read.
    dead: Option<Error>,
}

/// A handshaken connection to the daemon. [`crate::Device`] wraps one; use it
/// directly for device-independent requests (`list`, `info`, stats).
///
/// Requests are pipelined: several threads of a device can each have a request in flight
/// (one waiting on a fence while others submit or signal), and each gets its own reply,
/// paired by sequence number. Whichever waiting thread is free reads the socket and hands
/// the others theirs; no lock is held across a wait.
pub struct Connection {
    sock: OwnedFd,
    seq: AtomicU32,
    send: Mutex<()>,
    rx: Mutex<Rx>,
    arrived: Condvar,
    client_id: u64,
    server: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("client_id", &self.client_id).field("server", &self.server).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
            seq: AtomicU32::new(0),
            send: Mutex::new(()),
            rx: Mutex::new(Rx { reading: false, buf: vec![0; MAX_MESSAGE + 1], parked: HashMap::new(), dead: None }),
            arrived: Condvar::new(),
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
        self.request(req)
    }

    /// [`Connection::call`] for a connection shared between threads.
    pub(crate) fn request(&self, req: &Request) -> Result<Reply> {
        Ok(self.request_fd(req, None)?.0)
    }

    /// Sends a request with an optional descriptor; returns the reply and any descriptor in it.
    /// A reply of another kind, or with other descriptors, than the catalogue gives for the
    /// request is `EPROTO`.
    pub fn call_fd(&mut self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(Reply, Vec<OwnedFd>)> {
        self.request_fd(req, fd)
    }

    /// [`Connection::call_fd`] for a connection shared between threads.
    pub(crate) fn request_fd(&self, req: &Request, fd: Option<BorrowedFd<'_>>) -> Result<(Reply, Vec<OwnedFd>)> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let bytes = wire::encode(Kind::Request, seq, req).map_err(|c| Error::new(c, "request too large"))?;
        let spec = wire::tag_of(&bytes).and_then(catalog::request);
        if let Err(e) = self.send_message(&bytes, fd.as_slice()) {
            return Err(self.refusal().unwrap_or(e));
        }
        let (tag, reply, fds) = self.wait_frame(Some(seq))?;
        let reply = reply?;
        if let Some(spec) = spec {
            if tag != spec.reply || fds.len() != usize::from(spec.fds_out) {
                let got = catalog::reply(tag).map_or("an unknown reply", |r| r.name);
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

    fn send_message(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let _g = lock(&self.send);
        transport::send(self.sock.as_fd(), bytes, fds).map_err(|e| Error::os("send to daemon", e))
    }

    /// After a failed send: a daemon that refuses a connection (a cap was reached) says why
    /// and closes without reading, so the reason may already wait in our queue.
    fn refusal(&self) -> Option<Error> {
        match self.wait_frame(None) {
            Ok((_, Err(reason), _)) => Some(reason),
            Err(reason) if reason.code != Errno::EPIPE => Some(reason),
            _ => None,
        }
    }

    /// Sends raw bytes as one message and reads one reply (tests use it to send garbage).
    pub fn call_raw(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(Reply, Vec<OwnedFd>)> {
        if let Err(e) = self.send_message(bytes, fds) {
            return Err(self.refusal().unwrap_or(e));
        }
        self.recv_reply()
    }

    /// Whether a frame is there to receive, waiting up to `timeout` for one (a dead
    /// connection counts: receiving reports it).
    pub(crate) fn readable_within(&self, timeout: std::time::Duration) -> Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        {
            let rx = lock(&self.rx);
            if !rx.parked.is_empty() || rx.dead.is_some() {
                return Ok(true);
            }
        }
        let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
        let t = Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos() as i64 };
        match poll(&mut fds, Some(&t)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(Error::os("poll the daemon connection", e)),
        }
    }

    /// Reads the next reply, whatever its sequence number: a further frame of a multi-frame
    /// reply (RAS dumps) or an event on a subscribed connection.
    pub fn recv_reply(&mut self) -> Result<(Reply, Vec<OwnedFd>)> {
        let (_, reply, fds) = self.wait_frame(None)?;
        Ok((reply?, fds))
    }

    /// Waits for the frame with sequence number `seq` (any frame for `None`), reading the
    /// socket while no other thread does and parking frames that are for others.
    fn wait_frame(&self, seq: Option<u32>) -> Result<Frame> {
        let mut rx = lock(&self.rx);
        loop {
            let key = match seq {
                Some(s) => rx.parked.contains_key(&s).then_some(s),
                None => rx.parked.keys().next().copied(),
            };
            if let Some(k) = key {
                let queue = rx.parked.get_mut(&k).expect("present");
                let frame = queue.pop_front().expect("parked queues are never empty");
                if queue.is_empty() {
                    rx.parked.remove(&k);
                }
                return Ok(frame);
            }
            if let Some(e) = &rx.dead {
                return Err(e.clone());
            }
            if rx.reading {
                rx = self.arrived.wait(rx).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            rx.reading = true;
            let mut buf = std::mem::take(&mut rx.buf);
            drop(rx);
            let got = self.read_frame(&mut buf);
            rx = lock(&self.rx);
            rx.reading = false;
            rx.buf = buf;
            self.arrived.notify_all();
            match got {
                Ok((s, frame)) if seq.is_none_or(|want| want == s) => return Ok(frame),
                // An error with sequence number 0 is about the connection (the daemon
                // refused it and closes): every waiter gets it.
                Ok((0, (_, Err(e), _))) => rx.dead = Some(e),
                Ok((s, frame)) => rx.parked.entry(s).or_default().push_back(frame),
                Err(e) => rx.dead = Some(e),
            }
        }
    }

    /// Reads one message from the socket: its sequence number and frame.
    fn read_frame(&self, buf: &mut [u8]) -> Result<(u32, Frame)> {
        let received = match transport::recv(self.sock.as_fd(), buf) {
            // The daemon closed with our request unread (it refused the connection); the
            // reset is reported first, its reason after it.
            Err(rustix::io::Errno::CONNRESET) => transport::recv(self.sock.as_fd(), buf),
            other => other,
        };
        let r = received
            .map_err(|e| Error::os("receive from daemon", e))?
            .ok_or_else(|| Error::new(Errno::EPIPE, "the daemon closed the connection"))?;
        let (seq, reply) =
            wire::decode::<Reply>(Kind::Reply, &buf[..r.len]).map_err(|e| Error::new(e.code, e.message))?;
        let tag = wire::tag_of(&buf[..r.len]).unwrap_or(0);
        let reply = match reply {
            Reply::Error { code, message } => Err(Error { code, message }),
            reply => Ok(reply),
        };
        Ok((seq, (tag, reply, r.fds)))
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
