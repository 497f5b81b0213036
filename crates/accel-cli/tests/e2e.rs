//! End-to-end tests: a real `accel daemon` process, real client processes, a real socket.

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use accel::{Connection, Device, Errno, FenceStatus, Float16, Gemm16, GemmF32, ObjectCounts, Op, WaitPoint};
use accel_driver_testdev::{OP_DELAY, OP_FAIL, OP_HANG};
use accel_uapi::wire::{self, Header, Kind, ABI_MAJOR};
use accel_uapi::{BoHandle, BufView, Request};
use common::{code, driver_op, spawn_role, wait_ready, Daemon};

/// Entry point of child client processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    common::child_entry();
}

#[test]
fn buffer_shared_between_processes_sees_same_bytes() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let buf = dev.alloc(8192).unwrap();
    let pattern: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
    buf.write(0, &pattern).unwrap();
    let fd = buf.export().unwrap();
    // Let the child inherit the descriptor.
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
    let mut child = spawn_role("import-and-write", d.socket(), &[("ACCEL_TEST_FD", fd.as_raw_fd().to_string())]);
    drop(fd);
    assert!(child.wait().unwrap().success(), "child failed");
    let mut back = [0u8; 20];
    buf.read(4096, &mut back).unwrap();
    assert_eq!(&back, b"written by the child");
}

#[test]
fn import_in_same_daemon_resolves_to_same_object() {
    let d = Daemon::start(&["cpu"]);
    let (a, b) = (d.open(0), d.open(0));
    let buf = a.alloc(4096).unwrap();
    let before = d.stats().buffers;
    let imported = b.import(buf.export().unwrap()).unwrap();
    assert_eq!(d.stats().buffers, before, "import created a second object instead of sharing");
    assert_eq!(imported.size(), 4096);
}

#[allow(clippy::too_many_arguments)]
fn naive_gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| f64::from(a[i * lda + p]) * f64::from(b[p * ldb + j])).sum();
            c[i * ldc + j] = (f64::from(alpha) * dot + f64::from(beta) * f64::from(c[i * ldc + j])) as f32;
        }
    }
}

#[test]
fn gemm_matches_naive_reference() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    // Strided operands (row stride > columns) and non-trivial alpha/beta.
    let (m, n, k, lda, ldb, ldc) = (67usize, 45usize, 33usize, 40usize, 50usize, 48usize);
    let gen = |len: usize, s: u32| -> Vec<f32> {
        (0..len).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(s)) % 1000) as f32 / 500.0 - 1.0).collect()
    };
    let (av, bv, cv) = (gen(m * lda, 1), gen(k * ldb, 2), gen(m * ldc, 3));
    let (a, b, c) = (
        dev.alloc((av.len() * 4) as u64).unwrap(),
        dev.alloc((bv.len() * 4) as u64).unwrap(),
        dev.alloc((cv.len() * 4) as u64 + 64).unwrap(),
    );
    a.write_f32(0, &av).unwrap();
    b.write_f32(0, &bv).unwrap();
    c.write_f32(64, &cv).unwrap();
    let q = dev.create_queue().unwrap();
    let op = GemmF32 {
        m: m as u64,
        n: n as u64,
        k: k as u64,
        a: a.matrix(0, lda as u64),
        b: b.matrix(0, ldb as u64),
        c: c.matrix(64, ldc as u64),
        alpha: 1.5,
        beta: -0.5,
    };
    q.submit(Op::GemmF32(op)).unwrap().wait().unwrap();
    let got = c.read_f32(64, m * ldc).unwrap();
    let mut want = cv.clone();
    naive_gemm(m, n, k, &av, lda, &bv, ldb, &mut want, ldc, 1.5, -0.5);
    for i in 0..m {
        for j in 0..ldc {
            let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
            if j < n {
                assert!((g - w).abs() < 1e-4, "C[{i}][{j}] = {g}, want {w}");
            } else {
                assert_eq!(g, cv[i * ldc + j], "padding C[{i}][{j}] was touched");
            }
        }
    }
}

/// A 16-bit float's bits from an f32 (round to nearest even) and back.
fn to16(ty: Float16, v: f32) -> u16 {
    match ty {
        Float16::F16 => half::f16::from_f32(v).to_bits(),
        Float16::Bf16 => half::bf16::from_f32(v).to_bits(),
    }
}

