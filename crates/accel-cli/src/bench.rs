//! `accel bench …`: measurements that compare accel against a baseline taken in the same run.

use std::time::Instant;

use accel::{Device, GemmF32, Op};
use anyhow::Result;
use clap::Subcommand;

use crate::demo::pseudo_random;
use crate::spawn::SpawnedDaemon;

/// Which benchmark.
#[derive(Subcommand)]
pub enum Which {
    /// f32 GEMM through the daemon (submit + wait, separate process) against an
    /// in-process call of the same GEMM function with the same thread count.
    Gemm {
        /// Matrix sizes n (n×n×n).
        #[arg(long, value_delimiter = ',', default_values = ["1024", "2048"])]
        sizes: Vec<usize>,
        /// Timed repetitions per size (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Gemm { sizes, reps } => gemm(&sizes, reps.max(1)),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn gemm(sizes: &[usize], reps: usize) -> Result<()> {
    let daemon = SpawnedDaemon::start(&["cpu"])?;
    let dev = Device::open_at(daemon.socket(), 0)?;
    let threads = dev.info().compute_units as usize;
    let queue = dev.create_queue()?;
    for &n in sizes {
        let bytes = (n * n * 4) as u64;
        let (a, b, c) = (dev.alloc(bytes)?, dev.alloc(bytes)?, dev.alloc(bytes)?);
        let (av, bv) = (pseudo_random(n * n, 3), pseudo_random(n * n, 4));
        a.write_f32(0, &av)?;
        b.write_f32(0, &bv)?;
        let mut cv = vec![0f32; n * n];
        let nn = n as u64;
        let op = Op::GemmF32(GemmF32 {
            m: nn,
            n: nn,
            k: nn,
            a: a.matrix(0, nn),
            b: b.matrix(0, nn),
            c: c.matrix(0, nn),
            alpha: 1.0,
            beta: 0.0,
        });
        let flops = 2.0 * (n as f64).powi(3);
        let (mut accel_t, mut local_t) = (Vec::new(), Vec::new());
        // Alternate the two so machine noise hits both alike; the first round warms up.
        for rep in 0..=reps {
            let t = Instant::now();
            queue.submit(op)?.wait()?;
            let accel_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            // SAFETY: the three vectors hold n×n elements each and C is distinct from A and B.
            unsafe {
                accel_driver_cpu::sgemm(n, n, n, av.as_ptr(), n, bv.as_ptr(), n, cv.as_mut_ptr(), n, 1.0, 0.0, threads)
            };
            let local_s = t.elapsed().as_secs_f64();
            if rep > 0 {
                accel_t.push(accel_s);
                local_t.push(local_s);
            }
        }
        let check = c.read_f32(0, 16)?;
        anyhow::ensure!(check.iter().zip(&cv).all(|(x, y)| x == y), "daemon and in-process results differ");
        let (accel_g, local_g) = (flops / median(accel_t) / 1e9, flops / median(local_t) / 1e9);
        println!(
            "{{\"bench\":\"gemm\",\"n\":{n},\"reps\":{reps},\"threads\":{threads},\"accel_gflops\":{accel_g:.2},\"inproc_gflops\":{local_g:.2},\"ratio\":{:.3}}}",
            accel_g / local_g
        );
    }
    Ok(())
}
