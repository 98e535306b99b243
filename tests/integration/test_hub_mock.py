"""hub-mock as a real process over real mutual TLS: registry API, deltas, long polls, ingest, C2D, faults."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from gateway.pki import CA, IssuedCert, self_signed_device_cert, thumbprint_sha256
from hub_mock.adminclient import AdminError
from tests.hubproc import HubProcess, run_cli

pytestmark = pytest.mark.integration

HOSTNAME = "hub.local"
THUMB_A = "aa" * 32
THUMB_B = "bb" * 32


def write_identity(issued: IssuedCert, directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert = issued.fullchain_pem().write_to_path(directory / f"{name}.pem")
    key = issued.private_key_pem.write_to_path(directory / f"{name}.key", private=True)
    return cert, key


@dataclass
class Gateway:
    """A gateway's side of the API: its id and its mutual-TLS context (trusting the hub root only)."""

    gateway_id: str
    ctx: ssl.SSLContext
    hub: HubProcess

    async def call(
        self,
        method: str,
        path: str,
        *,
        as_gateway: str | None = None,
        body: Any = None,
        client_timeout: float = 60,
        server_hostname: str | None = HOSTNAME,
        **params: Any,
    ) -> tuple[int, Any]:
        url = f"{self.hub.api_url}/gateways/{as_gateway or self.gateway_id}{path}"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=client_timeout)) as session,
            session.request(
                method,
                url,
                ssl=self.ctx,
                server_hostname=server_hostname,
                json=body,
                params={k: str(v) for k, v in params.items()},
            ) as response,
        ):
            return response.status, await response.json()

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kwargs)


class Gateways:
    """Registers fresh gateways (self-signed identity certs) so each test owns its device scope."""

    def __init__(self, hub: HubProcess, directory: Path) -> None:
        self.hub, self.directory = hub, directory

    def new(self, prefix: str) -> Gateway:
        gateway_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
        identity = self_signed_device_cert(gateway_id)
        cert, key = write_identity(identity, self.directory, gateway_id)
        self.hub.admin.add_gateway(gateway_id, cert_pem=identity.cert_pem.bytes.decode())
        return Gateway(gateway_id, self.hub.client_context(cert, key), self.hub)


@pytest.fixture(scope="module")
def gateway_ca() -> CA:
    return CA.create_root("gateway identity CA")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, gateway_ca: CA) -> Iterator[HubProcess]:
    work = tmp_path_factory.mktemp("hub")
    ca_file = gateway_ca.cert_pem.write_to_path(work / "gateway-ca.pem")
    with HubProcess.start(work / "hub", hostname=HOSTNAME, gateway_cas=[ca_file]) as process:
        yield process


@pytest.fixture(scope="module")
def gateways(hub: HubProcess, tmp_path_factory: pytest.TempPathFactory) -> Gateways:
    return Gateways(hub, tmp_path_factory.mktemp("identities"))


