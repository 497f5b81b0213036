//! The attack suite: hostile clients get clean errors and the daemon keeps serving.
//! (Malformed framing, ring garbage and cross-namespace descriptors have their own
//! tests in e2e.rs, ring.rs and ns.rs; this file adds the rest.)

mod common;

use std::time::{Duration, Instant};

use accel::{Connection, Device, Errno, GemmF32, MatView, ObjectCounts, Op, WaitPoint};
use accel_uapi::wire::{self, Kind};
use accel_uapi::{BoHandle, BufView, FenceHandle, QueueHandle, Reply, Request, SignalPoint, SyncobjHandle};
use common::{code, rss_kib, Daemon};

/// Tiny deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn assert_serving(d: &Daemon) {
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    q.submit(Op::Nop).unwrap().wait_timeout(Duration::from_secs(5)).unwrap();
}

#[test]
fn forged_handles_in_every_request_are_rejected() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let mut rng = Rng(0x5eed);
    for _ in 0..200 {
        let h = rng.next();
        let bo = BoHandle(h);
        let view = BufView { bo, offset: 0, len: 4 };
        let requests = [
            Request::BoInfo { handle: bo },
            Request::BoClose { handle: bo },
            Request::BoMmap { handle: bo },
            Request::BoExport { handle: bo },
            Request::QueueDestroy { handle: QueueHandle(h) },
            Request::RingCreate { queue: QueueHandle(h), entries: 8 },
            Request::FenceClose { handle: FenceHandle(h) },
            Request::SyncobjSignal { handle: SyncobjHandle(h), point: 1 },
            Request::SyncobjQuery { handle: SyncobjHandle(h) },
            Request::ExportSyncFd { point: WaitPoint::Fence(FenceHandle(h)) },
            Request::Wait {
                points: vec![WaitPoint::Syncobj { handle: SyncobjHandle(h), point: 1 }],
                all: true,
                timeout_ns: 0,
            },
            Request::Submit { queue: QueueHandle(h), op: Op::Nop, wait: vec![], signal: vec![] },
        ];
        for req in requests {
            assert_eq!(code(dev.request(&req)), Errno::ENOENT, "{req:?}");
        }
        // The syncobj family answers with DRM's errno: EINVAL where drm_syncobj.c looks one
        // handle up for destroy or export, ENOENT where it looks up arrays.
        let so = SyncobjHandle(h);
        let drm = [
            (Request::SyncobjDestroy { handle: so }, Errno::EINVAL),
            (Request::SyncobjExport { handle: so }, Errno::EINVAL),
            (Request::SyncobjWaitMany { handles: vec![so], points: vec![1], flags: 0, timeout_ns: 0 }, Errno::ENOENT),
            (Request::SyncobjSignalMany { handles: vec![so], points: vec![] }, Errno::ENOENT),
            (Request::SyncobjResetMany { handles: vec![so] }, Errno::ENOENT),
            (Request::SyncobjQueryMany { handles: vec![so], flags: 0 }, Errno::ENOENT),
            (Request::SyncobjTransfer { src: so, src_point: 0, dst: so, dst_point: 0, flags: 0 }, Errno::ENOENT),
            (Request::SyncobjExportSyncFile { handle: so, point: 0 }, Errno::ENOENT),
        ];
        for (req, want) in drm {
            assert_eq!(code(dev.request(&req)), want, "{req:?}");
        }
        for op in [Op::Fill { dst: view, pattern: 0 }, Op::Copy { src: view, dst: view }] {
            assert_eq!(code(q.submit(op)), Errno::ENOENT);
        }
        let sig = [SignalPoint { handle: SyncobjHandle(h), point: 1 }];
        assert_eq!(code(q.submit_with(Op::Nop, &[WaitPoint::Fence(FenceHandle(h))], &[])), Errno::ENOENT);
        assert_eq!(code(q.submit_with(Op::Nop, &[], &sig)), Errno::ENOENT);
    }
    assert_serving(&d);
}

