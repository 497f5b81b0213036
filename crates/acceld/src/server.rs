//! The event loop: a fixed number of worker threads, each an epoll loop (`mio`) over its
//! share of the connections, plus the accept thread that admits connections and hands
//! them out round-robin.
//!
//! Nothing here blocks on a client or polls: waits are registered as fence callbacks, and
//! opens queued for an exclusive lease as lease callbacks, that post an event and wake the
//! worker; timeouts, the handshake deadline and the tarpit are timers; a peer hanging up is an epoll event. A connection keeps serving
//! requests while its waits are pending, so replies may come out of order (the sequence
//! number pairs them). Modelled on crosvm's `WaitContext` with an event-token enum: a
//! token is a connection id, and posted events name the connection they are for.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel_core::bo::Charge;
use accel_core::fence::Fence;
use accel_core::Subsystem;
use accel_uapi::wire::MAX_MESSAGE;
use accel_uapi::{transport, Errno, Reply};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::dispatch::{self, encode_reply, error_reply, Action, Session};
use crate::subscription::Subscription;
use crate::MAX_PENDING_WAITS;

const WAKER: Token = Token(0);
/// How long an evicted client's jobs get to report `ENODEV` before its connection closes.
const SETTLE: Duration = Duration::from_secs(2);
/// Replies a connection may have waiting to be sent (its socket full: the client does not read
/// them) before its requests are no longer read, as a socket's buffer stops a sender; reading
/// resumes once a quarter of that is left. Room for a client that pipelines thousands of
/// requests before it reads (as many as it may have waits pending); one that never reads
/// costs the daemon this much and no more. A subscriber over it loses events (as a netlink
/// socket's reader does) and is told how many with `ENOBUFS`.
const BACKLOG: usize = 4096;
/// Likewise in bytes.
const BACKLOG_BYTES: usize = 4 << 20;
/// Requests read from one connection before the worker turns to its other connections (the
/// rest wait for its next turn): one client writing requests as fast as they are served must
/// not hold its worker (before, another client's request on that worker took 0.4–1.6 s).
const READ_BUDGET: usize = 64;

/// Something posted to a worker from another thread.
pub(crate) enum Post {
    /// A new, admitted connection.
    Conn(Box<NewConn>),
    /// A fence of a pending wait signalled.
    Fence { conn: u64, wait: u64 },
    /// The exclusive lease a pending open waits for may have come free.
    Lease { conn: u64, open: u64 },
    /// An admin evicted this connection's client.
    Revoke(u64),
    /// RAS events for a subscribed connection (those that arrived together, in order).
    Ras(u64, Vec<accel_core::ras::RasEvent>),
}

/// A connection the accept thread admitted, with what it holds until it closes.
pub(crate) struct NewConn {
    pub sock: OwnedFd,
    pub peer: accel_core::namespace::PeerInfo,
    pub held: Box<dyn Send>,
    pub handshake: Duration,
}

/// A worker's address: where to post, and how to wake it.
#[derive(Clone)]
pub(crate) struct WorkerHandle {
    tx: Sender<Post>,
    waker: Arc<Waker>,
}

