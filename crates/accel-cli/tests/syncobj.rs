//! The kernel's IGT syncobj tests (`syncobj_basic`, `syncobj_wait`, `syncobj_timeline`,
//! `syncobj_eventfd`), ported to accel: a real daemon, the client library, the same cases
//! and the same errnos. Where IGT attaches a `sw_sync` fence it controls, these attach the
//! fence of a job that waits on a "gate" syncobj nothing was submitted for; signalling the
//! gate from the host is the `sw_sync_timeline_inc`.

mod common;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use accel::syncobj::{QUERY_LAST_SUBMITTED, WAIT_ALL, WAIT_AVAILABLE, WAIT_FOR_SUBMIT, WAIT_RELATIVE};
use accel::{Device, Errno, Op, Queue, Syncobj, SyncobjHandle};
use accel_uapi::{Reply, Request};
use common::{code, Daemon};

/// One tenth of a second, IGT's `SHORT_TIME_NSEC`.
const SHORT: Duration = Duration::from_millis(100);

fn now_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// IGT's `short_timeout()`: an absolute deadline 100 ms from now.
fn short_timeout() -> i64 {
    now_ns() + SHORT.as_nanos() as i64
}

/// A `sw_sync` fence stand-in: a job on its own queue (so gates are independent, like
/// `sw_sync` timelines) that waits on a syncobj nothing was submitted for.
struct Gate {
    gate: Syncobj,
    _queue: Queue,
}

impl Gate {
    /// `sw_sync_timeline_inc`: the job runs and its fence signals.
    fn signal(&self, point: u64) -> accel::Result<()> {
        self.gate.signal(point)
    }
}

/// Attaches a gated fence to `target` at `point`.
fn attach_gated(dev: &Device, target: &Syncobj, point: u64) -> Gate {
    let gate = dev.create_syncobj(false).unwrap();
    let queue = dev.create_queue().unwrap();
    queue.submit_with(Op::Nop, &[gate.point(0)], &[target.signal_point(point)]).unwrap();
    Gate { gate, _queue: queue }
}

/// `syncobj_wait_err`: the errno of a wait (`Ok` as `None`).
fn wait_err(dev: &Device, objs: &[&Syncobj], timeout_ns: i64, flags: u32) -> Option<Errno> {
    let points: Vec<(&Syncobj, u64)> = objs.iter().map(|s| (*s, 0)).collect();
    dev.syncobj_wait(&points, flags, timeout_ns).err().map(|e| e.code)
}

fn bogus() -> SyncobjHandle {
    SyncobjHandle(0xdead_0000_0001)
}

#[test]
fn basic_create_destroy_export_import_errors() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    // syncobj_basic: bad destroy, bad export and bad import are EINVAL.
    assert_eq!(code(dev.request(&Request::SyncobjDestroy { handle: bogus() })), Errno::EINVAL);
    assert_eq!(code(dev.request(&Request::SyncobjExport { handle: bogus() })), Errno::EINVAL);
    let not_a_syncobj = std::fs::File::open("/proc/self/status").unwrap();
    assert_eq!(dev.import_syncobj(&not_a_syncobj).unwrap_err().code, Errno::EINVAL);
    // create-signaled: a binary wait succeeds at once.
    let s = dev.create_syncobj_signaled().unwrap();
    assert_eq!(wait_err(&dev, &[&s], 0, 0), None);
    // Export, import on another connection: the same object.
    let other = d.open(0);
    let imported = other.import_syncobj(s.export().unwrap()).unwrap();
    imported.reset().unwrap();
    assert_eq!(wait_err(&dev, &[&s], 0, 0), Some(Errno::EINVAL));
}

