"""config.toml, parsed once into frozen, validated objects. Nothing else in the gateway reads TOML.

Key names follow Azure IoT Edge 1.2+ where the concept is the same (`hostname`, `trust_bundle_cert`,
`[edge_ca]`, `[edge_ca.auto_renew]`). Paths are resolved against the config file's directory, and
`file://` URIs are accepted as in IoT Edge. Every duration is a `timedelta`. Each problem raises
`ConfigError(file, key, problem, fix)` with the dotted key; `load_config` also opens every file the config
names, so a bad config exits 2 before anything starts. docs/CONFIG.md is the reference.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from gateway.config_checks import (
    MAX_COMMON_NAME,
    MAX_DNS_NAME,
    Section,
    check_known_keys,
    format_duration,
    validate_device_id,
    validate_hostname,
)
from gateway.config_est import (
    EstConfig,
    EstEdgeCAConfig,
    check_est_files,
    edge_ca_paths,
    est_edge_ca,
    parse_est,
)
from gateway.config_files import (
    check_is_ca,
    check_key_matches,
    check_state_dir,
    read_certificates,
    read_file,
    read_private_key,
)
from gateway.errors import ConfigError
from gateway.frontdoor.limits import FrontDoorLimits

__all__ = [
    "AuthConfig",
    "AutoRenewConfig",
    "Config",
    "ConfigError",
    "EdgeCAConfig",
    "HubConfig",
    "LimitsConfig",
    "ListenerConfig",
    "OutboxConfig",
    "StorageConfig",
    "SyncConfig",
    "load_config",
    "parse_config",
    "validate_hostname",
]

# Every key of every table; "" is the top level. Sub-tables are keys of their parent.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "": frozenset(
        {"hostname", "alt_names", "trust_bundle_cert", "state_dir"}
        | {"edge_ca", "listener", "limits", "auth", "hub", "sync", "outbox", "storage"}
        | {"cert_issuance"}
        | {"health", "log"}
    ),
    "edge_ca": frozenset({"cert", "pk", "auto_generated_edge_ca_expiry_days", "auto_renew"} | {"method", "url"}),
    "edge_ca.auto_renew": frozenset({"threshold"} | {"rotate_key", "retry"}),
    "cert_issuance": frozenset({"est"}),
    "cert_issuance.est": frozenset({"trusted_certs", "auth", "urls", "identity_auto_renew"}),
    "cert_issuance.est.auth": frozenset(
        {"username", "password", "identity_cert", "identity_pk", "bootstrap_identity_cert", "bootstrap_identity_pk"}
    ),
    "cert_issuance.est.urls": frozenset({"default"}),
    "cert_issuance.est.identity_auto_renew": frozenset({"rotate_key", "threshold", "retry"}),
    "listener": frozenset({"bind", "port"}),
    "limits": frozenset({"max_connections", "max_packet_size", "handshake_timeout", "max_keep_alive", "memory"}),
    "health": frozenset({"listen"}),
    "log": frozenset({"level", "format"}),
    "auth": frozenset({"clock_skew_tolerance"}),
    "hub": frozenset(
        {"hostname", "port", "url", "gateway_id", "identity_cert", "identity_pk", "trust_bundle_cert"}
    ),
    "sync": frozenset({"offline_trust", "full_resync_interval", "delta_interval", "cache_miss_wait"}),
    "outbox": frozenset({"time_to_live", "max_messages", "max_bytes", "per_device_max_messages"}
                        | {"commit_interval", "durability", "disk_reserve"}),
    "storage": frozenset({"url"}),
}

# IoT Edge config.toml keys with no edgegate counterpart: named precisely when someone copies them over.
IOT_EDGE_ONLY_KEYS: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "parent_hostname",
            "provisioning",
            "agent",
            "connect",
            "listen",
            "moby_runtime",
            "aziot_keys",
        }
    ),
    "edge_ca": frozenset({"bootstrap_identity_cert", "bootstrap_identity_pk"}),
}

HUB_REQUIRED = ("hostname", "gateway_id", "identity_cert", "identity_pk", "trust_bundle_cert")
DEFAULT_HUB_PORT = 8443  # the hub API over HTTPS (Azure IoT Hub itself listens on 443)
SUPPORTED_DATABASES = ("sqlite", "postgresql")
OUTBOX_DURABILITY = ("fsync", "process")
MAX_CONFIG_BYTES = 1024 * 1024
_SECOND = timedelta(seconds=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class AutoRenewConfig:
    """When the gateway renews the Edge CA it generated itself (quickstart)."""

    threshold: float = 80.0  # percent of the certificate's lifetime, as IoT Edge's "80%"


@dataclass(frozen=True, slots=True)
class EdgeCAConfig:
    """The Edge CA: provided `cert` (may hold the full chain) + `pk`, or quickstart when neither is given."""

    cert: Path | None = None
    pk: Path | None = None
    auto_generated_edge_ca_expiry: timedelta = timedelta(days=90)
    auto_renew: AutoRenewConfig = AutoRenewConfig()
    est: EstEdgeCAConfig | None = None  # method = "est": cert/pk are where the EST-issued Edge CA is kept

    @property
    def quickstart(self) -> bool:
        """True when the gateway generates its own Edge CA (below a stable local root) in the state dir."""
        return self.cert is None


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """Where devices connect (MQTT over TLS); port 0 picks a free port."""

    bind: str = "0.0.0.0"
    port: int = 8883


_FRONT_DOOR = FrontDoorLimits()


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Front door bounds."""

    # The defaults, and where each number comes from, are the front door's own (gateway.frontdoor.limits).
    max_connections: int = _FRONT_DOOR.max_connections
    max_packet_size: int = _FRONT_DOOR.max_packet_size
    handshake_timeout: timedelta = timedelta(seconds=_FRONT_DOOR.handshake_timeout)
    max_keep_alive: timedelta = timedelta(seconds=_FRONT_DOOR.max_keep_alive)
    memory: int | None = None  # bytes the gateway may use; None: the cgroup's limit, if any


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """The local HTTP endpoint for /healthz and /metrics; off unless `listen` is given."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Log level (SIGHUP applies a change) and format; `edgegate run --log-level/--log-format` override them."""

    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Device authentication policy."""

    clock_skew_tolerance: timedelta = timedelta(minutes=5)  # Raspberry Pis boot with a wrong clock


@dataclass(frozen=True, slots=True)
class HubConfig:
    """The hub: `hostname` is the name its server certificate must carry, `url` where to connect."""

    hostname: str
    url: str
    gateway_id: str  # this gateway's device id in the hub: its device scope
    identity_cert: Path
    identity_pk: Path
    trust_bundle_cert: Path  # the root the hub's server certificate must chain to


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Registry sync; `offline_trust` is the oldest cache the gateway still trusts, None for forever."""

    offline_trust: timedelta | None = None
    full_resync_interval: timedelta = timedelta(hours=1)
    delta_interval: timedelta = timedelta(seconds=30)
    cache_miss_wait: timedelta = timedelta(seconds=2)


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """Store-and-forward bounds, group commit and durability (docs/CONFIG.md compares the two modes)."""

    # None: kept "for as long as it takes" (README), bounded by max_bytes, max_messages and the disk.
    time_to_live: timedelta | None = None
    max_messages: int = 1_000_000
    max_bytes: int = 1024**3
    per_device_max_messages: int = 100_000
    commit_interval: timedelta = timedelta(milliseconds=30)  # group commit linger (gateway.outbox.store)
    durability: str = "fsync"  # "fsync": survives a power cut; "process": survives a crash of the gateway
    disk_reserve: int = 64 * 1024**2  # free bytes kept back from new messages (capped at 1/8 of the disk)


