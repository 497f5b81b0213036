//! Syncobjs (`drm_syncobj`) whose timelines are chains of points (`dma_fence_chain`).
//!
//! As in DRM, a syncobj holds one fence pointer, and nothing fixes it as "binary" or
//! "timeline": point 0 operations replace the pointer, any other point adds a link to a
//! chain hanging from it. This module reproduces what `drm_syncobj.c` and
//! `dma-fence-chain.c` let userspace observe:
//!
//! - **Adding point `p`** over a chain whose head is at `h`: with `p > h` the link joins the
//!   head's run (the kernel's "context") and remembers `h` as its previous point. With
//!   `p <= h` (out of order) it starts a new run whose value is `h` (`max(h, p)`), with no
//!   previous point. Over a plain fence (or none) it starts a chain whose first link
//!   depends on that fence.
//! - **A link signals** once its own fence and every link below it (older, in any run) did;
//!   the first error below it, by position, is its error.
//! - **Finding point `p`** (`dma_fence_chain_find_seqno`): point 0 is the whole chain; a point
//!   above the head is not submitted (`EINVAL`, or wait for it with `WAIT_FOR_SUBMIT`);
//!   otherwise it is the lowest link of the head's run at or above `p` — an out-of-order
//!   head therefore stands for every point up to its value.
//! - **Query** (`DRM_IOCTL_SYNCOBJ_QUERY`): the head's value if the chain signalled, else
//!   the previous point of the lowest link of the head's run still pending (0 at the run's
//!   bottom): the highest contiguous signalled point. A plain fence queries as 0.
//!
//! Memory stays bounded: the links of the head's run are values in a deque, collected from
//! the bottom as soon as everything up to them signalled; a run that an out-of-order point
//! ends keeps only its pending positions. Waiters share one fence per position, signalled
//! without recursion when the lowest pending position passes them.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, Weak};

use accel_uapi::{Errno, FenceStatus, SyncobjHandle};

use crate::bo::Charge;
use crate::counters::{Counters, Kind, Tracked};
use crate::fence::Fence;
use crate::handles::Table;
use crate::{bail, lock, Result};

/// A timeline chain: positions count links from the first one; the head is the newest.
struct Chain {
    /// Values of the live links of the head's run; `run[i]` sits at position `run_start + i`.
    /// The head is the last one and is never collected.
    run: VecDeque<u64>,
    run_start: u64,
    /// Value of the highest collected link of the head's run (0: none, or the run's bottom
    /// previous point).
    run_floor: u64,
    /// Collected links of the head's run with a value above `.0` signalled with error `.1`.
    run_error_above: Option<(u64, Errno)>,
    next_pos: u64,
    /// Own fences that have not signalled, by position; the chain holds them, as a
    /// `dma_fence_chain` holds its fences (a proxy waiting for submission has no other owner).
    pending: BTreeMap<u64, Arc<Fence>>,
    /// The lowest position whose own fence signalled with an error.
    first_error: Option<(u64, Errno)>,
    /// One fence per position someone waits on, signalled when every position up to it has.
    waiters: BTreeMap<u64, Arc<Fence>>,
    counters: Arc<Counters>,
}

impl Chain {
    /// A chain whose first link is `point` at position 1; position 0 is reserved for the
    /// fence it starts over, if any.
    fn new(counters: &Arc<Counters>, point: u64) -> Chain {
        Chain {
            run: VecDeque::from([point]),
            run_start: 1,
            run_floor: 0,
            run_error_above: None,
            next_pos: 2,
            pending: BTreeMap::new(),
            first_error: None,
            waiters: BTreeMap::new(),
            counters: counters.clone(),
        }
    }

    fn head(&self) -> (u64, u64) {
        let value = *self.run.back().expect("a chain has a head");
        (value, self.run_start + self.run.len() as u64 - 1)
    }

    fn min_pending(&self) -> u64 {
        self.pending.first_key_value().map_or(u64::MAX, |(pos, _)| *pos)
    }

    /// The status of the link at `pos` once everything up to it signalled.
    fn settled_status(&self, pos: u64) -> FenceStatus {
        match self.first_error {
            Some((at, e)) if at <= pos => FenceStatus::Error(e),
            _ => FenceStatus::Signaled,
        }
    }

