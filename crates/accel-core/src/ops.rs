//! Turning a client's op into a job's: every buffer view resolved against the client's
//! table and bounds-checked, so drivers only ever see valid ranges.

use accel_uapi::Op;

use crate::bo::{BoTable, MAX_GEMM_DIM};
use crate::driver::JobOp;
use crate::{bail, Result};

/// Resolves and bounds-checks every operand of `op` against the client's buffers.
pub fn resolve_op(bos: &BoTable, op: &Op) -> Result<JobOp> {
    Ok(match op {
        Op::Nop => JobOp::Nop,
        Op::Fill { dst, pattern } => {
            let dst = bos.range(dst)?;
            if !dst.len.is_multiple_of(4) {
                bail!(EINVAL, "fill length {} is not a multiple of 4", dst.len);
            }
            JobOp::Fill { dst, pattern: *pattern }
        }
        Op::Copy { src, dst } => {
            if src.len != dst.len {
                bail!(EINVAL, "copy lengths differ: source {} bytes, destination {} bytes", src.len, dst.len);
            }
            JobOp::Copy { src: bos.range(src)?, dst: bos.range(dst)? }
        }
        Op::GemmF32(g) => {
            for (name, d) in [("m", g.m), ("n", g.n), ("k", g.k)] {
                if d == 0 || d > MAX_GEMM_DIM {
                    bail!(EINVAL, "gemm dimension {name} = {d} is outside 1..={MAX_GEMM_DIM}");
                }
            }
            let a = bos.matrix("A", &g.a, g.m, g.k)?;
            let b = bos.matrix("B", &g.b, g.k, g.n)?;
            let c = bos.matrix("C", &g.c, g.m, g.n)?;
            if c.range.overlaps(&a.range) || c.range.overlaps(&b.range) {
                bail!(EINVAL, "gemm destination C overlaps operand A or B");
            }
            JobOp::GemmF32 { a, b, c, alpha: g.alpha, beta: g.beta }
        }
        Op::Driver { code, args } => JobOp::Driver { code: *code, args: *args },
        Op::Launch(_) => bail!(EINVAL, "a launch needs the client's programs (resolved by the client)"),
    })
}