#[test]
fn invalid_wait_reset_and_signal_arguments() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    // invalid-wait-bad-flags, -zero-handles (DRM since the deadline series: 0), -illegal-handle.
    let s = dev.create_syncobj(false).unwrap();
    assert_eq!(wait_err(&dev, &[&s], 0, 0xdead_beef), Some(Errno::EINVAL));
    assert!(dev.syncobj_wait(&[], 0, 0).is_ok());
    let wait = |handles: Vec<SyncobjHandle>| {
        code(dev.request(&Request::SyncobjWaitMany { handles, points: vec![], flags: 0, timeout_ns: 0 }))
    };
    assert_eq!(wait(vec![bogus()]), Errno::ENOENT);
    // invalid-{reset,signal}-{zero-handles,illegal-handle,one-illegal-handle}.
    assert_eq!(code(dev.request(&Request::SyncobjResetMany { handles: vec![] })), Errno::EINVAL);
    assert_eq!(code(dev.request(&Request::SyncobjSignalMany { handles: vec![], points: vec![] })), Errno::EINVAL);
    assert_eq!(code(dev.request(&Request::SyncobjResetMany { handles: vec![bogus()] })), Errno::ENOENT);
    let (a, b) = (dev.create_syncobj_signaled().unwrap(), dev.create_syncobj_signaled().unwrap());
    let three = vec![a.handle(), bogus(), b.handle()];
    assert_eq!(code(dev.request(&Request::SyncobjResetMany { handles: three.clone() })), Errno::ENOENT);
    assert_eq!(wait_err(&dev, &[&a, &b], 0, WAIT_ALL), None, "nothing was reset");
    let (x, y) = (dev.create_syncobj(false).unwrap(), dev.create_syncobj(false).unwrap());
    let three = vec![x.handle(), bogus(), y.handle()];
    assert_eq!(code(dev.request(&Request::SyncobjSignalMany { handles: three, points: vec![] })), Errno::ENOENT);
    assert_eq!(wait_err(&dev, &[&x], 0, 0), Some(Errno::EINVAL), "nothing was signalled");
    assert_eq!(wait_err(&dev, &[&y], 0, 0), Some(Errno::EINVAL));
    // Points and handles must pair up; queries take known flags only.
    let req = Request::SyncobjSignalMany { handles: vec![x.handle()], points: vec![1, 2] };
    assert_eq!(code(dev.request(&req)), Errno::EINVAL);
    assert_eq!(dev.syncobj_query(&[&x], 0x10).unwrap_err().code, Errno::EINVAL);
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Stage {
    Unsubmitted,
    Submitted,
    Signaled,
}

/// IGT's `test_single_wait` and `test_multi_wait` matrix: every stage combination of three
/// syncobjs, with and without `WAIT_ALL` and `WAIT_FOR_SUBMIT`, at timeout 0 and a short one.
#[test]
fn wait_matrix_single_and_multi() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let stages = [Stage::Unsubmitted, Stage::Submitted, Stage::Signaled];
    let mut gates = Vec::new();
    let mut make = |stage: Stage| {
        let s = dev.create_syncobj(false).unwrap();
        match stage {
            Stage::Unsubmitted => {}
            Stage::Submitted => gates.push(attach_gated(&dev, &s, 0)),
            Stage::Signaled => s.signal(0).unwrap(),
        }
        s
    };
    let mut combos: Vec<Vec<Stage>> = stages.iter().map(|s| vec![*s]).collect();
    for a in stages {
        for b in stages {
            for c in stages {
                combos.push(vec![a, b, c]);
            }
        }
    }
    for combo in combos {
        let objs: Vec<Syncobj> = combo.iter().map(|s| make(*s)).collect();
        let refs: Vec<&Syncobj> = objs.iter().collect();
        for flags in [0, WAIT_ALL, WAIT_FOR_SUBMIT, WAIT_ALL | WAIT_FOR_SUBMIT] {
            let unsubmitted = combo.contains(&Stage::Unsubmitted);
            let want = if unsubmitted && flags & WAIT_FOR_SUBMIT == 0 {
                Some(Errno::EINVAL)
            } else if flags & WAIT_ALL != 0 {
                (!combo.iter().all(|s| *s == Stage::Signaled)).then_some(Errno::ETIME)
            } else {
                (!combo.contains(&Stage::Signaled)).then_some(Errno::ETIME)
            };
            assert_eq!(wait_err(&dev, &refs, 0, flags), want, "{combo:?} flags {flags:#x} timeout 0");
            assert_eq!(wait_err(&dev, &refs, short_timeout(), flags), want, "{combo:?} flags {flags:#x}");
            if want.is_none() {
                assert_eq!(wait_err(&dev, &refs, i64::MAX, flags), None);
            }
        }
    }
}