    /// Collects what signalled: the bottom of the head's run, and the waiters now satisfied.
    fn collect(&mut self) -> Vec<(Arc<Fence>, FenceStatus)> {
        let min = self.min_pending();
        while self.run.len() > 1 && self.run_start < min {
            let status = self.settled_status(self.run_start);
            let value = self.run.pop_front().expect("checked");
            if let (FenceStatus::Error(e), None) = (status, self.run_error_above) {
                self.run_error_above = Some((self.run_floor, e));
            }
            self.run_floor = value;
            self.run_start += 1;
        }
        let mut done = Vec::new();
        while let Some((&pos, _)) = self.waiters.first_key_value() {
            if pos >= min {
                break;
            }
            let status = self.settled_status(pos);
            done.extend(self.waiters.remove(&pos).map(|f| (f, status)));
        }
        done
    }

    /// Appends a link for `point`; returns its position.
    fn add(&mut self, point: u64) -> u64 {
        let pos = self.next_pos;
        self.next_pos += 1;
        let (head_value, _) = self.head();
        if point > head_value {
            self.run.push_back(point);
        } else {
            // Out of order: a new run at the head's value, with no previous point.
            self.run.clear();
            self.run.push_back(head_value);
            self.run_start = pos;
            self.run_floor = 0;
            self.run_error_above = None;
        }
        pos
    }

    /// `dma_fence_chain_find_seqno` for `point` (not above the head).
    fn find(&mut self, point: u64) -> Arc<Fence> {
        let (_, head_pos) = self.head();
        let status = if point == 0 {
            Some(head_pos)
        } else if point <= self.run_floor {
            None
        } else {
            Some(self.run_start + self.run.partition_point(|v| *v < point) as u64)
        };
        match status {
            Some(pos) if pos >= self.min_pending() => {
                let counters = self.counters.clone();
                self.waiters.entry(pos).or_insert_with(|| Fence::new(&counters)).clone()
            }
            Some(pos) => settled(&self.counters, self.settled_status(pos)),
            None => {
                let status = match self.run_error_above {
                    Some((above, e)) if point > above => FenceStatus::Error(e),
                    _ => FenceStatus::Signaled,
                };
                settled(&self.counters, status)
            }
        }
    }

    fn query(&self, last_submitted: bool) -> u64 {
        let (head_value, head_pos) = self.head();
        if last_submitted || self.min_pending() > head_pos {
            return head_value;
        }
        let lowest = self.pending.range(self.run_start..).next().map_or(head_pos, |(pos, _)| *pos);
        match lowest - self.run_start {
            0 => self.run_floor,
            i => self.run[i as usize - 1],
        }
    }
}

fn settled(counters: &Arc<Counters>, status: FenceStatus) -> Arc<Fence> {
    Fence::signaled(counters, status_result(status))
}

fn status_result(status: FenceStatus) -> std::result::Result<(), Errno> {
    match status {
        FenceStatus::Error(e) => Err(e),
        _ => Ok(()),
    }
}

/// Own fence at `pos` of `chain` signalled.
fn link_signalled(chain: &Arc<Mutex<Chain>>, pos: u64, status: FenceStatus) {
    let done = {
        let mut c = lock(chain);
        c.pending.remove(&pos);
        if let FenceStatus::Error(e) = status {
            if c.first_error.is_none_or(|(at, _)| pos < at) {
                c.first_error = Some((pos, e));
            }
        }
        c.collect()
    };
    for (f, status) in done {
        f.signal(status_result(status));
    }
}

/// What a syncobj's fence pointer holds.
enum Head {
    Empty,
    Fence(Arc<Fence>),
    Chain(Arc<Mutex<Chain>>),
}

/// Someone waiting for a point to be submitted (`WAIT_FOR_SUBMIT`, `WAIT_AVAILABLE`, eventfds).
enum Watcher {
    /// A proxy that follows the point's fence once there is one.
    Submit { point: u64, proxy: Weak<Fence> },
    /// A proxy that signals once the point has a fence.
    Available { point: u64, proxy: Weak<Fence> },
    /// `DRM_IOCTL_SYNCOBJ_EVENTFD`: incremented once the point signals (or is available).
    Eventfd { point: u64, available: bool, fd: OwnedFd, _charges: Vec<Charge> },
}

