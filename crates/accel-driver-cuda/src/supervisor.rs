//! The daemon's side of a GPU's worker process: spawning it, the channels jobs travel on
//! (socket and mailbox), what it must hold again after a restart (every allocation, every
//! program), and restarting it after a context loss or a job timeout.

use super::*;

/// How many times a job caught in another's fault runs again before it fails.
pub(crate) const MAX_REPLAYS: u32 = 2;

/// One channel to the worker; `busy` while a job holds it (compute channels are picked
/// among the free ones).
pub(crate) struct Channel {
    pub(crate) sock: Mutex<OwnedFd>,
    pub(crate) busy: std::sync::atomic::AtomicBool,
    /// Where jobs go (a job channel's; see `mailbox.rs`).
    pub(crate) mailbox: Option<mailbox::Mailbox>,
}

/// A compute channel held for one job; freed when dropped.
pub(crate) struct Claim(Arc<Channel>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// The worker process now serving the device, and its channels.
pub(crate) struct Worker {
    pub(crate) child: Child,
    /// Control, one per compute stream, copy (see `wire.rs`).
    pub(crate) channels: Vec<Arc<Channel>>,
    /// Counts workers started: a caller that saw worker `n` die restarts only that one.
    pub(crate) generation: u64,
    /// Host memfds this worker has mapped, and the buffers they belong to.
    pub(crate) hosts: HashMap<(u64, u64), Weak<BufferObject>>,
}

/// Device memory as the daemon holds it: the worker's id, and the descriptor that keeps the
/// memory alive across workers.
pub(crate) struct MemRecord {
    pub(crate) id: u64,
    pub(crate) fd: OwnedFd,
    pub(crate) len: u64,
}

/// A program as the daemon holds it: the worker's id, and its image (reloaded by new
/// workers).
pub(crate) struct ProgramRecord {
    pub(crate) id: u64,
    pub(crate) format: wire::ProgramFormat,
    pub(crate) image: Vec<u8>,
}

/// The daemon side of one GPU.
pub(crate) struct Shared {
    pub(crate) ordinal: usize,
    /// Compute streams (and channels) of each worker.
    pub(crate) compute: usize,
    /// The completion marks each worker's streams write (see `worker.rs`): one u64 per
    /// channel after control, at 64-byte strides; kept across workers.
    pub(crate) marks: HostMemory,
    /// Jobs run beside each other; a job run again after a context loss runs alone, so that
    /// a fault then is its own.
    pub(crate) turns: accel_hal::turns::Turns,
    /// The compute engine completes jobs asynchronously (`$ACCEL_CUDA_ASYNC=1`).
    pub(crate) asynchronous: bool,
    /// The asynchronous path's jobs in flight and its completion thread.
    pub(crate) completer: crate::completer::Completer,
    pub(crate) identity: Identity,
    pub(crate) worker: Mutex<Worker>,
    pub(crate) mems: Mutex<HashMap<u64, Weak<MemRecord>>>,
    pub(crate) programs: Mutex<HashMap<u64, Weak<ProgramRecord>>>,
    pub(crate) next_id: AtomicU64,
    /// Workers started after the first (faults and hangs contained).
    pub(crate) restarts: AtomicU64,
}

/// Starts a worker for GPU `ordinal` with `compute` compute streams: `accel cuda-worker
/// <ordinal> <compute>` (this executable, or `$ACCEL_CUDA_WORKER`) with its channels at
/// descriptors 3 on. Returns it and its identity.
pub(crate) fn spawn_worker(
    ordinal: usize,
    compute: usize,
    marks: &HostMemory,
    generation: u64,
) -> Result<(Worker, Identity), DriverError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| DriverError::new(Errno::EIO, format!("cuda: {what}: {e}"))
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let channels = wire::copy_channel(compute) + 1;
    for _ in 0..channels {
        let (a, b) = wire::socket_pair().map_err(|e| DriverError::new(Errno::EIO, format!("cuda: socketpair: {e}")))?;
        ours.push(a);
        theirs.push(b);
    }
    let exe = match std::env::var_os("ACCEL_CUDA_WORKER") {
        Some(path) => path.into(),
        None => std::env::current_exe().map_err(io("locating the accel executable"))?,
    };
    let mut cmd = Command::new(exe);
    cmd.arg("cuda-worker").arg(ordinal.to_string()).arg(compute.to_string());
    let mut raw = [0i32; MAX_CHANNELS];
    for (r, fd) in raw.iter_mut().zip(&theirs) {
        *r = std::os::fd::AsRawFd::as_raw_fd(fd);
    }
    // SAFETY: between fork and exec only async-signal-safe calls and no allocation.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || place_channels(&raw[..channels]));
    }
    let child = cmd.spawn().map_err(io("starting the cuda worker"))?;
    drop(theirs);
    let mut w = Worker {
        child,
        channels: ours
            .into_iter()
            .map(|fd| {
                Arc::new(Channel {
                    sock: Mutex::new(fd),
                    busy: std::sync::atomic::AtomicBool::new(false),
                    mailbox: None,
                })
            })
            .collect(),
        generation,
        hosts: HashMap::new(),
    };
    let hello = {
        let sock = lock(&w.channels[CONTROL].sock);
        wire::call(&sock, &Request::Hello, &[]).and_then(|hello| match hello {
            (Reply::Hello(_), _) => match wire::call(&sock, &Request::Marks, &[marks.fd()])? {
                (Reply::Ok, _) => Ok(hello),
                other => Ok(other),
            },
            other => Ok(other),
        })
    };
    // Each job channel's mailbox.
    let hello = hello.and_then(|hello| {
        if !matches!(hello, (Reply::Hello(_), _)) {
            return Ok(hello);
        }
        for chan in w.channels.iter_mut().skip(1) {
            let mailbox = mailbox::Mailbox::new().map_err(|e| Broken::Local(e.message))?;
            let chan = Arc::get_mut(chan).ok_or_else(|| Broken::Local("a channel in use".into()))?;
            match wire::call(&lock(&chan.sock), &Request::Mailbox, &[mailbox.fd()])? {
                (Reply::Ok, _) => chan.mailbox = Some(mailbox),
                other => return Ok(other),
            }
        }
        Ok(hello)
    });
    match hello {
        Ok((Reply::Hello(identity), _)) => Ok((w, identity)),
        Ok((Reply::Err { code, message, .. }, _)) => {
            let _ = w.child.wait();
            Err(DriverError::new(code, message))
        }
        other => {
            let _ = w.child.kill();
            let _ = w.child.wait();
            Err(DriverError::new(Errno::EIO, format!("cuda: the worker did not start ({other:?})")))
        }
    }
}

