//! The cuda driver end to end on an NVIDIA GPU: device info, fills and copies between
//! regions, GEMM against the cpu driver, a PTX program launched with buffers and scalars, bad
//! programs refused with CUDA's reason, scrubbing and export of device memory. Without a GPU
//! every test says why it skips; `ACCEL_REQUIRE_CUDA=1` (scripts/gpu-check.sh) makes that a
//! failure.

mod common;

use accel::{Buffer, Device, Errno, Float16, GemmF32, LaunchArg, Op, OpKind, ParamKind, RegionKind};
use common::Daemon;

/// The `vram` region of a cuda device.
const VRAM: u32 = 1;

/// What the importing process stamps at the start of the memory.
const STAMP: &[u8] = b"written by another process";

/// Entry point of child client processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    if std::env::var("ACCEL_TEST_ROLE").as_deref() == Ok("cuda-import") {
        // Another process with a CUDA context of its own takes a vram export, zero-copy.
        let raw: i32 = std::env::var("ACCEL_TEST_FD").unwrap().parse().unwrap();
        let len: usize = std::env::var("ACCEL_TEST_LEN").unwrap().parse().unwrap();
        // SAFETY: the parent passed this descriptor to us, open and owned by nobody else here.
        let fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };
        let seen = accel_driver_cuda::direct::import_read_write(&fd, len, STAMP).unwrap();
        assert!(seen.chunks(4).all(|w| w == 0x0a11_ce55u32.to_le_bytes()), "the importer saw other bytes");
        std::process::exit(0);
    }
    common::child_entry();
}

fn cuda() -> bool {
    common::device_or_skip(accel_driver_cuda::device_count(), "ACCEL_REQUIRE_CUDA")
}

/// y[i] = a·x[i] + y[i] for i < n, 256 threads per block (as nvcc emits it for sm_52).
const SAXPY_PTX: &str = r#"
.version 7.0
.target sm_52
.address_size 64

.visible .entry saxpy(
	.param .u64 saxpy_param_0,
	.param .u64 saxpy_param_1,
	.param .f32 saxpy_param_2,
	.param .u32 saxpy_param_3
)
.reqntid 256, 1, 1
{
	.reg .pred 	%p<2>;
	.reg .f32 	%f<5>;
	.reg .b32 	%r<6>;
	.reg .b64 	%rd<8>;

	ld.param.u64 	%rd1, [saxpy_param_0];
	ld.param.u64 	%rd2, [saxpy_param_1];
	ld.param.f32 	%f1, [saxpy_param_2];
	ld.param.u32 	%r2, [saxpy_param_3];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.s32 	%r1, %r3, %r4, %r5;
	setp.ge.u32 	%p1, %r1, %r2;
	@%p1 bra 	$L__BB0_2;
	cvta.to.global.u64 	%rd3, %rd1;
	mul.wide.u32 	%rd4, %r1, 4;
	add.s64 	%rd5, %rd3, %rd4;
	ld.global.f32 	%f2, [%rd5];
	cvta.to.global.u64 	%rd6, %rd2;
	add.s64 	%rd7, %rd6, %rd4;
	ld.global.f32 	%f3, [%rd7];
	fma.rn.f32 	%f4, %f2, %f1, %f3;
	st.global.f32 	[%rd7], %f4;
$L__BB0_2:
	ret;
}
"#;

fn f32s(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0).collect()
}

#[test]
fn the_device_shows_its_gpu_and_regions() {
    if !cuda() {
        return;
    }
    let d = Daemon::start(&["cuda:0"]);
    let dev = d.open(0);
    let info = dev.info();
    assert_eq!((info.driver.as_str(), info.vendor.as_str()), ("cuda", "NVIDIA"));
    assert!(info.name.contains("sm_") && info.compute_units > 0, "{}", info.name);
    assert_eq!(info.regions[1].kind, RegionKind::Device);
    assert_eq!(info.program_formats, vec!["ptx".to_string(), "cubin".to_string()]);
}

