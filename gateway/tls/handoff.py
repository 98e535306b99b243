"""Taking a TLS 1.3 connection over from OpenSSL once its handshake is complete (pure).

OpenSSL tells us the traffic secrets through its key-log callback (the lines of the NSS key log format)
but not the sequence numbers, so they are counted here from the handshake's own bytes: every protected
record either side sent is opened with the handshake keys, and the first one that does not open with
them must open with the application keys. Records that open with neither, a cipher suite we do not
know, or a secret that never came make `take_over` answer None, and the connection stays with OpenSSL.
Nothing here is guessed: the record layer starts exactly where OpenSSL stopped, or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.exceptions import InvalidTag

from gateway.errors import TLSFailed
from gateway.tls.record13 import APPLICATION_DATA, SUITES, Records13, Suite, TrafficKeys, open_record, split_records

CLIENT_HANDSHAKE = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
SERVER_HANDSHAKE = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
CLIENT_APPLICATION = "CLIENT_TRAFFIC_SECRET_0"
SERVER_APPLICATION = "SERVER_TRAFFIC_SECRET_0"
LABELS = frozenset((CLIENT_HANDSHAKE, SERVER_HANDSHAKE, CLIENT_APPLICATION, SERVER_APPLICATION))


def parse_key_log_line(line: bytes) -> tuple[str, bytes] | None:
    """(label, secret) from one key-log line ("LABEL <client random> <secret>", hex), for the labels we use."""
    parts = line.split()
    if len(parts) != 3:
        return None
    label = parts[0].decode("ascii", "replace")
    if label not in LABELS:
        return None
    try:
        return label, bytes.fromhex(parts[2].decode("ascii"))
    except ValueError:
        return None


def take_over(suite_name: str, secrets: Mapping[str, bytes], received: bytes, sent: bytes,
              unsent: bytes) -> Records13 | None:
    """The record layer that carries on from a completed TLS 1.3 handshake, or None if it cannot.

    `received` is every byte the client sent so far, `sent` every byte the server already put on the
    network and `unsent` what OpenSSL has written since; the latter goes out first through the new layer.
    """
    suite = SUITES.get(suite_name)
    if suite is None or not secrets.keys() >= LABELS:
        return None
    try:
        start = _application_start(suite, secrets[CLIENT_HANDSHAKE], secrets[CLIENT_APPLICATION], received)
        write = _application_records(suite, secrets[SERVER_HANDSHAKE], secrets[SERVER_APPLICATION], sent + unsent)
    except (InvalidTag, TLSFailed):
        return None
    if start is None or write is None:
        return None
    at, read = start
    return Records13(read, write, pending_in=received[at:], pending_out=unsent)


def _application_start(suite: Suite, handshake: bytes, application: bytes,
                       stream: bytes) -> tuple[int, TrafficKeys] | None:
    """Where the client's application data begins in `stream` (its first record that is not a handshake
    record; a partial record at the end counts as application data to come), with the keys to read it."""
    records, used = split_records(stream)
    keys, app, at = TrafficKeys(suite, handshake), TrafficKeys(suite, application), 0
    for header, body in records:
        if header[0] == APPLICATION_DATA:
            try:
                open_record(keys, header, body)
            except InvalidTag:
                # The first record the handshake keys do not open must be the first under the
                # application keys; checked here so that a wrong count cannot slip through.
                open_record(app, header, body)
                app.seq = 0  # the record layer reads it again
                return at, app
        at += len(header) + len(body)
    return (used, app) if keys.seq else None


def _application_records(suite: Suite, handshake: bytes, application: bytes, stream: bytes) -> TrafficKeys | None:
    """The server's first application keys, counted past the records it already protected with them
    (session tickets, say)."""
    records, used = split_records(stream)
    if used != len(stream):
        return None  # OpenSSL writes whole records; anything else is not understood here
    hs, app = TrafficKeys(suite, handshake), TrafficKeys(suite, application)
    for header, body in records:
        if header[0] != APPLICATION_DATA:
            continue
        if app.seq == 0:
            try:
                open_record(hs, header, body)
                continue
            except InvalidTag:
                pass
        open_record(app, header, body)
    return app if hs.seq else None
