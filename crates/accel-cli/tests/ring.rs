//! The shared-memory fast path, end to end: real daemon process, rings mapped in two processes.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use accel::{Cqe, Errno, Op};
use accel_driver_testdev::{OP_DELAY, OP_FAIL};
use accel_uapi::ring::{RingMem, Sqe};
use accel_uapi::{BoHandle, BufView};
use common::{driver_op, Daemon};

const SECOND: Duration = Duration::from_secs(5);

#[test]
fn null_jobs_complete_through_the_ring_in_order() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let mut ring = dev.create_queue().unwrap().into_ring(64).unwrap();
    let c = ring.submit_wait(&Op::Nop, SECOND).unwrap();
    assert_eq!((c.user_data, c.status()), (0, Ok(())));
    for round in 0..50u64 {
        for i in 0..64 {
            ring.push(&Op::Nop, round * 100 + i).unwrap();
        }
        ring.flush().unwrap();
        let mut out = Vec::new();
        ring.wait(&mut out, 64, SECOND).unwrap();
        let ids: Vec<u64> = out.iter().map(|c| c.user_data).collect();
        assert_eq!(ids, (0..64).map(|i| round * 100 + i).collect::<Vec<_>>());
        assert!(out.iter().all(|c| c.result == 0));
    }
}

#[test]
fn a_full_ring_pushes_back_with_eagain() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let mut ring = dev.create_queue().unwrap().into_ring(8).unwrap();
    // Without reaping, the daemon takes at most 16 entries (the completion ring's size);
    // 8 more fill the submission ring; the next push must be refused.
    let deadline = std::time::Instant::now() + SECOND;
    let mut pushed = 0;
    while pushed < 24 {
        match ring.push(&Op::Nop, pushed) {
            Ok(()) => pushed += 1,
            Err(e) if e.code == Errno::EAGAIN && std::time::Instant::now() < deadline => {
                ring.flush().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("after {pushed} pushes: {e}"),
        }
    }
    ring.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ring.push(&Op::Nop, 99).unwrap_err().code, Errno::EAGAIN);
    let mut out = Vec::new();
    ring.wait(&mut out, 24, SECOND).unwrap();
    assert_eq!(out.iter().map(|c| c.user_data).collect::<Vec<_>>(), (0..24).collect::<Vec<_>>());
    ring.push(&Op::Nop, 99).unwrap();
}

on_testdev_and_async!(ring_jobs_do_real_work_and_report_errors_per_entry_on: ring_jobs_do_real_work_and_report_errors_per_entry, ring_jobs_do_real_work_and_report_errors_per_entry_on_an_asynchronous_engine);

fn ring_jobs_do_real_work_and_report_errors_per_entry_on(testdev: &str) {
    let d = Daemon::start(&[testdev]);
    let dev = d.open(0);
    let buf = dev.alloc(4096).unwrap();
    let mut ring = dev.create_queue().unwrap().into_ring(16).unwrap();
    ring.push(&Op::Fill { dst: buf.view(0, 64), pattern: 0xabcd_0123 }, 1).unwrap();
    ring.push(&driver_op(OP_DELAY, 30), 2).unwrap();
    ring.push(&driver_op(OP_FAIL, Errno::EIO.raw().into()), 3).unwrap();
    ring.push(&Op::Fill { dst: buf.view(4090, 64), pattern: 0 }, 4).unwrap();
    ring.push(&Op::Fill { dst: BufView { bo: BoHandle(0xdead), offset: 0, len: 4 }, pattern: 0 }, 5).unwrap();
    ring.push(&Op::Nop, 6).unwrap();
    ring.flush().unwrap();
    let mut out = Vec::new();
    ring.wait(&mut out, 6, SECOND).unwrap();
    let mut by_id: Vec<(u64, Result<(), Errno>)> = out.iter().map(|c: &Cqe| (c.user_data, c.status())).collect();
    by_id.sort_by_key(|x| x.0);
    assert_eq!(
        by_id,
        vec![
            (1, Ok(())),
            (2, Ok(())),
            (3, Err(Errno::EIO)),
            (4, Err(Errno::ERANGE)),
            (5, Err(Errno::ENOENT)),
            (6, Ok(()))
        ]
    );
    let mut word = [0u8; 4];
    buf.read(60, &mut word).unwrap();
    assert_eq!(u32::from_le_bytes(word), 0xabcd_0123);
    // The nop queued behind real work completed after it, not before.
    let pos = |id| out.iter().position(|c| c.user_data == id).unwrap();
    assert!(pos(6) > pos(2));
    // Who ran the jobs: the core's slot threads, or (asynchronous) the device's own units.
    let threads = d.thread_names();
    let (slots, units) =
        (threads.iter().any(|t| t.contains("-e0s")), threads.iter().any(|t| t.starts_with("testdev-unit")));
    let asynchronous =
        testdev == "testdev-async" || std::env::var("ACCEL_TESTDEV_ASYNC").is_ok_and(|v| v.trim() == "1");
    assert_eq!((slots, units), (!asynchronous, asynchronous), "{threads:?}");
}

