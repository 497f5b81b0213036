//! `accel bench cuda`: the cuda driver against CUDA used directly, on the same GPU.
//!
//! - **launch**: one client's round trip for a kernel of 10 µs and of 100 µs (it spins on
//!   `%globaltimer`) through accel's ring against `cuLaunchKernel` + `cuStreamSynchronize`
//!   in one process with its own context.
//! - **clients**: N processes each launching 10 µs kernels back to back for a while, through
//!   accel (one shared context in the daemon) against N processes each with its own context
//!   (the GPU time-slices between them): aggregate kernels per second.
//! - **containment**: 4 innocent client processes launching while another client launches
//!   a kernel that stores to an unmapped address and one whose kernel never ends (its queue
//!   times out): the innocent clients' failed jobs and whether their device memory kept
//!   every increment.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use accel::{Device, Errno, LaunchArg, Op};
use accel_driver_cuda::direct::{Direct, KERNELS_PTX};
use anyhow::{ensure, Context, Result};

use super::{median, percentiles};
use crate::spawn::SpawnedDaemon;

/// The short kernel of the clients and containment runs.
pub(super) const SHORT_NS: u32 = 10_000;
/// The long kernel of the launch-overhead figure.
const LONG_NS: u32 = 100_000;

/// A client of the daemon with the kernels loaded and a vram counter.
struct Client {
    dev: Device,
    ring: accel::Ring,
    program: accel::Program,
    counter: accel::Buffer,
}

impl Client {
    fn open(socket: &Path, timeout: Option<Duration>) -> Result<Client> {
        let dev = Device::open_at(socket, 0)?;
        let queue = match timeout {
            Some(t) => dev.create_queue_with_timeout(t)?,
            None => dev.create_queue()?,
        };
        let program = dev.load_program(accel_driver_cuda::FORMAT, KERNELS_PTX.as_bytes())?;
        let counter = dev.alloc_in(4096, 1)?;
        Ok(Client { dev, ring: queue.into_ring(16)?, program, counter })
    }

    /// Launches `entry` through the ring and waits for its completion.
    fn launch(&mut self, entry: &str, ns: u32) -> accel::Result<()> {
        let op =
            self.program.launch(entry, [1, 1, 1], &[LaunchArg::Buffer(self.counter.whole()), LaunchArg::U32(ns)])?;
        let done = self.ring.submit_wait(&op, Duration::from_secs(60))?;
        done.status().map_err(|code| accel::Error { code, message: format!("{entry} failed") })
    }

