"""`edgegate outbox list|requeue|drop -c config.toml`: the dead letters -- messages the hub refused for good.

Works while the gateway runs or is stopped: it reads and flags rows of the database. `requeue` only
flags them; the running gateway puts flagged dead letters back in its outbox within a few seconds
(DEAD_LETTER_EVERY), keeping their message ids, or the next start does. `drop` deletes them for good.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import load_config
from gateway.db.engine import database_exists, open_engine, redacted
from gateway.errors import StorageError
from gateway.outbox.dead_letters import DeadLetter, DeadLetters

SHOWN_PAYLOAD = 60  # bytes of payload shown per line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("outbox", help="dead letters: list, re-queue or drop messages the hub refused")
    verbs = parser.add_subparsers(dest="outbox_verb", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="the dead letters, oldest first, with the hub's reason")
    listing.add_argument("--json", action="store_true", help="one JSON object instead of text")
    listing.add_argument("--limit", type=int, default=100)
    for name, help_text, func in (("requeue", "send dead letters to the hub again (same message ids)", _requeue),
                                  ("drop", "delete dead letters for good", _drop)):
        verb = verbs.add_parser(name, help=help_text)
        verb.add_argument("ids", nargs="*", type=int, help="dead letter ids from `edgegate outbox list`")
        verb.add_argument("--all", action="store_true", help="every dead letter (of --device, if given)")
        verb.set_defaults(func=func)
    listing.set_defaults(func=_list)
    for verb in (listing, *[verbs.choices[n] for n in ("requeue", "drop")]):
        verb.add_argument("-c", "--config", type=Path, required=True, help="path to config.toml")
        verb.add_argument("--device", help="only this device's dead letters")


def _letters(args: argparse.Namespace) -> DeadLetters | None:
    url = load_config(args.config).storage.url
    if not database_exists(url):
        print(f"{redacted(url)}: no database yet, so no dead letters", file=sys.stderr)
        return None
    return DeadLetters(open_engine(url))


def describe(letter: DeadLetter) -> str:
    """One dead letter as a line of text (pure)."""
    dead = datetime.fromtimestamp(letter.dead_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    payload = letter.payload[:SHOWN_PAYLOAD].decode("utf-8", "replace")
    more = f" (+{len(letter.payload) - SHOWN_PAYLOAD} bytes)" if len(letter.payload) > SHOWN_PAYLOAD else ""
    flag = "  [re-queue requested]" if letter.requeue else ""
    return (f"{letter.id:>6}  {dead}  device={letter.device_id}  {letter.status} {letter.reason}: {letter.detail}"
            f"{flag}\n        message {letter.message_id}  {letter.kind}  payload {payload!r}{more}")


def _list(args: argparse.Namespace) -> int:
    letters = _letters(args)
    if letters is None:
        return 0
    try:
        rows = letters.entries(device_id=args.device, limit=args.limit)
        total, flagged = letters.count()
    except StorageError as exc:
        print(f"edgegate: {exc}", file=sys.stderr)
        return 1
    finally:
        letters.engine.dispose()
    if args.json:
        print(json.dumps({"total": total, "requeue_requested": flagged, "dead_letters": [
            {"id": d.id, "message_id": d.message_id, "device_id": d.device_id, "kind": d.kind, "topic": d.topic,
             "properties": d.properties, "payload_utf8": d.payload.decode("utf-8", "replace"), "qos": d.qos,
             "enqueued_at": d.enqueued_at, "dead_at": d.dead_at, "status": d.status, "reason": d.reason,
             "detail": d.detail, "requeue_requested": d.requeue} for d in rows]}, indent=2))
        return 0
    print(f"{total} dead letters ({flagged} waiting to be re-queued)")
    for row in rows:
        print(describe(row))
    if total:
        print("re-queue with `edgegate outbox requeue -c CONFIG ID...` (or --all), "
              "drop with `edgegate outbox drop -c CONFIG ID...`")
    return 0


def _chosen(args: argparse.Namespace) -> list[int] | None:
    if args.all == bool(args.ids):
        raise SystemExit("edgegate outbox: name dead letter ids, or --all (not both)")
    return None if args.all else list(args.ids)


def _requeue(args: argparse.Namespace) -> int:
    return _change(args, "flag_requeue", "{n} dead letters flagged: the running gateway sends them again within "
                                         "seconds (a stopped one at its next start)")


def _drop(args: argparse.Namespace) -> int:
    return _change(args, "drop", "{n} dead letters dropped for good")


def _change(args: argparse.Namespace, action: str, done: str) -> int:
    """Apply `action` (a DeadLetters method) to the chosen dead letters; exit 1 when none matched."""
    chosen = _chosen(args)
    letters = _letters(args)
    if letters is None:
        return 1
    try:
        changed = int(getattr(letters, action)(chosen, args.device))
    except StorageError as exc:
        print(f"edgegate: {exc}", file=sys.stderr)
        return 1
    finally:
        letters.engine.dispose()
    print(done.format(n=changed))
    return 0 if changed else 1
