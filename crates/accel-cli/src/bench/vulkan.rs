//! `accel bench vulkan`: GEMM f32 through the vulkan driver (or, with `--device cuda:N`, the
//! cuda driver's cuBLAS) against the cpu driver in the same daemon, 16-bit GEMM (f16, bf16) in
//! device memory where the device runs it, and a null launch's round trip against the same
//! empty kernel through the GPU's own API in this process (`direct`: what accel adds) and a
//! null job on the cpu device.
//!
//! On lavapipe (Vulkan on the CPU, what CI has) the GEMM figure is correctness and overhead,
//! not a race: both run on the same cores, the cpu driver with a tuned GEMM, lavapipe with the
//! driver's portable tiled shader. On a GPU it is the device's figure.

use std::time::Instant;

use accel::{Buffer, Device, Float16, Gemm16, LaunchArg, Op, OpKind};
use anyhow::{ensure, Context, Result};

use super::{median, percentiles, try_sample};
use crate::demo::pseudo_random;
use crate::spawn::SpawnedDaemon;

/// `values` as 16-bit floats of type `ty`, little-endian bytes.
fn to16(ty: Float16, values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| match ty {
            Float16::F16 => half::f16::from_f32(*v).to_bits().to_le_bytes(),
            Float16::Bf16 => half::bf16::from_f32(*v).to_bits().to_le_bytes(),
        })
        .collect()
}

fn from16(ty: Float16, bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|p| {
            let bits = u16::from_le_bytes([p[0], p[1]]);
            match ty {
                Float16::F16 => half::f16::from_bits(bits).to_f32(),
                Float16::Bf16 => half::bf16::from_bits(bits).to_f32(),
            }
        })
        .collect()
}

/// Median seconds of `reps` GEMMs (after one warm-up) on `dev`, operands in `region` of f32
/// (`ty` None) or a 16-bit type, and the first row of C.
fn time_gemm(dev: &Device, n: usize, reps: usize, region: u32, ty: Option<Float16>) -> Result<(f64, Vec<f32>)> {
    let q = dev.create_queue()?;
    let elem = if ty.is_some() { 2 } else { 4 };
    let bytes = (n * n * elem) as u64;
    let host: Vec<Buffer> = (0..3).map(|_| dev.alloc(bytes)).collect::<accel::Result<_>>()?;
    for (buf, seed) in host.iter().zip([3, 4]) {
        let values = pseudo_random(n * n, seed);
        match ty {
            None => buf.write_f32(0, &values)?,
            Some(ty) => buf.write(0, &to16(ty, &values))?,
        }
    }
    let vram: Vec<Buffer> = if region == 0 {
        Vec::new()
    } else {
        let v: Vec<Buffer> = (0..3).map(|_| dev.alloc_in(bytes, region)).collect::<accel::Result<_>>()?;
        for (h, d) in host.iter().zip(&v) {
            q.submit(Op::Copy { src: h.whole(), dst: d.whole() })?;
        }
        v
    };
    let ops = if region == 0 { &host } else { &vram };
    let op = match ty {
        None => super::square_gemm(&ops[0], &ops[1], &ops[2], n as u64),
        Some(ty) => {
            let nn = n as u64;
            let (a, b, c) = (ops[0].matrix(0, nn), ops[1].matrix(0, nn), ops[2].matrix(0, nn));
            Op::Gemm16(Gemm16 { m: nn, n: nn, k: nn, a, b, c, alpha: 1.0, beta: 0.0, ty })
        }
    };
    // Waited for by spinning on the ring where cores allow, as `torch.cuda.synchronize`
    // spins there (CUDA's default): the baselines wait the same way.
    let mut ring = q.into_ring(4)?;
    ring.set_wait_mode(super::gpu_wait_mode());
    let mut t = Vec::new();
    for rep in 0..=reps {
        let start = Instant::now();
        ring.submit_wait(&op, std::time::Duration::from_secs(600))?
            .status()
            .map_err(|code| anyhow::anyhow!("GEMM {n}: {code}"))?;
        if rep > 0 {
            t.push(start.elapsed().as_secs_f64());
        }
    }
    if region != 0 {
        ring.queue().submit(Op::Copy { src: ops[2].whole(), dst: host[2].whole() })?.wait()?;
    }
    let row = match ty {
        None => host[2].read_f32(0, n)?,
        Some(ty) => {
            let mut raw = vec![0u8; n * 2];
            host[2].read(0, &mut raw)?;
            from16(ty, &raw)
        }
    };
    Ok((median(t), row))
}

/// Round trips of one job submitted and waited for.
fn round_trips(dev: &Device, op: Op, iters: usize) -> Result<Vec<u64>> {
    let q = dev.create_queue()?;
    try_sample(iters, || Ok(q.submit(op)?.wait()?))
}

