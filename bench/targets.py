"""The brokers under test, each a real process on 127.0.0.1 with the same certificates."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.pki import BenchPKI

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_ready(port: int, pki: BenchPKI, cert: Path, key: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki.root_path))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(cert), str(key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                ctx.wrap_socket(raw, server_hostname="edgegateway.local"):
            return True
    except OSError:
        return False


@dataclass
class Target(ABC):
    """A started broker: its port, its process (for RSS) and how long it took to listen."""

    name: str
    pki: BenchPKI
    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    startup_s: float = 0.0
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @abstractmethod
    def command(self) -> list[str]:
        """The broker's argv (called just before it starts, with `port` chosen)."""

    def prepare(self, device_ids: list[str]) -> None:
        """Register the devices the load will use (only edgegate has a registry)."""
        return

    def start(self) -> Target:
        self.port = free_port()
        probe_cert, probe_key = self.pki.device_files("probe-0")
        self.prepare_env()
        log = (self.workdir / f"{self.name}.log").open("wb")
        begin = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env=self.env())
        deadline = begin + 60
        while not tls_ready(self.port, self.pki, probe_cert, probe_key):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / f"{self.name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} did not start; its log ends:\n{tail}")
            time.sleep(0.01)
        self.startup_s = time.monotonic() - begin
        return self

    def prepare_env(self) -> None:
        """Anything to set up before the process starts."""
        return

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def rss(self) -> int:
        """Resident memory of the broker process (and its children), in bytes."""
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        return int(proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True)))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the broker process (and its children) so far."""
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        times = [proc.cpu_times(), *(c.cpu_times() for c in proc.children(recursive=True))]
        return sum(t.user + t.system for t in times)

    def stop(self) -> None:
        for proc in [self.proc, *self.extra]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


class MosquittoTarget(Target):
    def command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"cafile {self.pki.root_path}\ncertfile {self.pki.server_chain}\nkeyfile {self.pki.server_key}\n"
            "require_certificate true\nuse_identity_as_username true\nallow_anonymous true\n"
            "max_queued_messages 100000\nmax_inflight_messages 0\npersistence false\n"
            "log_type error\n"
            # As root, mosquitto drops to user "mosquitto", which cannot read our 0600 key.
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        return [binary, "-c", str(conf)]


class AmqttTarget(Target):
    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.amqtt_server", str(self.port), str(self.pki.server_chain),
                str(self.pki.server_key), str(self.pki.root_path)]


class MosquittoPersistTarget(MosquittoTarget):
    """Mosquitto with `persistence true` (its defaults otherwise: the in-memory state is saved to
    mosquitto.db every autosave_interval, 1800 s, and at shutdown; nothing is synced per message)."""

    def command(self) -> list[str]:
        argv = super().command()
        conf = self.workdir / "mosquitto.conf"
        store = self.workdir / "mosquitto-persist"
        store.mkdir(exist_ok=True)
        conf.write_text(conf.read_text().replace("persistence false\n",
                                                 f"persistence true\npersistence_location {store}/\n"))
        return argv
