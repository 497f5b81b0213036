//! `accel bench submit`: a job's round trip through the ring and the socket against the
//! floors measured in the same run (shared-memory spin, socket ping-pong, in-process ring
//! code), the ring job's cost to the engine's slot thread, and batched throughput.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel::{Device, Op};
use anyhow::Result;

use super::{floor, percentiles, sample};
use crate::spawn::SpawnedDaemon;

/// Null jobs per second when the ring code runs in-process: the client side writes
/// entries into a ring and the daemon's own `RingQueue::process_into` takes them on the same
/// thread. No second process, no cross-core traffic, no wake-ups.
fn inproc_rate(seconds: f64, ring_entries: u32) -> Result<f64> {
    use accel_core::bo::BoTable;
    use accel_core::device::DeviceConfig;
    use accel_core::limits::JobBudget;
    use accel_core::ring::RingQueue;
    use accel_core::sched::{EntityParams, UsageCounters};
    use accel_uapi::ring::{RingMem, Sqe};
    let sub = accel_core::Subsystem::new(vec![DeviceConfig::new(Arc::new(accel_driver_cpu::CpuDevice::new()))])?;
    let dev = sub.device(0)?.clone();
    let params = EntityParams { priority: accel::Priority::Normal, weight: 100, timeout: Duration::from_secs(10) };
    let entity = dev.sched.create_entity(0, params, Arc::new(UsageCounters::default()));
    // The ring holds its buffer table weakly, as the client owns it: keep it alive here.
    let bos = Arc::new(BoTable::default());
    let (syncobjs, programs) = (Arc::default(), Arc::default());
    let (ring, mut consumer, memfd, _) =
        RingQueue::new(ring_entries, entity, bos.clone(), &syncobjs, &programs, sub.counters(), &JobBudget::new(0))?;
    let client = RingMem::open(&memfd)?;
    let nop = Sqe::encode(&Op::Nop, 0);
    let (mut tail, mut head, mut done) = (0u32, 0u32, 0u64);
    let mut scratch = Vec::with_capacity(ring_entries as usize);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..1024 {
            while tail.wrapping_sub(client.sq_head().load(Ordering::Acquire)) < ring_entries {
                client.write_sqe(tail, &nop);
                tail = tail.wrapping_add(1);
            }
            ring.process_into(&dev, &mut consumer, ring_entries, &mut scratch);
            while let Some(cqe) = client.read_cqe(head) {
                std::hint::black_box(cqe);
                head = head.wrapping_add(1);
                done += 1;
            }
            client.cq_head().store(head, Ordering::Release);
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// Null jobs per second through a ring to the daemon process, keeping the ring full.
fn batched_rate(ring: &mut accel::Ring, seconds: f64) -> Result<f64> {
    let mut out = Vec::with_capacity(4096);
    let mut done = 0u64;
    let mut outstanding = 0usize;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..64 {
            while ring.push(&Op::Nop, 0).is_ok() {
                outstanding += 1;
            }
            ring.flush()?;
            out.clear();
            let got = ring.wait(&mut out, 1.min(outstanding), Duration::from_secs(5))?;
            outstanding -= got;
            done += got as u64;
        }
    }
    let mut rest = Vec::new();
    ring.wait(&mut rest, outstanding, Duration::from_secs(5))?;
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

pub fn run(iters: usize, seconds: f64, ring_entries: u32) -> Result<()> {
    use floor::{clock_read_ns, handshake_pingpong, protocol_pingpong, shm_pingpong, socket_pingpong};
    let (shm_p50, shm_p99, shm) = percentiles(shm_pingpong(iters)?);
    let (hs_p50, hs_p99, handshake) = percentiles(handshake_pingpong(iters)?);
    let (sock_p50, _, sock) = percentiles(socket_pingpong(iters)?);
    let (proto_p50, proto_p99, proto) = percentiles(protocol_pingpong(iters / 10)?);
    let clock_ns = clock_read_ns();
    let inproc = inproc_rate(seconds, ring_entries)?;
    let job_ns = 1e9 / inproc;

    let daemon = SpawnedDaemon::start(&["cpu"])?;
    let dev = Device::open_at(daemon.socket(), 0)?;
    let mut ring = dev.create_queue()?.into_ring(ring_entries)?;
    let mut failed = None;
    let (sync_p50, sync_p99, sync) = percentiles(sample(iters, || {
        if let Err(e) = ring
            .submit_wait(&Op::Nop, Duration::from_secs(5))
            .and_then(|c| c.status().map_err(|code| accel::Error { code, message: "null job failed".into() }))
        {
            failed = Some(e);
        }
    }));
    if let Some(e) = failed {
        return Err(e.into());
    }
    // A real job (a 4 KiB fill) through the ring: the scheduler's path (dispatch to an
    // engine slot thread and back), which a null job skips.
    let page = dev.alloc(4096)?;
    let fill = Op::Fill { dst: page.whole(), pattern: 7 };
    // What each of those jobs costs the engine's slot thread: CPU time and context switches.
    let slot_before = thread_sched(daemon.pid(), "accel0-e0s0");
    let (job_p50, job_p99, _) = percentiles(sample(iters / 10, || {
        let _ = ring.submit_wait(&fill, Duration::from_secs(5));
    }));
    let jobs = (iters / 10 + iters / 100) as f64;
    let (slot_cpu, slot_switches) = match (slot_before, thread_sched(daemon.pid(), "accel0-e0s0")) {
        (Some(a), Some(b)) => {
            (format!("{:.0}", (b.0 - a.0) as f64 / jobs), format!("{:.2}", (b.1 - a.1) as f64 / jobs))
        }
        _ => ("null".to_string(), "null".to_string()),
    };
    let batched = batched_rate(&mut ring, seconds)?;
    let queue = dev.create_queue()?;
    let (_, _, socket_path) = percentiles(sample(iters / 10, || {
        let _ = queue.submit(Op::Nop).and_then(|f| f.wait());
    }));
    // Submit and wait in one request (SubmitWait): the socket path's single round trip.
    let (run_p50, run_p99, socket_run) = percentiles(sample(iters / 10, || {
        let _ = queue.run(Op::Nop, Duration::from_secs(5));
    }));
    let (_, sock_p99) = {
        let mut v = socket_pingpong(iters / 10)?;
        v.sort_unstable();
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    // The ring round trip's floor, step by step: the handshake ping-pong, plus one clock read
    // and one in-process null job (decode, validate, complete) on the daemon's side.
    let ring_floor = hs_p50 as f64 + clock_ns + job_ns;
    println!(
        "{{\"bench\":\"submit\",\"shm_spin_rtt_ns\":{shm},\"socket_rtt_ns\":{sock},\"accel_ring_sync_rtt_ns\":{sync},\
\"accel_socket_sync_rtt_ns\":{socket_path},\"accel_ring_job_rtt_p50_ns\":{job_p50},\"accel_ring_job_rtt_p99_ns\":{job_p99},\"ring_job_slot_cpu_ns\":{slot_cpu},\"ring_job_slot_switches\":{slot_switches},\"accel_socket_run_rtt_ns\":{socket_run},\"inproc_jobs_per_s\":{inproc:.0},\"ring_batched_jobs_per_s\":{batched:.0},\
\"sync_p50_vs_shm_p50\":{:.2},\"sync_p99_vs_shm_p99\":{:.2},\"run_p50_vs_socket_p50\":{:.2},\"run_p99_vs_socket_p99\":{:.2},\"socket_p50_vs_shm_p50\":{:.1},\"batched_vs_inproc\":{:.3},\
\"floor\":{{\"handshake_rtt_ns\":{handshake},\"clock_read_ns\":{clock_ns:.1},\"inproc_job_ns\":{job_ns:.1},\"ring_floor_p50_ns\":{ring_floor:.0},\
\"protocol_rtt_ns\":{proto},\"handshake_p50_vs_shm_p50\":{:.2},\"handshake_p99_vs_shm_p99\":{:.2},\"sync_p50_vs_ring_floor\":{:.2},\
\"protocol_p50_vs_socket_p50\":{:.2},\"run_p50_vs_protocol_p50\":{:.2},\"run_p99_vs_protocol_p99\":{:.2}}}}}",
        sync_p50 as f64 / shm_p50 as f64,
        sync_p99 as f64 / shm_p99 as f64,
        run_p50 as f64 / sock_p50 as f64,
        run_p99 as f64 / sock_p99 as f64,
        sock_p50 as f64 / shm_p50 as f64,
        batched / inproc,
        hs_p50 as f64 / shm_p50 as f64,
        hs_p99 as f64 / shm_p99 as f64,
        sync_p50 as f64 / ring_floor,
        proto_p50 as f64 / sock_p50 as f64,
        run_p50 as f64 / proto_p50 as f64,
        run_p99 as f64 / proto_p99 as f64,
    );
    Ok(())
}

/// (CPU time in ns, context switches) of the thread of process `pid` named `comm`, from
/// `/proc` (`schedstat` and `status`); `None` where that cannot be read.
fn thread_sched(pid: u32, comm: &str) -> Option<(u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let task = tasks
        .flatten()
        .map(|t| t.path())
        .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim_end() == comm))?;
    let cpu_ns = std::fs::read_to_string(task.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()?;
    let status = std::fs::read_to_string(task.join("status")).ok()?;
    let switches = status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Some((cpu_ns, switches))
}
