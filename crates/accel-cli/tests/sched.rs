//! Scheduler and recovery, end to end: resets, bans, resubmission, cross-client and
//! cross-device dependencies, priorities, leases, wedging.

mod common;

use std::time::{Duration, Instant};

use accel::{Device, Errno, FenceStatus, Op, Priority, QueueOptions};
use accel_driver_testdev::{OP_BREAK_RESET, OP_DELAY, OP_FAIL, OP_HANG};
use common::{code, driver_op, spawn_role, wait_ready, Daemon};

/// Entry point of child client processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    common::child_entry();
}

fn queue(dev: &Device, priority: Priority, timeout: Option<Duration>) -> accel::Queue {
    dev.create_queue_with(QueueOptions { priority, weight: 0, timeout }).unwrap()
}

/// When the fence signalled, in ms since `t0` (both on `CLOCK_MONOTONIC`).
fn signalled_ms(dev: &Device, f: &accel::Fence, t0: u64) -> f64 {
    let r = dev.wait(&[f.point()], true, Duration::from_secs(10)).unwrap();
    (r.timestamps[0] - t0) as f64 / 1e6
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

on_testdev_and_async!(hang_resets_engine_innocent_jobs_complete_and_guilty_is_banned_on: hang_resets_engine_innocent_jobs_complete_and_guilty_is_banned, hang_resets_engine_innocent_jobs_complete_and_guilty_is_banned_on_an_asynchronous_engine);

fn hang_resets_engine_innocent_jobs_complete_and_guilty_is_banned_on(testdev: &str) {
    let d = Daemon::start_with(&[testdev], &["--hang-limit", "1"]);
    let (guilty, innocent) = (d.open(0), d.open(0));
    let gq = queue(&guilty, Priority::Normal, Some(Duration::from_millis(300)));
    let iq = queue(&innocent, Priority::Normal, None);
    let t0 = now_ns();
    // The innocent job runs on the engine's second slot while the guilty one hangs.
    let running = iq.submit(driver_op(OP_DELAY, 500)).unwrap();
    let hang = gq.submit(driver_op(OP_HANG, 0)).unwrap();
    let behind = gq.submit(Op::Nop).unwrap();
    let queued = iq.submit(Op::Nop).unwrap();

    assert_eq!(hang.wait().unwrap_err().code, Errno::ETIME);
    running.wait().unwrap();
    queued.wait().unwrap();
    // The reset at ~300 ms aborted the innocent job; it was resubmitted and ran its full 500 ms again.
    let done = signalled_ms(&innocent, &running, t0);
    assert!(done >= 750.0, "innocent job finished at {done:.0} ms: it was not re-run");
    // The guilty context is banned: its queued job was cancelled, and new submits fail.
    assert_eq!(behind.wait().unwrap_err().code, Errno::ECANCELED);
    assert_eq!(code(gq.submit(Op::Nop)), Errno::ECANCELED);
    // Another context of the same client is fine, and so is the device.
    queue(&guilty, Priority::Normal, None).submit(Op::Nop).unwrap().wait().unwrap();
    let info = innocent.info().clone();
    assert_eq!(info.engines[0].credits, 2);
    let now = accel::Connection::connect(d.socket()).unwrap().device_info(0).unwrap();
    assert_eq!((now.resets, now.wedged), (1, false));
}

on_testdev_and_async!(karma_below_the_hang_limit_does_not_ban_on: karma_below_the_hang_limit_does_not_ban, karma_below_the_hang_limit_does_not_ban_on_an_asynchronous_engine);

fn karma_below_the_hang_limit_does_not_ban_on(testdev: &str) {
    let d = Daemon::start_with(&[testdev], &["--hang-limit", "2"]);
    let dev = d.open(0);
    let q = queue(&dev, Priority::Normal, Some(Duration::from_millis(100)));
    assert_eq!(q.submit(driver_op(OP_HANG, 0)).unwrap().wait().unwrap_err().code, Errno::ETIME);
    q.submit(Op::Nop).unwrap().wait().unwrap();
    assert_eq!(q.submit(driver_op(OP_HANG, 0)).unwrap().wait().unwrap_err().code, Errno::ETIME);
    assert_eq!(code(q.submit(Op::Nop)), Errno::ECANCELED);
}

#[test]
fn dependency_on_another_clients_job_on_another_device() {
    let d = Daemon::start(&["testdev", "cpu"]);
    let (producer, consumer) = (d.open(0), d.open(1));
    let pq = producer.create_queue().unwrap();
    let cq = consumer.create_queue().unwrap();
    let timeline = producer.create_syncobj(true).unwrap();
    let imported = consumer.import_syncobj(timeline.export().unwrap()).unwrap();
    let buf = consumer.alloc(4096).unwrap();
    let t0 = now_ns();

    // Point 1: a slow job on the test device; the cpu device's fill waits for it.
    let slow = pq.submit_with(driver_op(OP_DELAY, 200), &[], &[timeline.signal_point(1)]).unwrap();
    let fill = cq.submit_with(Op::Fill { dst: buf.view(0, 4), pattern: 7 }, &[imported.point(1)], &[]).unwrap();
    fill.wait().unwrap();
    assert!(signalled_ms(&consumer, &fill, t0) >= signalled_ms(&producer, &slow, t0));
    assert_eq!(buf.read_f32(0, 1).unwrap()[0].to_bits(), 7);

    // Point 2 fails: the dependent job fails with the same error and never runs.
    pq.submit_with(driver_op(OP_FAIL, Errno::ENOSPC.raw().into()), &[], &[timeline.signal_point(2)]).unwrap();
    let dependent = cq.submit_with(Op::Fill { dst: buf.view(0, 4), pattern: 9 }, &[imported.point(2)], &[]).unwrap();
    assert_eq!(dependent.wait().unwrap_err().code, Errno::ENOSPC);
    assert_eq!(buf.read_f32(0, 1).unwrap()[0].to_bits(), 7);

    // The consumer can signal the shared timeline too.
    // Point 3 reports the failure below it; as in DRM, a failed point still counts as
    // reached for the query.
    imported.signal(3).unwrap();
    assert_eq!(timeline.wait(3, Duration::from_secs(1)).unwrap_err().code, Errno::ENOSPC);
    assert_eq!(timeline.query().unwrap(), 3);
}

#[test]
fn closed_export_cannot_be_imported() {
    let d = Daemon::start(&["cpu"]);
    let (a, b) = (d.open(0), d.open(0));
    let so = a.create_syncobj(false).unwrap();
    let fd = so.export().unwrap();
    drop(so);
    assert_eq!(b.import_syncobj(&fd).unwrap_err().code, Errno::EINVAL);
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert_eq!(b.import_syncobj(&file).unwrap_err().code, Errno::EINVAL);
}

#[test]
fn higher_priority_work_overtakes_queued_lower_priority_work() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    // Queues run one job at a time, so each job gets its own queue to compete for the two slots.
    let queues = |p| (0..2).map(|_| queue(&dev, p, None)).collect::<Vec<_>>();
    let (kernel, low, high) = (queues(Priority::Kernel), queues(Priority::Low), queues(Priority::High));
    let t0 = now_ns();
    // Fill both engine slots, then queue low work before high work.
    let blockers: Vec<_> = kernel.iter().map(|q| q.submit(driver_op(OP_DELAY, 150)).unwrap()).collect();
    let lows: Vec<_> = low.iter().map(|q| q.submit(driver_op(OP_DELAY, 50)).unwrap()).collect();
    let highs: Vec<_> = high.iter().map(|q| q.submit(driver_op(OP_DELAY, 50)).unwrap()).collect();
    for b in &blockers {
        b.wait().unwrap();
    }
    let high_done = highs.iter().map(|f| signalled_ms(&dev, f, t0)).fold(0.0, f64::max);
    let low_first = lows.iter().map(|f| signalled_ms(&dev, f, t0)).fold(f64::MAX, f64::min);
    assert!(high_done <= low_first, "high finished at {high_done:.0} ms, low at {low_first:.0} ms");
}

