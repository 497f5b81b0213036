//! `accel bench …`: measurements that compare accel against a baseline taken in the same run.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel::{Connection, Device, GemmF32, Op, QueueOptions};
use accel_uapi::Request;
use anyhow::{Context, Result};
use clap::Subcommand;

use crate::demo::pseudo_random;
use crate::spawn::SpawnedDaemon;

mod bindings;
mod copy;
mod cuda;
mod floor;
mod isolation;
mod mps;
mod ras;
mod submit;
mod syncobj;
mod vulkan;

/// Which benchmark.
#[derive(Subcommand)]
pub enum Which {
    /// f32 GEMM through the daemon (submit + wait, separate process) against an
    /// in-process call of the same GEMM function with the same thread count.
    Gemm {
        /// Matrix sizes n (n×n×n): `--sizes 512,1024` or `--sizes 512 1024`.
        #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "1024,2048")]
        sizes: Vec<usize>,
        /// Timed repetitions per size (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
    /// N clients saturate one device, first with equal weights, then 1:2:4, then as tenants
    /// (namespaces of equal weight, one with four times the queues of the others); prints each
    /// client's share of engine time against its entitlement, and Jain's fairness index.
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
    /// Many connected clients, each with a queue and a ring, a few of them submitting:
    /// latency of control requests from one more client (the daemon must stay responsive).
    Scale {
        /// Connected clients, each with a queue and a 16-entry ring.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// How many of them submit null jobs meanwhile (one sync job every 100 µs each).
        #[arg(long, default_value_t = 16)]
        active: usize,
        /// Control requests timed.
        #[arg(long, default_value_t = 5000)]
        ops: usize,
    },
    /// RAS: injected error → subscriber latency (against a socket ping-pong), a burst of
    /// events from concurrent clients with the log on disk and on tmpfs (against one
    /// write + fdatasync there), and the time to scrape /metrics of a daemon with many
    /// devices (against rendering in-process).
    Ras {
        /// Injections timed.
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Events in each burst.
        #[arg(long, default_value_t = 1000)]
        burst: usize,
        /// Directory on disk for the burst's RAS log (tmpfs is /dev/shm).
        #[arg(long, default_value = "/var/tmp")]
        disk: PathBuf,
        /// Devices for the scrape measurement.
        #[arg(long, default_value_t = 64)]
        devices: usize,
        /// Scrapes timed.
        #[arg(long, default_value_t = 200)]
        scrapes: usize,
    },
    /// The job fast path against its physical limits: shared-memory spin ping-pong and
    /// Unix-socket ping-pong RTTs (measured here), the in-process null-job rate, then the
    /// ring's sync null-job RTT and batched throughput to a daemon process.
    Submit {
        /// Round trips per latency measurement.
        #[arg(long, default_value_t = 100_000)]
        iters: usize,
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Ring size (submission entries).
        #[arg(long, default_value_t = 1024)]
        ring: u32,
    },
    /// The C and Python bindings against the Rust client in one run: null-job ring round
    /// trip and an n³ GEMM (needs `libaccel.so` beside this binary and the Python package).
    Bindings {
        /// Round trips timed per side and round.
        #[arg(long, default_value_t = 20_000)]
        iters: usize,
        /// GEMM size n (n×n×n).
        #[arg(long, default_value_t = 1024)]
        n: u64,
        /// GEMMs timed per side and round (after one warm-up); the median counts.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Rounds (the sides take turns; each keeps its best round).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// GEMM f32 through the vulkan driver (host and vram operands) against the cpu driver in
    /// the same daemon, and a null launch's round trip (socket and ring) against the same
    /// empty kernel through the GPU's own API in this process and a null job on the cpu device.
    Vulkan {
        /// Matrix sizes n (n×n×n).
        #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "256,512,1024")]
        sizes: Vec<usize>,
        /// Timed repetitions per size (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Launch round trips timed.
        #[arg(long, default_value_t = 2000)]
        iters: usize,
        /// The GPU-class device to measure (`vulkan:N` or `cuda:N`).
        #[arg(long, default_value = "vulkan:0")]
        device: String,
    },
    /// Copies between memory regions (host→device, device→host, device→device on testdev)
    /// against memcpy in this process, and copy/compute overlap on separate engines.
    Copy {
        /// MiB per copy.
        #[arg(long, default_value_t = 64)]
        mib: usize,
        /// Timed repetitions (after one warm-up); medians are reported.
        #[arg(long, default_value_t = 9)]
        reps: usize,
    },
    /// Syncobjs: wait-for-submit latency (a waiter blocked before a peer process submits a
    /// null job) against a plain fence wake-up, and the daemon's memory while a timeline
    /// takes `--points` points from ring jobs.
    Syncobj {
        /// Samples of each latency.
        #[arg(long, default_value_t = 2000)]
        rounds: usize,
        /// Timeline points attached and signalled.
        #[arg(long, default_value_t = 1_000_000)]
        points: u64,
        /// Internal: run as the peer process against this socket.
        #[arg(long, hide = true)]
        peer: Option<std::path::PathBuf>,
        /// Internal: the peer's syncobj paths.
        #[arg(long, hide = true, value_delimiter = ',')]
        objs: Vec<std::path::PathBuf>,
    },
    /// The cuda driver against CUDA used directly on the same GPU: launch round trips (10
    /// and 100 µs kernels), N client processes launching 10 µs kernels (accel's shared
    /// context vs a context per process), and fault containment (a faulting and a hanging
    /// client beside 4 innocent ones).
    Cuda {
        /// Client process counts.
        #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "1,4,16")]
        clients: Vec<usize>,
        /// Seconds each client-count run lasts.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Launch round trips timed per kernel length.
        #[arg(long, default_value_t = 2000)]
        iters: usize,
        /// Times the launch round trips are measured (each a line), then a summary line
        /// with the median, least and most overhead: one run's figure moves by a few percent.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Only the launch round trips and the path's parts, not the clients or containment.
        #[arg(long)]
        launch_only: bool,
        /// Internal: run as a client process (a daemon socket, `direct`, or `direct-fault`).
        #[arg(long, hide = true)]
        child: Option<String>,
    },
    /// NVIDIA's MPS beside accel and time-slicing on the same GPU: N client processes
    /// launching 10 µs kernels through each, then 4 innocent MPS clients beside one whose
    /// kernel faults. Skips the MPS figures with the reason where MPS cannot start.
    CudaMps {
        /// Client process counts.
        #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "1,4,16")]
        clients: Vec<usize>,
        /// Seconds each client-count run lasts.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// MPS's pipe and log directories go under this one.
        #[arg(long, default_value = "/tmp/accel-mps")]
        dir: std::path::PathBuf,
    },
    /// Green contexts (SM partitions, CUDA 12.4 on) against streams of one context, in one
    /// process: threads launching 10 µs kernels, each on a green context of its own or a
    /// stream of its own; then whether a fault in one green context spares another.
    CudaGreen {
        /// Thread counts.
        #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "4,16")]
        threads: Vec<usize>,
        /// Seconds each run lasts.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Internal: run the fault check (it poisons its process).
        #[arg(long, hide = true)]
        fault_child: bool,
    },
    /// Noisy neighbour: a good tenant's GEMM throughput and null-job latency with a hostile
    /// tenant idle, then at every limit at once (allocation churn, connection flood,
    /// malformed input, hung jobs, thousands of queues waiting on a fence); reports the ratios.
    Isolation {
        /// Measured seconds per phase.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// What the hostile tenant does, any of alloc, conn, garbage, hang, queues, flood (default: all).
        #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "alloc,conn,garbage,hang,queues,flood")]
        load: Vec<String>,
        /// Internal: run as the hostile tenant against this socket.
        #[arg(long, hide = true)]
        hostile: Option<std::path::PathBuf>,
    },
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Gemm { sizes, reps } => gemm(&sizes, reps.max(1)),
        Which::Fairness { clients, seconds, job_ms } => fairness(clients.max(1), seconds, job_ms.max(1)),
        Which::Submit { iters, seconds, ring } => submit::run(iters.max(100), seconds, ring),
        Which::Scale { clients, active, ops } => scale(clients.max(1), active, ops.max(100)),
        Which::Ras { events, burst, disk, devices, scrapes } => {
            ras::run(events.max(100), devices.max(1), scrapes.max(10))?;
            ras::codec(200)?;
            for (fs, dir) in [("disk", disk.as_path()), ("tmpfs", Path::new("/dev/shm"))] {
                ras::burst(fs, dir, burst.max(10))?;
            }
            Ok(())
        }
        Which::Bindings { iters, n, reps, rounds } => bindings::run(iters.max(100), n.max(1), reps.max(1), rounds),
        Which::Copy { mib, reps } => copy::run(mib.max(1), reps.max(1)),
        Which::Vulkan { sizes, reps, iters, device } => vulkan::run(&device, &sizes, reps.max(1), iters.max(10)),
        Which::Syncobj { peer: Some(socket), objs, .. } => syncobj::peer(&socket, &objs),
        Which::Syncobj { rounds, points, peer: None, .. } => syncobj::run(rounds.max(10), points.max(6)),
        Which::Cuda { child: Some(target), seconds, .. } => cuda::child(&target, seconds),
        Which::Cuda { clients, seconds, iters, rounds, launch_only, child: None } => {
            let clients: &[usize] = if launch_only { &[] } else { &clients };
            cuda::run(clients, seconds.max(0.5), iters.max(10), rounds.max(1))
        }
        Which::CudaMps { clients, seconds, dir } => mps::run(&clients, seconds.max(0.5), &dir),
        Which::CudaGreen { fault_child: true, .. } => cuda::green_fault_child(),
        Which::CudaGreen { threads, seconds, .. } => cuda::green(&threads, seconds.max(0.5)),
        Which::Isolation { seconds, load, hostile: Some(socket) } => isolation::hostile(&socket, seconds, &load),
        Which::Isolation { seconds, load, hostile: None } => isolation::run(seconds.max(0.5), &load),
    }
}

/// `C = A·B` over n×n row-major f32 matrices at the start of three buffers.
fn square_gemm(a: &accel::Buffer, b: &accel::Buffer, c: &accel::Buffer, n: u64) -> Op {
    Op::GemmF32(GemmF32 {
        m: n,
        n,
        k: n,
        a: a.matrix(0, n),
        b: b.matrix(0, n),
        c: c.matrix(0, n),
        alpha: 1.0,
        beta: 0.0,
    })
}

/// How GPU benchmarks wait for their jobs: spinning where the machine has cores to spare
/// (where CUDA's default spins too, and so do the baselines), else the default.
fn gpu_wait_mode() -> accel::WaitMode {
    if accel_core::spin::cores_to_spare() {
        accel::WaitMode::Spin
    } else {
        accel::WaitMode::Auto
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
        let op = square_gemm(&a, &b, &c, nn);
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
    // Queues are in order (one job at a time), so a client that wants to fill the device
    // uses as many queues as the engine has credits.
    let credits = Device::open_at(daemon.socket(), 0)?.info().engines.first().map_or(1, |e| e.credits) as usize;
    let equal = vec![1u32; clients];
    let skewed: Vec<u32> = (0..clients).map(|i| [1, 2, 4][i % 3]).collect();
    for weights in [equal, skewed] {
        let load: Vec<FairClient> =
            weights.iter().map(|&w| FairClient { token: None, queue_weight: w * 100, queues: credits }).collect();
        fairness_run(&daemon, &load, &weights, "queue", seconds, job_ms)?;
    }
    // Tenants: each client in a namespace of its own, all of equal compute weight; the first
    // opens four times the queues. Each is entitled to an equal share all the same.
    let mut admin = Connection::connect(daemon.socket())?;
    let mut load = Vec::new();
    for i in 0..clients.max(2) {
        let (name, token) = (format!("fair{i}"), format!("fair-token-{i}"));
        admin.call(&Request::NsCreate { name: name.clone(), token: Some(token.clone()) })?;
        let assign = Request::NsAssign { name, device: 0, memory_limit: 0, weight: 100, max_clients: 0, evict: false };
        admin.call(&assign)?;
        let queues = if i == 0 { 4 * credits } else { credits };
        load.push(FairClient { token: Some(token), queue_weight: 100, queues });
    }
    fairness_run(&daemon, &load, &vec![1; load.len()], "namespace", seconds, job_ms)
}

/// One client of a fairness scenario.
struct FairClient {
    /// Namespace token (`None`: the root namespace).
    token: Option<String>,
    queue_weight: u32,
    queues: usize,
}

fn engine_ns(conn: &mut Connection) -> Result<HashMap<u64, u64>> {
    Ok(conn.clients()?.into_iter().map(|c| (c.client_id, c.engine_ns)).collect())
}

/// Runs `load` against the device; `entitled` is each client's weight (of queues or of
/// namespaces, as `by` says) that its share is measured against.
fn fairness_run(
    daemon: &SpawnedDaemon,
    load: &[FairClient],
    entitled: &[u32],
    by: &str,
    seconds: f64,
    job_ms: u64,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut ids = Vec::new();
    for c in load {
        let dev = match &c.token {
            Some(token) => Device::open_with_token(daemon.socket(), 0, token)?,
            None => Device::open_at(daemon.socket(), 0)?,
        };
        ids.push(dev.client_id());
        let (queues, stop) = (c.queues, stop.clone());
        let opts = QueueOptions { weight: c.queue_weight, ..Default::default() };
        threads.push(std::thread::spawn(move || -> accel::Result<()> {
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
    let wsum: f64 = entitled.iter().map(|w| f64::from(*w)).sum();
    let shares: Vec<f64> = used.iter().map(|u| u / total).collect();
    let expected: Vec<f64> = entitled.iter().map(|w| f64::from(*w) / wsum).collect();
    let norm: Vec<f64> = shares.iter().zip(&expected).map(|(s, e)| s / e).collect();
    let jain = norm.iter().sum::<f64>().powi(2) / (norm.len() as f64 * norm.iter().map(|x| x * x).sum::<f64>());
    let max_err = norm.iter().map(|x| (x - 1.0).abs()).fold(0.0, f64::max);
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(",");
    let queues: Vec<usize> = load.iter().map(|c| c.queues).collect();
    println!(
        "{{\"bench\":\"fairness\",\"clients\":{},\"weights_of\":\"{by}\",\"weights\":{:?},\"queues\":{:?},\"job_ms\":{job_ms},\"seconds\":{seconds},\"shares\":[{}],\"expected\":[{}],\"jain\":{jain:.4},\"max_share_error\":{max_err:.4},\"engine_busy\":{:.3}}}",
        load.len(),
        entitled,
        queues,
        fmt(&shares),
        fmt(&expected),
        total / 1e9 / seconds,
    );
    Ok(())
}

/// Percentiles of a set of nanosecond samples, as a JSON object.
fn percentiles(mut ns: Vec<u64>) -> (u64, u64, String) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize];
    let (p50, p99) = (at(0.50), at(0.99));
    (p50, p99, format!("{{\"p50\":{p50},\"p99\":{p99},\"p999\":{},\"max\":{}}}", at(0.999), ns[ns.len() - 1]))
}

/// Times `iters` round trips of `f` (after `iters / 10` warm-up), one sample each.
fn sample(iters: usize, mut f: impl FnMut()) -> Vec<u64> {
    for _ in 0..iters / 10 {
        f();
    }
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as u64
        })
        .collect()
}

/// [`sample`] of a step that can fail: the first error ends the run.
fn try_sample(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<u64>> {
    for _ in 0..iters / 10 {
        f()?;
    }
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_nanos() as u64)
        })
        .collect()
}

