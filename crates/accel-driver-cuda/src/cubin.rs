//! What a cubin says of its kernels' block sizes. The driver API reports a function's
//! parameters and the most threads a block may have, but not the exact block a kernel built
//! with `.reqntid` requires — a launch with any other fails with `CUDA_ERROR_INVALID_VALUE`.
//! The cubin (an ELF image) carries it in each kernel's `.nv.info.<name>` section as
//! attribute records: `EIATTR_REQNTID` (`.reqntid x, y, z`) and `EIATTR_MAX_THREADS`
//! (`.maxntid x, y, z`), each three little-endian 32-bit words.
//!
//! The worker reads it after its driver loaded the image, so only images the driver accepts
//! get here; [`blocks`] is public for the fuzz target `load_cuda_program` all the same.
//!
//! A fatbin holds cubins for several GPUs; those stored uncompressed are read (the block a
//! kernel requires is the same in each). Compressed ones are not: their kernels fall back on
//! the driver's thread limit.

use std::collections::HashMap;

use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection};

/// Record formats of `.nv.info` sections (`EIFMT_*`): no value, a byte, a half-word (each in
/// a 4-byte record), or a sized value (a half-word length, then that many bytes).
const FMT_NVAL: u8 = 1;
const FMT_BVAL: u8 = 2;
const FMT_HVAL: u8 = 3;
const FMT_SVAL: u8 = 4;
/// `EIATTR_MAX_THREADS`: the block's largest shape (`.maxntid`).
const ATTR_MAX_THREADS: u8 = 0x05;
/// `EIATTR_REQNTID`: the block's one shape (`.reqntid`).
const ATTR_REQNTID: u8 = 0x10;

/// The block shape a kernel states, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Launches must use exactly this shape.
    Required([u32; 3]),
    /// Launches may use at most this shape.
    AtMost([u32; 3]),
}

impl Block {
    /// The shape a launch uses.
    pub fn shape(self) -> [u32; 3] {
        match self {
            Block::Required(b) | Block::AtMost(b) => b,
        }
    }
}

/// The stated block of each kernel in `image` (a cubin, or a fatbin's uncompressed cubins),
/// by kernel name; kernels that state none, and images that cannot be read, give none.
pub fn blocks(image: &[u8]) -> HashMap<String, Block> {
    let mut out = HashMap::new();
    let mut at = 0;
    while let Some(i) = find(&image[at..], b"\x7fELF") {
        let start = at + i;
        if let Ok(elf) = ElfFile64::<Endianness>::parse(&image[start..]) {
            for section in elf.sections() {
                let (Ok(name), Ok(data)) = (section.name(), section.data()) else { continue };
                let Some(kernel) = name.strip_prefix(".nv.info.") else { continue };
                if let Some(block) = block_of(data) {
                    out.entry(kernel.to_string()).or_insert(block);
                }
            }
        }
        at = start + 4;
    }
    out
}

/// The block one kernel's `.nv.info` records state: `.reqntid` over `.maxntid`.
fn block_of(records: &[u8]) -> Option<Block> {
    let mut at_most = None;
    let mut rest = records;
    while rest.len() >= 4 {
        let (fmt, attr, half) = (rest[0], rest[1], u16::from_le_bytes([rest[2], rest[3]]) as usize);
        let value = match fmt {
            FMT_NVAL | FMT_BVAL | FMT_HVAL => {
                rest = &rest[4..];
                continue;
            }
            FMT_SVAL if rest.len() >= 4 + half => &rest[4..4 + half],
            // An unknown format or a record past the end: the rest cannot be framed.
            _ => break,
        };
        rest = &rest[4 + half..];
        let shape = match value {
            [x0, x1, x2, x3, y0, y1, y2, y3, z0, z1, z2, z3] => [
                u32::from_le_bytes([*x0, *x1, *x2, *x3]),
                u32::from_le_bytes([*y0, *y1, *y2, *y3]),
                u32::from_le_bytes([*z0, *z1, *z2, *z3]),
            ],
            _ => continue,
        };
        if shape.contains(&0) {
            continue;
        }
        match attr {
            ATTR_REQNTID => return Some(Block::Required(shape)),
            ATTR_MAX_THREADS => at_most = Some(Block::AtMost(shape)),
            _ => {}
        }
    }
    at_most
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sized record of three words.
    fn sval(attr: u8, shape: [u32; 3]) -> Vec<u8> {
        let mut r = vec![FMT_SVAL, attr, 12, 0];
        shape.iter().for_each(|w| r.extend_from_slice(&w.to_le_bytes()));
        r
    }

    #[test]
    fn records_give_the_required_block_over_the_largest() {
        // Records as ptxas writes them: flags (4 bytes), sized values, in any order.
        let mut records = vec![FMT_NVAL, 0x04, 0, 0, FMT_HVAL, 0x1e, 0x10, 0];
        records.extend(sval(ATTR_MAX_THREADS, [512, 1, 1]));
        records.extend(vec![FMT_SVAL, 0x1c, 4, 0, 0x70, 0, 0, 0]);
        assert_eq!(block_of(&records), Some(Block::AtMost([512, 1, 1])));
        records.extend(sval(ATTR_REQNTID, [256, 1, 1]));
        assert_eq!(block_of(&records), Some(Block::Required([256, 1, 1])));
        assert_eq!(block_of(&records).unwrap().shape(), [256, 1, 1]);
    }

    /// The saxpy kernel of the cuda tests (`.reqntid 256, 1, 1`), as `ptxas -arch=sm_90`
    /// (CUDA 13) built it on the lent H200 machine.
    const SAXPY_SM90: &[u8] = include_bytes!("testdata/saxpy_sm90.cubin");

    #[test]
    fn a_real_cubin_states_its_required_block() {
        let found = blocks(SAXPY_SM90);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["saxpy"], Block::Required([256, 1, 1]));
        // Inside a larger image (as in a fatbin, after its headers) it is found the same way.
        let mut wrapped = vec![0u8; 77];
        wrapped.extend_from_slice(SAXPY_SM90);
        wrapped.extend_from_slice(b"trailing bytes");
        assert_eq!(blocks(&wrapped)["saxpy"], Block::Required([256, 1, 1]));
        // Cut short, it states nothing rather than garbage.
        assert!(blocks(&SAXPY_SM90[..SAXPY_SM90.len() / 3]).values().all(|b| *b == Block::Required([256, 1, 1])));
    }

    #[test]
    fn records_that_cannot_be_framed_state_nothing() {
        assert_eq!(block_of(&[]), None);
        // A sized record longer than the section, an unknown format, a zero dimension.
        let mut cut = sval(ATTR_REQNTID, [256, 1, 1]);
        cut.truncate(10);
        assert_eq!(block_of(&cut), None);
        let mut unknown = vec![9, ATTR_REQNTID, 0, 0];
        unknown.extend(sval(ATTR_REQNTID, [256, 1, 1]));
        assert_eq!(block_of(&unknown), None);
        assert_eq!(block_of(&sval(ATTR_REQNTID, [256, 0, 1])), None);
        // Not an ELF image at all, or a truncated one.
        assert!(blocks(b"no cubin").is_empty());
        assert!(blocks(b"\x7fELF\x02\x01\x01").is_empty());
    }
}
