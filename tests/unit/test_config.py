"""config.toml: good configs parse into the right values and defaults; every bad input raises a
ConfigError naming the dotted key and saying what is wrong."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import (
    KNOWN_KEYS,
    AutoRenewConfig,
    EdgeCAConfig,
    ListenerConfig,
    load_config,
    parse_config,
    validate_hostname,
)
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
HOST = 'hostname = "edgegateway.local"\n'

# ---- test PKI (cryptography directly: the PKI module is built separately) -----------------------


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, password: bytes | None = None) -> None:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


@dataclass
class Pki:
    """Files under <tmp>/certs, named as in the configs below."""

    dir: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    certs = tmp_path / "certs"
    certs.mkdir()
    root_key, edge_key, identity_key, hub_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = _cert("test root", root_key, None, None, ca=True)
    edge_ca = _cert("test edge ca", edge_key, root, root_key, ca=True)
    identity = _cert("edgegateway", identity_key, root, root_key, ca=False)
    hub_root = _cert("hub root", hub_key, None, None, ca=True)
    (certs / "root.pem").write_bytes(_pem(root))
    (certs / "edge-ca.pem").write_bytes(_pem(edge_ca, root))  # a full chain
    (certs / "edge-ca-reversed.pem").write_bytes(_pem(root, edge_ca))
    (certs / "identity.pem").write_bytes(_pem(identity))
    (certs / "hub-root.pem").write_bytes(_pem(hub_root))
    (certs / "root.der").write_bytes(root.public_bytes(serialization.Encoding.DER))
    (certs / "junk.pem").write_bytes(b"not a certificate\n")
    _write_key(certs / "edge-ca.key", edge_key)
    _write_key(certs / "identity.key", identity_key)
    _write_key(certs / "other.key", ec.generate_private_key(ec.SECP256R1()))
    _write_key(certs / "encrypted.key", edge_key, password=b"secret")
    _write_key(certs / "loose.key", edge_key)
    (certs / "loose.key").chmod(0o644)
    fd = os.open(certs / "junk.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    return Pki(dir=certs)


PROVIDED = {
    "trust_bundle_cert": "certs/root.pem",
    "state_dir": "state",
    "edge_ca.cert": "certs/edge-ca.pem",
    "edge_ca.pk": "certs/edge-ca.key",
    "hub.hostname": "hub.local",
    "hub.gateway_id": "edgegateway",
    "hub.identity_cert": "certs/identity.pem",
    "hub.identity_pk": "certs/identity.key",
    "hub.trust_bundle_cert": "certs/hub-root.pem",
}


def provided_config(**changes: str) -> str:
    """A config with a provided Edge CA and a hub; `changes` replace values (use __ for the dot)."""
    values = PROVIDED | {name.replace("__", "."): value for name, value in changes.items()}
    lines = [HOST]
    tables: dict[str, list[str]] = {}
    for dotted, value in values.items():
        table, _, name = dotted.rpartition(".")
        line = f"{name} = {json.dumps(value)}"
        if table:
            tables.setdefault(table, []).append(line)
        else:
            lines.append(line)
    for table, entries in tables.items():
        lines += [f"[{table}]", *entries]
    return "\n".join(lines) + "\n"


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.toml"
    path.write_text(text)
    return path


# ---- good configs --------------------------------------------------------------------------------


def test_quickstart_minimal_config_gets_every_default() -> None:
    config = parse_config(HOST, source=Path("/etc/edgegate/config.toml"))

    assert config.source == Path("/etc/edgegate/config.toml")
    assert config.hostname == "edgegateway.local"
    assert config.alt_names == ()
    assert config.trust_bundle_cert is None
    assert config.state_dir == Path("/etc/edgegate/state")
    assert config.edge_ca.quickstart
    assert config.edge_ca.auto_generated_edge_ca_expiry == timedelta(days=90)
    assert config.edge_ca.auto_renew.threshold == 80.0
    assert (config.listener.bind, config.listener.port) == ("0.0.0.0", 8883)
    assert config.limits.max_connections == 10_000
    assert config.limits.max_packet_size == 262_144
    assert config.limits.handshake_timeout == timedelta(seconds=10)
    assert config.limits.max_keep_alive == timedelta(minutes=10)
    assert config.auth.clock_skew_tolerance == timedelta(minutes=5)
    assert config.hub is None
    assert config.sync.offline_trust is None
    assert config.sync.full_resync_interval == timedelta(hours=1)
    assert config.sync.delta_interval == timedelta(seconds=30)
    assert config.sync.cache_miss_wait == timedelta(seconds=2)
    assert config.outbox.time_to_live is None  # forever: README's "for as long as it takes"
    assert config.outbox.durability == "fsync"
    assert config.outbox.commit_interval == timedelta(milliseconds=30)
    assert config.outbox.max_messages == 1_000_000
    assert config.outbox.max_bytes == 1024**3
    assert config.outbox.per_device_max_messages == 100_000
    assert config.storage.url == "sqlite:////etc/edgegate/state/edgegate.db"


def test_provided_edge_ca_and_hub_load_with_files_checked(tmp_path: Path, pki: Pki) -> None:
    config = load_config(write_config(tmp_path, provided_config()))

    assert not config.edge_ca.quickstart
    assert config.edge_ca.cert == pki.dir / "edge-ca.pem"
    assert config.edge_ca.pk == pki.dir / "edge-ca.key"
    assert config.trust_bundle_cert == pki.dir / "root.pem"
    assert config.state_dir == tmp_path / "state"
    assert config.hub is not None
    assert config.hub.hostname == "hub.local"
    assert config.hub.url == "https://hub.local:8443"
    assert config.hub.gateway_id == "edgegateway"
    assert config.hub.identity_cert == pki.dir / "identity.pem"
    assert config.hub.identity_pk == pki.dir / "identity.key"
    assert config.hub.trust_bundle_cert == pki.dir / "hub-root.pem"
    assert config.storage.url == f"sqlite:///{tmp_path}/state/edgegate.db"


def test_every_value_can_be_set() -> None:
    text = (
        HOST
        + """alt_names = ["edgegateway", "10.0.0.5", "fd00::5"]
