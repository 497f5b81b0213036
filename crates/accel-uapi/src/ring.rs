//! Shared-memory submission and completion rings (the job fast path).
//!
//! One ring per queue, in one memfd mapped by the client and the daemon:
//!
//! ```text
//! offset 0    header: four u32 counters/flags, each on its own 64-byte cache line, then ring
//!             info, then the client's spin hint and the daemon's spin budget, each on its
//!             own line
//! offset 512  SQ: sq_entries × 128-byte Sqe   (client writes, daemon reads)
//! then        CQ: cq_entries × 32-byte Cqe    (daemon writes, client reads)
//! ```
//!
//! Indices are free-running u32 counters; slot = counter mod entries. An entry is
//! valid when its `seq` equals its counter + 1: the producer writes the entry's body,
//! then stores `seq` with release ordering, and the consumer polls `seq` of the next
//! slot. So data and "ready" travel in one cache line, and a round trip costs two
//! cross-core transfers each way at most (entry, completion), like a bare ping-pong.
//! Consumers publish how far they got (`sq_head` by the daemon, `cq_head` by the
//! client) so producers never overwrite an unread slot.
//!
//! The daemon never trusts what the client wrote: it copies each entry out before
//! decoding it, masks every index, and bounds every count by the ring size, so a
//! client that scribbles over its ring can only get error completions or lose its
//! own work.
//!
//! Wake-ups: the daemon's poller sets a ring's `poller_sleeping` before it stops looking
//! at it (an idle ring; the poller sleeps once all are idle); a client that publishes work
//! and then sees the flag writes the ring's doorbell. The client sets `client_waiting` before it
//! blocks on its ring's completion eventfd; the daemon writes it after publishing
//! a completion if the flag is set. Both sides use a SeqCst fence between
//! publishing and checking the other side's flag (Dekker), so no wake-up is lost.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::shm::Mapping;
use crate::{
    BoHandle, BufView, Errno, Float16, Gemm16, GemmF32, Launch, LaunchArg, MatView, Op, ProgramHandle, SyncobjHandle,
    MAX_LAUNCH_ARGS,
};

/// `"ARNG"`: first word of the ring info.
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"ARNG");
/// Largest submission ring.
pub const MAX_RING_ENTRIES: u32 = 4096;
/// How many failed entries' messages a ring keeps for [`crate::Request::RingErrors`]; older
/// ones are dropped (and counted).
pub const MAX_RING_ERRORS: usize = 256;
/// Bytes of one submission entry.
pub const SQE_SIZE: usize = std::mem::size_of::<Sqe>();
/// Bytes of one completion entry.
pub const CQE_SIZE: usize = std::mem::size_of::<Cqe>();
const LINE: usize = 64;
/// Byte offset of `sq_head` (u32, written by the daemon).
pub const SQ_HEAD: usize = 0;
/// Byte offset of `cq_head` (u32, written by the client).
pub const CQ_HEAD: usize = LINE;
/// Byte offset of `poller_sleeping` (u32, written by the daemon; 1 at creation).
pub const POLLER_SLEEPING: usize = 2 * LINE;
/// Byte offset of `client_waiting` (u32, written by the client).
pub const CLIENT_WAITING: usize = 3 * LINE;
/// Byte offset of the ring info: magic, sq_entries, cq_entries (u32 each, read-only).
pub const INFO: usize = 4 * LINE;
/// Byte offset of `client_spins` (u32, written by the client): non-zero while the client
/// spins for its completions rather than blocking, so the poller keeps watching the ring
/// while the ring has jobs in flight (the next submission then needs no doorbell).
pub const CLIENT_SPINS: usize = 5 * LINE;
/// Byte offset of `spin_budget` (u32, written by the daemon; 0 until its first submission):
/// how many microseconds the client's default wait should spin before it blocks, as the
/// daemon judges from how many rings have jobs in flight on how many CPUs
/// ([`crate::spin::ring_wait`]).
pub const SPIN_BUDGET: usize = 6 * LINE;
/// Byte offset of `seq` inside both entry types.
pub const SEQ_OFFSET: usize = 8;
const _: () = assert!(std::mem::offset_of!(Sqe, seq) == SEQ_OFFSET && std::mem::offset_of!(Cqe, seq) == SEQ_OFFSET);
/// Bytes before the submission array.
pub const HEADER_LEN: usize = 8 * LINE;

