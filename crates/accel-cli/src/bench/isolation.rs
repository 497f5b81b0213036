//! `accel bench isolation`: a well-behaved tenant's GEMM throughput and null-job latency,
//! first with a hostile tenant idle, then with it at every limit at once (allocation
//! churn, connection flood, malformed messages, hung jobs, queues by the thousand on the
//! good tenant's device, each with a job waiting on a fence that never signals, requests as
//! fast as the daemon serves them and a connection that never reads its replies). The
//! hostile tenant is a
//! separate process, run as an unprivileged user when the bench runs as root (so the
//! per-user caps apply to it) and at nice 19 (the OS, not accel, divides CPU between
//! processes; accel must not let it take anything else).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel::{Connection, Device, Errno, GemmF32, Op};
use accel_uapi::{Reply, Request};
use anyhow::{Context, Result};

use super::percentiles;
use crate::spawn::SpawnedDaemon;

/// Side of the good tenant's GEMMs.
const GEMM_N: u64 = 256;
/// The unprivileged user the hostile tenant runs as (when the bench runs as root).
const NOBODY: u32 = 65534;

/// What the good tenant achieved in one phase.
struct Phase {
    gemms_per_s: f64,
    rtt: Vec<u64>,
    errors: u64,
}

fn good_tenant(socket: &Path, seconds: f64) -> Result<Phase> {
    let dev = Device::open_with_token(socket, 0, "good-token")?;
    let bytes = GEMM_N * GEMM_N * 4;
    let (a, b, c) = (dev.alloc(bytes)?, dev.alloc(bytes)?, dev.alloc(bytes)?);
    let op = Op::GemmF32(GemmF32 {
        m: GEMM_N,
        n: GEMM_N,
        k: GEMM_N,
        a: a.matrix(0, GEMM_N),
        b: b.matrix(0, GEMM_N),
        c: c.matrix(0, GEMM_N),
        alpha: 1.0,
        beta: 0.0,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    // Null-job round trips on a ring, one every 200 µs: the latency a small client sees.
    let mut ring = dev.create_queue()?.into_ring(16)?;
    let latency = {
        let (stop, errors) = (stop.clone(), errors.clone());
        std::thread::spawn(move || {
            let mut rtt = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match ring.submit_wait(&Op::Nop, Duration::from_secs(5)) {
                    Ok(c) if c.status().is_ok() => rtt.push(t.elapsed().as_nanos() as u64),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            rtt
        })
    };
    let queue = dev.create_queue()?;
    let start = Instant::now();
    let mut gemms = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        match queue.submit(op).and_then(|f| f.wait()) {
            Ok(()) => gemms += 1,
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let rtt = latency.join().map_err(|_| anyhow::anyhow!("latency thread panicked"))?;
    anyhow::ensure!(!rtt.is_empty(), "no null job completed");
    Ok(Phase { gemms_per_s: gemms as f64 / elapsed, rtt, errors: errors.load(Ordering::Relaxed) })
}

/// The benchmark: sets up both tenants, runs the quiet and the hostile phase.
pub fn run(seconds: f64, load: &[String]) -> Result<()> {
    for l in load {
        anyhow::ensure!(
            ["alloc", "conn", "garbage", "hang", "queues", "flood"].contains(&l.as_str()),
            "unknown hostile load {l:?}"
        );
    }
    let config = std::env::temp_dir().join(format!("accel-isolation-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[limits]\nfds_per_client = 256\nfds_per_namespace = 512\n\n[connections]\nmax_per_uid = 32\nhandshake_timeout_ms = 1000\n",
    )?;
    let daemon = SpawnedDaemon::start_with(&["cpu", "testdev"], &["--config", config.to_str().unwrap_or_default()]);
    let _ = std::fs::remove_file(&config);
    let daemon = daemon?;
    // The hostile user must reach the socket (as it would a render node).
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666))?;
    let mut admin = Connection::connect_with_token(daemon.socket(), None)?;
    for (name, token, devices) in [("good", "good-token", &[0u32][..]), ("hostile", "hostile-token", &[0, 1][..])] {
        admin.call(&Request::NsCreate { name: name.into(), token: Some(token.into()) })?;
        for &device in devices {
            let memory_limit = if name == "hostile" { 64 << 20 } else { 0 };
            let assign = Request::NsAssign {
                name: name.into(),
                device,
                memory_limit,
                weight: 100,
                max_clients: 0,
                evict: false,
            };
            admin.call(&assign)?;
        }
    }

    good_tenant(daemon.socket(), 0.5)?; // warm-up
    let quiet = good_tenant(daemon.socket(), seconds)?;

    let exe = std::env::current_exe().context("locating the accel binary")?;
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19"])
        .arg(exe)
        .args(["bench", "isolation", "--seconds"])
        .arg((seconds + 1.0).to_string())
        .arg("--load")
        .arg(load.join(","))
        .arg("--hostile")
        .arg(daemon.socket())
        .stdout(Stdio::piped());
    let as_root = rustix::process::getuid().is_root();
    if as_root {
        use std::os::unix::process::CommandExt;
        cmd.uid(NOBODY).gid(NOBODY);
    }
    let mut hostile = cmd.spawn().context("starting the hostile tenant")?;
    let mut lines = BufReader::new(hostile.stdout.take().context("hostile stdout")?).lines();
    anyhow::ensure!(lines.next().transpose()?.as_deref() == Some("ready"), "the hostile tenant did not start");
    let loud = good_tenant(daemon.socket(), seconds)?;
    let report = lines.next().transpose()?.unwrap_or_default();
    let status = hostile.wait()?;
    anyhow::ensure!(status.success(), "hostile tenant failed: {status}");

    let (q50, q99, quiet_lat) = percentiles(quiet.rtt);
    let (l50, l99, loud_lat) = percentiles(loud.rtt);
    let mut probe = Connection::connect_with_token(daemon.socket(), None)?;
    let Reply::Stats(stats) = probe.call(&Request::Stats)? else { anyhow::bail!("unexpected stats reply") };
    println!(
        "{{\"bench\":\"isolation\",\"seconds\":{seconds},\"load\":\"{}\",\"hostile_uid\":{},\"quiet\":{{\"gemm{GEMM_N}_per_s\":{:.1},\"null_rtt_ns\":{quiet_lat},\"errors\":{}}},\
\"hostile\":{{\"gemm{GEMM_N}_per_s\":{:.1},\"null_rtt_ns\":{loud_lat},\"errors\":{}}},\"hostile_did\":{report},\
\"throughput_ratio\":{:.3},\"p50_ratio\":{:.2},\"p99_ratio\":{:.2},\"daemon_clients_after\":{}}}",
        load.join(","),
        if as_root { NOBODY } else { rustix::process::getuid().as_raw() },
        quiet.gemms_per_s,
        quiet.errors,
        loud.gemms_per_s,
        loud.errors,
        loud.gemms_per_s / quiet.gemms_per_s,
        l50 as f64 / q50 as f64,
        l99 as f64 / q99 as f64,
        stats.clients,
    );
    Ok(())
}

/// The hostile tenant: every abuse at once, for `seconds`; prints `ready`, then one JSON
/// object with what it did and which errors it got.
pub fn hostile(socket: &Path, seconds: f64, load: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let live = move || Instant::now() < deadline;
    let counts: Arc<[AtomicU64; 12]> = Arc::new(Default::default());
    const ALLOCS: usize = 0;
    const ALLOC_REFUSED: usize = 1;
    const CONNS: usize = 2;
    const CONN_REFUSED: usize = 3;
    const GARBAGE: usize = 4;
    const HANGS: usize = 5;
    const HANG_ERRORS: usize = 6;
    const OTHER_ERRORS: usize = 7;
    const QUEUES: usize = 8;
    const QUEUE_REFUSED: usize = 9;
    const FLOODED: usize = 10;
    const DEAF: usize = 11;
    let bump = |c: &Arc<[AtomicU64; 12]>, i: usize| {
        c[i].fetch_add(1, Ordering::Relaxed);
    };
    let mut threads = Vec::new();
    let does = |what: &str| load.iter().any(|l| l == what);
    if does("alloc")
    // Allocation churn: allocate until a cap refuses, free everything, again.
    {
        let (socket, c) = (socket.to_path_buf(), counts.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            let dev = Device::open_with_token(&socket, 0, "hostile-token")?;
            while live() {
                let mut held = Vec::new();
                loop {
                    match dev.alloc(64 << 10) {
                        Ok(b) => {
                            held.push(b);
                            bump(&c, ALLOCS);
                        }
                        Err(e) if matches!(e.code, Errno::EMFILE | Errno::ENOSPC) => {
                            bump(&c, ALLOC_REFUSED);
                            break;
                        }
                        Err(_) => {
                            bump(&c, OTHER_ERRORS);
                            break;
                        }
                    }
                }
            }
            Ok(())
        }));
    }
    if does("conn")
    // Connection flood: open until refused, drop all, again.
    {
        let (socket, c) = (socket.to_path_buf(), counts.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            while live() {
                let mut held = Vec::new();
                loop {
                    match Connection::connect_with_token(&socket, Some("hostile-token")) {
                        Ok(conn) => {
                            held.push(conn);
                            bump(&c, CONNS);
                        }
                        Err(_) => {
                            bump(&c, CONN_REFUSED);
                            break;
                        }
                    }
                    if held.len() > 4096 {
                        break;
                    }
                }
            }
            Ok(())
        }));
    }
    if does("garbage")
    // Malformed input: garbage of every size on a live connection.
    {
        let (socket, c) = (socket.to_path_buf(), counts.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut conn = Connection::connect_with_token(&socket, Some("hostile-token"))?;
            while live() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let len = (seed % 512) as usize + 1;
                let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8 ^ i as u8).collect();
                if conn.call_raw(&bytes, &[]).is_err() {
                    bump(&c, GARBAGE);
                } else {
                    bump(&c, OTHER_ERRORS);
                }
            }
            Ok(())
        }));
    }
    if does("hang")
    // Hung jobs on the tenant's testdev (its accel1): each waits out its queue's timeout;
    // a queue banned for hanging is replaced.
    {
        let (socket, c) = (socket.to_path_buf(), counts.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            let dev = Device::open_with_token(&socket, 1, "hostile-token")?;
            let mut queue = dev.create_queue_with_timeout(Duration::from_millis(20))?;
            while live() {
                let hang = Op::Driver { code: accel_driver_testdev::OP_HANG, args: [0; 4] };
                match queue.submit(hang).and_then(|f| f.wait()) {
                    Ok(()) => bump(&c, OTHER_ERRORS),
                    Err(e) if e.code == Errno::ECANCELED => {
                        queue = dev.create_queue_with_timeout(Duration::from_millis(20))?;
                        bump(&c, HANG_ERRORS);
                    }
                    Err(_) => bump(&c, HANG_ERRORS),
                }
                bump(&c, HANGS);
            }
            Ok(())
        }));
    }
    if does("queues")
    // Queues until a cap refuses, on the good tenant's device, each with a job waiting on a
    // timeline point nobody signals: what a dispatch must not have to look through.
    {
        let (socket, c) = (socket.to_path_buf(), counts.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            let dev = Device::open_with_token(&socket, 0, "hostile-token")?;
            let never = dev.create_syncobj(true)?;
            let mut held = Vec::new();
            while live() && held.len() < 20_000 {
                let queued = dev.create_queue().and_then(|q| Ok((q.submit_with(Op::Nop, &[never.point(1)], &[])?, q)));
                match queued {
                    Ok(pair) => {
                        held.push(pair);
                        bump(&c, QUEUES);
                    }
                    Err(_) => {
                        bump(&c, QUEUE_REFUSED);
                        break;
                    }
                }
            }
            while live() {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        }));
    }
    if does("flood")
    // Requests as fast as the daemon serves them, on four connections whose replies another
    // thread reads, and on one connection that never reads its replies.
    {
        for _ in 0..4 {
            let (socket, c) = (socket.to_path_buf(), counts.clone());
            threads.push(std::thread::spawn(move || -> Result<()> {
                let Some(sock) = raw_connection(&socket, &live) else { return Ok(()) };
                let reader = {
                    let (sock, c) = (sock.try_clone()?, c.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; accel_uapi::wire::MAX_MESSAGE + 1];
                        while let Ok(Some(_)) = accel_uapi::transport::recv(std::os::fd::AsFd::as_fd(&sock), &mut buf) {
                            c[FLOODED].fetch_add(1, Ordering::Relaxed);
                        }
                    })
                };
                let req = accel_uapi::wire::encode(accel_uapi::wire::Kind::Request, 2, &Request::ListDevices)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                while live() {
                    for _ in 0..64 {
                        rustix::net::send(&sock, &req, rustix::net::SendFlags::empty())?;
                    }
                }
                // The daemon answers what came, then closes: the reader ends.
                rustix::net::shutdown(&sock, rustix::net::Shutdown::Write)?;
                let _ = reader.join();
                Ok(())
            }));
        }
        let (socket, c) = (socket.to_path_buf(), counts.clone());
        threads.push(std::thread::spawn(move || -> Result<()> {
            let Some(sock) = raw_connection(&socket, &live) else { return Ok(()) };
            let req = accel_uapi::wire::encode(accel_uapi::wire::Kind::Request, 2, &Request::ListDevices)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            while live() {
                match rustix::net::send(&sock, &req, rustix::net::SendFlags::DONTWAIT) {
                    Ok(_) => bump(&c, DEAF),
                    Err(rustix::io::Errno::AGAIN) => std::thread::sleep(Duration::from_millis(1)),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        }));
    }
    println!("ready");
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("hostile thread panicked"))??;
    }
    let get = |i: usize| counts[i].load(Ordering::Relaxed);
    println!(
        "{{\"allocs\":{},\"allocs_refused\":{},\"connections\":{},\"connections_refused\":{},\"garbage_messages\":{},\"hung_jobs\":{},\"hung_job_errors\":{},\"waiting_queues\":{},\"queues_refused\":{},\"flood_replies\":{},\"deaf_requests_taken\":{},\"unexpected\":{}}}",
        get(ALLOCS),
        get(ALLOC_REFUSED),
        get(CONNS),
        get(CONN_REFUSED),
        get(GARBAGE),
        get(HANGS),
        get(HANG_ERRORS),
        get(QUEUES),
        get(QUEUE_REFUSED),
        get(FLOODED),
        get(DEAF),
        get(OTHER_ERRORS)
    );
    Ok(())
}

