"""The service layer's pure parts, table-tested: the resource budget, cgroup parsing, log escaping and
formats, the rejection limiter, the SIGHUP plan, sd_notify helpers, the exposition, the unit, start
failures, the supervisor's bookkeeping."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
from pathlib import Path, PurePosixPath

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devices.fleet import percentile, summarize
from gateway.config import parse_config
from gateway.logs import RejectionLimiter, SafeFormatter, escape, priority
from gateway.metrics import Counters, Gauge
from gateway.service.budget import (
    FD_RESERVE_MIN,
    MIB,
    Limiter,
    Resources,
    connection_budget,
    connections_for_memory,
    connections_for_open_files,
)
from gateway.service.exposition import parse_key, render
from gateway.service.failures import operational_sentence
from gateway.service.notify import Notifier, socket_address, watchdog_interval
from gateway.service.reload import reload_plan
from gateway.service.resources import cgroup_memory_limit, cgroup_paths, parse_limit, tightest_cgroup, tightest_limit
from gateway.service.supervisor import Supervisor, TaskState
from gateway.service.unit import UnitSettings
from gateway.service.unit import render as render_unit
from tests.certmatrix import build as build_matrix

CONFIG = Path("/etc/edgegate/config.toml")


def config(text: str = "") -> object:
    return parse_config('hostname = "gw.local"\n' + text, source=CONFIG)


# ---- budget ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("configured", "files", "memory", "expected", "limiter"), [
    (10_000, 1024, None, 1024 - FD_RESERVE_MIN, Limiter.OPEN_FILES),
    (500, 1024, None, 500, Limiter.CONFIGURED),
    (100_000, 65536, None, 65536 - 3276, Limiter.OPEN_FILES),
    (10_000, 1_048_576, 256 * MIB, int((256 * MIB * 0.8 - 80 * MIB - 30 * 1024) // (24 * 1024)), Limiter.MEMORY),
    (100, 1_048_576, 256 * MIB, 100, Limiter.CONFIGURED),
    (10_000, 100, None, 1, Limiter.OPEN_FILES),  # never zero: the sentence explains, nothing crashes
    (10_000, 1_048_576, 1 << 62, 10_000, Limiter.CONFIGURED),  # "no limit" as cgroup v1 writes it
])
def test_connection_budget(configured: int, files: int, memory: int | None, expected: int, limiter: Limiter) -> None:
    budget = connection_budget(configured, Resources(files, memory, "cgroup v2 memory.max"))
    assert (budget.max_connections, budget.limiter) == (expected, limiter)
    sentence = budget.sentence()
    if limiter is Limiter.OPEN_FILES:
        assert f"capped from {configured} to {expected} by open_files" in sentence
        assert "LimitNOFILE" in sentence
    elif limiter is Limiter.MEMORY:
        assert "by memory" in sentence
        assert "MemoryMax" in sentence
        assert f"allows {expected} ({int(256 * MIB * 0.8 - 80 * MIB) // (54 * 1024)} if they speak TLS 1.2)" in sentence
    else:
        assert sentence.startswith(f"max_connections {configured} fits")


def test_budget_pieces() -> None:
    assert connections_for_open_files(10) == 0
    assert connections_for_memory(None) is None
    assert connections_for_memory(64 * MIB) == 0  # below the baseline


# ---- cgroups -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "v2", "v1"), [
    ("0::/system.slice/edgegate.service\n", "/system.slice/edgegate.service", None),
    ("12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n0::/\n", "/", "/docker/abc"),
    ("4:cpuset:/\n", None, None),
    ("garbage", None, None),
])
def test_cgroup_paths(text: str, v2: str | None, v1: str | None) -> None:
    assert cgroup_paths(text) == (v2, v1)


@pytest.mark.parametrize(("text", "limit"), [
    ("max\n", None), ("268435456\n", 268435456), ("9223372036854771712\n", None), ("", None), ("-1", None),
])
def test_parse_limit(text: str, limit: int | None) -> None:
    assert parse_limit(text) == limit


def test_the_tightest_limit_of_a_cgroup_and_its_parents_binds() -> None:
    files = {"/a/b/c": "max", "/a/b": str(512 * MIB), "/a": str(256 * MIB), "/": None}
    assert tightest_limit("/a/b/c", lambda p: files.get(str(p))) == 256 * MIB
    assert tightest_limit("/x", lambda p: None) is None
    assert tightest_limit("/", lambda p: {"/": "1000000"}.get(str(PurePosixPath(p)))) == 1000000
    assert tightest_cgroup("/a/b/c", lambda p: files.get(str(p))) == (256 * MIB, PurePosixPath("/a"))
    same = {"/a/b": str(256 * MIB), "/a": str(256 * MIB)}
    assert tightest_cgroup("/a/b", lambda p: same.get(str(p))) == (256 * MIB, PurePosixPath("/a/b"))


def test_a_cgroup_v2_limit_names_the_cgroup_to_measure(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "self-cgroup"
    service = root / "system.slice" / "edgegate.service"
    service.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "system.slice" / "memory.max").write_text("max\n")
    (service / "memory.max").write_text(f"{256 * MIB}\n")
    proc.write_text("0::/system.slice/edgegate.service\n")
    assert cgroup_memory_limit(root, proc) == (256 * MIB, "cgroup v2 memory.max", service)
    (service / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(root, proc) == (None, "none", None)
    proc.write_text("9:memory:/docker/abc\n")
    v1 = root / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{128 * MIB}\n")
    assert cgroup_memory_limit(root, proc) == (128 * MIB, "cgroup v1 memory.limit_in_bytes", None)


# ---- logs ------------------------------------------------------------------------------------------


CONTROL = ["\n", "\r", "\x1b[31m", "\x00", "\x07", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\t"]


@pytest.mark.parametrize("client_id", sorted({row.client_id for row in build_matrix().rows}))
@pytest.mark.parametrize("style", ["text", "json", "journald"])
def test_no_client_id_of_the_matrix_with_control_characters_forges_a_line(client_id: str, style: str) -> None:
    evil = client_id + "".join(CONTROL) + "\n2026-01-01T00:00:00Z ERROR edgegate: forged"
    record = logging.LogRecord("edgegate.frontdoor", logging.WARNING, __file__, 1,
                               "rejected device=%s from %s:%d", (evil, "127.0.0.1", 5), None)
    line = SafeFormatter(style).format(record)  # type: ignore[arg-type]
    assert "\n" not in line
    assert "\r" not in line
    assert not any(c in line for c in CONTROL if c != "\t" or style != "json")
    if style == "json":
        assert json.loads(line)["message"].startswith("rejected device=" + client_id)
    else:
        assert escape(client_id) in line


@pytest.mark.parametrize(("text", "escaped"), [
    ("plain-device_1", "plain-device_1"), ("a\nb", "a\\x0ab"), ("\x1b[2J", "\\x1b[2J"), ("x\u2028y", "x\\u2028y"),
    ("café", "café"),
])
def test_escape(text: str, escaped: str) -> None:
    assert escape(text) == escaped


@pytest.mark.parametrize(("level", "prio"), [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                                             (logging.ERROR, 3), (logging.CRITICAL, 2), (25, 6)])
def test_journald_priorities(level: int, prio: int) -> None:
    assert priority(level) == prio
    record = logging.LogRecord("edgegate", level, __file__, 1, "hello", (), None)
    line = SafeFormatter("journald").format(record)
    assert line.startswith(f"<{prio}>")
    assert "Z " not in line  # journald adds its own timestamp


def test_rejection_lines_are_limited_per_source_with_a_summary() -> None:
    now = [0.0]
    limiter = RejectionLimiter(clock=lambda: now[0])

    def line(source: str) -> bool:
        record = logging.LogRecord("edgegate.frontdoor", logging.WARNING, __file__, 1,
                                   "rejected device=%s from %s:%d", ("d", source, 1), None)
        return limiter.filter(record)

    assert [line("10.0.0.1") for _ in range(8)] == [True] * 5 + [False] * 3
    spoof = logging.LogRecord("edgegate.frontdoor", logging.WARNING, __file__, 1,
                              "rejected device=%s from %s:%d", ("10.9.9.9", "10.0.0.1", 1), None)
    assert not limiter.filter(spoof)  # a client id that looks like an address does not get its own budget
    joined = logging.LogRecord("edgegate.frontdoor", logging.WARNING, __file__, 1,
                               "protocol violation from %s", ("10.0.0.1:4444",), None)
    assert [limiter.filter(joined) for _ in range(6)] == [True] * 5 + [False]  # its own template, same source
    assert line("10.0.0.2")  # another source has its own budget
    summary = limiter.summaries()
    assert summary == ["suppressed 1 similar lines from 10.0.0.1 in the last 10 s: protocol ...",
                       "suppressed 4 similar lines from 10.0.0.1 in the last 10 s: rejected ..."]
    assert limiter.summaries() == []
    now[0] = 11.0
    assert line("10.0.0.1")  # a new interval
    info = logging.LogRecord("edgegate.frontdoor", logging.INFO, __file__, 1, "admitted from %s", ("10.0.0.1",), None)
    assert all(limiter.filter(info) for _ in range(20))  # only warnings are limited


# ---- SIGHUP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "live", "restart"), [
    ("", (), ()),
    ('[log]\nlevel = "DEBUG"\n', ("log.level",), ()),
    ("[limits]\nmax_connections = 50\n", ("limits",), ()),
    ('[listener]\nport = 9999\n', (), ("listener",)),
    ('[log]\nformat = "json"\n[outbox]\nmax_messages = 500000\n', (), ("outbox", "log.format")),
    ('alt_names = ["10.0.0.5"]\n[limits]\nmemory = "512MiB"\n', ("limits", "alt_names"), ()),
])
def test_reload_plan(change: str, live: tuple[str, ...], restart: tuple[str, ...]) -> None:
    plan = reload_plan(config(), config(change))  # type: ignore[arg-type]
    assert (plan.live, plan.restart) == (live, restart)
    if restart:
        assert "needs a restart" in plan.sentence()


# ---- sd_notify ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "interval"), [
    ({}, None), ({"WATCHDOG_USEC": "30000000"}, 15.0), ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None), ({"WATCHDOG_USEC": "0"}, None),
])
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert watchdog_interval(env, 42) == interval


def test_socket_address_and_a_notifier_without_a_socket() -> None:
    assert socket_address("@abstract") == b"\0abstract"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("relative") is None
    quiet = Notifier({})
    assert not quiet.enabled
    quiet.ready("x")  # does nothing, raises nothing


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.ready("listening")
        notifier.stopping()
        assert server.recv(1024).decode().split("\n")[:2] == ["READY=1", "STATUS=listening"]
        assert server.recv(1024) == b"STOPPING=1\nSTATUS=stopping"
        notifier.close()


# ---- exposition --------------------------------------------------------------------------------------------


def test_exposition_parses_with_prometheus_client() -> None:
    counters = Counters()
    counters.inc("edgegate_auth_accepted_total", 3)
    counters.inc("edgegate_auth_rejected_total", reason="unknown_device")
    counters.inc("edgegate_auth_rejected_total", 2, reason='we"ird\\')
    gauges = [Gauge("edgegate_connected_devices", "devices", 7),
              Gauge("edgegate_hub_state", "hub", 1, {"state": "online"})]
    text = render(counters.snapshot(), gauges, process=False).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("edgegate_auth_accepted_total", ())] == 3
    assert samples[("edgegate_auth_rejected_total", (("reason", "unknown_device"),))] == 1
    assert samples[("edgegate_connected_devices", ())] == 7
    assert samples[("edgegate_hub_state", (("state", "online"),))] == 1


def test_parse_key() -> None:
    assert parse_key('a_total{x="1",y="b"}') == ("a_total", {"x": "1", "y": "b"})
    with pytest.raises(ValueError, match="not a metric key"):
        parse_key("1bad")


# ---- unit, start failures ------------------------------------------------------------------------------------


def test_the_unit_is_rendered_for_this_installation() -> None:
    unit = render_unit(UnitSettings(Path("/opt/eg/bin/edgegate"), Path("/srv/eg.toml"), Path("/srv/state"), "gw"))
    assert "ExecStart=/opt/eg/bin/edgegate run -c /srv/eg.toml" in unit
    assert "ReadWritePaths=/srv/state" in unit
    assert "User=gw\nGroup=gw" in unit
    assert "StateDirectory=" not in unit
    default = render_unit(UnitSettings(Path("/usr/local/bin/edgegate"), CONFIG, Path("/var/lib/edgegate")))
    for line in ("Type=notify", "WatchdogSec=", "LimitNOFILE=", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "Restart=on-failure", "StateDirectory=edgegate", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in default


@pytest.mark.parametrize(("exc", "words"), [
    (OSError(errno.EADDRINUSE, "address already in use"), "the address is in use"),
    (OSError(errno.EMFILE, "Too many open files"), "LimitNOFILE"),
    (PermissionError(errno.EACCES, "Permission denied", "/var/lib/edgegate/pki"), "chown -R edgegate"),
    (OSError(errno.EACCES, "Permission denied"), "CAP_NET_BIND_SERVICE"),
    (OSError(errno.ENOSPC, "No space left on device", "/var/lib/edgegate/x"), "free some space"),
])
def test_operational_sentences(exc: OSError, words: str) -> None:
    sentence = operational_sentence(exc, config())  # type: ignore[arg-type]
    assert words in sentence
    assert "\n" not in sentence


# ---- config keys ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "memory"), [
    ('"256MiB"', 256 * MIB), ('"1G"', 1024 * MIB), ("134217728", 128 * MIB), ('"512 M"', 512 * MIB)])
def test_limits_memory(text: str, memory: int) -> None:
    assert config(f"[limits]\nmemory = {text}\n").limits.memory == memory  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ['"lots"', '"1MiB"', "true", '"256 PB"'])
def test_limits_memory_refused(text: str) -> None:
    with pytest.raises(Exception, match=r"\[limits.memory\]"):
        config(f"[limits]\nmemory = {text}\n")


@pytest.mark.parametrize("text", ['"nohost"', '":80"', '"h:99999"'])
def test_health_listen_refused(text: str) -> None:
    with pytest.raises(Exception, match=r"\[health.listen\]"):
        config(f"[health]\nlisten = {text}\n")


# ---- supervisor ------------------------------------------------------------------------------------------------


async def test_a_failing_step_is_logged_once_counted_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    supervisor = Supervisor(counters, jitter=lambda: 0.0)
    import gateway.service.supervisor as module

    fails = {"left": 4}

    async def step() -> None:
        if fails["left"]:
            fails["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")

    module_base, module.RETRY_BASE = module.RETRY_BASE, 0.01
    try:
        with caplog.at_level(logging.WARNING, "edgegate.supervisor"):
            supervisor.every("status-writer", 0.01, step)
            await asyncio.sleep(0.02)
            assert supervisor.health["status-writer"].state in (TaskState.FAILING, TaskState.RUNNING)
            for _ in range(200):
                if supervisor.health["status-writer"].state is TaskState.RUNNING and not fails["left"]:
                    break
                await asyncio.sleep(0.01)
        assert counters.get("edgegate_task_failures_total", task="status-writer") == 4
        errors = [r for r in caplog.records if "failed, retrying" in r.getMessage()]
        assert len(errors) == 1
        assert "No space left on device" in errors[0].getMessage()
        assert any("recovered after 4 failed attempt(s)" in r.getMessage() for r in caplog.records)
        assert supervisor.healthy
    finally:
        module.RETRY_BASE = module_base
        await supervisor.stop()
    assert supervisor.health["status-writer"].state is TaskState.STOPPED


async def test_a_step_runs_again_as_soon_as_it_is_asked_for_not_only_every_interval() -> None:
    supervisor = Supervisor(Counters())
    sooner = asyncio.Event()
    runs: list[float] = []
    ran = asyncio.Event()

    async def step() -> None:
        runs.append(asyncio.get_running_loop().time())
        ran.set()

    supervisor.every("status-writer", 3600.0, step, sooner=sooner)
    try:
        await asyncio.wait_for(ran.wait(), 30)
        ran.clear()
        sooner.set()  # hours before the interval
        await asyncio.wait_for(ran.wait(), 30)
        assert len(runs) == 2
        await asyncio.sleep(0.05)
        assert len(runs) == 2  # asked once, ran once: the interval again after that
    finally:
        await supervisor.stop()


async def test_a_loop_that_dies_is_restarted_and_shows_as_failing() -> None:
    supervisor = Supervisor(Counters(), jitter=lambda: 0.0)
    runs = []

    async def forwarder() -> None:
        runs.append(1)
        raise RuntimeError("boom")

    supervisor.loop("forwarder", forwarder)
    await asyncio.sleep(0.05)
    assert supervisor.failing() == ["forwarder"]
    assert not supervisor.healthy
    assert supervisor.describe()["forwarder"]["last_error"] == "RuntimeError: boom"
    await supervisor.stop()
    assert runs == [1]  # the first retry waits RETRY_BASE/2 at least


async def test_an_owned_task_is_restarted_ends_when_its_owner_says_and_is_left_to_its_owner() -> None:
    supervisor = Supervisor(Counters(), jitter=lambda: 0.0)
    import gateway.service.supervisor as module

    closing, runs = asyncio.Event(), []

    async def writer() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")
        await closing.wait()

    module_base, module.RETRY_BASE = module.RETRY_BASE, 0.01
    try:
        task = supervisor.owned("outbox-writer", writer, closing.is_set)
        for _ in range(200):
            if len(runs) == 2:
                break
            await asyncio.sleep(0.01)
        assert runs == [1, 1]
        assert supervisor.health["outbox-writer"].failures == 1
        assert supervisor.healthy  # running again
        await supervisor.stop()  # the owner ends it, not the supervisor
        assert not task.done()
        assert supervisor.health["outbox-writer"].state is TaskState.RUNNING
        closing.set()
        await asyncio.wait_for(task, 5)
        assert supervisor.health["outbox-writer"].state is TaskState.STOPPED
        assert runs == [1, 1]  # returning once finished is an end, not a failure
    finally:
        module.RETRY_BASE = module_base
        task.cancel()


# ---- fleet summary -----------------------------------------------------------------------------------------------


def test_percentiles_and_the_fleet_summary() -> None:
    values = [i / 1000 for i in range(1, 101)]
    assert percentile(values, 50) == 0.05
    assert percentile(values, 99) == 0.099
    assert percentile([], 99) == 0.0
    summary = summarize(3, 2, 100, [0.002, 0.004, 0.010])
    assert summary.latency_ms["max"] == pytest.approx(10.0)
    assert "2 of 3 sensors connected; 100 readings acknowledged" in summary.sentence()


def test_check_shows_the_connection_budget(tmp_path: Path) -> None:
    from gateway import checks
    from gateway.checks import Status
    from gateway.cli.check import _capacity

    capped = checks.connection_budget(connection_budget(10_000, Resources(1024)))
    assert capped.status is Status.WARN
    assert "capped from 10000 to 896 by open_files" in capped.detail
    fits = checks.connection_budget(connection_budget(100, Resources(1024)))
    assert fits.status is Status.OK
    result, guard = _capacity(parse_config('hostname = "gw.local"\n[limits]\nmax_connections = 50\nmemory = "128M"\n',  # type: ignore[arg-type]
                                           source=tmp_path / "c.toml"))
    assert result.detail.startswith("max_connections 50 fits")
    assert guard.status is Status.OK
    assert "against 128 MiB ([limits] memory)" in guard.detail


@pytest.mark.parametrize(("resources", "status", "says"), [
    (Resources(1024), "WARN", "no memory limit"),
    (Resources(1024, 256 * MIB, "[limits] memory"),
     "OK", "measures its own anonymous memory against 256 MiB ([limits] memory) every 0.25 s: refuses new "
           "devices at 90%, also holds their reads at 93%"),
    (Resources(1024, 256 * MIB, "cgroup v1 memory.limit_in_bytes"), "OK", "its own anonymous memory"),
    (Resources(1024, 256 * MIB, "cgroup v2 memory.max", Path("/sys/fs/cgroup/system.slice/edgegate.service")),
     "OK", "the cgroup /sys/fs/cgroup/system.slice/edgegate.service (usage less its page cache, sockets included)"),
])
def test_check_names_what_the_memory_guard_watches(resources: Resources, status: str, says: str) -> None:
    from gateway import checks
    from gateway.checks import Status

    result = checks.memory_guard(resources)
    assert result.status is Status[status]
    assert says in result.detail


def test_alembic_chatter_is_debug(tmp_path: Path) -> None:
    import io
    import sys as system

    from gateway import logs

    saved, root = system.stderr, logging.getLogger()
    handlers, level = list(root.handlers), root.level
    system.stderr = buffer = io.StringIO()
    try:
        logs.configure_logging("INFO")
        logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
        logging.getLogger("edgegate").info("kept")
        assert buffer.getvalue().count("\n") == 1
        logs.configure_logging("DEBUG")
        logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 0001_cache")
        assert "DEBUG alembic.runtime.migration: Running upgrade" in buffer.getvalue()
    finally:
        system.stderr = saved
        root.handlers[:] = handlers
        root.setLevel(level)