#[test]
fn another_clients_handles_do_not_reach_its_objects() {
    let d = Daemon::start(&["cpu"]);
    let (a, b) = (d.open(0), d.open(0));
    let secret = a.alloc(4096).unwrap();
    secret.write(0, b"a's bytes").unwrap();
    // b holds no buffer, so a's handle value means nothing to it.
    let q = b.create_queue().unwrap();
    let steal = Op::Copy {
        src: BufView { bo: secret.handle(), offset: 0, len: 8 },
        dst: BufView { bo: secret.handle(), offset: 8, len: 8 },
    };
    assert_eq!(code(q.submit(steal)), Errno::ENOENT);
    assert_eq!(code(b.request(&Request::BoMmap { handle: secret.handle() })), Errno::ENOENT);
    assert_eq!(code(b.request(&Request::BoClose { handle: secret.handle() })), Errno::ENOENT);
    let mut still = [0u8; 9];
    secret.read(0, &mut still).unwrap();
    assert_eq!(&still, b"a's bytes");
}

#[test]
fn random_garbage_messages_get_error_replies_on_a_live_connection() {
    let d = Daemon::start(&["cpu"]);
    let mut conn = Connection::connect(d.socket()).unwrap();
    let mut rng = Rng(42);
    let valid = wire::encode(Kind::Request, 1, &Request::BoCreate { size: 4096, region: 0 }).unwrap();
    for i in 0..2000 {
        let msg: Vec<u8> = match i % 4 {
            // Pure noise of any length up to 300 bytes (never empty: that reads as a hang-up).
            0 => (0..1 + rng.next() % 300).map(|_| rng.next() as u8).collect(),
            // A valid header with a noisy body.
            1 => {
                let mut m = valid[..wire::HEADER_LEN].to_vec();
                let body: Vec<u8> = (0..rng.next() % 64).map(|_| rng.next() as u8).collect();
                m[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
                m.extend(body);
                m
            }
            // A valid message with one byte flipped.
            2 => {
                let mut m = valid.clone();
                let at = (rng.next() as usize) % m.len();
                m[at] ^= 1 << (rng.next() % 8);
                m
            }
            // Truncated.
            _ => valid[..(rng.next() as usize) % valid.len()].iter().copied().chain([0xff]).collect(),
        };
        match conn.call_raw(&msg, &[]) {
            Ok((reply, _)) => assert!(!matches!(reply, Reply::Error { .. }), "errors come back as Err"),
            Err(e) => assert!(
                matches!(e.code, Errno::EPROTO | Errno::EINVAL | Errno::ENODEV | Errno::ENOENT | Errno::EBADF),
                "unexpected {e}"
            ),
        }
    }
    assert_eq!(conn.list_devices().unwrap().len(), 1, "the same connection still works");
    assert_serving(&d);
}

#[test]
fn integer_overflow_in_sizes_offsets_and_strides_is_caught() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let buf = dev.alloc(4096).unwrap();
    let m = |offset, row_stride| MatView { bo: buf.handle(), offset, row_stride };
    let gemm = |a, b, c, k| Op::GemmF32(GemmF32 { m: 2, n: 2, k, a, b, c, alpha: 1.0, beta: 0.0 });
    assert_eq!(code(q.submit(gemm(m(0, u64::MAX), m(64, 2), m(128, 2), 2))), Errno::EOVERFLOW);
    assert_eq!(code(q.submit(gemm(m(u64::MAX - 3, 2), m(64, 2), m(128, 2), 2))), Errno::EOVERFLOW);
    assert_eq!(code(q.submit(gemm(m(0, 1 << 62), m(64, 2), m(128, 2), 2))), Errno::EOVERFLOW);
    assert_eq!(code(q.submit(gemm(m(0, 2), m(64, 2), m(128, 2), u64::MAX))), Errno::EINVAL);
    assert_eq!(code(q.submit(gemm(m(2, 2), m(64, 2), m(128, 2), 2))), Errno::EINVAL, "misaligned");
    let v = |offset, len| BufView { bo: buf.handle(), offset, len };
    assert_eq!(code(q.submit(Op::Copy { src: v(u64::MAX, 8), dst: v(0, 8) })), Errno::EOVERFLOW);
    assert_eq!(code(q.submit(Op::Copy { src: v(8, u64::MAX), dst: v(0, u64::MAX) })), Errno::EOVERFLOW);
    assert_eq!(code(q.submit(Op::Fill { dst: v(4096, 4), pattern: 0 })), Errno::ERANGE);
    assert_eq!(code(dev.request(&Request::BoCreate { size: u64::MAX - 100, region: 0 })), Errno::EOVERFLOW);
    assert_eq!(code(dev.request(&Request::RingCreate { queue: QueueHandle(0), entries: u32::MAX })), Errno::ENOENT);
    let ring_q = dev.create_queue().unwrap();
    assert_eq!(code(ring_q.into_ring(u32::MAX)), Errno::EINVAL);
    assert_serving(&d);
}