#[test]
fn wait_delayed_signal_reset_during_wait_for_submit_and_signal() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    // wait-delayed-signal, for-submit: the host signals 100 ms into a wait of 200 ms.
    let s = dev.create_syncobj(false).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(SHORT);
            s.signal(0).unwrap();
        });
        let deadline = now_ns() + 30 * SHORT.as_nanos() as i64;
        assert_eq!(wait_err(&dev, &[&s], deadline, WAIT_FOR_SUBMIT), None);
    });
    // wait-delayed-signal, submitted: the fence is there, its job runs 100 ms in.
    let s = dev.create_syncobj(false).unwrap();
    let gate = attach_gated(&dev, &s, 0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(SHORT);
            gate.signal(0).unwrap();
        });
        assert_eq!(wait_err(&dev, &[&s], now_ns() + 30 * SHORT.as_nanos() as i64, 0), None);
    });
    // reset-during-wait-for-submit: a reset is a no-op for the waiter; the trigger ends it.
    let s = dev.create_syncobj(false).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(SHORT);
            s.reset().unwrap();
            s.signal(0).unwrap();
        });
        assert_eq!(wait_err(&dev, &[&s], now_ns() + 30 * SHORT.as_nanos() as i64, WAIT_FOR_SUBMIT), None);
    });
    // signal: EINVAL, then ETIME with WAIT_FOR_SUBMIT, then 0 both ways once signalled.
    let s = dev.create_syncobj(false).unwrap();
    assert_eq!(wait_err(&dev, &[&s], 0, 0), Some(Errno::EINVAL));
    assert_eq!(wait_err(&dev, &[&s], 0, WAIT_FOR_SUBMIT), Some(Errno::ETIME));
    dev.syncobj_signal(&[(&s, 0)]).unwrap();
    assert_eq!(wait_err(&dev, &[&s], 0, 0), None);
    assert_eq!(wait_err(&dev, &[&s], 0, WAIT_FOR_SUBMIT), None);
    // reset-unsignaled, reset-signaled, reset-multiple-signaled.
    let objs: Vec<Syncobj> = (0..3).map(|_| dev.create_syncobj(false).unwrap()).collect();
    let refs: Vec<&Syncobj> = objs.iter().collect();
    dev.syncobj_reset(&refs[..1]).unwrap();
    assert_eq!(wait_err(&dev, &refs[..1], 0, 0), Some(Errno::EINVAL));
    dev.syncobj_signal(&refs.iter().map(|s| (*s, 0)).collect::<Vec<_>>()).unwrap();
    assert_eq!(wait_err(&dev, &refs, 0, WAIT_ALL), None);
    dev.syncobj_reset(&refs).unwrap();
    for s in &refs {
        assert_eq!(wait_err(&dev, &[s], 0, 0), Some(Errno::EINVAL));
    }
}

/// `test_wait_snapshot`: a wait works on the fences it found when it began (or, waiting for
/// submission, the first one attached); a reset and a new never-signalling fence after that
/// do not change it.
#[test]
fn wait_snapshot() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    for flags in [0, WAIT_ALL, WAIT_FOR_SUBMIT, WAIT_ALL | WAIT_FOR_SUBMIT] {
        let objs = [dev.create_syncobj(false).unwrap(), dev.create_syncobj(false).unwrap()];
        let mut gates: Vec<Option<Gate>> = vec![None, None];
        if flags & WAIT_FOR_SUBMIT == 0 {
            gates = objs.iter().map(|s| Some(attach_gated(&dev, s, 0))).collect();
        }
        let result = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                dev.syncobj_wait(&[(&objs[0], 0), (&objs[1], 0)], flags | WAIT_RELATIVE, 50 * SHORT.as_nanos() as i64)
            });
            std::thread::sleep(SHORT / 5);
            if flags & WAIT_ALL != 0 {
                match &gates[0] {
                    Some(g) => g.signal(0).unwrap(),
                    None => objs[0].signal(0).unwrap(),
                }
            } else if flags & WAIT_FOR_SUBMIT != 0 {
                gates[0] = Some(attach_gated(&dev, &objs[0], 0));
            }
            std::thread::sleep(SHORT / 5);
            objs[0].reset().unwrap();
            std::thread::sleep(SHORT / 5);
            let _never = attach_gated(&dev, &objs[0], 0);
            std::thread::sleep(SHORT / 5);
            match &gates[1] {
                Some(g) => g.signal(0).unwrap(),
                None => objs[1].signal(0).unwrap(),
            }
            waiter.join().unwrap()
        });
        let result = result.unwrap_or_else(|e| panic!("flags {flags:#x}: {e}"));
        if flags & WAIT_ALL == 0 {
            assert_eq!(result.first, 1, "flags {flags:#x}");
        }
    }
}