async def wait_until(condition: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def seq(hub: HubProcess) -> int:
    return int(hub.admin.health()["sequence"])


# -- init, TLS both ways -------------------------------------------------------------------------------


def test_init_writes_hub_root_server_cert_and_private_key_0600(tmp_path: Path) -> None:
    done = run_cli("init", "--dir", str(tmp_path / "h"), "--hostname", "hub.example.net")
    assert done.returncode == 0, done.stderr
    root_path = Path(done.stdout.strip())
    assert root_path == tmp_path / "h" / "hub-root.pem"
    assert stat.S_IMODE(os.stat(tmp_path / "h" / "server.key").st_mode) == 0o600
    root = x509.load_pem_x509_certificate(root_path.read_bytes())
    server = x509.load_pem_x509_certificates((tmp_path / "h" / "server.pem").read_bytes())[0]
    assert server.issuer == root.subject
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) >= {"hub.example.net", "localhost"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    again = run_cli("init", "--dir", str(tmp_path / "h"), "--hostname", "hub.example.net")
    assert again.returncode == 2
    assert "--force" in again.stderr


async def test_gateway_verifies_hub_cert_against_hub_root_and_name(
    gateways: Gateways, hub: HubProcess, tmp_path: Path
) -> None:
    gw = gateways.new("tls")
    assert (await gw.get("/cas"))[0] == 200  # by name: hub.local
    assert (await gw.get("/cas", server_hostname=None))[0] == 200  # by the IP SAN 127.0.0.1

    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await gw.get("/cas", server_hostname="other.local")  # negative control: wrong name

    stranger_root = CA.create_root("not the hub root").cert_pem.write_to_path(tmp_path / "stranger.pem")
    identity = self_signed_device_cert(gw.gateway_id)
    cert, key = write_identity(identity, tmp_path, "id")
    wrong_root = Gateway(gw.gateway_id, hub.client_context(cert, key, root=stranger_root), hub)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await wrong_root.get("/cas")  # negative control: wrong root


async def test_hub_accepts_only_the_registered_identity(
    gateways: Gateways, hub: HubProcess, gateway_ca: CA, tmp_path: Path
) -> None:
    own = gateways.new("own")
    other = gateways.new("other")
    assert (await own.get("/devices"))[0] == 200

    status, body = await other.get("/devices", as_gateway=own.gateway_id)
    assert (status, body["reason"]) == (401, "thumbprint_mismatch")
    assert own.gateway_id in body["message"]

    status, body = await own.get("/devices", as_gateway="never-registered")
    assert (status, body["reason"]) == (401, "unknown_gateway")

    # An identity cert chaining to a --gateway-ca file, registered by its SHA-1 thumbprint (colon form).
    issued = gateway_ca.issue_identity_cert("ca-gw")
    hub.admin.add_gateway(
        "ca-gw", thumbprint=":".join(f"{b:02X}" for b in bytes.fromhex(issued.thumbprint_sha1))
    )
    cert, key = write_identity(issued, tmp_path, "ca-gw")
    assert (await Gateway("ca-gw", hub.client_context(cert, key), hub).get("/devices"))[0] == 200

    # A certificate the hub does not trust at all never gets past the TLS handshake.
    rogue = self_signed_device_cert("rogue")
    cert, key = write_identity(rogue, tmp_path, "rogue")
    with pytest.raises(aiohttp.ClientError):
        await Gateway("rogue", hub.client_context(cert, key), hub).get("/devices")
    no_cert = ssl.create_default_context(cafile=str(hub.hub_root))
    with pytest.raises(aiohttp.ClientError):
        await Gateway(own.gateway_id, no_cert, hub).get("/devices")


# -- device scope, deltas, long polls ------------------------------------------------------------------


async def test_full_scope_is_paged_in_device_id_order(gateways: Gateways, hub: HubProcess) -> None:
    gw, neighbour = gateways.new("paged"), gateways.new("neighbour")
    for name in ["d5", "d1", "d7", "d3", "d2", "d6", "d4"]:
        hub.admin.add_device(f"{gw.gateway_id}-{name}", parent=gw.gateway_id, thumbprint=THUMB_A)
    hub.admin.add_device(f"{neighbour.gateway_id}-d0", parent=neighbour.gateway_id, ca=True)
    latest = seq(hub)

    pages, after = [], None
    while True:
        params = {"limit": 3} | ({"after": after} if after else {})
        status, page = await gw.get("/devices", **params)
        assert status == 200
        assert page["sequence"] == latest
        pages.append([d["device_id"].rsplit("-", 1)[1] for d in page["devices"]])
        after = page["next"]
        if after is None:
            break
    assert pages == [["d1", "d2", "d3"], ["d4", "d5", "d6"], ["d7"]]
    first = (await gw.get("/devices", limit=1))[1]["devices"][0]
    assert first == {
        "device_id": f"{gw.gateway_id}-d1",
        "status": "enabled",
        "auth_type": "selfSigned",
        "primary_thumbprint": THUMB_A,
        "secondary_thumbprint": None,
        "parent": gw.gateway_id,
        "generation": first["generation"],
    }


async def test_changes_since_a_seq_include_devices_that_left_the_scope(
    gateways: Gateways, hub: HubProcess
) -> None:
    gx, gy = gateways.new("gx"), gateways.new("gy")
    a = hub.admin
    for name in ("d1", "d2", "d3", "d4"):
        a.add_device(name + gx.gateway_id, parent=gx.gateway_id, thumbprint=THUMB_A)
    since = seq(hub)
    a.disable("d1" + gx.gateway_id)
    a.update_device("d2" + gx.gateway_id, parent=gy.gateway_id)  # moved out of gx, into gy
    a.remove_device("d3" + gx.gateway_id)
    a.add_device("d5" + gx.gateway_id, parent=gx.gateway_id, ca=True)
    a.add_device("e1" + gy.gateway_id, parent=gy.gateway_id, ca=True)  # not gx's business
    a.update_device("d4" + gx.gateway_id, primary_thumbprint=THUMB_B)
    a.update_device("d4" + gx.gateway_id, secondary_thumbprint=THUMB_A)
    latest = seq(hub)

    status, page = await gx.get("/changes", since=since)
    assert status == 200
    assert (page["sequence"], page["more"]) == (latest, False)
    assert [(c["device_id"][:2], c["op"]) for c in page["changes"]] == [
        ("d1", "upsert"),
        ("d2", "delete"),
        ("d3", "delete"),
        ("d5", "upsert"),
        ("d4", "upsert"),
    ]
    by_id = {c["device_id"][:2]: c for c in page["changes"]}
    assert by_id["d1"]["device"]["status"] == "disabled"
    assert by_id["d2"]["device"] is None
    assert by_id["d4"]["device"]["secondary_thumbprint"] == THUMB_A
    assert by_id["d4"]["seq"] == by_id["d4"]["device"]["generation"] == latest

    status, page_y = await gy.get("/changes", since=since)
    assert [(c["device_id"][:2], c["op"]) for c in page_y["changes"]] == [("d2", "upsert"), ("e1", "upsert")]

    walked, cursor = [], since
    while True:
        page = (await gx.get("/changes", since=cursor, limit=2))[1]
        walked += [c["device_id"][:2] for c in page["changes"]]
        cursor = page["sequence"]
        if not page["more"]:
            break
    assert sorted(walked) == ["d1", "d2", "d3", "d4", "d5"]
    assert cursor == latest
    assert (await gx.get("/changes", since=latest))[1] == {"changes": [], "sequence": latest, "more": False}

    status, body = await gx.get("/changes", since=latest + 1000)
    assert (status, body["reason"]) == (409, "sequence_ahead")


async def test_long_poll_wakes_on_an_admin_write_in_its_scope(gateways: Gateways, hub: HubProcess) -> None:
    gw, other = gateways.new("lp"), gateways.new("lp-other")
    device = "sensor" + gw.gateway_id
    hub.admin.add_device(device, parent=gw.gateway_id, thumbprint=THUMB_A)
    since = seq(hub)

    started = time.monotonic()
    status, page = await gw.get("/changes/wait", since=since, timeout=0.3)
    assert (status, page["changes"]) == (200, [])
    assert time.monotonic() - started >= 0.3  # negative control: nothing to say, it waited

    waiting = hub.admin.health()["waiting"]
    # The hub's longest wait, and a client that outlasts it: only a wake answers the poll within the 60 s below.
    poll = asyncio.create_task(gw.get("/changes/wait", since=since, timeout=120, client_timeout=130))
    await wait_until(lambda: hub.admin.health()["waiting"] > waiting)
    await asyncio.to_thread(hub.admin.add_device, "x" + other.gateway_id, parent=other.gateway_id, ca=True)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(poll), 0.3)  # another scope's write does not answer it

    await asyncio.to_thread(hub.admin.disable, device)
    # How fast the wake is belongs in bench/ (a loaded machine takes its time); that it wakes at all is the
    # fault this catches: a poll left to its timeout would still be parked 60 s from now.
    status, page = await asyncio.wait_for(poll, 60)
    assert status == 200
    assert [(c["device_id"], c["device"]["status"]) for c in page["changes"]] == [(device, "disabled")]


