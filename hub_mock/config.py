"""hub.toml, parsed and checked once into a HubConfig; nothing else in hub_mock reads TOML.

Relative paths (certificates, the SQLite file in `sqlite:///registry.db`) are relative to hub.toml.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.errors import ConfigError
from hub_mock.est_config import EstServerConfig, parse_est_table

DEFAULT_API_PORT = 8443
DEFAULT_ADMIN_PORT = 8444
# The admin API is plain HTTP with at most a bearer token: it never leaves the machine.
ADMIN_HOST = "127.0.0.1"
DEFAULT_STORAGE_URL = "sqlite:///registry.db"


@dataclass(frozen=True, slots=True)
class HubConfig:
    path: Path
    hostname: str
    api_host: str
    api_port: int
    admin_port: int
    admin_token: str | None
    hub_root: Path  # the root gateways must trust for the hub's server cert
    server_cert: Path  # server cert chain (leaf first)
    server_key: Path
    gateway_cas: tuple[Path, ...]  # CA files a gateway identity cert may chain to, besides registered CAs
    storage_url: str
    est: EstServerConfig | None = None  # [est]: the EST server, off when absent

    @property
    def admin_url(self) -> str:
        return f"http://{ADMIN_HOST}:{self.admin_port}"


def _table(data: dict[str, Any], key: str, file: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(file, key, "must be a table", f"write it as [{key}]")
    return value


def _port(table: dict[str, Any], key: str, default: int, file: str) -> int:
    value = table.get(key.split(".")[-1], default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigError(file, key, f"{value!r} is not a TCP port", "use 1-65535, or 0 for any free port")
    return value


def _file(base: Path, value: object, key: str, file: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(file, key, "must be a file path", "run `hub-mock init` to create the files")
    path = (base / value).resolve()
    if not path.is_file():
        raise ConfigError(file, key, f"{path} does not exist", "run `hub-mock init` or fix the path")
    return path


def _storage_url(base: Path, value: object, file: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(file, "storage.url", "must be a database URL", f'e.g. "{DEFAULT_STORAGE_URL}"')
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ConfigError(
            file,
            "storage.url",
            f"{value!r} is not a database URL",
            "sqlite:///FILE or postgresql+psycopg2://...",
        ) from exc
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str((base / url.database).resolve()))
    return url.render_as_string(hide_password=False)


def load_config(path: Path) -> HubConfig:
    """Read and check hub.toml; ConfigError names the file, the key and the fix."""
    file = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(file, "-", "no such file", "create it with `hub-mock init --dir DIR`") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "-", f"not valid TOML: {exc}") from exc
    base = path.resolve().parent
    hostname = data.get("hostname")
    if not isinstance(hostname, str) or not hostname:
        raise ConfigError(file, "hostname", "must be the hub's host name", 'e.g. hostname = "hub.local"')
    api, admin, tls, storage = (_table(data, key, file) for key in ("api", "admin", "tls", "storage"))
    token = admin.get("token", "")
    if not isinstance(token, str):
        raise ConfigError(file, "admin.token", "must be a string", 'token = "" turns the check off')
    api_host = api.get("host", "127.0.0.1")
    if not isinstance(api_host, str):
        raise ConfigError(file, "api.host", "must be an address to listen on", 'e.g. "0.0.0.0"')
    cas = tls.get("gateway_cas", [])
    if not isinstance(cas, list):
        raise ConfigError(file, "tls.gateway_cas", "must be a list of files", 'e.g. ["gateway-ca-1.pem"]')
    return HubConfig(
        path=path.resolve(),
        hostname=hostname,
        api_host=api_host,
        api_port=_port(api, "api.port", DEFAULT_API_PORT, file),
        admin_port=_port(admin, "admin.port", DEFAULT_ADMIN_PORT, file),
        admin_token=token or None,
        hub_root=_file(base, tls.get("hub_root"), "tls.hub_root", file),
        server_cert=_file(base, tls.get("server_cert"), "tls.server_cert", file),
        server_key=_file(base, tls.get("server_key"), "tls.server_key", file),
        gateway_cas=tuple(_file(base, item, "tls.gateway_cas", file) for item in cas),
        storage_url=_storage_url(base, storage.get("url", DEFAULT_STORAGE_URL), file),
        est=parse_est_table(data.get("est"), base, file),
    )


def render_config(
    *,
    hostname: str,
    gateway_cas: list[str],
    api_port: int = DEFAULT_API_PORT,
    admin_port: int = DEFAULT_ADMIN_PORT,
    admin_token: str = "",
    storage_url: str = DEFAULT_STORAGE_URL,
) -> str:
    """The text of a fresh hub.toml (file names relative to it, as `hub-mock init` writes them)."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    return f"""\
# hub-mock: the IoT Hub stand-in. Relative paths are relative to this file.
hostname = {q(hostname)}

[api]        # gateway-facing HTTPS, mutual TLS
host = "127.0.0.1"
port = {api_port}

[admin]      # plain HTTP, always bound to 127.0.0.1
port = {admin_port}
token = {q(admin_token)}   # non-empty: every admin call needs "Authorization: Bearer <token>"

[tls]
hub_root = "hub-root.pem"          # gateways trust this root for the hub's server cert
server_cert = "server.pem"
server_key = "server.key"
gateway_cas = [{", ".join(q(name) for name in gateway_cas)}]   # identity certs may chain to these

[storage]
url = {q(storage_url)}   # or postgresql+psycopg2://user:pass@host/db
"""
