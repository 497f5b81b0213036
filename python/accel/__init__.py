"""accel: one interface to every accelerator, from Python.

>>> import accel, numpy as np
>>> dev = accel.Device(0)                      # accel0 through the daemon at $ACCEL_SOCKET
>>> buf = dev.alloc(4 * 1024)
>>> a = accel.array(buf, np.float32, (32, 32)) # a NumPy view of the same pages, no copy
>>> q = dev.queue()
>>> q.fill(buf, 0x3F800000).wait()             # 1.0f everywhere, done by the device
>>> float(a[0, 0])
1.0

Errors raise :class:`accel.Error`, an :class:`OSError` whose ``errno`` is the Linux errno.
"""

from ._accel import Buffer, Device, Error, Fence, Program, Queue, RasEvent, RasEvents, Ring, Syncobj, ras_events, stats

__all__ = [
    "Buffer",
    "Device",
    "Error",
    "Fence",
    "Program",
    "Queue",
    "RasEvent",
    "RasEvents",
    "Ring",
    "Syncobj",
    "array",
    "from_dlpack",
    "ras_events",
    "stats",
]


def array(buf, dtype="uint8", shape=None):
    """A NumPy array over ``buf``'s memory (zero copy): ``dtype`` elements, ``shape``
    (default: as many as fit, 1-D)."""
    import numpy as np

    dtype = np.dtype(dtype)
    raw = np.asarray(memoryview(buf))  # memoryview: BufferError for unmapped memory
    if shape is None:
        count = raw.nbytes // dtype.itemsize
        return raw[: count * dtype.itemsize].view(dtype)
    count = 1
    for s in shape:
        count *= s
    if count * dtype.itemsize > raw.nbytes:
        raise ValueError(f"{shape} {dtype} needs {count * dtype.itemsize} bytes; the buffer has {raw.nbytes}")
    return raw[: count * dtype.itemsize].view(dtype).reshape(shape)


def from_dlpack(x, device):
    """An accel buffer holding ``x`` (anything with ``__dlpack__`` on the CPU: NumPy arrays,
    PyTorch CPU tensors, accel buffers).

    An accel buffer comes back as itself (zero copy). Other memory belongs to its producer,
    not to a memfd the daemon can map, so it is copied once into a new buffer of ``device``;
    produce the data in an accel buffer (``accel.array``) to avoid that copy.
    """
    if isinstance(x, Buffer):
        return x
    import numpy as np

    host = np.from_dlpack(x)
    if not host.flags.c_contiguous:
        host = np.ascontiguousarray(host)
    buf = device.alloc(max(host.nbytes, 1))
    np.asarray(buf)[: host.nbytes] = host.reshape(-1).view(np.uint8)
    return buf
