//! `accel bench …`: measurements that compare accel against a baseline taken in the same run.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel::{Connection, Device, GemmF32, Op, QueueOptions};
use anyhow::{Context, Result};
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
    /// N clients saturate one device, first with equal weights, then 1:2:4; prints each
    /// client's share of engine time against its weight, and Jain's fairness index.
    Fairness {
        /// Number of clients (separate connections).
        #[arg(long, default_value_t = 3)]
        clients: usize,
        /// Measured seconds per scenario (after a 0.5 s warm-up).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Length of each job in milliseconds (testdev delay jobs).
        #[arg(long, default_value_t = 2)]
        job_ms: u64,
    },
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Gemm { sizes, reps } => gemm(&sizes, reps.max(1)),
        Which::Fairness { clients, seconds, job_ms } => fairness(clients.max(1), seconds, job_ms.max(1)),
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

/// Jobs each fairness client keeps queued, so the device never idles.
const FAIRNESS_DEPTH: usize = 4;

fn fairness(clients: usize, seconds: f64, job_ms: u64) -> Result<()> {
    let daemon = SpawnedDaemon::start(&["testdev"])?;
    let equal = vec![1u32; clients];
    let skewed: Vec<u32> = (0..clients).map(|i| [1, 2, 4][i % 3]).collect();
    for weights in [equal, skewed] {
        fairness_run(&daemon, &weights, seconds, job_ms)?;
    }
    Ok(())
}

fn engine_ns(conn: &mut Connection) -> Result<HashMap<u64, u64>> {
    Ok(conn.clients()?.into_iter().map(|c| (c.client_id, c.engine_ns)).collect())
}

fn fairness_run(daemon: &SpawnedDaemon, weights: &[u32], seconds: f64, job_ms: u64) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut ids = Vec::new();
    for &w in weights {
        let dev = Device::open_at(daemon.socket(), 0)?;
        ids.push(dev.client_id());
        // Queues are in order (one job at a time), so a client that wants to fill the
        // device uses as many queues as the engine has credits, all with its weight.
        let queues = dev.info().engines.first().map_or(1, |e| e.credits) as usize;
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> accel::Result<()> {
            let opts = QueueOptions { weight: w * 100, ..Default::default() };
            let qs = (0..queues).map(|_| dev.create_queue_with(opts)).collect::<accel::Result<Vec<_>>>()?;
            let op = Op::Driver { code: accel_driver_testdev::OP_DELAY, args: [job_ms, 0, 0, 0] };
            let mut inflight: Vec<VecDeque<accel::Fence>> = qs.iter().map(|_| VecDeque::new()).collect();
            while !stop.load(Ordering::Relaxed) {
                for (q, pending) in qs.iter().zip(&mut inflight) {
                    if pending.len() < FAIRNESS_DEPTH {
                        pending.push_back(q.submit(op)?);
                    } else if let Some(f) = pending.pop_front() {
                        f.wait()?;
                    }
                }
            }
            Ok(())
        }));
    }
    let mut conn = Connection::connect(daemon.socket())?;
    std::thread::sleep(Duration::from_millis(500));
    let before = engine_ns(&mut conn)?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let after = engine_ns(&mut conn)?;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    let used: Vec<f64> = ids
        .iter()
        .map(|id| Ok((after.get(id).context("client vanished")? - before.get(id).context("client vanished")?) as f64))
        .collect::<Result<_>>()?;
    let total: f64 = used.iter().sum();
    let wsum: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let shares: Vec<f64> = used.iter().map(|u| u / total).collect();
    let expected: Vec<f64> = weights.iter().map(|w| f64::from(*w) / wsum).collect();
    let norm: Vec<f64> = shares.iter().zip(&expected).map(|(s, e)| s / e).collect();
    let jain = norm.iter().sum::<f64>().powi(2) / (norm.len() as f64 * norm.iter().map(|x| x * x).sum::<f64>());
    let max_err = norm.iter().map(|x| (x - 1.0).abs()).fold(0.0, f64::max);
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(",");
    println!(
        "{{\"bench\":\"fairness\",\"clients\":{},\"weights\":{:?},\"job_ms\":{job_ms},\"seconds\":{seconds},\"shares\":[{}],\"expected\":[{}],\"jain\":{jain:.4},\"max_share_error\":{max_err:.4},\"engine_busy\":{:.3}}}",
        weights.len(),
        weights,
        fmt(&shares),
        fmt(&expected),
        total / 1e9 / seconds,
    );
    Ok(())
}
