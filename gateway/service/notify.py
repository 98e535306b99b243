"""The sd_notify protocol (sd_notify(3)) without libsystemd: datagrams to $NOTIFY_SOCKET.

READY=1 once devices can connect, STATUS=... for `systemctl status`, WATCHDOG=1 while the event loop
is alive (systemd kills and restarts a gateway whose loop stops turning), STOPPING=1 on the way out,
RELOADING=1 around a SIGHUP reload. Without NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("edgegate.notify")


def watchdog_interval(environ: dict[str, str] | os._Environ[str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=, as sd_watchdog_enabled(3) advises), or None."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(pid)):
        return None
    return int(usec) / 2_000_000


def socket_address(value: str) -> str | bytes | None:
    """The AF_UNIX address NOTIFY_SOCKET names: a path, or an abstract name written with a leading "@"."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value if value.startswith("/") else None


class Notifier:
    """Sends sd_notify messages; failures are logged once and never stop the gateway."""

    def __init__(self, environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
        self.address = socket_address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog = watchdog_interval(environ, os.getpid())
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc)
                self._warned = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def ping(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def reloaded(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