/// A connection past its handshake as the hostile tenant, for requests written by hand; tried
/// again while the tenant's own connection flood holds its user's every connection.
fn raw_connection(socket: &Path, live: &dyn Fn() -> bool) -> Option<std::os::fd::OwnedFd> {
    while live() {
        match handshake(socket) {
            Ok(sock) => return Some(sock),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    None
}

fn handshake(socket: &Path) -> Result<std::os::fd::OwnedFd> {
    use accel_uapi::wire::{self, Kind};
    let sock = accel_uapi::transport::connect(socket)?;
    let hello = Request::Hello {
        abi_major: wire::ABI_MAJOR,
        abi_minor: wire::ABI_MINOR,
        name: "flood".into(),
        token: Some("hostile-token".into()),
    };
    let fd = std::os::fd::AsFd::as_fd(&sock);
    let bytes = wire::encode(Kind::Request, 1, &hello).map_err(|e| anyhow::anyhow!("{e}"))?;
    accel_uapi::transport::send(fd, &bytes, &[])?;
    let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
    let r = accel_uapi::transport::recv(fd, &mut buf)?.context("the daemon closed the connection")?;
    match wire::decode::<Reply>(Kind::Reply, &buf[..r.len]).map_err(|e| anyhow::anyhow!("{e}"))? {
        (_, Reply::Hello { .. }) => Ok(sock),
        (_, other) => anyhow::bail!("handshake refused: {other:?}"),
    }
}
