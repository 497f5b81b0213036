//! Scheduler unit tests: what a dispatch costs with many queues, and that every job whose
//! dependencies signal runs (or fails with their error), once, in its queue's order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use accel_uapi::{Errno, FenceStatus, Priority};
use proptest::prelude::*;

use super::*;
use crate::counters::Counters;
use crate::fence::wait_fences;
use crate::testing::FakeDriver;

fn tag(t: u64) -> JobOp {
    JobOp::Driver { code: 1, args: [t, 0, 0, 0] }
}

fn params(priority: Priority, weight: u32) -> EntityParams {
    EntityParams { priority, weight, timeout: Duration::from_secs(30) }
}

fn status(fence: &Arc<Fence>) -> FenceStatus {
    match wait_fences(std::slice::from_ref(fence), true, Duration::from_secs(10)) {
        Ok((_, s)) => s[0],
        Err(e) => panic!("a job's fence never signalled ({e}): a queue was not looked at again"),
    }
}

#[test]
fn a_dispatch_looks_only_at_queues_that_may_run() {
    dispatch_looks_only_at_queues_that_may_run(FakeDriver::default());
}

#[test]
fn an_asynchronous_engine_dispatch_looks_only_at_queues_that_may_run() {
    dispatch_looks_only_at_queues_that_may_run(FakeDriver::async_engine(1));
}

