"""DLPack kDLCUDA: a cuda device's vram buffer is a CUDA tensor over the same GPU memory.

Needs an NVIDIA GPU and PyTorch with CUDA; skips otherwise. Runs under pytest, or as a
script on the lent GPU machine (scripts/gpu-check.sh, which has no pytest there):

    ACCEL_BIN=gpu-bin/accel PYTHONPATH=gpu-bin/python python3 python/tests/test_cuda_dlpack.py
"""

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATTERN = 0x0A11CE55


def _binary():
    explicit = os.environ.get("ACCEL_BIN")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        candidate = ROOT / "target" / profile / "accel"
        if candidate.exists():
            return str(candidate)
    return shutil.which("accel")


def _why_not():
    """Why this machine cannot run the check, or None."""
    try:
        import torch
    except ImportError:
        return "no PyTorch here"
    if not torch.cuda.is_available():
        return "PyTorch has no CUDA device here"
    if not _binary():
        return "no accel binary (build it, or set ACCEL_BIN)"
    return None


def vram_is_a_cuda_tensor_over_the_same_memory():
    import accel
    import torch

    tmp = tempfile.mkdtemp(prefix="accel-dlpack-")
    sock = os.path.join(tmp, "accel.sock")
    proc = subprocess.Popen(
        [_binary(), "daemon", "--socket", sock, "--state-dir", os.path.join(tmp, "state"), "--device", "cuda:0"],
        env={**os.environ, "ACCEL_LOG": "error"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                    s.connect(sock)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "accel daemon did not start"
                time.sleep(0.05)
        dev = accel.Device(0, socket=sock)
        n = 1 << 20
        vram, host = dev.alloc(n, 1), dev.alloc(n)
        q = dev.queue()
        q.fill(vram, PATTERN).wait(10)
        kind, ordinal = vram.__dlpack_device__()
        assert kind == 2, f"a cuda vram buffer is kDLCUDA, not {kind}"
        t = torch.from_dlpack(vram)
        assert t.is_cuda and t.device.index == ordinal and t.dtype == torch.uint8 and t.numel() >= n
        words = t[:n].view(torch.int32)
        assert bool((words == PATTERN).all()), "torch sees what accel wrote"
        # torch writes; accel copies the same memory out.
        words[:4] = 7
        torch.cuda.synchronize()
        q.copy(vram, host).wait(10)
        got = memoryview(host)[:32].cast("i").tolist()
        assert got == [7, 7, 7, 7, PATTERN, PATTERN, PATTERN, PATTERN], got
        del words, t
        # Host buffers stay kDLCPU.
        assert host.__dlpack_device__() == (1, 0)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def test_vram_is_a_cuda_tensor_over_the_same_memory():
    import pytest

    why = _why_not()
    if why:
        pytest.skip(why)
    vram_is_a_cuda_tensor_over_the_same_memory()


if __name__ == "__main__":
    why = _why_not()
    if why:
        print(f"skipped: {why}")
        sys.exit(0)
    vram_is_a_cuda_tensor_over_the_same_memory()
    print("dlpack kDLCUDA: ok")
