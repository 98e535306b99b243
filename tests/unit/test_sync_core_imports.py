"""The pure halves of cache and sync (merge rules, revocation, offline trust, backoff, the state table, wire
parsing) obey the core/shell contract: no I/O imports, no clock reads (STYLE.md habit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_core_imports import test_core_module_is_pure as check_pure

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    ROOT / "gateway" / "cache" / name
    for name in ("records.py", "merge.py", "revocation.py", "freshness.py")
] + [ROOT / "gateway" / "hub" / name for name in ("backoff.py", "sync_state.py", "wire.py")]


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module(path: Path) -> None:
    check_pure(path)
