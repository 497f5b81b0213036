//! Client unit tests: scheduling order, handles, cleanup, quotas.

use super::*;
use crate::testing::{device, FakeDriver};
use accel_uapi::{BoHandle, BufView, Category, ObjectCounts};

fn setup() -> (Arc<FakeDriver>, Arc<Subsystem>, Client) {
    let drv = Arc::new(FakeDriver::default());
    let sub = Subsystem::new(vec![device(&drv)]).unwrap();
    let mut c = sub.connect(PeerCred::default(), "t");
    c.open_poll(0, false).unwrap();
    (drv, sub, c)
}

fn tag(t: u64) -> Op {
    Op::Driver { code: 1, args: [t, 0, 0, 0] }
}

fn wait(c: &Client, f: FenceHandle) -> FenceStatus {
    c.wait(&[WaitPoint::Fence(f)], true, Duration::from_secs(5)).unwrap().1[0]
}

#[test]
fn jobs_of_one_queue_run_in_submission_order() {
    let (drv, _sub, mut c) = setup();
    let (q1, q2) = (c.queue_create(0, Priority::Normal, 0).unwrap(), c.queue_create(0, Priority::Normal, 0).unwrap());
    let mut fences = Vec::new();
    for t in 0..20 {
        let (q, tag_value) = if t % 2 == 0 { (q1, t) } else { (q2, 100 + t) };
        fences.push(c.submit(q, &tag(tag_value), &[], &[]).unwrap().0);
    }
    for f in fences {
        assert_eq!(wait(&c, f), FenceStatus::Signaled);
    }
    let ran = drv.ran.lock().unwrap().clone();
    let (low, high): (Vec<u64>, Vec<u64>) = ran.iter().partition(|t| **t < 100);
    assert_eq!(low, (0..20).step_by(2).collect::<Vec<_>>());
    assert_eq!(high, (1..20).step_by(2).map(|t| t + 100).collect::<Vec<_>>());
}

/// Blocks the engine with a hanging job, queues `work` behind it, then cancels the
/// blocker and returns the order in which the tags ran.
fn run_behind_gate(c: &mut Client, drv: &FakeDriver, work: &[(QueueHandle, u64)]) -> Vec<u64> {
    run_ops_behind_gate(c, drv, &work.iter().map(|(q, t)| (*q, tag(*t))).collect::<Vec<_>>())
}

fn run_ops_behind_gate(c: &mut Client, drv: &FakeDriver, work: &[(QueueHandle, Op)]) -> Vec<u64> {
    let q = c.queue_create(0, Priority::Kernel, 0).unwrap();
    // The blocker hangs until its queue is destroyed; everything else waits behind it.
    let (blocker, _) = c.submit(q, &Op::Driver { code: 3, args: [0; 4] }, &[], &[]).unwrap();
    while c.device().unwrap().sched.queued() > 0 {
        std::thread::yield_now();
    }
    let fences: Vec<FenceHandle> = work.iter().map(|(q, op)| c.submit(*q, op, &[], &[]).unwrap().0).collect();
    c.queue_destroy(q).unwrap();
    assert_eq!(wait(c, blocker), FenceStatus::Error(Errno::ECANCELED));
    for f in fences {
        assert_eq!(wait(c, f), FenceStatus::Signaled);
    }
    std::mem::take(&mut *drv.ran.lock().unwrap())
}

#[test]
fn higher_priority_classes_run_first() {
    let (drv, _sub, mut c) = setup();
    let low = c.queue_create(0, Priority::Low, 0).unwrap();
    let normal = c.queue_create(0, Priority::Normal, 0).unwrap();
    let high = c.queue_create(0, Priority::High, 0).unwrap();
    let order = run_behind_gate(&mut c, &drv, &[(low, 1), (normal, 2), (high, 3), (normal, 4), (high, 5)]);
    assert_eq!(order, vec![3, 5, 2, 4, 1]);
}

