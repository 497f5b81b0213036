//! The physical floors `accel bench submit` sets accel's round trips against, each measured
//! in the same run: a bare cache-line bounce, the same with the ring's sleep/wake handshake,
//! a clock read, a bare socket ping-pong, and the whole protocol path of an event-driven server
//! (epoll wake-up, `recvmsg`, decode, encode, `sendmsg`) with no daemon work behind it.

use std::os::fd::AsFd;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use accel_uapi::wire::{self, Kind};
use accel_uapi::{transport, FenceStatus, Op, QueueHandle, Reply, Request};
use anyhow::Result;

use super::sample;

/// Two threads bounce a counter through a memfd mapping. With `handshake`, each side also
/// does what the ring's sleep/wake protocol adds after publishing: a SeqCst fence and a load
/// of the peer's sleeping flag (on a third line, never set here).
fn spin_pingpong(iters: usize, handshake: bool) -> Result<Vec<u64>> {
    let fd = accel_uapi::shm::sealed_memfd("pingpong", 4096)?;
    let map = Arc::new(accel_uapi::shm::Mapping::new(&fd, 4096)?);
    // SAFETY: offsets 0, 64 and 128 are inside the 4096-byte mapping, aligned, on separate lines.
    let word = |m: &accel_uapi::shm::Mapping, off: usize| unsafe { &*(m.as_ptr().add(off) as *const AtomicU32) };
    let publish = move |w: &AtomicU32, v: u32, flag: &AtomicU32| {
        w.store(v, Ordering::Release);
        if handshake {
            fence(Ordering::SeqCst);
            std::hint::black_box(flag.load(Ordering::SeqCst));
        }
    };
    let total = iters + iters / 10;
    let peer_map = map.clone();
    let peer = std::thread::spawn(move || {
        let (ping, pong, flag) = (word(&peer_map, 0), word(&peer_map, 64), word(&peer_map, 128));
        for i in 1..=total as u32 {
            while ping.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            publish(pong, i, flag);
        }
    });
    let (ping, pong, flag) = (word(&map, 0), word(&map, 64), word(&map, 128));
    let mut i = 0u32;
    let samples = sample(iters, || {
        i += 1;
        publish(ping, i, flag);
        while pong.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
    });
    peer.join().map_err(|_| anyhow::anyhow!("ping-pong peer panicked"))?;
    Ok(samples)
}

/// Shared-memory spin ping-pong between two threads: the physical floor of any cross-core round trip.
pub(super) fn shm_pingpong(iters: usize) -> Result<Vec<u64>> {
    spin_pingpong(iters, false)
}

/// The same with the ring's sleep/wake handshake on both sides (a SeqCst fence and a flag
/// load after each publish): the floor of a ring round trip that cannot lose a wake-up.
pub(super) fn handshake_pingpong(iters: usize) -> Result<Vec<u64>> {
    spin_pingpong(iters, true)
}

/// Median cost of one `CLOCK_MONOTONIC` read (the completion timestamp), in ns.
pub(super) fn clock_read_ns() -> f64 {
    const N: u32 = 1_000_000;
    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(Instant::now());
    }
    t.elapsed().as_nanos() as f64 / f64::from(N)
}

/// Unix-socket (seqpacket) ping-pong between two threads: the cost of a syscall round trip with wake-ups.
pub(super) fn socket_pingpong(iters: usize) -> Result<Vec<u64>> {
    use rustix::net::{socketpair, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
    let (a, b) = socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    let total = iters + iters / 10;
    let peer = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        for _ in 0..total {
            if rustix::net::recv(&b, &mut buf, RecvFlags::empty()).is_err() {
                return;
            }
            let _ = rustix::net::send(&b, &buf, SendFlags::empty());
        }
    });
    let mut buf = [0u8; 8];
    let samples = sample(iters, || {
        let _ = rustix::net::send(&a, &buf, SendFlags::empty());
        let _ = rustix::net::recv(&a, &mut buf, RecvFlags::empty());
    });
    peer.join().map_err(|_| anyhow::anyhow!("socket peer panicked"))?;
    Ok(samples)
}

/// The protocol path of an event-driven server with nothing behind it: the client encodes a
/// `SubmitWait` and sends it with `sendmsg`; the server thread wakes in `epoll_wait`, takes it
/// with `recvmsg` (room for descriptors), decodes it, encodes a `Waited` reply and sends it; the
/// client receives and decodes that. What `Queue::run` costs beyond this is the daemon's own work.
pub(super) fn protocol_pingpong(iters: usize) -> Result<Vec<u64>> {
    use rustix::event::epoll;
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (a, b) = socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    let total = iters + iters / 10;
    let peer = std::thread::spawn(move || -> Result<()> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(&ep, &b, epoll::EventData::new_u64(1), epoll::EventFlags::IN)?;
        let mut events = Vec::with_capacity(16);
        let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
        for _ in 0..total {
            events.clear();
            epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None)?;
            let Some(got) = transport::recv(b.as_fd(), &mut buf)? else { return Ok(()) };
            let (seq, _req) = wire::decode::<Request>(Kind::Request, &buf[..got.len])?;
            let reply = Reply::Waited {
                first: 0,
                status: vec![FenceStatus::Signaled],
                timestamps: vec![1],
                messages: Vec::new(),
            };
            let bytes = wire::encode(Kind::Reply, seq, &reply).map_err(|e| anyhow::anyhow!("encode: {e:?}"))?;
            transport::send(b.as_fd(), &bytes, &[])?;
        }
        Ok(())
    });
    let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
    let mut seq = 0u32;
    let samples = sample(iters, || {
        seq += 1;
        let req = Request::SubmitWait {
            queue: QueueHandle(1),
            op: Op::Nop,
            wait: Vec::new(),
            signal: Vec::new(),
            timeout_ns: 5_000_000_000,
        };
        let sent = wire::encode(Kind::Request, seq, &req).map(|bytes| transport::send(a.as_fd(), &bytes, &[]));
        if let (Ok(Ok(())), Ok(Some(got))) = (sent, transport::recv(a.as_fd(), &mut buf)) {
            std::hint::black_box(wire::decode::<Reply>(Kind::Reply, &buf[..got.len]).ok());
        }
    });
    drop(a);
    peer.join().map_err(|_| anyhow::anyhow!("protocol peer panicked"))??;
    Ok(samples)
}