impl WorkerHandle {
    pub(crate) fn post(&self, p: Post) {
        if self.tx.send(p).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

enum Timer {
    Handshake,
    Wait(u64),
    Open(u64),
    Unpause,
    Settle,
}

struct PendingWait {
    seq: u32,
    fences: Vec<Arc<Fence>>,
    all: bool,
    /// The errno of a timeout.
    expired: Errno,
    /// Its timeout's key in the timer map, removed when the wait ends first.
    timer: Option<(Instant, u64)>,
    /// What keeps its fence callbacks wanted (see [`Fence::on_signal_while`]).
    _alive: Arc<dyn std::any::Any + Send + Sync>,
}

struct PendingOpen {
    seq: u32,
    minor: u32,
    deadline: Instant,
    /// The deadline's timer.
    timer: (Instant, u64),
}

struct Conn {
    sock: OwnedFd,
    session: Session,
    out: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    /// Bytes in `out`.
    out_bytes: usize,
    /// Not read while its replies back up (see [`BACKLOG`]).
    backlogged: bool,
    /// RAS events dropped for a subscriber that did not keep up, not reported yet.
    dropped_events: u64,
    writable: bool,
    waits: HashMap<u64, PendingWait>,
    opens: HashMap<u64, PendingOpen>,
    strikes: u32,
    paused_until: Option<Instant>,
    /// Evicted: stop reading, close once its jobs settled (or the deadline passed).
    closing: Option<Instant>,
    subscribed: bool,
    /// What the subscription sees, and whether its events carry accel's attributes.
    ras_view: Option<(crate::ras_nl::View, bool)>,
    /// Shared with the thread that publishes events.
    subscription: Option<Arc<Subscription>>,
    _held: Box<dyn Send>,
}

struct Worker {
    sub: Arc<Subsystem>,
    poll: Poll,
    me: WorkerHandle,
    rx: Receiver<Post>,
    conns: HashMap<u64, Conn>,
    timers: BTreeMap<(Instant, u64), (u64, Timer)>,
    next_id: u64,
    buf: Vec<u8>,
    /// Connections whose replies drained: read them again (edge-triggered, their requests
    /// raise no new event).
    resume: Vec<u64>,
}

impl Conn {
    fn backed_up(&self) -> bool {
        self.out.len() >= BACKLOG || self.out_bytes >= BACKLOG_BYTES
    }

    fn drained(&self) -> bool {
        self.out.len() <= BACKLOG / 4 && self.out_bytes <= BACKLOG_BYTES / 4
    }

    /// Netlink's overrun: queues `ENOBUFS` with the count of the events this subscriber lost,
    /// if it lost any since the last report.
    fn report_dropped(&mut self) {
        if self.dropped_events == 0 {
            return;
        }
        let lost = std::mem::take(&mut self.dropped_events);
        let e = accel_core::Error::new(
            Errno::ENOBUFS,
            format!("{lost} RAS event message(s) dropped: the subscriber did not keep up"),
        );
        let bytes = encode_reply(0, &error_reply(e));
        self.out_bytes += bytes.len();
        self.out.push_back((bytes, Vec::new()));
    }
}

/// Starts `n` workers; returns their handles.
pub(crate) fn start_workers(sub: &Arc<Subsystem>, n: usize) -> std::io::Result<Vec<WorkerHandle>> {
    (0..n.max(1)).map(|i| start_worker(sub, format!("worker{i}"), None)).collect()
}

/// Starts a worker that serves its connections at `nice` (this process's nice if `None`):
/// the worker for clients that run at a lower priority than the daemon, so that the CPU
/// their requests take is taken at their priority, as their ioctls would be in the kernel.
pub(crate) fn start_worker(sub: &Arc<Subsystem>, name: String, nice: Option<i32>) -> std::io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = channel();
    let me = WorkerHandle { tx, waker };
    let mut w = Worker {
        sub: sub.clone(),
        poll,
        me: me.clone(),
        rx,
        conns: HashMap::new(),
        timers: BTreeMap::new(),
        next_id: 1,
        buf: vec![0; MAX_MESSAGE + 1],
        resume: Vec::new(),
    };
    std::thread::Builder::new().name(name).spawn(move || {
        if let Some(nice) = nice {
            // Linux keeps a nice value per thread: this sets this worker's alone.
            if let Err(e) = rustix::process::setpriority_process(None, nice) {
                tracing::warn!("cannot lower a worker's priority to nice {nice}: {e}");
            }
        }
        w.run()
    })?;
    Ok(me)
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.resume.is_empty() {
                self.timers.keys().next().map(|(t, _)| t.saturating_duration_since(Instant::now()))
            } else {
                // Connections with requests left from their last turn: look at the others'
                // events, then serve them again.
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!("event loop: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let id = ev.token().0 as u64;
                if ev.is_writable() {
                    self.flush(id);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.read(id);
                }
            }
            while let Ok(p) = self.rx.try_recv() {
                self.posted(p);
            }
            for id in std::mem::take(&mut self.resume) {
                self.read(id);
            }
            self.fire_timers();
        }
    }

