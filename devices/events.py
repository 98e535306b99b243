"""Where sensors report what happens: a line of text each, or one JSON object per line (--json-log)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Events:
    out: TextIO
    as_json: bool = False
    # A fleet's sensors share one stdout; a line must never interleave with another.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def emit(self, device_id: str, event: str, message: str, **fields: object) -> None:
        """JSON: {"device", "event", "message", **fields}; text: "[device] message"."""
        line = (json.dumps({"device": device_id, "event": event, "message": message, **fields})
                if self.as_json else f"[{device_id}] {message}")
        with self.lock:
            print(line, file=self.out, flush=True)