#[test]
fn gemm_in_f16_and_bf16_through_cublas_equals_the_cpu_driver_to_the_bit() {
    if !cuda() {
        return;
    }
    let d = Daemon::start(&["cuda:0", "cpu"]);
    let (gpu, cpu) = (d.open(0), d.open(1));
    let ops = gpu.info().ops.clone();
    assert!(ops.contains(&OpKind::GemmF16), "{ops:?}");
    let mut types = vec![Float16::F16];
    if ops.contains(&OpKind::GemmBf16) {
        types.push(Float16::Bf16);
    } else {
        println!("note: this GPU has no bf16 GEMM (before sm_80)");
    }
    common::gemm16_equals_the_cpu_drivers(&gpu, &cpu, &[0, VRAM], &types);
}

#[test]
fn copies_fills_gemm_and_launches_are_right() {
    if !cuda() {
        return;
    }
    let d = Daemon::start(&["cuda:0", "cpu"]);
    let (gpu, cpu) = (d.open(0), d.open(1));
    let q = gpu.create_queue().unwrap();
    // Upload, fill part of it on the device, download.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let (h, v, out) = (gpu.alloc(1 << 20).unwrap(), gpu.alloc_in(1 << 20, VRAM).unwrap(), gpu.alloc(1 << 20).unwrap());
    h.write(0, &data).unwrap();
    q.submit(Op::Copy { src: h.whole(), dst: v.whole() }).unwrap();
    q.submit(Op::Fill { dst: v.view(4096, 4096), pattern: 0x0102_0304 }).unwrap();
    q.submit(Op::Copy { src: v.whole(), dst: out.whole() }).unwrap().wait().unwrap();
    let mut got = vec![0u8; 1 << 20];
    out.read(0, &mut got).unwrap();
    let mut want = data.clone();
    for w in want[4096..8192].chunks_mut(4) {
        w.copy_from_slice(&0x0102_0304u32.to_le_bytes());
    }
    assert!(got == want, "device round trip differs");

    // GEMM through cuBLAS against the cpu driver, operands in vram and in host memory.
    let (m, k, n) = (67usize, 45usize, 39usize);
    let (a, b) = (f32s(m * k, 1), f32s(k * n, 2));
    let gemm = |dev: &Device, region: u32| -> Vec<f32> {
        let q = dev.create_queue().unwrap();
        let put = |vals: &[f32]| common::uploaded(dev, &q, &common::f32_bytes(vals), 0, region);
        let (ba, bb, bc) = (put(&a), put(&b), put(&vec![0.0; m * n]));
        let op = GemmF32 {
            m: m as u64,
            n: n as u64,
            k: k as u64,
            a: ba.matrix(0, k as u64),
            b: bb.matrix(0, n as u64),
            c: bc.matrix(0, n as u64),
            alpha: 1.0,
            beta: 0.0,
        };
        q.submit(Op::GemmF32(op)).unwrap().wait().unwrap();
        let back: Buffer = dev.alloc(bc.size()).unwrap();
        q.submit(Op::Copy { src: bc.whole(), dst: back.whole() }).unwrap().wait().unwrap();
        back.read_f32(0, m * n).unwrap()
    };
    let want = gemm(&cpu, 0);
    for region in [0, VRAM] {
        let got = gemm(&gpu, region);
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-3, "region {region}: off by {worst}");
    }

    // A PTX program: entries and parameters read from the text, launched with a scalar.
    let p = gpu.load_program("ptx", SAXPY_PTX.as_bytes()).unwrap();
    assert_eq!(p.entries()[0].params, vec![ParamKind::Buffer, ParamKind::Buffer, ParamKind::F32, ParamKind::U32]);
    let count = 10_000usize;
    let (x, y) = (f32s(count, 5), f32s(count, 6));
    let (hx, vy) = (gpu.alloc((count * 4) as u64).unwrap(), gpu.alloc_in((count * 4) as u64, VRAM).unwrap());
    hx.write_f32(0, &x).unwrap();
    let hy = gpu.alloc((count * 4) as u64).unwrap();
    hy.write_f32(0, &y).unwrap();
    q.submit(Op::Copy { src: hy.whole(), dst: vy.whole() }).unwrap();
    let args = [
        LaunchArg::Buffer(hx.whole()),
        LaunchArg::Buffer(vy.whole()),
        LaunchArg::F32(2.0),
        LaunchArg::U32(count as u32),
    ];
    q.submit(p.launch("saxpy", [(count as u32).div_ceil(256), 1, 1], &args).unwrap()).unwrap();
    q.submit(Op::Copy { src: vy.whole(), dst: hy.whole() }).unwrap().wait().unwrap();
    let got = hy.read_f32(0, count).unwrap();
    assert!(got.iter().zip(x.iter().zip(&y)).all(|(g, (x, y))| (g - (2.0 * x + y)).abs() < 1e-5));
    // Bad PTX: EINVAL with the reason (ours, or CUDA's JIT's).
    assert_eq!(gpu.load_program("ptx", b"garbage").unwrap_err().code, Errno::EINVAL);
    let broken = SAXPY_PTX.replace("fma.rn.f32", "fma.bogus.f32");
    let e = gpu.load_program("ptx", broken.as_bytes()).unwrap_err();
    assert_eq!(e.code, Errno::EINVAL, "{}", e.message);
    assert!(e.message.starts_with("cuda: cuModuleLoadData"), "{}", e.message);
}

