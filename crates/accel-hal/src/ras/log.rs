//! The RAS log: an append-only, checksummed, fsync'd record of every RAS change.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::EventKind;

/// A log record: names rather than ids, so a restart with another registration order
/// still maps every record to its counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LogRecord {
    pub(super) seq: u64,
    pub(super) timestamp_ns: u64,
    pub(super) device: String,
    pub(super) node: String,
    pub(super) error: String,
    pub(super) kind: EventKind,
    pub(super) value: u64,
}

/// The append-only RAS log: `[len u32 LE][crc32 u32 LE][postcard record]` frames,
/// fsync'd after each append. A failed append is cut back to the last whole record at
/// once, so later records never follow a torn one. At open, a corrupt frame (a crash
/// mid-write, or damage) is skipped by scanning for the next valid frame: records after
/// it are kept, and only a torn tail is cut off.
#[derive(Debug)]
pub struct RasLog {
    file: File,
    path: PathBuf,
    /// Bytes of whole records: where the next append starts.
    len: u64,
}

pub(super) const FRAME_HEADER: usize = 8;
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
    pub(super) fn open(path: &Path) -> std::io::Result<(RasLog, Vec<LogRecord>)> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            crate::files::private_dir(dir)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut records = Vec::new();
        let (mut at, mut end, mut skipped) = (0, 0, 0);
        while at < bytes.len() {
            match parse_frame(&bytes[at..]) {
                Some((rec, n)) => {
                    records.push(rec);
                    at += n;
                    end = at;
                }
                None => {
                    at += 1;
                    skipped += 1;
                }
            }
        }
        if end < bytes.len() {
            tracing::warn!("RAS log {}: cutting {} bytes of torn tail", path.display(), bytes.len() - end);
            file.set_len(end as u64)?;
            file.sync_all()?;
        }
        let damaged = skipped - (bytes.len() - end);
        if damaged > 0 {
            tracing::warn!("RAS log {}: skipped {damaged} damaged bytes; later records kept", path.display());
        }
        Ok((RasLog { file, path: path.to_path_buf(), len: end as u64 }, records))
    }

    pub(super) fn append(&mut self, rec: &LogRecord) -> std::io::Result<()> {
        let payload = postcard::to_stdvec(rec).map_err(std::io::Error::other)?;
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let written = self
            .file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(&frame))
            .and_then(|_| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut the torn record back (freeing its blocks also makes room on a full disk).
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