/// An empty PTX kernel, for the cuda driver's null launch.
const NULL_PTX: &str =
    ".version 7.0\n.target sm_52\n.address_size 64\n.visible .entry main(.param .u64 p)\n{\n\tret;\n}\n";

/// The largest GEMM the cpu driver's baseline runs.
const CPU_MAX_N: usize = 4096;

pub fn run(device: &str, sizes: &[usize], reps: usize, iters: usize) -> Result<()> {
    let daemon = SpawnedDaemon::start(&["cpu", device])?;
    let cpu = Device::open_at(daemon.socket(), 0)?;
    let vk = Device::open_at(daemon.socket(), 1)?;
    let name = vk.info().name.replace('"', "'");
    let driver = vk.info().driver.clone();
    let index: usize = match device.split_once(':') {
        Some((_, n)) => n.parse().with_context(|| format!("device {device:?}"))?,
        None => 0,
    };
    // A vulkan device of this process's own: the driver's job path without the daemon (timed
    // below), and which GEMM shader it runs (the daemon, with this environment, chose the same).
    let own = match driver.as_str() {
        "cuda" => None,
        _ => Some(accel_driver_vulkan::VulkanDevice::open(index).map_err(driver_error)?),
    };
    let gemm_by = own.as_ref().map_or("cublas", |d| d.gemm_shader().name());
    for &n in sizes {
        let flops = 2.0 * (n as f64).powi(3);
        // The cpu driver's baseline (and the results' check) up to 4096³: beyond, it takes
        // minutes, and the host and vram results are checked against each other instead.
        let baseline = if n <= CPU_MAX_N { Some(time_gemm(&cpu, n, reps, 0, None)?) } else { None };
        let (host_s, got_host) = time_gemm(&vk, n, reps, 0, None)?;
        let (vram_s, got_vram) = time_gemm(&vk, n, reps, 1, None)?;
        let want = baseline.as_ref().map_or(&got_host, |(_, w)| w);
        let worst =
            |got: &[f32]| got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1.0)).fold(0f32, f32::max);
        ensure!(worst(&got_host) < 1e-3 && worst(&got_vram) < 1e-3, "{driver} and cpu GEMM results differ");
        let g = |s: f64| flops / s / 1e9;
        let (cpu, ratio_host, ratio_vram) = match baseline {
            Some((cpu_s, _)) => {
                (format!("{:.2}", g(cpu_s)), format!("{:.3}", cpu_s / host_s), format!("{:.3}", cpu_s / vram_s))
            }
            None => ("null".into(), "null".into(), "null".into()),
        };
        println!(
            "{{\"bench\":\"gpu-gemm\",\"driver\":\"{driver}\",\"device\":\"{name}\",\"n\":{n},\"reps\":{reps},\"gemm\":\"{gemm_by}\",\"wait\":\"{:?}\",\"cpu_gflops\":{cpu},\"host_gflops\":{:.2},\"vram_gflops\":{:.2},\"ratio_host\":{ratio_host},\"ratio_vram\":{ratio_vram}}}",
            super::gpu_wait_mode(),
            g(host_s),
            g(vram_s),
        );
        // 16-bit GEMM in device memory where the device runs it, checked against the f32
        // result: rounding the inputs to 16 bits moves a sum of n products by about
        // 2^-mantissa·√n of a term's size, and the row's largest value is of order √n terms,
        // so the error stays near 2^-mantissa of the row's scale (8× that is the bound; a
        // wrong layout or type is off by the scale itself).
        let ops = vk.info().ops.clone();
        for (ty, kind, mantissa) in [(Float16::F16, OpKind::GemmF16, 10), (Float16::Bf16, OpKind::GemmBf16, 7)] {
            if !ops.contains(&kind) {
                continue;
            }
            let (s16, got) = time_gemm(&vk, n, reps, 1, Some(ty))?;
            let scale = want.iter().map(|w| w.abs()).fold(0f32, f32::max).max(1.0);
            let off = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max) / scale;
            let bound = 8.0 * 2f32.powi(-mantissa);
            ensure!(off < bound, "{driver} {ty:?} GEMM {n}: off by {off} of the row's scale (bound {bound})");
            println!(
                "{{\"bench\":\"gpu-gemm16\",\"driver\":\"{driver}\",\"device\":\"{name}\",\"n\":{n},\"reps\":{reps},\"type\":\"{}\",\"vram_gflops\":{:.2},\"f32_vram_gflops\":{:.2},\"ratio_f32\":{:.2},\"max_error_of_scale\":{off:.2e}}}",
                kind.name(),
                g(s16),
                g(vram_s),
                vram_s / s16,
            );
        }
    }
    // A null launch (one empty work group) against a null job on the cpu device: what a
    // launch through Vulkan adds to accel's round trip.
    let program = match driver.as_str() {
        "cuda" => vk.load_program(accel_driver_cuda::FORMAT, NULL_PTX.as_bytes())?,
        _ => vk.load_program(accel_driver_vulkan::FORMAT, accel_driver_vulkan::NULL_SPIRV)?,
    };
    let scratch = vk.alloc_in(4096, 1)?;
    let launch = program.launch("main", [1, 1, 1], &[LaunchArg::Buffer(scratch.whole())])?;
    let (l50, l99, _) = percentiles(round_trips(&vk, launch, iters)?);
    let (n50, n99, _) = percentiles(round_trips(&cpu, Op::Nop, iters)?);
    // Through the ring too (submit and wait without a socket round trip).
    let mut ring = vk.create_queue()?.into_ring(16)?;
    ring.set_wait_mode(super::gpu_wait_mode());
    let (r50, r99, _) = percentiles(try_sample(iters, || {
        let done = ring.submit_wait(&launch, std::time::Duration::from_secs(10))?;
        done.status().map_err(|code| anyhow::anyhow!("the null launch failed: {code:?}"))
    })?);
    // The same empty kernel through the GPU's own API in this process: what accel adds.
    // And the driver's own job path in this process (no daemon, no IPC), for a vulkan device.
    let in_process = match &own {
        Some(dev) => Some(percentiles(driver_round_trips(dev, iters)?)),
        None => None,
    };
    let (d50, d99, _) = percentiles(match driver.as_str() {
        "cuda" => {
            let mut d = accel_driver_cuda::direct::Direct::new(index, NULL_PTX, "main").map_err(driver_error)?;
            try_sample(iters, || d.launch_sync(0).map_err(driver_error))?
        }
        _ => {
            let mut d = accel_driver_vulkan::direct::Direct::new(index).map_err(driver_error)?;
            try_sample(iters, || d.launch_sync().map_err(driver_error))?
        }
    });
    let us = |ns: u64| ns as f64 / 1e3;
    let driver_p50 = in_process.map_or("null".to_string(), |(p50, _, _)| format!("{:.1}", us(p50)));
    println!(
        "{{\"bench\":\"gpu-launch\",\"driver\":\"{driver}\",\"device\":\"{name}\",\"iters\":{iters},\"launch_p50_us\":{:.1},\"launch_p99_us\":{:.1},\"ring_p50_us\":{:.1},\"ring_p99_us\":{:.1},\"direct_p50_us\":{:.1},\"direct_p99_us\":{:.1},\"driver_in_process_p50_us\":{driver_p50},\"ring_overhead_p50\":{:.2},\"cpu_nop_p50_us\":{:.1},\"cpu_nop_p99_us\":{:.1},\"ratio_p50\":{:.2}}}",
        us(l50),
        us(l99),
        us(r50),
        us(r99),
        us(d50),
        us(d99),
        r50 as f64 / d50.max(1) as f64 - 1.0,
        us(n50),
        us(n99),
        l50 as f64 / n50.max(1) as f64
    );
    Ok(())
}

