"""`edgegate run` as a service: sd_notify, /healthz and /metrics, supervised tasks under a real fault,
SIGHUP reload, one-line start failures, log lines a client cannot forge, `status` as a probe."""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from gateway.pki import CA, self_signed_device_cert
from gateway.service.endpoint import MAX_CLIENTS
from tests.certmatrix import build as build_matrix
from tests.clients import DeviceFiles, PahoDevice
from tests.gatewayproc import HOSTNAME
from tests.hubproc import REPO, HubProcess
from tests.serviceproc import FakeNotifySocket, ServiceGateway

pytestmark = pytest.mark.integration

HEALTH = '[health]\nlisten = "127.0.0.1:0"\n'


def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    with HubProcess.start(tmp_path / "hub") as running:
        yield running


def served_cert(port: int, root: Path) -> x509.Certificate:
    """The leaf a device sees on a new connection (verified against the trust bundle)."""
    ctx = ssl.create_default_context(cafile=str(root))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_notify_socket_sees_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    notify = FakeNotifySocket(tmp_path / "notify.sock")
    try:
        gw = ServiceGateway.launch(tmp_path / "gw", None, env={"NOTIFY_SOCKET": str(notify.path),
                                                               "WATCHDOG_USEC": "1000000"})
        notify.wait_for("READY=1")
        assert f"MAINPID={gw.proc.pid}" in notify.fields()  # type: ignore[union-attr]
        notify.wait_for("WATCHDOG=1")
        assert not [f for f in notify.fields() if f == "STOPPING=1"]
        assert gw.stop() == 0
        notify.wait_for("STOPPING=1")
        fields = notify.fields()
        assert fields.index("READY=1") < fields.index("WATCHDOG=1") < fields.index("STOPPING=1")
    finally:
        notify.close()


def test_no_notify_socket_no_messages_and_still_ready(tmp_path: Path) -> None:
    # The negative control: without NOTIFY_SOCKET nothing is sent, and the gateway runs as before.
    notify = FakeNotifySocket(tmp_path / "notify.sock")
    try:
        gw = ServiceGateway.launch(tmp_path / "gw", None)
        assert gw.stop() == 0
        time.sleep(0.3)
        assert notify.messages == []
    finally:
        notify.close()