async def test_device_by_id_is_404_outside_the_scope(gateways: Gateways, hub: HubProcess) -> None:
    gw, other = gateways.new("byid"), gateways.new("byid-other")
    hub.admin.add_device("mine" + gw.gateway_id, parent=gw.gateway_id, thumbprint=THUMB_A)
    hub.admin.add_device("theirs" + gw.gateway_id, parent=other.gateway_id, thumbprint=THUMB_A)

    status, device = await gw.get("/devices/mine" + gw.gateway_id)
    assert (status, device["primary_thumbprint"]) == (200, THUMB_A)
    status_theirs, theirs = await gw.get("/devices/theirs" + gw.gateway_id)
    status_none, nobody = await gw.get("/devices/nobody" + gw.gateway_id)
    assert status_theirs == status_none == 404
    assert theirs["reason"] == nobody["reason"] == "not_found"
    # Another scope's device reads exactly like a device that does not exist: nothing leaks.
    assert theirs["message"].replace("theirs", "nobody") == nobody["message"]


async def test_cas_lists_registered_cas(gateways: Gateways, hub: HubProcess) -> None:
    gw = gateways.new("cas")
    ca = CA.create_root("device CA")
    name = "devices-" + gw.gateway_id
    hub.admin.add_ca(name, ca.cert_pem.bytes.decode())
    status, body = await gw.get("/cas")
    assert status == 200
    mine = [c for c in body["cas"] if c["name"] == name]
    assert len(mine) == 1
    assert x509.load_pem_x509_certificate(mine[0]["pem"].encode()) == ca.cert
    with pytest.raises(AdminError) as refused:
        hub.admin.add_ca(name + "-again", ca.cert_pem.bytes.decode())
    assert refused.value.status == 409