#[test]
fn weighted_queues_interleave_but_oneshot_devices_keep_submission_order() {
    // Fair share: the lighter queue submitted everything first, yet the heavier one is
    // served in between. Jobs take 2 ms each, so virtual runtime is not timing noise.
    let (drv, _sub, mut c) = setup();
    let (light, heavy) =
        (c.queue_create(0, Priority::Normal, 100).unwrap(), c.queue_create(0, Priority::Normal, 400).unwrap());
    let timed = |t: u64| Op::Driver { code: 4, args: [t, 2000, 0, 0] };
    let work: Vec<(QueueHandle, Op)> =
        (0..4).map(|t| (light, timed(t))).chain((10..14).map(|t| (heavy, timed(t)))).collect();
    let order = run_ops_behind_gate(&mut c, &drv, &work);
    assert_ne!(order, vec![0, 1, 2, 3, 10, 11, 12, 13], "no interleaving under fair share");
    assert!(order.iter().position(|t| *t == 13).unwrap() < order.iter().position(|t| *t == 3).unwrap());

    // Oneshot: FIFO by submission within the class, whatever the weights.
    let drv = Arc::new(FakeDriver::default());
    let mut cfg = device(&drv);
    cfg.category = Some(Category::Oneshot);
    let sub = Subsystem::new(vec![cfg]).unwrap();
    let mut c = sub.connect(PeerCred::default(), "t");
    c.open_poll(0, false).unwrap();
    let (light, heavy) =
        (c.queue_create(0, Priority::Normal, 100).unwrap(), c.queue_create(0, Priority::Normal, 400).unwrap());
    let work: Vec<(QueueHandle, u64)> = (0..4).map(|t| (light, t)).chain((10..14).map(|t| (heavy, t))).collect();
    assert_eq!(run_behind_gate(&mut c, &drv, &work), vec![0, 1, 2, 3, 10, 11, 12, 13]);
}

#[test]
fn lower_class_is_served_within_the_starvation_bound() {
    let (drv, _sub, mut c) = setup();
    let low = c.queue_create(0, Priority::Low, 0).unwrap();
    let high = c.queue_create(0, Priority::High, 0).unwrap();
    let mut work: Vec<(QueueHandle, u64)> = vec![(low, 0)];
    work.extend((1..=40).map(|t| (high, t)));
    let order = run_behind_gate(&mut c, &drv, &work);
    let pos = order.iter().position(|t| *t == 0).unwrap();
    assert_eq!(pos, crate::sched::STARVATION_LIMIT as usize, "low job ran at {pos}: {order:?}");
}

#[test]
fn stale_handle_is_rejected() {
    let (_drv, _sub, mut c) = setup();
    let (h, _) = c.bo_create(100, 0).unwrap();
    c.bo_close(h).unwrap();
    let (h2, size) = c.bo_create(100, 0).unwrap();
    assert_eq!(size, rustix::param::page_size() as u64);
    assert_ne!(h, h2);
    assert_eq!(c.bo_info(h).unwrap_err().code, Errno::ENOENT);
    assert_eq!(c.bo_close(h).unwrap_err().code, Errno::ENOENT);
}

#[test]
fn rejected_submit_changes_nothing() {
    let (_drv, sub, mut c) = setup();
    let q = c.queue_create(0, Priority::Normal, 0).unwrap();
    let tl = c.syncobj_create(false).unwrap();
    let before = sub.stats();
    // A bogus handle after a good one: the good one must not be attached.
    let signal = [SignalPoint { handle: tl, point: 1 }, SignalPoint { handle: SyncobjHandle(99), point: 1 }];
    assert_eq!(c.submit(q, &Op::Nop, &[], &signal).unwrap_err().code, Errno::ENOENT);
    let dup = [SignalPoint { handle: tl, point: 1 }, SignalPoint { handle: tl, point: 2 }];
    assert_eq!(c.submit(q, &Op::Nop, &[], &dup).unwrap_err().code, Errno::EINVAL);
    assert_eq!(sub.stats(), before);
    assert_eq!(c.syncobj_query(tl).unwrap(), 0);
    c.submit(q, &Op::Nop, &[], &[SignalPoint { handle: tl, point: 1 }]).unwrap();
}

#[test]
fn hung_job_times_out_and_later_jobs_run() {
    let (drv, _sub, mut c) = setup();
    let q = c.queue_create(0, Priority::Normal, 0).unwrap();
    let (hang, _) = c.submit(q, &Op::Driver { code: 3, args: [0; 4] }, &[], &[]).unwrap();
    let (after, _) = c.submit(q, &tag(7), &[], &[]).unwrap();
    assert_eq!(wait(&c, hang), FenceStatus::Error(Errno::ETIME));
    assert_eq!(wait(&c, after), FenceStatus::Signaled);
    assert_eq!(*drv.ran.lock().unwrap(), vec![7]);
}