/// In the forked child: puts the channels at descriptors 3 on (open across exec). First
/// out of the way (a channel may already sit on one of those), then into place.
pub(crate) fn place_channels(raw: &[i32]) -> std::io::Result<()> {
    use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd};
    let mut high = [0i32; MAX_CHANNELS];
    for (h, fd) in high.iter_mut().zip(raw) {
        // SAFETY: the channel descriptors are open in the child.
        let dup = rustix::io::fcntl_dupfd_cloexec(unsafe { BorrowedFd::borrow_raw(*fd) }, 64)?;
        *h = dup.into_raw_fd();
    }
    for (i, h) in high[..raw.len()].iter().enumerate() {
        // SAFETY: `to` is a descriptor number this process may replace; it is not closed here.
        let mut to = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(worker::FIRST_FD + i as i32) });
        // SAFETY: `h` was opened above.
        rustix::io::dup2(unsafe { BorrowedFd::borrow_raw(*h) }, &mut to)?;
    }
    Ok(())
}

impl Shared {
    /// The control channel of the live worker and its generation.
    pub(crate) fn control_channel(&self) -> (Arc<Channel>, u64) {
        let w = lock(&self.worker);
        (w.channels[CONTROL].clone(), w.generation)
    }

    /// A channel for a job on `engine` (0 compute, 1 copy), its index and the worker's
    /// generation: a compute channel no other job holds, claimed until the claim drops.
    pub(crate) fn job_channel(&self, engine: usize) -> (Arc<Channel>, usize, Option<Claim>, u64) {
        let w = lock(&self.worker);
        if engine != 0 {
            let c = wire::copy_channel(self.compute);
            return (w.channels[c].clone(), c, None, w.generation);
        }
        for i in 0..self.compute {
            let c = wire::compute_channel(i);
            let chan = &w.channels[c];
            if chan.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return (chan.clone(), c, Some(Claim(chan.clone())), w.generation);
            }
        }
        // As many compute slots as channels: not reached, but waiting on the first is safe.
        let c = wire::compute_channel(0);
        (w.channels[c].clone(), c, None, w.generation)
    }

    /// The last token channel `c`'s stream wrote to its completion mark.
    pub(crate) fn mark(&self, c: usize) -> u64 {
        debug_assert!((1..MAX_CHANNELS).contains(&c));
        // SAFETY: the page is MAX_CHANNELS · 64 bytes at least, 8-byte aligned at each line;
        // the GPU writes it (u64 stores), so it is read atomically.
        let word = unsafe { &*self.marks.as_ptr().add(64 * (c - 1)).cast::<AtomicU64>() };
        word.load(Ordering::Acquire)
    }

    /// Worker `generation` is gone (or must go): kill it, start another, and give it every
    /// live allocation and program. Later callers that saw the same generation find it done.
    pub(crate) fn restart(&self, generation: u64, why: &str) -> Result<(), DriverError> {
        let mut w = lock(&self.worker);
        if w.generation != generation {
            return Ok(());
        }
        let _ = w.child.kill();
        let status = w.child.wait().map(|s| s.to_string()).unwrap_or_default();
        let (mut fresh, _) = spawn_worker(self.ordinal, self.compute, &self.marks, generation + 1)
            .map_err(|e| DriverError::device_lost(format!("cuda: restarting the worker: {}", e.message)))?;
        let mems: Vec<Arc<MemRecord>> = {
            let mut m = lock(&self.mems);
            m.retain(|_, r| r.strong_count() > 0);
            m.values().filter_map(Weak::upgrade).collect()
        };
        let programs: Vec<Arc<ProgramRecord>> = {
            let mut p = lock(&self.programs);
            p.retain(|_, r| r.strong_count() > 0);
            p.values().filter_map(Weak::upgrade).collect()
        };
        {
            let sock = lock(&fresh.channels[CONTROL].sock);
            for m in &mems {
                let req = Request::Import { id: m.id, len: m.len };
                expect_ok(wire::call(&sock, &req, &[m.fd.as_fd()]), "mapping memory again")
                    .map_err(|e| DriverError::device_lost(e.message))?;
            }
            for p in &programs {
                let image = image_memfd(&p.image)?;
                let fd = image.dup_fd().map_err(|e| DriverError::new(e.code, e.message))?;
                let reload = wire::call(&sock, &Request::Load { id: p.id, format: p.format }, &[fd.as_fd()]);
                let reload = match reload {
                    Ok((Reply::Program(_), fds)) => Ok((Reply::Ok, fds)),
                    other => other,
                };
                expect_ok(reload, "reloading a program").map_err(|e| DriverError::device_lost(e.message))?;
            }
        }
        std::mem::swap(&mut *w, &mut fresh);
        drop(fresh); // the old worker's channels
        self.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "cuda{}: worker restarted after {why} (old worker: {status}); {} allocations and {} programs carried over",
            self.ordinal,
            mems.len(),
            programs.len()
        );
        Ok(())
    }

    /// Makes sure the worker has mapped the host memory of `bo` (sending its memfd once).
    pub(crate) fn share_host(
        &self,
        chan: &OwnedFd,
        bo: &Arc<BufferObject>,
        generation: u64,
    ) -> Result<(u64, u64), Broken> {
        let host = bo.host().ok_or_else(|| Broken::Local("a buffer with no memory".into()))?;
        let key = host.inode();
        {
            let mut w = lock(&self.worker);
            if w.generation != generation {
                return Err(Broken::Gone);
            }
            if w.hosts.get(&key).is_some_and(|b| b.strong_count() > 0) {
                return Ok(key);
            }
            // Forget buffers that are gone (their memfds stay mapped in the worker otherwise).
            let dead: Vec<_> = w.hosts.iter().filter(|(_, b)| b.strong_count() == 0).map(|(k, _)| *k).collect();
            for k in dead {
                w.hosts.remove(&k);
                let _ = wire::call(&lock(&w.channels[CONTROL].sock), &Request::Forget { key: k }, &[]);
            }
        }
        let (reply, _) = wire::call(chan, &Request::Host { key }, &[host.fd()])?;
        if let Reply::Err { message, .. } = reply {
            return Err(Broken::Local(message));
        }
        let mut w = lock(&self.worker);
        if w.generation == generation {
            w.hosts.insert(key, Arc::downgrade(bo));
        }
        Ok(key)
    }

    /// An operand as the worker names it.
    pub(crate) fn range(&self, r: &BoRange, chan: &OwnedFd, generation: u64) -> Result<wire::Range, Broken> {
        if let Some(m) = r.bo.device() {
            let m = m
                .as_any()
                .downcast_ref::<CudaMem>()
                .ok_or_else(|| Broken::Local("cuda: another device's memory".into()))?;
            return Ok(wire::Range::Device { id: m.record.id, offset: r.offset as u64, len: r.len as u64 });
        }
        let key = self.share_host(chan, &r.bo, generation)?;
        Ok(wire::Range::Host { key, offset: r.offset as u64, len: r.len as u64 })
    }

    pub(crate) fn matrix(&self, m: &BoMatrix, chan: &OwnedFd, generation: u64) -> Result<wire::Matrix, Broken> {
        Ok(wire::Matrix {
            range: self.range(&m.range, chan, generation)?,
            rows: m.rows,
            cols: m.cols,
            row_stride: m.row_stride,
        })
    }

    pub(crate) fn op(&self, op: &JobOp, chan: &OwnedFd, generation: u64) -> Result<Option<wire::Op>, Broken> {
        Ok(Some(match op {
            JobOp::Nop => return Ok(None),
            JobOp::Fill { dst, pattern } => {
                wire::Op::Fill { dst: self.range(dst, chan, generation)?, pattern: *pattern }
            }
            JobOp::Copy { src, dst } => {
                wire::Op::Copy { src: self.range(src, chan, generation)?, dst: self.range(dst, chan, generation)? }
            }
            JobOp::GemmF32 { a, b, c, alpha, beta } => wire::Op::Gemm {
                a: self.matrix(a, chan, generation)?,
                b: self.matrix(b, chan, generation)?,
                c: self.matrix(c, chan, generation)?,
                alpha: *alpha,
                beta: *beta,
                ty: Elem::F32,
            },
            JobOp::Gemm16 { a, b, c, alpha, beta, ty } => wire::Op::Gemm {
                a: self.matrix(a, chan, generation)?,
                b: self.matrix(b, chan, generation)?,
                c: self.matrix(c, chan, generation)?,
                alpha: *alpha,
                beta: *beta,
                ty: match ty {
                    Float16::F16 => Elem::F16,
                    Float16::Bf16 => Elem::Bf16,
                },
            },
            JobOp::Launch { program, entry, grid, args } => {
                let p = program
                    .as_any()
                    .downcast_ref::<CudaProgram>()
                    .ok_or_else(|| Broken::Local("cuda: a program of another driver".into()))?;
                let mut wire_args = Vec::with_capacity(args.len());
                for a in args {
                    wire_args.push(match a {
                        JobArg::Buffer(r) => wire::Arg::Buffer(self.range(r, chan, generation)?),
                        JobArg::U32(x) => wire::Arg::U32(*x),
                        JobArg::U64(x) => wire::Arg::U64(*x),
                        JobArg::F32(x) => wire::Arg::F32(*x),
                    });
                }
                wire::Op::Launch { program: p.record.id, entry: *entry, grid: *grid, args: wire_args }
            }
            JobOp::Driver { code, .. } => {
                return Err(Broken::Local(format!("cuda: no driver op {code}")));
            }
        }))
    }

    /// A control request, restarting a dead worker once.
    pub(crate) fn control(
        self: &Arc<Self>,
        req: &Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), DriverError> {
        for _ in 0..2 {
            let (chan, generation) = self.control_channel();
            let r = wire::call(&lock(&chan.sock), req, fds);
            match r {
                Ok((Reply::Err { code, message, fatal }, _)) => {
                    if fatal {
                        self.restart(generation, &message)?;
                    }
                    return Err(DriverError::new(code, message));
                }
                Ok(ok) => return Ok(ok),
                Err(Broken::Local(why)) => return Err(DriverError::new(Errno::EINVAL, why)),
                Err(Broken::Gone) => self.restart(generation, "the worker exited")?,
            }
        }
        Err(DriverError::new(Errno::EIO, "cuda: the worker keeps exiting"))
    }
}