async def test_ca_changes_travel_on_every_gateways_feed(gateways: Gateways, hub: HubProcess) -> None:
    gw = gateways.new("cafeed")
    name = "feed-" + gw.gateway_id
    first, second = CA.create_root("feed CA"), CA.create_root("feed CA, renewed")

    def mine(page: dict[str, Any]) -> list[str]:
        return [c["thumbprint"] for c in page["cas"] if c["name"] == name]

    since = seq(hub)
    parked = hub.admin.health()["waiting"]
    waiting = asyncio.create_task(gw.get("/changes/wait", since=since, timeout=120, client_timeout=130))
    await wait_until(lambda: hub.admin.health()["waiting"] > parked)  # parked, so the CA change has to wake it
    hub.admin.add_ca(name, first.cert_pem.bytes.decode())
    status, page = await asyncio.wait_for(waiting, 60)  # a CA change answers a long poll like a device change
    assert status == 200
    assert page["changes"] == []
    assert mine(page) == [thumbprint_sha256(first.cert)]
    assert "cas" not in (await gw.get("/changes", since=page["sequence"]))[1]  # no CA change, no list

    since = page["sequence"]
    hub.admin.replace_ca(name, second.cert_pem.bytes.decode())
    assert mine((await gw.get("/changes", since=since))[1]) == [thumbprint_sha256(second.cert)]
    hub.admin.remove_ca(name)
    assert mine((await gw.get("/changes", since=since))[1]) == []
    with pytest.raises(AdminError) as missing:
        hub.admin.remove_ca(name)
    assert missing.value.status == 404


# -- ingest, C2D -----------------------------------------------------------------------------------


