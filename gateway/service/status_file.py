"""status.json: what the running gateway says about itself, for `edgegate status` (another process).

The gateway rewrites it every few seconds with `write_status`; readers never see half a file. Keys
`edgegate status` reads: "written_at" (ISO 8601 UTC, added here), "pid" (added here),
"connected_devices" (int), "outbox_depth" (int, optional), "sync" (RegistrySync.describe()).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATUS_FILE_NAME = "status.json"
# Bigger than anything the gateway writes; a reader refuses to parse more.
MAX_STATUS_BYTES = 1024 * 1024


def write_status(path: Path, status: Mapping[str, Any], *, now: datetime | None = None) -> None:
    """Atomically replace `path` with `status` as JSON, stamped with `written_at` and `pid`."""
    stamped = {**status, "written_at": (now or datetime.now(UTC)).isoformat(), "pid": os.getpid()}
    data = json.dumps(stamped, indent=2, sort_keys=True, default=str).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # No fsync: this file is rewritten every few seconds and worthless after a power cut, and
        # syncing that often wears SD cards. The rename alone keeps readers from seeing half a file.
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    """The last status the gateway wrote; None if there is none or it cannot be read."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STATUS_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_STATUS_BYTES:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