    /// The counter's value (copied to host memory).
    fn count(&self) -> Result<u32> {
        let host = self.dev.alloc(4096)?;
        self.ring.queue().submit(Op::Copy { src: self.counter.whole(), dst: host.whole() })?.wait()?;
        let mut b = [0u8; 4];
        host.read(0, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }
}

/// Where a launch's round trip goes, by parts (p50, spinning waits): a null job through the
/// ring (the poller completes it: client and poller only), a 4-byte fill of host memory on
/// the cpu device (the whole job path of the core, with a driver that does nothing to speak
/// of), the same fill on the cuda device (the core plus the worker: a CPU fill there, the
/// completion mark on the GPU), and an empty kernel through accel and directly (with nothing
/// after it, with the GPU's mark, and with the worker's event and store before that mark).
fn path_floors(socket: &Path, client: &mut Client, direct: &mut Direct, iters: usize, name: &str) -> Result<()> {
    let mode = super::gpu_wait_mode();
    client.ring.set_wait_mode(mode);
    let p50 = |r: Result<(u64, u64)>| r.map(|(p50, _)| p50 as f64 / 1e3);
    let host = client.dev.alloc(4096)?;
    let fill = Op::Fill { dst: host.view(0, 4), pattern: 7 };
    let nop = p50(time(iters, || {
        client.ring.submit_wait(&Op::Nop, Duration::from_secs(10))?.status().map_err(anyhow::Error::msg)
    }))?;
    let cuda_fill = p50(time(iters, || {
        client.ring.submit_wait(&fill, Duration::from_secs(10))?.status().map_err(anyhow::Error::msg)
    }))?;
    let cpu = Device::open_at(socket, 1)?;
    let cpu_host = cpu.alloc(4096)?;
    let mut cpu_ring = cpu.create_queue()?.into_ring(16)?;
    cpu_ring.set_wait_mode(mode);
    let cpu_fillop = Op::Fill { dst: cpu_host.view(0, 4), pattern: 7 };
    let cpu_fill = p50(time(iters, || {
        cpu_ring.submit_wait(&cpu_fillop, Duration::from_secs(10))?.status().map_err(anyhow::Error::msg)
    }))?;
    let accel_empty = p50(time(iters, || Ok(client.launch("spin", 0)?)))?;
    let direct_empty = p50(time(iters, || direct.launch_sync(0).map_err(|e| anyhow::anyhow!("{}", e.message))))?;
    // The same with the completion mark the worker writes after each job.
    let mut token = 0;
    let direct_marked = p50(time(iters, || {
        token += 1;
        direct.launch_sync_marked(0, token).map_err(|e| anyhow::anyhow!("{}", e.message))
    }))?;
    // And with what the worker does since: an event before the mark, whose completion the
    // worker relays with a store of its own.
    let direct_evented = p50(time(iters, || {
        token += 1;
        direct.launch_sync_evented(0, token).map_err(|e| anyhow::anyhow!("{}", e.message))
    }))?;
    println!(
        "{{\"bench\":\"cuda-path\",\"device\":\"{name}\",\"wait\":\"{mode:?}\",\"iters\":{iters},\"ring_nop_p50_us\":{nop:.1},\"cpu_fill_p50_us\":{cpu_fill:.1},\"cuda_host_fill_p50_us\":{cuda_fill:.1},\"accel_empty_kernel_p50_us\":{accel_empty:.1},\"direct_empty_kernel_p50_us\":{direct_empty:.1},\"direct_marked_kernel_p50_us\":{direct_marked:.1},\"direct_evented_kernel_p50_us\":{direct_evented:.1}}}"
    );
    Ok(())
}

/// Median and 99th percentile of `iters` round trips of `f`, nanoseconds.
fn time(iters: usize, f: impl FnMut() -> Result<()>) -> Result<(u64, u64)> {
    let (p50, p99, _) = percentiles(super::try_sample(iters, f)?);
    Ok((p50, p99))
}

/// `clients` empty: the launch figures only.
pub fn run(clients: &[usize], seconds: f64, iters: usize, rounds: usize) -> Result<()> {
    let daemon = SpawnedDaemon::start(&["cuda:0", "cpu"])?;
    let socket = daemon.socket();
    let name = Device::open_at(socket, 0)?.info().name.replace('"', "'");

    // One client's launch round trip against CUDA in this process.
    // The client waits as CUDA's default would here (spinning where cores allow), and also
    // with accel's default (spin 50 µs, then sleep).
    let mut client = Client::open(socket, None)?;
    let mut direct = Direct::new(0, KERNELS_PTX, "spin").map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let mut modes = vec![super::gpu_wait_mode()];
    if modes[0] != accel::WaitMode::Auto {
        modes.push(accel::WaitMode::Auto);
    }
    // Per (mode, kernel): each round's overhead, for the summary.
    let mut overheads: Vec<((accel::WaitMode, u32), Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        for (mode, ns) in modes.iter().flat_map(|m| [(*m, SHORT_NS), (*m, LONG_NS)]) {
            client.ring.set_wait_mode(mode);
            let (a50, a99) = time(iters, || Ok(client.launch("spin", ns)?))?;
            let (d50, d99) = time(iters, || direct.launch_sync(ns).map_err(|e| anyhow::anyhow!("{}", e.message)))?;
            let overhead = a50 as f64 / d50 as f64 - 1.0;
            println!(
                "{{\"bench\":\"cuda-launch\",\"device\":\"{name}\",\"wait\":\"{mode:?}\",\"kernel_us\":{},\"round\":{round},\"iters\":{iters},\"accel_p50_us\":{:.1},\"accel_p99_us\":{:.1},\"direct_p50_us\":{:.1},\"direct_p99_us\":{:.1},\"overhead_p50\":{overhead:.3}}}",
                ns / 1000,
                a50 as f64 / 1e3,
                a99 as f64 / 1e3,
                d50 as f64 / 1e3,
                d99 as f64 / 1e3,
            );
            match overheads.iter_mut().find(|(k, _)| *k == (mode, ns)) {
                Some((_, v)) => v.push(overhead),
                None => overheads.push(((mode, ns), vec![overhead])),
            }
        }
    }
    if rounds > 1 {
        for ((mode, ns), v) in overheads {
            let (least, most) =
                (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(f64::MIN, f64::max));
            println!(
                "{{\"bench\":\"cuda-launch-rounds\",\"device\":\"{name}\",\"wait\":\"{mode:?}\",\"kernel_us\":{},\"rounds\":{rounds},\"overhead_median\":{:.3},\"overhead_min\":{least:.3},\"overhead_max\":{most:.3}}}",
                ns / 1000,
                median(v)
            );
        }
    }
    path_floors(socket, &mut client, &mut direct, iters, &name)?;
    drop((client, direct));
    if clients.is_empty() {
        return Ok(());
    }

    // Many small clients: accel's shared context against a context per process.
    for &n in clients {
        let accel = kernels_per_s(n, seconds, Some(socket), None, &[])?;
        let direct = kernels_per_s(n, seconds, None, None, &[])?;
        println!(
            "{{\"bench\":\"cuda-clients\",\"device\":\"{name}\",\"clients\":{n},\"kernel_us\":{},\"seconds\":{seconds},\"accel_kernels_per_s\":{:.0},\"timeslice_kernels_per_s\":{:.0},\"accel_failed\":{},\"ratio\":{:.3}}}",
            SHORT_NS / 1000,
            accel.0,
            direct.0,
            accel.1,
            accel.0 / direct.0
        );
    }

    // Containment: a faulting and a hanging client beside 4 innocent ones.
    let (_, innocent_failed, lost, extra) = kernels_per_s(4, seconds.max(4.0), Some(socket), Some(socket), &[])?;
    let recoveries = Client::open(socket, None).and_then(|mut c| Ok(c.launch("spin", 1_000)?)).is_ok();
    println!(
        "{{\"bench\":\"cuda-containment\",\"device\":\"{name}\",\"innocent_clients\":4,\"kernel_us\":{},\"innocent_failed\":{innocent_failed},\"innocent_increments_lost\":{lost},\"innocent_increments_extra\":{extra},\"device_usable_after\":{recoveries}}}",
        SHORT_NS / 1000
    );
    Ok(())
}

/// Client processes of this bench (`accel bench cuda --child <target>`), started and each
/// waiting for `go`.
pub(super) struct Clients {
    children: Vec<(Child, std::io::Lines<BufReader<std::process::ChildStdout>>)>,
}

/// What a client process said when it ended: its report line (`None`: it said nothing, or
/// was killed at the deadline), and whether it exited successfully.
pub(super) struct Report {
    pub line: Option<String>,
    pub ok: bool,
}

impl Clients {
    /// Starts `n` clients of `target` (a daemon socket, `direct`, or `direct-fault`) that run
    /// for `seconds` once told to go, with `envs` added to their environment.
    pub(super) fn spawn(n: usize, seconds: f64, target: &str, envs: &[(&str, &Path)]) -> Result<Clients> {
        let exe = std::env::current_exe().context("locating the accel binary")?;
        let commands = (0..n).map(|_| {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "cuda", "--seconds", &seconds.to_string(), "--child", target]);
            cmd.envs(envs.iter().copied());
            cmd
        });
        Clients::start(commands)
    }

    /// Starts `commands`, each a client that says `ready`, waits for `go`, and prints its
    /// report.
    fn start(commands: impl IntoIterator<Item = Command>) -> Result<Clients> {
        let mut children = Vec::new();
        for mut cmd in commands {
            let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("starting a client")?;
            let lines = BufReader::new(child.stdout.take().context("client stdout")?).lines();
            children.push((child, lines));
        }
        for (_, lines) in &mut children {
            ensure!(lines.next().transpose()?.as_deref() == Some("ready"), "a client did not start");
        }
        Ok(Clients { children })
    }

    /// Tells every client to go.
    pub(super) fn go(&mut self) -> Result<()> {
        for (c, _) in &mut self.children {
            writeln!(c.stdin.as_mut().context("client stdin")?, "go")?;
        }
        Ok(())
    }

    /// Each client's report, in order; one that has not reported by `deadline` is killed
    /// (through its handle, so no other process can be hit) and reports nothing.
    pub(super) fn reports(self, deadline: Instant) -> Vec<Report> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut children = Vec::new();
        for (i, (child, mut lines)) in self.children.into_iter().enumerate() {
            let tx = tx.clone();
            // Ends when the client prints its line or its stdout closes (it exited or was killed).
            std::thread::spawn(move || {
                let _ = tx.send((i, lines.next().and_then(|l| l.ok())));
            });
            children.push(child);
        }
        drop(tx);
        let mut lines: Vec<Option<String>> = vec![None; children.len()];
        while let Ok((i, line)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            lines[i] = line;
        }
        children
            .into_iter()
            .zip(lines)
            .map(|(mut c, line)| {
                if line.is_none() {
                    let _ = c.kill();
                }
                let ok = c.wait().is_ok_and(|s| s.success());
                Report { line, ok }
            })
            .collect()
    }
}

