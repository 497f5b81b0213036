//! Device memory and programs end to end: regions, uploads and downloads through the copy
//! engine, launches of validated programs (testdev command buffers, the cpu's builtin
//! kernels), scrubbing, quotas per region, faults, and a client killed mid-launch.

mod common;

use std::time::{Duration, Instant};

use accel::{Buffer, Device, Errno, LaunchArg, Op, ParamKind, RegionKind};
use accel_driver_testdev::cmdbuf::{encode, Command, CMD_ADD, CMD_COPY, CMD_DELAY, CMD_FILL};
use accel_driver_testdev::{OP_COPY_BANDWIDTH, OP_COPY_FAULT, OP_DELAY, OP_LOSE_DEVICE, OP_VRAM_ECC};
use accel_uapi::{ObjectCounts, Request};
use common::{admin, code, driver_op, spawn_role, tenant, wait_ready, Daemon};

/// Entry point of child client processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    common::child_entry();
}

const VRAM: u32 = 1;

fn cmd(op: u32, a: u32, a_off: u32, b: u32, b_off: u32, len: u32) -> Command {
    Command { op, a, a_off, b, b_off, len }
}

fn host_u32s(dev: &Device, values: &[u32]) -> Buffer {
    let b = dev.alloc(values.len() as u64 * 4).unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    b.write(0, &bytes).unwrap();
    b
}

fn read_u32s(b: &Buffer, n: usize) -> Vec<u32> {
    let mut bytes = vec![0u8; n * 4];
    b.read(0, &mut bytes).unwrap();
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn devices_list_their_regions_and_program_formats() {
    let d = Daemon::start(&["cpu", "testdev"]);
    let (cpu, testdev) = (d.open(0), d.open(1));
    let r = &testdev.info().regions;
    assert_eq!(
        r.iter().map(|r| (r.id, r.name.as_str(), r.kind)).collect::<Vec<_>>(),
        vec![
            (0, "host", RegionKind::Host),
            (1, "vram", RegionKind::Device),
            (2, "shared", RegionKind::Device),
            (3, "opaque", RegionKind::Device)
        ]
    );
    assert!(r[0].mappable && r[0].exportable && !r[1].mappable && !r[1].exportable);
    assert!(!r[2].mappable && r[2].exportable);
    assert_eq!(testdev.info().program_formats, vec!["testdev-cmdbuf".to_string()]);
    assert_eq!(cpu.info().regions.len(), 1);
    assert_eq!(cpu.info().program_formats, vec!["builtin".to_string()]);
    assert_eq!(testdev.info().engines.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["compute", "copy"]);
    // Use shows per region.
    let _v = testdev.alloc_in(1 << 20, VRAM).unwrap();
    let again = d.open(1);
    assert_eq!(again.info().regions[1].used, 1 << 20);
    assert_eq!(cpu.alloc_in(4096, 1).unwrap_err().code, Errno::EINVAL, "the cpu device has no region 1");
}

#[test]
fn upload_launch_download_on_testdev() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let n = 1024usize;
    let a: Vec<u32> = (0..n as u32).collect();
    let b: Vec<u32> = (0..n as u32).map(|i| i * 1000).collect();
    let (ha, hb) = (host_u32s(&dev, &a), host_u32s(&dev, &b));
    let (va, vb, vc) = (
        dev.alloc_in(n as u64 * 4, VRAM).unwrap(),
        dev.alloc_in(n as u64 * 4, VRAM).unwrap(),
        dev.alloc_in(n as u64 * 4, VRAM).unwrap(),
    );
    assert!(!va.is_mapped() && va.as_ptr().is_null());
    assert_eq!(va.read(0, &mut [0u8; 4]).unwrap_err().code, Errno::EINVAL);
    // mmap and export of device memory are refused with clear errors.
    assert_eq!(code(dev.request(&Request::BoMmap { handle: va.handle() })), Errno::EINVAL);
    assert_eq!(va.export().unwrap_err().code, Errno::EOPNOTSUPP);
    // Upload, a command buffer (c = b; c += a; then the first 16 bytes = 0x55), download.
    let len = (n * 4) as u32;
    let program = dev
        .load_program(
            "testdev-cmdbuf",
            &encode(
                3,
                &[cmd(CMD_COPY, 1, 0, 2, 0, len), cmd(CMD_ADD, 0, 0, 2, 0, len), cmd(CMD_FILL, 2, 0, 0, 0x55, 16)],
            ),
        )
        .unwrap();
    assert_eq!(program.entries()[0].params, vec![ParamKind::Buffer; 3]);
    q.submit(Op::Copy { src: ha.whole(), dst: va.whole() }).unwrap();
    q.submit(Op::Copy { src: hb.whole(), dst: vb.whole() }).unwrap();
    let args = [LaunchArg::Buffer(va.whole()), LaunchArg::Buffer(vb.whole()), LaunchArg::Buffer(vc.whole())];
    q.submit(program.launch("main", [1, 1, 1], &args).unwrap()).unwrap();
    let out = dev.alloc(n as u64 * 4).unwrap();
    q.submit(Op::Copy { src: vc.whole(), dst: out.whole() }).unwrap().wait().unwrap();
    let got = read_u32s(&out, n);
    let want: Vec<u32> = (0..n).map(|i| if i < 4 { 0x55 } else { a[i] + b[i] }).collect();
    assert_eq!(got, want);
}

