"""The Python binding against a real daemon: zero-copy NumPy views and DLPack, GEMM checked
against NumPy, syncobjs, rings, asyncio, errors, and a client killed mid-job."""

import asyncio
import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import accel

OP_HANG = 3  # testdev: a job that hangs until its queue's timeout


def test_device_describes_itself(daemon):
    dev = accel.Device(0)
    assert dev.driver == "cpu" and dev.minor == 0
    assert dev.memory_bytes > 0 and dev.compute_units >= 1
    assert "accel0" in repr(dev)


def test_numpy_views_are_the_same_pages(daemon):
    dev = accel.Device(0)
    buf = dev.alloc(4096)
    view = np.asarray(buf)
    assert view.dtype == np.uint8 and view.shape == (buf.size,)
    assert view.ctypes.data == buf.address, "no copy: the array points into the mapping"
    assert not view.any(), "new buffers are zeroed"
    # The device writes, NumPy sees it.
    dev.queue().fill(buf, 0x01020304).wait(5)
    words = accel.array(buf, np.uint32)
    assert (words == 0x01020304).all()
    # NumPy writes, the device copies it.
    words[:] = np.arange(words.size, dtype=np.uint32)
    dst = dev.alloc(4096)
    dev.queue().copy(buf, dst).wait(5)
    assert (accel.array(dst, np.uint32) == np.arange(words.size, dtype=np.uint32)).all()
    # memoryview too.
    mv = memoryview(buf)
    assert mv.nbytes == buf.size and not mv.readonly


def test_dlpack_shares_memory_both_ways(daemon):
    dev = accel.Device(0)
    buf = dev.alloc(4096)
    assert buf.__dlpack_device__() == (1, 0)
    arr = np.from_dlpack(buf)
    assert arr.ctypes.data == buf.address and arr.nbytes == buf.size
    arr[:4] = [1, 2, 3, 4]
    assert bytes(memoryview(buf)[:4]) == b"\x01\x02\x03\x04"
    # The capsule keeps the buffer alive after the Python object is gone.
    del buf
    arr[4] = 5
    assert arr[4] == 5
    # from_dlpack: an accel buffer is itself; foreign memory is copied into a new buffer.
    same = dev.alloc(64)
    assert accel.from_dlpack(same, dev) is same
    host = np.arange(16, dtype=np.float32)
    copied = accel.from_dlpack(host, dev)
    assert (accel.array(copied, np.float32, (16,)) == host).all()


def test_torch_cpu_tensor_through_dlpack(daemon):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    dev = accel.Device(0)
    buf = dev.alloc(4096)
    t = torch.from_dlpack(buf)
    t[0] = 7
    assert np.asarray(buf)[0] == 7


def test_gemm_matches_numpy(daemon):
    dev = accel.Device(0)
    rng = np.random.default_rng(1)
    m, n, k = 96, 80, 64
    a_host = rng.standard_normal((m, k), dtype=np.float32)
    b_host = rng.standard_normal((k, n), dtype=np.float32)
    c_host = rng.standard_normal((m, n), dtype=np.float32)
    a, b, c = dev.alloc(a_host.nbytes), dev.alloc(b_host.nbytes), dev.alloc(c_host.nbytes)
    accel.array(a, np.float32, (m, k))[:] = a_host
    accel.array(b, np.float32, (k, n))[:] = b_host
    accel.array(c, np.float32, (m, n))[:] = c_host
    dev.queue().gemm(a, b, c, m, n, k, alpha=2.0, beta=0.5).wait(10)
    want = 2.0 * a_host @ b_host + 0.5 * c_host
    np.testing.assert_allclose(accel.array(c, np.float32, (m, n)), want, rtol=1e-4, atol=1e-4)