/// Runs `n` client processes (through the daemon at `socket`, else CUDA directly) launching
/// short kernels for `seconds`, with `envs` added to their environment; with `culprit`, this
/// process meanwhile makes a fault and a hang through it. Returns (aggregate kernels/s, failed
/// jobs, increments lost, increments beyond the kernels that succeeded: a job run again after
/// its work was done).
pub(super) fn kernels_per_s(
    n: usize,
    seconds: f64,
    socket: Option<&Path>,
    culprit: Option<&Path>,
    envs: &[(&str, &Path)],
) -> Result<(f64, u64, u64, u64)> {
    let target = socket.map_or("direct".into(), |s| s.display().to_string());
    let mut clients = Clients::spawn(n, seconds, &target, envs)?;
    clients.go()?;
    if let Some(socket) = culprit {
        std::thread::sleep(Duration::from_secs_f64(seconds / 4.0));
        // The faulting client's queue has no timeout (a fault is no hang, and its recovery
        // takes two worker restarts); the hanging one's times out after 500 ms.
        let mut faulty = Client::open(socket, None)?;
        let mut hung = Client::open(socket, Some(Duration::from_millis(500)))?;
        let code = |r: accel::Result<()>| r.err().map_or("ok".to_string(), |e| format!("{:?}", e.code));
        // ACCEL_BENCH_CULPRIT=hang leaves the fault out.
        let only_hang = std::env::var("ACCEL_BENCH_CULPRIT").is_ok_and(|v| v == "hang");
        let fault = if only_hang { "skipped".into() } else { code(faulty.launch("fault", 0)) };
        std::thread::sleep(Duration::from_secs_f64(seconds / 4.0));
        let hang = code(hung.launch("hang", 0));
        // Printed for the record; the caller's JSON carries the innocents' side.
        println!("{{\"bench\":\"cuda-culprit\",\"fault\":\"{fault}\",\"hang\":\"{hang}\",\"want\":\"EFAULT, ETIME\"}}");
    }
    let (mut kernels, mut failed, mut lost, mut extra) = (0u64, 0u64, 0u64, 0u64);
    for r in clients.reports(Instant::now() + Duration::from_secs_f64(seconds + 60.0)) {
        let report = r.line.unwrap_or_default();
        ensure!(r.ok, "a client failed: {report}");
        let v = parse_report(&report)?;
        (kernels, failed, lost, extra) = (kernels + v[0], failed + v[1], lost + v[2], extra + v[3]);
    }
    Ok((kernels as f64 / seconds, failed, lost, extra))
}

