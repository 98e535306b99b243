"""A wrong clock for one real process: libfaketime (Debian's `faketime`) preloaded, its offset read
from a file the test rewrites while the process runs ("NTP corrects the clock").

    clock = FakeClock(tmp_path / "faketime", "-40d")
    GatewayProcess.start(..., env=clock.env())   # its wall clock is 40 days behind; monotonic is real
    clock.set("+0")                               # within FAKETIME_CACHE_DURATION s it reads the real time
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

# libfaketimeMT: the thread-safe build (the gateway runs database threads beside its event loop).
_LIBRARY_GLOBS = ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1")


def library() -> str:
    for pattern in _LIBRARY_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError("libfaketime is not installed: apt-get install faketime (listed in .ci/sysdeps)")


class FakeClock:
    def __init__(self, path: Path, offset: str) -> None:
        self.path = path
        self.set(offset)

    def set(self, offset: str) -> None:
        """An offset from the real time, libfaketime's relative form: "-40d", "+40d", "-730d", "+0"."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        os.replace(tmp, self.path)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": library(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            # Re-read the file every second: a correction takes effect while the process runs.
            "FAKETIME_CACHE_DURATION": "1",
            # asyncio's timers and the clock watch's step detection need the real monotonic clock.
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
