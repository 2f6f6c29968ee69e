"""What the hub and the library must agree on, written once: both import this module.

The hub starts servers with environment variables that medlib reads; it names datasets,
profiles and courses with ids that medlib checks; its audit service and medlib's client stamp
events in one time format; it signs the grants manifest that medlib verifies. A rule of these
written on both sides would drift, so each lives here, and nothing here imports anything of
the hub or the library.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from enum import StrEnum
from typing import Any

# --- environment variables of a user's server (set by the hub's spawners, read by medlib) ---
USER_ENV = "MEDHUB_USER"  # the hub user
GROUPS_ENV = "MEDHUB_GROUPS"  # their groups, comma-separated
PROFILE_ENV = "MEDHUB_PROFILE"  # the profile the server was started with
DATASETS_DIR_ENV = "MEDHUB_DATASETS_DIR"  # where granted datasets are mounted
GRANTS_ENV = "MEDHUB_GRANTS"  # the signed grants manifest
GRANTS_KEY_ENV = "MEDHUB_GRANTS_KEY"  # the hub's public key that signed it
AUDIT_URL_ENV = "MEDHUB_AUDIT_URL"  # where the server's events go
AUDIT_BUFFER_ENV = "MEDHUB_AUDIT_BUFFER"  # where undelivered events wait
AUDIT_SOURCE_ENV = "MEDHUB_AUDIT_SOURCE"  # notebook, batch, cli: who writes
URL_ENV = "MEDHUB_URL"  # the hub's address as the server reaches it
TOKEN_ENV = "MEDHUB_TOKEN"  # a hub API token given on the command line's behalf
WORKER_PROFILE_ENV = "MEDHUB_WORKER_PROFILE"  # the profile of a Dask worker
DOWNLOADS_ENV = "MEDHUB_DOWNLOADS"  # "off": the server mounts data whose outputs leave only by export request

#: Where a server finds its granted datasets, one folder per id.
DATASETS_ROOT = "/datasets"

# The notebooks that teach medlib (medlib/notebooks), copied into each home at this folder, and
# the one JupyterLab opens for a first-time user.
NOTEBOOKS_FOLDER = "medhub-notebooks"
WELCOME_NOTEBOOK = "1-welcome.ipynb"

# --- ids -----------------------------------------------------------------------------------
#: Dataset, profile and course ids: lower-case letters, digits and '-', at most 63 (a DNS label,
#: so that an id can name a Kubernetes volume or claim).
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SLUG_RULE = "lower-case letters, digits and '-', at most 63, starting with a letter or digit"


def is_slug(value: object) -> bool:
    return isinstance(value, str) and SLUG.match(value) is not None


# --- audit time ----------------------------------------------------------------------------
#: An audit event's time: UTC with microseconds, such as 2026-11-23T08:51:02.123456Z.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """Now, in :data:`TIME_FORMAT`."""
    return dt.datetime.now(dt.timezone.utc).strftime(TIME_FORMAT)


def time_left(expires: str, now: float | None = None) -> str:
    """What a grant ending at ``expires`` (:data:`TIME_FORMAT`) has left, for people reading it
    (the hub's page, ``medhub access grants``, JupyterLab's panel): whole days, hours on its last
    day, "ended" after."""
    now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
    left = parse_time(expires).timestamp() - now
    if left <= 0:
        return "ended"
    if left < 3600:
        return "under 1 h"
    if left < 86400:
        return f"{-(-left // 3600):.0f} h"
    days = int(left // 86400)
    return f"{days} day{'s' * (days != 1)}"


def parse_time(text: str) -> dt.datetime:
    """``text`` in :data:`TIME_FORMAT` as an aware datetime.

    Raises:
        ValueError: another format.
    """
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.timezone.utc)


# --- the grants manifest --------------------------------------------------------------------
#: base64(JSON {"payload": base64(body), "signature": base64(Ed25519(body))}); the body is JSON.
MANIFEST_FIELDS = ("payload", "signature")


def pack_manifest(body: bytes, signature: bytes) -> str:
    """The manifest document for ``body`` and its signature."""
    outer = {"payload": base64.b64encode(body).decode(), "signature": base64.b64encode(signature).decode()}
    return base64.b64encode(json.dumps(outer).encode()).decode()


def unpack_manifest(document: str) -> tuple[bytes, bytes]:
    """The body and the signature of a manifest document.

    Raises:
        ValueError, KeyError, TypeError: not a manifest.
    """
    outer: dict[str, Any] = json.loads(base64.b64decode(document, validate=True))
    payload, signature = (outer[name] for name in MANIFEST_FIELDS)
    return base64.b64decode(payload, validate=True), base64.b64decode(signature, validate=True)


# --- batch jobs -----------------------------------------------------------------------------
class JobState(StrEnum):
    """A batch job's state: the hub's batch service keeps it, the job server's extension reports
    the run's (``starting``, ``running``, then a final one)."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# --- harvests: the hub's ingest service and the hospitals' edge nodes -----------------------
#: The hub service that takes harvest requests and deliveries, and the prefix of the hub
#: service each site's edge signs in as (``edge-<site>``).
BATCH_SERVICE = "medhub-batch"
INGEST_SERVICE = "medhub-ingest"
EDGE_SERVICE_PREFIX = "edge-"
#: The hub service that submits federated runs to the engine for users (it holds the engine's
#: admin credentials; users' servers call it with their own tokens).
FEDERATED_SERVICE = "medhub-federated"
#: The hub service where users ask for datasets and owners grant, refuse and revoke them.
ACCESS_SERVICE = "medhub-access"


class Policy(StrEnum):
    """What of a harvest leaves the site (the design's solutions 1, 2 and 3)."""

    IDENTIFIABLE = "identifiable"  # the files as the PACS holds them, only into an identifiable dataset
    ANONYMIZED = "anonymized"  # de-identified at the site with its key; the mapping stays there
    FEATURES = "features"  # radiomic features of the site's segmentations; only the table leaves


class Source(StrEnum):
    """Where an edge finds a harvest's instances."""

    PACS = "pacs"  # C-FIND, then C-MOVE to the edge (or C-GET)
    DICOMWEB = "dicomweb"  # QIDO-RS, then WADO-RS
    INBOX = "inbox"  # what was pushed to the edge's C-STORE SCP or dropped on its upload page


class HarvestState(StrEnum):
    """A harvest request's state: the hub sets ``pending``; the edge reports the rest."""

    PENDING = "pending"
    RUNNING = "running"
    DELIVERED = "delivered"
    FAILED = "failed"
    REFUSED = "refused"

    @property
    def final(self) -> bool:
        return self in (HarvestState.DELIVERED, HarvestState.FAILED, HarvestState.REFUSED)


#: The query keys a harvest request may carry (DICOM keywords; a date is ``YYYYMMDD`` or a
#: range ``YYYYMMDD-YYYYMMDD``).
QUERY_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber", "StudyDate", "Modality")
#: What the counts of a harvest report: every instance found ends delivered, quarantined or failed.
COUNTS = ("found", "received", "processed", "quarantined", "failed", "delivered")
