"""What a request or a grant must say, and how long it may run: the checks the service and the
command line share."""

from __future__ import annotations

import datetime as dt
import time

from ..catalog import Dataset

DAY = 86400.0


class AccessError(ValueError):
    """A request, decision or grant the rules refuse; the message says what to do instead."""


def parse_until(text: str) -> float:
    """An end given as a date (``2027-03-31``: to the end of that day, UTC) or an ISO date and
    time (``2027-03-31T12:00Z``; without a zone, UTC), in seconds since the epoch.

    Raises:
        AccessError: neither.
    """
    text = str(text).strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc).timestamp()
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AccessError(f"until: {text!r} is not a date (2027-03-31) or an ISO date and time "
                          "(2027-03-31T12:00Z)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).timestamp()


def check_until(until: float, dataset: Dataset, now: float | None = None) -> float:
    """``until`` if it lies in the future and within ``dataset``'s longest grant.

    Raises:
        AccessError: in the past, or too far ahead (saying the latest date allowed).
    """
    now = time.time() if now is None else now
    if until <= now:
        raise AccessError("until: the end lies in the past; give a later date")
    latest = now + dataset.max_grant_days * DAY
    if until > latest:
        last_day = dt.datetime.fromtimestamp(latest, dt.timezone.utc).date() - dt.timedelta(days=1)
        raise AccessError(f"until: {dataset.id!r} is granted for at most {dataset.max_grant_days} days at a time "
                          f"(its owners' maximum): ask until {last_day.isoformat()} or earlier, and again when "
                          "that ends")
    return until


def check_reasons(purpose: object, approval: object) -> tuple[str, str]:
    """The purpose and the approval reference, stripped.

    Raises:
        AccessError: either missing or too long.
    """
    purpose, approval = str(purpose or "").strip(), str(approval or "").strip()
    if not purpose:
        raise AccessError("purpose: say what the data is for (the study, the question)")
    if not approval:
        raise AccessError("approval: name the ethics approval or study protocol this work runs under "
                          "(its reference, e.g. EC-2026-017)")
    if len(purpose) > 2000 or len(approval) > 200:
        raise AccessError("purpose (2000 characters) or approval (200) is too long")
    return purpose, approval
