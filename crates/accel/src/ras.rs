//! RAS client: the drm-ras netlink family over the daemon socket.
//!
//! ```no_run
//! # fn main() -> accel::Result<()> {
//! use accel::ras::{Ras, RasCmd, RasMsg};
//! let mut ras = Ras::connect(&accel::default_socket_path())?;
//! for node in ras.request(RasMsg::new(RasCmd::ListNodes, vec![]), true)? {
//!     println!("{:?}", node.attrs);
//! }
//! # Ok(()) }
//! ```

use std::path::Path;

use accel_uapi::ras::{self as nl, Parsed};
pub use accel_uapi::ras::{RasAttr, RasCmd, RasMsg};
use accel_uapi::{Errno, Reply, Request};

use crate::conn::unexpected;
use crate::{Connection, Error, Result};

/// A connection speaking the RAS family.
#[derive(Debug)]
pub struct Ras {
    conn: Connection,
    seq: u32,
}

fn nl_error(code: i32, cmd: RasCmd) -> Error {
    let errno = Errno::from_raw(code.unsigned_abs()).unwrap_or(Errno::EIO);
    Error::new(errno, format!("{} failed: {}", cmd.name(), errno.description()))
}

impl Ras {
    /// Connects to the daemon at `socket`.
    pub fn connect(socket: &Path) -> Result<Ras> {
        Ok(Ras { conn: Connection::connect(socket)?, seq: 0 })
    }

    /// Sends one command (`dump` sets `NLM_F_DUMP`) and collects the reply messages.
    /// A netlink error becomes `Err` with its errno; an ack is an empty list.
    pub fn request(&mut self, msg: RasMsg, dump: bool) -> Result<Vec<RasMsg>> {
        self.seq = self.seq.wrapping_add(1);
        let cmd = msg.cmd;
        let mut reply = self.conn.call(&Request::Netlink(nl::request(msg, dump, self.seq)))?;
        let mut out = Vec::new();
        loop {
            let Reply::Netlink(frames) = reply else { return Err(unexpected(&reply)) };
            for bytes in frames {
                match nl::decode(&bytes).map_err(|e| Error::new(Errno::EPROTO, format!("bad RAS reply: {e}")))? {
                    Parsed::Msg { msg, .. } if dump => out.push(msg),
                    Parsed::Msg { msg, .. } => return Ok(vec![msg]),
                    Parsed::Done => return Ok(out),
                    Parsed::Error(None) => return Ok(out),
                    Parsed::Error(Some(code)) => return Err(nl_error(code, cmd)),
                }
            }
            if !dump {
                return Ok(out);
            }
            reply = self.conn.recv_reply()?.0;
        }
    }

    /// Joins the `error-report` group; the connection then only delivers events.
    pub fn subscribe(mut self) -> Result<RasEvents> {
        match self.conn.call(&Request::RasSubscribe)? {
            Reply::Ok => Ok(RasEvents { conn: self.conn }),
            other => Err(unexpected(&other)),
        }
    }
}

/// A stream of `error-event` messages.
#[derive(Debug)]
pub struct RasEvents {
    conn: Connection,
}

impl RasEvents {
    /// Blocks for the next event.
    pub fn next_event(&mut self) -> Result<RasMsg> {
        match self.conn.recv_reply()?.0 {
            Reply::Netlink(frames) => {
                let bytes = frames.first().ok_or_else(|| Error::new(Errno::EPROTO, "empty event frame"))?;
                match nl::decode(bytes).map_err(|e| Error::new(Errno::EPROTO, format!("bad event: {e}")))? {
                    Parsed::Msg { msg, .. } => Ok(msg),
                    other => Err(Error::new(Errno::EPROTO, format!("unexpected event {other:?}"))),
                }
            }
            other => Err(unexpected(&other)),
        }
    }
}