/// A client's "kernels failed lost extra".
pub(super) fn parse_report(report: &str) -> Result<[u64; 4]> {
    let v: Vec<u64> = report.split_whitespace().map(|w| w.parse()).collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| anyhow::anyhow!("a client said {report:?}"))
}

/// A client process: `ready`, waits for `go`, launches short kernels for `seconds` (through
/// the daemon at `target`, or CUDA directly for `direct`), prints "kernels failed lost extra"
/// (lost: increments its device counter missed; extra: ones beyond its kernels). With
/// `direct-fault` it launches one kernel that faults instead and prints CUDA's answer.
pub fn child(target: &str, seconds: f64) -> Result<()> {
    let mut stdin = std::io::stdin().lock();
    let go = |stdin: &mut dyn BufRead| -> Result<()> {
        println!("ready");
        let mut line = String::new();
        stdin.read_line(&mut line)?;
        ensure!(line.trim() == "go", "expected go");
        Ok(())
    };
    let (mut kernels, mut failed) = (0u64, 0u64);
    let (mut lost, mut extra) = (0, 0);
    if target == "direct-fault" {
        // One kernel that stores to an unmapped address; prints how CUDA answered.
        let mut direct = Direct::new(0, KERNELS_PTX, "fault").map_err(|e| anyhow::anyhow!("{}", e.message))?;
        go(&mut stdin)?;
        match direct.launch_sync(0) {
            Ok(()) => println!("ok"),
            Err(e) => println!("{:?} {}", e.code, e.message.replace('"', "'")),
        }
        return Ok(());
    }
    if target == "direct" {
        let mut direct = Direct::new(0, KERNELS_PTX, "spin").map_err(|e| anyhow::anyhow!("{}", e.message))?;
        go(&mut stdin)?;
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            match direct.launch_sync(SHORT_NS) {
                Ok(()) => kernels += 1,
                Err(_) => failed += 1,
            }
        }
    } else {
        let mut client = Client::open(Path::new(target), None)?;
        go(&mut stdin)?;
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            match client.launch("spin", SHORT_NS) {
                Ok(()) => kernels += 1,
                Err(e) => {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("client {}: {e}", std::process::id());
                    }
                    if e.code == Errno::EIO || e.code == Errno::EPIPE {
                        break; // the device is wedged or the daemon gone: nothing more to learn
                    }
                }
            }
        }
        let count = if failed > 0 && kernels == 0 { 0 } else { client.count().unwrap_or(0) as u64 };
        lost = kernels.saturating_sub(count);
        extra = count.saturating_sub(kernels);
    }
    println!("{kernels} {failed} {lost} {extra}");
    Ok(())
}