def test_metrics_parse_with_prometheus_client_and_healthz_is_ok(tmp_path: Path, hub: HubProcess) -> None:
    gw = ServiceGateway.launch(tmp_path / "gw", hub, extra=HEALTH)
    try:
        gw.wait_synced()
        cert = gw.register_self_signed("temp-1")
        wait_for(lambda: gw.status().get("sync", {}).get("cached_devices") == 1, what="device cached")  # type: ignore[union-attr]
        dev = PahoDevice(gw.port, gw.root, "temp-1", DeviceFiles.write(cert, tmp_path, "temp-1"))
        assert dev.connect() == 0
        assert dev.publish("devices/temp-1/messages/events/", b"21.5")
        status, body = gw.get("/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert samples[("edgegate_connected_devices", ())] == 1
        assert samples[("edgegate_auth_accepted_total", ())] >= 1
        assert families["edgegate_auth_accepted"].type == "counter"
        assert ("edgegate_max_connections", ()) in samples
        assert samples[("edgegate_server_cert_days_left", ())] > 1
        assert samples[("edgegate_task_up", (("task", "forwarder"),))] == 1
        for task in ("outbox-writer", "outbox-expiry", "registry-sync", "broker-broadcast", "broker-session-expiry"):
            assert samples[("edgegate_task_up", (("task", task),))] == 1, task  # every long-running task
        assert samples[("process_resident_memory_bytes", ())] > 10 * 1024 * 1024
        assert ("edgegate_hub_state", (("state", "online"),)) in samples
        status, body = gw.get("/healthz")
        assert status == 200, body
        assert b'"healthy": true' in body
        status, _ = gw.get("/nothing-here")
        assert status == 404
        dev.close()
    finally:
        assert gw.stop() == 0


def test_a_full_disk_fails_the_status_writer_visibly_and_it_recovers(tmp_path: Path) -> None:
    """ENOSPC under the status writer: logged once with its cause, counted, /healthz 503 naming it; space
    back -> status.json updates again without a restart; SIGTERM still exits 0 and closes the outbox."""
    state = tmp_path / "gw" / "state"
    state.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=False,
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): no small real filesystem to fill")
    try:
        # The state dir (status.json, PKI) is the small filesystem; the database is elsewhere, so the
        # fault is the status writer's alone.
        db = tmp_path / "db"
        db.mkdir()
        gw = ServiceGateway.launch(tmp_path / "gw", None,
                                   extra=HEALTH + f'\n[storage]\nurl = "sqlite:///{db}/edgegate.db"\n')
        status_file = gw.state_dir / "status.json"
        wait_for(status_file.exists, what="status.json")
        wait_for(lambda: gw.get("/healthz")[0] == 200, what="healthy")
        filler = state / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=100"], capture_output=True,
                       check=False)
        wait_for(lambda: gw.get("/healthz")[0] == 503, what="/healthz to turn unhealthy")
        _code, body = gw.get("/healthz")
        assert b'"status-writer"' in body
        assert b"No space left on device" in body
        time.sleep(3)  # several retries
        failures = [line for line in gw.log().splitlines() if "status-writer failed" in line]
        assert len(failures) == 1, failures  # logged once, not once per retry
        _, metrics = gw.get("/metrics")
        assert re.search(rb'edgegate_task_failures_total\{task="status-writer"\} [1-9]', metrics)
        filler.unlink()
        before = status_file.stat().st_mtime_ns
        wait_for(lambda: gw.get("/healthz")[0] == 200, timeout=90, what="recovery")
        wait_for(lambda: status_file.stat().st_mtime_ns != before, what="status.json to update again")
        assert "status-writer recovered" in gw.log()
        assert gw.stop() == 0
        assert "stopped" in gw.log()
        assert "Traceback" not in gw.log()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_sighup_applies_log_level_and_a_renewed_server_cert_without_dropping_devices(
        tmp_path: Path, hub: HubProcess) -> None:
    gw = ServiceGateway.launch(tmp_path / "gw", hub, extra='[log]\nlevel = "INFO"\n', args=())
    try:
        gw.wait_synced()
        cert = gw.register_self_signed("temp-1")
        wait_for(lambda: gw.status().get("sync", {}).get("cached_devices") == 1, what="device cached")  # type: ignore[union-attr]
        dev = PahoDevice(gw.port, gw.root, "temp-1", DeviceFiles.write(cert, tmp_path, "temp-1"))
        assert dev.connect() == 0
        old = served_cert(gw.port, gw.root)
        pki = gw.state_dir / "pki"
        edge_ca = CA.load(pki / "edge-ca.pem", pki / "edge-ca.key")
        renewed = edge_ca.issue_server_cert(HOSTNAME, "127.0.0.1", days=20)
        renewed.private_key_pem.write_to_path(pki / "server" / "server.key", private=True)
        (pki / "server" / "server.pem").write_bytes(renewed.fullchain_pem().bytes)
        assert served_cert(gw.port, gw.root).serial_number == old.serial_number  # nothing changes before SIGHUP
        assert "DEBUG" not in gw.log()
        gw.config_path.write_text(gw.config_path.read_text().replace('level = "INFO"', 'level = "DEBUG"'))

        gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        gw.wait_log("SIGHUP: reloaded config and certificates: applied log.level")
        assert served_cert(gw.port, gw.root).serial_number == renewed.cert.serial_number
        assert gw.proc.poll() is None  # type: ignore[union-attr]
        # The device connected before the reload is still there and still acknowledged.
        assert not dev.disconnected.is_set()
        assert dev.publish("devices/temp-1/messages/events/", b"after reload")
        dev.close()
        wait_for(lambda: " DEBUG " in gw.log(), what="a DEBUG line after the reload")

        # A setting that needs a restart is named as such.
        gw.config_path.write_text(gw.config_path.read_text() + '\n[outbox]\nmax_messages = 500000\n')
        gw.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        gw.wait_log("needs a restart (systemctl restart edgegate): outbox")
    finally:
        assert gw.stop() == 0