#[test]
fn device_memory_is_scrubbed_and_exportable() {
    if !cuda() {
        return;
    }
    let d = Daemon::start(&["cuda:0"]);
    let (alice, bob) = (d.open(0), d.open(0));
    let (qa, qb) = (alice.create_queue().unwrap(), bob.create_queue().unwrap());
    let secret = alice.alloc_in(2 << 20, VRAM).unwrap();
    qa.submit(Op::Fill { dst: secret.whole(), pattern: 0x5ec2_e7ed }).unwrap().wait().unwrap();
    drop(secret);
    let fresh = bob.alloc_in(2 << 20, VRAM).unwrap();
    let out = bob.alloc(2 << 20).unwrap();
    qb.submit(Op::Copy { src: fresh.whole(), dst: out.whole() }).unwrap().wait().unwrap();
    let mut seen = vec![1u8; 2 << 20];
    out.read(0, &mut seen).unwrap();
    assert!(seen.iter().all(|b| *b == 0), "a new device buffer reads as zeros");
    // Export gives a POSIX descriptor another process imports into its own CUDA context
    // (cuMemImportFromShareableHandle): it reads what accel wrote and its write shows here.
    qb.submit(Op::Fill { dst: fresh.whole(), pattern: 0x0a11_ce55 }).unwrap().wait().unwrap();
    let fd = fresh.export().unwrap();
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd).to_string();
    let child = common::spawn_role(
        "cuda-import",
        d.socket(),
        &[("ACCEL_TEST_FD", raw), ("ACCEL_TEST_LEN", (2 << 20).to_string())],
    );
    common::assert_child_ok(child);
    qb.submit(Op::Copy { src: fresh.whole(), dst: out.whole() }).unwrap().wait().unwrap();
    out.read(0, &mut seen).unwrap();
    assert_eq!(&seen[..STAMP.len()], STAMP, "the importer's write is in accel's buffer");
    assert!(seen[32..].chunks(4).all(|w| w == 0x0a11_ce55u32.to_le_bytes()), "and the rest is untouched");
}