#[test]
fn a_flood_of_connections_does_not_stop_the_daemon() {
    let d = Daemon::start(&["cpu"]);
    let base = d.wait_for_counts(ObjectCounts::default());
    // Half never say hello; half handshake and open the device.
    let mut raw = Vec::new();
    let mut clients = Vec::new();
    for i in 0..300 {
        if i % 2 == 0 {
            raw.push(accel_uapi::transport::connect(d.socket()).unwrap());
        } else {
            clients.push(Device::open_at(d.socket(), 0).unwrap());
        }
    }
    let t = Instant::now();
    assert_serving(&d);
    assert!(t.elapsed() < Duration::from_secs(2), "serving took {:?} under the flood", t.elapsed());
    // Closed connections go asynchronously (the probe's, earlier stats'): count through one
    // connection until the number settles.
    let mut stats = Connection::connect(d.socket()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.stats().unwrap().clients != 151 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stats.stats().unwrap().clients, 151, "150 handshaken clients and the stats connection");
    drop(stats);
    drop(raw);
    drop(clients);
    assert_eq!(d.wait_for_counts(base), base, "every flooding client was reclaimed");
}

#[test]
fn a_tenant_cannot_reach_devices_outside_its_namespace() {
    let d = Daemon::start(&["cpu", "testdev"]);
    let mut admin = Connection::connect_with_token(d.socket(), None).unwrap();
    admin.call(&Request::NsCreate { name: "t".into(), token: Some("tok".into()) }).unwrap();
    admin
        .call(&Request::NsAssign {
            name: "t".into(),
            device: 1,
            memory_limit: 0,
            weight: 100,
            max_clients: 0,
            evict: false,
        })
        .unwrap();
    let mut c = Connection::connect_with_token(d.socket(), Some("tok")).unwrap();
    for minor in [1, 2, 100, u32::MAX] {
        assert_eq!(code(c.call(&Request::Open { minor, wait_ms: 0 })), Errno::ENODEV);
        assert_eq!(code(c.call(&Request::DeviceInfo { minor })), Errno::ENODEV);
    }
    assert_serving(&d);
}

#[test]
fn a_client_that_never_reads_its_replies_is_not_read_either_and_loses_none() {
    use accel_uapi::transport;
    use std::os::fd::AsFd;
    let d = Daemon::start(&["cpu"]);
    let sock = transport::connect(d.socket()).unwrap();
    let hello =
        Request::Hello { abi_major: wire::ABI_MAJOR, abi_minor: wire::ABI_MINOR, name: "deaf".into(), token: None };
    transport::send(sock.as_fd(), &wire::encode(Kind::Request, 1, &hello).unwrap(), &[]).unwrap();
    let before = rss_kib(d.pid());
    // Requests as fast as the socket takes them, replies never read, for 3 s. Before the
    // daemon stopped reading such a client it queued every reply: 750,000 requests and
    // 140 MiB of daemon memory in 3 s on two vCPUs, without end.
    let start = Instant::now();
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_secs(3) {
        let req = wire::encode(Kind::Request, 2 + sent, &Request::ListDevices).unwrap();
        match rustix::net::send(&sock, &req, rustix::net::SendFlags::DONTWAIT) {
            Ok(_) => sent += 1,
            Err(rustix::io::Errno::AGAIN) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("send: {e}"),
        }
    }
    let grown = rss_kib(d.pid()).saturating_sub(before);
    eprintln!("{sent} requests got in; the daemon grew by {grown} KiB");
    assert!(grown < 16 << 10, "the daemon grew by {grown} KiB for a client that reads nothing ({sent} requests)");
    // Others are served meanwhile.
    assert_serving(&d);
    // Every request it got in is answered, in order, once it reads.
    let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
    let deadline = Instant::now() + Duration::from_secs(30);
    for want in 1..=sent + 1 {
        let r = loop {
            match rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((n, _)) => break n,
                Err(rustix::io::Errno::AGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("reply {want} of {}: {e}", sent + 1),
            }
        };
        let (seq, reply) = wire::decode::<Reply>(Kind::Reply, &buf[..r]).unwrap();
        assert_eq!(seq, want, "replies come in order, none lost");
        assert!(!matches!(reply, Reply::Error { .. }), "request {want}: {reply:?}");
    }
    let req = wire::encode(Kind::Request, sent + 2, &Request::ListDevices).unwrap();
    transport::send(sock.as_fd(), &req, &[]).unwrap();
    let r = transport::recv(sock.as_fd(), &mut buf).unwrap().unwrap();
    assert_eq!(wire::decode::<Reply>(Kind::Reply, &buf[..r.len]).unwrap().0, sent + 2);
}