def test_a_port_in_use_is_one_line_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(f'hostname = "{HOSTNAME}"\nstate_dir = "{tmp_path / "state"}"\n'
                          f'[listener]\nbind = "127.0.0.1"\nport = {port}\n')
        done = subprocess.run([sys.executable, "-m", "gateway.cli.main", "run", "-c", str(config)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("edgegate:")]
    assert f"cannot listen on 127.0.0.1:{port}: the address is in use" in line
    assert "[listener] port" in line


def test_status_exits_non_zero_when_not_running_and_spots_a_stale_pid(tmp_path: Path) -> None:
    gw = ServiceGateway.launch(tmp_path / "gw", None)

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli.main", "status", "-c", str(gw.config_path)],
                              cwd=REPO, capture_output=True, text=True, timeout=60, check=False)

    wait_for(lambda: (gw.state_dir / "status.json").exists(), what="status.json")
    running = status()
    assert running.returncode == 0, running.stdout
    assert "gateway      running" in running.stdout
    gw.kill()  # kill -9: status.json stays behind, fresh, naming a dead pid
    stale = status()
    assert stale.returncode == 3
    assert "is gone: stale status" in stale.stdout


CONTROL = "\n2026-01-01T00:00:00Z ERROR edgegate: forged line\r\x1b[31mred\x1b[0m\x07\u2028end"


def test_client_supplied_strings_cannot_forge_log_lines(tmp_path: Path, hub: HubProcess) -> None:
    """Every client id of the certificate matrix, plus control characters, dialled by a device the gateway
    refuses: each rejection is one line, and nothing a client sent starts a line or reaches the terminal raw."""
    gw = ServiceGateway.launch(tmp_path / "gw", hub, args=("--log-level", "INFO"))
    try:
        gw.wait_synced()
        stranger = DeviceFiles.write(self_signed_device_cert("stranger"), tmp_path, "stranger")
        client_ids = sorted({row.client_id for row in build_matrix().rows if row.client_id})[:12]
        for n, base in enumerate(client_ids):
            client_id = f"{base}{CONTROL}{n}"
            dev = PahoDevice(gw.port, gw.root, client_id, stranger,
                             username=f"{HOSTNAME}/{client_id}/?api-version=2021-04-12")
            assert dev.connect() != 0  # refused: not a device id, not a registered device
            dev.close()
        wait_for(lambda: gw.log().count("rejected device=") >= 5, what="rejection lines")
    finally:
        gw.stop()
    text = gw.log()
    lines = text.splitlines()
    assert not [ln for ln in lines if ln.startswith(("2026-01-01", "\r", "end", "red"))]
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\u2028" not in text
    assert "\r" not in text
    assert any("\\x0a2026-01-01T00:00:00Z ERROR edgegate: forged line\\x0d\\x1b[31mred" in ln for ln in lines)
    # Every line is ours: it starts with a timestamp (or is a traceback's continuation, of which there are none).
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [A-Z]+ ", ln) for ln in lines), \
        [ln for ln in lines if not re.match(r"\d{4}-", ln)][:5]