#[test]
fn bad_command_buffers_are_refused_and_nothing_runs() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    // At load: the driver's reason reaches the client.
    let bad = dev.load_program("testdev-cmdbuf", &encode(2, &[cmd(CMD_COPY, 0, 0, 5, 0, 4)])).unwrap_err();
    assert_eq!(bad.code, Errno::EINVAL);
    assert!(bad.message.contains("buffer index 5"), "{}", bad.message);
    assert_eq!(dev.load_program("testdev-cmdbuf", b"garbage!").unwrap_err().code, Errno::EINVAL);
    assert_eq!(dev.load_program("spirv", b"").unwrap_err().code, Errno::EOPNOTSUPP);
    // At launch: a reference beyond a bound buffer is ERANGE before anything runs.
    let (small, big) = (dev.alloc(4096).unwrap(), dev.alloc(8192).unwrap());
    big.write(0, &[9u8; 8192]).unwrap();
    let program = dev
        .load_program("testdev-cmdbuf", &encode(2, &[cmd(CMD_FILL, 1, 0, 0, 1, 8192), cmd(CMD_COPY, 1, 0, 0, 0, 8192)]))
        .unwrap();
    let launch = program.launch("main", [1, 1, 1], &[LaunchArg::Buffer(small.whole()), LaunchArg::Buffer(big.whole())]);
    let err = q.submit(launch.unwrap()).unwrap_err();
    assert_eq!(err.code, Errno::ERANGE, "{}", err.message);
    assert!(err.message.contains("command 1"), "{}", err.message);
    let mut seen = vec![0u8; 8192];
    big.read(0, &mut seen).unwrap();
    assert!(seen.iter().all(|b| *b == 9), "the first command must not have run");
    // Arguments are checked like every op: kinds, count, bounds, grid.
    let wrong = program.launch("main", [1, 1, 1], &[LaunchArg::U32(1), LaunchArg::Buffer(big.whole())]).unwrap();
    assert_eq!(code(q.submit(wrong)), Errno::EINVAL);
    let short = program.launch("main", [1, 1, 1], &[LaunchArg::Buffer(big.whole())]).unwrap();
    assert_eq!(code(q.submit(short)), Errno::EINVAL);
    let out_of_bounds = program.launch("main", [1, 1, 1], &[LaunchArg::Buffer(big.view(4096, 8192)); 2]).unwrap();
    assert_eq!(code(q.submit(out_of_bounds)), Errno::ERANGE);
    let empty_grid = program.launch("main", [0, 1, 1], &[LaunchArg::Buffer(big.whole()); 2]).unwrap();
    assert_eq!(code(q.submit(empty_grid)), Errno::EINVAL);
    assert_eq!(program.launch("nope", [1, 1, 1], &[]).unwrap_err().code, Errno::EINVAL);
}