#[test]
fn dependency_error_fails_job_without_running_it() {
    let (drv, _sub, mut c) = setup();
    let q = c.queue_create(0, Priority::Normal, 0).unwrap();
    let (bad, _) = c.submit(q, &Op::Driver { code: 2, args: [0; 4] }, &[], &[]).unwrap();
    let (dep, _) = c.submit(q, &tag(1), &[WaitPoint::Fence(bad)], &[]).unwrap();
    assert_eq!(wait(&c, dep), FenceStatus::Error(Errno::EIO));
    assert!(drv.ran.lock().unwrap().is_empty());
}

#[test]
fn dropping_client_cancels_its_work_and_frees_everything() {
    let (_drv, sub, mut c) = setup();
    let q = c.queue_create(0, Priority::Normal, 0).unwrap();
    let (bo, _) = c.bo_create(4096, 0).unwrap();
    c.submit(q, &Op::Driver { code: 3, args: [0; 4] }, &[], &[]).unwrap();
    let fill = Op::Fill { dst: BufView { bo, offset: 0, len: 4096 }, pattern: 1 };
    c.submit(q, &fill, &[], &[]).unwrap();
    c.syncobj_create(true).unwrap();
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sub.stats() != ObjectCounts::default() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sub.stats(), ObjectCounts::default());
}

#[test]
fn exclusive_device_admits_one_client() {
    let drv = Arc::new(FakeDriver::default());
    let mut cfg = device(&drv);
    cfg.category = Some(Category::Exclusive);
    let sub = Subsystem::new(vec![cfg]).unwrap();
    let mut a = sub.connect(PeerCred::default(), "a");
    let mut b = sub.connect(PeerCred::default(), "b");
    a.open_poll(0, false).unwrap();
    assert_eq!(b.open_poll(0, false).unwrap_err().code, Errno::EBUSY);
    drop(a);
    b.open_poll(0, false).unwrap();
    assert_eq!(sub.device(0).unwrap().describe().exclusive_owner, Some(b.id()));
}

#[test]
fn lease_watchers_fire_when_the_lease_may_be_free_and_never_before() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let drv = Arc::new(FakeDriver::default());
    let mut cfg = device(&drv);
    cfg.category = Some(Category::Exclusive);
    let sub = Subsystem::new(vec![cfg]).unwrap();
    let (mut a, mut b, mut c) = (
        sub.connect(PeerCred::default(), "a"),
        sub.connect(PeerCred::default(), "b"),
        sub.connect(PeerCred::default(), "c"),
    );
    let fired = Arc::new(AtomicU32::new(0));
    let watcher = |f: &Arc<AtomicU32>| {
        let f = f.clone();
        Box::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        }) as crate::device::LeaseWatcher
    };
    // Free: the watcher runs at once.
    a.on_lease_change(0, watcher(&fired));
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    assert!(a.open_poll(0, true).unwrap());
    // b then c queue; their watchers wait for a to leave.
    assert!(!b.open_poll(0, true).unwrap());
    assert!(!c.open_poll(0, true).unwrap());
    b.on_lease_change(0, watcher(&fired));
    c.on_lease_change(0, watcher(&fired));
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    drop(a);
    assert_eq!(fired.load(Ordering::SeqCst), 3, "the holder's close wakes every watcher once");
    // c is not first: it must not get the lease, and waits again until b gives up.
    assert!(!c.open_poll(0, true).unwrap());
    c.on_lease_change(0, watcher(&fired));
    assert_eq!(fired.load(Ordering::SeqCst), 3);
    b.open_cancel(0);
    assert_eq!(fired.load(Ordering::SeqCst), 4, "a waiter ahead giving up wakes the next");
    assert!(c.open_poll(0, true).unwrap());
    // An unknown minor calls back at once, so the retry reports the error.
    b.on_lease_change(9, watcher(&fired));
    assert_eq!(fired.load(Ordering::SeqCst), 5);
    assert_eq!(b.open_poll(9, true).unwrap_err().code, Errno::ENODEV);
}

