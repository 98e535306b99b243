"""The `[est]` table of hub.toml (the EST server's CA, bootstrap CAs, lifetimes, optional Basic auth),
and the files `hub-mock init --est` creates for it. `hub_mock.config` calls `parse_est_table`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.config_checks import parse_duration
from gateway.errors import ConfigError
from gateway.pki import CA

DEFAULT_EST_PORT = 8085
DEFAULT_IDENTITY_LIFETIME = timedelta(days=30)
DEFAULT_EDGE_CA_LIFETIME = timedelta(days=90)
# A certificate shorter than this cannot even be renewed at 80 %; seconds-scale lifetimes are for drills.
MIN_LIFETIME = timedelta(seconds=5)
MAX_LIFETIME = timedelta(days=3650)
EST_ROOT_NAME = "edgegate hub-mock EST root"
EST_CA_NAME = "edgegate hub-mock EST CA"
BOOTSTRAP_CA_NAME = "edgegate hub-mock EST bootstrap CA"
CA_DAYS = 3650


@dataclass(frozen=True, slots=True, repr=False)
class EstServerConfig:
    port: int
    ca_cert: Path  # the issuing EST CA, then the certificates above it (root last)
    ca_key: Path
    root: Path  # the root of ca_cert: what devices and the hub trust for EST-issued certificates
    bootstrap_cas: tuple[Path, ...]  # a bootstrap client certificate must chain to one of these
    identity_lifetime: timedelta = DEFAULT_IDENTITY_LIFETIME
    edge_ca_lifetime: timedelta = DEFAULT_EDGE_CA_LIFETIME
    username: str | None = None  # HTTP Basic, required in addition to any client certificate when set
    password: str | None = field(default=None)

    def __repr__(self) -> str:
        return f"EstServerConfig(port={self.port}, ca_cert={self.ca_cert}, basic={'on' if self.username else 'off'})"


def _file(base: Path, value: object, key: str, file: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(file, key, "must be a file path", "run `hub-mock init --est` to create the EST files")
    path = (base / value).resolve()
    if not path.is_file():
        raise ConfigError(file, key, f"{path} does not exist", "run `hub-mock init --est` or fix the path")
    return path


def _lifetime(table: dict[str, Any], key: str, default: timedelta, file: str) -> timedelta:
    raw = table.get(key)
    if raw is None:
        return default
    try:
        value = timedelta(seconds=parse_duration(raw))
    except (TypeError, ValueError) as exc:
        raise ConfigError(file, f"est.{key}", f"{raw!r} is not a duration ({exc})", 'e.g. "30d", "12h" or 90') from None
    if not MIN_LIFETIME <= value <= MAX_LIFETIME:
        raise ConfigError(file, f"est.{key}", f"{raw!r} is outside 5s..3650d", 'e.g. "30d" (or "60s" for a drill)')
    return value


def parse_est_table(table: object, base: Path, file: str) -> EstServerConfig | None:
    """The [est] table, or None when hub.toml has none (no EST server)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(file, "est", "must be a table", "write it as [est]")
    port = table.get("port", DEFAULT_EST_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(file, "est.port", f"{port!r} is not a TCP port", "use 1-65535, or 0 for any free port")
    cas = table.get("bootstrap_cas", [])
    if not isinstance(cas, list):
        raise ConfigError(file, "est.bootstrap_cas", "must be a list of files", 'e.g. ["est-bootstrap-ca.pem"]')
    username, password = table.get("username") or None, table.get("password") or None
    if (username is None) != (password is None) or not isinstance(username or "", str) or not isinstance(
        password or "", str
    ):
        raise ConfigError(file, "est.username", "username and password go together (both strings, or neither)",
                          'set both, or remove both to turn HTTP Basic off')
    return EstServerConfig(
        port=port,
        ca_cert=_file(base, table.get("ca_cert"), "est.ca_cert", file),
        ca_key=_file(base, table.get("ca_key"), "est.ca_key", file),
        root=_file(base, table.get("root"), "est.root", file),
        bootstrap_cas=tuple(_file(base, item, "est.bootstrap_cas", file) for item in cas),
        identity_lifetime=_lifetime(table, "identity_lifetime", DEFAULT_IDENTITY_LIFETIME, file),
        edge_ca_lifetime=_lifetime(table, "edge_ca_lifetime", DEFAULT_EDGE_CA_LIFETIME, file),
        username=username,
        password=password,
    )


def init_est_files(directory: Path, *, now: datetime) -> str:
    """Create the EST root, the issuing EST CA and a bootstrap CA (with its key, to make bootstrap
    certificates); returns the `[est]` table text for hub.toml."""
    root = CA.create_root(EST_ROOT_NAME, days=CA_DAYS, path_length=2, now=now)
    issuing = root.create_child_ca(EST_CA_NAME, days=CA_DAYS, path_length=1, now=now)
    bootstrap = CA.create_root(BOOTSTRAP_CA_NAME, days=CA_DAYS, path_length=0, now=now)
    root.cert_pem.write_to_path(directory / "est-root.pem")
    issuing.private_key_pem.write_to_path(directory / "est-ca.key", private=True)
    (directory / "est-ca.pem").write_bytes(issuing.cert_pem.bytes + root.cert_pem.bytes)
    bootstrap.cert_pem.write_to_path(directory / "est-bootstrap-ca.pem")
    bootstrap.private_key_pem.write_to_path(directory / "est-bootstrap-ca.key", private=True)
    q = json.dumps
    return f"""
[est]        # the EST server (RFC 7030), HTTPS with the hub's server certificate
port = {DEFAULT_EST_PORT}
ca_cert = {q("est-ca.pem")}            # the issuing EST CA, then its root
ca_key = {q("est-ca.key")}
root = {q("est-root.pem")}             # devices and the hub trust this for EST-issued certificates
bootstrap_cas = [{q("est-bootstrap-ca.pem")}]   # bootstrap client certificates chain to these
identity_lifetime = "30d"
edge_ca_lifetime = "90d"
# username = "est"                     # HTTP Basic on top of the client certificate
# password = "..."
"""