#[test]
fn builtin_kernels_on_the_cpu_device() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let lib = dev.load_program("builtin", b"").unwrap();
    assert_eq!(
        lib.entries().iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        vec!["axpy", "scale", "softmax", "gemm_f32"]
    );
    let n = 1000usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let y: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
    let (bx, by) = (dev.alloc(4096).unwrap(), dev.alloc(4096).unwrap());
    bx.write_f32(0, &x).unwrap();
    by.write_f32(0, &y).unwrap();
    let axpy = lib
        .launch(
            "axpy",
            [1, 1, 1],
            &[
                LaunchArg::U64(n as u64),
                LaunchArg::F32(2.0),
                LaunchArg::Buffer(bx.whole()),
                LaunchArg::Buffer(by.whole()),
            ],
        )
        .unwrap();
    q.submit(axpy).unwrap().wait().unwrap();
    let got = by.read_f32(0, n).unwrap();
    assert!(got.iter().zip(x.iter().zip(&y)).all(|(g, (x, y))| *g == 2.0 * x + y));
    // Softmax of 4 rows × 8: each row sums to 1 and matches a direct computation.
    let input: Vec<f32> = (0..32).map(|i| (i % 8) as f32 - 3.0).collect();
    let (bi, bo) = (dev.alloc(4096).unwrap(), dev.alloc(4096).unwrap());
    bi.write_f32(0, &input).unwrap();
    let sm = lib
        .launch(
            "softmax",
            [1, 1, 1],
            &[LaunchArg::U64(4), LaunchArg::U64(8), LaunchArg::Buffer(bi.whole()), LaunchArg::Buffer(bo.whole())],
        )
        .unwrap();
    q.submit(sm).unwrap().wait().unwrap();
    let out = bo.read_f32(0, 32).unwrap();
    let denom: f32 = (0..8).map(|j| ((j as f32 - 3.0) - 4.0).exp()).sum();
    for (i, v) in out.iter().enumerate() {
        let want = (((i % 8) as f32 - 3.0) - 4.0).exp() / denom;
        assert!((v - want).abs() < 1e-6, "softmax[{i}] = {v}, want {want}");
    }
    // The driver's bounds check: n larger than the views.
    let too_long = lib
        .launch("scale", [1, 1, 1], &[LaunchArg::U64(2000), LaunchArg::F32(1.0), LaunchArg::Buffer(bx.whole())])
        .unwrap();
    assert_eq!(code(q.submit(too_long)), Errno::ERANGE);
    assert_eq!(dev.load_program("builtin", b"x").unwrap_err().code, Errno::EINVAL);
    // The library's GEMM: 3×4 · 4×2, checked against a direct product.
    let (m, n, k) = (3usize, 2usize, 4usize);
    let a: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 * 0.5).collect();
    let (ba, bb, bc) = (dev.alloc(4096).unwrap(), dev.alloc(4096).unwrap(), dev.alloc(4096).unwrap());
    ba.write_f32(0, &a).unwrap();
    bb.write_f32(0, &b).unwrap();
    let args = [
        LaunchArg::U64(m as u64),
        LaunchArg::U64(n as u64),
        LaunchArg::U64(k as u64),
        LaunchArg::F32(1.0),
        LaunchArg::F32(0.0),
        LaunchArg::Buffer(ba.whole()),
        LaunchArg::Buffer(bb.whole()),
        LaunchArg::Buffer(bc.whole()),
    ];
    q.submit(lib.launch("gemm_f32", [1, 1, 1], &args).unwrap()).unwrap().wait().unwrap();
    let c = bc.read_f32(0, m * n).unwrap();
    for i in 0..m {
        for j in 0..n {
            let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            assert_eq!(c[i * n + j], want, "c[{i}][{j}]");
        }
    }
    let overlapping = [args[0], args[1], args[2], args[3], args[4], args[5], args[6], LaunchArg::Buffer(ba.whole())];
    assert_eq!(code(q.submit(lib.launch("gemm_f32", [1, 1, 1], &overlapping).unwrap())), Errno::EINVAL);
}

