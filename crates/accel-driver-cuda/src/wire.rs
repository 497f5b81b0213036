//! The daemon ↔ worker protocol: one request, one reply, per channel, as postcard over a
//! `SOCK_SEQPACKET` socket pair (the framing of accel's own client protocol), descriptors as
//! `SCM_RIGHTS`.
//!
//! Channels: 0 control (memory, programs), then one per compute stream (the compute engine's
//! jobs: one job at a time each, so as many clients' kernels run at once as there are
//! streams), then the copy engine's. Each is used by one daemon thread at a time and served
//! by its own worker thread on its own CUDA stream, so a long kernel holds up neither other
//! clients' kernels, nor copies, nor allocations.

use std::os::fd::{AsFd, OwnedFd};

use accel_uapi::transport;
use accel_uapi::wire::MAX_MESSAGE;
use accel_uapi::Errno;
use serde::{Deserialize, Serialize};

use crate::mailbox::Mailbox;

/// The channel of control requests.
pub(crate) const CONTROL: usize = 0;
/// Most compute streams a worker has.
pub(crate) const MAX_COMPUTE: usize = 16;
/// Most channels a worker has: control, compute, copy.
pub(crate) const MAX_CHANNELS: usize = MAX_COMPUTE + 2;

/// How many compute streams (and channels) a worker gets: `$ACCEL_CUDA_STREAMS` (1 to 16),
/// else 4: enough for short kernels of several clients to overlap, few enough that the
/// daemon's slot threads stay cheap.
pub(crate) fn compute_streams() -> usize {
    std::env::var("ACCEL_CUDA_STREAMS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(4).clamp(1, MAX_COMPUTE)
}

/// The channel of compute stream `i` (0-based).
pub(crate) fn compute_channel(i: usize) -> usize {
    1 + i
}

/// The copy engine's channel, for a worker of `compute` compute streams.
pub(crate) fn copy_channel(compute: usize) -> usize {
    1 + compute
}

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
    Gemm { a: Matrix, b: Matrix, c: Matrix, alpha: f32, beta: f32, ty: crate::cublas::Elem },
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
    /// Load the program in the memfd that comes along as program `id`.
    Load { id: u64, format: ProgramFormat },
    /// Unload program `id`.
    Unload { id: u64 },
    /// Map the host memfd that comes along under `key`.
    Host { key: (u64, u64) },
    /// Unmap host memory `key` (its buffer is gone).
    Forget { key: (u64, u64) },
    /// Run a job on the channel's stream; `token` goes to the stream's completion mark once
    /// the job's work is done.
    Run { op: Op, token: u64 },
    /// Map the daemon's completion-marks page that comes along (after `Hello`).
    Marks,
    /// Take the job channel's mailbox that comes along (`mailbox.rs`): later jobs come there.
    Mailbox,
    /// Look at the mailbox: a request is waiting (the worker slept). Not answered.
    Wake,
}

/// What a program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ProgramFormat {
    /// PTX text (JIT-compiled by the driver).
    Ptx,
    /// A cubin or fatbin (machine code).
    Cubin,
}

/// An entry of a loaded cubin, as the driver reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) name: String,
    /// Each parameter's size in bytes.
    pub(crate) params: Vec<u32>,
    pub(crate) block: [u32; 3],
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
    /// Look at the mailbox: the reply is there (the daemon slept). Not a reply itself.
    Wake,
    Hello(Identity),
    /// A cubin's entries (the reply to its `Load`).
    Program(Vec<Entry>),
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

/// A connected channel's two ends (`SOCK_SEQPACKET`, close-on-exec).
pub(crate) fn socket_pair() -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
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
pub(crate) const POLL: std::time::Duration = std::time::Duration::from_micros(100);

/// How long the daemon polls for a job's reply before it blocks: `$ACCEL_CUDA_REPLY_SPIN_US`
/// microseconds (at most 100 ms), else 5 ms on machines with cores to spare (the worker's own
/// stream synchronisation spins the same way, as CUDA's `CU_CTX_SCHED_AUTO` does there) and
/// [`POLL`] on smaller ones, where spinning would take the core the worker needs.
pub(crate) fn reply_poll() -> std::time::Duration {
    static POLL_FOR: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *POLL_FOR.get_or_init(|| {
        let (large, max) = (std::time::Duration::from_millis(5), std::time::Duration::from_millis(100));
        accel_hal::spin::budget("ACCEL_CUDA_REPLY_SPIN_US", large, POLL, max)
    })
}

thread_local! {
    // One receive buffer per thread: zeroing 64 KiB per message would cost microseconds.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_MESSAGE + 1]);
}