/// `test_wait_complex`: eight syncobjs stepped through unsubmitted → submitted → signalled →
/// reset → resubmitted in a shuffled order while a wait (any or all) is pending.
#[test]
fn wait_complex() {
    const SHUFFLED: [usize; 32] =
        [2, 0, 6, 1, 1, 4, 5, 2, 0, 7, 1, 7, 6, 3, 4, 5, 0, 2, 7, 3, 5, 4, 0, 6, 7, 3, 2, 5, 6, 1, 4, 3];
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    for flags in [WAIT_FOR_SUBMIT, WAIT_ALL | WAIT_FOR_SUBMIT, 0, WAIT_ALL] {
        let objs: Vec<Syncobj> = (0..8).map(|_| dev.create_syncobj(false).unwrap()).collect();
        let mut gates: Vec<Option<Gate>> = if flags & WAIT_FOR_SUBMIT != 0 {
            (0..8).map(|_| None).collect()
        } else {
            objs.iter().map(|s| Some(attach_gated(&dev, s, 0))).collect()
        };
        let mut stage = [0u8; 8];
        let (mut first, mut signalled) = (None, 0);
        let points: Vec<(&Syncobj, u64)> = objs.iter().map(|s| (s, 0)).collect();
        let result = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| dev.syncobj_wait(&points, flags | WAIT_RELATIVE, 5_000_000_000));
            std::thread::sleep(Duration::from_millis(20));
            let mut keep = Vec::new();
            for i in SHUFFLED {
                match stage[i] {
                    0 if flags & WAIT_FOR_SUBMIT != 0 => gates[i] = Some(attach_gated(&dev, &objs[i], 0)),
                    0 => {}
                    1 => {
                        gates[i].take().unwrap().signal(0).unwrap();
                        first.get_or_insert(i);
                        signalled += 1;
                    }
                    2 => objs[i].reset().unwrap(),
                    3 => keep.push(attach_gated(&dev, &objs[i], 0)),
                    _ => unreachable!("no fifth stage"),
                }
                stage[i] += 1;
                if (flags & WAIT_ALL != 0 && signalled == 8) || (flags & WAIT_ALL == 0 && signalled > 0) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            waiter.join().unwrap()
        });
        let result = result.unwrap_or_else(|e| panic!("flags {flags:#x}: {e}"));
        if flags & WAIT_ALL != 0 {
            assert_eq!(signalled, 8);
        } else {
            assert_eq!((signalled, Some(result.first as usize)), (1, first), "flags {flags:#x}");
        }
    }
}

#[test]
fn timeline_out_of_order_points_query_and_last_submitted() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let t = dev.create_syncobj(true).unwrap();
    // Submitted as 1, 5, 3 (out of order, accepted), signalled as 5, 1, 3.
    let g1 = attach_gated(&dev, &t, 1);
    let g5 = attach_gated(&dev, &t, 5);
    let g3 = attach_gated(&dev, &t, 3);
    assert_eq!(t.last_submitted().unwrap(), 5);
    assert_eq!(t.query().unwrap(), 0);
    g5.signal(0).unwrap();
    assert_eq!(t.query().unwrap(), 0);
    g1.signal(0).unwrap();
    // The out-of-order head stands for every point up to 5 (dma_fence_chain_find_seqno
    // stops at it): even point 1 waits for the fence attached as 3.
    std::thread::sleep(SHORT / 5);
    assert_eq!(t.query().unwrap(), 0);
    assert_eq!(dev.syncobj_wait(&[(&t, 1)], 0, 0).unwrap_err().code, Errno::ETIME);
    g3.signal(0).unwrap();
    t.wait(5, Duration::from_secs(5)).unwrap();
    assert_eq!(t.query().unwrap(), 5);
    // A host signal at or below the last point is accepted too.
    t.signal(2).unwrap();
    assert_eq!(dev.syncobj_query(&[&t], QUERY_LAST_SUBMITTED).unwrap(), vec![5]);
    assert_eq!(t.query().unwrap(), 5);
    // A point above the last submitted one: EINVAL, or ETIME waiting for its submission.
    assert_eq!(dev.syncobj_wait(&[(&t, 6)], 0, 0).unwrap_err().code, Errno::EINVAL);
    assert_eq!(dev.syncobj_wait(&[(&t, 6)], WAIT_FOR_SUBMIT, 0).unwrap_err().code, Errno::ETIME);
    // WAIT_AVAILABLE: done once submitted, signalled or not.
    let g7 = attach_gated(&dev, &t, 7);
    dev.syncobj_wait(&[(&t, 7)], WAIT_AVAILABLE, 0).unwrap();
    assert_eq!(dev.syncobj_wait(&[(&t, 7)], 0, 0).unwrap_err().code, Errno::ETIME);
    g7.signal(0).unwrap();
    t.wait(7, Duration::from_secs(5)).unwrap();
    // A timeline can be reset (DRM allows it): nothing is submitted afterwards.
    t.reset().unwrap();
    assert_eq!((t.query().unwrap(), t.last_submitted().unwrap()), (0, 0));
    assert_eq!(dev.syncobj_wait(&[(&t, 1)], 0, 0).unwrap_err().code, Errno::EINVAL);
}

