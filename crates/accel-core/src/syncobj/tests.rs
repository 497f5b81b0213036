//! Syncobj semantics, checked against a literal model of `dma_fence_chain` as
//! `drm_syncobj.c` uses it (a list of links walked from the head, no collection).

use super::*;
use proptest::prelude::*;

fn counters() -> Arc<Counters> {
    Arc::new(Counters::default())
}

#[test]
fn out_of_order_points_are_accepted_and_query_is_the_contiguous_signalled_point() {
    let c = counters();
    let t = Syncobj::new(&c, false);
    let (f1, f5, f3) = (Fence::new(&c), Fence::new(&c), Fence::new(&c));
    t.add_point(1, f1.clone());
    t.add_point(5, f5.clone());
    t.add_point(3, f3.clone()); // out of order: a new run at value 5
    assert_eq!(t.query(true), 5);
    assert_eq!(t.query(false), 0);
    f1.signal(Ok(()));
    // The out-of-order head is the whole new run, so nothing is contiguous in it yet.
    assert_eq!(t.query(false), 0);
    let at2 = t.find(2).unwrap();
    f5.signal(Ok(()));
    assert_eq!(at2.status(), FenceStatus::Pending, "point 2 is the out-of-order head, which waits for 3");
    f3.signal(Ok(()));
    assert_eq!(at2.status(), FenceStatus::Signaled);
    assert_eq!(t.query(false), 5);
    assert_eq!(t.find(6).unwrap_err().code, Errno::EINVAL);
}

#[test]
fn host_signal_of_a_lower_point_and_reset_of_a_timeline() {
    let c = counters();
    let t = Syncobj::new(&c, false);
    t.signal(4);
    t.signal(2);
    assert_eq!(t.query(false), 4);
    assert_eq!(t.find(3).unwrap().status(), FenceStatus::Signaled);
    t.reset();
    assert_eq!(t.query(false), 0);
    assert_eq!(t.find(1).unwrap_err().code, Errno::EINVAL);
    assert_eq!(t.find(0).unwrap_err().code, Errno::EINVAL);
}

#[test]
fn wait_for_submit_follows_the_point_once_submitted() {
    let c = counters();
    let t = Syncobj::new(&c, false);
    let w = t.fence_for(3, Unsubmitted::WaitSubmit).unwrap();
    let a = t.fence_for(3, Unsubmitted::WaitAvailable).unwrap();
    assert_eq!(t.fence_for(3, Unsubmitted::Refuse).unwrap_err().code, Errno::EINVAL);
    let job = Fence::new(&c);
    t.add_point(2, Fence::new(&c));
    assert_eq!((w.status(), a.status()), (FenceStatus::Pending, FenceStatus::Pending));
    t.add_point(3, job.clone());
    assert_eq!((w.status(), a.status()), (FenceStatus::Pending, FenceStatus::Signaled));
    job.signal(Err(Errno::EIO));
    assert_eq!(w.status(), FenceStatus::Pending, "point 2 below has not signalled");
    t.signal(0); // replaces the chain; the wait already holds point 3's fence
    assert_eq!(w.status(), FenceStatus::Pending);
}

#[test]
fn a_chain_holds_its_fences_so_a_transferred_proxy_still_resolves() {
    let c = counters();
    let (src, dst) = (Syncobj::new(&c, false), Syncobj::new(&c, false));
    // The proxy's only owner is dst's chain, as after a TRANSFER with WAIT_FOR_SUBMIT.
    dst.add_point(1, src.fence_for(5, Unsubmitted::WaitSubmit).unwrap());
    let at1 = dst.find(1).unwrap();
    src.signal(5);
    assert_eq!(at1.status(), FenceStatus::Signaled);
    assert_eq!(dst.query(false), 1);
}

#[test]
fn a_wait_for_submit_on_a_dropped_syncobj_ends_with_enoent() {
    let c = counters();
    let t = Syncobj::new(&c, false);
    let w = t.fence_for(0, Unsubmitted::WaitSubmit).unwrap();
    drop(t);
    assert_eq!(w.status(), FenceStatus::Error(Errno::ENOENT));
}

