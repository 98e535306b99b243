"""Imports every module that defines gateway tables, so `metadata` holds all of them.

Each feature owns its tables in its own `tables` module; a module that does not exist (yet) in this
build is skipped, so migrations and tests see exactly the tables that ship.
"""

from __future__ import annotations

import importlib

from sqlalchemy import MetaData

from gateway.db import base

TABLE_MODULES = ("gateway.cache.tables", "gateway.outbox.tables", "gateway.twin.tables")


def load_table_modules() -> MetaData:
    """Import every table module that exists; returns the shared metadata."""
    for name in TABLE_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only "this module is not part of the build" is skipped; a broken import inside it is not.
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise
    return base.metadata


# Importing this module is what makes the metadata complete (migrations/env.py relies on it).
metadata = load_table_modules()
