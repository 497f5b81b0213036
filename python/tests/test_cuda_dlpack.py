"""DLPack kDLCUDA: a cuda device's vram buffer is a CUDA tensor over the same GPU memory.

Needs an NVIDIA GPU and PyTorch with CUDA; skips otherwise. Runs under pytest, or as a
script on the lent GPU machine (scripts/gpu-check.sh, which has no pytest there):

    ACCEL_BIN=gpu-bin/accel PYTHONPATH=gpu-bin/python python3 python/tests/test_cuda_dlpack.py
"""

import sys

from _daemon import Daemon, accel_binary

PATTERN = 0x0A11CE55


def _why_not():
    """Why this machine cannot run the check, or None."""
    try:
        import torch
    except ImportError:
        return "no PyTorch here"
    if not torch.cuda.is_available():
        return "PyTorch has no CUDA device here"
    if not accel_binary():
        return "no accel binary (build it, or set ACCEL_BIN)"
    return None


def vram_is_a_cuda_tensor_over_the_same_memory():
    import accel
    import torch

    d = Daemon(["cuda:0"], timeout=30)
    try:
        dev = accel.Device(0, socket=d.socket)
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
        d.stop()


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
