//! `accel bench cuda-mps`: NVIDIA's Multi-Process Service as the third way to share a GPU
//! between processes, beside accel's shared context and time-slicing (a context per
//! process), on the same GPU in the same run.
//!
//! - **clients**: N processes launching 10 µs kernels for a while, through accel, each with its
//!   own context (time-sliced), and each with its own context through MPS (one server context
//!   runs every client's kernels): aggregate kernels per second.
//! - **containment**: 4 innocent MPS clients launching while another MPS client launches a
//!   kernel that stores to an unmapped address: how many innocent clients saw their work
//!   fail (accel's figure is `bench cuda`'s `cuda-containment` line).
//!
//! MPS runs with pipe and log directories of its own (`--dir`), so it serves only this
//! bench's clients and nothing else on the machine uses it; it is told to quit at the end.
//! Where it cannot start (no `nvidia-cuda-mps-control`, or a container that does not allow
//! it), the MPS figures are skipped with the reason and the others still print.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use accel::Device;
use anyhow::Result;

use super::cuda::{kernels_per_s, parse_report, Clients, SHORT_NS};
use crate::spawn::SpawnedDaemon;

/// The MPS control daemon with directories of its own, told to quit when dropped.
struct Mps {
    pipe: PathBuf,
    log: PathBuf,
}

impl Mps {
    /// Starts `nvidia-cuda-mps-control -d` with its pipe and log directories under `dir`; the
    /// reason when it cannot.
    fn start(dir: &Path) -> Result<Mps, String> {
        let mps = Mps { pipe: dir.join("pipe"), log: dir.join("log") };
        for d in [&mps.pipe, &mps.log] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let status = Command::new("nvidia-cuda-mps-control")
            .arg("-d")
            .envs(mps.envs())
            .status()
            .map_err(|e| format!("nvidia-cuda-mps-control: {e}"))?;
        if !status.success() {
            return Err(format!("nvidia-cuda-mps-control -d: {status}; {}", mps.log_tail()));
        }
        Ok(mps)
    }

    /// What a process needs in its environment to be an MPS client of this daemon.
    fn envs(&self) -> [(&'static str, &Path); 2] {
        [("CUDA_MPS_PIPE_DIRECTORY", &self.pipe), ("CUDA_MPS_LOG_DIRECTORY", &self.log)]
    }

    /// Sends the control daemon one command; its answer (`None`: it did not answer in 10 s).
    fn control(&self, command: &str) -> Option<String> {
        let mut child = Command::new("nvidia-cuda-mps-control")
            .envs(self.envs())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let _ = writeln!(child.stdin.take()?, "{command}");
        let end = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok()?.is_none() {
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The last lines of the control daemon's log, for an error.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.join("control.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }
}

impl Drop for Mps {
    fn drop(&mut self) {
        if self.control("quit").is_none() {
            eprintln!("accel bench cuda-mps: MPS did not quit; its log: {}", self.log.display());
        }
    }
}

fn quote(s: &str) -> String {
    s.replace('"', "'")
}

pub fn run(clients: &[usize], seconds: f64, dir: &Path) -> Result<()> {
    // accel and time-slicing first, before MPS runs on the GPU.
    let daemon = SpawnedDaemon::start(&["cuda:0"])?;
    let name = quote(&Device::open_at(daemon.socket(), 0)?.info().name);
    let mut rows = Vec::new();
    for &n in clients {
        let accel = kernels_per_s(n, seconds, Some(daemon.socket()), None, &[])?.0;
        let timeslice = kernels_per_s(n, seconds, None, None, &[])?.0;
        rows.push((n, accel, timeslice));
    }
    drop(daemon);
    let row = |n: usize, accel: f64, timeslice: f64, mps: &str| {
        println!(
            "{{\"bench\":\"cuda-mps-clients\",\"device\":\"{name}\",\"clients\":{n},\"kernel_us\":{},\"seconds\":{seconds},\"accel_kernels_per_s\":{accel:.0},\"timeslice_kernels_per_s\":{timeslice:.0},{mps}}}",
            SHORT_NS / 1000
        )
    };
    let mps = match Mps::start(dir) {
        Ok(mps) => mps,
        Err(why) => {
            for (n, accel, timeslice) in rows {
                row(n, accel, timeslice, &format!("\"mps_skipped\":\"{}\"", quote(&why)));
            }
            return Ok(());
        }
    };
    let envs = mps.envs();
    for (n, accel, timeslice) in rows {
        match kernels_per_s(n, seconds, None, None, &envs) {
            Ok((through_mps, ..)) => {
                // The server's pid: the clients went through MPS, not around it.
                let servers = mps.control("get_server_list").unwrap_or_default();
                row(
                    n,
                    accel,
                    timeslice,
                    &format!(
                        "\"mps_kernels_per_s\":{through_mps:.0},\"mps_servers\":\"{}\",\"accel_vs_mps\":{:.3},\"mps_vs_timeslice\":{:.3}",
                        quote(&servers.replace('\n', " ")),
                        accel / through_mps,
                        through_mps / timeslice
                    ),
                );
            }
            Err(e) => row(n, accel, timeslice, &format!("\"mps_error\":\"{}\"", quote(&format!("{e:#}")))),
        }
    }
    containment(&mps, seconds.max(4.0));
    Ok(())
}

/// 4 innocent MPS clients launch short kernels while a fifth launches one that faults.
fn containment(mps: &Mps, seconds: f64) {
    let envs = mps.envs();
    let result = (|| -> Result<(String, Vec<super::cuda::Report>)> {
        let mut innocents = Clients::spawn(4, seconds, "direct", &envs)?;
        innocents.go()?;
        std::thread::sleep(Duration::from_secs_f64(seconds / 4.0));
        let mut culprit = Clients::spawn(1, seconds, "direct-fault", &envs)?;
        culprit.go()?;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds + 60.0);
        let said = culprit.reports(deadline).pop().and_then(|r| r.line).unwrap_or_else(|| "(nothing)".into());
        Ok((said, innocents.reports(deadline)))
    })();
    let (culprit, reports) = match result {
        Ok(r) => r,
        Err(e) => {
            println!("{{\"bench\":\"cuda-mps-containment\",\"error\":\"{}\"}}", quote(&format!("{e:#}")));
            return;
        }
    };
    let (mut clients_failed, mut failed, mut kernels, mut hung) = (0, 0, 0, 0);
    for r in &reports {
        match r.line.as_deref().map(parse_report) {
            Some(Ok([k, f, ..])) => {
                kernels += k;
                failed += f;
                clients_failed += usize::from(f > 0 || !r.ok);
            }
            _ => {
                hung += 1;
                clients_failed += 1;
            }
        }
    }
    println!(
        "{{\"bench\":\"cuda-mps-containment\",\"innocent_clients\":4,\"kernel_us\":{},\"innocent_clients_failed\":{clients_failed},\"innocent_failed\":{failed},\"innocent_kernels\":{kernels},\"innocent_no_report\":{hung},\"culprit\":\"{}\"}}",
        SHORT_NS / 1000,
        quote(&culprit)
    );
}