/// What a receive into `buf` got, decoded; `Gone` when the peer closed the socket.
fn decode<T: for<'de> Deserialize<'de>>(
    received: rustix::io::Result<Option<transport::Received>>,
    buf: &[u8],
) -> Result<(T, Vec<OwnedFd>), Broken> {
    let got = match received {
        Ok(Some(r)) if !r.truncated => r,
        Ok(Some(_)) => return Err(Broken::Local("an oversized message".into())),
        Ok(None) | Err(_) => return Err(Broken::Gone),
    };
    let msg = postcard::from_bytes(&buf[..got.len]).map_err(|e| Broken::Local(e.to_string()))?;
    Ok((msg, got.fds))
}

/// Receives one message from `sock`; `Gone` when the peer closed it. Polls for [`POLL`]
/// first, then blocks.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(sock: &OwnedFd) -> Result<(T, Vec<OwnedFd>), Broken> {
    recv_polling(sock, POLL)
}

/// [`recv`], polling for `poll` before it blocks.
fn recv_polling<T: for<'de> Deserialize<'de>>(
    sock: &OwnedFd,
    poll: std::time::Duration,
) -> Result<(T, Vec<OwnedFd>), Broken> {
    BUF.with_borrow_mut(|buf| {
        let start = std::time::Instant::now();
        let received = loop {
            match transport::try_recv(sock.as_fd(), buf) {
                Err(rustix::io::Errno::AGAIN) if start.elapsed() < poll => std::hint::spin_loop(),
                Err(rustix::io::Errno::AGAIN) => break transport::recv(sock.as_fd(), buf),
                other => break other,
            }
        };
        decode(received, buf)
    })
}

/// A message waiting on `sock`, if one is; `Gone` when the peer closed it.
pub(crate) fn try_recv<T: for<'de> Deserialize<'de>>(sock: &OwnedFd) -> Result<Option<(T, Vec<OwnedFd>)>, Broken> {
    BUF.with_borrow_mut(|buf| match transport::try_recv(sock.as_fd(), buf) {
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        received => decode(received, buf).map(Some),
    })
}

/// One request and its reply (a stale mailbox wake-up skipped).
pub(crate) fn call(
    sock: &OwnedFd,
    req: &Request,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(Reply, Vec<OwnedFd>), Broken> {
    send(sock, req, fds)?;
    loop {
        match recv_polling(sock, reply_poll())? {
            (Reply::Wake, _) => continue,
            reply => return Ok(reply),
        }
    }
}

/// One job through the channel's mailbox: its reply, or `None` as soon as `done()` says the
/// job's work is done (its completion mark, written by the GPU; the reply is then still to
/// come, and is taken before the next request goes in). A request too large for the mailbox
/// goes through the socket.
pub(crate) fn call_mailbox(
    sock: &OwnedFd,
    mailbox: &Mailbox,
    req: &Request,
    done: &dyn Fn() -> bool,
) -> Result<Option<Reply>, Broken> {
    let bytes = postcard::to_stdvec(req).map_err(|e| Broken::Local(e.to_string()))?;
    let mut buf = Vec::new();
    // The last job's reply first: requests and replies strictly alternate.
    let last = mailbox.request_seq();
    if last != 0 {
        wait_reply(sock, mailbox, last, &|| false, &mut buf)?;
    }
    let seq = match mailbox.put_request(&bytes) {
        Ok(seq) => seq,
        Err(_) => return call(sock, req, &[]).map(|(reply, _)| Some(reply)),
    };
    if mailbox.worker_sleeps() {
        send(sock, &Request::Wake, &[])?;
    }
    if !wait_reply(sock, mailbox, seq, done, &mut buf)? {
        return Ok(None);
    }
    postcard::from_bytes(&buf).map(Some).map_err(|e| Broken::Local(e.to_string()))
}

/// Waits for the reply to request `seq` (into `buf`: true) or for `done()` (false): polls,
/// then sleeps on the socket, announced in the mailbox so the worker wakes it.
fn wait_reply(
    sock: &OwnedFd,
    mailbox: &Mailbox,
    seq: u32,
    done: &dyn Fn() -> bool,
    buf: &mut Vec<u8>,
) -> Result<bool, Broken> {
    let start = std::time::Instant::now();
    let mut polls = 0u32;
    loop {
        if mailbox.take_reply(seq, buf) {
            return Ok(true);
        }
        if done() {
            return Ok(false);
        }
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(64) || start.elapsed() < reply_poll() {
            std::hint::spin_loop();
            continue;
        }
        mailbox.daemon_sleeping(true);
        if mailbox.take_reply(seq, buf) {
            mailbox.daemon_sleeping(false);
            return Ok(true);
        }
        // Any message wakes this side (the worker's wake-up, or a stale one): look again.
        let woke = recv::<Reply>(sock);
        mailbox.daemon_sleeping(false);
        woke?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        socket_pair().unwrap()
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
        send(&daemon, &Request::Run { op, token: 9 }, &[memfd.as_fd()]).unwrap();
        let (req, fds) = recv::<Request>(&worker).unwrap();
        assert_eq!(fds.len(), 1);
        let Request::Run { token: 9, op: Op::Launch { program: 7, entry: 1, grid: [2, 3, 4], args } } = req else {
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