    /// Schedules `what` for connection `conn` at `at`; returns the timer's key.
    fn timer(&mut self, at: Instant, conn: u64, what: Timer) -> (Instant, u64) {
        let key = (at, self.next_id);
        self.next_id += 1;
        self.timers.insert(key, (conn, what));
        key
    }

    fn posted(&mut self, p: Post) {
        match p {
            Post::Conn(c) => self.adopt(*c),
            Post::Fence { conn, wait } => self.check_wait(conn, wait, false),
            Post::Lease { conn, open } => self.retry_open(conn, open),
            Post::Revoke(conn) => self.revoke(conn),
            Post::Ras(conn, events) => self.send_events(conn, &events),
        }
    }

    /// Events that arrived together travel together: frames of up to 256 netlink messages
    /// (and well under the message limit), as a netlink socket's read returns several. Each
    /// event is framed straight into one buffer and the reply written from it, and each frame
    /// goes out as soon as it is made, so the subscriber decodes one while the next is made.
    fn send_events(&mut self, conn: u64, events: &[accel_core::ras::RasEvent]) {
        const MOST: usize = 256;
        let budget = MAX_MESSAGE - 8 * 1024;
        let Some((view, ext)) = self.conns.get(&conn).and_then(|c| c.ras_view.clone()) else { return };
        let (mut items, mut ends) = (Vec::with_capacity(MOST * 176), Vec::with_capacity(MOST));
        let handed = events.len();
        let mut events = events.iter().peekable();
        while events.peek().is_some() {
            items.clear();
            ends.clear();
            while ends.len() < MOST && items.len() < budget {
                let Some(ev) = events.next() else { break };
                if crate::ras_nl::event_frame_after(self.sub.ras(), &view, ev, ext, &mut items) {
                    ends.push(items.len());
                }
            }
            if ends.is_empty() {
                continue;
            }
            if let Some(c) = self.conns.get_mut(&conn).filter(|c| c.backed_up()) {
                c.dropped_events += ends.len() as u64;
                continue;
            }
            let empty = Reply::Netlink(Vec::new());
            match accel_uapi::wire::encode_with_items(accel_uapi::wire::Kind::Reply, 0, &empty, &items, &ends) {
                Ok(bytes) => self.send_encoded(conn, bytes, Vec::new()),
                Err(e) => tracing::warn!("RAS events for a subscriber could not be framed ({e}); dropped"),
            }
        }
        // Once every event handed over before a drop is framed, the overrun is reported after
        // them, as netlink's comes after what the socket kept.
        if let Some(c) = self.conns.get_mut(&conn) {
            c.dropped_events += c.subscription.as_ref().map_or(0, |s| s.framed(handed));
            if c.dropped_events > 0 && c.out.is_empty() {
                c.report_dropped();
                self.flush(conn);
            }
        }
    }