impl Shared {
    /// Runs a job in the worker on this thread (the slot path): beside other jobs, or alone
    /// (`solo`: a run again after a loss, `replays` so far). When the worker's context is
    /// lost under it, see [`Shared::after_loss`].
    pub(crate) fn run_sync(
        &self,
        engine: usize,
        op: &JobOp,
        ctx: &JobCtx,
        mut solo: bool,
        mut replays: u32,
    ) -> Result<(), DriverError> {
        loop {
            // A turn beside other jobs, or alone on the device (a run again after a loss).
            let _beside = (!solo).then(|| self.turns.beside());
            let _alone = solo.then(|| self.turns.alone());
            let (chan, index, claim, generation) = self.job_channel(engine);
            let token = self.next_id.fetch_add(1, Ordering::Relaxed);
            let sock = lock(&chan.sock);
            // The job is done when its completion mark says so, as a hardware fence is; the
            // worker's reply (once the work is done) may come later, before its next job.
            let done = || self.mark(index) == token;
            let reply = self.op(op, &sock, generation).and_then(|op| match (op, &chan.mailbox) {
                (None, _) => Ok(Some(Reply::Ok)),
                (Some(op), Some(mailbox)) => wire::call_mailbox(&sock, mailbox, &Request::Run { op, token }, &done),
                (Some(op), None) => wire::call(&sock, &Request::Run { op, token }, &[]).map(|(r, _)| Some(r)),
            });
            drop(sock);
            drop(claim);
            let lost = match reply {
                Ok(None) | Ok(Some(Reply::Ok)) => return Ok(()),
                Ok(Some(Reply::Err { code, message, fatal: true })) => Some((code, message)),
                Ok(Some(Reply::Err { code, message, .. })) => return Err(DriverError::new(code, message)),
                Ok(Some(other)) => {
                    return Err(DriverError::new(Errno::EPROTO, format!("cuda: unexpected reply {other:?}")))
                }
                Err(Broken::Local(why)) => return Err(DriverError::new(Errno::EINVAL, why)),
                Err(Broken::Gone) if ctx.abort.is_aborted() => return self.aborted(index, token),
                Err(Broken::Gone) => None,
            };
            if self.after_loss(generation, index, token, lost, solo, &mut replays)? {
                return Ok(());
            }
            solo = true;
        }
    }