/// Submission opcodes.
pub mod opcode {
    /// [`crate::Op::Nop`].
    pub const NOP: u16 = 0;
    /// [`crate::Op::Fill`]: args = bo, offset, len, pattern.
    pub const FILL: u16 = 1;
    /// [`crate::Op::Copy`]: args = src bo, offset, len, dst bo, offset, len.
    pub const COPY: u16 = 2;
    /// [`crate::Op::GemmF32`]: args = m, n, k, then (bo, offset, row stride) of A, B, C, then alpha | beta << 32 as f32 bits.
    pub const GEMM_F32: u16 = 3;
    /// [`crate::Op::Driver`]: args = code, arg0..arg3.
    pub const DRIVER: u16 = 4;
    /// A null job that waits for syncobj points and then signals others, as a queue
    /// submission's wait and signal semaphores do: the queue runs in order, so entries after
    /// it wait too, and it signals once the entries before it completed. `args[0]` = number of
    /// waits | number of signals << 8 (together at most [`super::MAX_SYNC_POINTS`]), then
    /// (syncobj handle, point) pairs, the waits first. A wait point not submitted yet is
    /// waited for (`WAIT_FOR_SUBMIT`). See [`super::Sqe::sync`].
    pub const SYNC: u16 = 5;
    /// [`crate::Op::Launch`]: args = program, entry | argument kinds << 32 (four bits each:
    /// 1 buffer, 2 u32, 3 u64, 4 f32), grid x | y << 32, grid z, then the argument values
    /// (a buffer takes bo, offset, len; a scalar one word), ten words at most.
    pub const LAUNCH: u16 = 6;
    /// [`crate::Op::Gemm16`]: args as [`GEMM_F32`]'s, then the element type (0 f16, 1 bf16).
    pub const GEMM16: u16 = 7;
}

/// Most wait and signal points of one [`opcode::SYNC`] entry, together.
pub const MAX_SYNC_POINTS: usize = 6;

/// The points of a [`opcode::SYNC`] entry: (syncobj, point) pairs.
pub type SyncPoints = Vec<(SyncobjHandle, u64)>;

/// A submission entry: one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Sqe {
    /// Returned unchanged in the job's completion.
    pub user_data: u64,
    /// Ring counter + 1 of this entry; written last (see the module docs).
    pub seq: u32,
    /// One of [`opcode`].
    pub opcode: u16,
    /// Must be 0 (reserved).
    pub flags: u16,
    /// Operands, per opcode.
    pub args: [u64; 14],
}

/// A completion entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Cqe {
    /// The submission's `user_data`.
    pub user_data: u64,
    /// Ring counter + 1 of this entry; written last.
    pub seq: u32,
    /// 0 on success, else minus an errno (the job's fence error or why the entry was refused).
    pub result: i32,
    /// `CLOCK_MONOTONIC` ns at completion.
    pub timestamp: u64,
    /// Device sequence number of the job (0 if the entry was refused before it became a job).
    pub seqno: u64,
}

impl Cqe {
    /// The result as `Ok(())` or the errno (`EIO` for a value that is not one accel uses).
    pub fn status(&self) -> Result<(), Errno> {
        match self.result {
            0 => Ok(()),
            r => Err(Errno::from_raw(r.unsigned_abs()).unwrap_or(Errno::EIO)),
        }
    }
}

fn mat_args(m: &MatView) -> [u64; 3] {
    [m.bo.0, m.offset, m.row_stride]
}

fn mat_from(a: &[u64]) -> MatView {
    MatView { bo: BoHandle(a[0]), offset: a[1], row_stride: a[2] }
}

/// A GEMM's words: m, n, k, then A, B, C, then alpha | beta << 32 (f32 bits).
fn gemm_args(args: &mut [u64; 14], g: &GemmF32) {
    args[..3].copy_from_slice(&[g.m, g.n, g.k]);
    args[3..6].copy_from_slice(&mat_args(&g.a));
    args[6..9].copy_from_slice(&mat_args(&g.b));
    args[9..12].copy_from_slice(&mat_args(&g.c));
    args[12] = u64::from(g.alpha.to_bits()) | u64::from(g.beta.to_bits()) << 32;
}

