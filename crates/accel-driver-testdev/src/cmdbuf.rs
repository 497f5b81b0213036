//! The test device's program format, `testdev-cmdbuf`: a command stream like an NPU's,
//! referencing buffer arguments by index. Validated at load (structure, opcodes, indices)
//! and at launch (every reference inside the buffers bound), so a bad one runs nothing.
//!
//! Layout (little-endian u32s): magic `TDCB`, version 1, buffer count (1..=8), command
//! count; then each command as six u32s `[op, a, a_off, b, b_off, len]`:
//!
//! | op | name | does |
//! |---|---|---|
//! | 1 | fill | bytes `[a_off, +len)` of buffer `a` = the u32 `b_off` repeated (`b` unused, 0) |
//! | 2 | copy | bytes `[a_off, +len)` of buffer `a` → `[b_off, +len)` of buffer `b` |
//! | 3 | add | u32s of buffer `b` at `b_off` += u32s of buffer `a` at `a_off`, `len` bytes (wrapping) |
//! | 4 | delay | the device is busy for `a` microseconds (the other fields 0); the emulation sleeps, as a device computing occupies no host CPU |

use std::any::Any;
use std::time::Duration;

use accel_hal::driver::{AbortToken, DriverError, JobArg, Program};
use accel_uapi::{EntryInfo, Errno, ParamKind};

use crate::vram::view_of;

/// The format's name.
pub const FORMAT: &str = "testdev-cmdbuf";
const MAGIC: u32 = u32::from_le_bytes(*b"TDCB");
const MAX_BUFFERS: u32 = 8;
const MAX_COMMANDS: usize = 1024;

/// Fill.
pub const CMD_FILL: u32 = 1;
/// Copy.
pub const CMD_COPY: u32 = 2;
/// Add u32s.
pub const CMD_ADD: u32 = 3;
/// Keep the device busy.
pub const CMD_DELAY: u32 = 4;

/// One command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Opcode.
    pub op: u32,
    /// First buffer.
    pub a: u32,
    /// Offset in the first buffer.
    pub a_off: u32,
    /// Second buffer.
    pub b: u32,
    /// Offset in the second buffer (a fill's value).
    pub b_off: u32,
    /// Bytes.
    pub len: u32,
}

/// Encodes a command buffer over `buffers` buffer arguments.
pub fn encode(buffers: u32, commands: &[Command]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in [MAGIC, 1, buffers, commands.len() as u32] {
        out.extend(w.to_le_bytes());
    }
    for c in commands {
        for w in [c.op, c.a, c.a_off, c.b, c.b_off, c.len] {
            out.extend(w.to_le_bytes());
        }
    }
    out
}

/// A validated command buffer.
#[derive(Debug)]
pub struct CmdBuf {
    commands: Vec<Command>,
    entries: Vec<EntryInfo>,
}

fn bad(msg: String) -> DriverError {
    DriverError::new(Errno::EINVAL, msg)
}

