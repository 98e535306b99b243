"""When to renew an EST-issued certificate and how loudly to warn: pure functions of dates and `now`.

IoT Edge's auto_renew semantics: renew once `threshold` of the lifetime has passed, then retry every
`retry` of the lifetime until it works. Both are fractions here (0.8 for "80%"). The retry step is
kept between RETRY_FLOOR and RETRY_CEILING so that a gateway whose EST server comes back renews within
an hour even for a year-long certificate, and a seconds-long test certificate is not hammered.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime, timedelta

RETRY_FLOOR = timedelta(seconds=1)
RETRY_CEILING = timedelta(hours=1)
# iotedge check and the operators: a week's notice, then a day's.
WARN_BEFORE = timedelta(days=7)
CRITICAL_BEFORE = timedelta(days=1)


class ExpiryLevel(enum.Enum):
    """How urgent a certificate is; the value is the machine-readable reason in status and logs."""

    OK = "ok"
    RENEWAL_DUE = "renewal_due"  # past the threshold: renewing, not yet worrying
    EXPIRES_WITHIN_7_DAYS = "expires_within_7_days"
    EXPIRES_WITHIN_1_DAY = "expires_within_1_day"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


def renewal_due_at(not_before: datetime, not_after: datetime, threshold: float) -> datetime:
    """The moment `threshold` (a fraction) of the lifetime has passed."""
    return not_before + (not_after - not_before) * threshold


def retry_step(not_before: datetime, not_after: datetime, retry: float) -> timedelta:
    """`retry` (a fraction) of the lifetime, kept within [RETRY_FLOOR, RETRY_CEILING]."""
    step = (not_after - not_before) * retry
    return max(RETRY_FLOOR, min(step, RETRY_CEILING))


def next_renewal(
    not_before: datetime, not_after: datetime, threshold: float, retry: float, now: datetime
) -> datetime:
    """When to try to renew next: the threshold point, then every retry step after it.

    Returns the first such moment at or after `now`; equal to `now` means "try now". A failed attempt
    made at that moment therefore gets the next step, with no state kept between calls.
    """
    due = renewal_due_at(not_before, not_after, threshold)
    if now <= due:
        return due
    step = retry_step(not_before, not_after, retry)
    steps = math.ceil((now - due) / step)
    return due + step * steps


def expiry_level(not_before: datetime, not_after: datetime, threshold: float, now: datetime) -> ExpiryLevel:
    """How urgent the certificate is at `now`.

    The 7-day and 1-day warnings apply once renewal is due and has not happened: a certificate that is
    short-lived by design (hours, or seconds in a drill) is not an alarm while it is young.
    """
    if now < not_before:
        return ExpiryLevel.NOT_YET_VALID
    if now >= not_after:
        return ExpiryLevel.EXPIRED
    if now < renewal_due_at(not_before, not_after, threshold):
        return ExpiryLevel.OK
    left = not_after - now
    if left <= CRITICAL_BEFORE:
        return ExpiryLevel.EXPIRES_WITHIN_1_DAY
    if left <= WARN_BEFORE:
        return ExpiryLevel.EXPIRES_WITHIN_7_DAYS
    return ExpiryLevel.RENEWAL_DUE


def describe_left(not_after: datetime, now: datetime) -> str:
    """"3d 4h left", "42s left" or "expired 5m ago": for status, check and log lines."""
    left = not_after - now
    text = _span(abs(left))
    return f"{text} left" if left > timedelta(0) else f"expired {text} ago"


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"