fn gemm_from(a: &[u64; 14]) -> GemmF32 {
    GemmF32 {
        m: a[0],
        n: a[1],
        k: a[2],
        a: mat_from(&a[3..6]),
        b: mat_from(&a[6..9]),
        c: mat_from(&a[9..12]),
        alpha: f32::from_bits(a[12] as u32),
        beta: f32::from_bits((a[12] >> 32) as u32),
    }
}

impl Sqe {
    /// Encodes an operation. A launch whose arguments do not fit ([`Sqe::try_encode`])
    /// becomes an entry of an unknown opcode, which completes with `EINVAL`.
    pub fn encode(op: &Op, user_data: u64) -> Sqe {
        Self::try_encode(op, user_data).unwrap_or(Sqe { user_data, seq: 0, opcode: u16::MAX, flags: 0, args: [0; 14] })
    }

    /// Encodes an operation; `E2BIG` for a launch whose arguments need more than the ten
    /// words an entry has for them (a buffer takes three, a scalar one).
    pub fn try_encode(op: &Op, user_data: u64) -> Result<Sqe, Errno> {
        let mut args = [0u64; 14];
        let opcode = match op {
            Op::Nop => opcode::NOP,
            Op::Fill { dst, pattern } => {
                args[..4].copy_from_slice(&[dst.bo.0, dst.offset, dst.len, u64::from(*pattern)]);
                opcode::FILL
            }
            Op::Copy { src, dst } => {
                args[..6].copy_from_slice(&[src.bo.0, src.offset, src.len, dst.bo.0, dst.offset, dst.len]);
                opcode::COPY
            }
            Op::GemmF32(g) => {
                gemm_args(&mut args, g);
                opcode::GEMM_F32
            }
            Op::Gemm16(g) => {
                let (shape, ty) = g.split();
                gemm_args(&mut args, &shape);
                args[13] = match ty {
                    Float16::F16 => 0,
                    Float16::Bf16 => 1,
                };
                opcode::GEMM16
            }
            Op::Driver { code, args: a } => {
                args[0] = u64::from(*code);
                args[1..5].copy_from_slice(a);
                opcode::DRIVER
            }
            Op::Launch(l) => {
                args[0] = l.program.0;
                args[2] = u64::from(l.grid[0]) | u64::from(l.grid[1]) << 32;
                args[3] = u64::from(l.grid[2]);
                let (mut kinds, mut at) = (0u64, 4usize);
                for (i, a) in l.given().iter().enumerate() {
                    let (kind, words): (u64, &[u64]) = match a {
                        LaunchArg::None => (0, &[]),
                        LaunchArg::Buffer(v) => (1, &[v.bo.0, v.offset, v.len]),
                        LaunchArg::U32(x) => (2, &[u64::from(*x)]),
                        LaunchArg::U64(x) => (3, &[*x]),
                        LaunchArg::F32(x) => (4, &[u64::from(x.to_bits())]),
                    };
                    if at + words.len() > args.len() {
                        return Err(Errno::E2BIG);
                    }
                    args[at..at + words.len()].copy_from_slice(words);
                    at += words.len();
                    kinds |= kind << (4 * i);
                }
                args[1] = u64::from(l.entry) | kinds << 32;
                opcode::LAUNCH
            }
        };
        Ok(Sqe { user_data, seq: 0, opcode, flags: 0, args })
    }

    /// A [`opcode::SYNC`] entry; `E2BIG` past [`MAX_SYNC_POINTS`] points.
    pub fn sync(
        waits: &[(SyncobjHandle, u64)],
        signals: &[(SyncobjHandle, u64)],
        user_data: u64,
    ) -> Result<Sqe, Errno> {
        if waits.len() + signals.len() > MAX_SYNC_POINTS {
            return Err(Errno::E2BIG);
        }
        let mut args = [0u64; 14];
        args[0] = waits.len() as u64 | (signals.len() as u64) << 8;
        for (i, (h, p)) in waits.iter().chain(signals).enumerate() {
            args[1 + 2 * i] = h.0;
            args[2 + 2 * i] = *p;
        }
        Ok(Sqe { user_data, seq: 0, opcode: opcode::SYNC, flags: 0, args })
    }

