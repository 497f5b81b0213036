//! `accel bench bindings`: what the C and Python bindings add to the Rust client, measured
//! in one run against one daemon: the synchronous ring round trip of a null job (p50, p99)
//! and an n³ f32 GEMM through a queue (median). The sides run in turns, several rounds, and
//! each keeps its best round, so machine noise hits all alike.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use accel::{Device, Op};
use anyhow::{Context, Result};

use super::percentiles;
use crate::spawn::SpawnedDaemon;

/// One side's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    rtt_p50_ns: u64,
    rtt_p99_ns: u64,
    gemm_median_ns: u64,
}

impl Figures {
    fn best(self, other: Figures) -> Figures {
        Figures {
            rtt_p50_ns: self.rtt_p50_ns.min(other.rtt_p50_ns),
            rtt_p99_ns: self.rtt_p99_ns.min(other.rtt_p99_ns),
            gemm_median_ns: self.gemm_median_ns.min(other.gemm_median_ns),
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"rtt_p50_ns\":{},\"rtt_p99_ns\":{},\"gemm_median_ns\":{}}}",
            self.rtt_p50_ns, self.rtt_p99_ns, self.gemm_median_ns
        )
    }

    fn parse(line: &str) -> Result<Figures> {
        let field = |name: &str| -> Result<u64> {
            let key = format!("\"{name}\":");
            let at = line.find(&key).with_context(|| format!("no {name} in {line:?}"))? + key.len();
            let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
            Ok(digits.parse()?)
        };
        Ok(Figures {
            rtt_p50_ns: field("rtt_p50_ns")?,
            rtt_p99_ns: field("rtt_p99_ns")?,
            gemm_median_ns: field("gemm_median_ns")?,
        })
    }
}

fn rust_side(socket: &Path, iters: usize, n: u64, reps: usize) -> Result<Figures> {
    let dev = Device::open_at(socket, 0)?;
    let mut ring = dev.create_queue()?.into_ring(64)?;
    for _ in 0..iters / 10 {
        ring.submit_wait(&Op::Nop, Duration::from_secs(5))?;
    }
    let mut rtt = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        ring.submit_wait(&Op::Nop, Duration::from_secs(5))?;
        rtt.push(t.elapsed().as_nanos() as u64);
    }
    let (p50, p99, _) = percentiles(rtt);
    let bytes = n * n * 4;
    let (a, b, c) = (dev.alloc(bytes)?, dev.alloc(bytes)?, dev.alloc(bytes)?);
    let op = super::square_gemm(&a, &b, &c, n);
    let q = dev.create_queue()?;
    let mut g = Vec::with_capacity(reps + 1);
    for _ in 0..=reps {
        let t = Instant::now();
        q.submit(op)?.wait()?;
        g.push(t.elapsed().as_nanos() as u64);
    }
    g.remove(0);
    g.sort_unstable();
    Ok(Figures { rtt_p50_ns: p50, rtt_p99_ns: p99, gemm_median_ns: g[g.len() / 2] })
}

const PYTHON_SIDE: &str = r#"
import sys, time, accel
iters, n, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dev = accel.Device(0)
ring = dev.ring(64)
for _ in range(iters // 10):
    ring.nop_sync(5)
ns = time.perf_counter_ns
rtt = []
for _ in range(iters):
    t = ns(); ring.nop_sync(5); rtt.append(ns() - t)
rtt.sort()
a, b, c = (dev.alloc(n * n * 4) for _ in range(3))
q = dev.queue()
g = []
for _ in range(reps + 1):
    t = ns(); q.gemm(a, b, c, n, n, n).wait(); g.append(ns() - t)
g = sorted(g[1:])
print('{"rtt_p50_ns":%d,"rtt_p99_ns":%d,"gemm_median_ns":%d}' % (rtt[iters // 2], rtt[iters * 99 // 100], g[len(g) // 2]))
"#;

fn run_side(cmd: &mut Command, socket: &Path) -> Result<Figures> {
    let out = cmd.env("ACCEL_SOCKET", socket).env_remove("ACCEL_NS_TOKEN").output()?;
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Figures::parse(String::from_utf8_lossy(&out.stdout).trim())
}

/// Compiles examples/c/bench.c against the libaccel next to this binary; `Err` says why not.
fn build_c(dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let libdir = exe.parent().context("binary directory")?.to_path_buf();
    anyhow::ensure!(
        libdir.join("libaccel.so").exists(),
        "no libaccel.so in {} (cargo build --release -p accel-capi)",
        libdir.display()
    );
    let root = libdir.join("../..");
    let src = root.join("examples/c/bench.c");
    anyhow::ensure!(src.exists(), "no {} (run from a checkout)", src.display());
    let out = dir.join("accel-c-bench");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L"])
        .arg(&src)
        .arg("-I")
        .arg(root.join("crates/accel-capi/include"))
        .arg("-L")
        .arg(&libdir)
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .args(["-laccel", "-o"])
        .arg(&out)
        .status()?;
    anyhow::ensure!(status.success(), "cc failed");
    Ok(out)
}

/// The benchmark.
pub fn run(iters: usize, n: u64, reps: usize, rounds: usize) -> Result<()> {
    let daemon = SpawnedDaemon::start(&["cpu"])?;
    let socket = daemon.socket().to_path_buf();
    let tmp = std::env::temp_dir().join(format!("accel-bench-bindings-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let c_bin = build_c(&tmp);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let py_ok =
        Command::new(&python).args(["-c", "import accel._accel"]).current_dir("/").status().is_ok_and(|s| s.success());
    let args = [iters.to_string(), n.to_string(), reps.to_string()];
    let (mut rust, mut py, mut c): (Option<Figures>, Option<Figures>, Option<Figures>) = (None, None, None);
    let keep = |best: &mut Option<Figures>, f: Figures| *best = Some(best.map_or(f, |b| b.best(f)));
    for _ in 0..rounds.max(1) {
        keep(&mut rust, rust_side(&socket, iters, n, reps)?);
        if py_ok {
            let f = run_side(Command::new(&python).arg("-c").arg(PYTHON_SIDE).args(&args).current_dir("/"), &socket)?;
            keep(&mut py, f);
        }
        if let Ok(bin) = &c_bin {
            keep(&mut c, run_side(Command::new(bin).args(&args), &socket)?);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let rust = rust.context("no Rust figures")?;
    let versus = |name: &str, f: Option<Figures>, missing: String| match f {
        Some(f) => format!(
            "\"{name}\":{},\"{name}_rtt_p50_added_ns\":{},\"{name}_gemm_ratio\":{:.4}",
            f.json(),
            f.rtt_p50_ns as i64 - rust.rtt_p50_ns as i64,
            f.gemm_median_ns as f64 / rust.gemm_median_ns as f64
        ),
        None => format!("\"{name}\":null,\"{name}_missing\":{missing:?}"),
    };
    println!(
        "{{\"bench\":\"bindings\",\"iters\":{iters},\"gemm_n\":{n},\"reps\":{reps},\"rounds\":{rounds},\"rust\":{},{},{}}}",
        rust.json(),
        versus("python", py, "the accel Python package is not installed (pip install ./python)".into()),
        versus("c", c, c_bin.err().map_or(String::new(), |e| e.to_string())),
    );
    Ok(())
}