#[test]
fn device_memory_is_scrubbed_between_clients() {
    let d = Daemon::start(&["testdev"]);
    {
        let a = d.open(0);
        let v = a.alloc_in(1 << 16, VRAM).unwrap();
        a.create_queue().unwrap().submit(Op::Fill { dst: v.whole(), pattern: 0xdead_beef }).unwrap().wait().unwrap();
    }
    // testdev hands freed blocks out again first: only the zeroing hook stands between them.
    d.wait_for_counts(ObjectCounts::default());
    let b = d.open(0);
    let q = b.create_queue().unwrap();
    let v = b.alloc_in(1 << 16, VRAM).unwrap();
    let out = b.alloc(1 << 16).unwrap();
    q.submit(Op::Copy { src: v.whole(), dst: out.whole() }).unwrap().wait().unwrap();
    let mut seen = vec![1u8; 1 << 16];
    out.read(0, &mut seen).unwrap();
    assert!(seen.iter().all(|b| *b == 0), "a new client read another client's freed device memory");
}

#[test]
fn region_capacity_and_namespace_quotas_apply_per_region() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let big = dev.alloc_in(200 << 20, VRAM).unwrap();
    assert_eq!(dev.alloc_in(100 << 20, VRAM).unwrap_err().code, Errno::ENOMEM, "vram holds 256 MiB");
    let _host = dev.alloc(100 << 20).unwrap();
    drop(big);
    // A namespace's memory limit applies to each region on its own.
    tenant(&d, "t", "tok", 0, 1 << 20, 0);
    let mut root = admin(&d);
    let t = Device::open_with_token(d.socket(), 0, "tok").unwrap();
    let _v = t.alloc_in(1 << 20, VRAM).unwrap();
    assert_eq!(t.alloc_in(4096, VRAM).unwrap_err().code, Errno::ENOSPC);
    let _h = t.alloc(1 << 20).unwrap();
    assert_eq!(t.alloc(4096).unwrap_err().code, Errno::ENOSPC);
    // Use per region shows for the namespace and for the client.
    let list = match root.call(&Request::NsList).unwrap() {
        accel_uapi::Reply::Namespaces(n) => n,
        other => panic!("{other:?}"),
    };
    let ns = list.iter().find(|n| n.name == "t").unwrap();
    assert_eq!(ns.devices[0].region_used, vec![1 << 20, 1 << 20, 0, 0]);
    let me = root.clients().unwrap().into_iter().find(|c| c.client_id == t.client_id()).unwrap();
    assert_eq!((me.memory_bytes, me.device_memory_bytes), (1 << 20, 1 << 20));
}

#[test]
fn copies_overlap_compute_on_their_own_engine() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let (copies, compute) = (dev.create_queue().unwrap(), dev.create_queue().unwrap());
    // 8 MiB at 28 MB/s: about 300 ms on the copy engine; a 300 ms command buffer on compute.
    // (Long enough that a loaded machine's scheduling delays stay far below the margin.)
    copies.submit(driver_op(OP_COPY_BANDWIDTH, 28_000_000)).unwrap().wait().unwrap();
    let (src, dst) = (dev.alloc(8 << 20).unwrap(), dev.alloc_in(8 << 20, VRAM).unwrap());
    let spin = dev.load_program("testdev-cmdbuf", &encode(1, &[cmd(CMD_DELAY, 300_000, 0, 0, 0, 0)])).unwrap();
    let launch = spin.launch("main", [1, 1, 1], &[LaunchArg::Buffer(src.view(0, 4))]).unwrap();
    let time = |ops: &[(&accel::Queue, Op)]| {
        let t = Instant::now();
        let fences: Vec<_> = ops.iter().map(|(q, op)| q.submit(*op).unwrap()).collect();
        fences.iter().for_each(|f| f.wait().unwrap());
        t.elapsed()
    };
    let copy = Op::Copy { src: src.whole(), dst: dst.whole() };
    let alone_copy = time(&[(&copies, copy)]);
    let alone_compute = time(&[(&compute, launch)]);
    let both = time(&[(&copies, copy), (&compute, launch)]);
    let longer = alone_copy.max(alone_compute);
    assert!(
        both < longer + (alone_copy.min(alone_compute)) / 2,
        "copy {alone_copy:?} and compute {alone_compute:?} did not overlap: together {both:?}"
    );
    copies.submit(driver_op(OP_COPY_BANDWIDTH, 0)).unwrap().wait().unwrap();
}