def telemetry(message_id: str, device_id: str, payload: bytes = b'{"t": 21.5}') -> dict[str, Any]:
    return {
        "message_id": message_id,
        "device_id": device_id,
        "enqueued_time": "2026-11-22T14:00:00+01:00",
        "properties": {"unit": "C"},
        "payload_b64": base64.b64encode(payload).decode(),
    }


async def test_ingest_stores_each_message_id_once(gateways: Gateways, hub: HubProcess) -> None:
    gw = gateways.new("ingest")
    device = "temp" + gw.gateway_id
    m1, m2, m3 = (f"{gw.gateway_id}-m{i}" for i in (1, 2, 3))
    status, result = await gw.call(
        "POST",
        "/messages",
        body={"messages": [telemetry(m1, device), telemetry(m2, device), telemetry(m2, device)]},
    )
    assert (status, result) == (200, {"accepted": 2, "duplicates": 1})
    status, result = await gw.call(
        "POST", "/messages", body={"messages": [telemetry(m2, device), telemetry(m3, device, b"\x00\xff")]}
    )
    assert (status, result) == (200, {"accepted": 1, "duplicates": 1})

    stored = hub.admin.messages(device)
    assert stored["total"] == 3
    assert [m["message_id"] for m in stored["messages"]] == [m1, m2, m3]
    assert {m["gateway_id"] for m in stored["messages"]} == {gw.gateway_id}
    assert stored["messages"][0]["enqueued_time"] == "2026-11-22T13:00:00Z"
    assert stored["messages"][0]["properties"] == {"unit": "C"}
    assert base64.b64decode(stored["messages"][2]["payload_b64"]) == b"\x00\xff"

    status, body = await gw.call(
        "POST", "/messages", body={"messages": [{"message_id": "x", "device_id": device}]}
    )
    assert (status, body["reason"]) == (400, "invalid")
    assert "enqueued_time" in body["message"]


async def test_ingest_accepts_twenty_batches_of_500(gateways: Gateways, hub: HubProcess) -> None:
    gw = gateways.new("rate")
    batches = [
        {"messages": [telemetry(f"{gw.gateway_id}-{b}-{i}", f"dev{i % 50}") for i in range(500)]}
        for b in range(20)
    ]
    url = f"{hub.api_url}/gateways/{gw.gateway_id}/messages"
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        for batch in batches:
            async with session.post(url, json=batch, ssl=gw.ctx, server_hostname=HOSTNAME) as response:
                assert (await response.json())["accepted"] == 500
        elapsed = time.monotonic() - started
    # The rate is a figure (printed with -s), never asserted: the suite runs on loaded machines.
    print(f"hub-mock ingest: {10_000 / elapsed:,.0f} msg/s")
    assert hub.admin.messages("dev0")["total"] >= 200