#[test]
fn memory_another_cuda_application_exported_is_shared_not_copied() {
    if !cuda() {
        return;
    }
    let d = Daemon::start(&["cuda:0"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    // This process is the other application: memory of its own on the same GPU, exported as
    // a POSIX descriptor (cuMemExportToShareableHandle), written with its own context.
    let size = 2u64 << 20;
    let (peer, fd) = accel_driver_cuda::direct::DeviceMapping::allocate(0, size).unwrap();
    peer.write(0, &vec![0x5a; size as usize]).unwrap();
    let buf = dev.import_external(&fd, VRAM, size).unwrap();
    assert_eq!((buf.region(), buf.size()), (VRAM, size));
    let out = dev.alloc(4096).unwrap();
    q.submit(Op::Copy { src: buf.view(size - 4096, 4096), dst: out.whole() }).unwrap().wait().unwrap();
    let mut seen = vec![0u8; 4096];
    out.read(0, &mut seen).unwrap();
    assert!(seen.iter().all(|b| *b == 0x5a), "accel reads what the peer wrote: not zeroed, not a copy");
    q.submit(Op::Fill { dst: buf.view(4096, 8), pattern: 0x600d_600d }).unwrap().wait().unwrap();
    let mut word = [0u8; 8];
    peer.read(4096, &mut word).unwrap();
    assert_eq!(word, [0x0d, 0x60, 0x0d, 0x60, 0x0d, 0x60, 0x0d, 0x60], "the peer reads what accel wrote");
    // Another client imports accel's export of it: the same memory.
    let other = d.open(0);
    let theirs = other.import(buf.export().unwrap()).unwrap();
    other.create_queue().unwrap().submit(Op::Fill { dst: theirs.view(0, 4), pattern: 0xc0de }).unwrap().wait().unwrap();
    peer.read(0, &mut word[..4]).unwrap();
    assert_eq!(u32::from_le_bytes(word[..4].try_into().unwrap()), 0xc0de);
    // Refusals: not a CUDA export, larger than the allocation, the host region.
    let memfd = accel_uapi::shm::sealed_memfd("not-cuda", 4096).unwrap();
    let e = dev.import_external(&memfd, VRAM, 4096).unwrap_err();
    assert_eq!(e.code, Errno::EINVAL, "{e}");
    let e = dev.import_external(&fd, VRAM, size * 2).unwrap_err();
    assert_eq!(e.code, Errno::EINVAL, "{e}");
    assert_eq!(dev.import_external(&fd, 0, size).unwrap_err().code, Errno::EINVAL);
    // Freed by accel, the memory stays the peer's.
    drop((buf, theirs));
    peer.read(size as usize - 4, &mut word[..4]).unwrap();
    assert_eq!(word[..4], [0x5a; 4]);
}

/// A client with the test kernels loaded and a vram counter the `spin` kernel increments.
struct Spinner {
    dev: Device,
    queue: accel::Queue,
    program: accel::Program,
    counter: Buffer,
}

impl Spinner {
    fn new(d: &Daemon, timeout: Option<std::time::Duration>) -> Spinner {
        let dev = d.open(0);
        let queue = match timeout {
            Some(t) => dev.create_queue_with_timeout(t).unwrap(),
            None => dev.create_queue().unwrap(),
        };
        let program = dev.load_program("ptx", accel_driver_cuda::direct::KERNELS_PTX.as_bytes()).unwrap();
        let counter = dev.alloc_in(4096, VRAM).unwrap();
        Spinner { dev, queue, program, counter }
    }

    fn launch(&self, entry: &str, ns: u32) -> accel::Result<()> {
        let args = [LaunchArg::Buffer(self.counter.whole()), LaunchArg::U32(ns)];
        self.queue.submit(self.program.launch(entry, [1, 1, 1], &args)?)?.wait()
    }

    fn count(&self) -> u32 {
        let host = self.dev.alloc(4096).unwrap();
        self.queue.submit(Op::Copy { src: self.counter.whole(), dst: host.whole() }).unwrap().wait().unwrap();
        let mut b = [0u8; 4];
        host.read(0, &mut b).unwrap();
        u32::from_ne_bytes(b)
    }
}

/// Four innocent clients launching 10 µs kernels while `culprit` runs; each innocent
/// client's jobs all succeed and its device counter holds its successes, plus at most
/// `reruns` kernels run twice (a job caught by a context loss between its kernel's last
/// store and its completion mark runs again: possible only when kernels overlap).
fn innocents_survive(d: &Daemon, reruns: u32, culprit: impl FnOnce()) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let innocents: Vec<_> = (0..4)
        .map(|_| {
            let (s, stop) = (Spinner::new(d, None), stop.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || ok < 20 {
                    match s.launch("spin", 10_000) {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                    if failed.len() > 10 {
                        break;
                    }
                }
                (ok, failed, s.count())
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    culprit();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in innocents {
        let (ok, failed, count) = t.join().unwrap();
        assert!(failed.is_empty(), "innocent jobs failed: {failed:?}");
        // Device memory kept every increment across the recoveries (none lost).
        assert!((ok..=ok + reruns).contains(&count), "the innocent client's counter: {count} for {ok} kernels");
    }
    // A new client finds the device working.
    let after = Spinner::new(d, None);
    after.launch("spin", 1_000).unwrap();
    assert_eq!(after.count(), 1);
}

#[test]
fn a_kernel_that_never_ends_fails_only_its_own_job() {
    if !cuda() {
        return;
    }
    let d = Daemon::start(&["cuda:0"]);
    innocents_survive(&d, 2, || {
        for round in 0..2 {
            // A queue of its own each round: two timeouts would ban it (hang_limit).
            let bad = Spinner::new(&d, Some(std::time::Duration::from_millis(400)));
            let e = bad.launch("hang", 0).unwrap_err();
            assert_eq!(e.code, Errno::ETIME, "round {round}: {e}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
}

#[test]
fn a_faulting_kernel_fails_only_its_own_job() {
    if !cuda() {
        return;
    }
    faults_beside_innocents(&Daemon::start(&["cuda:0"]), 2);
}

#[test]
fn with_one_compute_stream_a_fault_runs_no_innocent_kernel_twice() {
    if !cuda() {
        return;
    }
    // Kernels never overlap: the only kernel a fault can catch is its own.
    faults_beside_innocents(&Daemon::start_env(&["cuda:0"], &[], &[("ACCEL_CUDA_STREAMS", "1")]), 0);
}

/// A client whose kernel stores to an unmapped address, twice, beside four innocent ones.
fn faults_beside_innocents(d: &Daemon, reruns: u32) {
    innocents_survive(d, reruns, || {
        let bad = Spinner::new(d, None);
        let e = bad.launch("fault", 0).unwrap_err();
        assert_eq!(e.code, Errno::EFAULT, "{e}");
        assert!(e.to_string().contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{e}");
        let e = bad.launch("fault", 0).unwrap_err();
        assert_eq!(e.code, Errno::EFAULT, "a second fault, in the second worker: {e}");
        // A fault is no hang: the culprit's queue runs on.
        bad.launch("spin", 1_000).unwrap();
        assert_eq!(bad.count(), 1);
    });
}

fn http_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn nvml_health_and_sensors_reach_ras_and_metrics() {
    if !cuda() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = Daemon::start_with(&["cuda:0"], &["--metrics", &format!("127.0.0.1:{port}")]);
    // The NVML monitor's first reading (it polls every second).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let m = http_metrics(port);
    for block in ["memory", "pcie", "nvlink", "thermal", "power", "xid"] {
        assert!(m.contains(&format!("block=\"{block}\"")), "no RAS block {block} in /metrics");
    }
    assert!(m.contains("error_type=\"xid-31\""), "the XID counters are series");
    for error in ["remapped-rows-corrected", "remapped-rows-uncorrected", "row-remap-pending", "row-remap-failure"] {
        assert!(m.contains(&format!("error_type=\"{error}\"")), "no row-remapping series {error}");
    }
    let temperature = m.lines().find(|l| l.starts_with("hw_temperature_celsius{")).expect("a temperature gauge");
    let celsius: f64 = temperature.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((5.0..110.0).contains(&celsius), "{temperature}");
    assert!(m.lines().any(|l| l.starts_with("hw_power_")), "a power gauge");
    // A client's illegal address is an XID (13 or 31) the monitor counts, as corrected.
    let bad = Spinner::new(&d, None);
    assert_eq!(bad.launch("fault", 0).unwrap_err().code, Errno::EFAULT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let xid = loop {
        let m = http_metrics(port);
        let seen: Vec<String> = m
            .lines()
            .filter(|l| l.starts_with("hw_errors_total{") && l.contains("block=\"xid\"") && !l.ends_with(" 0"))
            .map(str::to_string)
            .collect();
        if !seen.is_empty() || std::time::Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // Seen on the lent H200 (driver 580): XID 31, an MMU fault, within a second.
    assert!(
        xid.iter().any(|l| l.contains("error_type=\"xid-31\"") || l.contains("error_type=\"xid-13\"")),
        "no XID counted after a client's illegal address (does this machine pass NVML events on?): {xid:?}"
    );
}

#[test]
fn queues_of_different_clients_run_their_kernels_at_once_on_streams_of_their_own() {
    if !cuda() {
        return;
    }
    let d = Daemon::start(&["cuda:0"]);
    let dev = d.open(0);
    let streams = dev.info().engines.iter().find(|e| e.name == "compute").map_or(1, |e| e.credits);
    assert_eq!(streams, 4, "the default compute streams");
    // Four clients' 200 ms kernels together take about 200 ms, not 800 (one at a time).
    let spinners: Vec<_> = (0..4).map(|_| Spinner::new(&d, None)).collect();
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let t0 = std::time::Instant::now();
    let threads: Vec<_> = spinners
        .into_iter()
        .map(|s| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                s.launch("spin", 200_000_000).unwrap();
                s.count()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 1);
    }
    let took = t0.elapsed();
    assert!(took < std::time::Duration::from_millis(600), "four 200 ms kernels took {took:?}: not concurrent");
}

#[test]
fn cubin_programs_load_with_their_entries_and_run() {
    if !cuda() {
        return;
    }
    let d = Daemon::start(&["cuda:0"]);
    let dev = d.open(0);
    assert!(dev.info().program_formats.iter().any(|f| f == "cubin"), "{:?}", dev.info().program_formats);
    // Machine code from the driver's own linker (no toolkit needed).
    let cubin = accel_driver_cuda::direct::ptx_to_cubin(0, SAXPY_PTX).unwrap();
    assert!(cubin.starts_with(b"\x7fELF"));
    let program = dev.load_program("cubin", &cubin).unwrap();
    let entries = program.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "saxpy");
    // 8-byte parameters take buffers, 4-byte ones u32s (the f32 passes as its bits).
    assert_eq!(entries[0].params, vec![ParamKind::Buffer, ParamKind::Buffer, ParamKind::U32, ParamKind::U32]);
    let n = 1000usize;
    let (x, y) = (f32s(n, 1), f32s(n, 2));
    let xb = dev.alloc((n * 4) as u64).unwrap();
    let yb = dev.alloc_in((n * 4) as u64, VRAM).unwrap();
    let host = dev.alloc((n * 4) as u64).unwrap();
    xb.write_f32(0, &x).unwrap();
    host.write_f32(0, &y).unwrap();
    let q = dev.create_queue().unwrap();
    q.submit(Op::Copy { src: host.whole(), dst: yb.whole() }).unwrap().wait().unwrap();
    let args = [
        LaunchArg::Buffer(xb.whole()),
        LaunchArg::Buffer(yb.whole()),
        LaunchArg::U32(2.5f32.to_bits()),
        LaunchArg::U32(n as u32),
    ];
    q.submit(program.launch("saxpy", [n.div_ceil(256) as u32, 1, 1], &args).unwrap()).unwrap().wait().unwrap();
    q.submit(Op::Copy { src: yb.whole(), dst: host.whole() }).unwrap().wait().unwrap();
    let got = host.read_f32(0, n).unwrap();
    for i in 0..n {
        assert_eq!(got[i], 2.5f32.mul_add(x[i], y[i]), "y[{i}]");
    }
    // What is no cubin is refused before the GPU sees it.
    let e = dev.load_program("cubin", b"\x7fELF but no more").unwrap_err();
    assert_eq!(e.code, Errno::EINVAL, "{e}");
    let e = dev.load_program("cubin", SAXPY_PTX.as_bytes()).unwrap_err();
    assert_eq!(e.code, Errno::EINVAL, "{e}");
}