fn from16(ty: Float16, bits: u16) -> f32 {
    match ty {
        Float16::F16 => half::f16::from_bits(bits).to_f32(),
        Float16::Bf16 => half::bf16::from_bits(bits).to_f32(),
    }
}

fn bytes16(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn gemm_f16_and_bf16_match_the_reference_to_the_last_bit() {
    let d = Daemon::start(&["cpu", "testdev"]);
    let dev = d.open(0);
    let ops = dev.info().ops.clone();
    assert!(ops.contains(&accel::OpKind::GemmF16) && ops.contains(&accel::OpKind::GemmBf16), "{ops:?}");
    let q = dev.create_queue().unwrap();
    // Strided operands, C at an offset of one element (2-byte aligned only), alpha and beta.
    let (m, n, k, lda, ldb, ldc) = (32usize, 29usize, 41usize, 64usize, 30usize, 31usize);
    // Multiples of 1/8 in [-1, 1]: exact in both types, and every product and sum of them is
    // exact in f32, so the f32-summed result rounded once is the f64 reference rounded once.
    let gen =
        |len: usize, s: usize| -> Vec<f32> { (0..len).map(|i| ((i * 7 + s * 3) % 17) as f32 / 8.0 - 1.0).collect() };
    let (av, bv, cv) = (gen(m * lda, 1), gen(k * ldb, 2), gen(m * ldc, 3));
    for ty in [Float16::F16, Float16::Bf16] {
        let enc = |v: &[f32]| bytes16(&v.iter().map(|x| to16(ty, *x)).collect::<Vec<_>>());
        // A fills its 4 KiB buffer exactly: bounds count 2 bytes an element.
        let (a, b, c) = (
            dev.alloc((m * lda * 2) as u64).unwrap(),
            dev.alloc((k * ldb * 2) as u64).unwrap(),
            dev.alloc((m * ldc * 2 + 2) as u64).unwrap(),
        );
        a.write(0, &enc(&av)).unwrap();
        b.write(0, &enc(&bv)).unwrap();
        c.write(2, &enc(&cv)).unwrap();
        let g = Gemm16 {
            m: m as u64,
            n: n as u64,
            k: k as u64,
            a: a.matrix(0, lda as u64),
            b: b.matrix(0, ldb as u64),
            c: c.matrix(2, ldc as u64),
            alpha: 1.5,
            beta: -0.5,
            ty,
        };
        q.submit(Op::Gemm16(g)).unwrap().wait().unwrap();
        let mut raw = vec![0u8; m * ldc * 2];
        c.read(2, &mut raw).unwrap();
        let got: Vec<u16> = raw.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
        let mut want = cv.clone();
        naive_gemm(m, n, k, &av, lda, &bv, ldb, &mut want, ldc, 1.5, -0.5);
        for i in 0..m {
            for j in 0..ldc {
                let at = i * ldc + j;
                let w = if j < n { to16(ty, want[at]) } else { to16(ty, cv[at]) };
                assert_eq!(got[at], w, "{ty:?} C[{i}][{j}] = {}, want {}", from16(ty, got[at]), from16(ty, w));
            }
        }
        // beta = 0 does not read C (NaNs there stay out of the result).
        c.write(2, &bytes16(&vec![0x7fff; m * ldc])).unwrap();
        q.submit(Op::Gemm16(Gemm16 { beta: 0.0, ..g })).unwrap().wait().unwrap();
        c.read(2, &mut raw).unwrap();
        let mut want = vec![0f32; m * ldc];
        naive_gemm(m, n, k, &av, lda, &bv, ldb, &mut want, ldc, 1.5, 0.0);
        assert_eq!(u16::from_le_bytes([raw[0], raw[1]]), to16(ty, want[0]));
        // Refused with reasons: an odd offset, a matrix past its buffer's end.
        let odd = Gemm16 { a: a.matrix(1, lda as u64), ..g };
        assert_eq!(code(q.submit(Op::Gemm16(odd))), Errno::EINVAL);
        let past = Gemm16 { m: m as u64 + 1, c: c.matrix(0, ldc as u64), ..g };
        let err = q.submit(Op::Gemm16(past)).unwrap_err();
        assert_eq!(err.code, Errno::ERANGE, "{err}");
        assert!(err.message.contains("matrix A"), "{err}");
    }
    // A device without 16-bit GEMM says so.
    let testdev = d.open(1);
    let buf = testdev.alloc(4096).unwrap();
    let g = Gemm16 {
        m: 4,
        n: 4,
        k: 4,
        a: buf.matrix(0, 4),
        b: buf.matrix(64, 4),
        c: buf.matrix(128, 4),
        alpha: 1.0,
        beta: 0.0,
        ty: Float16::Bf16,
    };
    let err = testdev.create_queue().unwrap().submit(Op::Gemm16(g)).unwrap_err();
    assert!(err.message.contains("gemm-bf16"), "{err}");
}

#[test]
fn a_device_without_native_sync_files_says_so_and_a_done_job_needs_none() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let slow = q.submit(driver_op(OP_DELAY, 300)).unwrap();
    let err = slow.native_sync_file().unwrap_err();
    assert_eq!(err.code, Errno::EOPNOTSUPP, "{err}");
    assert!(err.message.contains("VK_KHR_external_semaphore_fd"), "{err}");
    let tl = dev.create_syncobj(true).unwrap();
    let behind = q.submit_with(Op::Nop, &[], &[tl.signal_point(1)]).unwrap();
    assert_eq!(tl.native_sync_file(1).unwrap_err().code, Errno::EOPNOTSUPP);
    assert_eq!(tl.native_sync_file(2).unwrap_err().code, Errno::EINVAL, "a point not submitted");
    behind.wait().unwrap();
    // Done: nothing to wait for (Vulkan's -1), on any device.
    assert!(slow.native_sync_file().unwrap().is_none());
    assert!(tl.native_sync_file(1).unwrap().is_none());
}