/// A raw ring: the client side mapped by hand, so the test can write anything.
fn raw_ring(d: &Daemon, entries: u32) -> (accel::Connection, RingMem, std::os::fd::OwnedFd) {
    use accel_uapi::{Reply, Request};
    let mut conn = accel::Connection::connect(d.socket()).unwrap();
    conn.call(&Request::Open { minor: 0, wait_ms: 0 }).unwrap();
    let Reply::Queue(queue) =
        conn.call(&Request::QueueCreate { timeout_ms: 0, priority: accel::Priority::Normal, weight: 0 }).unwrap()
    else {
        panic!("no queue")
    };
    let (_, mut fds) = conn.call_fd(&Request::RingCreate { queue, entries }, None).unwrap();
    let ring = RingMem::open(&fds[0]).unwrap();
    (conn, ring, fds.swap_remove(1))
}

fn raw_wait(ring: &RingMem, count: u32) -> Vec<Cqe> {
    let deadline = std::time::Instant::now() + SECOND;
    let mut out = Vec::new();
    while (out.len() as u32) < count {
        match ring.read_cqe(out.len() as u32) {
            Some(c) => out.push(c),
            None => {
                assert!(std::time::Instant::now() < deadline, "only {} completions", out.len());
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    out
}

/// Writes raw bytes as the entry for counter `index`, published with `seq`.
fn write_raw(ring: &RingMem, index: u32, sqe: &Sqe, seq: u32) {
    // SAFETY: sqe_ptr points at the 128-byte slot of `index` inside the mapping.
    unsafe { ring.sqe_ptr(index).cast::<Sqe>().write_volatile(Sqe { seq, ..*sqe }) };
}

#[test]
fn garbage_entries_get_error_completions_and_the_daemon_keeps_serving() {
    let d = Daemon::start(&["cpu"]);
    let (_conn, ring, doorbell) = raw_ring(&d, 8);
    let garbage = [
        Sqe { user_data: 1, seq: 0, opcode: 77, flags: 0, args: [u64::MAX; 14] },
        Sqe { user_data: 2, seq: 0, opcode: 0, flags: 5, args: [0; 14] },
        Sqe {
            user_data: 3,
            seq: 0,
            opcode: 1,
            flags: 0,
            args: [u64::MAX, u64::MAX, u64::MAX, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        },
        Sqe { user_data: 4, seq: 0, opcode: 3, flags: 0, args: [u64::MAX; 14] },
        Sqe { user_data: 5, seq: 0, opcode: 2, flags: 0, args: [1, 0, 8, 1, u64::MAX - 3, 8, 0, 0, 0, 0, 0, 0, 0, 0] },
        Sqe::encode(&Op::Nop, 6),
    ];
    for (i, sqe) in garbage.iter().enumerate() {
        ring.write_sqe(i as u32, sqe);
    }
    rustix::io::write(&doorbell, &1u64.to_ne_bytes()).unwrap();
    let out = raw_wait(&ring, 6);
    let got: Vec<(u64, Result<(), Errno>)> = out.iter().map(|c| (c.user_data, c.status())).collect();
    assert_eq!(
        got,
        vec![
            (1, Err(Errno::EINVAL)),
            (2, Err(Errno::EINVAL)),
            (3, Err(Errno::ENOENT)),
            (4, Err(Errno::EINVAL)),
            (5, Err(Errno::ENOENT)),
            (6, Ok(()))
        ]
    );
    // Another client is unaffected.
    let other = d.open(0);
    other.create_queue().unwrap().submit(Op::Nop).unwrap().wait().unwrap();
}

#[test]
fn unread_completions_are_never_overwritten_and_scribbles_only_hurt_their_owner() {
    let d = Daemon::start(&["cpu"]);
    let (_conn, ring, doorbell) = raw_ring(&d, 8);
    let bystander = d.open(0);
    let mut good = bystander.create_queue().unwrap().into_ring(8).unwrap();
    let publish = |from: u32| {
        for i in from..from + 8 {
            ring.write_sqe(i, &Sqe::encode(&Op::Nop, u64::from(i)));
        }
        // As a real client does when the poller may sleep.
        rustix::io::write(&doorbell, &1u64.to_ne_bytes()).unwrap();
    };
    // An entry published with the wrong sequence number is not taken.
    write_raw(&ring, 0, &Sqe::encode(&Op::Nop, 1), 77);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(ring.read_cqe(0), None);
    // Fill all 16 completion slots without reading any (cq_head stays 0).
    publish(0);
    raw_wait(&ring, 8);
    publish(8);
    raw_wait(&ring, 16);
    // Eight more: they must wait, because their completions would overwrite unread ones.
    publish(16);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ring.read_cqe(16), None, "an unread completion was overwritten");
    assert_eq!(ring.read_cqe(0).map(|c| c.user_data), Some(0));
    // A garbage cq_head does not make room either.
    ring.cq_head().store(0x8000_0000, Ordering::Release);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ring.read_cqe(16), None);
    // Others never noticed.
    for _ in 0..100 {
        assert_eq!(good.submit_wait(&Op::Nop, SECOND).unwrap().status(), Ok(()));
    }
    // Reading legitimately (cq_head = 16) and ringing the doorbell lets the ring move on.
    ring.cq_head().store(16, Ordering::Release);
    rustix::io::write(&doorbell, &1u64.to_ne_bytes()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while ring.read_cqe(23).is_none() {
        assert!(std::time::Instant::now() < deadline, "ring did not resume promptly");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(ring.read_cqe(16).map(|c| c.user_data), Some(16));
}

#[test]
fn ring_and_socket_paths_coexist_and_rings_are_reclaimed() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let ring = dev.create_queue().unwrap().into_ring(32).unwrap();
    ring.queue().submit(Op::Nop).unwrap().wait().unwrap();
    assert_eq!(d.stats().rings, 1);
    let q = dev.create_queue().unwrap();
    let err =
        dev.request(&accel_uapi::Request::RingCreate { queue: accel_uapi::QueueHandle(0), entries: 3 }).unwrap_err();
    assert_eq!(err.code, Errno::ENOENT);
    drop(q);
    drop(ring);
    let deadline = std::time::Instant::now() + SECOND;
    while d.stats().rings != 0 {
        assert!(std::time::Instant::now() < deadline, "ring not reclaimed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `flag` until it reads `want` (or fails after a second).
fn await_flag(flag: &std::sync::atomic::AtomicU32, want: u32, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while flag.load(Ordering::SeqCst) != want {
        assert!(std::time::Instant::now() < deadline, "{what}: still {}", flag.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn a_spinning_client_keeps_the_poller_on_its_ring_while_its_jobs_run_and_only_then() {
    let d = Daemon::start(&["testdev"]);
    let (_conn, ring, doorbell) = raw_ring(&d, 8);
    // A fresh ring goes idle once nothing came for the poll spin (100 µs).
    await_flag(ring.poller_sleeping(), 1, "an idle ring");
    let delay = Sqe::encode(&driver_op(OP_DELAY, 40), 1);
    let submit = |index: u32| {
        ring.write_sqe(index, &delay);
        if ring.peer_sleeps(ring.poller_sleeping()) {
            rustix::io::write(&doorbell, &1u64.to_ne_bytes()).unwrap();
        }
    };

    // Blocking client (no hint): the poller lets go of the ring while its 40 ms job runs.
    submit(0);
    std::thread::sleep(Duration::from_millis(15));
    assert_eq!(ring.poller_sleeping().load(Ordering::SeqCst), 1, "the poller should not watch a ring with no news");
    assert_eq!(raw_wait(&ring, 1)[0].status(), Ok(()));

    // Spinning client: the poller keeps watching while the job runs, so the next submission
    // needs no doorbell; once it completed, the ring goes idle as before.
    ring.client_spins().store(1, Ordering::SeqCst);
    submit(1);
    std::thread::sleep(Duration::from_millis(15));
    assert_eq!(ring.poller_sleeping().load(Ordering::SeqCst), 0, "the poller let go of a spinning client's ring");
    let done = raw_wait(&ring, 2);
    assert_eq!(done[1].status(), Ok(()));
    await_flag(ring.poller_sleeping(), 1, "a spinning client's ring after its last job");
}

#[test]
fn spin_and_block_wait_modes_complete_the_same_jobs_and_time_out_the_same_way() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    for mode in [accel::WaitMode::Spin, accel::WaitMode::Block, accel::WaitMode::Auto] {
        let mut ring = dev.create_queue().unwrap().into_ring(8).unwrap();
        ring.set_wait_mode(mode);
        assert_eq!(ring.wait_mode(), mode);
        for i in 0..20 {
            let c = ring.submit_wait(&driver_op(OP_DELAY, i % 3), SECOND).unwrap();
            assert_eq!(c.status(), Ok(()), "{mode:?}");
        }
        ring.push(&driver_op(OP_DELAY, 300), 7).unwrap();
        ring.flush().unwrap();
        let mut out = Vec::new();
        let e = ring.wait(&mut out, 1, Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.code, Errno::ETIMEDOUT, "{mode:?}");
        ring.wait(&mut out, 1, SECOND).unwrap();
        assert_eq!(out[0].user_data, 7);
    }
}

#[test]
fn the_daemon_suggests_how_long_clients_spin_by_the_rings_busy_and_the_cpus() {
    use accel_uapi::spin::{cpus, ring_wait};
    let us = |d: Duration| d.as_micros() as u32;
    let d = Daemon::start(&["testdev"]);
    let (_conn, ring, doorbell) = raw_ring(&d, 8);
    assert_eq!(ring.spin_budget().load(Ordering::SeqCst), 0, "nothing suggested before the first submission");
    let submit = |ring: &RingMem, doorbell: &std::os::fd::OwnedFd, index: u32, ms: u64| {
        ring.write_sqe(index, &Sqe::encode(&driver_op(OP_DELAY, ms), u64::from(index)));
        if ring.peer_sleeps(ring.poller_sleeping()) {
            rustix::io::write(doorbell, &1u64.to_ne_bytes()).unwrap();
        }
    };
    // One ring busy (this one): long where the machine has CPUs to spare, else short.
    submit(&ring, &doorbell, 0, 1);
    assert_eq!(raw_wait(&ring, 1)[0].status(), Ok(()));
    assert_eq!(ring.spin_budget().load(Ordering::SeqCst), us(ring_wait(1, cpus())));

    // As many other rings with a job running as leave no CPU for one more spinning client
    // and its relays: the next submission here is told to spin briefly.
    let others = cpus() / (1 + accel_uapi::spin::RELAY_THREADS) + 1;
    let busy: Vec<_> = (0..others)
        .map(|_| {
            let (conn, r, bell) = raw_ring(&d, 8);
            submit(&r, &bell, 0, 2_000);
            (conn, r, bell)
        })
        .collect();
    for (_, r, _) in &busy {
        await_flag(r.sq_head(), 1, "a busy ring's submission taken");
    }
    submit(&ring, &doorbell, 1, 1);
    assert_eq!(raw_wait(&ring, 2)[1].status(), Ok(()));
    assert_eq!(ring.spin_budget().load(Ordering::SeqCst), us(accel_uapi::spin::RING_WAIT_SHORT));

    // The client library's default wait reads it (the variable unset; the rule is the
    // library's unit test): the other rings' jobs still run (2 s), so short.
    if std::env::var_os("ACCEL_WAIT_SPIN_US").is_none() {
        let dev = d.open(0);
        let mut lib = dev.create_queue().unwrap().into_ring(8).unwrap();
        lib.submit_wait(&driver_op(OP_DELAY, 1), SECOND).unwrap();
        assert_eq!(lib.auto_spin(), accel_uapi::spin::RING_WAIT_SHORT);
    }
}
