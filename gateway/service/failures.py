"""Operational failures at start (a port in use, no descriptors left, a state dir that cannot be written)
as one line that says what to do, instead of a traceback (pure: takes the exception and the config)."""

from __future__ import annotations

import errno

from gateway.config import Config


def operational_sentence(exc: OSError, config: Config) -> str:
    """One line for an OSError that stopped the gateway from starting."""
    where = f"{config.listener.bind}:{config.listener.port}"
    path = f" {exc.filename}" if exc.filename else ""
    code = exc.errno
    if code == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the address is in use (another edgegate, or Mosquitto on 8883?); "
                f"stop it, or set [listener] port in {config.source}")
    if code == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no interface has that address; fix [listener] bind in {config.source}"
    if code == errno.EACCES and not exc.filename:
        return (f"cannot listen on {where}: permission denied; ports below 1024 need CAP_NET_BIND_SERVICE "
                "(the packaged unit grants it) or a port >= 1024")
    if code in (errno.EMFILE, errno.ENFILE):
        return ("out of file descriptors (too many open files); raise LimitNOFILE= in the unit "
                "or `ulimit -n`, or lower [limits] max_connections")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write{path}: {exc.strerror}; state_dir {config.state_dir} must be writable by the "
                f"gateway's user (chown -R edgegate: {config.state_dir}; the unit lists it in ReadWritePaths=)")
    if code == errno.ENOSPC:
        return f"no space left on the device holding{path or ' ' + str(config.state_dir)}; free some space"
    return f"{exc.strerror or exc}{path}"