#[test]
fn timeline_wait_for_submit_from_another_process_and_arrays() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let t = dev.create_syncobj(true).unwrap();
    let fd = t.export().unwrap();
    let other = d.open(0);
    let theirs = other.import_syncobj(&fd).unwrap();
    let oq = other.create_queue().unwrap();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| t.wait_for_submit(3, Duration::from_secs(5)));
        std::thread::sleep(SHORT / 2);
        oq.submit_with(Op::Nop, &[], &[theirs.signal_point(3)]).unwrap();
        waiter.join().unwrap().unwrap();
    });
    // Arrays: signal several points in one request, query them together.
    let (a, b) = (dev.create_syncobj(true).unwrap(), dev.create_syncobj(true).unwrap());
    dev.syncobj_signal(&[(&a, 4), (&b, 9)]).unwrap();
    assert_eq!(dev.syncobj_query(&[&a, &b, &t], 0).unwrap(), vec![4, 9, 3]);
    let r = dev.syncobj_wait(&[(&a, 4), (&b, 10)], WAIT_FOR_SUBMIT | WAIT_RELATIVE, 0).unwrap();
    assert_eq!(r.first, 0);
}

#[test]
fn transfer_between_binary_and_timeline() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let (bin, tl) = (dev.create_syncobj(false).unwrap(), dev.create_syncobj(true).unwrap());
    // binary → timeline point 2.
    let gate = attach_gated(&dev, &bin, 0);
    tl.transfer_from(&bin, 0, 2, 0).unwrap();
    assert_eq!(tl.last_submitted().unwrap(), 2);
    assert_eq!(dev.syncobj_wait(&[(&tl, 2)], 0, 0).unwrap_err().code, Errno::ETIME);
    gate.signal(0).unwrap();
    tl.wait(2, Duration::from_secs(5)).unwrap();
    // timeline point → binary.
    let other = dev.create_syncobj(false).unwrap();
    other.transfer_from(&tl, 1, 0, 0).unwrap();
    other.wait(0, Duration::from_secs(5)).unwrap();
    // timeline point → timeline point; an unsubmitted source is EINVAL without WAIT_FOR_SUBMIT.
    let tl2 = dev.create_syncobj(true).unwrap();
    assert_eq!(tl2.transfer_from(&tl, 5, 1, 0).unwrap_err().code, Errno::EINVAL);
    assert_eq!(tl2.transfer_from(&tl, 5, 1, WAIT_ALL).unwrap_err().code, Errno::EINVAL, "unknown flag");
    tl2.transfer_from(&tl, 5, 1, WAIT_FOR_SUBMIT).unwrap();
    assert_eq!(dev.syncobj_wait(&[(&tl2, 1)], 0, 0).unwrap_err().code, Errno::ETIME);
    tl.signal(5).unwrap();
    tl2.wait(1, Duration::from_secs(5)).unwrap();
    let bogus_dst = Request::SyncobjTransfer { src: tl.handle(), src_point: 1, dst: bogus(), dst_point: 0, flags: 0 };
    assert_eq!(code(dev.request(&bogus_dst)), Errno::ENOENT);
}

fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK).unwrap()
}

/// The eventfd's counter, 0 if it was never signalled.
fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut v = [0u8; 8];
    match rustix::io::read(fd, &mut v) {
        Ok(8) => u64::from_ne_bytes(v),
        _ => 0,
    }
}

