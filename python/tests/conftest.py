"""A real daemon per test module: the `accel` binary with a cpu and a testdev device."""

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def accel_binary():
    explicit = os.environ.get("ACCEL_BIN")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        candidate = ROOT / "target" / profile / "accel"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("accel")
    if found:
        return found
    pytest.skip("no accel binary: build it (cargo build) or set ACCEL_BIN")


@pytest.fixture(scope="module")
def daemon():
    tmp = tempfile.mkdtemp(prefix="accel-py-")
    sock = os.path.join(tmp, "accel.sock")
    proc = subprocess.Popen(
        [accel_binary(), "daemon", "--socket", sock, "--state-dir", os.path.join(tmp, "state"),
         "--device", "cpu", "--device", "testdev", "--job-timeout-ms", "500"],
        env={**os.environ, "ACCEL_LOG": "error"},
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(sock)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("accel daemon did not start")
            time.sleep(0.02)
    old = os.environ.get("ACCEL_SOCKET")
    os.environ["ACCEL_SOCKET"] = sock
    yield sock
    if old is None:
        os.environ.pop("ACCEL_SOCKET", None)
    else:
        os.environ["ACCEL_SOCKET"] = old
    proc.kill()
    proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)