#[test]
fn unsupported_category_is_refused() {
    struct SharedOnly(FakeDriver);
    impl crate::driver::Driver for SharedOnly {
        fn info(&self) -> crate::driver::DriverInfo {
            crate::driver::DriverInfo { categories: vec![Category::Shared], ..self.0.info() }
        }
        fn run_job(
            &self,
            e: usize,
            op: &crate::driver::JobOp,
            ctx: &crate::driver::JobCtx,
        ) -> Result<(), crate::driver::DriverError> {
            self.0.run_job(e, op, ctx)
        }
    }
    let mut cfg = crate::device::DeviceConfig::new(Arc::new(SharedOnly(FakeDriver::default())));
    cfg.category = Some(Category::Exclusive);
    assert_eq!(Subsystem::new(vec![cfg]).err().unwrap().code, Errno::EINVAL);
}

/// One step of a tenant's request sequence in the quota property test.
#[derive(Debug, Clone)]
enum Step {
    Create { client: usize, pages: u64 },
    ImportForeign { client: usize, pages: u64 },
    CreateDevice { client: usize, pages: u64 },
    ImportExternal { client: usize, pages: u64, short: bool },
    ShareWithOther { from: usize, index: usize },
    Close { client: usize, index: usize },
    Ring { client: usize, entries_log2: u32 },
    DestroyQueue { client: usize },
    Reconnect { client: usize },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (0..2usize, 1..64u64).prop_map(|(client, pages)| Step::Create { client, pages }),
        (0..2usize, 1..64u64).prop_map(|(client, pages)| Step::ImportForeign { client, pages }),
        (0..2usize, 1..64u64).prop_map(|(client, pages)| Step::CreateDevice { client, pages }),
        (0..2usize, 1..64u64, proptest::bool::weighted(0.2)).prop_map(|(client, pages, short)| Step::ImportExternal {
            client,
            pages,
            short
        }),
        (0..2usize, 0..8usize).prop_map(|(from, index)| Step::ShareWithOther { from, index }),
        (0..2usize, 0..8usize).prop_map(|(client, index)| Step::Close { client, index }),
        (0..2usize, 0..13u32).prop_map(|(client, entries_log2)| Step::Ring { client, entries_log2 }),
        (0..2usize).prop_map(|client| Step::DestroyQueue { client }),
        (0..2usize).prop_map(|client| Step::Reconnect { client }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// No sequence of creates, foreign imports, device buffers, external imports, shares
    /// between clients, closes, rings and reconnects takes a namespace past its quota in any
    /// region, and all of it is returned.
    #[test]
    fn no_request_sequence_exceeds_a_quota(steps in proptest::collection::vec(step(), 1..40)) {
        use crate::namespace::{Placement, Revoke, Share};
        let page = rustix::param::page_size() as u64;
        let quota = 96 * page;
        let sub = Subsystem::new(vec![device(&Arc::new(FakeDriver::default()))]).unwrap();
        sub.namespaces().create("t", None).unwrap();
        sub.assign_share("t", 0, Share { memory_limit: quota, ..Default::default() }, Revoke::Refuse).unwrap();
        let ns = sub.namespaces().get("t").unwrap();
        let connect = || {
            let placement = Placement { ns: ns.clone(), admin: false };
            let mut c = sub.connect_in(placement, PeerCred::default(), "p");
            c.open_poll(0, false).unwrap();
            c
        };
        let mut clients = [connect(), connect()];
        let mut handles: [Vec<BoHandle>; 2] = [Vec::new(), Vec::new()];
        let mut queues: [Vec<QueueHandle>; 2] = [Vec::new(), Vec::new()];
        let used = || ns.devices()[0].memory_used();
        let region_used = || ns.devices()[0].region_used();
        for s in steps {
            match s {
                Step::Create { client, pages } => {
                    if let Ok((h, _)) = clients[client].bo_create(pages * page, 0) {
                        handles[client].push(h);
                    }
                }
                Step::ImportForeign { client, pages } => {
                    let fd = accel_uapi::shm::sealed_memfd("foreign", pages * page).unwrap();
                    match clients[client].bo_import(fd) {
                        Ok((h, ..)) => handles[client].push(h),
                        Err(e) => proptest::prop_assert!(matches!(e.code, Errno::ENOSPC | Errno::ENOMEM)),
                    }
                }
                Step::CreateDevice { client, pages } => {
                    if let Ok((h, _)) = clients[client].bo_create(pages * page, 1) {
                        handles[client].push(h);
                    }
                }
                Step::ImportExternal { client, pages, short } => {
                    let have = if short { pages - 1 } else { pages };
                    let fd = accel_uapi::shm::sealed_memfd("runtime", have.max(1) * page).unwrap();
                    let before = region_used();
                    match clients[client].bo_import_external(fd, 1, pages * page) {
                        Ok(h) => handles[client].push(h),
                        Err(e) => {
                            proptest::prop_assert!(matches!(e.code, Errno::ENOSPC | Errno::EINVAL), "{e:?}");
                            proptest::prop_assert_eq!(region_used(), before, "a refused import keeps no charge");
                        }
                    }
                }
                Step::ShareWithOther { from, index } => {
                    if let Some(h) = handles[from].get(index).copied() {
                        let fd = clients[from].bo_export(h).unwrap();
                        let before = region_used();
                        let (h2, ..) = clients[1 - from].bo_import(fd).unwrap();
                        proptest::prop_assert_eq!(region_used(), before, "sharing an object charges nothing more");
                        handles[1 - from].push(h2);
                    }
                }
                Step::Close { client, index } => {
                    if index < handles[client].len() {
                        let h = handles[client].remove(index);
                        clients[client].bo_close(h).unwrap();
                    }
                }
                Step::Ring { client, entries_log2 } => {
                    let q = clients[client].queue_create(0, Priority::Normal, 0).unwrap();
                    queues[client].push(q);
                    let _ = clients[client].ring_create(q, 1 << entries_log2);
                }
                Step::DestroyQueue { client } => {
                    if let Some(q) = queues[client].pop() {
                        clients[client].queue_destroy(q).unwrap();
                    }
                }
                Step::Reconnect { client } => {
                    clients[client] = connect();
                    handles[client].clear();
                    queues[client].clear();
                }
            }
            for (region, bytes) in region_used().into_iter().enumerate() {
                proptest::prop_assert!(bytes <= quota, "{bytes} bytes used in region {region} of a {quota} byte quota");
            }
        }
        drop(clients);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while used() != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        proptest::prop_assert_eq!(used(), 0, "every charge was returned");
        proptest::prop_assert_eq!(region_used(), vec![0, 0], "in every region");
        proptest::prop_assert_eq!(sub.fds_held(), 0, "every descriptor charge was returned");
    }
}

#[test]
fn handle_caps_hold_per_client_and_per_namespace() {
    use crate::limits::Limits;
    use crate::namespace::{Placement, PlacementConfig, Revoke, Share};
    let limits = Limits { objects_per_client: 4, objects_per_namespace: 6, ..Limits::default() };
    let sub = Subsystem::with_config(
        vec![device(&Arc::new(FakeDriver::default()))],
        None,
        PlacementConfig::default(),
        limits,
    )
    .unwrap();
    sub.namespaces().create("t", None).unwrap();
    sub.assign_share("t", 0, Share::default(), Revoke::Refuse).unwrap();
    let ns = sub.namespaces().get("t").unwrap();
    let connect = || {
        let mut c = sub.connect_in(Placement { ns: ns.clone(), admin: false }, PeerCred::default(), "c");
        c.open_poll(0, false).unwrap();
        c
    };
    let (mut a, mut b) = (connect(), connect());
    let mine: Vec<SyncobjHandle> = (0..4).map(|_| a.syncobj_create(false).unwrap()).collect();
    let err = a.syncobj_create(false).unwrap_err();
    assert!(err.code == Errno::ENOSPC && err.message.contains("client"), "{err:?}");
    b.queue_create(0, Priority::Normal, 0).unwrap();
    b.bo_create(4096, 0).unwrap();
    let err = b.syncobj_create(false).unwrap_err();
    assert!(err.code == Errno::ENOSPC && err.message.contains("namespace"), "{err:?}");
    a.syncobj_destroy(mine[0]).unwrap();
    b.syncobj_create(false).unwrap();
    assert_eq!(ns.objects.load(Ordering::Relaxed), 6);
    drop((a, b));
    assert_eq!(ns.objects.load(Ordering::Relaxed), 0);
}
