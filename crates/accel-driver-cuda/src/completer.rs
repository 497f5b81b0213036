//! The compute engine's asynchronous path (`$ACCEL_CUDA_ASYNC=1`; the core's asynchronous
//! engines): a job is encoded and put in a free compute channel's mailbox on the thread that
//! dispatches it, and one completion thread per device takes every in-flight job's reply, so
//! no daemon thread waits per job (the slot path keeps one spinning on each job's mark).
//!
//! Everything unusual goes through the slot path's code on a thread of its own: a job while
//! another runs alone after a loss, a job with no free channel or too large for a mailbox, and
//! a job whose context was lost (the worker's fatal reply, or the worker gone): the worker is
//! replaced and the job, unless its mark says it was done, runs again alone, exactly as there.
//!
//! Written in a session without a GPU: `scripts/gpu-check.sh`'s `cudaasync` part runs the cuda
//! tests and benchmarks with it, for the measurement that decides its default.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use accel_hal::driver::{DriverError, JobCtx, JobDone, JobOp};
use accel_hal::lock;
use accel_uapi::Errno;
use rustix::event::{PollFd, PollFlags};

use crate::supervisor::{Channel, Claim, Shared};
use crate::wire::{self, Broken, Reply, Request};

/// The asynchronous path's jobs in flight and its completion thread.
#[derive(Default)]
pub(crate) struct Completer {
    jobs: Mutex<Vec<InFlight>>,
    /// Tells the completion thread of a new job.
    more: Condvar,
    started: OnceLock<()>,
}

/// A job in a channel's mailbox.
struct InFlight {
    chan: Arc<Channel>,
    /// The channel is this job's until its reply is taken.
    _claim: Claim,
    /// Its request's mailbox seq: its reply carries the same.
    seq: u32,
    token: u64,
    /// Its channel, and its completion mark's line.
    index: usize,
    generation: u64,
    engine: usize,
    op: JobOp,
    ctx: JobCtx,
    done: JobDone,
}

/// How a start on the asynchronous path went.
enum Start {
    /// In a mailbox: the completion thread has it.
    Sent(Box<InFlight>),
    /// Nothing to run (a null job).
    Nothing(JobDone),
    /// The slot path takes it (no free channel, a request too large for a mailbox, the
    /// channel's last reply still to come).
    Slot(JobDone),
    /// It failed here (what the slot path would say).
    Failed(JobDone, DriverError),
    /// The worker went: the context's loss handling takes it.
    Gone(JobDone, u64, usize, u64),
}

/// How an in-flight job ended.
enum Outcome {
    Reply(Result<Reply, String>),
    /// Its worker was replaced or died.
    Gone,
}

impl Shared {
    /// Starts a job on the asynchronous path (see the module's text).
    pub(crate) fn submit_async(self: &Arc<Self>, engine: usize, op: &JobOp, ctx: &JobCtx, done: JobDone) {
        if !self.turns.start_async() {
            return self.clone().on_slot_path(done, engine, op, ctx);
        }
        match self.start_async(engine, op, ctx, done) {
            Start::Sent(job) => {
                lock(&self.completer.jobs).push(*job);
                self.completer.more.notify_one();
                self.completer.started.get_or_init(|| {
                    let shared = Arc::downgrade(self);
                    if let Err(e) =
                        std::thread::Builder::new().name("cuda-complete".into()).spawn(move || complete_loop(&shared))
                    {
                        tracing::error!("cuda: no completion thread ({e}); jobs in flight fail");
                        for job in std::mem::take(&mut *lock(&self.completer.jobs)) {
                            self.turns.end_async();
                            job.done.complete(Err(DriverError::new(Errno::EAGAIN, "cuda: no completion thread")));
                        }
                    }
                });
            }
            Start::Nothing(done) => {
                self.turns.end_async();
                done.complete(Ok(()));
            }
            Start::Slot(done) => {
                self.turns.end_async();
                self.clone().on_slot_path(done, engine, op, ctx);
            }
            Start::Failed(done, e) => {
                self.turns.end_async();
                done.complete(Err(e));
            }
            Start::Gone(done, generation, index, token) => {
                self.turns.end_async();
                self.clone().lost(done, engine, op.clone(), ctx.clone(), (generation, index, token), None);
            }
        }
    }