#[test]
fn injected_copy_and_vram_faults_fail_the_job_with_eio() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let (h, v) = (dev.alloc(4096).unwrap(), dev.alloc_in(4096, VRAM).unwrap());
    q.submit(driver_op(OP_COPY_FAULT, 0)).unwrap().wait().unwrap();
    let copy = Op::Copy { src: h.whole(), dst: v.whole() };
    let fault = q.submit(copy).unwrap().wait().unwrap_err();
    assert_eq!(fault.code, Errno::EIO);
    // The driver's own words reach the client beside the errno.
    assert!(fault.message.contains("testdev: injected hardware fault"), "{}", fault.message);
    q.submit(copy).unwrap().wait().unwrap();
    q.submit(driver_op(OP_VRAM_ECC, 0)).unwrap().wait().unwrap();
    // A job on host memory only is not hit; the next one touching vram is.
    q.submit(Op::Fill { dst: h.whole(), pattern: 1 }).unwrap().wait().unwrap();
    assert_eq!(q.submit(Op::Fill { dst: v.whole(), pattern: 1 }).unwrap().wait().unwrap_err().code, Errno::EIO);
    q.submit(Op::Fill { dst: v.whole(), pattern: 1 }).unwrap().wait().unwrap();
}

#[test]
fn rings_carry_launches_and_copies_between_regions() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let mut ring = dev.create_queue().unwrap().into_ring(16).unwrap();
    let (h, v, out) = (host_u32s(&dev, &[1, 2, 3, 4]), dev.alloc_in(16, VRAM).unwrap(), dev.alloc(16).unwrap());
    let add_self = dev.load_program("testdev-cmdbuf", &encode(1, &[cmd(CMD_ADD, 0, 0, 0, 0, 16)])).unwrap();
    ring.push(&Op::Copy { src: h.whole(), dst: v.whole() }, 1).unwrap();
    ring.push(&add_self.launch("main", [1, 1, 1], &[LaunchArg::Buffer(v.whole())]).unwrap(), 2).unwrap();
    ring.push(&Op::Copy { src: v.whole(), dst: out.whole() }, 3).unwrap();
    ring.flush().unwrap();
    let mut done = Vec::new();
    ring.wait(&mut done, 3, Duration::from_secs(5)).unwrap();
    assert_eq!(done.iter().map(|c| (c.user_data, c.result)).collect::<Vec<_>>(), vec![(1, 0), (2, 0), (3, 0)]);
    assert_eq!(read_u32s(&out, 4), vec![2, 4, 6, 8]);
    assert_eq!(ring.take_errors().unwrap(), (vec![], 0));

    // Failures keep their words: a refused entry's reason and a driver's error text.
    ring.push(&Op::Copy { src: h.view(0, 8), dst: v.view(1 << 20, 8) }, 4).unwrap();
    ring.push(&driver_op(OP_COPY_FAULT, 0), 5).unwrap();
    ring.push(&Op::Copy { src: h.whole(), dst: v.whole() }, 6).unwrap();
    ring.flush().unwrap();
    done.clear();
    ring.wait(&mut done, 3, Duration::from_secs(5)).unwrap();
    let results: Vec<_> = done.iter().map(|c| (c.user_data, c.status().err())).collect();
    assert_eq!(results, vec![(4, Some(Errno::ERANGE)), (5, None), (6, Some(Errno::EIO))]);
    let (errors, dropped) = ring.take_errors().unwrap();
    assert_eq!(dropped, 0);
    assert_eq!(errors.iter().map(|e| (e.user_data, e.code)).collect::<Vec<_>>(), [(4, Errno::ERANGE), (6, Errno::EIO)]);
    assert_eq!((errors[0].seqno, errors[1].seqno), (0, done[2].seqno));
    assert!(errors[0].message.contains("outside buffer"), "{}", errors[0].message);
    assert!(errors[1].message.contains("testdev: injected hardware fault"), "{}", errors[1].message);
    assert_eq!(ring.take_errors().unwrap(), (vec![], 0), "taking empties the list");
}