def _bf16_bits(x):
    """float32 → bfloat16 bits, rounded to nearest even (NumPy has no bfloat16)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_gemm_in_float16_and_bfloat16_sums_in_float32(daemon):
    dev = accel.Device(0)
    rng = np.random.default_rng(2)
    m, n, k = 64, 48, 96
    a32 = rng.standard_normal((m, k), dtype=np.float32)
    b32 = rng.standard_normal((k, n), dtype=np.float32)
    q = dev.queue()
    # float16: NumPy's own type.
    a, b, c = dev.alloc(m * k * 2), dev.alloc(k * n * 2), dev.alloc(m * n * 2)
    ah, bh = a32.astype(np.float16), b32.astype(np.float16)
    accel.array(a, np.float16, (m, k))[:] = ah
    accel.array(b, np.float16, (k, n))[:] = bh
    q.gemm(a, b, c, m, n, k, dtype="float16").wait(10)
    want = (ah.astype(np.float32) @ bh.astype(np.float32)).astype(np.float16)
    got = accel.array(c, np.float16, (m, n))
    # f32 sums in another order: at most one 16-bit rounding step apart.
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2**-10, atol=2**-14)
    # bfloat16, as bits.
    ab, bb = _bf16_bits(a32), _bf16_bits(b32)
    accel.array(a, np.uint16, (m, k))[:] = ab
    accel.array(b, np.uint16, (k, n))[:] = bb
    q.gemm(a, b, c, m, n, k, dtype="bfloat16").wait(10)
    want = _bf16_value(_bf16_bits(_bf16_value(ab) @ _bf16_value(bb)))
    got = _bf16_value(accel.array(c, np.uint16, (m, n)))
    np.testing.assert_allclose(got, want, rtol=2**-7, atol=2**-30)
    with pytest.raises(ValueError, match="float64"):
        q.gemm(a, b, c, m, n, k, dtype="float64")


def test_native_sync_file_is_refused_by_the_cpu_device_and_none_once_done(daemon):
    dev = accel.Device(0)
    f = dev.queue().fill(dev.alloc(4096), 1)
    f.wait(5)
    assert f.native_sync_file() is None


def test_dependencies_through_syncobjs(daemon):
    dev = accel.Device(0)
    q = dev.queue()
    tl = dev.syncobj(timeline=True)
    buf = dev.alloc(4096)
    q.fill(buf, 7, signal=[(tl, 1)])
    f = q.fill(buf, 9, wait=[(tl, 1)], signal=[(tl, 2)])
    f.wait(5)
    tl.wait(2, timeout=5)
    assert tl.query() == 2
    assert (accel.array(buf, np.uint32) == 9).all()
    assert f.seqno > 0 and f.done()


def test_drm_syncobj_semantics(daemon):
    dev = accel.Device(0)
    tl, other = dev.syncobj(timeline=True), dev.syncobj(signaled=True)
    # Out-of-order host signals are accepted; query gives the contiguous signalled point.
    dev.syncobj_signal([(tl, 5), (tl, 3)])
    assert dev.syncobj_query([tl, other]) == [5, 0]
    assert dev.syncobj_query([tl], last_submitted=True) == [5]
    # An unsubmitted point: EINVAL, or ETIME when waiting for its submission.
    with pytest.raises(accel.Error) as e:
        dev.syncobj_wait([(tl, 7)], timeout=0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(accel.Error) as e:
        dev.syncobj_wait([(tl, 7)], for_submit=True, timeout=0)
    assert e.value.errno == errno.ETIME
    assert dev.syncobj_wait([(tl, 7), (other, 0)], all=False, for_submit=True, timeout=5) == 1
    # A wait on one thread while another thread of the same device signals.
    import threading

    waiter = threading.Thread(target=lambda: tl.wait_for_submit(9, timeout=5))
    waiter.start()
    tl.signal(9)
    waiter.join(5)
    assert not waiter.is_alive() and tl.query() == 9
    # Transfer, sync files, eventfds, reset.
    copy = dev.syncobj()
    copy.transfer_from(tl, 9, 0)
    copy.wait(0, timeout=5)
    sf = tl.export_sync_file(9)
    try:
        late = dev.syncobj(timeline=True)
        late.import_sync_file(2, sf)
        assert late.query() == 2
    finally:
        os.close(sf)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        gate = dev.syncobj(timeline=True)
        gate.notify_eventfd(4, efd)
        gate.signal(4)
        assert os.eventfd_read(efd) == 1
    finally:
        os.close(efd)
    dev.syncobj_reset([tl, other])
    assert tl.query() == 0 and tl.last_submitted() == 0


def test_device_memory_is_not_handed_out_as_host_memory(daemon):
    dev = accel.Device(1)  # testdev: its vram is daemon memory no client maps
    vram, host = dev.alloc(4096, 1), dev.alloc(4096)
    assert (vram.region, host.region) == (1, 0)
    for view in (memoryview, np.from_dlpack, lambda b: accel.array(b, np.uint8)):
        with pytest.raises(BufferError, match="not mapped into this process"):
            view(vram)
    assert vram.address == 0
    # Jobs move it: host -> vram -> host.
    accel.array(host, np.uint32)[:] = np.arange(1024, dtype=np.uint32)
    q = dev.queue()
    q.copy(host, vram)
    q.fill(host, 0).wait(5)
    q.copy(vram, host).wait(5)
    np.testing.assert_array_equal(accel.array(host, np.uint32), np.arange(1024, dtype=np.uint32))


def test_external_memory_is_the_exporters_own(daemon):
    # testdev's `shared` region (2) takes another runtime's memory as a sealed memfd, as a
    # vulkan device takes an opaque descriptor and a cuda device a POSIX handle.
    import fcntl

    dev = accel.Device(1)
    fd = os.memfd_create("runtime", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 8192)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        os.pwrite(fd, np.arange(8, dtype=np.uint32).tobytes(), 0)
        buf = dev.import_external(fd, 2, 8192)
        assert (buf.size, buf.region) == (8192, 2)
        host = dev.alloc(4096)
        q = dev.queue()
        q.copy(buf, host, length=32).wait(5)
        np.testing.assert_array_equal(accel.array(host, np.uint32)[:8], np.arange(8, dtype=np.uint32))
        q.fill(buf, 7).wait(5)
        assert np.frombuffer(os.pread(fd, 8, 8184), dtype=np.uint32).tolist() == [7, 7]
        with pytest.raises(accel.Error) as e:
            dev.import_external(fd, 2, 1 << 20)  # past the memfd's end
        assert e.value.errno == errno.EINVAL
        with pytest.raises(accel.Error) as e:
            accel.Device(0).import_external(fd, 1, 8192)  # the cpu device has no region 1
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_vulkan_visible_memory_is_a_numpy_array_the_device_updates_in_place():
    # A daemon of its own with a vulkan device (Mesa's lavapipe in CI): its `visible`
    # region is memory the device reaches in place and this process maps.
    from _daemon import Daemon, accel_binary

    if not accel_binary():
        pytest.skip("no accel binary: build it (cargo build) or set ACCEL_BIN")
    try:
        d = Daemon(["vulkan:0"])
    except Exception as e:  # no Vulkan loader or device here
        pytest.skip(f"no vulkan device: {e}")
    try:
        dev = accel.Device(0, socket=d.socket)
        visible = [r for r in dev.regions() if r["name"] == "visible"]
        if not visible:
            pytest.skip("this Vulkan driver's exports cannot be mapped: no visible region")
        region = visible[0]
        assert (region["kind"], region["mappable"], region["coherent"]) == ("devicemappable", True, True)
        buf = dev.alloc(4096, region["id"])
        words = accel.array(buf, np.uint32)
        assert words.ctypes.data == buf.address != 0 and not words.any()
        # NumPy writes, the device copies from the very pages; the device fills, NumPy sees it.
        words[:] = np.arange(1024, dtype=np.uint32)
        host = dev.alloc(4096)
        q = dev.queue()
        q.copy(buf, host).wait(5)
        np.testing.assert_array_equal(accel.array(host, np.uint32), np.arange(1024, dtype=np.uint32))
        q.fill(buf, 0x5EED).wait(5)
        assert (words == 0x5EED).all()
        np.testing.assert_array_equal(np.from_dlpack(buf).view(np.uint32), words)
    finally:
        d.stop()


def test_builtin_kernels_and_device_regions(daemon):
    dev = accel.Device(0)
    assert [r["name"] for r in dev.regions()] == ["host"]
    lib = dev.program("builtin")
    assert [e[0] for e in lib.entries()] == ["axpy", "scale", "softmax", "gemm_f32"]
    x = np.arange(256, dtype=np.float32)
    bx, by = dev.alloc(x.nbytes), dev.alloc(x.nbytes)
    accel.array(bx, np.float32)[:256] = x  # buffers are whole pages: 1024 floats
    accel.array(by, np.float32)[:] = 1.0
    q = dev.queue()
    q.launch(lib, "axpy", [("u64", 256), ("f32", 3.0), bx, by]).wait(5)
    np.testing.assert_array_equal(accel.array(by, np.float32)[:256], 3.0 * x + 1.0)
    assert (accel.array(by, np.float32)[256:] == 1.0).all()
    with pytest.raises(accel.Error) as e:
        q.launch(lib, "scale", [("u64", 10_000), ("f32", 1.0), bx])
    assert e.value.errno == errno.ERANGE


def test_ring_sync_entries(daemon):
    dev = accel.Device(0)
    ring = dev.ring(16)
    gate, done = dev.syncobj(timeline=True), dev.syncobj(timeline=True)
    ring.push_sync(waits=[(gate, 1)], user_data=1)
    ring.push("nop", user_data=2)
    ring.push_sync(signals=[(done, 1)], user_data=3)
    ring.flush()
    dev.syncobj_wait([(done, 1)], available=True, timeout=5)
    gate.signal(1)
    got = ring.wait(3, timeout=5)
    assert got == [(1, 0), (2, 0), (3, 0)]
    assert done.query() == 1


def test_ring_wait_modes(daemon):
    ring = accel.Device(0).ring(8)
    assert ring.wait_mode == "auto"
    for mode in ("spin", "block", "auto"):
        ring.wait_mode = mode
        assert ring.wait_mode == mode
        assert ring.nop_sync(timeout=5) > 0
    with pytest.raises(accel.Error) as e:
        ring.wait_mode = "busy"
    assert e.value.errno == errno.EINVAL


def test_ring_round_trips(daemon):
    dev = accel.Device(0)
    ring = dev.ring(64)
    assert ring.nop_sync(timeout=5) > 0
    for i in range(32):
        ring.push("nop", user_data=i)
    ring.flush()
    got = []
    while len(got) < 32:
        got += ring.wait(min=1, timeout=5)
    assert got == [(i, 0) for i in range(32)]
    buf = dev.alloc(4096)
    ring.push("fill", (buf, 5), user_data=99)
    ring.flush()
    assert ring.wait(1, timeout=5) == [(99, 0)]
    assert (accel.array(buf, np.uint32) == 5).all()


def test_await_a_fence(daemon):
    dev = accel.Device(0)
    buf = dev.alloc(1 << 20)

    async def main():
        f = dev.queue().fill(buf, 3)
        await f
        return accel.array(buf, np.uint32)[-1]

    assert asyncio.run(main()) == 3


def test_errors_carry_errno_and_message(daemon):
    dev = accel.Device(0)
    with pytest.raises(accel.Error) as e:
        accel.Device(42)
    assert e.value.errno == errno.ENODEV and "ENODEV" in e.value.strerror
    assert isinstance(e.value, OSError)
    with pytest.raises(accel.Error) as e:
        dev.alloc(0)
    assert e.value.errno == errno.EINVAL
    buf = dev.alloc(4096)
    with pytest.raises(accel.Error) as e:
        dev.queue().fill(buf, 0, offset=buf.size, length=4)
    assert e.value.errno == errno.ERANGE
    with pytest.raises(TypeError):
        dev.queue().fill(b"not a buffer", 0)
    with pytest.raises(ValueError):
        dev.queue(priority="urgent")
    # A hung job fails its fence with ETIME, and asyncio sees the same error.
    hang_dev = accel.Device(1)
    q = hang_dev.queue(timeout=0.2)
    with pytest.raises(accel.Error) as e:
        q.driver(OP_HANG).wait(10)
    assert e.value.errno == errno.ETIME

    async def main():
        await hang_dev.queue(timeout=0.2).driver(OP_HANG)

    with pytest.raises(accel.Error) as e:
        asyncio.run(main())
    assert e.value.errno == errno.ETIME
    # A wait that times out.
    f = hang_dev.queue(timeout=5).driver(OP_HANG)
    with pytest.raises(accel.Error) as e:
        f.wait(0.05)
    assert e.value.errno == errno.ETIMEDOUT


def test_a_client_killed_mid_job_leaves_nothing_behind(daemon):
    import gc
    import time

    # Earlier tests' objects are closed asynchronously: start from a settled baseline.
    gc.collect()

    def objects():
        # Connections close asynchronously, so the previous stats call may still count as a
        # client: compare the objects.
        s = accel.stats()
        s.pop("clients")
        return s

    before, deadline = objects(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = objects()
        if now == before:
            break
        before = now
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import accel, sys
            dev = accel.Device(1)
            bufs = [dev.alloc(1 << 20) for _ in range(4)]
            q = dev.queue(timeout=60)
            f = q.driver({OP_HANG})
            q.fill(bufs[0], 1, wait=[f])
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=os.environ,
    )
    assert child.stdout.readline().strip() == b"ready"
    during = objects()
    assert during["buffers"] == before["buffers"] + 4 and during["jobs"] >= before["jobs"] + 2
    child.kill()
    child.wait()
    # The daemon serves others at once, and everything the killed client held is freed.
    accel.Device(1).queue().nop().wait(5)
    deadline = time.monotonic() + 10
    while objects() != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert objects() == before


def test_ras_events_arrive_in_order_with_their_counters(daemon):
    # testdev (accel1) reports a storm of corrected memory errors through its RAS monitor.
    OP_RAS_STORM = 9
    events = accel.ras_events()
    kernel_only = accel.ras_events(ext=False)
    q = accel.Device(1).queue()
    q.driver(OP_RAS_STORM, (5, 0, 0, 0)).wait(5)
    got = [events.next(5) for _ in range(5)]
    assert [(e.device, e.node, e.error, e.kind, e.delta) for e in got] == [("accel1", "memory", "ecc-corrected", 0, 1)] * 5
    assert [e.seq for e in got] == list(range(got[0].seq, got[0].seq + 5)), "consecutive sequence numbers"
    assert [e.value for e in got] == list(range(got[0].value, got[0].value + 5)), "the counter after each"
    assert all(a.timestamp_ns <= b.timestamp_ns for a, b in zip(got, got[1:]))
    first = next(iter(kernel_only))
    assert (first.node, first.error, first.value, first.seq, first.timestamp_ns) == ("memory", "ecc-corrected", got[0].value, 0, 0)
    assert "ecc-corrected" in repr(first)
    with pytest.raises(accel.Error) as e:
        events.next(0.05)
    assert e.value.errno == errno.ETIMEDOUT