@dataclass(frozen=True, slots=True, repr=False)
class StorageConfig:
    """The gateway's database as a SQLAlchemy URL (SQLite or PostgreSQL)."""

    url: str

    def __repr__(self) -> str:
        # The URL may carry a database password: keep it out of logs and tracebacks.
        return f"StorageConfig(url={make_url(self.url).render_as_string(hide_password=True)!r})"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated config.toml."""

    source: Path  # the config file, absolute
    hostname: str  # the name devices dial; the server certificate's CN and first SAN
    alt_names: tuple[str, ...]
    trust_bundle_cert: Path | None  # None only with a quickstart Edge CA (its local root is the bundle)
    state_dir: Path
    edge_ca: EdgeCAConfig
    listener: ListenerConfig
    limits: LimitsConfig
    auth: AuthConfig
    hub: HubConfig | None  # None: serve from the cache only
    sync: SyncConfig
    outbox: OutboxConfig
    storage: StorageConfig
    est: EstConfig | None = None  # [cert_issuance.est]: the identity (and maybe the Edge CA) come from EST
    health: HealthConfig = HealthConfig()
    log: LogConfig = LogConfig()


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file, and check every file it names."""
    source = Path(os.path.abspath(path))
    data = read_file(str(source), "", source, limit=MAX_CONFIG_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(source), "", f"is not UTF-8 text (byte {exc.start})", "save it as UTF-8"
        ) from None
    config = parse_config(text, source=source)
    _check_files(config)
    return config


