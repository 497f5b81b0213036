//! `accel bench syncobj`: wait-for-submit latency against a plain fence wake-up, and the
//! daemon's memory while a timeline takes a million points.
//!
//! Latency: a waiter (this process) is blocked in the daemon; then a peer process (this
//! binary, `--peer`) sends one request that ends the wait, and the time from just before
//! the peer's send to the waiter's return is one sample (both read `CLOCK_MONOTONIC`).
//! - **wait-for-submit**: the waiter waits with `WAIT_FOR_SUBMIT` on a point nothing was
//!   submitted for; the peer submits a null job that signals that point.
//! - **plain wake-up** (baseline): the point already has a pending fence (a transfer with
//!   `WAIT_FOR_SUBMIT` from a gate syncobj), the waiter waits on it without flags; the peer
//!   signals the gate from the host, which signals the fence.
//!
//! The two alternate round by round, so noise hits both alike.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use accel::syncobj::{WAIT_ALL, WAIT_FOR_SUBMIT, WAIT_RELATIVE};
use accel::{Device, Op};
use anyhow::{bail, Context, Result};

use super::{percentiles, proc_status};
use crate::spawn::SpawnedDaemon;

fn now_ns() -> u64 {
    accel_core::fence::monotonic_ns()
}

/// The peer: for each line "submit N" or "gate N" on stdin, reads the clock, sends the
/// request, and prints the time read. `objs` are paths that open the exported syncobjs
/// `t` and `gate` (the waiter's descriptors under `/proc`).
pub fn peer(socket: &Path, objs: &[std::path::PathBuf]) -> Result<()> {
    let [t, gate] = objs else { bail!("the peer takes two syncobj paths") };
    let dev = Device::open_at(socket, 0)?;
    let t = dev.import_syncobj(std::fs::File::open(t)?)?;
    let gate = dev.import_syncobj(std::fs::File::open(gate)?)?;
    let q = dev.create_queue()?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let (what, n) = line.split_once(' ').context("peer command")?;
        let n: u64 = n.parse()?;
        let t0 = now_ns();
        match what {
            "submit" => drop(q.submit_with(Op::Nop, &[], &[t.signal_point(n)])?),
            "gate" => gate.signal(n)?,
            other => bail!("unknown peer command {other}"),
        }
        writeln!(out, "{t0}")?;
        out.flush()?;
    }
    Ok(())
}

