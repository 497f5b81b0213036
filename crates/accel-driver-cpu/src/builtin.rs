//! The cpu device's kernel library, loaded as the `builtin` program format: a few
//! kernels a framework needs beside GEMM, run on host memory.
//!
//! | entry | parameters | does |
//! |---|---|---|
//! | `axpy` | `n: u64, alpha: f32, x: buffer, y: buffer` | `y[i] = alpha·x[i] + y[i]` over `n` f32 |
//! | `scale` | `n: u64, alpha: f32, x: buffer` | `x[i] = alpha·x[i]` |
//! | `softmax` | `rows: u64, cols: u64, input: buffer, output: buffer` | row-wise softmax of f32 |
//! | `gemm_f32` | `m: u64, n: u64, k: u64, alpha: f32, beta: f32, a: buffer, b: buffer, c: buffer` | dense row-major `c = alpha·a·b + beta·c` (the same kernel as `Op::GemmF32`) |

use std::any::Any;

use accel_hal::bo::BoRange;
use accel_hal::driver::{DriverError, JobArg, Program};
use accel_uapi::{EntryInfo, Errno, ParamKind};

/// The builtin kernel library.
#[derive(Debug)]
pub struct Builtin {
    entries: Vec<EntryInfo>,
}

const AXPY: u32 = 0;
const SCALE: u32 = 1;
const SOFTMAX: u32 = 2;
const GEMM: u32 = 3;

impl Builtin {
    /// Loads the library: `bytes` must be empty (the kernels are in the driver).
    pub fn load(bytes: &[u8]) -> Result<Builtin, DriverError> {
        if !bytes.is_empty() {
            return Err(DriverError::new(Errno::EINVAL, "the builtin program format takes no bytes"));
        }
        let e = |name: &str, params: &[ParamKind]| EntryInfo { name: name.into(), params: params.to_vec() };
        use ParamKind::{Buffer, F32, U64};
        Ok(Builtin {
            entries: vec![
                e("axpy", &[U64, F32, Buffer, Buffer]),
                e("scale", &[U64, F32, Buffer]),
                e("softmax", &[U64, U64, Buffer, Buffer]),
                e("gemm_f32", &[U64, U64, U64, F32, F32, Buffer, Buffer, Buffer]),
            ],
        })
    }

    /// Runs a checked launch; a GEMM uses up to `threads` threads.
    pub fn run(&self, entry: u32, args: &[JobArg], threads: usize) -> Result<(), Errno> {
        match (entry, args) {
            (
                GEMM,
                [JobArg::U64(m), JobArg::U64(n), JobArg::U64(k), JobArg::F32(alpha), JobArg::F32(beta), JobArg::Buffer(a), JobArg::Buffer(b), JobArg::Buffer(c)],
            ) => {
                let p = |r: &BoRange| r.host().map(|v| v.as_mut_ptr().cast::<f32>()).ok_or(Errno::EINVAL);
                let (pa, pb, pc) = (p(a)?, p(b)?, p(c)?);
                if !pa.is_aligned() || !pb.is_aligned() || !pc.is_aligned() {
                    return Err(Errno::EINVAL);
                }
                let (m, n, k) = (*m as usize, *n as usize, *k as usize);
                // SAFETY: check_launch verified each view holds its matrix and that c overlaps
                // neither a nor b; the job holds the buffers.
                unsafe { crate::sgemm(m, n, k, pa, k, pb, n, pc, n, *alpha, *beta, threads) };
                Ok(())
            }
            (AXPY, [JobArg::U64(n), JobArg::F32(alpha), JobArg::Buffer(x), JobArg::Buffer(y)]) => {
                let xs = read_f32(x, *n as usize)?;
                let mut ys = read_f32(y, *n as usize)?;
                ys.iter_mut().zip(&xs).for_each(|(y, x)| *y += alpha * x);
                write_f32(y, &ys)
            }
            (SCALE, [JobArg::U64(n), JobArg::F32(alpha), JobArg::Buffer(x)]) => {
                let mut xs = read_f32(x, *n as usize)?;
                xs.iter_mut().for_each(|v| *v *= alpha);
                write_f32(x, &xs)
            }
            (SOFTMAX, [JobArg::U64(rows), JobArg::U64(cols), JobArg::Buffer(input), JobArg::Buffer(output)]) => {
                let cols = *cols as usize;
                let mut v = read_f32(input, *rows as usize * cols)?;
                for row in v.chunks_exact_mut(cols.max(1)) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    row.iter_mut().for_each(|x| *x = (*x - max).exp());
                    let sum: f32 = row.iter().sum();
                    row.iter_mut().for_each(|x| *x /= sum);
                }
                write_f32(output, &v)
            }
            _ => Err(Errno::EINVAL),
        }
    }
}