impl Watcher {
    fn point(&self) -> u64 {
        match self {
            Watcher::Submit { point, .. } | Watcher::Available { point, .. } | Watcher::Eventfd { point, .. } => *point,
        }
    }

    fn dead(&self) -> bool {
        match self {
            Watcher::Submit { proxy, .. } | Watcher::Available { proxy, .. } => proxy.strong_count() == 0,
            Watcher::Eventfd { .. } => false,
        }
    }

    /// The point has `fence` now: hand it on (outside the syncobj's lock).
    fn resolve(self, fence: Arc<Fence>) {
        match self {
            Watcher::Submit { proxy, .. } => fence.on_signal(move |st| {
                if let Some(p) = proxy.upgrade() {
                    p.signal(status_result(st));
                }
            }),
            Watcher::Available { proxy, .. } => {
                if let Some(p) = proxy.upgrade() {
                    p.signal(Ok(()));
                }
            }
            Watcher::Eventfd { available: true, fd, .. } => eventfd_signal(&fd),
            Watcher::Eventfd { fd, _charges, .. } => fence.on_signal(move |_| {
                eventfd_signal(&fd);
                drop(_charges);
            }),
        }
    }
}

fn eventfd_signal(fd: &OwnedFd) {
    // A full counter (EAGAIN) still reads as signalled; nothing else can fail on an eventfd.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Fewest watchers a syncobj sweeps its dead ones at.
const PRUNE_MIN: usize = 64;

/// A syncobj's watchers by point, so a change of the head looks only at the points it
/// resolves (a deep pipeline waits on many future points; walking all of them on every
/// submission made N submissions cost N² steps).
struct Watchers {
    by_point: BTreeMap<u64, Vec<Watcher>>,
    len: usize,
    /// Count at which dead ones are dropped next (doubling, so adding stays O(1) amortised
    /// however many waits are pending; a sweep per wait made 20,000 waits on one point take
    /// 20,000² steps).
    prune_at: usize,
}

impl Watchers {
    fn new() -> Watchers {
        Watchers { by_point: BTreeMap::new(), len: 0, prune_at: PRUNE_MIN }
    }

    fn add(&mut self, w: Watcher) {
        self.by_point.entry(w.point()).or_default().push(w);
        self.len += 1;
        // Waits that timed out leave dead proxies behind.
        if self.len >= self.prune_at {
            self.by_point.retain(|_, ws| {
                ws.retain(|w| !w.dead());
                !ws.is_empty()
            });
            self.len = self.by_point.values().map(Vec::len).sum();
            self.prune_at = (2 * self.len).max(PRUNE_MIN);
        }
    }

    /// Takes the watchers of points up to `upto`.
    fn take_upto(&mut self, upto: u64) -> BTreeMap<u64, Vec<Watcher>> {
        let rest = match upto.checked_add(1) {
            Some(next) => self.by_point.split_off(&next),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut self.by_point, rest);
        self.len -= due.values().map(Vec::len).sum::<usize>();
        due
    }

    /// Takes them all.
    fn take_all(&mut self) -> impl Iterator<Item = Watcher> {
        self.len = 0;
        std::mem::take(&mut self.by_point).into_values().flatten()
    }
}

struct State {
    head: Head,
    watchers: Watchers,
}

/// How a wait treats a point nothing was submitted for yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsubmitted {
    /// `EINVAL` (DRM without flags).
    Refuse,
    /// Wait until it is submitted, then for its fence (`WAIT_FOR_SUBMIT`).
    WaitSubmit,
    /// Done once it is submitted (`WAIT_AVAILABLE`): the fence returned signals then.
    WaitAvailable,
}

/// A synchronisation object (`drm_syncobj`).
pub struct Syncobj {
    state: Mutex<State>,
    counters: Arc<Counters>,
    _tracked: Tracked,
}

impl std::fmt::Debug for Syncobj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncobj").field("value", &self.query(false)).finish()
    }
}

impl Syncobj {
    /// A syncobj with no fence, or (`signaled`) a signalled one (`DRM_SYNCOBJ_CREATE_SIGNALED`).
    pub fn new(counters: &Arc<Counters>, signaled: bool) -> Syncobj {
        let head = if signaled { Head::Fence(Fence::signaled(counters, Ok(()))) } else { Head::Empty };
        Syncobj {
            state: Mutex::new(State { head, watchers: Watchers::new() }),
            counters: counters.clone(),
            _tracked: Tracked::new(counters, Kind::Syncobj),
        }
    }

