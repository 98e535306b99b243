"""Real MQTT clients for tests: a paho device with a certificate, and files for outside witnesses."""

from __future__ import annotations

import queue
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from gateway.pki import IssuedCert


@dataclass
class DeviceFiles:
    cert: Path
    key: Path

    @classmethod
    def write(cls, issued: IssuedCert, directory: Path, name: str, *, with_chain: bool = True,
              with_root: bool = False) -> DeviceFiles:
        directory.mkdir(parents=True, exist_ok=True)
        blob = issued.fullchain_pem(include_root=with_root) if with_chain else issued.cert_pem
        cert = blob.write_to_path(directory / f"{name}.cert.pem")
        key = issued.private_key_pem.write_to_path(directory / f"{name}.key.pem", private=True)
        return cls(cert, key)


# paho 2.x reports MQTT 3.1.1 CONNACK codes as MQTT 5 reason codes; map them back to what was on the wire.
_V311_CODE = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


@dataclass
class PahoDevice:
    """A paho client that records CONNACK, deliveries and disconnects; use `connect()` then `close()`."""

    port: int
    ca_file: Path
    client_id: str
    files: DeviceFiles | None = None
    username: str | None = None
    clean_session: bool = True
    keepalive: int = 60
    legacy_crypto: bool = False  # a device whose own certificate is SHA-1 signed (OpenSSL refuses it by default)
    max_tls: ssl.TLSVersion | None = None  # a device that speaks no TLS newer than this
    connack: Any = None
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    subacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=self.clean_session, protocol=mqtt.MQTTv311)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        # The test dials 127.0.0.1; the hostname check is proven separately with openssl s_client.
        ctx.check_hostname = False
        if self.legacy_crypto:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        if self.max_tls is not None:
            ctx.maximum_version = self.max_tls
        if self.files is not None:
            ctx.load_cert_chain(str(self.files.cert), str(self.files.key))
        c.tls_set_context(ctx)
        if self.username is not None:
            c.username_pw_set(self.username)
        self._connected = threading.Event()
        c.on_connect = self._on_connect
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        c.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put([int(rc.value) for rc in codes])
        c.on_disconnect = lambda *_a: self.disconnected.set()
        self.client = c

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connack = rc
        self._connected.set()

    # The waits below only cost time when the answer never comes; a loaded machine can take seconds over a
    # TLS handshake or an outbox commit, and a PUBACK that comes late would be counted as refused.
    def connect(self, timeout: float = 30) -> int:
        """CONNACK return code (0 accepted); raises if none arrives."""
        self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise TimeoutError(f"no CONNACK for {self.client_id} within {timeout}s")
        return _V311_CODE[int(self.connack.value)]

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30) -> bool:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout)
        return info.is_published()

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 30) -> list[int]:
        self.client.subscribe(topic_filter, qos)
        return self.subacks.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