    /// A job whose worker went while the job was aborted (killed for a timeout, this job's
    /// or another's, or its client left): the core decides, unless its work was done.
    pub(crate) fn aborted(&self, index: usize, token: u64) -> Result<(), DriverError> {
        if self.mark(index) == token {
            return Ok(());
        }
        Err(DriverError::new(Errno::ECANCELED, "cuda: job aborted"))
    }

    /// The context of worker `generation` was lost under a job (`lost`: the worker's fatal
    /// error, or `None`: the worker died): replaces the worker (unless done already). True
    /// when the job's mark says its work was done (it succeeded); false when it must run
    /// again alone; an error when it is the culprit (alone already) or its worker kept dying.
    pub(crate) fn after_loss(
        &self,
        generation: u64,
        index: usize,
        token: u64,
        lost: Option<(Errno, String)>,
        solo: bool,
        replays: &mut u32,
    ) -> Result<bool, DriverError> {
        let done = self.mark(index) == token;
        let why = lost.as_ref().map_or("the worker exited", |(_, m)| m.as_str());
        self.restart(generation, why)?;
        if done {
            // Its work was done before the context went: nothing to run again.
            return Ok(true);
        }
        match lost {
            Some((code, message)) if solo => {
                let code = if code == Errno::EIO { Errno::EFAULT } else { code };
                Err(DriverError::new(
                    code,
                    format!(
                        "{message} (this job's fault, alone on the device; its worker was replaced, other clients carry on)"
                    ),
                ))
            }
            Some(_) => Ok(false),
            None => {
                *replays += 1;
                if *replays > MAX_REPLAYS {
                    return Err(DriverError::new(Errno::EIO, "cuda: the worker died under this job each time"));
                }
                Ok(false)
            }
        }
    }
}