/// Round trips of the empty kernel through the vulkan driver's `run_job` in this process, on
/// a device of its own: the driver's path without the daemon around it.
fn driver_round_trips(dev: &accel_driver_vulkan::VulkanDevice, iters: usize) -> Result<Vec<u64>> {
    use accel_core::bo::{Backing, BoRange, BufferObject};
    use accel_core::driver::{AbortToken, Driver, JobArg, JobCtx, JobOp, NativeFence};
    let counters = std::sync::Arc::new(accel_core::counters::Counters::default());
    let mem = dev.alloc(0, 4096).map_err(driver_error)?;
    let bo = BufferObject::with_backing(&counters, Backing::Device(mem), 1, Some(0), Vec::new());
    let program =
        dev.load_program(accel_driver_vulkan::FORMAT, accel_driver_vulkan::NULL_SPIRV).map_err(driver_error)?;
    let op = JobOp::Launch {
        program,
        entry: 0,
        grid: [1, 1, 1],
        args: vec![JobArg::Buffer(BoRange { bo, offset: 0, len: 4096 })],
    };
    try_sample(iters, || {
        let ctx = JobCtx {
            abort: AbortToken::default(),
            client_id: 0,
            native: NativeFence::new(accel_core::fence::Fence::new(&counters)),
        };
        dev.run_job(0, &op, &ctx).map_err(driver_error)
    })
}

fn driver_error(e: accel_core::driver::DriverError) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code, e.message)
}
