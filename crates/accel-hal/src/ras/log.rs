//! The RAS log: an append-only, checksummed, fsync'd record of every RAS change, written
//! in batches (one `fdatasync` covers every record written before it) and compacted when it grows
//! past its bound: the current state as snapshot records plus the recent events go to a new
//! file that atomically replaces the old one, so counters survive rotation, a crash at any
//! point of it, and restarts.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{EventKind, RECENT_EVENTS};

/// What a log record holds: an event (the first four, as [`EventKind`], which older logs
/// hold too), or a snapshot of state written by compaction (never replayed as an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum LogKind {
    Error,
    Cleared,
    ThresholdSet,
    Recovered,
    /// A counter's value.
    SnapValue,
    /// A counter's threshold.
    SnapThreshold,
    /// A node's recovery count.
    SnapRecoveries,
}

impl From<EventKind> for LogKind {
    fn from(k: EventKind) -> LogKind {
        match k {
            EventKind::Error => LogKind::Error,
            EventKind::Cleared => LogKind::Cleared,
            EventKind::ThresholdSet => LogKind::ThresholdSet,
            EventKind::Recovered => LogKind::Recovered,
        }
    }
}

impl LogKind {
    /// The event a record replays as, if it is one.
    pub(super) fn event(self) -> Option<EventKind> {
        match self {
            LogKind::Error => Some(EventKind::Error),
            LogKind::Cleared => Some(EventKind::Cleared),
            LogKind::ThresholdSet => Some(EventKind::ThresholdSet),
            LogKind::Recovered => Some(EventKind::Recovered),
            _ => None,
        }
    }
}

/// A log record: names rather than ids, so a restart with another registration order
/// still maps every record to its counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LogRecord {
    pub(super) seq: u64,
    pub(super) timestamp_ns: u64,
    pub(super) device: String,
    pub(super) node: String,
    pub(super) error: String,
    pub(super) kind: LogKind,
    pub(super) value: u64,
}

/// What the log holds, as compaction needs it: the latest value of each piece of state and
/// the recent events. Kept from the records written to the file (a compaction syncs them all).
#[derive(Debug, Default)]
pub(super) struct Durable {
    seq: u64,
    /// (device, node, error, class) → the record that set it last; class 0 value,
    /// 1 threshold, 2 recoveries.
    state: BTreeMap<(String, String, String, u8), LogRecord>,
    recent: VecDeque<LogRecord>,
}

impl Durable {
    fn note(&mut self, rec: &LogRecord) {
        self.seq = self.seq.max(rec.seq);
        let class = match rec.kind {
            LogKind::Error | LogKind::Cleared | LogKind::SnapValue => 0,
            LogKind::ThresholdSet | LogKind::SnapThreshold => 1,
            LogKind::Recovered | LogKind::SnapRecoveries => 2,
        };
        self.state.insert((rec.device.clone(), rec.node.clone(), rec.error.clone(), class), rec.clone());
        if rec.kind.event().is_some() {
            if self.recent.len() == RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(rec.clone());
        }
    }

    /// The records of a compacted log: a snapshot of every non-zero piece of state, then as
    /// many of the recent events as fit in `history_bytes` (they replay onto the same state,
    /// and keep the dump history).
    fn compacted(&self, history_bytes: usize) -> Vec<LogRecord> {
        let mut out: Vec<LogRecord> = self
            .state
            .iter()
            .filter(|(_, r)| r.value != 0)
            .map(|((_, _, _, class), r)| LogRecord {
                kind: [LogKind::SnapValue, LogKind::SnapThreshold, LogKind::SnapRecoveries][*class as usize],
                ..r.clone()
            })
            .collect();
        // Snapshots first, in sequence order, so a later event record wins on replay.
        out.sort_by_key(|r| r.seq);
        let mut room = history_bytes;
        let mut history: Vec<LogRecord> = Vec::new();
        for r in self.recent.iter().rev() {
            let size = FRAME_HEADER + postcard::to_stdvec(r).map_or(usize::MAX / 2, |p| p.len());
            if size > room {
                break;
            }
            room -= size;
            history.push(r.clone());
        }
        out.extend(history.into_iter().rev());
        out
    }
}

