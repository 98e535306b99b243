"""Test-side handle on a real `edgegate run` process wired to a real hub-mock process.

    with HubProcess.start(tmp / "hub") as hub, GatewayProcess.start(tmp / "gw", hub) as gw:
        gw.register_self_signed("sensor-1")       # in the hub; the gateway syncs it
        ... connect devices to 127.0.0.1:gw.port with gw.root as CA file ...

`kill()` is kill -9; `restart()` starts the same gateway again (same state directory, same port).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from gateway.pki import CA, IssuedCert, self_signed_device_cert
from tests.hubproc import REPO, HubProcess

GATEWAY_ID = "edge-gw-1"
HOSTNAME = "edgegateway.local"


class GatewayProcess:
    def __init__(self, directory: Path, hub: HubProcess | None, hub_url: str | None = None) -> None:
        self.directory, self.hub = directory, hub
        self.hub_url = hub_url
        self.config_path = directory / "config.toml"
        self.state_dir = directory / "state"
        self.log_path = directory / "gateway.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.identity: IssuedCert | None = None
        self.env: dict[str, str] = {}  # added to the process environment (e.g. tests/faketime.py)

    @classmethod
    def start(cls, directory: Path, hub: HubProcess | None, *, hub_url: str | None = None,
              extra: str = "", port: int = 0, env: dict[str, str] | None = None) -> GatewayProcess:
        gw = cls(directory, hub, hub_url)
        gw.env = dict(env or {})
        directory.mkdir(parents=True, exist_ok=True)
        gw._write_config(extra, port)
        gw._launch()
        return gw

    def _write_config(self, extra: str, port: int) -> None:
        hub_section = ""
        if self.hub is not None:
            identity_ca = CA.create_root("Gateway Identity Issuer")
            self.identity = identity_ca.issue_identity_cert(GATEWAY_ID)
            cert = self.identity.cert_pem.write_to_path(self.directory / "identity.pem")
            key = self.identity.private_key_pem.write_to_path(self.directory / "identity.key", private=True)
            self.hub.admin.add_gateway(GATEWAY_ID, cert_pem=self.identity.cert_pem.bytes.decode())
            url = self.hub_url or self.hub.api_url
            hub_section = (
                f'[hub]\nhostname = "{self.hub.hostname}"\nurl = "{url}"\ngateway_id = "{GATEWAY_ID}"\n'
                f'identity_cert = "{cert}"\nidentity_pk = "{key}"\ntrust_bundle_cert = "{self.hub.hub_root}"\n'
            )
        self.config_path.write_text(
            f'hostname = "{HOSTNAME}"\nalt_names = ["127.0.0.1"]\nstate_dir = "{self.state_dir}"\n\n'
            f'[listener]\nbind = "127.0.0.1"\nport = {port}\n\n'
            f'[limits]\nhandshake_timeout = 5\n\n{hub_section}\n{extra}'
        )

    def _launch(self) -> None:
        ready = self.directory / "ready.json"
        ready.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "run", "-c", str(self.config_path), "--ready-file",
             str(ready), "--log-level", "DEBUG"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edgegate run did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        self.port = int(json.loads(ready.read_text())["port"])
        # A restart must come back on the same port, as a real gateway does: devices reconnect there.
        self.config_path.write_text(self.config_path.read_text().replace("port = 0\n", f"port = {self.port}\n", 1))

    def wait_synced(self, timeout: float = 20) -> None:
        """Until status.json says the hub is online (the first full sync is done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status().get("sync", {}).get("state") == "online":  # type: ignore[union-attr]
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"the gateway did not sync with the hub:\n{self.log()[-3000:]}")

    @property
    def root(self) -> Path:
        """The trust bundle children use (the quickstart root)."""
        return self.state_dir / "pki" / "quickstart-root.pem"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, object]:
        return dict(json.loads((self.state_dir / "status.json").read_text()))

    def wait_log(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the gateway log:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def register_self_signed(self, device_id: str, *, wait: bool = True) -> IssuedCert:
        """A self-signed device cert, registered in the hub under this gateway; waits until it is cached."""
        assert self.hub is not None
        cert = self_signed_device_cert(device_id)
        self.hub.admin.add_device(device_id, parent=GATEWAY_ID, thumbprint=cert.thumbprint_sha256)
        return cert

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)

    def restart(self) -> None:
        self._launch()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()