    /// Encodes the job and puts it in a free compute channel's mailbox.
    fn start_async(&self, engine: usize, op: &JobOp, ctx: &JobCtx, done: JobDone) -> Start {
        let (chan, index, claim, generation) = self.job_channel(engine);
        let (Some(claim), Some(mailbox)) = (claim, chan.mailbox.as_ref()) else { return Start::Slot(done) };
        let token = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sock = lock(&chan.sock);
        // Requests and replies alternate: a job of the slot path may have left this
        // channel with its reply still to come (it ends at its mark).
        let last = mailbox.request_seq();
        let mut buf = Vec::new();
        if last != 0 && !mailbox.take_reply(last, &mut buf) {
            return Start::Slot(done);
        }
        let wire_op = match self.op(op, &sock, generation) {
            Ok(Some(o)) => o,
            Ok(None) => return Start::Nothing(done),
            Err(Broken::Local(why)) => return Start::Failed(done, DriverError::new(Errno::EINVAL, why)),
            Err(Broken::Gone) => return Start::Gone(done, generation, index, token),
        };
        let Ok(bytes) = postcard::to_stdvec(&Request::Run { op: wire_op, token }) else { return Start::Slot(done) };
        let Ok(seq) = mailbox.put_request(&bytes) else { return Start::Slot(done) };
        // A send that fails means the worker went: the completion thread finds it gone.
        if mailbox.worker_sleeps() {
            let _ = wire::send(&sock, &Request::Wake, &[]);
        }
        drop(sock);
        let (op, ctx) = (op.clone(), ctx.clone());
        Start::Sent(Box::new(InFlight { chan, _claim: claim, seq, token, index, generation, engine, op, ctx, done }))
    }

    /// An in-flight job ended.
    fn finish_async(self: &Arc<Self>, job: InFlight, outcome: Outcome) {
        self.turns.end_async();
        let InFlight { chan, _claim: claim, generation, index, token, engine, op, ctx, done, .. } = job;
        // The channel is free before the job completes: completing it dispatches the next,
        // which wants a free channel.
        drop((claim, chan));
        let lost = match outcome {
            Outcome::Reply(Ok(Reply::Ok)) => return done.complete(Ok(())),
            Outcome::Reply(Ok(Reply::Err { code, message, fatal: false })) => {
                return done.complete(Err(DriverError::new(code, message)))
            }
            Outcome::Reply(Ok(Reply::Err { code, message, fatal: true })) => Some((code, message)),
            Outcome::Reply(Ok(other)) => {
                return done.complete(Err(DriverError::new(Errno::EPROTO, format!("cuda: unexpected reply {other:?}"))))
            }
            Outcome::Reply(Err(why)) => {
                return done.complete(Err(DriverError::new(
                    Errno::EPROTO,
                    format!("cuda: a reply that does not decode: {why}"),
                )))
            }
            Outcome::Gone if ctx.abort.is_aborted() => return done.complete(self.aborted(index, token)),
            Outcome::Gone => None,
        };
        self.clone().lost(done, engine, op, ctx, (generation, index, token), lost);
    }

    /// A job whose context was lost (the worker's fatal error, or the worker gone): the
    /// slot path's handling, on a thread of its own (a worker restart takes a while).
    fn lost(
        self: Arc<Self>,
        done: JobDone,
        engine: usize,
        op: JobOp,
        ctx: JobCtx,
        (generation, index, token): (u64, usize, u64),
        lost: Option<(Errno, String)>,
    ) {
        done.complete_on_thread("cuda", move || {
            let mut replays = 0;
            if self.after_loss(generation, index, token, lost, false, &mut replays)? {
                return Ok(());
            }
            self.run_sync(engine, &op, &ctx, true, replays)
        });
    }

    /// Runs a job through the slot path, on a thread of its own.
    fn on_slot_path(self: Arc<Self>, done: JobDone, engine: usize, op: &JobOp, ctx: &JobCtx) {
        let (op, ctx) = (op.clone(), ctx.clone());
        done.complete_on_thread("cuda", move || self.run_sync(engine, &op, &ctx, false, 0));
    }
}

