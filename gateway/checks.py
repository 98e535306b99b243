"""`edgegate check`'s judgements, like `iotedge check`: each returns a CheckResult, none prints or does I/O.

The CLI (`gateway.cli.check`) loads files, resolves names, dials the hub and asks the database; the
functions here turn what it found into ✔/⚠/✖ with a sentence. Time is an argument (`now`).
"""

from __future__ import annotations

import enum
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from gateway.config import HubConfig
from gateway.errors import PKIError
from gateway.pki import verify_chain
from gateway.pki.edge_ca import server_cert_problem
from gateway.service.budget import MIB, ConnectionBudget, Resources
from gateway.service.memory_guard import MARKS, TICK

# iotedge check warns when a certificate has less than a week left.
WARN_DAYS = 7


class Status(enum.Enum):
    OK = "ok"
    WARN = "warning"
    FAIL = "error"

    @property
    def mark(self) -> str:
        return _MARKS[self]


_MARKS = {Status.OK: "✔", Status.WARN: "⚠", Status.FAIL: "✖"}


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: Status
    title: str
    detail: str = ""


def ok(title: str, detail: str = "") -> CheckResult:
    return CheckResult(Status.OK, title, detail)


def warn(title: str, detail: str) -> CheckResult:
    return CheckResult(Status.WARN, title, detail)


def fail(title: str, detail: str) -> CheckResult:
    return CheckResult(Status.FAIL, title, detail)


# ---- config and files --------------------------------------------------------------------------


def config_parses(source: Path) -> CheckResult:
    return ok("config.toml parses", str(source))


def config_broken(problem: str) -> CheckResult:
    """A ConfigError's sentence (file, key, problem, fix) as the first and only result."""
    return fail("config.toml parses", problem)


def files_exist(files: Sequence[tuple[str, Path, bool]]) -> CheckResult:
    """`files` is (what, path, exists) for every file config.toml names."""
    title = "files named in config.toml exist"
    missing = [f"{what}: {path} is missing" for what, path, exists in files if not exists]
    if missing:
        return fail(title, "; ".join(missing))
    return ok(title, ", ".join(str(path) for _, path, _ in files) or "none (quickstart Edge CA, no [hub])")


def key_file_modes(keys: Sequence[tuple[Path, int]]) -> CheckResult:
    """`keys` is (path, st_mode) for every private key file present; none may be group/world readable."""
    title = "private keys are readable only by their owner"
    loose = [(path, stat.S_IMODE(mode)) for path, mode in keys if mode & (stat.S_IRWXG | stat.S_IRWXO)]
    if loose:
        return fail(title, "; ".join(f"{path} has mode {mode:04o}: run chmod 600 {path}" for path, mode in loose))
    return ok(title, f"{len(keys)} key file(s), mode 0600 or tighter")


# ---- certificates ------------------------------------------------------------------------------


