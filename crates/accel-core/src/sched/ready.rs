//! The scheduler's ready sets and groups: which queues may run now, in the order selection
//! serves them, and the two-level fair share (namespace, then queue).

use std::collections::{BTreeMap, BTreeSet};

use super::{Entity, EntityId, Failed, State, DEFAULT_WEIGHT, STARVATION_LIMIT, VRUNTIME_SCALE};

/// A queue's group: what shares the device with other groups by weight (a namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// Identity: queues with the same id are one group.
    pub id: u64,
    /// The group's weight (1..); the latest queue created in the group sets it.
    pub weight: u32,
}

impl Default for Group {
    /// The one group of queues created without one.
    fn default() -> Self {
        Group { id: 0, weight: DEFAULT_WEIGHT }
    }
}

/// A group's scheduling state.
pub(super) struct GroupState {
    pub(super) weight: u32,
    /// Virtual runtime per class (engine time ÷ the group's weight).
    pub(super) vruntime: [u128; 4],
    /// Per class: where an idle queue of the group rejoins (the largest virtual runtime a
    /// queue of the group was dispatched at).
    pub(super) floor: [u128; 4],
    /// Queues of the group with jobs waiting or running.
    pub(super) busy: u32,
    /// Queues of the group.
    pub(super) queues: u32,
}

pub(super) fn vcost(ns: u64, weight: u32) -> u128 {
    u128::from(ns) * VRUNTIME_SCALE / u128::from(weight.max(1))
}

/// Ready queues of one engine in one class.
#[derive(Default)]
pub(super) struct Ready {
    /// Ready queues, all groups together.
    count: usize,
    /// Per group: (key, entity), the first to serve first. The key is the queue's virtual
    /// runtime, or its head job's submission order on FIFO devices. A group's set stays when
    /// it empties (until the group goes), so a queue that comes and goes allocates nothing.
    groups: BTreeMap<u64, BTreeSet<(u128, EntityId)>>,
}

impl Ready {
    /// Groups with ready queues, and their queues.
    fn groups(&self) -> impl Iterator<Item = (&u64, &BTreeSet<(u128, EntityId)>)> {
        self.groups.iter().filter(|(_, queues)| !queues.is_empty())
    }

    /// Takes every queue out.
    pub(super) fn clear(&mut self) {
        self.groups.clear();
        self.count = 0;
    }
}

/// Per class: an engine's ready queues.
pub(super) type ReadySets = [Ready; 4];

/// Chooses the class to serve among those with ready work (`has`) and updates the
/// starvation counters.
pub(super) fn pick_class(st: &mut State, has: [bool; 4]) -> Option<usize> {
    let starved = (0..4).filter(|&c| has[c] && st.starve[c] >= STARVATION_LIMIT).max_by_key(|&c| (st.starve[c], 4 - c));
    let class = starved.or_else(|| (0..4).rev().find(|&c| has[c]))?;
    for (starve, _) in st.starve.iter_mut().zip(has).take(class).filter(|(_, ready)| *ready) {
        *starve += 1;
    }
    st.starve[class] = 0;
    Some(class)
}

/// The ready sets of the engines with credits left: where a dispatch may go now.
fn open(st: &State) -> impl Iterator<Item = &ReadySets> {
    st.engines.iter().zip(&st.ready).filter(|(e, _)| e.in_flight < e.credits).map(|(_, sets)| sets)
}

/// The classes with a ready queue on an engine with credits left.
pub(super) fn ready_classes(st: &State) -> [bool; 4] {
    let mut has = [false; 4];
    for sets in open(st) {
        for (has, ready) in has.iter_mut().zip(sets) {
            *has |= ready.count > 0;
        }
    }
    has
}

