"""The EST sections of config.toml, with IoT Edge's names: `[cert_issuance.est]` (`trusted_certs`),
`[cert_issuance.est.auth]`, `[cert_issuance.est.urls]`, `[cert_issuance.est.identity_auto_renew]`, and
`[edge_ca] method = "est"` with `[edge_ca.auto_renew]`. Pure parsing; `gateway.config` calls it and
`check_est_files` opens what the sections name. docs/CONFIG.md is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config_checks import Section
from gateway.config_files import check_key_matches, read_certificates, read_private_key
from gateway.errors import ConfigError

# Where the gateway keeps what EST issued when config.toml does not say (under state_dir).
EST_DIR = "est"


@dataclass(frozen=True, slots=True)
class EstAutoRenewConfig:
    """IoT Edge's auto_renew: renew at `threshold` % of the lifetime, retry every `retry` %."""

    rotate_key: bool = True
    threshold: float = 80.0
    retry: float = 4.0


@dataclass(frozen=True, slots=True, repr=False)
class EstConfig:
    """`[cert_issuance.est]`: the EST server, how the gateway authenticates, where its identity lives."""

    url: str  # [cert_issuance.est.urls] default: ".../.well-known/est"
    trusted_certs: tuple[Path, ...]  # roots for the EST server's certificate; empty: the system's
    identity_cert: Path  # the EST-issued identity (persisted and renewed here; the hub sees it too)
    identity_pk: Path
    bootstrap_identity_cert: Path | None  # used to enroll when the identity is missing or expired
    bootstrap_identity_pk: Path | None
    username: str | None
    password: str | None
    identity_auto_renew: EstAutoRenewConfig = EstAutoRenewConfig()

    def __repr__(self) -> str:
        # The password must stay out of logs and tracebacks.
        return (f"EstConfig(url={self.url!r}, identity_cert={str(self.identity_cert)!r}, "
                f"bootstrap={'yes' if self.bootstrap_identity_cert else 'no'}, "
                f"basic={'yes' if self.username else 'no'})")


@dataclass(frozen=True, slots=True)
class EstEdgeCAConfig:
    """`[edge_ca] method = "est"`: the Edge CA comes from (and is renewed by) the EST server."""

    url: str
    common_name: str
    auto_renew: EstAutoRenewConfig = EstAutoRenewConfig()


def _boolean(section: Section, name: str, default: bool) -> bool:
    value = section.data.get(name, default)
    if not isinstance(value, bool):
        raise section.error(name, f"must be true or false, got {value!r}", f"write {name} = true or {name} = false")
    return value


