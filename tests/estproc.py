"""Test-side EST: a hub-mock with its EST server (`hub-mock init --est`), bootstrap certificates from
its bootstrap CA, and an `edgegate run` whose identity (and Edge CA) come from EST.

    with EstHub.start(tmp / "hub") as hub, EstGateway.start(tmp / "gw", hub, edge_ca=True) as gw:
        ...
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gateway.pki import CA, IssuedCert
from tests.gatewayproc import GATEWAY_ID, HOSTNAME, GatewayProcess
from tests.hubproc import HubProcess, run_cli


class EstHub(HubProcess):
    """A hub-mock process with `[est]`; `est_port` stays the same across `restart()`."""

    est_port = 0

    @classmethod
    def start_est(cls, directory: Path, *, hostname: str = "hub.local", basic: tuple[str, str] | None = None,
                  identity_lifetime: float | None = None, edge_ca_lifetime: float | None = None) -> EstHub:
        done = run_cli("init", "--dir", str(directory), "--hostname", hostname, "--api-port", "0",
                       "--admin-port", "0", "--est")
        if done.returncode != 0:
            raise RuntimeError(f"hub-mock init --est failed: {done.stderr}")
        toml = directory / "hub.toml"
        text = toml.read_text().replace("port = 8085", "port = 0")
        if identity_lifetime is not None:
            text = text.replace('identity_lifetime = "30d"', f"identity_lifetime = {identity_lifetime}")
        if edge_ca_lifetime is not None:
            text = text.replace('edge_ca_lifetime = "90d"', f"edge_ca_lifetime = {edge_ca_lifetime}")
        if basic is not None:
            text += f'username = "{basic[0]}"\npassword = "{basic[1]}"\n'
        toml.write_text(text)
        hub = cls(directory, hostname, None)
        hub._launch()
        return hub

    def _launch(self) -> None:
        super()._launch()
        ready = sorted(self.directory.glob("ready-*.json"), key=lambda p: p.stat().st_mtime)[-1]
        self.est_port = int(json.loads(ready.read_text())["est_port"])
        # A restart comes back on the same EST port, like the API port.
        toml = self.directory / "hub.toml"
        lines = toml.read_text().splitlines()
        start = lines.index(next(line for line in lines if line.startswith("[est]")))
        for index in range(start, len(lines)):
            if lines[index].startswith("port = "):
                lines[index] = f"port = {self.est_port}"
                break
        toml.write_text("\n".join(lines) + "\n")

    @property
    def est_url(self) -> str:
        return f"https://127.0.0.1:{self.est_port}/.well-known/est"

    @property
    def est_root(self) -> Path:
        return self.directory / "est-root.pem"

    def bootstrap_cert(self, name: str = GATEWAY_ID, *, days: int = 365) -> IssuedCert:
        """A bootstrap client certificate for `name`, from the hub's EST bootstrap CA."""
        ca = CA.load(self.directory / "est-bootstrap-ca.pem", self.directory / "est-bootstrap-ca.key")
        return ca.issue_identity_cert(name, days=days)

    def est_view(self) -> dict[str, Any]:
        return dict(self.admin.call("GET", "/admin/est"))

    def est_fault(self, action: str, value: int | None = None) -> dict[str, Any]:
        return dict(self.admin.call("POST", "/admin/est/faults", {"action": action, "value": value}))

    def est_policy(self, **lifetimes: float) -> dict[str, Any]:
        return dict(self.admin.call("POST", "/admin/est/policy", lifetimes))


def est_config(hub: EstHub, directory: Path, *, edge_ca: bool, bootstrap: IssuedCert | None = None,
               trusted: Path | None = None, renew: str = "", port: int = 0, state_dir: Path | None = None) -> str:
    """config.toml text for a gateway with only a bootstrap cert (and the EST Edge CA when `edge_ca`)."""
    directory.mkdir(parents=True, exist_ok=True)
    bootstrap = bootstrap or hub.bootstrap_cert()
    cert = bootstrap.cert_pem.write_to_path(directory / "bootstrap.pem")
    key = bootstrap.private_key_pem.write_to_path(directory / "bootstrap.key", private=True)
    edge = (f'[edge_ca]\nmethod = "est"\nurl = "{hub.est_url}/edge-ca"\n\n'
            '[edge_ca.auto_renew]\nrotate_key = true\nthreshold = "50%"\nretry = "5%"\n\n') if edge_ca else ""
    bundle = f'trust_bundle_cert = "{hub.est_root}"\n' if edge_ca else ""
    return (
        f'hostname = "{HOSTNAME}"\nalt_names = ["127.0.0.1"]\nstate_dir = "{state_dir or directory / "state"}"\n'
        f"{bundle}\n"
        f'[listener]\nbind = "127.0.0.1"\nport = {port}\n\n[limits]\nhandshake_timeout = 5\n\n'
        f'[hub]\nhostname = "{hub.hostname}"\nurl = "{hub.api_url}"\ngateway_id = "{GATEWAY_ID}"\n'
        f'trust_bundle_cert = "{hub.hub_root}"\n\n'
        f"{edge}"
        f'[cert_issuance.est]\ntrusted_certs = ["{trusted or hub.hub_root}"]\n\n'
        f'[cert_issuance.est.auth]\nbootstrap_identity_cert = "{cert}"\nbootstrap_identity_pk = "{key}"\n\n'
        f'[cert_issuance.est.urls]\ndefault = "{hub.est_url}"\n\n'
        f"[cert_issuance.est.identity_auto_renew]\n{renew}\n"
    )


class EstGateway(GatewayProcess):
    """`edgegate run` configured by `est_config`; registered in the hub by a thumbprint it never shows
    (the hub accepts its EST identity by CA, not by thumbprint)."""

    config_text = ""

    @classmethod
    def start_est(cls, directory: Path, hub: EstHub, *, edge_ca: bool = True, renew: str = "",
                  launch: bool = True) -> EstGateway:
        gw = cls(directory, hub)
        directory.mkdir(parents=True, exist_ok=True)
        if not any(g["gateway_id"] == GATEWAY_ID for g in hub.admin.gateways()):
            hub.admin.add_gateway(GATEWAY_ID, thumbprint="00" * 32)
        gw.config_text = est_config(hub, directory, edge_ca=edge_ca, renew=renew)
        gw.config_path.write_text(gw.config_text)
        if launch:
            gw._launch()
        return gw

    @property
    def root(self) -> Path:
        assert isinstance(self.hub, EstHub)
        return self.hub.est_root

    def est_status(self) -> dict[str, Any]:
        return dict(self.status().get("est") or {})  # type: ignore[arg-type]

    def wait_est(self, predicate: Any, timeout: float = 60, what: str = "EST status") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.est_status()
                if predicate(last):
                    return last
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{what} not reached; last {last}\n{self.log()[-4000:]}")