    fn find_locked(&self, head: &Head, point: u64) -> Option<Arc<Fence>> {
        match head {
            Head::Empty => None,
            Head::Fence(f) => (point == 0).then(|| f.clone()),
            Head::Chain(c) => {
                let mut c = lock(c);
                (point <= c.head().0).then(|| c.find(point))
            }
        }
    }

    /// The fence of `point` (`drm_syncobj_find_fence`): `EINVAL` if nothing was submitted
    /// for it yet.
    pub fn find(&self, point: u64) -> Result<Arc<Fence>> {
        self.fence_for(point, Unsubmitted::Refuse)
    }

    /// The fence of `point`, or for a point not submitted yet what `unsubmitted` says: an
    /// error, or a fence that follows the point once it is submitted (or signals then).
    pub fn fence_for(&self, point: u64, unsubmitted: Unsubmitted) -> Result<Arc<Fence>> {
        let mut s = lock(&self.state);
        if let Some(f) = self.find_locked(&s.head, point) {
            return Ok(if unsubmitted == Unsubmitted::WaitAvailable {
                Fence::signaled(&self.counters, Ok(()))
            } else {
                f
            });
        }
        if unsubmitted == Unsubmitted::Refuse {
            if point == 0 {
                bail!(EINVAL, "the syncobj has no fence");
            }
            bail!(EINVAL, "timeline point {point} has not been submitted");
        }
        let proxy = Fence::new(&self.counters);
        let weak = Arc::downgrade(&proxy);
        s.watchers.add(match unsubmitted {
            Unsubmitted::WaitSubmit => Watcher::Submit { point, proxy: weak },
            _ => Watcher::Available { point, proxy: weak },
        });
        Ok(proxy)
    }

    /// Arms an eventfd for `point` (`DRM_IOCTL_SYNCOBJ_EVENTFD`), submitted yet or not.
    pub fn add_eventfd(&self, point: u64, available: bool, fd: OwnedFd, charges: Vec<Charge>) {
        let w = Watcher::Eventfd { point, available, fd, _charges: charges };
        let found = {
            let mut s = lock(&self.state);
            match self.find_locked(&s.head, point) {
                Some(f) => Some(f),
                None => {
                    s.watchers.add(w);
                    return;
                }
            }
        };
        if let Some(f) = found {
            w.resolve(f);
        }
    }

    /// Replaces the fence pointer (point 0 operations; `None` resets), dropping any chain.
    pub fn replace(&self, fence: Option<Arc<Fence>>) {
        let head = match fence {
            Some(f) => Head::Fence(f),
            None => Head::Empty,
        };
        self.set_head(|_| head);
    }

    /// Adds `fence` as timeline point `point` (`drm_syncobj_add_point`); point 0 replaces
    /// the fence instead, as DRM's signal paths do.
    pub fn add_point(&self, point: u64, fence: Arc<Fence>) {
        if point == 0 {
            return self.replace(Some(fence));
        }
        let mut callbacks = Vec::new();
        let mut done = Vec::new();
        self.set_head(|old| {
            let chain = match old {
                Head::Chain(c) => {
                    let pos = lock(&c).add(point);
                    track(&c, pos, &fence, &mut callbacks, &mut done);
                    c
                }
                other => {
                    let c = Arc::new(Mutex::new(Chain::new(&self.counters, point)));
                    // A plain fence the chain starts over is the link below the first (position 0).
                    if let Head::Fence(below) = other {
                        track(&c, 0, &below, &mut callbacks, &mut done);
                    }
                    track(&c, 1, &fence, &mut callbacks, &mut done);
                    c
                }
            };
            Head::Chain(chain)
        });
        for (f, status) in done {
            f.signal(status_result(status));
        }
        // Outside every lock: a fence that signalled meanwhile runs its callback at once.
        for (chain, f, pos) in callbacks {
            register(&chain, f, pos);
        }
    }