def _https_url(section: Section, name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme != "https" or not parts.hostname:
        raise section.error(name, f"must be an https:// URL of an EST server, got {raw!r}",
                            'e.g. "https://est.example.com/.well-known/est"')
    try:
        _ = parts.port
    except ValueError as exc:
        raise section.error(name, f"has a bad port: {exc}") from None
    return raw.rstrip("/")


def auto_renew(section: Section, *, est: bool) -> EstAutoRenewConfig:
    """`[... auto_renew]`: rotate_key, threshold, retry; rotate_key and retry need EST."""
    defaults = EstAutoRenewConfig()
    if not est:
        for key in ("rotate_key", "retry"):
            if section.given(key):
                raise section.error(key, 'only applies to an Edge CA issued over EST ([edge_ca] method = "est")',
                                    f"remove {key}, or set method = \"est\" under [edge_ca]")
    threshold = section.percent("threshold", defaults.threshold, low=1, high=99)
    retry = section.percent("retry", defaults.retry, low=0.01, high=50)
    return EstAutoRenewConfig(_boolean(section, "rotate_key", defaults.rotate_key), threshold, retry)


def parse_est(root: Section, base: Path, state_dir: Path) -> EstConfig | None:
    """`[cert_issuance.est]` or None when absent."""
    issuance = root.table("cert_issuance")
    if not issuance.given("est"):
        return None
    est = issuance.table("est")
    auth, urls = est.table("auth"), est.table("urls")
    url = urls.string("default")
    if url is None:
        raise urls.error("default", "is missing: the gateway needs the EST server's URL",
                         'add default = "https://est.example.com/.well-known/est" under [cert_issuance.est.urls]')
    trusted = tuple(_trusted(est, base))
    boot_cert, boot_pk = auth.path("bootstrap_identity_cert", base), auth.path("bootstrap_identity_pk", base)
    if (boot_cert is None) != (boot_pk is None):
        missing = "bootstrap_identity_pk" if boot_pk is None else "bootstrap_identity_cert"
        raise auth.error(missing, "is missing: the bootstrap certificate and its key go together",
                         f'add {missing} = "certs/bootstrap.{"key" if boot_pk is None else "pem"}"')
    username, password = auth.string("username"), auth.string("password")
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise auth.error(missing, "is missing: HTTP Basic needs both username and password", f"add {missing}")
    identity_cert, identity_pk = auth.path("identity_cert", base), auth.path("identity_pk", base)
    if (identity_cert is None) != (identity_pk is None):
        missing = "identity_pk" if identity_pk is None else "identity_cert"
        raise auth.error(missing, "is missing: identity_cert and identity_pk go together",
                         "give both, or neither to keep the EST identity under state_dir/est")
    if boot_cert is None and identity_cert is None and username is None:
        raise auth.error("bootstrap_identity_cert", "is missing: the gateway has no way to authenticate to EST",
                         "add bootstrap_identity_cert and bootstrap_identity_pk (or identity_cert and identity_pk "
                         "of an identity the EST server already issued)")
    return EstConfig(
        url=_https_url(urls, "default", url),
        trusted_certs=trusted,
        identity_cert=identity_cert or state_dir / EST_DIR / "identity.pem",
        identity_pk=identity_pk or state_dir / EST_DIR / "identity.key",
        bootstrap_identity_cert=boot_cert,
        bootstrap_identity_pk=boot_pk,
        username=username,
        password=password,
        identity_auto_renew=auto_renew(est.table("identity_auto_renew"), est=True),
    )


def _trusted(est: Section, base: Path) -> list[Path]:
    paths = []
    for index, raw in enumerate(est.strings("trusted_certs")):
        item = Section(est.file, est.prefix, {f"trusted_certs[{index}]": raw})
        path = item.path(f"trusted_certs[{index}]", base)
        if path is not None:
            paths.append(path)
    return paths


def est_edge_ca(section: Section, est: EstConfig | None, common_name: str) -> EstEdgeCAConfig | None:
    """`[edge_ca] method`: None for files or quickstart, the EST settings for "est"."""
    method = section.string("method")
    if method is None:
        auto_renew(section.table("auto_renew"), est=False)
        if section.given("url"):
            raise section.error("url", 'only applies with method = "est"', 'add method = "est", or remove url')
        return None
    if method != "est":
        raise section.error("method", f"is {method!r}; edgegate knows \"est\" (or leave method out for cert/pk "
                                      "files or the quickstart Edge CA)", 'write method = "est" or remove it')
    if est is None:
        raise section.error("method", 'is "est" but [cert_issuance.est] is missing',
                            "add [cert_issuance.est] with its urls and auth")
    if section.given("auto_generated_edge_ca_expiry_days"):
        raise section.error("auto_generated_edge_ca_expiry_days", "only applies to the quickstart Edge CA; the EST "
                            "server decides the lifetime of an EST-issued one", "remove it")
    url = section.string("url")
    return EstEdgeCAConfig(
        url=_https_url(section, "url", url) if url is not None else est.url,
        common_name=common_name,
        auto_renew=auto_renew(section.table("auto_renew"), est=True),
    )


def edge_ca_paths(section: Section, base: Path, state_dir: Path) -> tuple[Path, Path]:
    """Where an EST-issued Edge CA is kept: [edge_ca] cert/pk, else state_dir/est/edge-ca.{pem,key}."""
    cert, pk = section.path("cert", base), section.path("pk", base)
    return (cert or state_dir / EST_DIR / "edge-ca.pem", pk or state_dir / EST_DIR / "edge-ca.key")


def check_est_files(file: str, est: EstConfig) -> None:
    """Open the files the EST sections name that must exist before the first enrollment."""
    for index, path in enumerate(est.trusted_certs):
        read_certificates(file, f"cert_issuance.est.trusted_certs[{index}]", path)
    if est.bootstrap_identity_cert is not None and est.bootstrap_identity_pk is not None:
        key = "cert_issuance.est.auth"
        chain = read_certificates(file, f"{key}.bootstrap_identity_cert", est.bootstrap_identity_cert)
        private = read_private_key(file, f"{key}.bootstrap_identity_pk", est.bootstrap_identity_pk)
        check_key_matches(file, f"{key}.bootstrap_identity_pk", private, chain, f"{key}.bootstrap_identity_cert")
    elif not est.identity_cert.exists() and est.username is None:
        raise ConfigError(file, "cert_issuance.est.auth.identity_cert",
                          f"{est.identity_cert} does not exist and no bootstrap certificate is configured",
                          "add bootstrap_identity_cert and bootstrap_identity_pk to enroll, or restore the file")