/// `accel bench cuda-green`: option (c) of the context model against (b), in one process —
/// threads launching 10 µs kernels on green contexts of their own (the SMs split as many
/// ways) and on streams of one context; then the fault check in a child process.
pub fn green(threads: &[usize], seconds: f64) -> Result<()> {
    for &n in threads {
        let run = |green: bool| {
            accel_driver_cuda::green::throughput(0, n, green, SHORT_NS, seconds)
                .map_err(|e| anyhow::anyhow!("{}", e.message))
        };
        let (streams, green) = (run(false)?, run(true)?);
        println!(
            "{{\"bench\":\"cuda-green\",\"threads\":{n},\"kernel_us\":{},\"seconds\":{seconds},\"green_contexts\":{},\"sms_each\":{},\"green_kernels_per_s\":{:.0},\"streams_kernels_per_s\":{:.0},\"ratio\":{:.3}}}",
            SHORT_NS / 1000,
            green.contexts,
            green.sms_each,
            green.kernels_per_s,
            streams.kernels_per_s,
            green.kernels_per_s / streams.kernels_per_s
        );
    }
    let exe = std::env::current_exe().context("locating the accel binary")?;
    let out = Command::new(exe).args(["bench", "cuda-green", "--fault-child"]).output()?;
    let line = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "the fault check failed: {line}{}", String::from_utf8_lossy(&out.stderr));
    print!("{line}");
    Ok(())
}

/// The fault check of [`green`], in a process of its own.
pub fn green_fault_child() -> Result<()> {
    let (fault, other) =
        accel_driver_cuda::green::fault_in_one_green_context().map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let quote = |s: &str| s.replace('"', "'");
    println!(
        "{{\"bench\":\"cuda-green-fault\",\"fault\":\"{}\",\"other_green_context_spared\":{},\"other_green_context_error\":\"{}\"}}",
        quote(&fault),
        other.is_none(),
        quote(other.as_deref().unwrap_or(""))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn a_client_that_does_not_report_by_the_deadline_is_killed_and_the_others_report() {
        let mut clients = Clients::start([
            sh("echo ready; read go; echo 7 0 0 0"),
            sh("echo ready; read go; exec sleep 60"),
            sh("echo ready; read go; exit 3"),
        ])
        .unwrap();
        clients.go().unwrap();
        let start = Instant::now();
        let reports = clients.reports(Instant::now() + Duration::from_millis(500));
        assert!(start.elapsed() < Duration::from_secs(10), "the stuck client held the reports");
        let seen: Vec<(Option<&str>, bool)> = reports.iter().map(|r| (r.line.as_deref(), r.ok)).collect();
        assert_eq!(seen, [(Some("7 0 0 0"), true), (None, false), (None, false)]);
        assert_eq!(parse_report(reports[0].line.as_deref().unwrap()).unwrap(), [7, 0, 0, 0]);
        assert!(parse_report("7 0 0").is_err());
    }
}