#[test]
fn failed_job_error_propagates_to_fence_syncobj_and_dependents() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let buf = dev.alloc(4096).unwrap();
    let tl = dev.create_syncobj(true).unwrap();
    let failed = q.submit_with(driver_op(OP_FAIL, Errno::EIO.raw().into()), &[], &[tl.signal_point(1)]).unwrap();
    let dependent = q.submit_with(Op::Fill { dst: buf.whole(), pattern: 0xffff_ffff }, &[failed.point()], &[]).unwrap();
    assert_eq!(failed.wait().unwrap_err().code, Errno::EIO);
    assert_eq!(dependent.wait().unwrap_err().code, Errno::EIO);
    assert_eq!(tl.wait(1, Duration::from_secs(5)).unwrap_err().code, Errno::EIO);
    assert_eq!(dependent.status().unwrap(), FenceStatus::Error(Errno::EIO));
    let mut word = [0u8; 4];
    buf.read(0, &mut word).unwrap();
    assert_eq!(word, [0; 4], "a job whose dependency failed must not run");
    // The device keeps working.
    q.submit(Op::Nop).unwrap().wait().unwrap();
}

#[test]
fn hung_job_times_out_with_etime_and_device_recovers() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue_with_timeout(Duration::from_millis(200)).unwrap();
    let t = Instant::now();
    let hang = q.submit(driver_op(OP_HANG, 0)).unwrap();
    let next = q.submit(Op::Nop).unwrap();
    assert_eq!(hang.wait().unwrap_err().code, Errno::ETIME);
    next.wait().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn wait_any_all_and_timeout() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let slow = q.submit(driver_op(OP_DELAY, 400)).unwrap();
    assert_eq!(code(dev.wait(&[slow.point()], true, Duration::from_millis(50))), Errno::ETIMEDOUT);
    let host = dev.create_syncobj(false).unwrap();
    host.signal(0).unwrap();
    let any = dev.wait(&[slow.point(), host.point(0)], false, Duration::from_secs(5)).unwrap();
    assert_eq!((any.first, any.status), (1, vec![FenceStatus::Pending, FenceStatus::Signaled]));
    assert_eq!(any.timestamps[0], 0);
    let all = dev.wait(&[slow.point(), host.point(0)], true, Duration::from_secs(5)).unwrap();
    assert_eq!(all.status, vec![FenceStatus::Signaled, FenceStatus::Signaled]);
    assert!(all.timestamps[0] > all.timestamps[1], "the slow job signalled after the host syncobj");
}

#[test]
fn sync_fd_becomes_readable_when_fence_signals() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let f = q.submit(driver_op(OP_DELAY, 100)).unwrap();
    let fd = f.sync_fd().unwrap();
    let mut pfd = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
    let five = rustix::time::Timespec { tv_sec: 5, tv_nsec: 0 };
    assert_eq!(rustix::event::poll(&mut pfd, Some(&five)).unwrap(), 1);
    let mut v = [0u8; 8];
    rustix::io::read(&fd, &mut v).unwrap();
    assert_eq!(u64::from_ne_bytes(v), 1);
    assert_eq!(f.status().unwrap(), FenceStatus::Signaled);
}

