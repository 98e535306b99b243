"""Validation helpers for `gateway.config`, all pure: typed reads from a TOML table that name the
dotted key on every error, unknown keys with the likeliest fix, and the rules for host names, device
ids, durations and percentages. Every error is a `ConfigError(file, key, problem, fix)`.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from gateway.auth.identity import DEVICE_ID_SPECIALS, MAX_DEVICE_ID
from gateway.errors import ConfigError

# X.509's upper bound for a common name (RFC 5280 ub-common-name); IoT Edge puts `hostname` there.
MAX_COMMON_NAME = 64
# A DNS name in text form (RFC 1035 2.3.4: 255 octets on the wire).
MAX_DNS_NAME = 253
MAX_DNS_LABEL = 63

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")
_URI_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


# ---- value rules (pure) ----------------------------------------------------------------------


def validate_hostname(text: str, *, max_length: int = MAX_COMMON_NAME) -> str | None:
    """Why `text` is not a DNS name (RFC 1123 labels) or IP literal a device can dial, or None if it is."""
    if not text:
        return "is empty"
    if text != text.strip():
        return f"{text!r} has leading or trailing spaces"
    if text.startswith("[") and text.endswith("]"):
        return f"{text!r} is an IPv6 address in brackets; write it without them: {text[1:-1]!r}"
    if "%" in text and ":" in text:
        return f"{text!r} is an IPv6 address with a zone index; a certificate cannot name it"
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return None
    if len(text) > max_length:
        return f"{text!r} is {len(text)} characters long; the limit is {max_length}"
    if text.endswith("."):
        return f"{text!r} ends with a dot; write the name the devices dial, without the trailing dot"
    position = 1
    for label in text.split("."):
        problem = _label_problem(text, label, position)
        if problem:
            return problem
        position += len(label) + 1
    last = text.rsplit(".", 1)[-1]
    if last.isdigit():
        return (
            f"{text!r} is not a valid IP address, and as a host name its last label {last!r} is all "
            "digits (RFC 1123 2.1): a mistyped IPv4 address?"
        )
    return None


def _label_problem(text: str, label: str, position: int) -> str | None:
    if not label:
        return f"{text!r} has an empty label at position {position} (a leading dot or two dots in a row)"
    if len(label) > MAX_DNS_LABEL:
        return f"{text!r} has a label of {len(label)} characters at position {position}; the limit is 63"
    for offset, char in enumerate(label):
        where = f"at position {position + offset} (in label {label!r})"
        if char == "_":
            return (
                f"{text!r} has an underscore {where}: host names allow only letters, digits and "
                "hyphens (RFC 1123), and TLS clients such as the IoT Hub C# SDK refuse '_'"
            )
        if not char.isascii():
            return f"{text!r} has the non-ASCII character {char!r} {where}; use its punycode form (xn--...)"
        if not (char.isalnum() or char == "-"):
            return f"{text!r} has the character {char!r} {where}; only letters, digits, hyphens and dots"
    if label.startswith("-") or label.endswith("-"):
        return f"{text!r} has a label that starts or ends with a hyphen at position {position} ({label!r})"
    return None


def validate_device_id(text: str) -> str | None:
    """Why `text` is not an IoT Hub device id, or None if it is."""
    if not text:
        return "is empty"
    if len(text) > MAX_DEVICE_ID:
        return f"is {len(text)} characters long; IoT Hub device ids have at most {MAX_DEVICE_ID}"
    for index, char in enumerate(text, start=1):
        if not ((char.isascii() and char.isalnum()) or char in DEVICE_ID_SPECIALS):
            return (
                f"{text!r} has the character {char!r} at position {index}; IoT Hub device ids allow "
                f"ASCII letters, digits and {''.join(sorted(DEVICE_ID_SPECIALS))}"
            )
    return None


def format_duration(value: timedelta) -> str:
    """A duration as the shortest config spelling: "7d", "90m", "2.5s"."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as "90m"; ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip().lower())
        if match is None:
            if _looks_numeric(value):
                raise ValueError(f"{value!r} has no unit (a string needs one: s, m, h or d)")
            raise ValueError(f"{value!r} is not a duration")
        return float(match[1]) * _UNIT_SECONDS[match[2]]
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number of seconds")
    return float(value)