#[test]
fn a_million_points_stay_bounded() {
    let c = counters();
    let t = Syncobj::new(&c, false);
    for p in 1..=1_000_000u64 {
        let f = Fence::new(&c);
        t.add_point(p, f.clone());
        if p > 1 {
            t.find(p - 1).unwrap();
        }
        f.signal(Ok(()));
    }
    assert_eq!(t.query(false), 1_000_000);
    let State { head: Head::Chain(chain), .. } = &*lock(&t.state) else { panic!("a chain") };
    let chain = lock(chain);
    assert!(chain.run.len() <= 1 && chain.pending.is_empty() && chain.waiters.is_empty());
}

// ---- the model ----

#[derive(Clone, Copy, PartialEq, Debug)]
enum MStatus {
    Pending,
    Ok,
    Err,
}

#[derive(Clone, Debug)]
struct MLink {
    seqno: u64,
    prev_seqno: u64,
    ctx: u32,
    fence: usize,
}

#[derive(Clone, Debug)]
enum MHead {
    Empty,
    Plain(usize),
    Chain { below: Option<usize>, links: Vec<MLink> },
}

struct Model {
    head: MHead,
    fences: Vec<MStatus>,
    next_ctx: u32,
}

impl Model {
    fn add(&mut self, point: u64, fence: usize) {
        if point == 0 {
            self.head = MHead::Plain(fence);
            return;
        }
        self.next_ctx += 1;
        let ctx = self.next_ctx;
        match &mut self.head {
            MHead::Chain { links, .. } => {
                let top = links.last().unwrap().clone();
                if point > top.seqno {
                    links.push(MLink { seqno: point, prev_seqno: top.seqno, ctx: top.ctx, fence });
                } else {
                    links.push(MLink { seqno: top.seqno, prev_seqno: 0, ctx, fence });
                }
            }
            other => {
                let below = if let MHead::Plain(f) = other { Some(*f) } else { None };
                *other = MHead::Chain { below, links: vec![MLink { seqno: point, prev_seqno: 0, ctx, fence }] };
            }
        }
    }

    /// The own fences (by index, in position order) that `point`'s fence stands for.
    fn find(&self, point: u64) -> Option<Vec<usize>> {
        match &self.head {
            MHead::Empty => None,
            MHead::Plain(f) => (point == 0).then(|| vec![*f]),
            MHead::Chain { below, links } => {
                let top = links.len() - 1;
                if point > links[top].seqno {
                    return None;
                }
                let mut i = top;
                while point != 0 && links[i].ctx == links[top].ctx && links[i].prev_seqno >= point {
                    i -= 1;
                }
                Some(below.iter().copied().chain(links[..=i].iter().map(|l| l.fence)).collect())
            }
        }
    }

    /// Status of a fence standing for `deps`: pending until all signalled, then the first
    /// error by position.
    fn status(&self, deps: &[usize]) -> MStatus {
        let mut out = MStatus::Ok;
        for st in deps.iter().map(|f| self.fences[*f]) {
            match (st, out) {
                (MStatus::Pending, _) => return MStatus::Pending,
                (MStatus::Err, MStatus::Ok) => out = MStatus::Err,
                _ => {}
            }
        }
        out
    }

    fn query(&self, last_submitted: bool) -> u64 {
        let MHead::Chain { below, links } = &self.head else { return 0 };
        let top = links.len() - 1;
        let deps: Vec<usize> = below.iter().copied().chain(links.iter().map(|l| l.fence)).collect();
        if last_submitted || self.status(&deps) != MStatus::Pending {
            return links[top].seqno;
        }
        let mut lowest = top;
        for i in (0..top).rev() {
            if links[i].ctx != links[top].ctx {
                break;
            }
            if self.fences[links[i].fence] == MStatus::Pending {
                lowest = i;
            }
        }
        links[lowest].prev_seqno
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Attach a new pending fence at a point.
    Attach(u64),
    /// Host-signal a point.
    HostSignal(u64),
    /// Signal the n-th fence made so far, with or without error.
    Complete(prop::sample::Index, bool),
    Reset,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..9).prop_map(Step::Attach),
        1 => (0u64..9).prop_map(Step::HostSignal),
        4 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(i, e)| Step::Complete(i, e)),
        1 => Just(Step::Reset),
    ]
}

