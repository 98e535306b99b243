"""`edgegate demo`: the seed article's transparent gateway, live, from nothing.

It builds the PKI (root -> intermediate -> Edge CA -> server cert for the hostname), starts a real
hub-mock and a real `edgegate run`, registers two TempSensors (one self-signed by thumbprint, one
CA-signed), shows the chain a device verifies, then shows readings arriving at the hub. With
`--offline-drill` the hub goes away for a while: the outbox grows, the sensors keep publishing, and
the backlog drains with nothing lost. A few seconds in, the hub sets a desired `interval` on one
sensor (which follows it and reports it back) and calls the direct method `blink` on the other.
Every part is the real component; nothing is simulated here.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from devices.diagnose import diagnose
from devices.probe import presented_chain
from gateway.pki import CA, load_certs, self_signed_device_cert
from hub_mock.adminclient import AdminClient, AdminError

GATEWAY_ID = "edge-gateway"
HUB_HOSTNAME = "hub.local"
SENSORS = ("TempSensor-thumbprint", "TempSensor-ca")


@dataclass
class DemoOptions:
    directory: Path
    hostname: str = "edgegateway.local"
    duration: float = 0.0  # 0: until Ctrl-C
    offline_drill: bool = False
    drill_after: float = 8.0
    drill_length: float = 12.0
    interval: float = 0.5
    twin_after: float = 2.0  # seconds before the desired-interval change and the method call


@dataclass
class Stack:
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    sensors: list[subprocess.Popen[Any]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in [*self.sensors, *reversed(self.procs)]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.sensors, *self.procs]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _wait_ready(path: Path, proc: subprocess.Popen[bytes], what: str, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start; its log is {log}:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def build_pki(d: Path, hostname: str) -> dict[str, Path]:
    """The seed's chain for the gateway, a device CA for CA-signed sensors, and device certificates."""
    pki = d / "pki"
    root = CA.create_root("Demo Private Root", path_length=2)
    intermediate = root.create_child_ca("Demo Intermediate", path_length=1)
    edge = intermediate.create_child_ca("Demo Edge CA", path_length=0, days=90)
    device_ca = root.create_child_ca("Demo Device CA", path_length=0)
    identity_ca = CA.create_root("Demo Gateway Identity")
    files = {
        "root": root.cert_pem.write_to_path(pki / "root.pem"),
        "edge_ca": edge.chain_pem().write_to_path(pki / "edge-ca.pem"),
        "edge_ca_key": edge.private_key_pem.write_to_path(pki / "edge-ca.key", private=True),
        "device_ca": device_ca.cert_pem.write_to_path(pki / "device-ca.pem"),
    }
    identity = identity_ca.issue_identity_cert(GATEWAY_ID)
    files["identity"] = identity.cert_pem.write_to_path(pki / "identity.pem")
    files["identity_key"] = identity.private_key_pem.write_to_path(pki / "identity.key", private=True)
    thumb = self_signed_device_cert(SENSORS[0])
    signed = device_ca.issue_device_cert(SENSORS[1])
    for name, issued in ((SENSORS[0], thumb), (SENSORS[1], signed)):
        files[f"{name}.cert"] = issued.fullchain_pem().write_to_path(pki / f"{name}.cert.pem")
        files[f"{name}.key"] = issued.private_key_pem.write_to_path(pki / f"{name}.key.pem", private=True)
    files["thumbprint"] = Path(thumb.thumbprint_sha256)
    return files


