"""The state directory and the outbox's operator commands, with real processes: a read-only state directory
(a real read-only bind mount) is flagged by `edgegate check` and refused by `edgegate run`; a database
lost between two starts is reported loudly; `edgegate outbox list|requeue|drop` on real dead letters,
and a re-queued one reaches the hub; `check` and `status` show what the outbox promises."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.db.engine import open_engine
from gateway.outbox.dead_letters import DeadLetters, NewDeadLetter
from tests.gatewayproc import GatewayProcess
from tests.hubproc import REPO, HubProcess
from tests.integration.test_check import by_check, check
from tests.integration.test_end_to_end import hub_payloads, wait_for

pytestmark = pytest.mark.integration


def edgegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[HubProcess, GatewayProcess]]:
    with HubProcess.start(tmp_path / "hub") as hub:
        gw = GatewayProcess.start(tmp_path / "gw", hub)
        gw.wait_synced()
        gw.stop()  # its state (quickstart PKI, database, outbox) stays
        yield hub, gw


@pytest.fixture
def read_only(stack: tuple[HubProcess, GatewayProcess]) -> Iterator[Path]:
    """The gateway's state directory, bind-mounted read-only over itself."""
    state = stack[1].state_dir
    done = subprocess.run(["mount", "--bind", str(state), str(state)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(state)], capture_output=True, text=True,
                                 check=False)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remount.stderr.strip()}")
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_check_shows_a_writable_state_dir_and_what_the_outbox_promises(
    stack: tuple[HubProcess, GatewayProcess],
) -> None:
    code, results = check(stack[1].config_path)
    assert code == 0, results
    assert by_check(results, "state directory is writable")["status"] == "ok"
    promise = by_check(results, "outbox keeps telemetry")
    assert promise["status"] == "ok"
    assert "for as long as it takes" in promise["detail"]
    assert "survives a power cut" in promise["detail"]


def test_check_warns_about_process_durability_and_shows_a_time_to_live(
    stack: tuple[HubProcess, GatewayProcess],
) -> None:
    gw = stack[1]
    gw.config_path.write_text(gw.config_path.read_text() + '\n[outbox]\ntime_to_live = "2h"\ndurability = "process"\n')
    _, results = check(gw.config_path)
    promise = by_check(results, "outbox keeps telemetry")
    assert promise["status"] == "warning"
    assert "7200 s of queued time" in promise["detail"]
    assert "NOT a power cut" in promise["detail"]


def test_a_read_only_state_dir_is_flagged_by_check_and_refused_at_start(
    stack: tuple[HubProcess, GatewayProcess], read_only: Path
) -> None:
    gw = stack[1]
    code, results = check(gw.config_path)
    assert code == 1
    flagged = by_check(results, "state directory is writable")
    assert flagged["status"] == "error"
    assert "Read-only file system" in flagged["detail"]
    run = edgegate("run", "-c", str(gw.config_path))
    assert run.returncode == 2, run.stderr
    assert "[state_dir]" in run.stderr
    assert "is not writable (Read-only file system)" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_database_lost_between_two_starts_is_reported_loudly(
    stack: tuple[HubProcess, GatewayProcess], loss: str
) -> None:
    gw = stack[1]
    database = gw.state_dir / "edgegate.db"
    for leftover in gw.state_dir.glob("edgegate.db*"):
        leftover.unlink()
    if loss == "emptied":
        database.write_bytes(b"")
    gw.restart()
    try:
        gw.wait_log("STATE LOST")
        assert f"the database {database} held the device cache" in gw.log()
        wait_for(lambda: (gw.state_dir / "status.json").exists(), what="status.json")
        status = edgegate("status", "-c", str(gw.config_path))
        assert "STATE LOST" in status.stdout, status.stdout
    finally:
        assert gw.stop() == 0


def _dead_letter(device_id: str, n: int) -> NewDeadLetter:
    return NewDeadLetter(f"dead{n:028d}", device_id, "telemetry", f"devices/{device_id}/messages/events/", {},
                         f"refused {n}".encode(), 1, time.time(), time.time(), 400, "bad_payload",
                         "the hub could not parse it")


def test_the_outbox_command_lists_requeues_and_drops_dead_letters(stack: tuple[HubProcess, GatewayProcess]) -> None:
    hub, gw = stack
    gw.register_self_signed("dl-sensor")
    engine = open_engine(f"sqlite:///{gw.state_dir / 'edgegate.db'}")
    DeadLetters(engine).add([_dead_letter("dl-sensor", n) for n in range(3)])
    engine.dispose()

    listed = edgegate("outbox", "list", "-c", str(gw.config_path), "--json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert report["total"] == 3
    first, second, third = report["dead_letters"]
    assert (first["status"], first["reason"], first["payload_utf8"]) == (400, "bad_payload", "refused 0")
    text = edgegate("outbox", "list", "-c", str(gw.config_path))
    assert "400 bad_payload: the hub could not parse it" in text.stdout

    assert edgegate("outbox", "requeue", "-c", str(gw.config_path)).returncode != 0  # neither ids nor --all
    requeued = edgegate("outbox", "requeue", "-c", str(gw.config_path), str(first["id"]))
    assert requeued.returncode == 0, requeued.stderr
    dropped = edgegate("outbox", "drop", "-c", str(gw.config_path), str(second["id"]))
    assert dropped.returncode == 0
    assert "1 dead letters dropped" in dropped.stdout
    status = edgegate("status", "-c", str(gw.config_path))
    assert "dead letters 2 refused by the hub for good (1 waiting to be re-queued)" in status.stdout

    gw.restart()  # a stopped gateway re-queues at its next start
    try:
        wait_for(lambda: hub_payloads(hub, "dl-sensor") == [b"refused 0"], timeout=30, what="re-queued at the hub")
        (stored,) = hub.admin.messages("dl-sensor")["messages"]
        assert stored["message_id"] == first["message_id"]
        remaining = json.loads(edgegate("outbox", "list", "-c", str(gw.config_path), "--json").stdout)
        assert [d["id"] for d in remaining["dead_letters"]] == [third["id"]]
    finally:
        assert gw.stop() == 0