/// The queue to serve next in `class`, over the engines with credits: in the group with the
/// least virtual runtime (ties to the older group), the queue with the least (ties to the
/// older queue); on FIFO devices the oldest head job of any group.
pub(super) fn choose(st: &State, class: usize, fifo: bool) -> Option<EntityId> {
    let open = || open(st).map(|sets| &sets[class]);
    let first_of = |group: u64| open().filter_map(|r| r.groups.get(&group)?.first().copied()).min();
    if fifo {
        return open().flat_map(|r| r.groups().filter_map(|(_, q)| q.first().copied())).min().map(|(_, id)| id);
    }
    let group = open()
        .flat_map(|r| r.groups().map(|(g, _)| g))
        .min_by_key(|&&g| (st.groups.get(&g).map_or(0, |g| g.vruntime[class]), g))?;
    first_of(*group).map(|(_, id)| id)
}

/// Takes queue `id` out of the ready sets, if it is in one.
pub(super) fn unready(st: &mut State, id: EntityId) {
    let Some(e) = st.entities.get_mut(&id) else { return };
    if let Some((engine, class, key)) = e.ready.take() {
        let ready = &mut st.ready[engine][class];
        if ready.groups.get_mut(&e.group).is_some_and(|queues| queues.remove(&(key, id))) {
            ready.count -= 1;
        }
    }
}

/// A queue leaves its group (the group goes with its last queue).
pub(super) fn leave_group(st: &mut State, e: &Entity) {
    if let Some(g) = st.groups.get_mut(&e.group) {
        g.busy -= u32::from(e.busy);
        g.queues -= 1;
        if g.queues == 0 {
            st.groups.remove(&e.group);
            for ready in st.ready.iter_mut().flatten() {
                ready.groups.remove(&e.group);
            }
        }
    }
}

/// Counts queue `id` in or out of its group's busy queues. A group that had none rejoins each
/// class at that class's floor: an idle group banks no credit, as an idle queue does not.
fn settle(st: &mut State, id: EntityId) {
    let State { entities, groups, floor, .. } = st;
    let Some(e) = entities.get_mut(&id) else { return };
    let busy = !e.jobs.is_empty() || e.in_flight > 0;
    if busy == e.busy {
        return;
    }
    e.busy = busy;
    let Some(g) = groups.get_mut(&e.group) else { return };
    if busy {
        if g.busy == 0 {
            for (v, f) in g.vruntime.iter_mut().zip(floor.iter()) {
                *v = (*v).max(*f);
            }
        }
        g.busy += 1;
    } else {
        g.busy -= 1;
    }
}

/// Looks at queue `id` again: its head jobs whose dependency failed fail (into `failed`),
/// and it joins its head job's engine's ready set if that job may run now.
pub(super) fn refresh(st: &mut State, id: EntityId, fifo: bool, failed: &mut Failed) {
    st.looks += 1;
    unready(st, id);
    enqueue(st, id, fifo, failed);
    settle(st, id);
}

/// [`refresh`]'s look at the head job: fails those whose dependency failed, and puts the
/// queue in its ready set if its head may run.
fn enqueue(st: &mut State, id: EntityId, fifo: bool, failed: &mut Failed) {
    let State { entities, ready, queued, .. } = st;
    let Some(e) = entities.get_mut(&id) else { return };
    while let Some(job) = e.jobs.front() {
        match job.deps_state() {
            // Waiting on a fence: its signal wakes the queue.
            None => return,
            Some(Some(err)) => {
                let job = e.jobs.pop_front().expect("front exists");
                *queued -= 1;
                failed.push((job, err));
            }
            Some(None) => {
                // In order per queue: the next job waits for the previous one to finish
                // (whose completion wakes the queue).
                if !e.banned && e.in_flight == 0 {
                    let key = if fifo { u128::from(job.seq) } else { e.vruntime };
                    let class = e.params.priority as usize;
                    let r = &mut ready[job.engine][class];
                    if r.groups.entry(e.group).or_default().insert((key, id)) {
                        r.count += 1;
                    }
                    e.ready = Some((job.engine, class, key));
                }
                return;
            }
        }
    }
}
