"""edgegate under benchmark: a real `edgegate run` with a real hub-mock behind it, using the same
certificates as the other brokers (its Edge CA issues the server cert; devices are CA-authenticated)."""

from __future__ import annotations

import json
import shutil
import sys
import time

from sqlalchemy import insert

from bench.targets import Target
from gateway.pki import self_signed_device_cert
from hub_mock.config import load_config as load_hub_config
from hub_mock.db import Base as HubBase
from hub_mock.db import make_engine as make_hub_engine
from hub_mock.registry import ChangeRow, DeviceRow
from tests.hubproc import HubProcess

GATEWAY = "bench-gw"


class EdgegateTarget(Target):
    devices: int = 0
    hub: HubProcess | None = None
    durability = "fsync"  # [outbox] durability

    def prepare(self, device_ids: list[str]) -> None:
        self.devices = len(device_ids)
        hub_dir = self.workdir / "hub"
        shutil.rmtree(hub_dir, ignore_errors=True)
        hub = HubProcess.start(hub_dir)
        identity = self_signed_device_cert(GATEWAY)
        self.identity = identity.cert_pem.write_to_path(self.workdir / "gw-identity.pem")
        self.identity_key = identity.private_key_pem.write_to_path(self.workdir / "gw-identity.key", private=True)
        hub.admin.add_gateway(GATEWAY, cert_pem=identity.cert_pem.bytes.decode())
        hub.admin.add_ca("bench-device-ca", self.pki.device_ca.cert_pem.bytes.decode())
        hub.stop()
        _seed(hub, device_ids)
        hub.restart()
        self.hub = hub

    def prepare_env(self) -> None:
        assert self.hub is not None
        state = self.workdir / "gw-state"
        shutil.rmtree(state, ignore_errors=True)
        self.config = self.workdir / "edgegate.toml"
        self.config.write_text(
            f'hostname = "edgegateway.local"\nalt_names = ["127.0.0.1"]\ntrust_bundle_cert = "{self.pki.root_path}"\n'
            f'state_dir = "{state}"\n\n[edge_ca]\ncert = "{self.pki.edge_ca_chain}"\npk = "{self.pki.edge_ca_key}"\n\n'
            f'[listener]\nbind = "127.0.0.1"\nport = {self.port}\n\n[limits]\nmax_connections = 20000\n\n'
            f'[hub]\nhostname = "{self.hub.hostname}"\nurl = "{self.hub.api_url}"\ngateway_id = "{GATEWAY}"\n'
            f'identity_cert = "{self.identity}"\nidentity_pk = "{self.identity_key}"\n'
            f'trust_bundle_cert = "{self.hub.hub_root}"\n\n[outbox]\ndurability = "{self.durability}"\n'
        )
        self.state = state

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway.cli.main", "run", "-c", str(self.config), "--log-level", "WARNING"]

    def start(self) -> Target:
        super().start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # serve only once the whole scope is cached
            try:
                sync = json.loads((self.state / "status.json").read_text()).get("sync", {})
                if sync.get("state") == "online" and sync.get("cached_devices", 0) >= self.devices:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError("edgegate did not sync its device scope")

    def stop(self) -> None:
        super().stop()
        if self.hub is not None:
            self.hub.stop()


def _seed(hub: HubProcess, device_ids: list[str]) -> None:
    """CA-authenticated devices in the stopped hub's database (thousands of admin calls would dominate)."""
    engine = make_hub_engine(load_hub_config(hub.config_path).storage_url)
    HubBase.metadata.create_all(engine)
    first = 1_000_000
    with engine.begin() as conn:
        conn.execute(insert(ChangeRow), [
            {"seq": first + n, "kind": "device", "subject": d, "op": "upsert", "old_parent": None,
             "new_parent": GATEWAY} for n, d in enumerate(device_ids)])
        conn.execute(insert(DeviceRow), [
            {"device_id": d, "status": "enabled", "auth_type": "certificateAuthority", "primary_thumbprint": None,
             "secondary_thumbprint": None, "parent": GATEWAY, "generation": first + n}
            for n, d in enumerate(device_ids)])
    engine.dispose()




class EdgegateProcessTarget(EdgegateTarget):
    """edgegate with `[outbox] durability = "process"`: no fdatasync; survives a crash, not a power cut."""

    durability = "process"