fn eventfd_wait(fd: &OwnedFd) -> u64 {
    let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let five = rustix::time::Timespec { tv_sec: 5, tv_nsec: 0 };
    assert_eq!(rustix::event::poll(&mut pfd, Some(&five)).unwrap(), 1, "eventfd not signalled within 5 s");
    eventfd_count(fd)
}

#[test]
fn eventfd_arms_before_submit_binary_timeline_and_available() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    // Invalid: bad flags, bad handle, not an eventfd.
    let s = dev.create_syncobj(false).unwrap();
    assert_eq!(s.notify_eventfd(0, eventfd(), false).map_err(|e| e.code), Ok(()));
    let req = Request::SyncobjEventfd { handle: s.handle(), point: 0, flags: WAIT_ALL };
    let efd = eventfd();
    let bad_flags = dev.request_with_fd(&req, &efd);
    assert_eq!(code(bad_flags), Errno::EINVAL);
    let req = Request::SyncobjEventfd { handle: bogus(), point: 0, flags: 0 };
    assert_eq!(code(dev.request_with_fd(&req, &efd)), Errno::ENOENT);
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert_eq!(s.notify_eventfd(0, &file, false).unwrap_err().code, Errno::EINVAL);
    // Binary: armed before anything is submitted, signalled when the job behind it runs.
    let b = dev.create_syncobj(false).unwrap();
    let efd = eventfd();
    b.notify_eventfd(0, &efd, false).unwrap();
    let gate = attach_gated(&dev, &b, 0);
    std::thread::sleep(SHORT / 5);
    assert_eq!(eventfd_count(&efd), 0, "submitted is not signalled");
    gate.signal(0).unwrap();
    assert_eq!(eventfd_wait(&efd), 1);
    // Timeline point, and WAIT_AVAILABLE firing at submission.
    let t = dev.create_syncobj(true).unwrap();
    let (signalled, available) = (eventfd(), eventfd());
    t.notify_eventfd(3, &signalled, false).unwrap();
    t.notify_eventfd(3, &available, true).unwrap();
    t.signal(1).unwrap();
    std::thread::sleep(SHORT / 5);
    assert_eq!((eventfd_count(&signalled), eventfd_count(&available)), (0, 0));
    let gate = attach_gated(&dev, &t, 3);
    assert_eq!(eventfd_wait(&available), 1);
    assert_eq!(eventfd_count(&signalled), 0);
    gate.signal(0).unwrap();
    assert_eq!(eventfd_wait(&signalled), 1);
    // Already signalled when armed: at once.
    let now = eventfd();
    t.notify_eventfd(2, &now, false).unwrap();
    assert_eq!(eventfd_wait(&now), 1);
}

#[test]
fn sync_files_export_poll_and_import() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let s = dev.create_syncobj(false).unwrap();
    assert_eq!(s.export_sync_file(0).unwrap_err().code, Errno::EINVAL, "no fence to export");
    let gate = attach_gated(&dev, &s, 0);
    let file = s.export_sync_file(0).unwrap();
    let mut pfd = [rustix::event::PollFd::new(&file, rustix::event::PollFlags::IN)];
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    assert_eq!(rustix::event::poll(&mut pfd, Some(&zero)).unwrap(), 0);
    // Imported into a timeline point of another client's syncobj.
    let other = d.open(0);
    let t = other.create_syncobj(true).unwrap();
    t.import_sync_file(4, &file).unwrap();
    assert_eq!(other.syncobj_wait(&[(&t, 4)], 0, 0).unwrap_err().code, Errno::ETIME);
    gate.signal(0).unwrap();
    t.wait(4, Duration::from_secs(5)).unwrap();
    let five = rustix::time::Timespec { tv_sec: 5, tv_nsec: 0 };
    assert_eq!(rustix::event::poll(&mut pfd, Some(&five)).unwrap(), 1);
    // Anything else is not a sync file.
    let pipe = rustix::pipe::pipe().unwrap().0;
    assert_eq!(t.import_sync_file(0, &pipe).unwrap_err().code, Errno::EINVAL);
    let req = Request::SyncobjExportSyncFile { handle: bogus(), point: 0 };
    assert_eq!(code(dev.request(&req)), Errno::ENOENT);
}

