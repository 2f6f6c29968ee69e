"""The one audit event schema of medhub (documented in README.md, "Audit log").

An event::

    {"time": "2026-11-23T08:51:02.123456Z",           # UTC, when it happened
     "actor": {"user": "alice", "groups": ["radiology-research"], "source": "notebook"},
     "action": "dataset-open",                          # one of ACTIONS
     "object": {"dataset": "lung-ct", "series": 2},     # what was touched (ids and counts)
     "outcome": "success",                              # one of OUTCOMES
     "details": {...}}                                  # anything else, free form

The actor's user and groups come from the hub (a token or the hub itself), never from the
client; ``source`` says which part of the platform acted, and the token's kind bounds it: the hub,
the batch service and the ingest service write as themselves, a user's token (a server's, a job's, the CLI's) only
as ``notebook`` or ``cli``. ``time`` is the audit service's clock when it accepted the event; a
time the writer reports (an event delivered late from its buffer) is kept as
``details.reported_time``.
"""

from __future__ import annotations

from typing import Any

from medlib.contract import parse_time, utc_now

ACTIONS = frozenset({
    "login", "login-failed", "logout", "spawn", "stop",
    "dataset-open", "dataset-verify", "export",
    "anonymize-run", "reidentify",
    "train-start", "train-round", "train-end", "job-submit", "job-end",
    "admin-change", "token-created", "dataset-mount",
    "harvest-request", "harvest-run", "quarantine", "delivery", "dataset-version",
    "access-request", "access-withdraw", "access-approve", "access-refuse", "access-grant",
    "grant-revoke", "grant-expire", "grant-enforce", "dataset-delete", "dataset-publish",
    "export-request", "export-review", "export-download", "qa-report",
})
SOURCES = ("hub", "notebook", "batch", "cli", "ingest", "federated", "access")
#: The sources a user's own token may name (its code, in a server or on the command line).
USER_SOURCES = ("notebook", "cli")
OUTCOMES = ("success", "denied", "failure")
#: What a client may send; ``time`` is kept only as ``details.reported_time``, and ``actor`` is
#: always replaced by the token's identity (a forged one is overwritten, never stored).
CLIENT_FIELDS = frozenset({"time", "action", "object", "outcome", "details", "source", "actor"})


class EventError(ValueError):
    """An event that does not fit the schema; the message names the field."""


def make_event(action: str, actor: dict[str, Any], object: dict[str, Any] | None = None,  # noqa: A002
               outcome: str = "success", details: dict[str, Any] | None = None, time: str | None = None) -> dict:
    """A checked event, stamped now; ``time``, if given, is what the writer reports
    (``details.reported_time``).

    Raises:
        EventError: an unknown action, outcome or source, or fields of the wrong type.
    """
    if action not in ACTIONS:
        raise EventError(f"action {action!r} is not one of {', '.join(sorted(ACTIONS))}")
    if outcome not in OUTCOMES:
        raise EventError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    if actor.get("source") not in SOURCES:
        raise EventError(f"actor.source {actor.get('source')!r} is not one of {', '.join(SOURCES)}")
    for name, value in (("object", object), ("details", details)):
        if value is not None and not isinstance(value, dict):
            raise EventError(f"{name} must be an object, not {type(value).__name__}")
    if time is not None:
        try:
            parse_time(time)
        except (TypeError, ValueError):
            raise EventError(f"time {time!r} is not UTC like 2026-11-23T08:51:02.123456Z") from None
    details = {**(details or {}), **({"reported_time": time} if time is not None else {})}
    return {"time": utc_now(), "actor": {"user": actor.get("user"), "groups": sorted(actor.get("groups") or ()),
                                     "source": actor["source"]},
            "action": action, "object": object or {}, "outcome": outcome, "details": details}


def from_client(body: dict[str, Any], user: str, groups: list[str]) -> dict:
    """An event posted by a notebook server, batch job or CLI: the identity is the token's.

    Raises:
        EventError: unknown fields, or ``source`` other than a user's (``notebook``, ``cli``).
    """
    if not isinstance(body, dict):
        raise EventError("an event must be a JSON object")
    unknown = sorted(set(body) - CLIENT_FIELDS)
    if unknown:
        raise EventError(f"unknown field(s) {', '.join(unknown)}; the actor is taken from your token")
    source = body.get("source", "notebook")
    if source not in USER_SOURCES:
        raise EventError(f"a user's token writes events with source {' or '.join(USER_SOURCES)}, not {source!r}; "
                         "'hub' and 'batch' events come from those services")
    return make_event(body.get("action", ""), {"user": user, "groups": groups, "source": source},
                      body.get("object"), body.get("outcome", "success"), body.get("details"), body.get("time"))