def start_hub(d: Path, stack: Stack) -> AdminClient:
    hub_dir = d / "hub"
    subprocess.run(_python("hub_mock", "init", "--dir", str(hub_dir), "--hostname", HUB_HOSTNAME),
                   check=True, capture_output=True)
    ready, log = hub_dir / "ready.json", hub_dir / "hub-mock.log"
    proc = subprocess.Popen(
        _python("hub_mock", "run", "-c", str(hub_dir / "hub.toml"), "--port", "0", "--admin-port", "0",
                "--ready-file", str(ready)),
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    stack.procs.append(proc)
    info = _wait_ready(ready, proc, "hub-mock", log)
    admin = AdminClient(info["admin_url"])
    admin.api_port = int(info["api_port"])  # type: ignore[attr-defined]
    return admin


def start_gateway(d: Path, o: DemoOptions, files: dict[str, Path], api_port: int, stack: Stack) -> int:
    config = d / "config.toml"
    config.write_text(
        f'hostname = "{o.hostname}"\nalt_names = ["127.0.0.1"]\ntrust_bundle_cert = "{files["root"]}"\n'
        f'state_dir = "{d / "state"}"\n\n[edge_ca]\ncert = "{files["edge_ca"]}"\npk = "{files["edge_ca_key"]}"\n\n'
        f'[listener]\nbind = "127.0.0.1"\nport = 0\n\n'
        f'[hub]\nhostname = "{HUB_HOSTNAME}"\nurl = "https://127.0.0.1:{api_port}"\ngateway_id = "{GATEWAY_ID}"\n'
        f'identity_cert = "{files["identity"]}"\nidentity_pk = "{files["identity_key"]}"\n'
        f'trust_bundle_cert = "{d / "hub" / "hub-root.pem"}"\n'
    )
    ready, log = d / "gateway-ready.json", d / "gateway.log"
    proc = subprocess.Popen(_python("gateway.cli.main", "run", "-c", str(config), "--ready-file", str(ready)),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    stack.procs.append(proc)
    return int(_wait_ready(ready, proc, "edgegate run", log)["port"])


def chain_report(hostname: str, port: int, root: Path) -> list[str]:
    """What a device sees when it dials the gateway: each certificate by depth, then the verdict."""
    chain = presented_chain("127.0.0.1", port, hostname)
    roots = load_certs(root)
    full = [*chain, *(r for r in roots if r.subject == chain[-1].issuer)] if chain else []
    lines = [f"depth={len(full) - 1 - i} {c.subject.rfc4514_string()}" for i, c in enumerate(reversed(full))]
    verdict = diagnose(hostname, chain, roots, datetime.now(UTC))
    lines.append(f"verify {hostname}: {verdict}")
    lines.append(f"verify other.local: {diagnose('other.local', chain, roots, datetime.now(UTC))}")
    return lines


def start_sensors(d: Path, o: DemoOptions, files: dict[str, Path], port: int, stack: Stack) -> None:
    for name in SENSORS:
        cmd = _python("devices.cli", "--gateway-hostname", o.hostname, "--connect-address", "127.0.0.1", "--port",
                      str(port), "--ca-file", str(files["root"]), "--cert", str(files[f"{name}.cert"]), "--key",
                      str(files[f"{name}.key"]), "--interval", str(o.interval), "--json-log", "--retry-forever")
        stack.sensors.append(subprocess.Popen(cmd, stdout=(d / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
                                              text=True))


def acked_seqs(d: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name in SENSORS:
        log = d / f"{name}.log"
        seqs = []
        for line in log.read_text().splitlines() if log.exists() else []:
            if '"event": "acked"' in line:
                seqs.append(int(json.loads(line)["seq"]))
        out[name] = seqs
    return out


def hub_readings(admin: AdminClient) -> dict[str, list[dict[str, Any]]]:
    readings: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name in SENSORS:
        after = 0
        while True:
            page = admin.messages(name, after=after, limit=1000)
            readings[name] += [json.loads(base64.b64decode(m["payload_b64"])) for m in page["messages"]]
            if not page.get("next"):
                break
            after = page["next"]
    return readings


def gateway_status(d: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((d / "state" / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def twin_step(admin: AdminClient, o: DemoOptions) -> list[str]:
    """Set a desired interval on one sensor and wait for it to report it; call `blink` on the other."""
    sensor, other = SENSORS
    wanted = round(o.interval * 2, 3)
    desired = admin.twins.set_desired(sensor, {"interval": wanted})["properties"]["desired"]
    lines = [f"hub: desired interval = {wanted} s for {sensor} (desired $version {desired['$version']})"]
    deadline = time.monotonic() + 15
    reported: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reported = admin.twins.show(sensor)["properties"]["reported"]
        if reported.get("interval") == wanted:
            lines.append(f"{sensor} (firmware {reported.get('firmware')}) reports interval = {wanted} s: "
                         "the desired change took effect")
            break
        time.sleep(0.2)
    else:
        lines.append(f"{sensor} did not report interval {wanted} s within 15 s (reported: {reported})")
    while True:
        try:
            answer = admin.twins.invoke(other, "blink", {"times": 3}, timeout=10)
        except AdminError as exc:
            if exc.status == 404 and time.monotonic() < deadline:  # not connected yet
                time.sleep(0.3)
                continue
            lines.append(f"hub: direct method blink on {other} failed: {exc}")
            break
        lines.append(f"hub: direct method blink on {other} -> {answer['status']} {json.dumps(answer['payload'])}")
        break
    return lines


def view(admin: AdminClient, d: Path, phase: str, chain: list[str], twin: list[str] | None = None) -> Group:
    readings = hub_readings(admin)
    status = gateway_status(d)
    table = Table(title="Readings arriving at the hub", expand=True)
    for col in ("sensor", "auth", "at hub", "last seq", "temperature", "humidity", "reading time"):
        table.add_column(col)
    for name, auth in zip(SENSORS, ("thumbprint", "CA chain"), strict=True):
        rows = readings.get(name) or []
        last = rows[-1] if rows else {}
        table.add_row(name, auth, str(len(rows)), str(last.get("seq", "-")), f"{last.get('temperature', '-')} °C",
                      f"{last.get('humidity', '-')} %", str(last.get("ts", "-")))
    outbox = status.get("outbox", {})
    sync = status.get("sync", {})
    info = (f"phase: [bold]{phase}[/]   hub: {sync.get('state', '?')}   forwarder: {outbox.get('state', '?')}   "
            f"outbox depth: [bold]{status.get('outbox_depth', '?')}[/]   connected: {status.get('devices', [])}")
    panels: list[Panel | Table] = [Panel("\n".join(chain), title="what a TempSensor verifies"), table,
                                   Panel(info, title="gateway")]
    if twin:
        panels.append(Panel("\n".join(twin), title="twins and direct methods"))
    return Group(*panels)


def run(o: DemoOptions, console: Console | None = None) -> int:
    console = console or Console()
    d = o.directory.resolve()
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    stack = Stack()
    try:
        console.print(f"[bold]edgegate demo[/] in {d}")
        files = build_pki(d, o.hostname)
        console.print("PKI: root -> intermediate -> Edge CA -> server cert for " + o.hostname)
        admin = start_hub(d, stack)
        api_port = int(admin.api_port)  # type: ignore[attr-defined]
        admin.add_gateway(GATEWAY_ID, cert_pem=files["identity"].read_text())
        admin.add_ca("demo-device-ca", files["device_ca"].read_text())
        admin.add_device(SENSORS[0], parent=GATEWAY_ID, thumbprint=str(files["thumbprint"]))
        admin.add_device(SENSORS[1], parent=GATEWAY_ID, ca=True)
        console.print(f"hub-mock up; registered {SENSORS[0]} (thumbprint) and {SENSORS[1]} (CA-signed)")
        port = start_gateway(d, o, files, api_port, stack)
        console.print(f"gateway listening on 127.0.0.1:{port} as {o.hostname}")
        chain = chain_report(o.hostname, port, files["root"])
        start_sensors(d, o, files, port, stack)
        return _live(o, admin, d, chain, console)
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        console.print("stopped: sensors, gateway, hub-mock")


def drained(status: dict[str, Any], live_traffic: float) -> bool:
    """The backlog is gone: the hub is online and the outbox holds no more than about one second of the
    sensors' live traffic (they keep publishing, so it is rarely exactly empty when status.json is written)."""
    depth = status.get("outbox_depth")
    return status.get("sync", {}).get("state") == "online" and isinstance(depth, int) and depth <= live_traffic


# The drill's view stays up after `duration` until the backlog drains, but not for ever.
DRAIN_WAIT = 180.0


def _live(o: DemoOptions, admin: AdminClient, d: Path, chain: list[str], console: Console) -> int:
    start = time.monotonic()
    phase = "online"
    back_at: float | None = None
    drain_took: float | None = None
    live_traffic = max(1.0, len(SENSORS) / max(o.interval, 0.01))
    twin: list[str] = []
    with Live(view(admin, d, phase, chain), console=console, refresh_per_second=2) as live:
        while True:
            now = time.monotonic()
            elapsed = now - start
            if not twin and elapsed >= o.twin_after:
                twin = twin_step(admin, o)
                for line in twin:
                    console.print(line)
            if o.offline_drill and back_at is None:
                if phase == "online" and elapsed >= o.drill_after:
                    admin.fault("down")
                    phase = "hub DOWN: sensors keep publishing, the outbox grows"
                elif phase.startswith("hub DOWN") and elapsed >= o.drill_after + o.drill_length:
                    admin.fault("up")
                    back_at = now
                    phase = "hub back: the backlog drains"
            if back_at is not None and drain_took is None:
                if drained(gateway_status(d), live_traffic):
                    drain_took = now - back_at
                    phase = f"hub back: the backlog drained in {drain_took:.1f} s"
                else:
                    phase = f"hub back: the backlog drains ({now - back_at:.0f} s so far)"
            live.update(view(admin, d, phase, chain, twin))
            if o.duration and elapsed >= o.duration:
                waiting = o.offline_drill and drain_took is None
                if not waiting or now - (back_at or now) >= DRAIN_WAIT:
                    break
            time.sleep(0.5)
    if o.offline_drill:
        if drain_took is None:
            console.print(f"[bold red]the backlog had not drained {DRAIN_WAIT:g} s after the hub came back[/]")
        else:
            console.print(f"the backlog drained {drain_took:.1f} s after the hub came back")
        return _verify_nothing_lost(admin, d, console)
    return 0


def _verify_nothing_lost(admin: AdminClient, d: Path, console: Console) -> int:
    deadline = time.monotonic() + 30
    while True:
        acked, readings = acked_seqs(d), hub_readings(admin)
        at_hub = {name: [int(r["seq"]) for r in readings.get(name, [])] for name in SENSORS}
        lost = {name: sorted(set(acked[name]) - set(at_hub[name])) for name in SENSORS}
        if not any(lost.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    ok = True
    for name in SENSORS:
        dupes = len(at_hub[name]) - len(set(at_hub[name]))
        in_order = at_hub[name] == sorted(at_hub[name])
        console.print(f"{name}: {len(acked[name])} acknowledged, {len(at_hub[name])} at the hub, "
                      f"{len(lost[name])} lost, {dupes} duplicates, {'in order' if in_order else 'OUT OF ORDER'}")
        ok = ok and not lost[name] and not dupes and in_order
    console.print("[bold green]nothing lost[/]" if ok else "[bold red]readings lost[/]")
    return 0 if ok else 1