/// (VmRSS in KiB, thread count) of a process.
fn proc_status(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in status"))?;
        Ok(line[name.len()..].split_whitespace().next().unwrap_or("0").parse()?)
    };
    Ok((field("VmRSS:")?, field("Threads:")?))
}

/// On one connection: a wait that will take a while (a large GEMM's fence), then `n`
/// control requests back to back. Returns (ms until all `n` replies, whether all came
/// before the wait's reply).
fn pipelining(socket: &std::path::Path, n: usize) -> Result<(f64, bool)> {
    use accel_uapi::wire::{self, Kind};
    use accel_uapi::{transport, Reply, Request, WaitPoint};
    use std::os::fd::AsFd;
    let sock = transport::connect(socket)?;
    let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
    let mut seq = 0u32;
    let mut send = |req: &Request| -> Result<u32> {
        seq += 1;
        transport::send(
            sock.as_fd(),
            &wire::encode(Kind::Request, seq, req).map_err(|e| anyhow::anyhow!("{e}"))?,
            &[],
        )?;
        Ok(seq)
    };
    // Set-up, one request at a time; the closure's borrow of `send` ends with the block.
    let fence = {
        let mut call = |req: &Request, buf: &mut Vec<u8>| -> Result<Reply> {
            send(req)?;
            let r = transport::recv(sock.as_fd(), buf)?.context("daemon closed")?;
            Ok(wire::decode::<Reply>(Kind::Reply, &buf[..r.len]).map_err(|e| anyhow::anyhow!("{e}"))?.1)
        };
        let hello = Request::Hello {
            abi_major: wire::ABI_MAJOR,
            abi_minor: wire::ABI_MINOR,
            name: "pipeline".into(),
            token: None,
        };
        call(&hello, &mut buf)?;
        call(&Request::Open { minor: 0, wait_ms: 0 }, &mut buf)?;
        let size = 2048u64;
        let mut bo = || -> Result<accel_uapi::BoHandle> {
            match call(&Request::BoCreate { size: size * size * 4, region: 0 }, &mut buf)? {
                Reply::Bo { handle, .. } => Ok(handle),
                other => anyhow::bail!("{other:?}"),
            }
        };
        let (a, b, c) = (bo()?, bo()?, bo()?);
        let Reply::Queue(queue) =
            call(&Request::QueueCreate { timeout_ms: 60_000, priority: accel::Priority::Normal, weight: 0 }, &mut buf)?
        else {
            anyhow::bail!("no queue")
        };
        let m = |bo| accel::MatView { bo, offset: 0, row_stride: size };
        let gemm = Op::GemmF32(GemmF32 { m: size, n: size, k: size, a: m(a), b: m(b), c: m(c), alpha: 1.0, beta: 0.0 });
        let Reply::Submitted { fence, .. } =
            call(&Request::Submit { queue, op: gemm, wait: vec![], signal: vec![] }, &mut buf)?
        else {
            anyhow::bail!("no fence")
        };
        fence
    };
    let wait_seq =
        send(&Request::Wait { points: vec![WaitPoint::Fence(fence)], all: true, timeout_ns: 60_000_000_000 })?;
    let t = Instant::now();
    for _ in 0..n {
        send(&Request::DeviceInfo { minor: 0 })?;
    }
    let (mut infos, mut wait_done_first) = (0, false);
    while infos < n {
        let r = transport::recv(sock.as_fd(), &mut buf)?.context("daemon closed")?;
        let (rseq, _) = wire::decode::<Reply>(Kind::Reply, &buf[..r.len]).map_err(|e| anyhow::anyhow!("{e}"))?;
        if rseq == wait_seq {
            wait_done_first = true;
        } else {
            infos += 1;
        }
    }
    Ok((t.elapsed().as_secs_f64() * 1e3, !wait_done_first))
}