def validity(what: str, cert: x509.Certificate, now: datetime, *, quickstart: bool = False) -> CheckResult:
    """Inside its dates, with days left; ⚠ under WARN_DAYS, and for the quickstart Edge CA."""
    title = f"{what} is valid"
    left = cert.not_valid_after_utc - now
    if now < cert.not_valid_before_utc:
        return fail(title, f"not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                           f"(now is {now:%Y-%m-%d %H:%M} UTC): check the clock")
    if left.total_seconds() <= 0:
        return fail(title, f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    detail = f"{left.days} days left (until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
    if left.days < WARN_DAYS:
        return warn(title, f"{detail}; renew it now")
    if quickstart:
        return warn(title, f"{detail}; quickstart Edge CA: fine for trials, not for production "
                           "(configure [edge_ca] cert and pk from your own PKI)")
    return ok(title, detail)


def quickstart_not_created(path: Path) -> CheckResult:
    return warn("Edge CA is valid", f"quickstart Edge CA {path} not created yet; `edgegate run` creates it "
                                    "below a stable local root")


def server_names(cert: x509.Certificate, edge_ca: x509.Certificate, hostname: str, alt_names: Sequence[str],
                 now: datetime) -> CheckResult:
    """The stored server cert names exactly hostname + alt_names and comes from the current Edge CA."""
    title = f"server certificate is for {hostname}"
    names = ", ".join([hostname, *alt_names])
    problem = server_cert_problem(cert, edge_ca, hostname, alt_names, now, threshold=1.0)
    if problem is None:
        return ok(title, f"subjectAltName: {names}")
    return warn(title, f"{problem}; the gateway re-issues it at its next start")


def chain_to_bundle(chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], hostname: str,
                    now: datetime, *, issued_in_memory: bool = False) -> CheckResult:
    """What a device does: leaf + Edge CA + intermediates must reach the trust bundle, for `hostname`."""
    title = "server certificate chain verifies against the trust bundle"
    verdict = verify_chain(chain[0], chain[1:], roots, now=now, purpose="server", hostname=hostname)
    note = " (no server certificate issued yet: checked one the Edge CA issued in memory)" if issued_in_memory else ""
    if verdict.ok:
        return ok(title, " <- ".join(c.subject.rfc4514_string() for c in verdict.chain) + note)
    return fail(title, f"{verdict.reason}: {verdict.detail}{note}")


def certificates_unreadable(problem: str) -> CheckResult:
    return fail("certificates load", problem)


# ---- names -------------------------------------------------------------------------------------


def hostname_resolution(hostname: str, addresses: Sequence[str], error: str | None) -> CheckResult:
    """⚠, not ✖: devices must resolve the name; the gateway itself may not (no DNS entry for itself)."""
    title = f"{hostname} resolves on this machine"
    if error is not None:
        return warn(title, f"{error}; devices must resolve it (DNS or /etc/hosts) to the gateway's address")
    return ok(title, ", ".join(addresses))


# ---- hub ---------------------------------------------------------------------------------------


class HubFailure(enum.Enum):
    WRONG_HOSTNAME = "wrong hostname"
    UNTRUSTED_ROOT = "untrusted root"
    HUB_CERT_EXPIRED = "hub certificate expired"
    HUB_CERT_NOT_YET_VALID = "hub certificate not yet valid"
    HUB_CERT_INVALID = "hub certificate invalid"
    IDENTITY_REJECTED = "identity rejected"
    IDENTITY_UNUSABLE = "identity unusable"
    TLS_FAILED = "TLS failed"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class HubProbe:
    """What dialling the hub found: the TLS version on success, else a failure and its sentence."""

    tls_version: str | None = None
    failure: HubFailure | None = None
    detail: str = ""


# OpenSSL X509_V_ERR_* codes as ssl.SSLCertVerificationError.verify_code carries them.
_UNTRUSTED_CODES = frozenset({2, 18, 19, 20, 21})  # no issuer / self-signed / unable to get local issuer
_EXPIRED, _NOT_YET_VALID, _HOSTNAME_MISMATCH = 10, 9, 62
# TLS alerts with which a server refuses the client's certificate.
_CLIENT_CERT_ALERTS = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "CERTIFICATE_UNKNOWN",
                       "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED", "UNSUPPORTED_CERTIFICATE", "ACCESS_DENIED")