fn as_model(st: FenceStatus) -> MStatus {
    match st {
        FenceStatus::Pending => MStatus::Pending,
        FenceStatus::Signaled => MStatus::Ok,
        FenceStatus::Error(_) => MStatus::Err,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Whatever is attached, signalled and reset in whatever order, every find, wait and
    /// query answers as the kernel's chain walk does.
    #[test]
    fn syncobj_matches_the_dma_fence_chain_model(steps in proptest::collection::vec(step(), 1..40)) {
        let c = counters();
        let so = Syncobj::new(&c, false);
        let mut model = Model { head: MHead::Empty, fences: Vec::new(), next_ctx: 0 };
        let mut fences: Vec<Arc<Fence>> = Vec::new();
        // Fences handed out by earlier finds, with the own fences the model says they stand for.
        let mut held: Vec<(Arc<Fence>, Vec<usize>)> = Vec::new();
        for s in steps {
            match s {
                Step::Attach(p) => {
                    let f = Fence::new(&c);
                    model.fences.push(MStatus::Pending);
                    model.add(p, fences.len());
                    fences.push(f.clone());
                    so.add_point(p, f);
                }
                Step::HostSignal(p) => {
                    model.fences.push(MStatus::Ok);
                    model.add(p, fences.len());
                    fences.push(Fence::signaled(&c, Ok(())));
                    so.signal(p);
                }
                Step::Complete(i, err) if !fences.is_empty() => {
                    let i = i.index(fences.len());
                    if model.fences[i] == MStatus::Pending {
                        model.fences[i] = if err { MStatus::Err } else { MStatus::Ok };
                        fences[i].signal(if err { Err(Errno::EIO) } else { Ok(()) });
                    }
                }
                Step::Complete(..) => {}
                Step::Reset => {
                    model.head = MHead::Empty;
                    so.reset();
                }
            }
            prop_assert_eq!(so.query(false), model.query(false));
            prop_assert_eq!(so.query(true), model.query(true));
            for p in 0..10 {
                let got = so.find(p).ok();
                let want = model.find(p);
                prop_assert_eq!(got.is_some(), want.is_some(), "find({}) submitted", p);
                if let (Some(f), Some(deps)) = (got, want) {
                    prop_assert_eq!(as_model(f.status()), model.status(&deps), "find({})", p);
                    held.push((f, deps));
                }
            }
            // Every fence found so far keeps standing for what it stood for, through later
            // signals, points and resets.
            for (f, deps) in &held {
                prop_assert_eq!(as_model(f.status()), model.status(deps));
            }
        }
    }
}

#[test]
fn waits_given_up_on_are_swept_and_live_ones_kept() {
    let c = counters();
    let t = Syncobj::new(&c, false);
    // 10,000 waits on a point nobody submitted, their fences dropped (timed out), and every
    // hundredth one kept.
    let mut kept = Vec::new();
    for i in 0..10_000 {
        let f = t.fence_for(1, Unsubmitted::WaitSubmit).unwrap();
        if i % 100 == 0 {
            kept.push(f);
        }
    }
    let held = lock(&t.state).watchers.len;
    assert!(held <= 2 * PRUNE_MIN + 2 * kept.len(), "{held} watchers held for {} live waits", kept.len());
    t.add_point(1, Fence::signaled(&c, Ok(())));
    assert!(kept.iter().all(|f| f.status() == FenceStatus::Signaled), "every live wait resolved");
    assert_eq!(lock(&t.state).watchers.len, 0);
}

#[test]
fn waits_on_future_points_resolve_as_their_points_are_submitted_and_not_before() {
    let c = counters();
    let t = Syncobj::new(&c, false);
    // 1,000 waits on points 1..=1000, in a scrambled order; then the points are submitted
    // (already signalled) one by one.
    let mut waits: Vec<(u64, Arc<Fence>)> = (1..=1000u64)
        .map(|i| (i * 7919 % 1000 + 1, ()))
        .map(|(p, ())| (p, t.fence_for(p, Unsubmitted::WaitSubmit).unwrap()))
        .collect();
    waits.sort_by_key(|(p, _)| *p);
    for k in 1..=1000u64 {
        t.add_point(k, Fence::signaled(&c, Ok(())));
        if k % 97 == 0 || k == 1000 {
            for (p, f) in &waits {
                let want = if *p <= k { FenceStatus::Signaled } else { FenceStatus::Pending };
                assert_eq!(f.status(), want, "the wait on point {p} after point {k} was submitted");
            }
            assert_eq!(lock(&t.state).watchers.len, (1000 - k) as usize);
        }
    }
}