async def test_c2d_send_wait_ack(gateways: Gateways, hub: HubProcess) -> None:
    gw, other = gateways.new("c2d"), gateways.new("c2d-other")
    mine, theirs = "lamp" + gw.gateway_id, "lamp" + other.gateway_id
    hub.admin.add_device(mine, parent=gw.gateway_id, thumbprint=THUMB_A)
    hub.admin.add_device(theirs, parent=other.gateway_id, thumbprint=THUMB_A)

    waiting = hub.admin.health()["waiting"]
    poll = asyncio.create_task(gw.get("/c2d/wait", after=0, timeout=120, client_timeout=130))
    await wait_until(lambda: hub.admin.health()["waiting"] > waiting)
    await asyncio.to_thread(hub.admin.send_c2d, theirs, b"not yours")
    seq_mine = await asyncio.to_thread(hub.admin.send_c2d, mine, b"on", {"kind": "switch"})
    status, answer = await asyncio.wait_for(poll, 60)  # woken by the send: the poll's own timeout is 120 s
    assert status == 200
    assert answer == {
        "messages": [
            {
                "seq": seq_mine,
                "device_id": mine,
                "payload_b64": base64.b64encode(b"on").decode(),
                "properties": {"kind": "switch"},
            }
        ],
        "cursor": seq_mine,
    }

    status, acked = await gw.call("POST", "/c2d/ack", body={"cursor": answer["cursor"]})
    assert (status, acked) == (200, {"acknowledged": 1})
    status, after_ack = await gw.get("/c2d/wait", after=0, timeout=0.2)
    assert after_ack == {"messages": [], "cursor": 0}
    status, theirs_answer = await other.get("/c2d/wait", after=0, timeout=0)
    assert [m["payload_b64"] for m in theirs_answer["messages"]] == [base64.b64encode(b"not yours").decode()]


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_normalizes_thumbprints_and_fails_clearly(hub: HubProcess) -> None:
    gw = f"cli-{uuid.uuid4().hex[:8]}"
    sha1 = "AB:" * 19 + "CD"
    assert hub.cli("gateways", "add", gw, "--thumbprint", sha1).returncode == 0
    added = hub.cli(
        "devices", "add", "cli-dev-" + gw, "--parent", gw, "--thumbprint", "DE:AD:" + "BE:EF:" * 14 + "00:11"
    )
    assert added.returncode == 0, added.stderr
    listed = hub.cli("devices", "list", "--parent", gw, "--json")
    assert [d["primary_thumbprint"] for d in json.loads(listed.stdout)] == ["dead" + "beef" * 14 + "0011"]
    assert [g["primary_thumbprint"] for g in hub.admin.gateways() if g["gateway_id"] == gw] == [
        "ab" * 19 + "cd"
    ]

    unknown = hub.cli("devices", "add", "orphan-" + gw, "--parent", "no-such-gw", "--ca")
    assert unknown.returncode == 1
    assert "unknown_gateway" in unknown.stderr
    both = hub.cli("devices", "add", "x-" + gw, "--parent", gw, "--ca", "--thumbprint", THUMB_A)
    assert both.returncode == 2
    nowhere = run_cli("devices", "list", env={"HUB_MOCK_ADMIN_URL": ""})
    assert nowhere.returncode == 2
    assert "HUB_MOCK_ADMIN_URL" in nowhere.stderr


# -- faults, admin token, shutdown -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, Gateway]]:
    work = tmp_path_factory.mktemp("fault-hub")
    with HubProcess.start(work / "hub", hostname=HOSTNAME, admin_token="s3cret") as process:
        gateway = Gateways(process, work / "ids").new("faults")
        yield process, gateway


async def test_fault_down_refuses_and_up_listens_on_the_same_port(
    fault_hub: tuple[HubProcess, Gateway],
) -> None:
    hub, gw = fault_hub
    port = hub.api_port
    try:
        assert hub.cli("fault", "down").returncode == 0
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await gw.get("/cas")
        assert isinstance(refused.value.os_error, ConnectionRefusedError)
        assert hub.admin.health()["faults"]["mode"] == "down"  # the admin API stays reachable
        assert hub.cli("fault", "up").returncode == 0
        assert (await gw.get("/cas"))[0] == 200
        assert hub.admin.health()["api_port"] == port
    finally:
        hub.admin.fault("clear")


async def test_fault_blackhole_accepts_tcp_and_never_answers(fault_hub: tuple[HubProcess, Gateway]) -> None:
    hub, gw = fault_hub
    try:
        assert hub.cli("fault", "blackhole").returncode == 0
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.api_port)  # TCP is accepted
        writer.write(b"\x16\x03\x01\x00\x05hello")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        writer.close()
        with pytest.raises(TimeoutError):
            await gw.get("/cas", client_timeout=0.5)
    finally:
        hub.admin.fault("clear")
    assert (await gw.get("/cas"))[0] == 200


