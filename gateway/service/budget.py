"""How many device connections fit in the descriptors and the memory the gateway is given (pure).

Two things run out before `max_connections` does on a small machine: open files (every device is a
socket) and memory (every idle authenticated TLS device costs tens of KiB). The budget keeps a reserve
of both for what must never starve: the hub link, the database, the status file, the health endpoint.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024

# Descriptors that are not device sockets: the listening sockets, epoll, the hub link's HTTP pool
# (forwarder, sync, cloud-to-device), SQLite's database, -wal and -shm files for two engines, the status
# file's temporary, the health endpoint and its clients, stdio, and the sockets the event loop has
# accepted in one batch but not yet refused (asyncio and uvloop accept up to the listen backlog's worth
# before `connection_made` can refuse them). 128 covers that with room; 5 % scales it for big limits.
FD_RESERVE_MIN = 128
FD_RESERVE_FRACTION = 0.05
# An idle gateway with its cache loaded: 80 MiB measured with 10,021 cached devices (`python -m bench
# --only-memory`, December 2026), 71-73 MiB with a small cache.
MEMORY_BASELINE = 80 * MIB
# One idle authenticated TLS 1.3 device once its handshake is over: 23.1 KiB measured at 10,000 (`python -m
# bench --only-memory`, December 7: ~6 KiB for the traffic keys of gateway.tls.record13, ~17 KiB amqtt's
# session and the front door), rounded up.
MEMORY_PER_CONNECTION = 24 * 1024
# A connection OpenSSL holds: every connection while its handshake runs, and a TLS 1.2 device for its life
# (50 KiB measured at 10,000 on December 4, when every device stayed with OpenSSL), rounded up. The front
# door charges this much at accept and gives the difference back when a TLS 1.3 connection leaves OpenSSL,
# so a fleet of TLS 1.2 devices fills the same memory with fewer connections instead of overrunning it.
MEMORY_PER_OPENSSL_CONNECTION = 54 * 1024
# Kept free for the outbox's in-memory batches, the cache, sync pages and reconnect bursts.
MEMORY_MARGIN_FRACTION = 0.2
# A memory limit at or above this is "no limit" (cgroup v1 writes 2**63 rounded to a page).
UNLIMITED_MEMORY = 1 << 60


class Limiter(enum.Enum):
    """What decided the effective max_connections."""

    CONFIGURED = "configured"
    OPEN_FILES = "open_files"
    MEMORY = "memory"


@dataclass(frozen=True, slots=True)
class Resources:
    """What the process may use: its open-files limit and its memory limit (None: no limit)."""

    open_files: int
    memory: int | None = None
    memory_source: str = "none"  # "cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes", "[limits] memory"
    # The cgroup v2 directory whose memory.max is `memory`: the memory guard measures that cgroup's usage,
    # sockets and kernel memory included, as its OOM killer does (gateway.service.memory_guard).
    memory_cgroup: Path | None = None


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    """The effective max_connections and how it was reached."""

    max_connections: int
    configured: int
    by_open_files: int
    by_memory: int | None
    limiter: Limiter
    resources: Resources
    connection_memory: int | None = None  # bytes the device connections may be charged together


    @property
    def capped(self) -> bool:
        return self.limiter is not Limiter.CONFIGURED

    def sentence(self) -> str:
        """One line for the log and `edgegate check`: the figures and, when capped, what to change."""
        res = self.resources
        memory = "no memory limit" if res.memory is None else f"{res.memory // MIB} MiB memory ({res.memory_source})"
        tls12 = "" if self.connection_memory is None else \
            f" ({self.connection_memory // MEMORY_PER_OPENSSL_CONNECTION} if they speak TLS 1.2)"
        figures = (f"{res.open_files} open files allow {self.by_open_files} devices; " + memory +
                   ("" if self.by_memory is None else f" allows {self.by_memory}{tls12}"))
        if self.limiter is Limiter.CONFIGURED:
            return f"max_connections {self.configured} fits: {figures}"
        if self.limiter is Limiter.OPEN_FILES:
            fix = "raise LimitNOFILE= in the unit (or `ulimit -n` / the hard nofile limit)"
        else:
            fix = "raise MemoryMax= (or [limits] memory) if the machine has the memory"
        return (f"max_connections capped from {self.configured} to {self.max_connections} by {self.limiter.value}: "
                f"{figures}; to admit more, {fix}")


def fd_reserve(open_files: int) -> int:
    return max(FD_RESERVE_MIN, int(open_files * FD_RESERVE_FRACTION))


def connections_for_open_files(open_files: int) -> int:
    return max(0, open_files - fd_reserve(open_files))


def memory_for_connections(memory: int | None) -> int | None:
    """The bytes device connections may hold: the limit less the margin and the idle gateway (None: no limit)."""
    if memory is None or memory >= UNLIMITED_MEMORY:
        return None
    return max(0, int(memory * (1 - MEMORY_MARGIN_FRACTION) - MEMORY_BASELINE))


def connections_for_memory(memory: int | None) -> int | None:
    """How many settled connections fit, leaving the last one room for OpenSSL during its handshake."""
    usable = memory_for_connections(memory)
    if usable is None:
        return None
    return max(0, usable - (MEMORY_PER_OPENSSL_CONNECTION - MEMORY_PER_CONNECTION)) // MEMORY_PER_CONNECTION


def connection_budget(configured: int, resources: Resources) -> ConnectionBudget:
    """The smallest of the configured maximum and what the descriptors and memory allow (at least 1:
    a gateway that admits nobody is a configuration error the sentence explains, not a crash)."""
    by_fds = connections_for_open_files(resources.open_files)
    by_memory = connections_for_memory(resources.memory)
    effective, limiter = configured, Limiter.CONFIGURED
    if by_fds < effective:
        effective, limiter = by_fds, Limiter.OPEN_FILES
    if by_memory is not None and by_memory < effective:
        effective, limiter = by_memory, Limiter.MEMORY
    return ConnectionBudget(max(1, effective), configured, by_fds, by_memory, limiter, resources,
                            memory_for_connections(resources.memory))
