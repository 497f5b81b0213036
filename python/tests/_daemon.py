"""Starting a real accel daemon for the Python tests (no pytest needed: the GPU check runs
some of them as scripts)."""

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def accel_binary():
    """The `accel` binary: `$ACCEL_BIN`, else this checkout's build, else `PATH`; None if none."""
    explicit = os.environ.get("ACCEL_BIN")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        candidate = ROOT / "target" / profile / "accel"
        if candidate.exists():
            return str(candidate)
    return shutil.which("accel")


class Daemon:
    """A daemon with `devices` on a socket in a new temporary directory, until `stop()`."""

    def __init__(self, devices, extra=(), timeout=10):
        self.tmp = tempfile.mkdtemp(prefix="accel-py-")
        self.socket = os.path.join(self.tmp, "accel.sock")
        args = [accel_binary(), "daemon", "--socket", self.socket, "--state-dir", os.path.join(self.tmp, "state")]
        for d in devices:
            args += ["--device", d]
        self.proc = subprocess.Popen(args + list(extra), env={**os.environ, "ACCEL_LOG": "error"})
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                    s.connect(self.socket)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("accel daemon did not start")
                time.sleep(0.02)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)