/// A runtime waits on one thread while other threads submit and signal on the same device
/// handle: the wait holds no connection-wide lock.
#[test]
fn a_wait_on_one_thread_does_not_block_other_threads_of_the_device() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let t = dev.create_syncobj(true).unwrap();
    let start = Instant::now();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| t.wait_for_submit(100, Duration::from_secs(10)));
        std::thread::sleep(SHORT / 2);
        for p in 1..=100 {
            q.submit_with(Op::Nop, &[], &[t.signal_point(p)]).unwrap();
        }
        waiter.join().unwrap().unwrap();
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(t.query().unwrap(), 100);
    match dev.request(&Request::SyncobjQueryMany { handles: vec![t.handle()], flags: 0 }).unwrap() {
        Reply::Points(p) => assert_eq!(p, vec![100]),
        other => panic!("{other:?}"),
    }
}

/// Ring entries take the same waits: a sync entry waits for a point nothing was submitted
/// for yet, the jobs after it wait with it, and a sync entry after them signals a point.
#[test]
fn ring_sync_entries_wait_before_signal_and_signal_after_earlier_entries() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let buf = dev.alloc(4096).unwrap();
    // (Waiting on point 2 of the timeline this ring then signals at 3 would deadlock, as in
    // Vulkan: point 3 submitted makes point 2 wait for it.)
    let (wait, t) = (dev.create_syncobj(true).unwrap(), dev.create_syncobj(true).unwrap());
    let mut ring = dev.create_queue().unwrap().into_ring(16).unwrap();
    ring.push_sync(&[(&wait, 2)], &[], 1).unwrap();
    ring.push(&Op::Fill { dst: buf.view(0, 4), pattern: 42 }, 2).unwrap();
    ring.push_sync(&[], &[(&t, 3)], 3).unwrap();
    ring.flush().unwrap();
    // Point 3 is submitted as soon as the daemon takes the entries (the ring is asynchronous:
    // wait for that), and nothing completes while point 2 is missing.
    dev.syncobj_wait(&[(&t, 3)], WAIT_AVAILABLE | WAIT_RELATIVE, 5_000_000_000).unwrap();
    assert_eq!(t.last_submitted().unwrap(), 3);
    std::thread::sleep(SHORT / 2);
    let mut done = Vec::new();
    assert_eq!(ring.reap(&mut done), 0, "everything waits for point 2");
    // Another client signals point 2.
    let other = d.open(0);
    other.import_syncobj(wait.export().unwrap()).unwrap().signal(2).unwrap();
    ring.wait(&mut done, 3, Duration::from_secs(5)).unwrap();
    assert_eq!(done.iter().map(|c| (c.user_data, c.result)).collect::<Vec<_>>(), vec![(1, 0), (2, 0), (3, 0)]);
    assert_eq!(buf.read_f32(0, 1).unwrap()[0].to_bits(), 42);
    assert_eq!(t.query().unwrap(), 3);
    // A stale handle completes with ENOENT and nothing runs; more than six points is
    // refused before the ring.
    let stale = dev.create_syncobj(false).unwrap();
    dev.request(&Request::SyncobjDestroy { handle: stale.handle() }).unwrap();
    ring.push_sync(&[], &[(&stale, 0)], 9).unwrap();
    ring.flush().unwrap();
    done.clear();
    ring.wait(&mut done, 1, Duration::from_secs(5)).unwrap();
    assert_eq!((done[0].user_data, done[0].status()), (9, Err(Errno::ENOENT)));
    assert_eq!(ring.push_sync(&[(&t, 1); 7], &[], 0).unwrap_err().code, Errno::E2BIG);
    // Six points, the most an entry takes (they span both cache lines of the entry).
    let many: Vec<Syncobj> = (0..6).map(|_| dev.create_syncobj(true).unwrap()).collect();
    let six: Vec<(&Syncobj, u64)> = many.iter().zip(1..).collect();
    ring.push_sync(&[], &six, 10).unwrap();
    ring.flush().unwrap();
    done.clear();
    ring.wait(&mut done, 1, Duration::from_secs(5)).unwrap();
    assert_eq!((done[0].user_data, done[0].status()), (10, Ok(())));
    let refs: Vec<&Syncobj> = many.iter().collect();
    assert_eq!(dev.syncobj_query(&refs, 0).unwrap(), vec![1, 2, 3, 4, 5, 6]);
}