fn scale(clients: usize, active: usize, ops: usize) -> Result<()> {
    let fd_limit = acceld::raise_fd_limit();
    // Every client holds its socket here; one with a ring also a watch on it and two
    // eventfds. Past what the descriptor limit allows, clients stay ring-less (idle).
    anyhow::ensure!(
        fd_limit >= clients as u64 + 5 * active as u64 + 64,
        "open-file limit {fd_limit} is too low for {clients} clients"
    );
    let ring_clients = (((fd_limit - 64) as usize).saturating_sub(clients) / 4).clamp(active.min(clients), clients);
    if ring_clients < clients {
        eprintln!("open-file limit {fd_limit}: {ring_clients} of {clients} clients get a ring, the rest stay idle without one");
    }
    let daemon = SpawnedDaemon::start(&["cpu"])?;
    let (rss0, threads0) = proc_status(daemon.pid())?;
    let t = Instant::now();
    let mut conns = Vec::with_capacity(clients);
    let mut idle = Vec::new();
    for i in 0..clients {
        let dev = Device::open_at(daemon.socket(), 0)?;
        if i < ring_clients {
            let ring = dev.create_queue()?.into_ring(16)?;
            conns.push((dev, ring));
        } else {
            idle.push(dev);
        }
    }
    let setup = t.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let (rss1, threads1) = proc_status(daemon.pid())?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (dev, mut ring) in conns.drain(..active.min(clients)) {
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || -> Result<u64> {
            let _dev = dev;
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                ring.submit_wait(&Op::Nop, Duration::from_secs(5))?
                    .status()
                    .map_err(|e| anyhow::anyhow!("nop: {e}"))?;
                done += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            Ok(done)
        }));
    }
    let mut probe = Connection::connect(daemon.socket())?;
    let stats = probe.stats()?;
    anyhow::ensure!(stats.rings as usize >= ring_clients, "only {} rings registered", stats.rings);
    let t = Instant::now();
    let mut failed = None;
    let (_, p99, lat) = percentiles(sample(ops, || {
        if let Err(e) = probe.device_info(0) {
            failed = Some(e);
        }
    }));
    let elapsed = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut jobs = 0;
    for w in workers {
        jobs += w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    let (pipelined_ms, none_waited) = pipelining(daemon.socket(), 1000)?;
    println!(
        "{{\"bench\":\"scale\",\"clients\":{clients},\"fd_limit\":{fd_limit},\"rings\":{},\"active\":{active},\"setup_ms\":{:.1},\"control_rtt_ns\":{lat},\"control_p99_under_1ms\":{},\"active_jobs_per_s\":{:.0},\
\"daemon_rss_kib\":{{\"empty\":{rss0},\"with_clients\":{rss1}}},\"rss_per_idle_client_kib\":{:.1},\"daemon_threads\":{{\"empty\":{threads0},\"with_clients\":{threads1}}},\
\"pipelined_requests\":1000,\"pipelined_ms\":{pipelined_ms:.2},\"pipelined_none_waited_for_the_wait\":{none_waited}}}",
        stats.rings,
        setup.as_secs_f64() * 1e3,
        p99 < 1_000_000,
        jobs as f64 / elapsed,
        rss1.saturating_sub(rss0) as f64 / clients as f64,
    );
    drop(conns);
    drop(idle);
    Ok(())
}