def parse_config(text: str, *, source: Path) -> Config:
    """Parse and validate config text as if read from `source`; touches no file."""
    source = Path(os.path.abspath(source))
    file = str(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(file, text, exc) from None
    check_known_keys(file, doc, KNOWN_KEYS, IOT_EDGE_ONLY_KEYS)
    base = source.parent
    root = Section(file, "", doc)

    hostname = _hostname(root, root.required_string("hostname", "it is the name devices dial"), "hostname")
    alt_names = tuple(
        _hostname(root, name, f"alt_names[{index}]", max_length=MAX_DNS_NAME)
        for index, name in enumerate(root.strings("alt_names"))
    )
    edge_ca = _edge_ca(root.table("edge_ca"), base)
    est = parse_est(root, base, root.path("state_dir", base) or base / "state")
    edge_ca = _with_est_edge_ca(root, edge_ca, est, base)
    trust_bundle_cert = root.path("trust_bundle_cert", base)
    if trust_bundle_cert is None and not edge_ca.quickstart:
        raise root.error(
            "trust_bundle_cert",
            "is missing; with a provided Edge CA it names the root the devices trust",
            'add trust_bundle_cert = "certs/root.pem" (above the first [table] line)',
        )
    state_dir = root.path("state_dir", base) or base / "state"
    limits = _limits(root.table("limits"))
    return Config(
        source=source,
        hostname=hostname,
        alt_names=alt_names,
        trust_bundle_cert=trust_bundle_cert,
        state_dir=state_dir,
        edge_ca=edge_ca,
        listener=_listener(root.table("listener")),
        limits=limits,
        auth=AuthConfig(
            clock_skew_tolerance=root.table("auth").duration(
                "clock_skew_tolerance", AuthConfig().clock_skew_tolerance, low=timedelta(0), high=_DAY
            )
        ),
        hub=_hub(root, base, est),
        sync=_sync(root.table("sync"), limits),
        outbox=_outbox(root.table("outbox"), limits),
        storage=_storage(root.table("storage"), base, state_dir),
        est=est,
        health=_health(root.table("health")),
        log=_log(root.table("log")),
    )


def _syntax_error(file: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if where is None:
        return ConfigError(file, "", f"is not valid TOML: {message}")
    line, column = int(where[1]), int(where[2])
    reason = message[: where.start()]
    lines = text.splitlines()
    shown = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    problem = f"is not valid TOML at line {line}, column {column}: {reason}" + (
        f" (in: {shown})" if shown else ""
    )
    fix = 'strings need quotes, e.g. hostname = "edgegateway.local"' if reason == "Invalid value" else None
    return ConfigError(file, "", problem, fix)


def _hostname(section: Section, text: str, key: str, *, max_length: int = MAX_COMMON_NAME) -> str:
    problem = validate_hostname(text, max_length=max_length)
    if problem is None:
        return text
    fix = None
    if "_" in text:
        fix = f"use a hyphen: {text.replace('_', '-')!r}"
    elif len(text) > max_length == MAX_COMMON_NAME:
        fix = "it becomes the server certificate's common name (at most 64 characters): use a shorter name"
    raise ConfigError(section.file, section.key(key), problem, fix)


def _edge_ca(section: Section, base: Path) -> EdgeCAConfig:
    cert = section.path("cert", base)
    pk = section.path("pk", base)
    if cert is not None and pk is None:
        raise section.error(
            "pk", "is missing: cert is given without its private key", 'add pk = "certs/edge-ca.key"'
        )
    if pk is not None and cert is None:
        raise section.error(
            "cert", "is missing: pk is given without its certificate", 'add cert = "certs/edge-ca.pem"'
        )
    expiry_key = "auto_generated_edge_ca_expiry_days"
    if cert is not None and section.given(expiry_key):
        raise section.error(
            expiry_key,
            "only applies to the quickstart Edge CA, but cert and pk are given",
            "remove it, or remove cert and pk to let the gateway generate its Edge CA",
        )
    defaults = EdgeCAConfig()
    days = section.integer(expiry_key, defaults.auto_generated_edge_ca_expiry.days, low=2, high=3650)
    threshold = section.table("auto_renew").percent(
        "threshold", defaults.auto_renew.threshold, low=1, high=99
    )
    return EdgeCAConfig(
        cert=cert,
        pk=pk,
        auto_generated_edge_ca_expiry=timedelta(days=days),
        auto_renew=AutoRenewConfig(threshold=threshold),
    )


def _with_est_edge_ca(root: Section, edge_ca: EdgeCAConfig, est: EstConfig | None, base: Path) -> EdgeCAConfig:
    section = root.table("edge_ca")
    name = root.table("hub").string("gateway_id") or root.string("hostname") or "edgegate"
    settings = est_edge_ca(section, est, f"{name} Edge CA")
    if settings is None:
        return edge_ca
    cert, pk = edge_ca_paths(section, base, root.path("state_dir", base) or base / "state")
    auto = AutoRenewConfig(threshold=settings.auto_renew.threshold)
    return EdgeCAConfig(cert=cert, pk=pk, auto_renew=auto, est=settings)


def _listener(section: Section) -> ListenerConfig:
    defaults = ListenerConfig()
    bind = section.string("bind") or defaults.bind
    problem = validate_hostname(bind, max_length=MAX_DNS_NAME)
    if problem is not None:
        raise section.error(
            "bind", f"must be an IP address or host name: {problem}", 'use "0.0.0.0" for every interface'
        )
    return ListenerConfig(bind=bind, port=section.integer("port", defaults.port, low=0, high=65535))


def _limits(section: Section) -> LimitsConfig:
    defaults = LimitsConfig()
    return LimitsConfig(
        max_connections=section.integer("max_connections", defaults.max_connections, low=1, high=1_000_000),
        # 1 KiB carries any CONNECT with an IoT Hub username; 268435455 is MQTT's largest remaining length.
        max_packet_size=section.integer(
            "max_packet_size", defaults.max_packet_size, low=1024, high=268_435_455
        ),
        handshake_timeout=section.duration(
            "handshake_timeout",
            defaults.handshake_timeout,
            low=timedelta(seconds=0.1),
            high=timedelta(minutes=5),
        ),
        # MQTT's keep-alive is a 16-bit number of seconds.
        max_keep_alive=section.duration(
            "max_keep_alive", defaults.max_keep_alive, low=_SECOND, high=timedelta(seconds=65_535)
        ),
        memory=_memory_size(section, "memory"),
    )


_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3}


def _memory_size(section: Section, key: str) -> int | None:
    """A size in bytes: an integer, or a string like "256MiB", "512M", "1G" (binary units, as systemd's MemoryMax=)."""
    if not section.given(key):
        return None
    fix = 'write a size such as "256MiB" or "1GiB" (at least 64MiB)'
    raw = section.data[key]
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise section.error(key, f"must be a size, got {raw!r}", fix)
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(raw))
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise section.error(key, f"is not a size: {raw!r}", fix)
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value < 64 * 1024**2:
        raise section.error(key, f"is {value} bytes, too small to run the gateway", fix)
    return value