#[test]
fn timeline_and_binary_syncobjs_order_jobs() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let buf = dev.alloc(4096).unwrap();
    let tl = dev.create_syncobj(true).unwrap();
    let bin = dev.create_syncobj(false).unwrap();
    q.submit_with(Op::Fill { dst: buf.view(0, 16), pattern: 1 }, &[], &[tl.signal_point(1)]).unwrap();
    q.submit_with(
        Op::Copy { src: buf.view(0, 16), dst: buf.view(16, 16) },
        &[tl.point(1)],
        &[tl.signal_point(2), bin.signal_point(0)],
    )
    .unwrap();
    bin.wait(0, Duration::from_secs(5)).unwrap();
    assert_eq!(tl.query().unwrap(), 2);
    assert_eq!(buf.read_f32(16, 1).unwrap()[0].to_bits(), 1);
    // As in DRM, a point at or below the last is accepted (a new run of the chain); a
    // plain wait on a point nothing was submitted for is an error, not a hang.
    q.submit_with(Op::Nop, &[], &[tl.signal_point(2)]).unwrap().wait().unwrap();
    assert_eq!(tl.wait(7, Duration::from_secs(1)).unwrap_err().code, Errno::EINVAL);
    tl.signal(7).unwrap();
    tl.wait(7, Duration::from_secs(1)).unwrap();
}