/// The append-only RAS log: `[len u32 LE][crc32 u32 LE][postcard record]` frames,
/// fsync'd after each append. A failed append is cut back to the last whole record at
/// once, so later records never follow a torn one. At open, a corrupt frame (a crash
/// mid-write, or damage) is skipped by scanning for the next valid frame: records after
/// it are kept, and only a torn tail is cut off.
///
/// The file is kept zero-filled ahead of its records (1 MiB at a time, written,
/// not sparse), as databases preallocate their write-ahead logs: an append then overwrites
/// allocated blocks without changing the file's size, so its `fdatasync` writes the data
/// alone, with no journal commit of block allocations and sizes (on ext4 on a virtual disk:
/// ~1.3 ms for the first append to a new file, ~0.3 ms for later growing appends). Zeros are
/// no frame (a frame's length is never 0), so reading stops where they start.
#[derive(Debug)]
pub struct RasLog {
    /// Shared with the thread that syncs written batches in the background.
    file: Arc<File>,
    path: PathBuf,
    /// Bytes of whole records: where the next append starts.
    len: u64,
    /// Bytes of the file: `len` and the zeros reserved after it.
    reserved: u64,
    /// Compact once the log is larger than this.
    max_bytes: u64,
    durable: Durable,
    /// `fdatasync` calls made (one per batch), for `/metrics` and benchmarks.
    syncs: u64,
    /// Compactions done.
    rotations: u64,
}

/// The default bound on the log's size before it is compacted.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

pub(super) const FRAME_HEADER: usize = 8;
/// Zeros written ahead of the records at a time (less for a log bounded below 16 MiB).
pub const RESERVE_BYTES: u64 = 1 << 20;
const MAX_RECORD: usize = 64 * 1024;

