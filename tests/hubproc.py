"""Test-side handle on a real `hub-mock run` process: a fresh hub directory, free ports, an admin client.

    with HubProcess.start(tmp_path) as hub:
        hub.admin.add_gateway("gw1", cert_pem=identity.cert_pem.bytes.decode())
        ctx = hub.client_context(identity_cert_path, identity_key_path)   # trusts the hub root only
        # dial https://127.0.0.1:{hub.api_port} with server_hostname=hub.hostname (or the IP itself)

`stop()` sends SIGTERM and returns the exit status; `restart()` brings the same hub (same directory,
same ports, same registry) back, for tests of a hub that goes away and returns.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from hub_mock.adminclient import AdminClient

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 15.0


def hub_mock_command(*args: str) -> list[str]:
    """The argv of the `hub-mock` command from this checkout (`python -m hub_mock ...`)."""
    return [sys.executable, "-m", "hub_mock", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run one `hub-mock` verb to completion; stdout, stderr and returncode are in the result."""
    return subprocess.run(
        hub_mock_command(*args),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class HubProcess:
    """A running `hub-mock run`; use `HubProcess.start(...)` (also a context manager that stops it)."""

    def __init__(self, directory: Path, hostname: str, admin_token: str | None) -> None:
        self.directory = directory
        self.hostname = hostname
        self.config_path = directory / "hub.toml"
        self.hub_root = directory / "hub-root.pem"
        self.admin_token = admin_token
        self.api_port = 0
        self.admin_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = AdminClient("http://127.0.0.1:0", admin_token)

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        hostname: str = "hub.local",
        gateway_cas: Sequence[Path] = (),
        admin_token: str | None = None,
        storage_url: str | None = None,
    ) -> HubProcess:
        """`hub-mock init` into `directory`, then `hub-mock run` on free ports; returns once it is ready."""
        args = [
            "init",
            "--dir",
            str(directory),
            "--hostname",
            hostname,
            "--api-port",
            "0",
            "--admin-port",
            "0",
        ]
        for path in gateway_cas:
            args += ["--gateway-ca", str(path)]
        if admin_token:
            args += ["--admin-token", admin_token]
        if storage_url:
            args += ["--storage-url", storage_url]
        done = run_cli(*args)
        if done.returncode != 0:
            raise RuntimeError(f"hub-mock init failed ({done.returncode}): {done.stderr.strip()}")
        hub = cls(directory, hostname, admin_token)
        hub._launch()
        return hub

    def _launch(self) -> None:
        ready = self.directory / f"ready-{time.monotonic_ns()}.json"
        self.log_path = self.directory / "hub-mock.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                hub_mock_command(
                    "run",
                    "-c",
                    str(self.config_path),
                    "--port",
                    str(self.api_port),
                    "--admin-port",
                    str(self.admin_port),
                    "--ready-file",
                    str(ready),
                ),
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub-mock run did not become ready:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.api_port, self.admin_port = info["api_port"], info["admin_port"]
        self.admin = AdminClient(info["admin_url"], self.admin_token)

    @property
    def api_url(self) -> str:
        """The API base URL by IP; `server_hostname=hub.hostname` checks the name, else the IP SAN."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def client_context(self, cert_path: Path, key_path: Path, *, root: Path | None = None) -> ssl.SSLContext:
        """A gateway's mutual-TLS context: presents the identity cert, verifies the hub against `root`
        (default: this hub's root) and its host name."""
        ctx = ssl.create_default_context(cafile=str(root or self.hub_root))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert_path), str(key_path))
        return ctx

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a `hub-mock` admin verb against this hub (via `-c hub.toml` + its actual admin URL)."""
        return run_cli(
            *args, env={"HUB_MOCK_ADMIN_URL": self.admin_url, "HUB_MOCK_ADMIN_TOKEN": self.admin_token or ""}
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; the exit status (killed after `timeout`: -9)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def restart(self) -> None:
        """Stop and start again: same directory, same registry, same ports."""
        self.stop()
        self._launch()

    def __enter__(self) -> HubProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
