"""Reading (and raising) the limits the process runs under: RLIMIT_NOFILE and the cgroup memory limit.

The parsers are pure and take file contents; `read_resources` does the reading.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from gateway.service.budget import UNLIMITED_MEMORY, Resources

CGROUP_ROOT = Path("/sys/fs/cgroup")


def raise_open_files() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (what systemd's LimitNOFILE= or `ulimit -Hn` allows);
    returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def cgroup_paths(proc_self_cgroup: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory controller path) from the text of /proc/self/cgroup."""
    v2 = v1 = None
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def parse_limit(text: str) -> int | None:
    """A memory.max / memory.limit_in_bytes value in bytes; None for "max", huge values or garbage."""
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return None if value >= UNLIMITED_MEMORY else value


def tightest_limit(path: str, read: Callable[[PurePosixPath], str | None]) -> int | None:
    """The smallest limit on `path` and its ancestors (a parent's limit binds its children too)."""
    found = tightest_cgroup(path, read)
    return found[0] if found else None


def tightest_cgroup(path: str, read: Callable[[PurePosixPath], str | None]) -> tuple[int, PurePosixPath] | None:
    """The smallest limit on `path` and its ancestors, and the cgroup that sets it (the nearest of equals)."""
    found: tuple[int, PurePosixPath] | None = None
    current = PurePosixPath(path)
    while True:
        text = read(current)
        limit = parse_limit(text) if text is not None else None
        if limit is not None and (found is None or limit < found[0]):
            found = (limit, current)
        if current == current.parent:
            break
        current = current.parent
    return found


def _reader(base: Path, name: str) -> Callable[[PurePosixPath], str | None]:
    def read(path: PurePosixPath) -> str | None:
        try:
            return (base / str(path).lstrip("/") / name).read_text()
        except OSError:
            return None
    return read


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc: Path = Path("/proc/self/cgroup")
                        ) -> tuple[int | None, str, Path | None]:
    """The memory limit of this process's cgroup (v2 first, then v1), where it came from, and (v2) the
    directory of the cgroup that sets it."""
    try:
        v2, v1 = cgroup_paths(proc.read_text())
    except OSError:
        return None, "none", None
    if v2 is not None and (root / "cgroup.controllers").exists():
        found = tightest_cgroup(v2, _reader(root, "memory.max"))
        if found is not None:
            return found[0], "cgroup v2 memory.max", root / str(found[1]).lstrip("/")
    if v1 is not None:
        limit = tightest_limit(v1, _reader(root / "memory", "memory.limit_in_bytes"))
        if limit is not None:
            return limit, "cgroup v1 memory.limit_in_bytes", None
    return None, "none", None


def read_resources(configured_memory: int | None) -> Resources:
    """The open-files limit in force now and the memory budget: the smaller of the cgroup's and the
    configured `[limits] memory`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit, source, cgroup = cgroup_memory_limit()
    if configured_memory is not None and (limit is None or configured_memory < limit):
        limit, source, cgroup = configured_memory, "[limits] memory", None
    return Resources(open_files=int(soft), memory=limit, memory_source=source, memory_cgroup=cgroup)