    /// Applies `f` to the head and hands the change to the watchers it resolves.
    fn set_head(&self, f: impl FnOnce(Head) -> Head) {
        let resolved = {
            let mut s = lock(&self.state);
            let old = std::mem::replace(&mut s.head, Head::Empty);
            s.head = f(old);
            // The points the new head has a fence for: 0 for a plain fence, up to the last
            // point for a chain.
            let upto = match &s.head {
                Head::Empty => None,
                Head::Fence(_) => Some(0),
                Head::Chain(c) => Some(lock(c).head().0),
            };
            let mut resolved = Vec::new();
            for (point, ws) in upto.map(|upto| s.watchers.take_upto(upto)).unwrap_or_default() {
                for w in ws.into_iter().filter(|w| !w.dead()) {
                    match self.find_locked(&s.head, point) {
                        Some(fence) => resolved.push((w, fence)),
                        None => s.watchers.add(w),
                    }
                }
            }
            resolved
        };
        for (w, fence) in resolved {
            w.resolve(fence);
        }
    }

    /// Signals `point` from the host: point 0 replaces the fence with a signalled one.
    pub fn signal(&self, point: u64) {
        self.add_point(point, Fence::signaled(&self.counters, Ok(())));
    }

    /// Drops the fence and any chain (`DRM_IOCTL_SYNCOBJ_RESET`). Waiters that already hold a
    /// point's fence keep it; waits for submission go on waiting.
    pub fn reset(&self) {
        self.replace(None);
    }

    /// `DRM_IOCTL_SYNCOBJ_QUERY`: the highest contiguous signalled point, or the last
    /// submitted one; 0 without a chain.
    pub fn query(&self, last_submitted: bool) -> u64 {
        match &lock(&self.state).head {
            Head::Chain(c) => lock(c).query(last_submitted),
            _ => 0,
        }
    }
}

/// A chain link's own fence that needs a signal callback, with its position.
type LinkCallback = (Arc<Mutex<Chain>>, Arc<Fence>, u64);

/// Records the state of the own fence at `pos`; a pending one needs a callback.
fn track(
    chain: &Arc<Mutex<Chain>>,
    pos: u64,
    fence: &Arc<Fence>,
    callbacks: &mut Vec<LinkCallback>,
    done: &mut Vec<(Arc<Fence>, FenceStatus)>,
) {
    let mut c = lock(chain);
    match fence.status() {
        FenceStatus::Pending => {
            c.pending.insert(pos, fence.clone());
            callbacks.push((chain.clone(), fence.clone(), pos));
        }
        FenceStatus::Error(e) => {
            if c.first_error.is_none_or(|(at, _)| pos < at) {
                c.first_error = Some((pos, e));
            }
        }
        FenceStatus::Signaled => {}
    }
    done.extend(c.collect());
}

/// Registers the callback of a chain link's own fence.
fn register(chain: &Arc<Mutex<Chain>>, fence: Arc<Fence>, pos: u64) {
    let chain = chain.clone();
    fence.on_signal(move |st| link_signalled(&chain, pos, st));
}

impl Drop for Syncobj {
    fn drop(&mut self) {
        // No one can submit to this syncobj any more: a wait for submission would never end.
        let watchers = self.state.get_mut().unwrap_or_else(|e| e.into_inner()).watchers.take_all();
        for w in watchers {
            if let Watcher::Submit { proxy, .. } | Watcher::Available { proxy, .. } = w {
                if let Some(p) = proxy.upgrade() {
                    p.signal(Err(Errno::ENOENT));
                }
            }
        }
    }
}

slotmap::new_key_type! {
    struct SyncobjKey;
}

/// A client's syncobj handles, shared with its rings so that ring entries resolve
/// handles exactly like socket requests.
pub struct SyncobjTable(Table<SyncobjKey, Arc<Syncobj>>);

impl Default for SyncobjTable {
    fn default() -> Self {
        SyncobjTable(Table::new("syncobj"))
    }
}

impl SyncobjTable {
    /// The syncobj behind a handle; `ENOENT` for stale or forged handles.
    pub fn get(&self, h: SyncobjHandle) -> Result<Arc<Syncobj>> {
        self.0.get(h.0)
    }

    /// Adds a handle.
    pub fn insert(&self, so: Arc<Syncobj>) -> Result<SyncobjHandle> {
        Ok(SyncobjHandle(self.0.insert(so)?))
    }

    /// Removes a handle.
    pub fn remove(&self, h: SyncobjHandle) -> Option<Arc<Syncobj>> {
        self.0.remove(h.0)
    }

    /// Handles held.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests;