#[test]
fn high_priority_needs_privilege_and_weights_are_bounded() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    // Tests run as root or as the daemon's user, so high priority is allowed here.
    queue(&dev, Priority::High, None);
    let too_heavy = QueueOptions { weight: 10_001, ..Default::default() };
    assert_eq!(dev.create_queue_with(too_heavy).unwrap_err().code, Errno::EINVAL);
}

on_testdev_and_async!(crashed_client_with_queued_work_does_not_fail_others_on: crashed_client_with_queued_work_does_not_fail_others, crashed_client_with_queued_work_does_not_fail_others_on_an_asynchronous_engine);

fn crashed_client_with_queued_work_does_not_fail_others_on(testdev: &str) {
    let d = Daemon::start(&[testdev]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let before = q.submit(Op::Nop).unwrap();
    before.wait().unwrap();
    let mut child = spawn_role("busy-then-die", d.socket(), &[]);
    wait_ready(&mut child);
    // Queued behind the child's hanging job on the other slot, plus work of our own.
    let mine: Vec<_> = (0..3).map(|_| q.submit(driver_op(OP_DELAY, 20)).unwrap()).collect();
    let t = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    for f in &mine {
        f.wait().unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(5), "our jobs waited for the dead client's hang to time out");
    assert_eq!(before.status().unwrap(), FenceStatus::Signaled);
}

#[test]
fn exclusive_lease_waiters_are_served_in_order() {
    let d = Daemon::start(&["testdev:exclusive"]);
    let mut holder = spawn_role("hold", d.socket(), &[]);
    wait_ready(&mut holder);
    let socket = d.socket().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut waiters = Vec::new();
    for i in 0..2 {
        let (socket, tx) = (socket.clone(), tx.clone());
        waiters.push(std::thread::spawn(move || {
            let dev = Device::open_wait(&socket, 0, Duration::from_secs(10)).unwrap();
            tx.send(i).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            drop(dev);
        }));
        // Make sure waiter 0 is queued before waiter 1.
        std::thread::sleep(Duration::from_millis(100));
    }
    // While the holder lives, nobody gets in, and a non-waiting open is EBUSY.
    assert_eq!(Device::open_at(&socket, 0).unwrap_err().code, Errno::EBUSY);
    assert!(rx.try_recv().is_err());
    holder.kill().unwrap();
    holder.wait().unwrap();
    let order: Vec<i32> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    assert_eq!(order, vec![0, 1]);
    for w in waiters {
        w.join().unwrap();
    }
    // A waiter that gives up gets EBUSY after its wait.
    let _owner = d.open(0);
    let t = Instant::now();
    assert_eq!(Device::open_wait(&socket, 0, Duration::from_millis(200)).unwrap_err().code, Errno::EBUSY);
    assert!(t.elapsed() >= Duration::from_millis(190));
}

#[test]
fn new_lease_holder_finds_only_zeroed_memory() {
    let d = Daemon::start(&["cpu:exclusive"]);
    let first = d.open(0);
    first.alloc(1 << 20).unwrap().write(0, &[0xee; 4096]).unwrap();
    drop(first);
    let second = Device::open_wait(d.socket(), 0, Duration::from_secs(5)).unwrap();
    let buf = second.alloc(1 << 20).unwrap();
    let mut bytes = vec![1u8; 1 << 20];
    buf.read(0, &mut bytes).unwrap();
    assert!(bytes.iter().all(|b| *b == 0));
}

on_testdev_and_async!(failed_reset_wedges_the_device_on: failed_reset_wedges_the_device, failed_reset_wedges_the_device_on_an_asynchronous_engine);

fn failed_reset_wedges_the_device_on(testdev: &str) {
    let d = Daemon::start(&[testdev]);
    let dev = d.open(0);
    let q = queue(&dev, Priority::Normal, Some(Duration::from_millis(100)));
    q.submit(driver_op(OP_BREAK_RESET, 0)).unwrap().wait().unwrap();
    assert_eq!(q.submit(driver_op(OP_HANG, 0)).unwrap().wait().unwrap_err().code, Errno::ETIME);
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = loop {
        let info = accel::Connection::connect(d.socket()).unwrap().device_info(0).unwrap();
        if info.wedged || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(info.wedged);
    assert_eq!(code(q.submit(Op::Nop)), Errno::EIO);
}
