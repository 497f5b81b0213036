"""asyncio support: ``await fence`` waits on the fence's eventfd in the running loop."""

import asyncio
import os


async def wait(fence):
    """Waits for ``fence`` without blocking the event loop; raises its error if the job failed."""
    fd = fence.sync_fd()
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    try:
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            if not fence.done():
                await ready
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    fence.wait(0)  # raises accel.Error with the job's errno if it failed