trust_bundle_cert = "/etc/edgegate/certs/root.pem"
state_dir = "/var/lib/edgegate"
[edge_ca]
auto_generated_edge_ca_expiry_days = 30
[edge_ca.auto_renew]
threshold = "75%"
[listener]
bind = "127.0.0.1"
port = 0
[limits]
max_connections = 50
max_packet_size = 2048
handshake_timeout = 2.5
max_keep_alive = "5m"
[auth]
clock_skew_tolerance = "1h"
[hub]
hostname = "hub.local"
url = "https://127.0.0.1:9443"
gateway_id = "edge-gw.01"
identity_cert = "id.pem"
identity_pk = "id.key"
trust_bundle_cert = "hub.pem"
[sync]
offline_trust = "24h"
full_resync_interval = "10m"
delta_interval = 0.5
cache_miss_wait = "1.5s"
[outbox]
time_to_live = "7d"
max_messages = 10
max_bytes = 4096
per_device_max_messages = 10
[storage]
url = "postgresql://edgegate:pw@db.local/edgegate"
"""
    )
    config = parse_config(text, source=Path("/etc/edgegate/config.toml"))

    assert config.alt_names == ("edgegateway", "10.0.0.5", "fd00::5")
    assert config.state_dir == Path("/var/lib/edgegate")
    assert config.edge_ca == EdgeCAConfig(
        auto_generated_edge_ca_expiry=timedelta(days=30), auto_renew=AutoRenewConfig(threshold=75.0)
    )
    assert config.listener == ListenerConfig(bind="127.0.0.1", port=0)
    assert (config.limits.max_connections, config.limits.max_packet_size) == (50, 2048)
    assert config.limits.handshake_timeout == timedelta(seconds=2.5)
    assert config.limits.max_keep_alive == timedelta(minutes=5)
    assert config.auth.clock_skew_tolerance == timedelta(hours=1)
    assert config.hub is not None
    # url says where to connect (here a proxy); hostname stays the name the hub's certificate carries.
    assert (config.hub.hostname, config.hub.url) == ("hub.local", "https://127.0.0.1:9443")
    assert config.hub.gateway_id == "edge-gw.01"
    assert config.hub.identity_pk == Path("/etc/edgegate/id.key")
    assert config.sync.offline_trust == timedelta(hours=24)
    assert config.sync.full_resync_interval == timedelta(minutes=10)
    assert config.sync.delta_interval == timedelta(seconds=0.5)
    assert config.sync.cache_miss_wait == timedelta(seconds=1.5)
    assert config.outbox.time_to_live == timedelta(days=7)
    assert (config.outbox.max_messages, config.outbox.max_bytes, config.outbox.per_device_max_messages) == (
        10,
        4096,
        10,
    )
    assert config.storage.url == "postgresql://edgegate:pw@db.local/edgegate"
    assert "pw" not in repr(config.storage)


@pytest.mark.parametrize(
    ("written", "resolved"),
    [
        ("certs/root.pem", "/srv/gw/conf/certs/root.pem"),
        ("../certs/root.pem", "/srv/gw/certs/root.pem"),
        ("./root.pem", "/srv/gw/conf/root.pem"),
        ("/etc/ssl/root.pem", "/etc/ssl/root.pem"),
        ("file:///var/secrets/root.pem", "/var/secrets/root.pem"),
        ("file://certs/root.pem", "/srv/gw/conf/certs/root.pem"),
    ],
)
def test_paths_resolve_against_the_config_directory(written: str, resolved: str) -> None:
    text = HOST + f'trust_bundle_cert = "{written}"\nstate_dir = "{written}.d"\n'
    config = parse_config(text, source=Path("/srv/gw/conf/config.toml"))
    assert config.trust_bundle_cert == Path(resolved)
    assert config.state_dir == Path(resolved + ".d")


def test_relative_source_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_config(HOST, source=Path("conf/config.toml"))
    assert config.source == tmp_path / "conf" / "config.toml"
    assert config.state_dir == tmp_path / "conf" / "state"


@pytest.mark.parametrize(
    ("written", "percent"),
    [
        ("80", 80.0),
        ("80.5", 80.5),
        ('"80%"', 80.0),
        ('"80.5%"', 80.5),
        ('" 75 % "', 75.0),
        ("1", 1.0),
        ("99", 99.0),
    ],
)
def test_auto_renew_threshold_accepts_numbers_and_percent_strings(written: str, percent: float) -> None:
    config = parse_config(
        HOST + f"[edge_ca.auto_renew]\nthreshold = {written}\n", source=Path("/c/config.toml")
    )
    assert config.edge_ca.auto_renew.threshold == percent


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('"forever"', None),
        ('"Forever"', None),
        ('"24h"', timedelta(hours=24)),
        ('"90m"', timedelta(minutes=90)),
        ('"3600s"', timedelta(hours=1)),
        ('"7d"', timedelta(days=7)),
        ('"1.5h"', timedelta(minutes=90)),
        ("3600", timedelta(hours=1)),
        ("90.5", timedelta(seconds=90.5)),
    ],
)
def test_offline_trust_is_forever_or_a_duration(written: str, expected: timedelta | None) -> None:
    config = parse_config(HOST + f"[sync]\noffline_trust = {written}\n", source=Path("/c/config.toml"))
    assert config.sync.offline_trust == expected


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('"sqlite:///db/edgegate.db"', "sqlite:////c/db/edgegate.db"),
        ('"sqlite:////var/lib/edgegate.db"', "sqlite:////var/lib/edgegate.db"),
        ('"postgresql+psycopg2://gw@localhost:5432/gw"', "postgresql+psycopg2://gw@localhost:5432/gw"),
        ('""', "sqlite:////c/state/edgegate.db"),
    ],
)
def test_storage_url_relative_sqlite_files_resolve_against_the_config(written: str, expected: str) -> None:
    config = parse_config(HOST + f"[storage]\nurl = {written}\n", source=Path("/c/config.toml"))
    assert config.storage.url == expected


def test_hub_url_brackets_an_ipv6_hostname() -> None:
    hub = """[hub]
