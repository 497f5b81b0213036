"""A real daemon per test module: the `accel` binary with a cpu and a testdev device."""

import os

import pytest

from _daemon import Daemon, accel_binary


@pytest.fixture(scope="module")
def daemon():
    if not accel_binary():
        pytest.skip("no accel binary: build it (cargo build) or set ACCEL_BIN")
    d = Daemon(["cpu", "testdev"], extra=["--job-timeout-ms", "500"])
    old = os.environ.get("ACCEL_SOCKET")
    os.environ["ACCEL_SOCKET"] = d.socket
    yield d.socket
    if old is None:
        os.environ.pop("ACCEL_SOCKET", None)
    else:
        os.environ["ACCEL_SOCKET"] = old
    d.stop()