pub fn run(rounds: usize, points: u64) -> Result<()> {
    let daemon = SpawnedDaemon::start(&["cpu"])?;
    let dev = Device::open_at(daemon.socket(), 0)?;
    let t = dev.create_syncobj(true)?;
    let (gate, plain) = (dev.create_syncobj(true)?, dev.create_syncobj(true)?);
    // The peer opens our exported descriptors through /proc: the same memfds, so its
    // imports find the same syncobjs.
    let exported = [t.export()?, gate.export()?];
    let paths: Vec<String> =
        exported.iter().map(|fd| format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())).collect();
    let exe = std::env::current_exe().context("locating the accel binary")?;
    let mut child = Command::new(exe)
        .args(["bench", "syncobj", "--peer"])
        .arg(daemon.socket())
        .arg("--objs")
        .arg(paths.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_peer = child.stdin.take().context("peer stdin")?;
    let mut from_peer = BufReader::new(child.stdout.take().context("peer stdout")?);
    let mut ask = |cmd: String| -> Result<u64> {
        writeln!(to_peer, "{cmd}")?;
        to_peer.flush()?;
        let mut line = String::new();
        from_peer.read_line(&mut line)?;
        Ok(line.trim().parse()?)
    };
    let flags = WAIT_ALL | WAIT_RELATIVE;
    let five = 5_000_000_000i64;
    let (mut wfs, mut base) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 1..=(rounds + rounds / 10) as u64 {
        // Wait-for-submit.
        let (ret, t0) = std::thread::scope(|s| -> Result<(u64, u64)> {
            let waiter = s.spawn(|| dev.syncobj_wait(&[(&t, i)], flags | WAIT_FOR_SUBMIT, five).map(|_| now_ns()));
            std::thread::sleep(Duration::from_micros(500));
            let t0 = ask(format!("submit {i}"))?;
            Ok((waiter.join().map_err(|_| anyhow::anyhow!("waiter panicked"))??, t0))
        })?;
        // Plain wake-up: the point has a pending fence that the gate's signal ends.
        plain.transfer_from(&gate, i, i, WAIT_FOR_SUBMIT)?;
        let (ret2, t2) = std::thread::scope(|s| -> Result<(u64, u64)> {
            let waiter = s.spawn(|| dev.syncobj_wait(&[(&plain, i)], flags, five).map(|_| now_ns()));
            std::thread::sleep(Duration::from_micros(500));
            let t0 = ask(format!("gate {i}"))?;
            Ok((waiter.join().map_err(|_| anyhow::anyhow!("waiter panicked"))??, t0))
        })?;
        if i > (rounds / 10) as u64 {
            wfs.push(ret.saturating_sub(t0));
            base.push(ret2.saturating_sub(t2));
        }
    }
    drop(to_peer);
    let _ = child.wait();
    let (w50, w99, w) = percentiles(wfs);
    let (b50, b99, b) = percentiles(base);

    // A million timeline points attached by jobs (ring sync entries, six points each) and
    // signalled as they complete: the daemon's memory before, after 1% and after all.
    let (rss0, _) = proc_status(daemon.pid())?;
    let big = dev.create_syncobj(true)?;
    let mut ring = dev.create_queue()?.into_ring(1024)?;
    let mut next = 1u64;
    let mut rss_small = 0;
    let mut done = Vec::with_capacity(1024);
    let mut outstanding = 0usize;
    while next <= points {
        let six: Vec<(&accel::Syncobj, u64)> =
            (0..6).map(|k| next + k).take_while(|p| *p <= points).map(|p| (&big, p)).collect();
        match ring.push_sync(&[], &six, next) {
            Ok(()) => {
                next += six.len() as u64;
                outstanding += 1;
            }
            Err(e) if e.code == accel::Errno::EAGAIN => {
                ring.flush()?;
                let before = done.len();
                outstanding -= ring.wait(&mut done, 1, Duration::from_secs(10))?;
                if let Some(bad) = done[before..].iter().find(|c| c.result != 0) {
                    bail!("a sync entry failed: {:?}", bad.status());
                }
                done.clear();
            }
            Err(e) => return Err(e.into()),
        }
        if rss_small == 0 && next > points / 100 {
            rss_small = proc_status(daemon.pid())?.0;
        }
    }
    ring.flush()?;
    while outstanding > 0 {
        outstanding -= ring.wait(&mut done, outstanding.min(1), Duration::from_secs(10))?;
    }
    if let Some(bad) = done.iter().find(|c| c.result != 0) {
        bail!("a sync entry failed: {:?}", bad.status());
    }
    big.wait(points, Duration::from_secs(10))?;
    let reached = big.query()?;
    let peak = hwm(daemon.pid())?;
    let (rss_end, _) = proc_status(daemon.pid())?;
    println!(
        "{{\"bench\":\"syncobj\",\"wait_for_submit_ns\":{w},\"plain_wakeup_ns\":{b},\"wfs_p50_vs_plain_p50\":{:.2},\
\"wfs_p99_vs_plain_p99\":{:.2},\"timeline_points\":{points},\"timeline_reached\":{reached},\"daemon_rss_kib_before\":{rss0},\
\"daemon_rss_kib_after_1pct\":{rss_small},\"daemon_rss_kib_after_all\":{rss_end},\"daemon_peak_rss_kib\":{peak}}}",
        w50 as f64 / b50 as f64,
        w99 as f64 / b99 as f64,
    );
    drop(exported);
    Ok(())
}

/// Peak resident set (VmHWM, KiB) of a process.
fn hwm(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line["VmHWM:".len()..].split_whitespace().next().unwrap_or("0").parse()?)
}
