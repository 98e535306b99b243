"""`hub-mock init`: a hub directory with hub.toml, the hub's own root and its server certificate.

The hub root plays Baltimore CyberTrust's role for IoT Hub: gateways trust it for the hub's server
cert, and it is separate from any gateway's root. Its private key is not kept: it signs the server
cert once, here, and a new hub directory is the way to a new one.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from gateway.pki import CA, load_certs
from hub_mock.config import DEFAULT_ADMIN_PORT, DEFAULT_API_PORT, DEFAULT_STORAGE_URL, render_config
from hub_mock.est_config import init_est_files

HUB_ROOT_NAME = "edgegate hub-mock root"
SERVER_CERT_DAYS = 365


def init_hub_dir(
    directory: Path,
    hostname: str,
    *,
    gateway_cas: list[Path],
    now: datetime,
    api_port: int = DEFAULT_API_PORT,
    admin_port: int = DEFAULT_ADMIN_PORT,
    admin_token: str = "",
    storage_url: str = DEFAULT_STORAGE_URL,
    force: bool = False,
    est: bool = False,
) -> Path:
    """Create `directory`/hub.toml and the hub's certificates; the path of the hub root cert."""
    config_path = directory / "hub.toml"
    if config_path.exists() and not force:
        raise FileExistsError(
            f"{config_path} exists; pass --force to replace the hub's config and certificates"
        )
    for path in gateway_cas:
        load_certs(path)  # PKIError naming the file when it is not a PEM bundle
    directory.mkdir(parents=True, exist_ok=True)
    ca_names = []
    for index, path in enumerate(gateway_cas, start=1):
        name = f"gateway-ca-{index}.pem"
        shutil.copyfile(path, directory / name)
        ca_names.append(name)
    root = CA.create_root(HUB_ROOT_NAME, now=now)
    server = root.issue_server_cert(hostname, "localhost", "127.0.0.1", days=SERVER_CERT_DAYS, now=now)
    root.cert_pem.write_to_path(directory / "hub-root.pem")
    server.fullchain_pem().write_to_path(directory / "server.pem")
    server.private_key_pem.write_to_path(directory / "server.key", private=True)
    text = render_config(
        hostname=hostname,
        gateway_cas=ca_names,
        api_port=api_port,
        admin_port=admin_port,
        admin_token=admin_token,
        storage_url=storage_url,
    )
    if est:
        text += init_est_files(directory, now=now)
    # With an admin token the file holds a secret: owner-only from the first byte.
    mode = 0o600 if admin_token else 0o644
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # --force over an existing file keeps its old mode otherwise
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return directory / "hub-root.pem"
