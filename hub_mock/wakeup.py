"""Wakes long polls when something they may be waiting for was written."""

from __future__ import annotations

import asyncio


class Wakeup:
    """A broadcast signal: `wait` returns after the next `fire` (or the timeout).

    A waiter takes the current event *before* it queries the database, so a write that lands between
    its query and its wait still wakes it.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.waiting = 0  # long polls parked right now, shown by the admin health endpoint

    def arm(self) -> asyncio.Event:
        return self._event

    async def wait(self, armed: asyncio.Event, seconds: float) -> None:
        """Wait until `armed` fires or `seconds` pass."""
        self.waiting += 1
        try:
            async with asyncio.timeout(seconds):
                await armed.wait()
        except TimeoutError:
            return
        finally:
            self.waiting -= 1

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