/// A connection spoken to in raw messages (to pipeline requests as no client library does).
struct Raw {
    sock: std::os::fd::OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Raw {
    /// Connected and past the handshake.
    fn connect(d: &Daemon) -> Raw {
        let sock = accel_uapi::transport::connect(d.socket()).unwrap();
        let mut raw = Raw { sock, seq: 0, buf: vec![0u8; wire::MAX_MESSAGE + 1] };
        let hello =
            Request::Hello { abi_major: wire::ABI_MAJOR, abi_minor: wire::ABI_MINOR, name: "raw".into(), token: None };
        raw.call(&hello);
        raw
    }

    /// Connected and past the handshake, with device 0 open.
    fn open(d: &Daemon) -> Raw {
        let mut raw = Raw::connect(d);
        raw.call(&Request::Open { minor: 0, wait_ms: 0 });
        raw
    }

    /// Sends a request; returns its seq.
    fn send(&mut self, req: &Request) -> u32 {
        use std::os::fd::AsFd;
        self.seq += 1;
        let bytes = wire::encode(Kind::Request, self.seq, req).unwrap();
        accel_uapi::transport::send(self.sock.as_fd(), &bytes, &[]).unwrap();
        self.seq
    }

    /// The next reply, with its seq.
    fn recv(&mut self) -> (u32, Reply) {
        use std::os::fd::AsFd;
        let r = accel_uapi::transport::recv(self.sock.as_fd(), &mut self.buf).unwrap().unwrap();
        wire::decode::<Reply>(Kind::Reply, &self.buf[..r.len]).unwrap()
    }

    fn call(&mut self, req: &Request) -> Reply {
        self.send(req);
        self.recv().1
    }

    /// A timeline syncobj and the fence of a job waiting on its point 1, which nobody has
    /// signalled: the fence stays pending until the point is.
    fn pending_fence(&mut self) -> (SyncobjHandle, FenceHandle) {
        let Reply::Queue(queue) =
            self.call(&Request::QueueCreate { timeout_ms: 0, priority: accel::Priority::Normal, weight: 0 })
        else {
            panic!("no queue")
        };
        let Reply::Syncobj(tl) = self.call(&Request::SyncobjCreate { timeline: true, signaled: false }) else {
            panic!("no syncobj")
        };
        let wait = vec![WaitPoint::Syncobj { handle: tl, point: 1 }];
        let Reply::Submitted { fence, .. } = self.call(&Request::Submit { queue, op: Op::Nop, wait, signal: vec![] })
        else {
            panic!("no fence")
        };
        (tl, fence)
    }
}

#[test]
fn a_connection_has_one_open_waiting_at_most() {
    let d = Daemon::start(&["testdev:exclusive"]);
    let _holder = d.open(0);
    let mut raw = Raw::connect(&d);
    // The device is held: the first open waits (up to 60 s), the others are refused at once.
    let first = raw.send(&Request::Open { minor: 0, wait_ms: 60_000 });
    for _ in 0..1000 {
        raw.send(&Request::Open { minor: 0, wait_ms: 60_000 });
    }
    for _ in 0..1000 {
        let (seq, reply) = raw.recv();
        assert!(seq > first && matches!(reply, Reply::Error { code: Errno::EALREADY, .. }), "{seq}: {reply:?}");
    }
    // The waiting one gets the device when the holder lets go.
    drop(_holder);
    let (seq, reply) = raw.recv();
    assert!(seq == first && matches!(reply, Reply::Device(_)), "{seq}: {reply:?}");
}

#[test]
fn pending_waits_per_connection_are_capped_and_the_ones_admitted_all_end() {
    let d = Daemon::start(&["cpu"]);
    let mut raw = Raw::open(&d);
    let (tl, fence) = raw.pending_fence();
    let extra = 100;
    let waits = acceld::MAX_PENDING_WAITS as u32 + extra;
    let first = raw.seq + 1;
    for _ in 0..waits {
        raw.send(&Request::Wait { points: vec![WaitPoint::Fence(fence)], all: true, timeout_ns: 60_000_000_000 });
    }
    let signal = raw.send(&Request::SyncobjSignal { handle: tl, point: 1 });
    let (mut refused, mut waited, mut signalled) = (0, 0, false);
    while !signalled || waited + refused < waits {
        match raw.recv() {
            (s, Reply::Ok) if s == signal => signalled = true,
            (s, Reply::Waited { .. }) if s >= first => waited += 1,
            (s, Reply::Error { code: Errno::EAGAIN, .. }) if s >= first => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((waited, refused), (waits - extra, extra));
    assert_serving(&d);
}

#[test]
fn waits_that_time_out_on_a_fence_that_never_signals_leave_nothing_behind() {
    let d = Daemon::start(&["cpu"]);
    let mut raw = Raw::open(&d);
    let (_, fence) = raw.pending_fence();
    let mut round = |n: u32| {
        for _ in 0..n / 500 {
            for _ in 0..500 {
                raw.send(&Request::Wait { points: vec![WaitPoint::Fence(fence)], all: true, timeout_ns: 1_000 });
            }
            for _ in 0..500 {
                let (_, reply) = raw.recv();
                assert!(matches!(reply, Reply::Error { code: Errno::ETIMEDOUT, .. }), "{reply:?}");
            }
        }
    };
    round(20_000);
    let before = rss_kib(d.pid());
    round(200_000);
    let grown = rss_kib(d.pid()).saturating_sub(before);
    eprintln!("200,000 expired waits on one pending fence: the daemon grew by {grown} KiB");
    assert!(grown < 4 << 10, "the daemon grew by {grown} KiB for 200,000 waits that ended");
}

#[test]
fn a_client_cannot_park_more_jobs_than_its_budget_even_without_their_fences() {
    let d = Daemon::start(&["cpu"]);
    let mut raw = Raw::open(&d);
    let (tl, _) = raw.pending_fence();
    let queues: Vec<QueueHandle> = (0..2)
        .map(|_| {
            match raw.call(&Request::QueueCreate { timeout_ms: 0, priority: accel::Priority::Normal, weight: 0 }) {
                Reply::Queue(q) => q,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    // Jobs waiting on a point nobody signals, each fence handle closed at once: the client
    // holds no handle for them, but the daemon holds the jobs. The first job (pending_fence's)
    // counts too.
    let budget = accel_core::limits::Limits::default().jobs_per_client;
    let wait = || vec![WaitPoint::Syncobj { handle: tl, point: 1 }];
    let before = rss_kib(d.pid());
    let (mut refused, mut left) = (0, budget + 99);
    while left > 0 {
        // In batches, pipelined: a round trip each would make this take long.
        let n = left.min(500);
        left -= n;
        for i in 0..n {
            raw.send(&Request::Submit { queue: queues[i as usize % 2], op: Op::Nop, wait: wait(), signal: vec![] });
        }
        let mut fences = Vec::new();
        for _ in 0..n {
            match raw.recv().1 {
                Reply::Submitted { fence, .. } => fences.push(fence),
                Reply::Error { code: Errno::EAGAIN, message } => {
                    assert!(message.contains("jobs_per_client"), "{message}");
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        for &handle in &fences {
            raw.send(&Request::FenceClose { handle });
        }
        for _ in &fences {
            assert_eq!(raw.recv().1, Reply::Ok);
        }
    }
    eprintln!("{budget} parked jobs: the daemon grew by {} KiB", rss_kib(d.pid()).saturating_sub(before));
    assert_eq!(refused, 100, "the budget is {budget} jobs, the first included");
    // Once they are done, the budget is back.
    assert_eq!(raw.call(&Request::SyncobjSignal { handle: tl, point: 1 }), Reply::Ok);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match raw.call(&Request::Submit { queue: queues[0], op: Op::Nop, wait: vec![], signal: vec![] }) {
            Reply::Submitted { .. } => break,
            Reply::Error { code: Errno::EAGAIN, .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_serving(&d);
}

#[test]
fn a_connection_that_floods_requests_does_not_starve_others_on_its_worker() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let d = Daemon::start(&["cpu"]);
    // The flood: requests written as fast as the daemon takes them, replies read by another
    // thread, so its socket always has requests waiting and its replies never back up.
    let raw = Raw::open(&d);
    let hang_up = raw.sock.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sock, stop) = (raw.sock.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
            let mut got = 0u64;
            while !stop.load(Ordering::Relaxed) {
                use std::os::fd::AsFd;
                if accel_uapi::transport::recv(sock.as_fd(), &mut buf).is_ok() {
                    got += 1;
                }
            }
            got
        })
    };
    let writer = {
        let (mut raw, stop) = (raw, stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                raw.send(&Request::ListDevices);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Clients connected after it: the workers take connections in turn, so one of them
    // shares its worker.
    let mut worst = Duration::ZERO;
    let mut good: Vec<Connection> = (0..4).map(|_| Connection::connect(d.socket()).unwrap()).collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for c in &mut good {
            let t = Instant::now();
            c.list_devices().unwrap();
            worst = worst.max(t.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // The daemon answers what was sent, then closes: the reader's last read ends.
    rustix::net::shutdown(&hang_up, rustix::net::Shutdown::Write).unwrap();
    let flooded = reader.join().unwrap();
    eprintln!("flood: {flooded} replies; the slowest request of the other clients took {worst:?}");
    assert!(worst < Duration::from_millis(500), "a request of another client took {worst:?}");
}

/// The nice value of each thread of `pid`, by name.
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(t.path().join("comm")), std::fs::read_to_string(t.path().join("stat")))
        else {
            continue;
        };
        // Field 19 (nice), counted after the parenthesised name.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = after.split_whitespace().nth(16).unwrap().parse().unwrap();
        out.push((comm.trim_end().to_string(), nice));
    }
    out
}

#[test]
fn a_client_at_a_lower_priority_is_served_at_its_priority() {
    let d = Daemon::start(&["cpu"]);
    let own = thread_nices(d.pid()).iter().find(|(name, _)| name == "worker0").map(|w| w.1).unwrap();
    if own >= 19 {
        eprintln!("skipped: the daemon already runs at nice {own}, no client can run lower");
        return;
    }
    // A client process at nice 19 that stays connected (it watches RAS events).
    let mut client = std::process::Command::new("nice")
        .args(["-n", "19"])
        .arg(common::accel_bin())
        .args(["ras", "--socket"])
        .arg(d.socket())
        .arg("watch")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        let nices = thread_nices(d.pid());
        if let Some(w) = nices.iter().find(|(name, _)| name.starts_with("worker-nice")) {
            break w.clone();
        }
        assert!(Instant::now() < deadline, "no worker at the client's priority: {nices:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(served, ("worker-nice19".to_string(), 19));
    // The daemon's other workers keep its own priority.
    assert!(thread_nices(d.pid()).iter().any(|(name, nice)| name == "worker0" && *nice == own));
    client.kill().unwrap();
    client.wait().unwrap();
    assert_serving(&d);
}

on_testdev_and_async!(driver_bugs_fail_alone_on: a_driver_that_panics_fails_only_that_job_or_request, a_driver_that_panics_fails_only_that_job_or_request_on_an_asynchronous_engine);

/// A panic in a driver (a bug the client's request met: a program its parser chokes on, a job
/// its code mishandles) fails that job or request with `EIO`, as a kernel oops fails the system
/// call that met it; the engine, the daemon's threads and every other connection go on.
fn driver_bugs_fail_alone_on(device: &str) {
    use accel_driver_testdev::cmdbuf::{encode, Command, CMD_FILL};
    use accel_driver_testdev::{OP_PANIC, OP_PANIC_NEXT_LOAD};

    let d = Daemon::start(&[device]);
    let dev = d.open(0);
    // More connections than the daemon has threads serving them: some share the culprit's.
    let others: Vec<Device> = (0..8).map(|_| d.open(0)).collect();
    let q = dev.create_queue().unwrap();
    for _ in 0..3 {
        let e = q.submit(common::driver_op(OP_PANIC, 0)).unwrap().wait().unwrap_err();
        assert_eq!(e.code, Errno::EIO, "{e}");
        assert!(e.message.contains("the driver panicked"), "{e}");
        q.submit(Op::Nop).unwrap().wait().unwrap();
    }
    let program = encode(1, &[Command { op: CMD_FILL, a: 0, a_off: 0, b: 0, b_off: 0, len: 4 }]);
    q.submit(common::driver_op(OP_PANIC_NEXT_LOAD, 0)).unwrap().wait().unwrap();
    let e = dev.load_program("testdev-cmdbuf", &program).unwrap_err();
    assert_eq!(e.code, Errno::EIO, "{e}");
    assert!(e.message.contains("injected bug") && e.message.contains("this connection is closed"), "{e}");
    assert_eq!(code(dev.create_queue()), Errno::EPIPE);
    for other in &others {
        other.load_program("testdev-cmdbuf", &program).unwrap();
        other.create_queue().unwrap().submit(Op::Nop).unwrap().wait().unwrap();
    }
    assert_serving(&d);
}
