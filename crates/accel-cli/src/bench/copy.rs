//! `accel bench copy`: copies between memory regions through the daemon against `memcpy`
//! in this process, and how well copies overlap compute.
//!
//! testdev's `vram` is host RAM in the daemon, so host→device, device→host and
//! device→device copies move the same bytes a `memcpy` does: the ratio is accel's
//! overhead (submission, scheduling, the copy engine's thread, the wake-up). The overlap
//! figure runs a copy on the copy engine and a command buffer of about the same length on
//! the compute engine (the emulated device is busy without taking a host CPU, as a real
//! one computing is), each alone and then together: together ÷ the longer alone.

use std::time::{Duration, Instant};

use accel::{Device, LaunchArg, Op};
use accel_driver_testdev::cmdbuf::{encode, Command, CMD_DELAY};
use anyhow::Result;

use super::median;
use crate::spawn::SpawnedDaemon;

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Median time of `reps` runs of `f` after one warm-up.
fn timed(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(median(v)))
}

pub fn run(mib: usize, reps: usize) -> Result<()> {
    let bytes = mib << 20;
    // The baseline: memcpy between two buffers of this process, pages already touched.
    let (src, mut dst) = (vec![1u8; bytes], vec![0u8; bytes]);
    let memcpy = timed(reps, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        Ok(())
    })?;

    let daemon = SpawnedDaemon::start(&["testdev"])?;
    let dev = Device::open_at(daemon.socket(), 0)?;
    let q = dev.create_queue()?;
    let host = dev.alloc(bytes as u64)?;
    host.write(0, &src)?;
    let (vram, vram2) = (dev.alloc_in(bytes as u64, 1)?, dev.alloc_in(bytes as u64, 1)?);
    let copy = |from: &accel::Buffer, to: &accel::Buffer| -> Result<()> {
        q.submit(Op::Copy { src: from.whole(), dst: to.whole() })?.wait()?;
        Ok(())
    };
    let h2d = timed(reps, || copy(&host, &vram))?;
    let d2h = timed(reps, || copy(&vram, &host))?;
    let d2d = timed(reps, || copy(&vram, &vram2))?;

    // Overlap: a command buffer spinning as long as one copy takes, on the compute engine.
    let us = u32::try_from(h2d.as_micros()).unwrap_or(u32::MAX).max(1000);
    let spin = dev.load_program(
        "testdev-cmdbuf",
        &encode(1, &[Command { op: CMD_DELAY, a: us, a_off: 0, b: 0, b_off: 0, len: 0 }]),
    )?;
    let launch = spin.launch("main", [1, 1, 1], &[LaunchArg::Buffer(host.view(0, 4))])?;
    let compute_q = dev.create_queue()?;
    let copy_op = Op::Copy { src: host.whole(), dst: vram.whole() };
    let copy_alone = timed(reps, || Ok(q.submit(copy_op)?.wait()?))?;
    let compute_alone = timed(reps, || Ok(compute_q.submit(launch)?.wait()?))?;
    // The submissions go back to back (the compute one first, as it is the longer) and one
    // wait covers both, so the client's own round trips stay out of the figure.
    let together = timed(reps, || {
        let (b, a) = (compute_q.submit(launch)?, q.submit(copy_op)?);
        dev.wait(&[a.point(), b.point()], true, Duration::from_secs(10))?;
        Ok(())
    })?;
    let overlap = together.as_secs_f64() / copy_alone.max(compute_alone).as_secs_f64();

    // Fills: a pattern whose bytes differ (so no plain memset), in host memory and in vram,
    // against filling the same number of u32 words in this process.
    let pattern = 0x0102_0304u32;
    let mut words = vec![0u32; bytes / 4];
    let fill_base = timed(reps, || {
        std::hint::black_box(&mut words).fill(pattern);
        std::hint::black_box(&words);
        Ok(())
    })?;
    let fill = |b: &accel::Buffer| timed(reps, || Ok(q.submit(Op::Fill { dst: b.whole(), pattern })?.wait()?));
    let (fill_host, fill_vram) = (fill(&host)?, fill(&vram)?);
    let mut head = [0u8; 8];
    host.read(0, &mut head)?;
    anyhow::ensure!(head == [4, 3, 2, 1, 4, 3, 2, 1], "the fill wrote {head:?}");
    let (fb, fh, fv) = (gbps(bytes, fill_base), gbps(bytes, fill_host), gbps(bytes, fill_vram));

    let (base, h, dd, d) = (gbps(bytes, memcpy), gbps(bytes, h2d), gbps(bytes, d2h), gbps(bytes, d2d));
    println!(
        "{{\"bench\":\"copy\",\"bytes\":{bytes},\"memcpy_gbps\":{base:.2},\"h2d_gbps\":{h:.2},\"d2h_gbps\":{dd:.2},\"d2d_gbps\":{d:.2},\
\"h2d_vs_memcpy\":{:.3},\"d2h_vs_memcpy\":{:.3},\"d2d_vs_memcpy\":{:.3},\"copy_alone_ms\":{:.2},\"compute_alone_ms\":{:.2},\
\"together_ms\":{:.2},\"overlap_ratio\":{overlap:.3},\"fill_inproc_gbps\":{fb:.2},\"fill_host_gbps\":{fh:.2},\"fill_vram_gbps\":{fv:.2},\
\"fill_host_vs_inproc\":{:.3},\"fill_vram_vs_inproc\":{:.3}}}",
        h / base,
        dd / base,
        d / base,
        copy_alone.as_secs_f64() * 1e3,
        compute_alone.as_secs_f64() * 1e3,
        together.as_secs_f64() * 1e3,
        fh / fb,
        fv / fb,
    );
    Ok(())
}