    /// The (waits, signals) of a [`opcode::SYNC`] entry; `EINVAL` for any other entry or
    /// bad counts.
    pub fn decode_sync(&self) -> Result<(SyncPoints, SyncPoints), Errno> {
        let (waits, signals) = ((self.args[0] & 0xff) as usize, (self.args[0] >> 8) as usize);
        if self.opcode != opcode::SYNC || self.flags != 0 || waits + signals > MAX_SYNC_POINTS {
            return Err(Errno::EINVAL);
        }
        let pair = |i: usize| (SyncobjHandle(self.args[1 + 2 * i]), self.args[2 + 2 * i]);
        Ok(((0..waits).map(pair).collect(), (waits..waits + signals).map(pair).collect()))
    }

    /// Decodes an entry a client wrote. Unknown opcodes, set flags, or values that do
    /// not fit their field are `EINVAL`; bounds are checked later, against the buffers.
    /// Opcodes other than GEMM, SYNC and LAUNCH use args 0..=5 only (the entry's first cache line).
    /// A [`opcode::SYNC`] entry is not an operation: `EINVAL` here, see [`Sqe::decode_sync`].
    pub fn decode(&self) -> Result<Op, Errno> {
        if self.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let a = &self.args;
        let view = |i: usize| BufView { bo: BoHandle(a[i]), offset: a[i + 1], len: a[i + 2] };
        Ok(match self.opcode {
            opcode::NOP => Op::Nop,
            opcode::FILL => Op::Fill { dst: view(0), pattern: u32::try_from(a[3]).map_err(|_| Errno::EINVAL)? },
            opcode::COPY => Op::Copy { src: view(0), dst: view(3) },
            opcode::GEMM_F32 => Op::GemmF32(gemm_from(a)),
            opcode::GEMM16 => Op::Gemm16(Gemm16::of(
                gemm_from(a),
                match a[13] {
                    0 => Float16::F16,
                    1 => Float16::Bf16,
                    _ => return Err(Errno::EINVAL),
                },
            )),
            opcode::DRIVER => {
                Op::Driver { code: u32::try_from(a[0]).map_err(|_| Errno::EINVAL)?, args: [a[1], a[2], a[3], a[4]] }
            }
            opcode::LAUNCH => {
                let kinds = a[1] >> 32;
                let mut out = [LaunchArg::None; MAX_LAUNCH_ARGS];
                let mut at = 4usize;
                for (i, slot) in out.iter_mut().enumerate() {
                    let kind = (kinds >> (4 * i)) & 0xf;
                    let need = match kind {
                        0 => break,
                        1 => 3,
                        2..=4 => 1,
                        _ => return Err(Errno::EINVAL),
                    };
                    let w = a.get(at..at + need).ok_or(Errno::EINVAL)?;
                    *slot = match kind {
                        1 => LaunchArg::Buffer(BufView { bo: BoHandle(w[0]), offset: w[1], len: w[2] }),
                        2 => LaunchArg::U32(u32::try_from(w[0]).map_err(|_| Errno::EINVAL)?),
                        3 => LaunchArg::U64(w[0]),
                        _ => LaunchArg::F32(f32::from_bits(u32::try_from(w[0]).map_err(|_| Errno::EINVAL)?)),
                    };
                    at += need;
                }
                // Kinds past the first empty slot would be ignored: refuse them instead.
                let given = out.iter().position(|x| *x == LaunchArg::None).unwrap_or(MAX_LAUNCH_ARGS);
                if given < MAX_LAUNCH_ARGS && kinds >> (4 * given) != 0 {
                    return Err(Errno::EINVAL);
                }
                Op::Launch(Launch {
                    program: ProgramHandle(a[0]),
                    entry: a[1] as u32,
                    grid: [a[2] as u32, (a[2] >> 32) as u32, u32::try_from(a[3]).map_err(|_| Errno::EINVAL)?],
                    args: out,
                })
            }
            _ => return Err(Errno::EINVAL),
        })
    }
}

/// Sizes of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Submission entries (a power of two).
    pub sq_entries: u32,
    /// Completion entries (twice the submission entries, so completions of jobs in
    /// flight and newly consumed entries both fit).
    pub cq_entries: u32,
}