#[test]
fn exclusive_device_is_ebusy_until_owner_exits() {
    let d = Daemon::start(&["testdev:exclusive"]);
    let mut holder = spawn_role("hold", d.socket(), &[]);
    wait_ready(&mut holder);
    let err = Device::open_at(d.socket(), 0).unwrap_err();
    assert_eq!(err.code, Errno::EBUSY);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let dev = loop {
        match Device::open_at(d.socket(), 0) {
            Ok(dev) => break dev,
            Err(e) if e.code == Errno::EBUSY && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("open after the owner died: {e}"),
        }
    };
    assert_eq!(dev.info().exclusive_owner, Some(dev.client_id()));
    // A clean close releases the lease too.
    drop(dev);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Device::open_at(d.socket(), 0).is_err() {
        assert!(Instant::now() < deadline, "lease not released on close");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn stale_and_forged_handles_are_rejected() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let buf = dev.alloc(4096).unwrap();
    let stale = buf.handle();
    drop(buf);
    // The slot is reused by the next buffer, under a new generation.
    let fresh = dev.alloc(4096).unwrap();
    assert_ne!(fresh.handle(), stale);
    let fill = |bo| Op::Fill { dst: BufView { bo, offset: 0, len: 4 }, pattern: 0 };
    assert_eq!(q.submit(fill(stale)).unwrap_err().code, Errno::ENOENT);
    assert_eq!(q.submit(fill(BoHandle(0xdead_beef_0000_0007))).unwrap_err().code, Errno::ENOENT);
    assert_eq!(dev.request(&Request::BoClose { handle: stale }).unwrap_err().code, Errno::ENOENT);
    assert_eq!(
        dev.wait(&[WaitPoint::Fence(accel_uapi::FenceHandle(42))], true, Duration::ZERO).unwrap_err().code,
        Errno::ENOENT
    );
    q.submit(fill(fresh.handle())).unwrap().wait().unwrap();
}

#[test]
fn invalid_jobs_are_refused_with_exact_codes() {
    let d = Daemon::start(&["cpu", "testdev"]);
    let (cpu, test) = (d.open(0), d.open(1));
    let (qc, qt) = (cpu.create_queue().unwrap(), test.create_queue().unwrap());
    let buf = cpu.alloc(4096).unwrap();
    let tbuf = test.alloc(4096).unwrap();
    let gemm = |b: &accel::Buffer| GemmF32 {
        m: 4,
        n: 4,
        k: 4,
        a: b.matrix(0, 4),
        b: b.matrix(64, 4),
        c: b.matrix(128, 4),
        alpha: 1.0,
        beta: 0.0,
    };
    assert_eq!(qt.submit(Op::GemmF32(gemm(&tbuf))).unwrap_err().code, Errno::EOPNOTSUPP);
    assert_eq!(qc.submit(Op::Fill { dst: buf.view(4000, 200), pattern: 0 }).unwrap_err().code, Errno::ERANGE);
    assert_eq!(qc.submit(Op::Fill { dst: buf.view(u64::MAX, 2), pattern: 0 }).unwrap_err().code, Errno::EOVERFLOW);
    assert_eq!(qc.submit(Op::Fill { dst: buf.view(0, 3), pattern: 0 }).unwrap_err().code, Errno::EINVAL);
    assert_eq!(qc.submit(Op::Copy { src: buf.view(0, 8), dst: buf.view(8, 16) }).unwrap_err().code, Errno::EINVAL);
    let overlap = GemmF32 { c: buf.matrix(32, 4), ..gemm(&buf) };
    assert_eq!(qc.submit(Op::GemmF32(overlap)).unwrap_err().code, Errno::EINVAL);
    let huge = GemmF32 { m: 1 << 19, ..gemm(&buf) };
    assert_eq!(qc.submit(Op::GemmF32(huge)).unwrap_err().code, Errno::ERANGE);
    let bad_stride = GemmF32 { a: buf.matrix(0, 2), ..gemm(&buf) };
    assert_eq!(qc.submit(Op::GemmF32(bad_stride)).unwrap_err().code, Errno::EINVAL);
    assert_eq!(qc.submit(Op::Driver { code: 1, args: [0; 4] }).unwrap_err().code, Errno::EOPNOTSUPP);
    assert_eq!(cpu.alloc(0).unwrap_err().code, Errno::EINVAL);
    assert_eq!(cpu.alloc(u64::MAX).unwrap_err().code, Errno::EOVERFLOW);
    assert_eq!(cpu.alloc(1 << 60).unwrap_err().code, Errno::ENOMEM);
    assert_eq!(Device::open_at(d.socket(), 9).unwrap_err().code, Errno::ENODEV);
    qc.submit(Op::GemmF32(gemm(&buf))).unwrap().wait().unwrap();
}

#[test]
fn malformed_messages_get_error_replies_and_daemon_keeps_serving() {
    let d = Daemon::start(&["cpu"]);
    let bystander = d.open(0);
    let mut conn = Connection::connect(d.socket()).unwrap();
    assert_eq!(code(conn.call_raw(b"garbage", &[])), Errno::EPROTO);
    assert_eq!(code(conn.call_raw(&[], &[])), Errno::EPIPE, "an empty datagram reads as a hang-up");
    let mut conn = Connection::connect(d.socket()).unwrap();
    let header = |len: u32, major: u16| Header { abi_major: major.into(), ..Header::new(Kind::Request, 5, len) };
    let mut bytes = zerocopy::IntoBytes::as_bytes(&header(3, ABI_MAJOR)).to_vec();
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(code(conn.call_raw(&bytes, &[])), Errno::EINVAL, "undecodable body");
    bytes.truncate(bytes.len() - 1);
    assert_eq!(code(conn.call_raw(&bytes, &[])), Errno::EPROTO, "truncated body");
    let mut future = zerocopy::IntoBytes::as_bytes(&header(0, ABI_MAJOR + 1)).to_vec();
    future.push(0);
    assert_eq!(code(conn.call_raw(&future, &[])), Errno::EPROTO, "unknown ABI major");
    let oversized = vec![0u8; wire::MAX_MESSAGE + 4096];
    assert_eq!(code(conn.call_raw(&oversized, &[])), Errno::EMSGSIZE);
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let list = wire::encode(Kind::Request, 6, &Request::ListDevices).unwrap();
    assert_eq!(code(conn.call_raw(&list, &[rustix::fd::AsFd::as_fd(&memfd)])), Errno::EBADF, "unexpected descriptor");
    assert_eq!(code(conn.call_fd(&Request::BoImport, Some(rustix::fd::AsFd::as_fd(&memfd)))), Errno::ENODEV);
    // Skipping the handshake is refused.
    let raw = accel_uapi::transport::connect(d.socket()).unwrap();
    accel_uapi::transport::send(rustix::fd::AsFd::as_fd(&raw), &list, &[]).unwrap();
    let mut buf = vec![0u8; wire::MAX_MESSAGE + 1];
    let r = accel_uapi::transport::recv(rustix::fd::AsFd::as_fd(&raw), &mut buf).unwrap().unwrap();
    let (_, reply) = wire::decode::<accel_uapi::Reply>(Kind::Reply, &buf[..r.len]).unwrap();
    assert!(matches!(reply, accel_uapi::Reply::Error { code: Errno::EPROTO, .. }), "{reply:?}");
    // The same connection and everyone else keep working.
    assert_eq!(conn.list_devices().unwrap().len(), 1);
    let q = bystander.create_queue().unwrap();
    q.submit(Op::Nop).unwrap().wait().unwrap();
}

#[test]
fn importing_a_foreign_or_unsealed_fd_is_refused() {
    let d = Daemon::start(&["cpu"]);
    let dev = d.open(0);
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, 4096).unwrap();
    assert_eq!(dev.import(&memfd).unwrap_err().code, Errno::EINVAL);
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert_eq!(dev.import(&file).unwrap_err().code, Errno::EINVAL);
}