hostname = "fd00::1"
port = 9443
gateway_id = "gw"
identity_cert = "a.pem"
identity_pk = "a.key"
trust_bundle_cert = "r.pem"
"""
    config = parse_config(HOST + hub, source=Path("/c/config.toml"))
    assert config.hub is not None
    assert config.hub.url == "https://[fd00::1]:9443"


def test_config_objects_are_frozen() -> None:
    config = parse_config(HOST, source=Path("/c/config.toml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listener.port = 1  # type: ignore[misc]


# ---- bad configs: one row each (parse only, no files) ---------------------------------------------

EDGE_CA_FILES = 'trust_bundle_cert = "r.pem"\n[edge_ca]\ncert = "c.pem"\npk = "c.key"\n'

HUB_OK = """[hub]
hostname = "hub.local"
gateway_id = "edgegateway"
identity_cert = "id.pem"
identity_pk = "id.key"
trust_bundle_cert = "hub.pem"
"""

BAD = [
    # (id, config text, the key the error names, a phrase it says)
    ("toml-syntax", "hostname = edgegateway.local\n", "", "line 1, column 12"),
    ("toml-duplicate-table", HOST + "[listener]\n[listener]\n", "", "line 3"),
    ("unknown-root-key", 'hostnme = "edgegateway.local"\n', "hostnme", "did you mean 'hostname'?"),
    ("unknown-table", HOST + "[edgeca]\ncert = 'x'\n", "edgeca", "did you mean 'edge_ca'?"),
    ("unknown-nested-key", HOST + "[listener]\nprot = 1\n", "listener.prot", "did you mean 'port'?"),
    (
        "unknown-deep-key",
        HOST + "[edge_ca.auto_renew]\nthreshhold = 80\n",
        "edge_ca.auto_renew.threshhold",
        "'threshold'",
    ),
    ("unknown-key-no-match", HOST + "[limits]\nzzz = 1\n", "limits.zzz", "not a known key"),
    (
        "root-key-under-table",
        HOST + '[listener]\nstate_dir = "s"\n',
        "listener.state_dir",
        "keys after a [table]",
    ),
    ("key-in-wrong-table", HOST + "port = 8883\n", "port", "belongs in [listener]"),
    ("iot-edge-only-key", HOST + 'parent_hostname = "p"\n', "parent_hostname", "IoT Edge setting"),
    (
        "iot-edge-only-nested",
        HOST + '[edge_ca]\nbootstrap_identity_cert = "b.pem"\n',
        "edge_ca.bootstrap_identity_cert",
        "IoT Edge",
    ),
    ("table-as-scalar", HOST + "listener = 5\n", "listener", "must be a table"),
    ("array-of-tables", HOST + "[[listener]]\nport = 1\n", "listener", "[[listener]]"),
    ("string-for-int", HOST + '[listener]\nport = "8883"\n', "listener.port", "must be a whole number"),
    ("bool-for-int", HOST + "[listener]\nport = true\n", "listener.port", "got a boolean"),
    ("fraction-for-int", HOST + "[listener]\nport = 8883.5\n", "listener.port", "got a number"),
    ("int-for-string", "hostname = 5\n", "hostname", "must be a string"),
    ("port-too-big", HOST + "[listener]\nport = 70000\n", "listener.port", "between 0 and 65535, got 70000"),
    (
        "negative-connections",
        HOST + "[limits]\nmax_connections = -1\n",
        "limits.max_connections",
        "between 1",
    ),
    ("packet-too-small", HOST + "[limits]\nmax_packet_size = 10\n", "limits.max_packet_size", "between 1024"),
    (
        "negative-duration",
        HOST + "[auth]\nclock_skew_tolerance = -1\n",
        "auth.clock_skew_tolerance",
        "between 0s",
    ),
    (
        "duration-too-long",
        HOST + '[auth]\nclock_skew_tolerance = "2d"\n',
        "auth.clock_skew_tolerance",
        "and 1d",
    ),
    (
        "keep-alive-over-mqtt",
        HOST + "[limits]\nmax_keep_alive = 70000\n",
        "limits.max_keep_alive",
        "between 1s",
    ),
    ("duration-words", HOST + '[sync]\noffline_trust = "24 hours"\n', "sync.offline_trust", "not a duration"),
    ("duration-no-unit", HOST + '[sync]\noffline_trust = "3600"\n', "sync.offline_trust", "no unit"),
    ("duration-infinite", HOST + "[limits]\nhandshake_timeout = inf\n", "limits.handshake_timeout", "finite"),
    ("duration-array", HOST + "[sync]\ndelta_interval = [1]\n", "sync.delta_interval", "must be a duration"),
    ("hostname-missing", "[listener]\nport = 1\n", "hostname", "is missing"),
    ("hostname-empty", 'hostname = ""\n', "hostname", "is empty"),
    (
        "hostname-too-long",
        f'hostname = "{"a" * 30}.{"b" * 34}"\n',
        "hostname",
        "65 characters long; the limit is 64",
    ),
    ("hostname-space", 'hostname = "edge gw.local"\n', "hostname", "character ' ' at position 5"),
    ("hostname-empty-label", 'hostname = "edge..local"\n', "hostname", "empty label at position 6"),
    ("hostname-leading-dot", 'hostname = ".edge.local"\n', "hostname", "empty label at position 1"),
    ("hostname-trailing-dot", 'hostname = "edge.local."\n', "hostname", "trailing dot"),
    ("hostname-underscore", 'hostname = "edge_gw.local"\n', "hostname", "underscore at position 5"),
    ("hostname-hyphen", 'hostname = "edge.-gw"\n', "hostname", "hyphen at position 6"),
    ("hostname-label-64", f'hostname = "{"a" * 64}"\n', "hostname", "label of 64 characters"),
    ("hostname-non-ascii", 'hostname = "bücher.local"\n', "hostname", "punycode"),
    ("hostname-bad-ipv4", 'hostname = "10.0.0.256"\n', "hostname", "mistyped IPv4"),
    ("hostname-bracketed-ipv6", 'hostname = "[fd00::1]"\n', "hostname", "without them"),
    ("hostname-spaces-around", 'hostname = " edge"\n', "hostname", "leading or trailing spaces"),
    ("alt-name-bad", HOST + 'alt_names = ["ok", "not_ok"]\n', "alt_names[1]", "underscore"),
    ("alt-names-not-array", HOST + 'alt_names = "edge"\n', "alt_names", "array of strings"),
    ("alt-names-item-type", HOST + "alt_names = [1]\n", "alt_names[0]", "must be a string"),
    ("bind-bad", HOST + '[listener]\nbind = "0.0.0.0.0"\n', "listener.bind", "IP address or host name"),
    (
        "edge-ca-cert-only",
        HOST + 'trust_bundle_cert = "r.pem"\n[edge_ca]\ncert = "c.pem"\n',
        "edge_ca.pk",
        "without its private key",
    ),
    (
        "edge-ca-pk-only",
        HOST + 'trust_bundle_cert = "r.pem"\n[edge_ca]\npk = "c.key"\n',
        "edge_ca.cert",
        "without its certificate",
    ),
    (
        "edge-ca-and-quickstart",
        HOST + EDGE_CA_FILES + "auto_generated_edge_ca_expiry_days = 30\n",
        "edge_ca.auto_generated_edge_ca_expiry_days",
        "only applies to the quickstart",
    ),
    (
        "provided-edge-ca-no-bundle",
        HOST + '[edge_ca]\ncert = "c.pem"\npk = "c.key"\n',
        "trust_bundle_cert",
        "is missing",
    ),
    (
        "expiry-days-zero",
        HOST + "[edge_ca]\nauto_generated_edge_ca_expiry_days = 0\n",
        "edge_ca.auto_generated_edge_ca_expiry_days",
        "between 2",
    ),
    (
        "threshold-over-100",
        HOST + "[edge_ca.auto_renew]\nthreshold = 150\n",
        "edge_ca.auto_renew.threshold",
        "between 1 % and 99 %",
    ),
    (
        "threshold-fraction",
        HOST + "[edge_ca.auto_renew]\nthreshold = 0.8\n",
        "edge_ca.auto_renew.threshold",
        "not a fraction",
    ),
    (
        "threshold-words",
        HOST + '[edge_ca.auto_renew]\nthreshold = "eighty%"\n',
        "edge_ca.auto_renew.threshold",
        "percentage",
    ),
    (
        "threshold-days",
        HOST + '[edge_ca.auto_renew]\nthreshold = "30d"\n',
        "edge_ca.auto_renew.threshold",
        "percentage",
    ),
    (
        "pkcs11-key",
        HOST + 'trust_bundle_cert = "r.pem"\n[edge_ca]\ncert = "c.pem"\npk = "pkcs11:object=edge"\n',
        "edge_ca.pk",
        "PKCS#11",
    ),
    ("empty-path", HOST + 'trust_bundle_cert = ""\n', "trust_bundle_cert", "empty path"),
    (
        "hub-empty",
        HOST + "[hub]\n",
        "hub",
        "hostname, gateway_id, identity_cert, identity_pk, trust_bundle_cert",
    ),
    (
        "hub-partial",
        HOST + '[hub]\nhostname = "hub.local"\n',
        "hub",
        "gateway_id, identity_cert, identity_pk, trust_bundle_cert",
    ),
    (
        "hub-one-missing",
        HOST + HUB_OK.replace('identity_pk = "id.key"\n', ""),
        "hub.identity_pk",
        "is missing",
    ),
    ("hub-http", HOST + HUB_OK + 'url = "http://hub.local"\n', "hub.url", "https://"),
    ("hub-url-bad-port", HOST + HUB_OK + 'url = "https://hub.local:99999"\n', "hub.url", "bad port"),
    ("hub-url-and-port", HOST + HUB_OK + 'url = "https://hub.local"\nport = 443\n', "hub.port", "no effect"),
    ("hub-hostname-bad", HOST + HUB_OK.replace('"hub.local"', '"hub_1"'), "hub.hostname", "underscore"),
    (
        "gateway-id-slash",
        HOST + HUB_OK.replace('"edgegateway"', '"gw/1"'),
        "hub.gateway_id",
        "'/' at position 3",
    ),
    (
        "gateway-id-long",
        HOST + HUB_OK.replace('"edgegateway"', f'"{"g" * 129}"'),
        "hub.gateway_id",
        "at most 128",
    ),
    ("hub-not-table", HOST + 'hub = "hub.local"\n', "hub", "must be a table"),
    (
        "cache-wait-vs-handshake",
        HOST + "[sync]\ncache_miss_wait = 10\n",
        "sync.cache_miss_wait",
        "handshake_timeout",
    ),
    (
        "per-device-over-total",
        HOST + "[outbox]\nmax_messages = 10\nper_device_max_messages = 11\n",
        "outbox.per_device_max_messages",
        "more than max_messages",
    ),
    ("outbox-bytes-vs-packet", HOST + "[outbox]\nmax_bytes = 1024\n", "outbox.max_bytes", "max_packet_size"),
    ("ttl-zero", HOST + "[outbox]\ntime_to_live = 0\n", "outbox.time_to_live", "between 1s"),
    (
        "storage-mysql",
        HOST + '[storage]\nurl = "mysql://u:pw@h/db"\n',
        "storage.url",
        "SQLite and PostgreSQL",
    ),
    ("storage-memory", HOST + '[storage]\nurl = "sqlite://"\n', "storage.url", "lose buffered messages"),
    ("storage-memory-named", HOST + '[storage]\nurl = "sqlite:///:memory:"\n', "storage.url", "in-memory"),
    ("storage-garbage", HOST + '[storage]\nurl = "edgegate.db"\n', "storage.url", "not a database URL"),
]


@pytest.mark.parametrize(("text", "key", "phrase"), [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_config_names_the_key_and_the_problem(text: str, key: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source=Path("/etc/edgegate/config.toml"))
    error = caught.value
    assert error.file == "/etc/edgegate/config.toml"
    assert error.key == key
    assert phrase in f"{error.problem} {error.fix}"


def test_error_text_carries_file_key_problem_and_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('hostnme = "edgegateway.local"\n', source=Path("/etc/edgegate/config.toml"))
    assert str(caught.value) == (
        "/etc/edgegate/config.toml: [hostnme] is not a known key; did you mean 'hostname'? "
        "(fix: rename it to 'hostname')"
    )


def test_syntax_error_shows_the_line_and_suggests_quotes() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("# comment\nhostname = edgegateway\n", source=Path("/c/config.toml"))
    assert "line 2, column 12" in caught.value.problem
    assert "hostname = edgegateway" in caught.value.problem
    assert caught.value.fix is not None
    assert "quotes" in caught.value.fix


def test_storage_errors_do_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(HOST + '[storage]\nurl = "mysql://u:hunter2@h/db"\n', source=Path("/c/config.toml"))
    assert "hunter2" not in str(caught.value)


# ---- bad files: checked by load_config -------------------------------------------------------------

BAD_FILES = [
    # (id, changes to the provided config, the key the error names, a phrase; {certs} is the certs dir)
    (
        "bundle-missing",
        {"trust_bundle_cert": "certs/nope.pem"},
        "trust_bundle_cert",
        "file not found: {certs}/nope.pem",
    ),
    (
        "bundle-directory",
        {"trust_bundle_cert": "certs"},
        "trust_bundle_cert",
        "is a directory, not a file: {certs}",
    ),
    ("bundle-not-pem", {"trust_bundle_cert": "certs/junk.pem"}, "trust_bundle_cert", "no PEM certificate"),
    (
        "bundle-is-a-key",
        {"trust_bundle_cert": "certs/edge-ca.key"},
        "trust_bundle_cert",
        "private key, not a certificate",
    ),
    ("bundle-der", {"trust_bundle_cert": "certs/root.der"}, "trust_bundle_cert", "DER"),
    (
        "edge-cert-missing",
        {"edge_ca__cert": "certs/gone.pem"},
        "edge_ca.cert",
        "file not found: {certs}/gone.pem",
    ),
    ("edge-cert-not-ca", {"edge_ca__cert": "certs/identity.pem"}, "edge_ca.cert", "not a CA certificate"),
    (
        "edge-pk-is-a-cert",
        {"edge_ca__pk": "certs/edge-ca.pem"},
        "edge_ca.pk",
        "certificate, not a private key",
    ),
    ("edge-pk-empty", {"edge_ca__pk": "certs/junk.key"}, "edge_ca.pk", "not a PEM private key"),
    ("edge-pk-encrypted", {"edge_ca__pk": "certs/encrypted.key"}, "edge_ca.pk", "encrypted"),
    ("edge-pk-mismatch", {"edge_ca__pk": "certs/other.key"}, "edge_ca.pk", "does not match edge_ca.cert"),
    (
        "edge-chain-reversed",
        {"edge_ca__cert": "certs/edge-ca-reversed.pem"},
        "edge_ca.pk",
        "put that certificate first",
    ),
    ("edge-pk-mode", {"edge_ca__pk": "certs/loose.key"}, "edge_ca.pk", "chmod 600 {certs}/loose.key"),
    (
        "identity-pk-mismatch",
        {"hub__identity_pk": "certs/edge-ca.key"},
        "hub.identity_pk",
        "does not match hub.identity_cert",
    ),
    ("identity-cert-missing", {"hub__identity_cert": "certs/x.pem"}, "hub.identity_cert", "file not found"),
    ("hub-bundle-not-pem", {"hub__trust_bundle_cert": "certs/junk.pem"}, "hub.trust_bundle_cert", "no PEM"),
    ("state-dir-is-a-file", {"state_dir": "certs/root.pem"}, "state_dir", "not a directory"),
]


@pytest.mark.parametrize(
    ("changes", "key", "phrase"), [row[1:] for row in BAD_FILES], ids=[row[0] for row in BAD_FILES]
)
def test_bad_files_fail_at_load(
    tmp_path: Path, pki: Pki, changes: dict[str, str], key: str, phrase: str
) -> None:
    path = write_config(tmp_path, provided_config(**changes))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert error.file == str(path)
    assert error.key == key
    assert phrase.format(certs=pki.dir) in f"{error.problem} {error.fix}"


def test_good_key_with_a_loose_mode_passes_once_fixed(tmp_path: Path, pki: Pki) -> None:
    # The control for "edge-pk-mode": the same key file, mode 600, is accepted.
    path = write_config(tmp_path, provided_config(edge_ca__pk="certs/loose.key"))
    (pki.dir / "loose.key").chmod(0o600)
    assert load_config(path).edge_ca.pk == pki.dir / "loose.key"


def test_missing_config_file_names_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config("conf/config.toml")
    assert caught.value.key == ""
    assert caught.value.problem == f"file not found: {tmp_path}/conf/config.toml"


def test_config_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'hostname = "edge\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def _load_in_child(path: Path) -> dict[str, str]:
    """load_config in a forked child, as `nobody` when we are root (root reads any file)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                load_config(path)
                outcome = {"key": "(loaded)", "problem": ""}
            except ConfigError as exc:
                outcome = {"key": exc.key, "problem": exc.problem}
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def test_unreadable_config_says_permission_denied() -> None:
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "config.toml"
        path.write_text(HOST)
        assert _load_in_child(path)["key"] == "(loaded)"  # the control: readable, it loads
        path.chmod(0o000)
        outcome = _load_in_child(path)
    assert outcome["key"] == ""
    assert "permission denied" in outcome["problem"]
    assert str(path) in outcome["problem"]