/// The completion thread: takes the replies of every in-flight job (polling, then sleeping on
/// their channels' sockets, announced in their mailboxes so the worker wakes it), and finds
/// jobs whose worker was replaced or died. Ends with its device.
fn complete_loop(shared: &Weak<Shared>) {
    let mut buf = Vec::new();
    let mut progress_at = Instant::now();
    let mut polls = 0u32;
    while let Some(s) = shared.upgrade() {
        let mut jobs = lock(&s.completer.jobs);
        if jobs.is_empty() {
            jobs = s.completer.more.wait_timeout(jobs, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
            progress_at = Instant::now();
            continue;
        }
        polls = polls.wrapping_add(1);
        // The worker's generation costs a lock: looked at now and then (a restart also
        // closes the old worker's sockets, which the sleep below sees).
        let generation = polls.is_multiple_of(64).then(|| lock(&s.worker).generation);
        let mut ended = Vec::new();
        let mut i = 0;
        while i < jobs.len() {
            let j = &jobs[i];
            let mailbox = j.chan.mailbox.as_ref().expect("an asynchronous job's channel has a mailbox");
            if mailbox.take_reply(j.seq, &mut buf) {
                let reply = postcard::from_bytes::<Reply>(&buf).map_err(|e| e.to_string());
                ended.push((jobs.swap_remove(i), Outcome::Reply(reply)));
            } else if generation.is_some_and(|g| g != j.generation) {
                ended.push((jobs.swap_remove(i), Outcome::Gone));
            } else {
                i += 1;
            }
        }
        if !ended.is_empty() {
            drop(jobs);
            for (job, outcome) in ended {
                s.finish_async(job, outcome);
            }
            progress_at = Instant::now();
            continue;
        }
        if progress_at.elapsed() < wire::reply_poll() {
            drop(jobs);
            std::hint::spin_loop();
            continue;
        }
        // Nothing for a while: sleep on the channels' sockets until a worker's wake-up or a
        // hang-up (or 10 ms, for a job added meanwhile on another channel).
        let chans: Vec<Arc<Channel>> = jobs.iter().map(|j| j.chan.clone()).collect();
        drop(jobs);
        sleep_on(&chans, &mut buf);
        let gone: Vec<usize> = chans.iter().enumerate().filter(|(_, c)| hung_up(c)).map(|(i, _)| i).collect();
        if !gone.is_empty() {
            let mut jobs = lock(&s.completer.jobs);
            let (dead, alive): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut *jobs)
                .into_iter()
                .partition(|j| gone.iter().any(|&g| Arc::ptr_eq(&chans[g], &j.chan)));
            *jobs = alive;
            drop(jobs);
            for job in dead {
                s.finish_async(job, Outcome::Gone);
            }
        }
        progress_at = Instant::now();
    }
}

/// Announces a sleep in each channel's mailbox, looks once more, then blocks on their sockets
/// for at most 10 ms; takes the wake-ups that came.
fn sleep_on(chans: &[Arc<Channel>], buf: &mut Vec<u8>) {
    let mailboxes = || chans.iter().filter_map(|c| c.mailbox.as_ref());
    mailboxes().for_each(|m| m.daemon_sleeping(true));
    let any_reply = chans.iter().any(|c| {
        let m = c.mailbox.as_ref().expect("a mailbox");
        m.take_reply(m.request_seq(), buf)
    });
    if !any_reply {
        let socks: Vec<_> = chans.iter().map(|c| lock(&c.sock)).collect();
        let mut fds: Vec<PollFd<'_>> =
            socks.iter().map(|s| PollFd::new(&**s, PollFlags::IN | PollFlags::RDHUP)).collect();
        let ts = rustix::time::Timespec { tv_sec: 0, tv_nsec: 10_000_000 };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        for (sock, fd) in socks.iter().zip(&fds) {
            if fd.revents().contains(PollFlags::IN) {
                // A wake-up (or a stale one); a hang-up is for `hung_up` to see.
                while let Ok(Some(_)) = wire::try_recv::<Reply>(sock) {}
            }
        }
    }
    mailboxes().for_each(|m| m.daemon_sleeping(false));
}

/// Whether a channel's worker end is closed (the worker exited or was killed).
fn hung_up(chan: &Channel) -> bool {
    let sock = lock(&chan.sock);
    let mut fds = [PollFd::new(&*sock, PollFlags::RDHUP)];
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    let _ = rustix::event::poll(&mut fds, Some(&zero));
    fds[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR)
}