def classify_hub_error(exc: BaseException, timeout: float) -> HubProbe:
    """The reason a TLS connection to the hub failed, from the exception the attempt raised."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verification_failure(exc.verify_code, exc.verify_message)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
            return HubProbe(failure=HubFailure.IDENTITY_REJECTED,
                            detail=f"the hub refused the gateway's identity certificate (TLS alert {reason}); "
                                   "is hub.gateway_id registered with this certificate or its CA?")
        return HubProbe(failure=HubFailure.TLS_FAILED, detail=f"TLS handshake failed: {reason}")
    if isinstance(exc, ConnectionRefusedError):
        return HubProbe(failure=HubFailure.REFUSED, detail="connection refused: nothing listens at hub.url")
    if isinstance(exc, TimeoutError):
        return HubProbe(failure=HubFailure.TIMEOUT, detail=f"no answer within {timeout:g} s (firewall, proxy, "
                                                           "or the hub is down)")
    if isinstance(exc, PKIError):
        return HubProbe(failure=HubFailure.IDENTITY_UNUSABLE, detail=str(exc))
    if isinstance(exc, OSError):
        return HubProbe(failure=HubFailure.UNREACHABLE, detail=exc.strerror or str(exc))
    return HubProbe(failure=HubFailure.TLS_FAILED, detail=f"{type(exc).__name__}: {exc}")


def closed_after_handshake(tls_version: str | None, how: str) -> HubProbe:
    """The hub completed the handshake, then closed without a byte of HTTP answer.

    With TLS 1.3 the client's certificate is judged after the client's side of the handshake is done,
    so a hub that refuses it may close before its alert is read: the probe then sees an EOF or a reset
    where it expected an answer. That is the refusal, not a network fault.
    """
    if tls_version == "TLSv1.3":
        return HubProbe(failure=HubFailure.IDENTITY_REJECTED,
                        detail=f"the hub refused the gateway's identity certificate (it closed the connection "
                               f"right after the TLS 1.3 handshake without answering: {how}); "
                               "is hub.gateway_id registered with this certificate or its CA?")
    return HubProbe(failure=HubFailure.TLS_FAILED,
                    detail=f"the hub closed the connection without answering ({how})")


def _verification_failure(code: int, message: str) -> HubProbe:
    if code == _HOSTNAME_MISMATCH:
        return HubProbe(failure=HubFailure.WRONG_HOSTNAME,
                        detail=f"the hub's certificate is not trusted for this name: {message} "
                               "(hub.hostname must be a name the hub's certificate carries)")
    if code in _UNTRUSTED_CODES:
        return HubProbe(failure=HubFailure.UNTRUSTED_ROOT,
                        detail=f"the hub's certificate is not trusted: {message} "
                               "(hub.trust_bundle_cert must hold the root that signed it)")
    if code == _EXPIRED:
        return HubProbe(failure=HubFailure.HUB_CERT_EXPIRED, detail=f"the hub's certificate is not trusted: {message}")
    if code == _NOT_YET_VALID:
        return HubProbe(failure=HubFailure.HUB_CERT_NOT_YET_VALID,
                        detail=f"the hub's certificate is not trusted: {message} (check this machine's clock)")
    return HubProbe(failure=HubFailure.HUB_CERT_INVALID, detail=f"the hub's certificate is not trusted: {message}")


def hub_not_configured() -> CheckResult:
    return warn("hub reachable", "not configured ([hub] is missing): the gateway serves its cache only")


def hub_reachable(hub: HubConfig, probe: HubProbe) -> CheckResult:
    title = f"hub {hub.hostname} reachable at {hub.url} with a trusted certificate"
    if probe.failure is not None:
        return fail(title, f"{probe.failure.value}: {probe.detail}")
    return ok(title, f"{probe.tls_version}, hub certificate verified for {hub.hostname}, "
                     f"identity accepted{'; ' + probe.detail if probe.detail else ''}")


# ---- database ----------------------------------------------------------------------------------


def database(shown_url: str, status: tuple[str | None, str] | None, error: str | None) -> CheckResult:
    """`status` is (current, head) from the migrations, None when the database does not exist yet."""
    title = f"database {shown_url} is at the latest migration"
    if error is not None:
        return fail(title, error)
    if status is None:
        return warn(title, "not created yet; `edgegate run` or `edgegate db upgrade` creates it")
    current, head = status
    if current != head:
        return warn(title, f"at {current or 'no migration'}, latest is {head}; run `edgegate db upgrade` "
                           "(`edgegate run` does it too)")
    return ok(title, head)


# ---- clock -------------------------------------------------------------------------------------


def system_clock(state: str, sentence: str) -> CheckResult:
    """⚠ when the clock floor (gateway.clock_floor) says the system clock is behind or ahead."""
    if state == "trusted":
        return ok("system clock is plausible", sentence)
    return warn("system clock is wrong", sentence)


# ---- resources ---------------------------------------------------------------------------------


def connection_budget(budget: ConnectionBudget) -> CheckResult:
    """⚠ when the open-files or memory limit caps the configured max_connections, with the figures."""
    title = "connection budget (max_connections against open files and memory)"
    if budget.capped:
        return warn(title, budget.sentence())
    return ok(title, budget.sentence())


def memory_guard(resources: Resources) -> CheckResult:
    """What the memory guard will measure, against which limit (gateway.service.memory_guard); ⚠ without a
    limit, where nothing stands between a surge of devices and the kernel's OOM killer."""
    title = "memory guard (refuses devices before the kernel would kill the gateway)"
    if resources.memory is None:
        return warn(title, "no memory limit (no cgroup memory.max or memory.limit_in_bytes, no [limits] memory), "
                           "so no guard: set MemoryMax= in the unit or [limits] memory, and past it devices are "
                           "refused instead of the gateway being killed")
    measured = ("its own anonymous memory" if resources.memory_cgroup is None
                else f"the cgroup {resources.memory_cgroup} (usage less its page cache, sockets included)")
    return ok(title, f"measures {measured} against {resources.memory // MIB} MiB ({resources.memory_source}) "
                     f"every {TICK:g} s: refuses new devices at {MARKS.refuse_at:.0%}, also holds their reads at "
                     f"{MARKS.hold_at:.0%}, sheds the newest if that does not free it")


# ---- state directory and outbox ------------------------------------------------------------------


def state_dir_writable(path: Path, problem: str | None) -> CheckResult:
    """`problem` is what writing a probe file into the state directory ran into (None: it worked)."""
    title = "state directory is writable"
    if problem is not None:
        return fail(title, problem)
    return ok(title, str(path))


def outbox_promise(time_to_live: timedelta | None, durability: str, max_bytes: int) -> CheckResult:
    """What the outbox promises for a hub outage: how long messages are kept, and what survives what."""
    title = "outbox keeps telemetry while the hub is unreachable"
    kept = ("for as long as it takes (time_to_live = \"forever\"), up to outbox.max_bytes "
            f"({max_bytes} bytes) and the disk's free space; then new messages are refused, not old ones dropped"
            if time_to_live is None else
            f"for {time_to_live.total_seconds():g} s of queued time (time_to_live), then they are dropped and counted")
    if durability == "process":
        return warn(title, f"{kept}; durability = \"process\": an acknowledged message survives a crash of "
                           "the gateway but NOT a power cut (use \"fsync\" where power can fail)")
    return ok(title, f"{kept}; durability = \"fsync\": an acknowledged message survives a power cut")
