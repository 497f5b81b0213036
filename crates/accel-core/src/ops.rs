//! Turning a client's op into a job's: every buffer view resolved against the client's
//! table and bounds-checked, so drivers only ever see valid ranges.

use accel_uapi::{MatView, Op};

use crate::bo::BoMatrix;
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
            let [a, b, c] = gemm_operands(bos, [g.m, g.n, g.k], [&g.a, &g.b, &g.c], 4)?;
            JobOp::GemmF32 { a, b, c, alpha: g.alpha, beta: g.beta }
        }
        Op::Gemm16(g) => {
            let [a, b, c] = gemm_operands(bos, [g.m, g.n, g.k], [&g.a, &g.b, &g.c], 2)?;
            JobOp::Gemm16 { a, b, c, alpha: g.alpha, beta: g.beta, ty: g.ty }
        }
        Op::Driver { code, args } => JobOp::Driver { code: *code, args: *args },
        Op::Launch(_) => bail!(EINVAL, "a launch needs the client's programs (resolved by the client)"),
    })
}

/// A GEMM's A (m×k), B (k×n) and C (m×n) of `elem`-byte elements, bounds-checked, with C
/// apart from A and B.
fn gemm_operands(bos: &BoTable, [m, n, k]: [u64; 3], [a, b, c]: [&MatView; 3], elem: u64) -> Result<[BoMatrix; 3]> {
    for (name, d) in [("m", m), ("n", n), ("k", k)] {
        if d == 0 || d > MAX_GEMM_DIM {
            bail!(EINVAL, "gemm dimension {name} = {d} is outside 1..={MAX_GEMM_DIM}");
        }
    }
    let a = bos.matrix("A", a, m, k, elem)?;
    let b = bos.matrix("B", b, k, n, elem)?;
    let c = bos.matrix("C", c, m, n, elem)?;
    if c.range.overlaps(&a.range) || c.range.overlaps(&b.range) {
        bail!(EINVAL, "gemm destination C overlaps operand A or B");
    }
    Ok([a, b, c])
}