def parse_percent(value: object) -> float:
    """A percentage from a number (80, 80.5) or a string ("80%"); ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(value)
    if isinstance(value, str):
        match = _PERCENT.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a percentage")
        return float(match[1])
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return float(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _kind(value: object) -> str:
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ]
    for cls, name in kinds:
        if isinstance(value, cls):
            return name
    return f"a {type(value).__name__}"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- unknown keys ----------------------------------------------------------------------------


def check_known_keys(
    file: str,
    doc: Mapping[str, Any],
    schema: Mapping[str, frozenset[str]],
    foreign: Mapping[str, frozenset[str]],
    *,
    table: str = "",
) -> None:
    """Reject any key the schema does not list, with the likeliest fix.

    `schema` maps a dotted table name ("" for the top level) to its keys; `foreign` lists IoT Edge keys
    edgegate does not use, so people copying an IoT Edge config get a precise answer.
    """
    allowed = schema[table]
    for name, value in doc.items():
        dotted = f"{table}.{name}" if table else name
        if name not in allowed:
            raise _unknown_key(file, table, name, dotted, schema, foreign)
        if isinstance(value, dict) and dotted in schema:
            check_known_keys(file, value, schema, foreign, table=dotted)


def _unknown_key(
    file: str,
    table: str,
    name: str,
    dotted: str,
    schema: Mapping[str, frozenset[str]],
    foreign: Mapping[str, frozenset[str]],
) -> ConfigError:
    if name in foreign.get(table, frozenset()):
        return ConfigError(
            file,
            dotted,
            "is an IoT Edge setting that edgegate does not use",
            "remove it (docs/CONFIG.md lists every key)",
        )
    if table and name in schema[""]:
        return ConfigError(
            file,
            dotted,
            f"is a top-level key, but sits under [{table}]: in TOML, keys after a [table] line belong to it",
            f"move {name!r} above the first [table] line",
        )
    homes = [other for other, keys in schema.items() if other and other != table and name in keys]
    if homes:
        return ConfigError(
            file, dotted, f"is not a key here; it belongs in [{homes[0]}]", f"move it under [{homes[0]}]"
        )
    close = difflib.get_close_matches(name, sorted(schema[table]), n=1)
    if close:
        return ConfigError(
            file, dotted, f"is not a known key; did you mean {close[0]!r}?", f"rename it to {close[0]!r}"
        )
    return ConfigError(file, dotted, "is not a known key", "remove it (docs/CONFIG.md lists every key)")


# ---- typed reads -----------------------------------------------------------------------------


class Section:
    """One TOML table of the config, read key by key; every error names `prefix.key`."""

    def __init__(self, file: str, prefix: str, data: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str, fix: str | None = None) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem, fix)

    def given(self, name: str) -> bool:
        return name in self.data

    def table(self, name: str) -> Section:
        """The sub-table `name`; an empty one when it is absent."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            header = f"[[{self.key(name)}]]" if isinstance(value, list) else f"{name} = ..."
            raise self.error(
                name,
                f"must be a table, got {_kind(value)}",
                f"write it as a [{self.key(name)}] section, not {header}",
            )
        return Section(self.file, self.key(name), value)

    def string(self, name: str) -> str | None:
        """The string at `name`, or None when it is absent."""
        value = self.data.get(name)
        if value is None or isinstance(value, str):
            return value
        raise self.error(
            name, f"must be a string, got {_kind(value)} ({_shown(value)})", f'quote it: {name} = "..."'
        )

    def required_string(self, name: str, why: str) -> str:
        value = self.string(name)
        if value is None:
            raise self.error(name, f"is missing; {why}", f'add {name} = "..."' + self._under())
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.error(
                name, f"must be an array of strings, got {_kind(value)}", f'write {name} = ["..."]'
            )
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(
                    self.file,
                    f"{self.key(name)}[{index}]",
                    f"must be a string, got {_kind(item)} ({_shown(item)})",
                )
        return tuple(value)

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            fix = None
            if isinstance(value, str) and value.strip().isdigit():
                fix = f"remove the quotes: {name} = {value.strip()}"
            elif isinstance(value, float) and value.is_integer():
                fix = f"write it without a fraction: {name} = {int(value)}"
            problem = f"must be a whole number, got {_kind(value)} ({_shown(value)})"
            raise self.error(name, problem, fix)
        if not low <= value <= high:
            raise self.error(name, f"must be between {low} and {high}, got {value}")
        return value

    def duration(self, name: str, default: timedelta, *, low: timedelta, high: timedelta) -> timedelta:
        """A duration: seconds (int or float) or a string with a unit: "90s", "30m", "24h", "7d"."""
        if name not in self.data:
            return default
        return self._duration(name, low, high, forever=False)

    def duration_or_forever(
        self, name: str, default: timedelta | None, *, low: timedelta, high: timedelta
    ) -> timedelta | None:
        """Like `duration`, and the string "forever" means no limit (None)."""
        value = self.data.get(name)
        if isinstance(value, str) and value.strip().lower() == "forever":
            return None
        if name not in self.data:
            return default
        return self._duration(name, low, high, forever=True)

    def _duration(self, name: str, low: timedelta, high: timedelta, *, forever: bool) -> timedelta:
        value = self.data[name]
        fix = f'write seconds ({name} = 30) or "30s", "5m", "1h", "7d"' + (
            ', or "forever"' if forever else ""
        )
        try:
            seconds = parse_duration(value)
        except TypeError:
            raise self.error(name, f"must be a duration, got {_kind(value)}", fix) from None
        except ValueError as exc:
            raise self.error(name, str(exc), fix) from None
        if not low.total_seconds() <= seconds <= high.total_seconds():
            raise self.error(
                name,
                f"must be between {format_duration(low)} and {format_duration(high)}, got {_shown(value)}",
            )
        return timedelta(seconds=seconds)

    def percent(self, name: str, default: float, *, low: float, high: float) -> float:
        """A percentage: 80, 80.5 or "80%" (IoT Edge's spelling)."""
        if name not in self.data:
            return default
        value = self.data[name]
        try:
            percent = parse_percent(value)
        except (TypeError, ValueError):
            raise self.error(
                name,
                f"must be a percentage, got {_kind(value)} ({_shown(value)})",
                f'write {name} = 80 or "80%"',
            ) from None
        if not low <= percent <= high:
            fix = (
                f'{percent:g} means {percent:g} %, not a fraction; write 80 or "80%"' if percent < 1 else None
            )
            raise self.error(name, f"must be between {low:g} % and {high:g} %, got {_shown(value)}", fix)
        return percent

    def path(self, name: str, base: Path) -> Path | None:
        """A file path (or file:// URI), resolved against `base`; None when absent."""
        raw = self.string(name)
        if raw is None:
            return None
        if not raw.strip():
            raise self.error(name, "is an empty path", f"give a file path, or remove {name}")
        if raw.startswith("file://"):
            raw = raw.removeprefix("file://")
        elif (scheme := _URI_SCHEME.match(raw)) is not None:
            kind = "a PKCS#11 URI" if scheme[1].lower() == "pkcs11" else f"a {scheme[1]}: URI"
            raise self.error(
                name, f"is {kind}; edgegate reads keys and certificates from files only", "give a file path"
            )
        return Path(os.path.normpath(base / raw))

    def required_path(self, name: str, base: Path, why: str) -> Path:
        path = self.path(name, base)
        if path is None:
            raise self.error(name, f"is missing; {why}", f'add {name} = "path/to/file"' + self._under())
        return path

    def _under(self) -> str:
        return f" under [{self.prefix}]" if self.prefix else ""