#[test]
fn new_buffers_are_zeroed_even_after_another_client_freed_memory() {
    let d = Daemon::start(&["cpu"]);
    let a = d.open(0);
    let buf = a.alloc(1 << 20).unwrap();
    buf.write(0, &vec![0x5a; 1 << 20]).unwrap();
    drop(buf);
    drop(a);
    let b = d.open(0);
    let fresh = b.alloc(1 << 20).unwrap();
    let mut bytes = vec![1u8; 1 << 20];
    fresh.read(0, &mut bytes).unwrap();
    assert!(bytes.iter().all(|&x| x == 0));
}

#[test]
fn sigkilled_client_mid_job_leaks_nothing() {
    let d = Daemon::start(&["testdev"]);
    let baseline = d.wait_for_counts(ObjectCounts::default());
    assert_eq!(baseline, ObjectCounts::default());
    let mut child = spawn_role("busy-then-die", d.socket(), &[]);
    wait_ready(&mut child);
    let busy = d.stats();
    assert_eq!((busy.buffers, busy.queues, busy.syncobjs, busy.jobs), (4, 1, 1, 2), "{busy:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let after = d.wait_for_counts(baseline);
    assert_eq!(after, baseline, "objects leaked after SIGKILL");
    // The device still serves others: the hung job of the dead client was aborted.
    let dev = d.open(0);
    dev.create_queue().unwrap().submit(Op::Nop).unwrap().wait_timeout(Duration::from_secs(5)).unwrap();
}

#[test]
fn top_shows_a_busy_clients_engine_share() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    // Keep the engine busy with 5 ms jobs while top samples twice, 300 ms apart.
    let fences: Vec<_> = (0..160).map(|_| q.submit(driver_op(OP_DELAY, 5)).unwrap()).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(["top", "-n", "2", "--interval-ms", "300", "--socket"])
        .arg(d.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.rsplit("CLIENT").next().unwrap();
    let row =
        last.lines().find(|l| l.split_whitespace().next() == Some(&dev.client_id().to_string())).expect("client row");
    let util: f64 = row.split_whitespace().find(|w| w.ends_with('%')).unwrap().trim_end_matches('%').parse().unwrap();
    assert!(util > 50.0, "a saturating client shows {util}% engine use: {row}");
    let rate: f64 = row.split_whitespace().nth(5).unwrap().parse().unwrap();
    assert!(rate > 50.0, "about 200 jobs/s expected, row: {row}");
    drop(fences);
}

#[test]
fn submit_wait_runs_a_job_in_one_round_trip() {
    let d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let q = dev.create_queue_with_timeout(Duration::from_millis(300)).unwrap();
    let buf = dev.alloc(4096).unwrap();
    q.run(Op::Fill { dst: buf.whole(), pattern: 0x0a0b0c0d }, Duration::from_secs(5)).unwrap();
    assert_eq!(buf.read_f32(0, 1).unwrap()[0].to_bits(), 0x0a0b0c0d, "done when run returns");
    q.run(Op::Nop, Duration::from_secs(5)).unwrap();
    assert_eq!(code(q.run(driver_op(OP_FAIL, 0), Duration::from_secs(5))), Errno::EIO);
    assert_eq!(code(q.run(driver_op(OP_HANG, 0), Duration::from_secs(5))), Errno::ETIME);
    let slow = dev.create_queue_with_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(code(slow.run(driver_op(OP_HANG, 0), Duration::from_millis(50))), Errno::ETIMEDOUT);
    // No fence handle was left behind by any of them.
    drop((slow, q, buf));
    assert_eq!(d.wait_for_counts(ObjectCounts { clients: 1, ..Default::default() }).fences, 0);
}
