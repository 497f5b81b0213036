//! The daemon ↔ worker protocol: one request, one reply, per channel, as postcard over a
//! `SOCK_SEQPACKET` socket pair (the framing of accel's own client protocol), descriptors as
//! `SCM_RIGHTS`.
//!
//! Channels: 0 control (memory, programs), 1 the compute engine's jobs, 2 the copy engine's.
//! Each is used by one daemon thread at a time and served by its own worker thread, so a
//! long kernel holds up neither copies nor allocations.

use std::os::fd::{AsFd, OwnedFd};

use accel_uapi::transport;
use accel_uapi::wire::MAX_MESSAGE;
use accel_uapi::Errno;
use serde::{Deserialize, Serialize};

/// Control, compute, copy.
pub(crate) const CHANNELS: usize = 3;
/// The channel of control requests.
pub(crate) const CONTROL: usize = 0;

/// Where an operand lives, as the worker resolves it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Range {
    /// Device memory `id`, from `offset`.
    Device { id: u64, offset: u64, len: u64 },
    /// Host memory (a memfd the worker was sent under `key`), from `offset`.
    Host { key: (u64, u64), offset: u64, len: u64 },
}

impl Range {
    pub(crate) fn len(&self) -> u64 {
        match *self {
            Range::Device { len, .. } | Range::Host { len, .. } => len,
        }
    }
}

/// A row-major f32 matrix.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Matrix {
    pub(crate) range: Range,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
}

/// A launch argument.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Arg {
    Buffer(Range),
    U32(u32),
    U64(u64),
    F32(f32),
}

/// A job, its operands resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Op {
    Fill { dst: Range, pattern: u32 },
    Copy { src: Range, dst: Range },
    Gemm { a: Matrix, b: Matrix, c: Matrix, alpha: f32, beta: f32 },
    Launch { program: u64, entry: u32, grid: [u32; 3], args: Vec<Arg> },
}

/// What the daemon asks.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Who are you (first request of a worker).
    Hello,
    /// Allocate `size` bytes as memory `id`; the reply carries its descriptor.
    Alloc { id: u64, size: u64 },
    /// Map the memory whose descriptor comes along as `id` (after a restart).
    Import { id: u64, len: u64 },
    /// Free memory `id`.
    Free { id: u64 },
    /// Zero memory `id`.
    Zero { id: u64 },
    /// Load the PTX text in the memfd that comes along as program `id`.
    Load { id: u64 },
    /// Unload program `id`.
    Unload { id: u64 },
    /// Map the host memfd that comes along under `key`.
    Host { key: (u64, u64) },
    /// Unmap host memory `key` (its buffer is gone).
    Forget { key: (u64, u64) },
    /// Run a job on `engine`.
    Run { engine: usize, op: Op },
}

/// What the device is (the reply to `Hello`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) memory: u64,
    pub(crate) sms: u32,
    pub(crate) capability: (i32, i32),
    pub(crate) driver_version: i32,
    pub(crate) uuid: String,
    pub(crate) pci: String,
    /// Why GEMM cannot run (cuBLAS not found), if so.
    pub(crate) no_gemm: Option<String>,
}

/// The worker's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Ok,
    Hello(Identity),
    /// The request failed; `fatal`: it poisoned the worker's context, which exits now.
    Err {
        code: Errno,
        message: String,
        fatal: bool,
    },
}

/// Why a call got no reply.
#[derive(Debug)]
pub(crate) enum Broken {
    /// The worker is gone (exited, killed, crashed).
    Gone,
    /// This side could not speak (encoding, too many descriptors).
    Local(String),
}

/// Sends `msg` with `fds` on `sock`.
pub(crate) fn send<T: Serialize>(sock: &OwnedFd, msg: &T, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), Broken> {
    let bytes = postcard::to_stdvec(msg).map_err(|e| Broken::Local(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(Broken::Local(format!("a {} byte message", bytes.len())));
    }
    match transport::send(sock.as_fd(), &bytes, fds) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::TOOMANYREFS) => Err(Broken::Local("too many descriptors".into())),
        Err(_) => Err(Broken::Gone),
    }
}

/// How long a receiver polls before it blocks: replies to short jobs and a client's next
/// request usually come sooner, and a blocked thread's wake-up costs more than this poll.
const POLL: std::time::Duration = std::time::Duration::from_micros(100);

/// Receives one message from `sock`; `Gone` when the peer closed it. Polls for [`POLL`]
/// first, then blocks.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(sock: &OwnedFd) -> Result<(T, Vec<OwnedFd>), Broken> {
    thread_local! {
        // One receive buffer per thread: zeroing 64 KiB per message would cost microseconds.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_MESSAGE + 1]);
    }
    BUF.with_borrow_mut(|buf| {
        let start = std::time::Instant::now();
        let received = loop {
            match transport::try_recv(sock.as_fd(), buf) {
                Err(rustix::io::Errno::AGAIN) if start.elapsed() < POLL => std::hint::spin_loop(),
                Err(rustix::io::Errno::AGAIN) => break transport::recv(sock.as_fd(), buf),
                other => break other,
            }
        };
        let got = match received {
            Ok(Some(r)) if !r.truncated => r,
            Ok(Some(_)) => return Err(Broken::Local("an oversized message".into())),
            Ok(None) | Err(_) => return Err(Broken::Gone),
        };
        let msg = postcard::from_bytes(&buf[..got.len]).map_err(|e| Broken::Local(e.to_string()))?;
        Ok((msg, got.fds))
    })
}

/// One request and its reply.
pub(crate) fn call(
    sock: &OwnedFd,
    req: &Request,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(Reply, Vec<OwnedFd>), Broken> {
    send(sock, req, fds)?;
    recv(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_job_and_its_descriptor_cross_and_a_closed_peer_is_gone() {
        let (daemon, worker) = pair();
        let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let op = Op::Launch {
            program: 7,
            entry: 1,
            grid: [2, 3, 4],
            args: vec![Arg::Buffer(Range::Host { key: (1, 2), offset: 8, len: 16 }), Arg::U32(5), Arg::F32(0.5)],
        };
        send(&daemon, &Request::Run { engine: 0, op }, &[memfd.as_fd()]).unwrap();
        let (req, fds) = recv::<Request>(&worker).unwrap();
        assert_eq!(fds.len(), 1);
        let Request::Run { engine: 0, op: Op::Launch { program: 7, entry: 1, grid: [2, 3, 4], args } } = req else {
            panic!("{req:?}")
        };
        assert!(matches!(args[0], Arg::Buffer(Range::Host { key: (1, 2), offset: 8, len: 16 })));
        let Arg::Buffer(range) = args[0] else { panic!("{:?}", args[0]) };
        assert_eq!(range.len(), 16);
        send(&worker, &Reply::Err { code: Errno::EFAULT, message: "x".into(), fatal: true }, &[]).unwrap();
        assert!(matches!(recv::<Reply>(&daemon).unwrap().0, Reply::Err { code: Errno::EFAULT, fatal: true, .. }));
        drop(worker);
        assert!(matches!(call(&daemon, &Request::Hello, &[]), Err(Broken::Gone)));
    }

    #[test]
    fn garbage_is_a_local_error_not_a_crash() {
        let (a, b) = pair();
        transport::send(a.as_fd(), &[0xff; 9], &[]).unwrap();
        assert!(matches!(recv::<Request>(&b), Err(Broken::Local(_))));
    }
}