def test_out_of_descriptors_fails_the_status_writer_visibly_and_it_recovers(tmp_path: Path) -> None:
    """EMFILE: the gateway's open-files limit is lowered under it (prlimit --pid) to what it holds, so every
    new descriptor fails; the status writer's failure is one line with its cause, it recovers when the
    limit is back, SIGTERM exits 0. Local clients cannot do the same through the health endpoint."""
    gw = ServiceGateway.launch(tmp_path / "gw", None, extra=HEALTH, args=("--log-level", "INFO"))
    assert gw.proc is not None
    pid = gw.proc.pid
    status_file = gw.state_dir / "status.json"
    wait_for(lambda: gw.get("/healthz")[0] == 200, what="healthy")
    assert gw.health is not None

    def open_fds() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    base = open_fds()
    hogs = [socket.create_connection(gw.health, timeout=10) for _ in range(200)]  # type: ignore[arg-type]
    time.sleep(1)
    assert open_fds() <= base + MAX_CLIENTS + 4  # the endpoint refuses past MAX_CLIENTS
    for hog in hogs:
        hog.close()
    # On a busy machine the gateway closes its side of the hogs a while later: limit it to what it holds
    # once they are gone, or the descriptors they free leave room and nothing ever fails.
    wait_for(lambda: open_fds() <= base + 2, timeout=60, what="the health endpoint to close the hogs")

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the gateway raised its soft limit to this hard one

    def lowest_free_fd() -> int:
        # RLIMIT_NOFILE bounds a new descriptor's *number*, and the kernel hands out the lowest free one: a hole
        # left below the count (a hog closed while a later descriptor stays open) would still be handed out
        # under a limit of "how many it holds". The limit that refuses every new descriptor is the lowest hole.
        used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
        return next(n for n in itertools.count() if n not in used)

    limit = [hard]

    def squeezed() -> bool:
        # The limit follows what the gateway holds right now, and only ever goes down: a descriptor it lets go
        # of (a late hog, an idle keep-alive connection closed, one open for an instant when it was listed)
        # must not leave room, or on a busy machine nothing ever fails.
        limit[0] = min(limit[0], lowest_free_fd())
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit[0]}:{hard}"], check=True)
        return "status-writer failed" in gw.log()

    try:
        wait_for(squeezed, timeout=30, what="the status writer to fail")
    finally:
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={hard}:{hard}"], check=True)
    failure = [line for line in gw.log().splitlines() if "status-writer failed" in line]
    assert len(failure) == 1
    assert "Too many open files" in failure[0]
    wait_for(lambda: "status-writer recovered" in gw.log(), timeout=90, what="recovery")
    before = status_file.stat().st_mtime_ns
    wait_for(lambda: status_file.stat().st_mtime_ns != before, what="status.json to update again")
    assert gw.get("/healthz")[0] == 200
    assert gw.stop() == 0
    assert "Traceback" not in gw.log()


def test_under_journald_lines_carry_a_priority_and_no_timestamp(tmp_path: Path) -> None:
    """systemd connects stderr to the journal and says so in JOURNAL_STREAM=dev:inode."""
    (tmp_path / "gw").mkdir()
    log = tmp_path / "gw" / "gateway.log"
    log.touch()
    st = log.stat()
    gw = ServiceGateway.launch(tmp_path / "gw", None, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                               args=("--log-level", "INFO"))
    assert gw.stop() == 0
    lines = gw.log().splitlines()
    assert lines
    assert all(re.match(r"<[2-7]>[A-Z]+ edgegate", ln) for ln in lines), lines[:5]
    assert any(ln.startswith("<4>WARNING edgegate") for ln in lines)  # the quickstart warning
    assert any(ln.startswith("<6>INFO edgegate: listening on") for ln in lines)


def test_json_log_format(tmp_path: Path) -> None:
    gw = ServiceGateway.launch(tmp_path / "gw", None, args=("--log-format", "json"))
    assert gw.stop() == 0
    entries = [json.loads(ln) for ln in gw.log().splitlines()]
    assert {"ts", "level", "logger", "message"} <= set(entries[0])
    assert any(e["message"] == "stopped" for e in entries)


def test_a_read_only_state_dir_is_one_line_with_the_fix(tmp_path: Path) -> None:
    """What ProtectSystem=strict without ReadWritePaths= does to the state dir: EROFS at the first write."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(readonly)], check=False,
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        config = tmp_path / "config.toml"
        config.write_text(f'hostname = "{HOSTNAME}"\nstate_dir = "{readonly / "state"}"\n'
                          '[listener]\nbind = "127.0.0.1"\nport = 0\n')
        done = subprocess.run([sys.executable, "-m", "gateway.cli.main", "run", "-c", str(config)], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
    finally:
        subprocess.run(["umount", "-l", str(readonly)], check=False)
    assert done.returncode in (1, 2), done.stderr  # 2 if the config check already sees it
    assert "Traceback" not in done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("edgegate:")]
    assert "Read-only file system" in line or "not writable" in line