impl RingLayout {
    /// A layout for `sq_entries` submissions: a power of two in 1..=[`MAX_RING_ENTRIES`].
    pub fn new(sq_entries: u32) -> Result<RingLayout, Errno> {
        if !sq_entries.is_power_of_two() || sq_entries > MAX_RING_ENTRIES {
            return Err(Errno::EINVAL);
        }
        Ok(RingLayout { sq_entries, cq_entries: sq_entries * 2 })
    }

    /// Bytes of the whole ring.
    pub fn size(&self) -> usize {
        HEADER_LEN + self.sq_entries as usize * SQE_SIZE + self.cq_entries as usize * CQE_SIZE
    }

    fn sqe_offset(&self, index: u32) -> usize {
        HEADER_LEN + (index & (self.sq_entries - 1)) as usize * SQE_SIZE
    }

    fn cqe_offset(&self, index: u32) -> usize {
        HEADER_LEN + self.sq_entries as usize * SQE_SIZE + (index & (self.cq_entries - 1)) as usize * CQE_SIZE
    }
}

/// A mapped ring. Every access goes through raw pointers into the shared mapping;
/// entries are copied in and out, never referenced.
#[derive(Debug)]
pub struct RingMem {
    map: Mapping,
    layout: RingLayout,
}

impl RingMem {
    /// Creates the ring memory (a sealed memfd), initialised; returns it and its descriptor.
    pub fn create(layout: RingLayout) -> rustix::io::Result<(RingMem, OwnedFd)> {
        let fd = crate::shm::sealed_memfd("accel-ring", layout.size() as u64)?;
        let ring = RingMem { map: Mapping::new(&fd, layout.size())?, layout };
        ring.write_info();
        // Until the poller has seen the ring, clients must ring the doorbell.
        ring.poller_sleeping().store(1, Ordering::SeqCst);
        Ok((ring, fd))
    }

    /// Maps a ring the daemon created and checks its info block.
    pub fn open(fd: impl AsFd) -> rustix::io::Result<RingMem> {
        let header = Mapping::new(&fd, HEADER_LEN)?;
        // SAFETY: INFO + 12 <= HEADER_LEN bytes are mapped; u32 reads of plain memory.
        let (magic, sq) = unsafe {
            let p = header.as_ptr().add(INFO).cast::<u32>();
            (p.read_volatile(), p.add(1).read_volatile())
        };
        let layout = RingLayout::new(sq).map_err(|_| rustix::io::Errno::INVAL)?;
        if magic != RING_MAGIC {
            return Err(rustix::io::Errno::INVAL);
        }
        Ok(RingMem { map: Mapping::new(&fd, layout.size())?, layout })
    }

    fn write_info(&self) {
        // SAFETY: INFO + 12 <= HEADER_LEN, inside the mapping; 4-byte aligned.
        unsafe {
            let p = self.map.as_ptr().add(INFO).cast::<u32>();
            p.write_volatile(RING_MAGIC);
            p.add(1).write_volatile(self.layout.sq_entries);
            p.add(2).write_volatile(self.layout.cq_entries);
        }
    }

    /// The ring's sizes.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: every caller passes a header constant or a masked entry offset + SEQ_OFFSET:
        // in bounds and 4-byte aligned; AtomicU32 may alias memory another process writes.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// How far the daemon consumed submissions (the client must not overwrite beyond).
    pub fn sq_head(&self) -> &AtomicU32 {
        self.word(SQ_HEAD)
    }
    /// How far the client consumed completions (the daemon must not overwrite beyond).
    pub fn cq_head(&self) -> &AtomicU32 {
        self.word(CQ_HEAD)
    }
    /// Non-zero while the daemon's poller is (about to be) asleep.
    pub fn poller_sleeping(&self) -> &AtomicU32 {
        self.word(POLLER_SLEEPING)
    }
    /// Non-zero while the client is (about to be) blocked on its completion eventfd.
    pub fn client_waiting(&self) -> &AtomicU32 {
        self.word(CLIENT_WAITING)
    }
    /// Non-zero while the client spins for completions (a hint to the poller).
    pub fn client_spins(&self) -> &AtomicU32 {
        self.word(CLIENT_SPINS)
    }
    /// Microseconds the daemon suggests a client's default wait spins (0: no suggestion).
    pub fn spin_budget(&self) -> &AtomicU32 {
        self.word(SPIN_BUDGET)
    }

