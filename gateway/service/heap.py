"""Give the C heap's free memory back to the kernel (glibc's malloc_trim), so a memory limit counts what
the gateway holds, not what it once held.

OpenSSL, uvloop and every Python object over 512 bytes live in glibc's heap. A connect storm frees tens
of KiB per handshake between long-lived allocations, and glibc keeps those holes: with 5,000 devices
connected in 256 MiB (bench.fleet_bench --memory-max 256M --cpus 1, December 7) the heap held 95 MiB
for 77 MiB in use, and malloc_trim(0) gave 13-15 MiB back at once, 5-6 % of the limit that the cgroup
otherwise counts until the process dies. glibc trims only the top of its heap on its own.

The gateway trims every TRIM_EVERY seconds from a worker thread: ctypes lets go of the GIL, so the event
loop runs while the heap is walked. Where the C library is not glibc (musl, say) there is nothing to
call and nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger("edgegate.service")

TRIM_EVERY = 30.0


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def can_trim() -> bool:
    return _malloc_trim() is not None


def trim_heap() -> bool:
    """Return the C heap's free pages to the kernel; True if any were (False also where there is no glibc)."""
    trim = _malloc_trim()
    return trim is not None and trim(0) == 1
