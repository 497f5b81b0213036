//! RAS client: the drm-ras netlink family over the daemon socket.
//!
//! ```no_run
//! # fn main() -> accel::Result<()> {
//! use accel::ras::{Ras, RasCmd, RasMsg};
//! let mut ras = Ras::connect(&accel::default_socket_path())?;
//! // `accel-ext` asks for accel's attributes (health) beside the kernel's.
//! for node in ras.request(RasMsg::new(RasCmd::ListNodes, vec![accel::ras::RasAttr::AccelExt]), true)? {
//!     println!("{:?}", node.attrs);
//! }
//! # Ok(()) }
//! ```

use std::path::Path;

use accel_uapi::ras::{self as nl, Parsed};
pub use accel_uapi::ras::{ErrorEvent, RasAttr, RasCmd, RasMsg};
use accel_uapi::{Errno, Reply, Request};

use crate::conn::unexpected;
use crate::{Connection, Error, Result};

/// A connection speaking the RAS family.
#[derive(Debug)]
pub struct Ras {
    conn: Connection,
    seq: u32,
}

fn nl_error(code: i32, cmd: RasCmd, message: Option<String>) -> Error {
    let errno = Errno::from_raw(code.unsigned_abs()).unwrap_or(Errno::EIO);
    let why = message.unwrap_or_else(|| errno.description().to_string());
    Error::new(errno, format!("{} failed: {why}", cmd.name()))
}

impl Ras {
    /// Connects to the daemon at `socket` and resolves the family by name through the generic
    /// netlink controller, as any netlink tool does.
    pub fn connect(socket: &Path) -> Result<Ras> {
        Ras::over(Connection::connect(socket)?)
    }

    /// Speaks the family over an open connection (e.g. a tenant's, made with its namespace
    /// token: it sees its own devices' nodes, numbered as it numbers them).
    pub fn over(conn: Connection) -> Result<Ras> {
        let mut ras = Ras { conn, seq: 0 };
        ras.seq = 1;
        let reply = ras.conn.call(&Request::Netlink(nl::ctrl_get_family(nl::FAMILY_NAME, ras.seq)))?;
        let Reply::Netlink(frames) = reply else { return Err(unexpected(&reply)) };
        let id = frames.first().and_then(|f| nl::ctrl_decode(f).ok()).and_then(|(_, attrs)| {
            attrs.into_iter().find_map(|a| match a {
                netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs::FamilyId(id) => Some(id),
                _ => None,
            })
        });
        match id {
            Some(nl::FAMILY_ID) => Ok(ras),
            other => {
                Err(Error::new(Errno::EPROTO, format!("the daemon's {} family has id {other:?}", nl::FAMILY_NAME)))
            }
        }
    }

    /// Sends one command (`dump` sets `NLM_F_DUMP`; every request asks for an ACK) and
    /// collects the reply messages. A netlink error becomes `Err` with its errno and the
    /// extended ACK's message.
    pub fn request(&mut self, msg: RasMsg, dump: bool) -> Result<Vec<RasMsg>> {
        self.seq = self.seq.wrapping_add(1);
        let cmd = msg.cmd;
        let mut reply = self.conn.call(&Request::Netlink(nl::request(msg, dump, self.seq)))?;
        let mut out = Vec::new();
        loop {
            let Reply::Netlink(frames) = reply else { return Err(unexpected(&reply)) };
            for bytes in frames {
                match nl::decode(&bytes).map_err(|e| Error::new(Errno::EPROTO, format!("bad RAS reply: {e}")))? {
                    Parsed::Msg { msg, .. } => out.push(msg),
                    Parsed::Done => return Ok(out),
                    Parsed::Error(None, _) => return Ok(out),
                    Parsed::Error(Some(code), message) => return Err(nl_error(code, cmd, message)),
                }
            }
            if !dump {
                return Ok(out);
            }
            reply = self.conn.recv_reply()?.0;
        }
    }

    /// Joins the `error-report` group; the connection then only delivers events, with the
    /// kernel's attributes only.
    pub fn subscribe(self) -> Result<RasEvents> {
        self.join(Request::RasSubscribe)
    }

    /// Joins the `error-report` group with accel's attributes in every event: sequence number
    /// (a gap means missed events), timestamp, kind, delta, severity, 64-bit value.
    pub fn subscribe_ext(self) -> Result<RasEvents> {
        self.join(Request::RasSubscribeExt)
    }

    fn join(mut self, req: Request) -> Result<RasEvents> {
        match self.conn.call(&req)? {
            Reply::Ok => Ok(RasEvents { conn: self.conn, pending: Default::default(), current: Vec::new() }),
            other => Err(unexpected(&other)),
        }
    }
}

/// A stream of `error-event` messages.
#[derive(Debug)]
pub struct RasEvents {
    conn: Connection,
    /// Messages of the last frame not handed out yet (a frame carries up to 256), each
    /// decoded when it is asked for: the first is handed out before the rest are decoded.
    pending: std::collections::VecDeque<Vec<u8>>,
    /// The message the last [`RasEvents::next_error_event`] borrows from.
    current: Vec<u8>,
}

impl RasEvents {
    /// Blocks for the next event.
    pub fn next_event(&mut self) -> Result<RasMsg> {
        let bytes = self.next_message()?;
        match nl::decode(&bytes).map_err(|e| Error::new(Errno::EPROTO, format!("bad event: {e}")))? {
            Parsed::Msg { msg, .. } => Ok(msg),
            other => Err(Error::new(Errno::EPROTO, format!("unexpected event {other:?}"))),
        }
    }

    /// Blocks for the next event and reads it in place, allocating nothing: names borrow the
    /// stream until the next call (see [`ErrorEvent::decode`] for attributes a subscriber
    /// without `accel-ext` does not get). For monitors that keep up with storms.
    pub fn next_error_event(&mut self) -> Result<ErrorEvent<'_>> {
        self.current = self.next_message()?;
        ErrorEvent::decode(&self.current).map_err(|e| Error::new(Errno::EPROTO, format!("bad event: {e}")))
    }

    /// Like [`RasEvents::next_error_event`], failing with `ETIMEDOUT` if no event arrives
    /// within `timeout`.
    pub fn next_error_event_timeout(&mut self, timeout: std::time::Duration) -> Result<ErrorEvent<'_>> {
        if self.pending.is_empty() && !self.conn.readable_within(timeout)? {
            return Err(Error::new(Errno::ETIMEDOUT, format!("no RAS event within {timeout:?}")));
        }
        self.next_error_event()
    }

    /// The next netlink message of the group, as it arrived.
    fn next_message(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Ok(bytes);
            }
            match self.conn.recv_reply()?.0 {
                Reply::Netlink(frames) => self.pending.extend(frames),
                other => return Err(unexpected(&other)),
            }
        }
    }
}