    /// Raw pointer to the submission slot of counter `index` (masked), for tools and
    /// tests that need to write what the codec never would.
    pub fn sqe_ptr(&self, index: u32) -> *mut u8 {
        self.map.as_ptr().wrapping_add(self.layout.sqe_offset(index))
    }

    /// Whether the submission for counter `index` has been published.
    pub fn sqe_ready(&self, index: u32) -> bool {
        self.word(self.layout.sqe_offset(index) + SEQ_OFFSET).load(Ordering::Acquire) == index.wrapping_add(1)
    }

    /// Copies out the submission for counter `index`, or `None` if it is not published.
    ///
    /// Only the first cache line (user data, seq, opcode, flags, args 0..=5) is read
    /// unless the opcode uses more: every cache line the daemon reads crosses cores.
    pub fn read_sqe(&self, index: u32) -> Option<Sqe> {
        if !self.sqe_ready(index) {
            return None;
        }
        let p = self.sqe_ptr(index);
        let mut bytes = [0u8; SQE_SIZE];
        // SAFETY: the masked slot lies inside the SQ array; plain bytes; volatile because the
        // other process may write concurrently (a torn entry just decodes to an error).
        bytes[..LINE].copy_from_slice(&unsafe { p.cast::<[u8; LINE]>().read_volatile() });
        let mut sqe = Sqe::read_from_bytes(&bytes).unwrap_or_else(|_| unreachable!("SQE_SIZE bytes"));
        if matches!(sqe.opcode, opcode::GEMM_F32 | opcode::GEMM16 | opcode::SYNC | opcode::LAUNCH) {
            // SAFETY: the second half of the same in-bounds slot.
            bytes[LINE..].copy_from_slice(&unsafe { p.add(LINE).cast::<[u8; LINE]>().read_volatile() });
            sqe = Sqe::read_from_bytes(&bytes).unwrap_or_else(|_| unreachable!("SQE_SIZE bytes"));
        }
        Some(sqe)
    }

    /// Publishes `sqe` as the submission for counter `index`: body first, then `seq`.
    pub fn write_sqe(&self, index: u32, sqe: &Sqe) {
        let body = Sqe { seq: 0, ..*sqe };
        // SAFETY: the masked slot lies inside the SQ array.
        unsafe { self.sqe_ptr(index).cast::<Sqe>().write_volatile(body) };
        self.word(self.layout.sqe_offset(index) + SEQ_OFFSET).store(index.wrapping_add(1), Ordering::Release);
    }

    /// Copies out the completion for counter `index`, or `None` if it is not published.
    pub fn read_cqe(&self, index: u32) -> Option<Cqe> {
        let off = self.layout.cqe_offset(index);
        if self.word(off + SEQ_OFFSET).load(Ordering::Acquire) != index.wrapping_add(1) {
            return None;
        }
        // SAFETY: the masked slot lies inside the CQ array; Cqe accepts any bytes.
        Some(unsafe { self.map.as_ptr().add(off).cast::<Cqe>().read_volatile() })
    }

    /// Publishes `cqe` as the completion for counter `index`: body first, then `seq`.
    pub fn write_cqe(&self, index: u32, cqe: &Cqe) {
        let off = self.layout.cqe_offset(index);
        // SAFETY: the masked slot lies inside the CQ array.
        unsafe { self.map.as_ptr().add(off).cast::<Cqe>().write_volatile(Cqe { seq: 0, ..*cqe }) };
        self.word(off + SEQ_OFFSET).store(index.wrapping_add(1), Ordering::Release);
    }