fn need(name: &str, r: &BoRange, count: u64) -> Result<(), DriverError> {
    let bytes = count.checked_mul(4).ok_or_else(|| DriverError::new(Errno::EOVERFLOW, "element count overflows"))?;
    if (r.len as u64) < bytes {
        return Err(DriverError::new(
            Errno::ERANGE,
            format!("{name}: {count} f32 need {bytes} bytes, the view has {}", r.len),
        ));
    }
    if r.host().is_none() {
        return Err(DriverError::new(Errno::EINVAL, format!("{name}: the cpu device computes on host memory only")));
    }
    Ok(())
}

impl Program for Builtin {
    fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    fn check_launch(&self, entry: u32, _grid: [u32; 3], args: &[JobArg]) -> Result<(), DriverError> {
        match (entry, args) {
            (AXPY, [JobArg::U64(n), _, JobArg::Buffer(x), JobArg::Buffer(y)]) => {
                need("x", x, *n)?;
                need("y", y, *n)
            }
            (SCALE, [JobArg::U64(n), _, JobArg::Buffer(x)]) => need("x", x, *n),
            (
                GEMM,
                [JobArg::U64(m), JobArg::U64(n), JobArg::U64(k), _, _, JobArg::Buffer(a), JobArg::Buffer(b), JobArg::Buffer(c)],
            ) => {
                if [*m, *n, *k].iter().any(|d| *d == 0 || *d > accel_hal::bo::MAX_GEMM_DIM) {
                    return Err(DriverError::new(Errno::EINVAL, "gemm dimensions must be 1..=2^20"));
                }
                let count = |x: u64, y: u64| {
                    x.checked_mul(y).ok_or_else(|| DriverError::new(Errno::EOVERFLOW, "matrix size overflows"))
                };
                need("a", a, count(*m, *k)?)?;
                need("b", b, count(*k, *n)?)?;
                need("c", c, count(*m, *n)?)?;
                if c.overlaps(a) || c.overlaps(b) {
                    return Err(DriverError::new(Errno::EINVAL, "c overlaps a or b"));
                }
                Ok(())
            }
            (SOFTMAX, [JobArg::U64(rows), JobArg::U64(cols), JobArg::Buffer(i), JobArg::Buffer(o)]) => {
                let n = rows
                    .checked_mul(*cols)
                    .ok_or_else(|| DriverError::new(Errno::EOVERFLOW, "rows × cols overflows"))?;
                need("input", i, n)?;
                need("output", o, n)
            }
            _ => Err(DriverError::new(Errno::EINVAL, "arguments do not match the entry point")),
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn read_f32(r: &BoRange, n: usize) -> Result<Vec<f32>, Errno> {
    Ok(r.host().ok_or(Errno::EINVAL)?.subslice(0, n * 4)?.read_f32s())
}

fn write_f32(r: &BoRange, v: &[f32]) -> Result<(), Errno> {
    r.host().ok_or(Errno::EINVAL)?.write_f32s(v)
}
