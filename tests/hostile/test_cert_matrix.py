"""The certificate matrix over real TLS: each row is one real paho client with a real certificate
against the real front door; the CONNACK code and the logged reason must be the row's.

This table (tests/certmatrix.py) is the list of what the gateway rejects, and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.auth.reasons import Reason
from tests import certmatrix
from tests.clients import DeviceFiles, PahoDevice
from tests.frontdoor_harness import DictDirectory, FrontDoorThread

pytestmark = pytest.mark.hostile

MATRIX = certmatrix.build(datetime.now(UTC))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoorThread]:
    directory = DictDirectory(certmatrix.GATEWAY_ID, MATRIX.anchors, [])
    with FrontDoorThread(tmp_path_factory.mktemp("gw"), directory) as gw:
        yield gw


@pytest.mark.parametrize("row", MATRIX.rows, ids=lambda r: r.name)
def test_row_over_real_tls(row: certmatrix.Row, gateway: FrontDoorThread, tmp_path: Path,
                           caplog: pytest.LogCaptureFixture) -> None:
    gateway.directory.records = {r.device_id: r for r in row.records}
    files = None
    if row.cert is not None:
        files = DeviceFiles.write(row.cert, tmp_path, "device", with_chain=row.send_intermediates,
                                 with_root=row.send_root)
    device = PahoDevice(gateway.port, gateway.pki.root_path, row.client_id, files, username=row.username,
                        legacy_crypto=row.legacy_crypto)
    caplog.set_level(logging.INFO, logger="edgegate")
    try:
        code = device.connect()
    finally:
        device.close()
    assert code == row.expected.connack_code
    if row.expected is Reason.OK:
        assert any("admitted device=" + row.client_id in r.getMessage() for r in caplog.records)
    else:
        lines = [r.getMessage() for r in caplog.records if "rejected device=" in r.getMessage()]
        assert len(lines) == 1, lines
        assert f"reason={row.expected.value}" in lines[0]
        assert f"device={row.client_id}" in lines[0]
        thumbprint = row.cert.thumbprint_sha256 if row.cert else "-"
        assert f"thumbprint={thumbprint}" in lines[0]
