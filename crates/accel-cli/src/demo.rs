//! `accel demo`: the main job end to end. Starts a daemon with the cpu device,
//! connects as a client, fills C on the device, runs C = A·B + 0.5·C after it
//! (a fence dependency), signals a timeline syncobj, checks the result against a
//! naive reference, and shows that an exported buffer imported by a second client
//! is the same memory.

use std::time::{Duration, Instant};

use accel::{Device, GemmF32, Op};
use anyhow::{ensure, Result};

use crate::spawn::SpawnedDaemon;

/// Deterministic values in [-1, 1) (xorshift), so runs are reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Row-major n×n reference product in f64.
fn reference(a: &[f32], b: &[f32], n: usize) -> Vec<f64> {
    let mut c = vec![0f64; n * n];
    for i in 0..n {
        for p in 0..n {
            let aip = f64::from(a[i * n + p]);
            for j in 0..n {
                c[i * n + j] += aip * f64::from(b[p * n + j]);
            }
        }
    }
    c
}

pub fn run(n: usize) -> Result<()> {
    ensure!((1..=4096).contains(&n), "n must be in 1..=4096");
    let daemon = SpawnedDaemon::start(&["cpu"])?;
    println!("daemon     pid {} on {}", daemon.pid(), daemon.socket().display());

    let dev = Device::open_at(daemon.socket(), 0)?;
    let info = dev.info();
    println!(
        "device     accel{}: {} ({}), {}, {} threads",
        info.minor,
        info.driver,
        info.name,
        info.category.name(),
        info.compute_units
    );

    let bytes = (n * n * 4) as u64;
    let (a, b, c) = (dev.alloc(bytes)?, dev.alloc(bytes)?, dev.alloc(bytes)?);
    let (av, bv) = (pseudo_random(n * n, 1), pseudo_random(n * n, 2));
    a.write_f32(0, &av)?;
    b.write_f32(0, &bv)?;

    let queue = dev.create_queue()?;
    let timeline = dev.create_syncobj(true)?;
    let start = Instant::now();
    let fill = queue.submit(Op::Fill { dst: c.whole(), pattern: 1.0f32.to_bits() })?;
    let gemm = GemmF32 {
        m: n as u64,
        n: n as u64,
        k: n as u64,
        a: a.matrix(0, n as u64),
        b: b.matrix(0, n as u64),
        c: c.matrix(0, n as u64),
        alpha: 1.0,
        beta: 0.5,
    };
    let job = queue.submit_with(Op::GemmF32(gemm), &[fill.point()], &[timeline.signal_point(1)])?;
    timeline.wait(1, Duration::from_secs(60))?;
    let elapsed = start.elapsed();
    job.wait()?;

    let got = c.read_f32(0, n * n)?;
    let want = reference(&av, &bv, n);
    let max_err = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - (w + 0.5)).abs()).fold(0.0, f64::max);
    let gflops = 2.0 * (n as f64).powi(3) / elapsed.as_secs_f64() / 1e9;
    println!(
        "gemm       {n}×{n}×{n} f32 after a fill, {:.2} ms, {gflops:.1} GFLOP/s (incl. fill and round trips)",
        elapsed.as_secs_f64() * 1e3
    );
    println!("verify     max |C - (A·B + 0.5)| = {max_err:.2e} against an f64 reference");
    ensure!(max_err < 1e-3 * n as f64, "GEMM result is wrong: max error {max_err}");
    println!("timeline   point {} reached", timeline.query()?);

    // PRIME-style sharing: a second client imports C and sees the same bytes.
    let other = Device::open_at(daemon.socket(), 0)?;
    let shared = other.import(c.export()?)?;
    let mut first = [0u8; 64];
    let mut seen = [0u8; 64];
    c.read(0, &mut first)?;
    shared.read(0, &mut seen)?;
    ensure!(first == seen, "imported buffer differs from the exported one");
    shared.write(0, &[0xAB; 4])?;
    c.read(0, &mut first[..4])?;
    ensure!(first[..4] == [0xAB; 4], "write through the import is not visible to the exporter");
    println!(
        "sharing    client {} imported client {}'s buffer: same pages (write seen both ways)",
        other.client_id(),
        dev.client_id()
    );

    let mut conn = accel::Connection::connect(daemon.socket())?;
    let s = conn.stats()?;
    println!(
        "objects    {} clients, {} buffers ({} MiB), {} fences, {} syncobjs, {} queues",
        s.clients,
        s.buffers,
        s.buffer_bytes >> 20,
        s.fences,
        s.syncobjs,
        s.queues
    );
    println!("demo OK");
    Ok(())
}