    /// After publishing: whether the peer's sleep `flag` is set, so it must be woken.
    /// The SeqCst fence orders the publish before the check; the sleeper sets its flag,
    /// fences, and looks again (Dekker), so one of the two always sees the other.
    pub fn peer_sleeps(&self, flag: &AtomicU32) -> bool {
        fence(Ordering::SeqCst);
        flag.load(Ordering::SeqCst) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entry_sizes_are_fixed() {
        assert_eq!((SQE_SIZE, CQE_SIZE), (128, 32));
        assert_eq!(RingLayout::new(1024).unwrap().size(), 512 + 1024 * 128 + 2048 * 32);
        assert_eq!(RingLayout::new(3), Err(Errno::EINVAL));
        assert_eq!(RingLayout::new(8192), Err(Errno::EINVAL));
    }

    #[test]
    fn client_and_daemon_views_share_entries() {
        let (daemon, fd) = RingMem::create(RingLayout::new(8).unwrap()).unwrap();
        let client = RingMem::open(&fd).unwrap();
        assert_eq!(client.layout(), daemon.layout());
        let sqe = Sqe::encode(&Op::Nop, 42);
        assert_eq!(daemon.read_sqe(9), None, "not published yet");
        client.write_sqe(9, &sqe);
        assert_eq!(daemon.read_sqe(9), Some(Sqe { seq: 10, ..sqe }));
        assert_eq!(daemon.read_sqe(1), None, "slot 1 holds counter 9, not 1");
        let cqe = Cqe { user_data: 7, seq: 0, result: -5, timestamp: 1, seqno: 2 };
        daemon.write_cqe(3, &cqe);
        assert_eq!(client.read_cqe(3), Some(Cqe { seq: 4, ..cqe }));
        assert_eq!(client.poller_sleeping().load(Ordering::SeqCst), 1);
    }

    #[test]
    fn garbage_entries_decode_to_errors_not_panics() {
        let bad = Sqe { user_data: 1, seq: 1, opcode: 99, flags: 0, args: [u64::MAX; 14] };
        assert_eq!(bad.decode(), Err(Errno::EINVAL));
        let flagged = Sqe { flags: 1, ..Sqe::encode(&Op::Nop, 0) };
        assert_eq!(flagged.decode(), Err(Errno::EINVAL));
        let fill = Sqe { opcode: opcode::FILL, args: [1, 0, 4, u64::MAX, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], ..bad };
        assert_eq!(fill.decode(), Err(Errno::EINVAL));
        let gemm16 = Sqe { opcode: opcode::GEMM16, args: [1; 14], ..bad };
        assert!(gemm16.decode().is_ok());
        let unknown_type = Sqe { opcode: opcode::GEMM16, args: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 2], ..bad };
        assert_eq!(unknown_type.decode(), Err(Errno::EINVAL), "no element type 2");
    }

    fn view() -> impl Strategy<Value = BufView> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(b, o, l)| BufView { bo: BoHandle(b), offset: o, len: l })
    }

    fn mat() -> impl Strategy<Value = MatView> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(b, o, s)| MatView {
            bo: BoHandle(b),
            offset: o,
            row_stride: s,
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Nop),
            (view(), any::<u32>()).prop_map(|(dst, pattern)| Op::Fill { dst, pattern }),
            (view(), view()).prop_map(|(src, dst)| Op::Copy { src, dst }),
            (any::<[u64; 3]>(), mat(), mat(), mat(), any::<u32>(), any::<u32>()).prop_map(|(d, a, b, c, al, be)| {
                Op::GemmF32(GemmF32 {
                    m: d[0],
                    n: d[1],
                    k: d[2],
                    a,
                    b,
                    c,
                    alpha: f32::from_bits(al),
                    beta: f32::from_bits(be),
                })
            }),
            (any::<u32>(), any::<[u64; 4]>()).prop_map(|(code, args)| Op::Driver { code, args }),
            (any::<[u64; 3]>(), mat(), mat(), mat(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
                |(d, a, b, c, al, be, bf)| {
                    Op::Gemm16(Gemm16 {
                        m: d[0],
                        n: d[1],
                        k: d[2],
                        a,
                        b,
                        c,
                        alpha: f32::from_bits(al),
                        beta: f32::from_bits(be),
                        ty: if bf { Float16::Bf16 } else { Float16::F16 },
                    })
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn sqe_round_trips(op in op(), user_data in any::<u64>()) {
            let sqe = Sqe::encode(&op, user_data);
            let back = sqe.decode().unwrap();
            // Compare through the encoding: f32 NaNs are not equal to themselves.
            prop_assert_eq!(Sqe::encode(&back, user_data), sqe);
        }

        #[test]
        fn any_sqe_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), SQE_SIZE)) {
            let sqe = Sqe::read_from_bytes(&bytes).unwrap();
            if let Ok(op) = sqe.decode() {
                // Compared through the encoding: a GEMM's alpha or beta may be NaN.
                let again = Sqe::encode(&op, sqe.user_data);
                prop_assert_eq!(Sqe::encode(&again.decode().unwrap(), sqe.user_data), again);
            }
        }
    }
}