fn dispatch_looks_only_at_queues_that_may_run(drv: FakeDriver) {
    let drv = Arc::new(drv);
    let sched = Scheduler::new(drv.clone(), "t", SchedConfig::default()).unwrap();
    let counters = Arc::new(Counters::default());
    let gate = Fence::new(&counters);
    // 1,000 idle queues, and 10,000 whose job waits on a fence nobody has signalled.
    for _ in 0..1000 {
        sched.create_entity(1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
    }
    let blocked: Vec<Arc<Fence>> = (0..10_000)
        .map(|t| {
            let e = sched.create_entity(1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
            let fence = Fence::new(&counters);
            sched.push(e, Job::new(&counters, tag(t), vec![gate.clone()], fence.clone())).unwrap();
            fence
        })
        .collect();
    assert_eq!(sched.queued(), 10_000);
    let busy = sched.create_entity(2, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
    let before = sched.looks();
    for t in 0..200 {
        let fence = Fence::new(&counters);
        sched.push(busy, Job::new(&counters, tag(100_000 + t), vec![], fence.clone())).unwrap();
        assert_eq!(status(&fence), FenceStatus::Signaled);
    }
    // One look when a job is submitted, one when it completes: not one per queue.
    let looks = sched.looks() - before;
    assert!(looks <= 2 * 200, "200 jobs beside 11,000 waiting or idle queues looked at {looks} queues");
    gate.signal(Ok(()));
    for f in &blocked {
        assert_eq!(status(f), FenceStatus::Signaled);
    }
    assert_eq!(sched.queued(), 0);
    let mut ran = drv.ran.lock().unwrap().clone();
    ran.sort_unstable();
    let want: Vec<u64> = (0..10_000).chain(100_000..100_200).collect();
    assert_eq!(ran, want, "every job ran once");
}

/// Runs `group_a` (queues, weight) against `group_b` with every queue backlogged with 1 ms
/// jobs on one engine slot, and returns how many of the first 60 jobs were group a's.
fn first_60_of_a(group_a: (usize, u32), group_b: (usize, u32)) -> usize {
    let drv = Arc::new(FakeDriver::default());
    let sched = Scheduler::new(drv.clone(), "t", SchedConfig::default()).unwrap();
    let counters = Arc::new(Counters::default());
    let mut fences = Vec::new();
    for (gid, (queues, weight), base) in [(1, group_a, 0u64), (2, group_b, 1_000_000)] {
        let group = Group { id: gid, weight };
        for q in 0..queues as u64 {
            let e = sched.create_entity_in(group, 1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
            for j in 0..60 {
                let fence = Fence::new(&counters);
                let op = JobOp::Driver { code: 4, args: [base + q * 1000 + j, 1000, 0, 0] };
                sched.push(e, Job::new(&counters, op, vec![], fence.clone())).unwrap();
                fences.push(fence);
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while drv.ran.lock().unwrap().len() < 60 {
        assert!(std::time::Instant::now() < deadline, "60 jobs did not run");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ran = drv.ran.lock().unwrap().clone();
    ran[..60].iter().filter(|&&t| t < 1_000_000).count()
}

#[test]
fn groups_share_by_weight_however_many_queues_they_open() {
    // One queue against eight, equal weights: half each (flat per-queue fair share gave the
    // one queue a ninth).
    let a = first_60_of_a((1, 100), (8, 100));
    assert!((24..=36).contains(&a), "one queue got {a} of 60 jobs against a group of eight");
    // Weights 100 and 300, four queues each: a quarter and three quarters.
    let a = first_60_of_a((4, 100), (4, 300));
    assert!((9..=21).contains(&a), "weight 100 got {a} of 60 jobs against weight 300");
}

/// The fake driver with two engines, the first taking two jobs at once: tagged jobs go to
/// engine `tag % 2`, faulting ones to engine 0.
#[derive(Default)]
struct TwoEngines(FakeDriver);

impl Driver for TwoEngines {
    fn info(&self) -> crate::driver::DriverInfo {
        let engines = vec![
            accel_uapi::EngineInfo { name: "compute".into(), credits: 2 },
            accel_uapi::EngineInfo { name: "copy".into(), credits: 1 },
        ];
        crate::driver::DriverInfo { engines, ..self.0.info() }
    }

    fn engine_for(&self, op: &JobOp) -> usize {
        match op {
            JobOp::Driver { code: 1, args } => (args[0] % 2) as usize,
            _ => 0,
        }
    }

    fn run_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx) -> Result<(), crate::driver::DriverError> {
        self.0.run_job(engine, op, ctx)
    }

    /// The compute engine as the fake's is; the copy engine runs on slot threads.
    fn asynchronous(&self, engine: usize) -> bool {
        engine == 0 && self.0.asynchronous
    }

    fn submit_job(&self, engine: usize, op: &JobOp, ctx: &JobCtx, done: crate::driver::JobDone) {
        self.0.submit_job(engine, op, ctx, done)
    }
}

/// One job of a generated workload.
#[derive(Debug, Clone)]
struct Spec {
    queue: usize,
    /// Earlier jobs it waits for.
    after: Vec<usize>,
    /// Gates it waits for.
    gates: Vec<usize>,
    /// Fails on the device (`EIO`) instead of running.
    faulty: bool,
}

/// Steps: submit the next job, or signal a gate (with an error when `Some`).
#[derive(Debug, Clone)]
enum Step {
    Submit,
    Signal(usize, Option<Errno>),
}

/// Queues (class, weight, group), jobs, steps, and whether the device is FIFO.
type Workload = (Vec<(Priority, u32, u64)>, Vec<Spec>, Vec<Step>, bool);

fn workload() -> impl Strategy<Value = Workload> {
    let queues = prop::collection::vec(
        (prop::sample::select(vec![Priority::Low, Priority::Normal, Priority::High]), 1u32..=400, 0u64..3),
        1..6,
    );
    (queues, 1usize..40, 0usize..4, any::<bool>()).prop_flat_map(|(queues, jobs, gates, fifo)| {
        let nq = queues.len();
        let specs = (0..jobs)
            .map(|i| {
                (
                    0..nq,
                    prop::collection::vec(0..i.max(1), 0..3),
                    prop::collection::vec(0..gates.max(1), 0..(if gates == 0 { 1 } else { 3 })),
                    prop::bool::weighted(0.1),
                )
                    .prop_map(move |(queue, after, g, faulty)| Spec {
                        queue,
                        after: if i == 0 { vec![] } else { after },
                        gates: if gates == 0 { vec![] } else { g },
                        faulty,
                    })
            })
            .collect::<Vec<_>>();
        let signals = prop::collection::vec(
            prop::option::weighted(0.3, prop::sample::select(vec![Errno::EINVAL, Errno::ENOENT])),
            gates,
        );
        // Where each gate's signal falls among the submissions.
        let at = prop::collection::vec(0..=jobs, gates);
        (Just(queues), specs, signals, at, Just(fifo)).prop_map(move |(queues, specs, signals, at, fifo)| {
            let mut steps = Vec::new();
            for j in 0..=jobs {
                for (g, err) in signals.iter().enumerate() {
                    if at[g] == j {
                        steps.push(Step::Signal(g, *err));
                    }
                }
                if j < jobs {
                    steps.push(Step::Submit);
                }
            }
            (queues, specs, steps, fifo)
        })
    })
}

/// What a job's fence ends as: the error of its first failed dependency (in the order given:
/// earlier jobs, then gates), else `EIO` if it is faulty, else success.
fn expected(specs: &[Spec], gates: &[Option<Errno>], i: usize, memo: &mut BTreeMap<usize, FenceStatus>) -> FenceStatus {
    if let Some(s) = memo.get(&i) {
        return *s;
    }
    let deps = specs[i]
        .after
        .iter()
        .map(|&j| expected(specs, gates, j, memo))
        .chain(specs[i].gates.iter().map(|&g| gates[g].map_or(FenceStatus::Signaled, FenceStatus::Error)))
        .collect::<Vec<_>>();
    let s = match deps.iter().find(|s| matches!(s, FenceStatus::Error(_))) {
        Some(e) => *e,
        None if specs[i].faulty => FenceStatus::Error(Errno::EIO),
        None => FenceStatus::Signaled,
    };
    memo.insert(i, s);
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Jobs with dependencies on each other and on gates signalled at any point, on one
    /// engine or two (one taking two jobs at once), run by slot threads or completed by the
    /// device itself (the two-engine device's compute engine then, its copy engine on slot
    /// threads): every job ends (no queue is forgotten), as its dependencies say, and the
    /// jobs that ran did so once each and in their queue's order.
    #[test]
    fn every_job_ends_as_its_dependencies_say_in_queue_order(
        (queues, specs, steps, fifo) in workload(),
        two_engines in any::<bool>(),
        asynchronous in any::<bool>(),
    ) {
        let fake = || FakeDriver { asynchronous, ..FakeDriver::default() };
        let (one, two) = (Arc::new(fake()), Arc::new(TwoEngines(fake())));
        let (driver, fake): (Arc<dyn Driver>, &FakeDriver) =
            if two_engines { (two.clone(), &two.0) } else { (one.clone(), &one) };
        let sched = Scheduler::new(driver.clone(), "t", SchedConfig { fifo, ..SchedConfig::default() }).unwrap();
        let counters = Arc::new(Counters::default());
        let entities: Vec<EntityId> = queues
            .iter()
            .map(|&(p, w, g)| {
                sched.create_entity_in(Group { id: g, weight: 50 * (g as u32 + 1) }, 1, params(p, w), Arc::default())
            })
            .collect();
        let gate_fences: Vec<Arc<Fence>> = (0..4).map(|_| Fence::new(&counters)).collect();
        let mut gate_results = vec![None; 4];
        let mut fences: Vec<Arc<Fence>> = Vec::new();
        for step in &steps {
            match step {
                Step::Submit => {
                    let i = fences.len();
                    let spec = &specs[i];
                    let deps = spec
                        .after
                        .iter()
                        .map(|&j| fences[j].clone())
                        .chain(spec.gates.iter().map(|&g| gate_fences[g].clone()))
                        .collect();
                    let op = if spec.faulty { JobOp::Driver { code: 2, args: [0; 4] } } else { tag(i as u64) };
                    let fence = Fence::new(&counters);
                    sched.push(entities[spec.queue], Job::new(&counters, op, deps, fence.clone())).unwrap();
                    fences.push(fence);
                }
                Step::Signal(g, err) => {
                    gate_results[*g] = *err;
                    gate_fences[*g].signal(err.map_or(Ok(()), Err));
                }
            }
        }
        // Gates the steps never signalled (none: every gate has a place), just in case.
        for (g, f) in gate_fences.iter().enumerate() {
            if f.status() == FenceStatus::Pending {
                prop_assert!(specs.iter().all(|s| !s.gates.contains(&g)));
                f.signal(Ok(()));
            }
        }
        let mut memo = BTreeMap::new();
        for (i, f) in fences.iter().enumerate() {
            prop_assert_eq!(status(f), expected(&specs, &gate_results, i, &mut memo), "job {}", i);
        }
        prop_assert_eq!(sched.queued(), 0, "every job left its queue");
        let ran = fake.ran.lock().unwrap().clone();
        let should_run: Vec<u64> =
            (0..specs.len()).filter(|&i| memo[&i] == FenceStatus::Signaled).map(|i| i as u64).collect();
        let mut sorted = ran.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, should_run, "each job that may run ran once");
        for q in 0..queues.len() {
            let order: Vec<u64> = ran.iter().copied().filter(|&t| specs[t as usize].queue == q).collect();
            prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "queue {} ran out of order: {:?}", q, order);
        }
    }
}

#[test]
fn a_signalled_dependency_dispatches_its_job_before_the_signal_returns() {
    let drv = Arc::new(FakeDriver::default());
    let sched = Scheduler::new(drv.clone(), "t", SchedConfig::default()).unwrap();
    let counters = Arc::new(Counters::default());
    for t in 0..100 {
        let e = sched.create_entity(1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
        let gate = Fence::new(&counters);
        let fence = Fence::new(&counters);
        sched.push(e, Job::new(&counters, tag(t), vec![gate.clone()], fence.clone())).unwrap();
        assert_eq!(sched.queued(), 1);
        // A host signal (a client's request on a daemon thread): the waiting job is handed
        // to its engine by the signalling thread, not left for the scheduler thread.
        gate.signal(Ok(()));
        assert_eq!(sched.queued(), 0, "job {t} was still waiting when its dependency's signal returned");
        assert_eq!(status(&fence), FenceStatus::Signaled);
        // The slot retires the job after signalling it; then the engine has its credit back.
        while !sched.entity_idle(e) {
            std::thread::yield_now();
        }
    }
}

#[test]
fn a_failed_dependency_fails_a_chain_of_100_000_jobs_without_recursing() {
    let drv = Arc::new(FakeDriver::default());
    let sched = Scheduler::new(drv.clone(), "t", SchedConfig::default()).unwrap();
    let counters = Arc::new(Counters::default());
    let queues = [
        sched.create_entity(1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default()),
        sched.create_entity(1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default()),
    ];
    // Each job waits for the one before, on the other queue: the first one's failure fails
    // the next, whose failure fails the next, and so on.
    let gate = Fence::new(&counters);
    let mut prev = gate.clone();
    let mut fences = Vec::new();
    for t in 0..100_000u64 {
        let fence = Fence::new(&counters);
        sched.push(queues[t as usize % 2], Job::new(&counters, tag(t), vec![prev], fence.clone())).unwrap();
        prev = fence.clone();
        fences.push(fence);
    }
    // Signalled on a thread with a small stack: a dispatch that recursed into the next
    // failure would overflow it.
    std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(move || gate.signal(Err(Errno::EIO)))
        .unwrap()
        .join()
        .unwrap();
    for f in &fences {
        assert_eq!(status(f), FenceStatus::Error(Errno::EIO));
    }
    assert_eq!(sched.queued(), 0);
    assert!(drv.ran.lock().unwrap().is_empty(), "no job of the chain ran");
}

#[test]
fn jobs_cancelled_before_their_dependency_signals_leave_nothing_on_it() {
    let drv = Arc::new(FakeDriver::default());
    let sched = Scheduler::new(drv.clone(), "t", SchedConfig::default()).unwrap();
    let counters = Arc::new(Counters::default());
    // A fence that never signals, and a tenant submitting a job waiting on it and destroying
    // the queue, again and again.
    let never = Fence::new(&counters);
    for t in 0..10_000 {
        let e = sched.create_entity(1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
        let fence = Fence::new(&counters);
        sched.push(e, Job::new(&counters, tag(t), vec![never.clone()], fence.clone())).unwrap();
        sched.destroy_entity(e);
        assert_eq!(status(&fence), FenceStatus::Error(Errno::ECANCELED));
    }
    assert!(never.callbacks_pending() <= 2 * 64, "{} callbacks left on the fence", never.callbacks_pending());
}

/// A queue of `n` quick jobs behind a gate, on a device that completes them inside
/// `submit_job`: each completion dispatches the next.
#[test]
fn quick_completions_of_an_asynchronous_engine_run_60_000_jobs_in_order_without_recursing() {
    let drv = Arc::new(FakeDriver::async_engine(1));
    let sched = Scheduler::new(drv.clone(), "t", SchedConfig::default()).unwrap();
    let counters = Arc::new(Counters::default());
    let queue = sched.create_entity(1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
    let gate = Fence::new(&counters);
    let fences: Vec<Arc<Fence>> = (0..60_000u64)
        .map(|t| {
            let fence = Fence::new(&counters);
            let deps = if t == 0 { vec![gate.clone()] } else { vec![] };
            sched.push(queue, Job::new(&counters, tag(t), deps, fence.clone())).unwrap();
            fence
        })
        .collect();
    assert!(drv.ran.lock().unwrap().is_empty());
    // Signalled on a thread with a small stack: finishing each job inside the dispatch of
    // the next would overflow it.
    std::thread::Builder::new().stack_size(128 << 10).spawn(move || gate.signal(Ok(()))).unwrap().join().unwrap();
    for f in &fences {
        assert_eq!(status(f), FenceStatus::Signaled);
    }
    assert_eq!(*drv.ran.lock().unwrap(), (0..60_000).collect::<Vec<u64>>(), "every job once, in order");
}

/// drm_sched's timeout on an engine that completes its jobs itself: the hung job fails with
/// `ETIME` and bans nothing yet; the innocent job beside it, aborted by the reset, is
/// submitted again and completes; the engine serves the next job.
#[test]
fn an_asynchronous_engine_times_out_the_guilty_and_resubmits_the_innocent() {
    let drv = Arc::new(FakeDriver::async_engine(2));
    let sched = Scheduler::new(drv.clone(), "t", SchedConfig::default()).unwrap();
    let counters = Arc::new(Counters::default());
    let short = EntityParams { timeout: Duration::from_millis(100), ..params(Priority::Normal, DEFAULT_WEIGHT) };
    let guilty = sched.create_entity(1, short, Arc::default());
    let innocent = sched.create_entity(2, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
    let hang = Fence::new(&counters);
    sched.push(guilty, Job::new(&counters, JobOp::Driver { code: 3, args: [0; 4] }, vec![], hang.clone())).unwrap();
    // 400 ms, failing if aborted meanwhile: the reset (at 100 ms) catches it.
    let work = Fence::new(&counters);
    let op = JobOp::Driver { code: 5, args: [7, 400_000, 0, 0] };
    sched.push(innocent, Job::new(&counters, op, vec![], work.clone())).unwrap();
    assert_eq!(status(&hang), FenceStatus::Error(Errno::ETIME));
    assert_eq!(status(&work), FenceStatus::Signaled, "the innocent job ran again");
    assert_eq!(*drv.ran.lock().unwrap(), vec![7], "its second run completed, its first did not");
    assert_eq!(sched.resets(), 1);
    assert!(!sched.is_banned(guilty), "one hang is under the limit");
    let next = Fence::new(&counters);
    sched.push(guilty, Job::new(&counters, tag(8), vec![], next.clone())).unwrap();
    assert_eq!(status(&next), FenceStatus::Signaled);
}

/// Dropping a scheduler aborts what an asynchronous engine still runs and waits for the
/// device to end it, as it joins slot threads.
#[test]
fn dropping_the_scheduler_ends_an_asynchronous_engines_jobs_before_it_returns() {
    let drv = Arc::new(FakeDriver::async_engine(1));
    let sched = Scheduler::new(drv.clone(), "t", SchedConfig::default()).unwrap();
    let counters = Arc::new(Counters::default());
    let queue = sched.create_entity(1, params(Priority::Normal, DEFAULT_WEIGHT), Arc::default());
    let (hang, queued) = (Fence::new(&counters), Fence::new(&counters));
    sched.push(queue, Job::new(&counters, JobOp::Driver { code: 3, args: [0; 4] }, vec![], hang.clone())).unwrap();
    sched.push(queue, Job::new(&counters, tag(1), vec![], queued.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let start = std::time::Instant::now();
    drop(sched);
    assert!(start.elapsed() < Duration::from_secs(5), "the drop waited {:?}", start.elapsed());
    assert_eq!(hang.status(), FenceStatus::Error(Errno::ECANCELED), "ended before the drop returned");
    assert_eq!(queued.status(), FenceStatus::Error(Errno::ECANCELED));
    assert!(drv.ran.lock().unwrap().is_empty());
}