impl CmdBuf {
    /// Parses and validates a command buffer; `EINVAL` says what is wrong and where.
    pub fn load(bytes: &[u8]) -> Result<CmdBuf, DriverError> {
        let words: Vec<u32> = bytes.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0xff; 4]))).collect();
        if !bytes.len().is_multiple_of(4) || words.len() < 4 {
            return Err(bad(format!("a command buffer is u32 words with a 16-byte header, got {} bytes", bytes.len())));
        }
        if words[0] != MAGIC || words[1] != 1 {
            return Err(bad("not a version 1 testdev command buffer (magic TDCB)".into()));
        }
        let (buffers, count) = (words[2], words[3] as usize);
        if buffers == 0 || buffers > MAX_BUFFERS {
            return Err(bad(format!("{buffers} buffer arguments; 1..={MAX_BUFFERS} allowed")));
        }
        if count > MAX_COMMANDS || words.len() != 4 + 6 * count {
            return Err(bad(format!("header says {count} commands, the body holds {} words", words.len() - 4)));
        }
        let mut commands = Vec::with_capacity(count);
        for (i, w) in words[4..].chunks_exact(6).enumerate() {
            let c = Command { op: w[0], a: w[1], a_off: w[2], b: w[3], b_off: w[4], len: w[5] };
            let uses: &[u32] = match c.op {
                CMD_FILL => &[c.a],
                CMD_COPY | CMD_ADD => &[c.a, c.b],
                CMD_DELAY => &[],
                op => return Err(bad(format!("command {i}: unknown opcode {op}"))),
            };
            if let Some(b) = uses.iter().find(|b| **b >= buffers) {
                return Err(bad(format!("command {i}: buffer index {b} is not below the {buffers} buffer arguments")));
            }
            if (c.op == CMD_FILL || c.op == CMD_ADD) && (!c.len.is_multiple_of(4) || !c.a_off.is_multiple_of(4)) {
                return Err(bad(format!("command {i}: fill and add work on whole, aligned u32s")));
            }
            if c.op == CMD_ADD && !c.b_off.is_multiple_of(4) {
                return Err(bad(format!("command {i}: add works on aligned u32s")));
            }
            commands.push(c);
        }
        let entries = vec![EntryInfo { name: "main".into(), params: vec![ParamKind::Buffer; buffers as usize] }];
        Ok(CmdBuf { commands, entries })
    }

    /// Runs the commands over the bound buffers.
    pub fn run(&self, args: &[JobArg], abort: &AbortToken) -> Result<(), Errno> {
        let views = args
            .iter()
            .map(|a| match a {
                JobArg::Buffer(r) => view_of(r),
                _ => Err(Errno::EINVAL),
            })
            .collect::<Result<Vec<_>, _>>()?;
        for c in &self.commands {
            let (len, a_off, b_off) = (c.len as usize, c.a_off as usize, c.b_off as usize);
            // check_launch verified every reference lies inside its buffer; the views check
            // again (ERANGE), so a bug here cannot reach beyond a buffer.
            match c.op {
                CMD_FILL => views[c.a as usize].subslice(a_off, len)?.fill_u32(c.b_off),
                CMD_COPY => {
                    views[c.a as usize].subslice(a_off, len)?.copy_to(&views[c.b as usize].subslice(b_off, len)?)
                }
                CMD_ADD => {
                    let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
                    views[c.a as usize].read(a_off, &mut x)?;
                    views[c.b as usize].read(b_off, &mut y)?;
                    for (yy, xx) in y.chunks_exact_mut(4).zip(x.chunks_exact(4)) {
                        let sum = u32::from_le_bytes([yy[0], yy[1], yy[2], yy[3]])
                            .wrapping_add(u32::from_le_bytes([xx[0], xx[1], xx[2], xx[3]]));
                        yy.copy_from_slice(&sum.to_le_bytes());
                    }
                    views[c.b as usize].write(b_off, &y)?;
                }
                _ => {
                    if abort.sleep(Duration::from_micros(u64::from(c.a))) {
                        return Err(Errno::ECANCELED);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Program for CmdBuf {
    fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    fn check_launch(&self, _entry: u32, _grid: [u32; 3], args: &[JobArg]) -> Result<(), DriverError> {
        let lens: Vec<u64> = args
            .iter()
            .map(|a| match a {
                JobArg::Buffer(r) => r.len as u64,
                _ => 0,
            })
            .collect();
        for (i, c) in self.commands.iter().enumerate() {
            let refs: &[(u32, u32)] = match c.op {
                CMD_FILL => &[(c.a, c.a_off)],
                CMD_COPY | CMD_ADD => &[(c.a, c.a_off), (c.b, c.b_off)],
                _ => &[],
            };
            for (buf, off) in refs {
                let end = u64::from(*off) + u64::from(c.len);
                if end > lens[*buf as usize] {
                    return Err(DriverError::new(
                        Errno::ERANGE,
                        format!(
                            "command {i} references bytes [{off}, {end}) of buffer argument {buf}, which has {} bytes",
                            lens[*buf as usize]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