/// The record framed at the start of `bytes`, and the frame's length.
fn parse_frame(bytes: &[u8]) -> Option<(LogRecord, usize)> {
    let frame = bytes.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(FRAME_HEADER..FRAME_HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let rec = postcard::from_bytes::<LogRecord>(payload).ok()?;
    Some((rec, FRAME_HEADER + len))
}

impl RasLog {
    pub(super) fn open(path: &Path, max_bytes: u64) -> std::io::Result<(RasLog, Vec<LogRecord>)> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            crate::files::private_dir(dir)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut records = Vec::new();
        // Past the last non-zero byte only reserved zeros (or the zero end of a record) lie.
        let zeros_from = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let (mut at, mut end, mut skipped) = (0, 0, 0);
        while at < bytes.len() {
            match parse_frame(&bytes[at..]) {
                Some((rec, n)) => {
                    records.push(rec);
                    at += n;
                    end = at;
                }
                None if at >= zeros_from => break,
                None => {
                    at += 1;
                    skipped += 1;
                }
            }
        }
        let mut reserved = bytes.len() as u64;
        if end < zeros_from {
            tracing::warn!("RAS log {}: cutting {} bytes of torn tail", path.display(), zeros_from - end);
            file.set_len(end as u64)?;
            file.sync_all()?;
            reserved = end as u64;
        }
        let damaged = skipped - zeros_from.saturating_sub(end).min(skipped);
        if damaged > 0 {
            tracing::warn!("RAS log {}: skipped {damaged} damaged bytes; later records kept", path.display());
        }
        let mut durable = Durable::default();
        for r in &records {
            durable.note(r);
        }
        let mut log = RasLog {
            file: Arc::new(file),
            path: path.to_path_buf(),
            len: end as u64,
            reserved,
            max_bytes,
            durable,
            syncs: 0,
            rotations: 0,
        };
        if log.reserve(log.len + 1) {
            log.file.sync_all()?;
        }
        Ok((log, records))
    }

    fn frames(recs: &[LogRecord]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for rec in recs {
            let payload = postcard::to_stdvec(rec).map_err(std::io::Error::other)?;
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            out.extend_from_slice(&payload);
        }
        Ok(out)
    }

    /// Zero-fills the file up to at least `upto` bytes, a whole reservation at a time (the
    /// next `fdatasync` makes it durable with the records that needed it). Best effort: only
    /// with four times the reservation free on the filesystem (the log must not take the
    /// last of a filling disk from its records and the daemon's other state), and a write that
    /// fails gives its space back; without a reserve, appends grow the file as they did.
    /// Whether it reserved.
    fn reserve(&mut self, upto: u64) -> bool {
        use std::os::unix::fs::FileExt;
        if upto <= self.reserved {
            return false;
        }
        let step = (self.max_bytes / 16).clamp(4096, RESERVE_BYTES);
        let target = upto.next_multiple_of(step);
        let free = rustix::fs::fstatvfs(&self.file).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize));
        if free / 4 < target - self.reserved {
            return false;
        }
        let zeros = vec![0u8; (target - self.reserved).min(64 << 10) as usize];
        debug_assert!(self.reserved >= self.len, "the reserve starts after the records");
        let mut at = self.reserved;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            if let Err(e) = self.file.write_all_at(&zeros[..n], at) {
                tracing::debug!("RAS log {}: no reserve ahead of the records: {e}", self.path.display());
                let _ = self.file.set_len(self.reserved);
                return false;
            }
            at += n as u64;
        }
        self.reserved = target;
        true
    }

    /// Appends records with one write, and one `fdatasync` if `sync` (else the caller syncs
    /// later, through [`RasLog::sync_handle`]). On failure nothing of the batch stays: the file
    /// is cut back to the last whole record (which also frees the blocks a full disk needs),
    /// and after a failed sync the log is rewritten whole, since the kernel may have dropped
    /// earlier written pages with the error.
    pub(super) fn append_batch(&mut self, recs: &[LogRecord], sync: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let bytes = Self::frames(recs)?;
        self.reserve(self.len + bytes.len() as u64);
        let mut written = self.file.write_all_at(&bytes, self.len);
        if sync && written.is_ok() {
            self.syncs += 1;
            written = self.file.sync_data().inspect_err(|e| self.resecure(e));
        }
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                // An append past the reserve grew the file.
                self.reserved = self.reserved.max(self.len);
                for r in recs {
                    self.durable.note(r);
                }
                if self.len > self.max_bytes {
                    if let Err(e) = self.compact() {
                        tracing::warn!(
                            "RAS log {}: compaction failed, the log keeps growing: {e}",
                            self.path.display()
                        );
                    }
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                self.reserved = self.len;
                Err(e)
            }
        }
    }

    /// Writes the compacted log beside the old one, syncs it, renames it over the old one
    /// and syncs the directory: a crash leaves either log whole.
    fn compact(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.with_extension("log.new");
        // Half the bound for history, so the compacted log leaves room to grow.
        let bytes = Self::frames(&self.durable.compacted((self.max_bytes / 2) as usize))?;
        let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = Arc::new(f);
        self.len = bytes.len() as u64;
        self.reserved = self.len;
        self.rotations += 1;
        // Reserved again by the next append if this cannot.
        self.reserve(self.len + 1);
        Ok(())
    }

    /// The file to `fdatasync` for the records written so far, outside the log's lock (a
    /// compaction meanwhile syncs its new file itself).
    pub(super) fn sync_handle(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Counts a background sync; after a failed one, rewrites the log whole.
    pub(super) fn synced(&mut self, result: &std::io::Result<()>) {
        self.syncs += 1;
        if let Err(e) = result {
            self.resecure(e);
        }
    }

    /// After a failed `fdatasync`: the kernel may have dropped written pages and reports the
    /// error once, so a later sync would succeed over the hole. Write every record the log
    /// has taken to a new file, as compaction does; if that fails too, say so.
    fn resecure(&mut self, e: &std::io::Error) {
        tracing::error!("RAS log {}: fdatasync failed ({e}); rewriting the log", self.path.display());
        if let Err(e) = self.compact() {
            tracing::error!(
                "RAS log {}: rewriting failed, recent records may not survive a power loss: {e}",
                self.path.display()
            );
        }
    }

    /// Bytes of whole records (the file is longer by the zeros reserved after them).
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// `fdatasync` calls and compactions so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.syncs, self.rotations)
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