#[test]
fn a_client_killed_mid_launch_leaves_exact_counts() {
    let d = Daemon::start(&["testdev"]);
    let mut child = spawn_role("launch-then-die", d.socket(), &[]);
    wait_ready(&mut child);
    let during = d.stats();
    assert_eq!((during.programs, during.buffers), (1, 3));
    assert_eq!(during.buffer_bytes, 3 << 20);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(d.wait_for_counts(ObjectCounts::default()), ObjectCounts::default());
    assert_eq!(d.open(0).info().regions[1].used, 0, "vram is given back");
}

on_testdev_and_async!(a_lost_device_is_wedged_and_every_job_fails_on: a_lost_device_is_wedged_and_every_job_fails, a_lost_device_is_wedged_and_every_job_fails_on_an_asynchronous_engine);

fn a_lost_device_is_wedged_and_every_job_fails_on(testdev: &str) {
    let d = Daemon::start(&[testdev]);
    let dev = d.open(0);
    let (q, other) = (dev.create_queue().unwrap(), dev.create_queue().unwrap());
    // A long job already running on the other queue; then the next job to start finds the
    // device lost.
    let running = other.submit(driver_op(OP_DELAY, 5000)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    q.submit(driver_op(OP_LOSE_DEVICE, 0)).unwrap().wait().unwrap();
    // The job that will find the device lost waits on a gate, so one more can queue behind it.
    let gate = dev.create_syncobj(false).unwrap();
    let lost = q.submit_with(Op::Nop, &[gate.point(0)], &[]).unwrap();
    let queued = q.submit(Op::Nop).unwrap();
    gate.signal(0).unwrap();
    let e = lost.wait().unwrap_err();
    assert_eq!(e.code, Errno::EIO);
    assert!(e.message.contains("fell off the bus"), "{}", e.message);
    let t = Instant::now();
    assert_eq!(running.wait().unwrap_err().code, Errno::EIO);
    assert!(t.elapsed() < Duration::from_secs(2), "the running job was not aborted");
    assert_eq!(queued.wait().unwrap_err().code, Errno::EIO);
    assert!(d.open(0).info().wedged);
    assert_eq!(code(q.submit(Op::Nop)), Errno::EIO);
}

#[test]
fn exportable_device_memory_keeps_prime_semantics() {
    let d = Daemon::start(&["testdev"]);
    let (a, b) = (d.open(0), d.open(0));
    let q = a.create_queue().unwrap();
    let shared = a.alloc_in(4096, 2).unwrap();
    let src = host_u32s(&a, &[7; 1024]);
    q.submit(Op::Copy { src: src.whole(), dst: shared.whole() }).unwrap().wait().unwrap();
    // The driver exports its memory; importing the descriptor gives the same buffer.
    let fd = shared.export().unwrap();
    let theirs = b.import(&fd);
    // The client library maps what it imports; device memory is imported unmapped.
    let theirs = theirs.unwrap();
    assert_eq!(code(b.request(&Request::BoMmap { handle: theirs.handle() })), Errno::EINVAL, "still device memory");
    let out = b.alloc(4096).unwrap();
    let bq = b.create_queue().unwrap();
    bq.submit(Op::Copy { src: theirs.whole(), dst: out.whole() }).unwrap().wait().unwrap();
    assert_eq!(read_u32s(&out, 4), vec![7; 4]);
    // Same object: b's writes reach a.
    bq.submit(Op::Fill { dst: theirs.view(0, 4), pattern: 9 }).unwrap().wait().unwrap();
    let back = a.alloc(4096).unwrap();
    q.submit(Op::Copy { src: shared.whole(), dst: back.whole() }).unwrap().wait().unwrap();
    assert_eq!(read_u32s(&back, 2), vec![9, 7]);
    // Another namespace cannot import it.
    tenant(&d, "other", "tok", 0, 0, 0);
    let stranger = Device::open_with_token(d.socket(), 0, "tok").unwrap();
    assert_eq!(stranger.import(&fd).unwrap_err().code, Errno::ENOENT);
}

/// testdev's region whose exports are anonymous descriptors, as NVIDIA's are.
const OPAQUE: u32 = 3;

#[test]
fn exports_that_share_one_inode_import_as_their_own_buffer() {
    // Every descriptor NVIDIA's drivers export (an opaque Vulkan descriptor, a CUDA POSIX
    // handle) shares one inode with all the others, as every eventfd does with every other:
    // the inode cannot say which buffer a descriptor is.
    let d = Daemon::start(&["testdev"]);
    let (a, b) = (d.open(0), d.open(0));
    let (qa, qb) = (a.create_queue().unwrap(), b.create_queue().unwrap());
    let bufs: Vec<Buffer> = (0..3).map(|_| a.alloc_in(4096, OPAQUE).unwrap()).collect();
    let mut fds = Vec::new();
    for (i, buf) in bufs.iter().enumerate() {
        qa.submit(Op::Fill { dst: buf.whole(), pattern: 100 + i as u32 }).unwrap().wait().unwrap();
        fds.push(buf.export().unwrap());
    }
    let inode = |fd: &std::os::fd::OwnedFd| rustix::fs::fstat(fd).unwrap().st_ino;
    assert!(fds.iter().all(|fd| inode(fd) == inode(&fds[0])), "one inode for every export");
    // Each import is the buffer its descriptor was exported from (the first one too, not the
    // newest export), and exporting again gives the same open file.
    let again = bufs[0].export().unwrap();
    let out = b.alloc(4096).unwrap();
    for (i, fd) in fds.iter().chain([&again]).enumerate() {
        let theirs = b.import(fd).unwrap();
        assert_eq!(theirs.region(), OPAQUE);
        qb.submit(Op::Copy { src: theirs.whole(), dst: out.whole() }).unwrap().wait().unwrap();
        assert_eq!(read_u32s(&out, 1), vec![100 + (i % 3) as u32], "import of export {i}");
    }
    // A descriptor of the same kind that no buffer was exported as names none of them.
    let stranger = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    assert_eq!(inode(&stranger), inode(&fds[0]));
    assert_eq!(b.import(&stranger).unwrap_err().code, Errno::EINVAL);
    // Another namespace still cannot import one.
    tenant(&d, "other", "tok", 0, 0, 0);
    let other = Device::open_with_token(d.socket(), 0, "tok").unwrap();
    assert_eq!(other.import(&fds[1]).unwrap_err().code, Errno::ENOENT);
    // Freed, its descriptor names nothing any more (the import falls to host memory, which
    // an eventfd is not).
    drop(bufs);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.import(&fds[2]).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(b.import(&fds[2]).unwrap_err().code, Errno::EINVAL);
}

/// testdev's `shared` region: the one that imports other runtimes' memory (memfds).
const SHARED: u32 = 2;

#[test]
fn external_memory_imports_as_the_exporters_own_pages() {
    use rustix::io::{pread, pwrite};
    let d = Daemon::start(&["testdev", "cpu"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    // Another runtime's memory: a sealed memfd this process writes.
    let size = 1u64 << 20;
    let theirs = accel_uapi::shm::sealed_memfd("runtime", size).unwrap();
    pwrite(&theirs, &0xfeed_f00d_u32.to_ne_bytes(), 4096).unwrap();
    let buf = dev.import_external(&theirs, SHARED, size).unwrap();
    assert_eq!((buf.region(), buf.size()), (SHARED, size));
    // Not zeroed, not copied: accel reads what the exporter wrote, and the exporter sees
    // what accel writes.
    let out = dev.alloc(4).unwrap();
    q.submit(Op::Copy { src: buf.view(4096, 4), dst: out.view(0, 4) }).unwrap().wait().unwrap();
    assert_eq!(read_u32s(&out, 1), vec![0xfeed_f00d]);
    q.submit(Op::Fill { dst: buf.view(0, 8), pattern: 0x1234_5678 }).unwrap().wait().unwrap();
    let mut word = [0u8; 4];
    pread(&theirs, &mut word, 4).unwrap();
    assert_eq!(u32::from_ne_bytes(word), 0x1234_5678);
    // Importing the same descriptor again, or the buffer's export, is the same buffer.
    let again = dev.import_external(&theirs, SHARED, size).unwrap();
    q.submit(Op::Fill { dst: again.view(8, 4), pattern: 0xabcd }).unwrap().wait().unwrap();
    q.submit(Op::Copy { src: buf.view(8, 4), dst: out.view(0, 4) }).unwrap().wait().unwrap();
    assert_eq!(read_u32s(&out, 1), vec![0xabcd]);
    assert_eq!(d.stats().buffers, 2, "the import and a host buffer");
    let exported = buf.export().unwrap();
    assert_eq!(d.open(0).import(&exported).unwrap().region(), SHARED);
    assert_eq!(dev.import_external(&theirs, SHARED, 4096).unwrap_err().code, Errno::EINVAL, "another size");
    // Charged like a created buffer: in whole pages.
    let used = |dev: &Device| dev.info().regions[SHARED as usize].used;
    assert_eq!(used(&d.open(0)), size);
    let small = accel_uapi::shm::sealed_memfd("runtime", 100).unwrap();
    let tiny = dev.import_external(&small, SHARED, 100).unwrap();
    assert_eq!(tiny.size(), 100);
    assert_eq!(used(&d.open(0)), size + rustix::param::page_size() as u64);
    drop(tiny);

    // Refusals, each with its errno, and nothing left behind.
    let other = accel_uapi::shm::sealed_memfd("runtime", 4096).unwrap();
    assert_eq!(dev.import_external(&other, 0, 4096).unwrap_err().code, Errno::EINVAL, "host is BoImport's");
    assert_eq!(dev.import_external(&other, VRAM, 4096).unwrap_err().code, Errno::EOPNOTSUPP);
    assert_eq!(dev.import_external(&other, SHARED, 0).unwrap_err().code, Errno::EINVAL, "empty");
    assert_eq!(dev.import_external(&other, SHARED, 8192).unwrap_err().code, Errno::EINVAL, "past its end");
    assert_eq!(dev.import_external(&other, 9, 4096).unwrap_err().code, Errno::EINVAL, "no region 9");
    let unsealed = rustix::fs::memfd_create("loose", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, 4096).unwrap();
    assert_eq!(dev.import_external(&unsealed, SHARED, 4096).unwrap_err().code, Errno::EINVAL, "could shrink");
    let no_fd = dev.request(&Request::BoImportExternal { region: SHARED, size: 4096 });
    assert_eq!(code(no_fd), Errno::EBADF);
    let cpu = d.open(1);
    assert_eq!(cpu.import_external(&other, 1, 4096).unwrap_err().code, Errno::EINVAL, "the cpu device has no region 1");
    // A namespace's quota holds for imports too.
    tenant(&d, "small", "tok-small", 0, 1 << 16, 0);
    let small = Device::open_with_token(d.socket(), 0, "tok-small").unwrap();
    let kept = small.import_external(&other, SHARED, 4096).unwrap();
    assert_eq!(kept.size(), 4096);
    let big = accel_uapi::shm::sealed_memfd("runtime", 1 << 20).unwrap();
    assert_eq!(small.import_external(&big, SHARED, 1 << 20).unwrap_err().code, Errno::ENOSPC);
    assert_eq!(used(&d.open(0)), size + 4096, "the refused import charged nothing");
    // Freed by accel, the memory stays the exporter's.
    drop((buf, again));
    let mut word = [0u8; 4];
    pread(&theirs, &mut word, 4096).unwrap();
    assert_eq!(u32::from_ne_bytes(word), 0xfeed_f00d);
}

#[test]
fn device_memory_does_not_cross_to_another_device() {
    // Two devices of one driver: an export of one's device memory is not the other's (its
    // driver would take it for its own), while host memory goes anywhere.
    let d = Daemon::start(&["testdev", "testdev"]);
    let (a, b) = (d.open(0), d.open(1));
    let mine = a.alloc_in(4096, SHARED).unwrap();
    let fd = mine.export().unwrap();
    let e = b.import(&fd).unwrap_err();
    assert_eq!(e.code, Errno::EINVAL, "{e}");
    assert!(e.message.contains("device memory of accel0"), "{e}");
    let e = b.import_external(&fd, SHARED, 4096).unwrap_err();
    assert_eq!(e.code, Errno::EINVAL, "{e}");
    assert_eq!(d.open(0).import(&fd).unwrap().region(), SHARED, "its own device takes it");
    let host = a.alloc(4096).unwrap();
    assert_eq!(b.import(host.export().unwrap()).unwrap().region(), 0);
}