def _log(section: Section) -> LogConfig:
    level = (section.string("level") or LogConfig().level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise section.error("level", f"is {level!r}", "use DEBUG, INFO, WARNING or ERROR")
    style = section.string("format") or LogConfig().format
    if style not in ("text", "json"):
        raise section.error("format", f"is {style!r}", 'use "text" or "json" (under systemd, text becomes '
                                                       "journald's format by itself)")
    return LogConfig(level=level, format=style)


def _health(section: Section) -> HealthConfig:
    listen = section.string("listen")
    if listen is None:
        return HealthConfig()
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise section.error("listen", f"must be HOST:PORT, got {listen!r}",
                            'use "127.0.0.1:9883" (keep it on loopback or a management network)')
    return HealthConfig(listen=(host, int(port)))


def _hub(root: Section, base: Path, est: EstConfig | None = None) -> HubConfig | None:
    if not root.given("hub"):
        return None
    section = root.table("hub")
    if est is not None:
        for key in ("identity_cert", "identity_pk"):
            if section.given(key):
                raise section.error(key, "is given, but with [cert_issuance.est] the identity comes from EST",
                                    "remove it (cert_issuance.est.auth.identity_cert/_pk say where it is kept)")
    required = HUB_REQUIRED if est is None else tuple(k for k in HUB_REQUIRED if k not in ("identity_cert",
                                                                                            "identity_pk"))
    missing = [key for key in required if not section.given(key)]
    if len(missing) > 1:
        raise root.error(
            "hub",
            f"is missing {', '.join(missing)}: the gateway needs all of them to reach the hub",
            "add them under [hub], or remove [hub] to serve from the cache only",
        )
    why = "the gateway needs it to reach the hub (or remove [hub] to serve from the cache only)"
    hostname = _hostname(
        section, section.required_string("hostname", why), "hostname", max_length=MAX_DNS_NAME
    )
    gateway_id = section.required_string("gateway_id", why)
    problem = validate_device_id(gateway_id)
    if problem is not None:
        raise section.error("gateway_id", problem)
    return HubConfig(
        hostname=hostname,
        url=_hub_url(section, hostname),
        gateway_id=gateway_id,
        identity_cert=section.required_path("identity_cert", base, why) if est is None else est.identity_cert,
        identity_pk=section.required_path("identity_pk", base, why) if est is None else est.identity_pk,
        trust_bundle_cert=section.required_path("trust_bundle_cert", base, why),
    )


def _hub_url(section: Section, hostname: str) -> str:
    port = section.integer("port", DEFAULT_HUB_PORT, low=1, high=65535)
    url = section.string("url")
    if not url:
        host = f"[{hostname}]" if ":" in hostname else hostname
        return f"https://{host}:{port}"
    if section.given("port"):
        raise section.error("port", "has no effect when url is given", "put the port in url, or remove url")
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise section.error(
            "url", f"must be an https:// URL (the gateway talks to the hub over mutual TLS), got {url!r}"
        )
    try:
        _ = parts.port  # raises on a port that is not a number or out of range
    except ValueError as exc:
        raise section.error("url", f"has a bad port: {exc}") from None
    if not parts.hostname:
        raise section.error("url", f"has no host name: {url!r}")
    return url


def _sync(section: Section, limits: LimitsConfig) -> SyncConfig:
    defaults = SyncConfig()
    cache_miss_wait = section.duration(
        "cache_miss_wait", defaults.cache_miss_wait, low=timedelta(0), high=timedelta(minutes=1)
    )
    # The front door's deadline covers the whole CONNECT, including the wait for the hub.
    if cache_miss_wait >= limits.handshake_timeout:
        raise section.error(
            "cache_miss_wait",
            f"is {format_duration(cache_miss_wait)}, not below limits.handshake_timeout "
            f"({format_duration(limits.handshake_timeout)}): the deadline would drop a waiting device",
            f"make it shorter than {format_duration(limits.handshake_timeout)}",
        )
    return SyncConfig(
        offline_trust=section.duration_or_forever(
            "offline_trust", defaults.offline_trust, low=_SECOND, high=timedelta(days=3650)
        ),
        full_resync_interval=section.duration(
            "full_resync_interval", defaults.full_resync_interval, low=_SECOND, high=timedelta(days=7)
        ),
        delta_interval=section.duration(
            "delta_interval", defaults.delta_interval, low=timedelta(seconds=0.1), high=_DAY
        ),
        cache_miss_wait=cache_miss_wait,
    )


def _outbox(section: Section, limits: LimitsConfig) -> OutboxConfig:
    defaults = OutboxConfig()
    max_messages = section.integer("max_messages", defaults.max_messages, low=1, high=1_000_000_000)
    per_device = section.integer(
        "per_device_max_messages", defaults.per_device_max_messages, low=1, high=1_000_000_000
    )
    if per_device > max_messages:
        raise section.error(
            "per_device_max_messages",
            f"is {per_device}, more than max_messages ({max_messages}) for the whole outbox",
            f"make it at most {max_messages}",
        )
    max_bytes = section.integer("max_bytes", defaults.max_bytes, low=1024, high=1024**4)
    if max_bytes < limits.max_packet_size:
        raise section.error(
            "max_bytes",
            f"is {max_bytes}, smaller than limits.max_packet_size ({limits.max_packet_size}): "
            "a message of the largest allowed size could never be buffered",
            f"make it at least {limits.max_packet_size}",
        )
    durability = section.string("durability") or defaults.durability
    if durability not in OUTBOX_DURABILITY:
        raise section.error(
            "durability", f"is {durability!r}", 'write "fsync" (survives a power cut, the default) or "process" '
            "(survives a crash of the gateway, not a power cut; fewer disk writes)"
        )
    return OutboxConfig(
        time_to_live=section.duration_or_forever(
            "time_to_live", defaults.time_to_live, low=_SECOND, high=timedelta(days=3650)
        ),
        max_messages=max_messages,
        max_bytes=max_bytes,
        per_device_max_messages=per_device,
        commit_interval=section.duration(
            "commit_interval", defaults.commit_interval, low=timedelta(0), high=_SECOND
        ),
        durability=durability,
        disk_reserve=section.integer("disk_reserve", defaults.disk_reserve, low=0, high=1024**4),
    )


def _storage(section: Section, base: Path, state_dir: Path) -> StorageConfig:
    raw = section.string("url")
    if not raw:
        return StorageConfig(url=f"sqlite:///{state_dir / 'edgegate.db'}")
    try:
        url = make_url(raw)
    except ArgumentError:
        raise section.error(
            "url",
            "is not a database URL",
            'write "sqlite:///path/edgegate.db" or "postgresql://user@host/db"',
        ) from None
    shown = url.render_as_string(hide_password=True)
    backend = url.get_backend_name()
    if backend not in SUPPORTED_DATABASES:
        raise section.error(
            "url", f"names a {backend} database ({shown}); edgegate supports SQLite and PostgreSQL"
        )
    if backend == "sqlite":
        url = _sqlite_file(section, url, base, shown)
    return StorageConfig(url=url.render_as_string(hide_password=False))


def _sqlite_file(section: Section, url: URL, base: Path, shown: str) -> URL:
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        raise section.error(
            "url",
            f"is an in-memory SQLite database ({shown}): the outbox would lose buffered messages on restart",
            "give a file, e.g. sqlite:///state/edgegate.db, or leave url empty for the default",
        )
    if database.startswith("file:"):
        return url
    return url.set(database=os.path.normpath(base / database))


def _check_files(config: Config) -> None:
    file = str(config.source)
    if config.trust_bundle_cert is not None:
        read_certificates(file, "trust_bundle_cert", config.trust_bundle_cert)
    edge_ca = config.edge_ca
    if edge_ca.cert is not None and edge_ca.pk is not None and edge_ca.est is None:
        chain = read_certificates(file, "edge_ca.cert", edge_ca.cert)
        check_is_ca(file, "edge_ca.cert", chain[0])
        key = read_private_key(file, "edge_ca.pk", edge_ca.pk)
        check_key_matches(file, "edge_ca.pk", key, chain, "edge_ca.cert")
    if config.est is not None:
        check_est_files(file, config.est)
    if config.hub is not None and config.est is not None:
        read_certificates(file, "hub.trust_bundle_cert", config.hub.trust_bundle_cert)
    elif config.hub is not None:
        hub = config.hub
        identity = read_certificates(file, "hub.identity_cert", hub.identity_cert)
        key = read_private_key(file, "hub.identity_pk", hub.identity_pk)
        check_key_matches(file, "hub.identity_pk", key, identity, "hub.identity_cert")
        read_certificates(file, "hub.trust_bundle_cert", hub.trust_bundle_cert)
    check_state_dir(file, "state_dir", config.state_dir)