    fn adopt(&mut self, c: NewConn) {
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = rustix::io::ioctl_fionbio(&c.sock, true) {
            tracing::warn!("cannot make a connection non-blocking: {e}");
            return;
        }
        let fd = c.sock.as_raw_fd();
        if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd), Token(id as usize), Interest::READABLE) {
            tracing::warn!("cannot watch a connection: {e}");
            return;
        }
        let admin = self.sub.namespaces().is_admin(&c.peer);
        let conn = Conn {
            sock: c.sock,
            session: Session { client: None, peer: c.peer, admin },
            out: VecDeque::new(),
            out_bytes: 0,
            backlogged: false,
            dropped_events: 0,
            writable: false,
            waits: HashMap::new(),
            opens: HashMap::new(),
            strikes: 0,
            paused_until: None,
            closing: None,
            subscribed: false,
            ras_view: None,
            subscription: None,
            _held: c.held,
        };
        self.conns.insert(id, conn);
        let _ = self.timer(Instant::now() + c.handshake, id, Timer::Handshake);
        // Data may have arrived before the registration (edge-triggered): read now.
        self.read(id);
    }

    /// Reads and serves the messages waiting on a connection, up to [`READ_BUDGET`]; a
    /// connection with more gets another turn after the worker's other events.
    fn read(&mut self, id: u64) {
        for _ in 0..READ_BUDGET {
            let Some(c) = self.conns.get(&id) else { return };
            if c.closing.is_some() || c.subscribed || c.paused_until.is_some_and(|t| t > Instant::now()) {
                // A subscribed connection only streams; a read still notices its hang-up.
                if c.subscribed && hung_up(&c.sock) {
                    self.close(id);
                }
                return;
            }
            if c.backlogged || c.backed_up() {
                // Its replies are not read: leave its requests in its socket (so its sends
                // block) until they are. A hang-up still closes it.
                if hung_up(&c.sock) {
                    return self.hang_up(id);
                }
                if let Some(c) = self.conns.get_mut(&id) {
                    c.backlogged = true;
                }
                return;
            }
            let received = match transport::recv(c.sock.as_fd(), &mut self.buf) {
                Ok(Some(r)) => r,
                Ok(None) => return self.hang_up(id),
                Err(rustix::io::Errno::AGAIN) => return,
                Err(e) => {
                    tracing::debug!("recv: {e}");
                    return self.hang_up(id);
                }
            };
            let len = received.len;
            // Disjoint fields: the message is read in place, with no copy per request.
            let Worker { conns, buf, sub, .. } = self;
            let Some(c) = conns.get_mut(&id) else { return };
            let had_client = c.session.client.is_some();
            let (seq, outcome, abusive) = dispatch::dispatch(sub, &mut c.session, received, &buf[..len]);
            if !had_client {
                if let Some(client) = &c.session.client {
                    // The handshake is done: eviction posts here.
                    let me = self.me.clone();
                    client.set_revoke_hook(Box::new(move || me.post(Post::Revoke(id))));
                }
            }
            c.strikes = if abusive { c.strikes.saturating_add(1) } else { 0 };
            let pause = dispatch::tarpit(c.strikes, c.session.admin);
            match outcome {
                Ok(action) => self.act(id, seq, action),
                Err(e) => self.reply(id, seq, error_reply(e), Vec::new()),
            }
            if let Some(p) = pause {
                let until = Instant::now() + p;
                if let Some(c) = self.conns.get_mut(&id) {
                    c.paused_until = Some(until);
                }
                self.timer(until, id, Timer::Unpause);
                return;
            }
        }
        // Its turn is over; it may have more (edge-triggered: no new event says so).
        self.resume.push(id);
    }

    fn act(&mut self, id: u64, seq: u32, action: Action) {
        match action {
            Action::Reply(r, fds) => self.reply(id, seq, *r, fds),
            Action::Failed(e) => {
                self.reply(id, seq, error_reply(e), Vec::new());
                self.close(id);
            }
            Action::Netlink(frames) => {
                for f in frames {
                    self.reply(id, seq, Reply::Netlink(f), Vec::new());
                }
            }
            Action::Wait { fences, all, timeout, expired } => {
                // Already satisfied (the common case for short jobs): answer now, with no
                // callbacks, timer or wake-up.
                if let Some(reply) = dispatch::waited_now(&fences, all) {
                    return self.reply(id, seq, reply, Vec::new());
                }
                if self.conns.get(&id).is_some_and(|c| c.waits.len() >= MAX_PENDING_WAITS) {
                    let e = accel_core::Error::new(
                        Errno::EAGAIN,
                        format!("{MAX_PENDING_WAITS} waits are pending on this connection; wait for some to end"),
                    );
                    return self.reply(id, seq, error_reply(e), Vec::new());
                }
                let wait = self.next_id;
                self.next_id += 1;
                // Its callbacks are wanted while the wait is pending: one that times out or
                // whose connection closes leaves nothing on a fence that may never signal.
                let alive: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
                for f in &fences {
                    let me = self.me.clone();
                    f.on_signal_while(Arc::downgrade(&alive), move |_| me.post(Post::Fence { conn: id, wait }));
                }
                let timer = Instant::now().checked_add(timeout).map(|at| self.timer(at, id, Timer::Wait(wait)));
                if let Some(c) = self.conns.get_mut(&id) {
                    c.waits.insert(wait, PendingWait { seq, fences, all, expired, timer, _alive: alive });
                }
                self.check_wait(id, wait, false);
            }
            Action::Open { minor, wait } => {
                if self.conns.get(&id).is_some_and(|c| !c.opens.is_empty()) {
                    // One open file per connection, and so one open waiting at most.
                    let e = accel_core::Error::new(Errno::EALREADY, "an open is already waiting on this connection");
                    return self.reply(id, seq, error_reply(e), Vec::new());
                }
                let open = self.next_id;
                self.next_id += 1;
                let deadline = Instant::now() + wait;
                let timer = self.timer(deadline, id, Timer::Open(open));
                let Some(c) = self.conns.get_mut(&id) else { return };
                c.opens.insert(open, PendingOpen { seq, minor, deadline, timer });
                self.watch_lease(id, open, minor);
            }
            Action::Subscribe(view, ext) => {
                // Subscribe before acknowledging, so no event after the ack is missed. The
                // thread that publishes a batch hands it straight to this loop (one wake-up per
                // batch, no thread per subscriber), which frames it after the ack; the
                // subscription ends with the connection.
                let subscription = Arc::new(Subscription::new());
                let (me, shared) = (self.me.clone(), subscription.clone());
                self.sub
                    .ras()
                    .subscribe_with(move |batch| shared.offer(batch, |events| me.post(Post::Ras(id, events))));
                self.reply(id, seq, Reply::Ok, Vec::new());
                if let Some(c) = self.conns.get_mut(&id) {
                    c.subscribed = true;
                    c.ras_view = Some((view, ext));
                    c.subscription = Some(subscription);
                }
            }
        }
    }

    /// Answers a pending wait if it is satisfied (or, `expired`, with `ETIMEDOUT`).
    fn check_wait(&mut self, id: u64, wait: u64, expired: bool) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let Some(w) = c.waits.get(&wait) else { return };
        let reply = match dispatch::waited_now(&w.fences, w.all) {
            Some(reply) => reply,
            None if expired => dispatch::wait_expired(w.expired),
            None => return,
        };
        let (seq, timer) = (w.seq, w.timer);
        c.waits.remove(&wait);
        if let Some(key) = timer {
            self.timers.remove(&key);
        }
        self.reply(id, seq, reply, Vec::new());
    }

    fn retry_open(&mut self, id: u64, open: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let Some(o) = c.opens.get(&open) else { return };
        let (seq, minor, deadline, timer) = (o.seq, o.minor, o.deadline, o.timer);
        let Some(client) = c.session.client.as_mut() else { return };
        let expired = Instant::now() >= deadline;
        let answer = match client.open_poll(minor, true) {
            Ok(true) => Some(client.namespace().describe(minor).map(Reply::Device)),
            Ok(false) if expired => {
                client.open_cancel(minor);
                Some(Err(accel_core::Error::new(Errno::EBUSY, format!("accel{minor} still held after waiting"))))
            }
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        };
        match answer {
            Some(r) => {
                c.opens.remove(&open);
                self.timers.remove(&timer);
                let reply = r.unwrap_or_else(error_reply);
                self.reply(id, seq, reply, Vec::new());
            }
            None => self.watch_lease(id, open, minor),
        }
    }

    /// Retries a pending open when the device says its lease may have come free.
    fn watch_lease(&mut self, id: u64, open: u64, minor: u32) {
        let Some(client) = self.conns.get(&id).and_then(|c| c.session.client.as_ref()) else { return };
        let me = self.me.clone();
        client.on_lease_change(minor, Box::new(move || me.post(Post::Lease { conn: id, open })));
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (id, what) = entry.remove();
            match what {
                Timer::Handshake => {
                    if self.conns.get(&id).is_some_and(|c| c.session.client.is_none()) {
                        tracing::debug!("handshake timed out");
                        self.close(id);
                    }
                }
                Timer::Wait(w) => self.check_wait(id, w, true),
                Timer::Open(o) => self.retry_open(id, o),
                Timer::Unpause => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.paused_until = None;
                        self.read(id);
                    }
                }
                Timer::Settle => self.settle(id),
            }
        }
    }

    fn revoke(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.closing.get_or_insert(Instant::now() + SETTLE);
        self.settle(id);
    }

    /// Closes an evicted connection once its jobs have reported (`ENODEV`), so its fences
    /// and ring completions say why before the peer sees the hang-up.
    fn settle(&mut self, id: u64) {
        let Some(c) = self.conns.get(&id) else { return };
        let Some(deadline) = c.closing else { return };
        let settled = c.session.client.as_ref().is_none_or(|cl| cl.settled());
        if settled || Instant::now() >= deadline {
            self.close(id);
        } else {
            self.timer(Instant::now() + Duration::from_millis(1), id, Timer::Settle);
        }
    }

    fn hang_up(&mut self, id: u64) {
        // An evicted client that hangs up settles like one that did not.
        if self.conns.get(&id).is_some_and(|c| c.closing.is_some()) {
            return self.settle(id);
        }
        self.close(id);
    }

    /// Drops the connection: the client and everything only it held go with it.
    fn close(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            if let Some(subscription) = &c.subscription {
                subscription.end();
            }
            let fd = c.sock.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            if let Some(client) = &c.session.client {
                for o in c.opens.values() {
                    client.open_cancel(o.minor);
                }
                tracing::debug!(client = client.id(), pid = c.session.peer.cred.pid, "client disconnected");
            }
        }
    }

    fn reply(&mut self, id: u64, seq: u32, reply: Reply, fds: Vec<OwnedFd>) {
        self.send_encoded(id, encode_reply(seq, &reply), fds);
    }

    /// Sends a reply already encoded.
    fn send_encoded(&mut self, id: u64, bytes: Vec<u8>, fds: Vec<OwnedFd>) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.out_bytes += bytes.len();
        c.out.push_back((bytes, fds));
        self.flush(id);
    }

    /// Sends what is queued; a full socket waits for a writable event.
    fn flush(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        while let Some((bytes, fds)) = c.out.front() {
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            match transport::send(c.sock.as_fd(), bytes, &borrowed) {
                Ok(()) => {
                    c.out_bytes -= bytes.len();
                    c.out.pop_front();
                    if c.drained() {
                        if c.backlogged {
                            c.backlogged = false;
                            self.resume.push(id);
                        }
                        c.report_dropped();
                    }
                }
                Err(rustix::io::Errno::AGAIN) => {
                    if !c.writable {
                        c.writable = true;
                        let fd = c.sock.as_raw_fd();
                        let _ = self.poll.registry().reregister(
                            &mut SourceFd(&fd),
                            Token(id as usize),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!("send: {e}");
                    return self.close(id);
                }
            }
        }
        if c.writable {
            c.writable = false;
            let fd = c.sock.as_raw_fd();
            let _ = self.poll.registry().reregister(&mut SourceFd(&fd), Token(id as usize), Interest::READABLE);
        }
    }
}

/// Whether a connection's peer has gone (end of file, or a broken socket), looked at without
/// taking any message it sent: for connections whose requests are not read now.
fn hung_up(sock: &OwnedFd) -> bool {
    let mut probe = [0u8; 1];
    let flags = rustix::net::RecvFlags::DONTWAIT | rustix::net::RecvFlags::PEEK;
    match rustix::net::recv(sock, &mut probe, flags) {
        Ok((n, _)) => n == 0,
        Err(e) => e != rustix::io::Errno::AGAIN,
    }
}

/// What an admitted connection holds until it closes (its user's slot, its descriptor charges).
pub(crate) fn held<T: Send + 'static>(slot: T, charges: Vec<Charge>) -> Box<dyn Send> {
    Box::new((slot, charges))
}
