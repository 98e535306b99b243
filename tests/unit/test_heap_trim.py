"""trim_heap gives the C heap's free pages back to the kernel: a real process, a real fragmented heap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.service.heap import can_trim

# In a fresh interpreter: 48 MiB of 1 KiB objects (over pymalloc's 512 bytes, so glibc's), every 64th kept
# and the last one too, so glibc cannot shrink its heap from the top. Prints RssAnon in KiB before and
# after trim_heap, and what it returned.
FRAGMENT = """
import sys
from gateway.service.heap import trim_heap
def anon():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon:'))
blocks = [bytes(1024) for _ in range(48 * 1024)]
kept = blocks[::64] + blocks[-1:]
del blocks
before = anon()
trimmed = trim_heap()
print(before, anon(), trimmed)
"""


@pytest.mark.skipif(not can_trim(), reason="no glibc malloc_trim in this C library")
def test_trim_gives_a_fragmented_heap_back_to_the_kernel() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True).stdout
    before, after, trimmed = out.split()
    assert trimmed == "True"
    assert int(before) - int(after) > 24 * 1024, out  # most of the 48 MiB freed in the middle of the heap


def test_trim_twice_in_a_row_returns_nothing_the_second_time() -> None:
    # False where there is no glibc, and False when the heap has nothing free left to give back.
    code = "from gateway.service.heap import trim_heap; trim_heap(); print(trim_heap())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