# ---- validate_hostname -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "edgegateway.local",
        "edgegateway",
        "EdgeGateway.Local",
        "gw-01.site-3.example.com",
        "10.0.0.5",
        "fd00::5",
        "1gw.local",
        "a" * 63,
        "x",
    ],
)
def test_valid_hostnames(name: str) -> None:
    assert validate_hostname(name) is None


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("", "empty"),
        ("a" * 65, "65 characters"),
        ("edge_gw", "underscore at position 5"),
        ("edge..gw", "empty label at position 6"),
        ("edge.gw-", "hyphen"),
        ("edge/gw", "'/' at position 5"),
        ("edge.local.", "trailing dot"),
        ("1.2.3.4.5", "all digits"),
        ("fe80::1%eth0", "zone index"),
    ],
)
def test_invalid_hostnames_say_what_and_where(name: str, phrase: str) -> None:
    problem = validate_hostname(name)
    assert problem is not None
    assert phrase in problem


def test_hostname_length_limit_is_a_parameter() -> None:
    long_name = ".".join(["a" * 60] * 3)
    assert validate_hostname(long_name) is not None
    assert validate_hostname(long_name, max_length=253) is None


# ---- the docs stay true ------------------------------------------------------------------------------


def _dotted_keys() -> list[str]:
    return sorted(
        f"{table}.{key}" if table else key
        for table, keys in KNOWN_KEYS.items()
        for key in keys
        if (f"{table}.{key}" if table else key) not in KNOWN_KEYS
    )


def test_example_config_sets_every_live_key_to_its_default(tmp_path: Path) -> None:
    source = tmp_path / "config.toml"
    example = parse_config((DOCS / "config.example.toml").read_text(), source=source)
    assert example == parse_config(HOST, source=source)


def test_every_key_is_in_the_example_and_the_reference() -> None:
    example = (DOCS / "config.example.toml").read_text()
    reference = (DOCS / "CONFIG.md").read_text()
    for dotted in _dotted_keys():
        table, _, key = dotted.rpartition(".")
        assert re.search(rf"^#? ?{re.escape(key)} = ", example, re.MULTILINE), f"{dotted} not in the example"
        if table:
            assert f"[{table}]" in example, f"[{table}] not in the example"
        assert f"| `{dotted}` |" in reference, f"{dotted} not in docs/CONFIG.md"