async def test_fault_error_and_latency(fault_hub: tuple[HubProcess, Gateway]) -> None:
    hub, gw = fault_hub
    try:
        assert hub.cli("fault", "error", "503").returncode == 0
        status, body = await gw.get("/devices")
        assert (status, body["reason"]) == (503, "fault_injected")
        assert hub.cli("fault", "clear").returncode == 0
        assert (await gw.get("/devices"))[0] == 200

        assert hub.cli("fault", "latency", "400").returncode == 0
        started = time.monotonic()
        assert (await gw.get("/devices"))[0] == 200
        assert time.monotonic() - started >= 0.4

        # Clear is shown against a latency the call below cannot outlive (120 s against its 60 s), not by
        # timing a plain call: on a loaded machine a fresh mutual-TLS call can take longer than 0.4 s.
        assert hub.cli("fault", "latency", "120000").returncode == 0
        assert hub.cli("fault", "clear").returncode == 0
        assert (await gw.get("/devices", client_timeout=60))[0] == 200
    finally:
        hub.admin.fault("clear")


def test_admin_api_needs_the_token_when_one_is_set(fault_hub: tuple[HubProcess, Gateway]) -> None:
    hub, _ = fault_hub
    assert hub.admin.health()["status"] == "ok"
    with pytest.raises(AdminError) as refused:
        type(hub.admin)(hub.admin_url).health()
    assert (refused.value.status, refused.value.reason) == (401, "unauthorized")
    denied = run_cli("fault", "clear", "--admin-url", hub.admin_url, env={"HUB_MOCK_ADMIN_TOKEN": "wrong"})
    assert denied.returncode == 1
    assert "unauthorized" in denied.stderr


async def test_sigterm_stops_cleanly_mid_long_poll_and_the_registry_survives(tmp_path: Path) -> None:
    with HubProcess.start(tmp_path / "hub") as hub:
        gw = Gateways(hub, tmp_path / "ids").new("term")
        hub.admin.add_device("kept", parent=gw.gateway_id, thumbprint=THUMB_A)
        poll = asyncio.create_task(gw.get("/changes/wait", since=seq(hub), timeout=120, client_timeout=130))
        await wait_until(lambda: hub.admin.health()["waiting"] == 1)
        # A hub that waited for the poll (120 s) would be killed after 30 s and exit -9: the long poll is cut
        # without timing the shutdown, which a loaded machine can stretch past any small bound.
        assert await asyncio.to_thread(hub.stop, 30) == 0
        with pytest.raises(aiohttp.ClientError):
            await poll
        ports = (hub.api_port, hub.admin_port)
        hub.restart()
        assert (hub.api_port, hub.admin_port) == ports
        status, page = await gw.get("/devices")
        assert status == 200
        assert [d["device_id"] for d in page["devices"]] == ["kept"]


@pytest.mark.postgres
async def test_registry_and_ingest_on_postgresql(tmp_path: Path) -> None:
    url = os.environ.get("EDGEGATE_TEST_PG_URL")
    if not url:
        pytest.skip("EDGEGATE_TEST_PG_URL is not set (make test starts a PostgreSQL server)")
    with HubProcess.start(tmp_path / "hub", storage_url=url) as hub:
        gw = Gateways(hub, tmp_path / "ids").new("pg")
        device = "pg-dev-" + gw.gateway_id
        since = seq(hub)
        hub.admin.add_device(device, parent=gw.gateway_id, thumbprint=THUMB_A)
        status, page = await gw.get("/changes", since=since)
        assert status == 200
        assert [c["device_id"] for c in page["changes"]] == [device]
        batch = {
            "messages": [telemetry(f"{gw.gateway_id}-1", device), telemetry(f"{gw.gateway_id}-1", device)]
        }
        assert (await gw.call("POST", "/messages", body=batch))[1] == {"accepted": 1, "duplicates": 1}
        assert (await gw.call("POST", "/messages", body=batch))[1] == {"accepted": 0, "duplicates": 2}
        assert hub.admin.messages(device)["total"] == 1
