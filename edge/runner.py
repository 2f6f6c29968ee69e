"""A harvest from request to delivery, and the edge's loop that runs them.

For each request addressed to the site: refuse it if the site's rules do (policy, modality,
study dates); find its instances (PACS C-FIND, QIDO-RS, or the inbox); bring what is missing
into the inbox (C-MOVE or C-GET, WADO-RS); wait until its studies are quiet (nothing new for
``quiet_seconds``: a study still arriving is never delivered half); check every series (QC);
make the outputs its policy allows; upload them; deliver. Every step is in the journal first,
so a killed edge resumes the harvest where it stood.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
import uuid
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

from medlib.anonymize import SiteKey
from medlib.contract import HarvestState, Policy, Source

from . import qc
from .dicom import DicomWeb, Found, Inbox, Pacs, StorageSCP
from .errors import EdgeError, PacsUnreachable
from .hub import HubClient, HubRefused, HubUnreachable
from .journal import Journal
from .policy import Processor
from .settings import EdgeSettings

log = logging.getLogger("medhub.edge")
SOFTWARE = ("medhub", "pydicom", "pynetdicom", "dicomweb-client", "highdicom", "torch")


def software_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _in_range(value: str, criterion: str) -> bool:
    """Whether the DICOM date ``value`` matches ``criterion`` (a date or ``from-to``, either end open)."""
    if "-" not in criterion:
        return value == criterion
    low, high = criterion.split("-", 1)
    return bool(value) and (not low or value >= low) and (not high or value <= high)


class Edge:
    """The edge node of one site: its SCP, its journal, and its harvests."""

    def __init__(self, settings: EdgeSettings, hub: HubClient | None = None):
        self.settings = settings
        state = settings.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.journal = Journal(state / "journal.sqlite")
        self.inbox = Inbox(state, self.journal)
        self.scp = StorageSCP(settings, self.inbox)
        self.key = SiteKey.load(settings.key_file)
        self.processor = Processor(state, self.journal, self.key, settings.anonymize_options)
        self.hub = hub or HubClient(settings.hub_url, settings.token, int(settings.chunk_mb * (1 << 20)))
        self.stopping = threading.Event()

    # -- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Take pushes, and run the harvests the hub has for this site, until stopped."""
        self.scp.start()
        try:
            while not self.stopping.is_set():
                self.poll_once()
                self.stopping.wait(self.settings.poll_seconds)
        finally:
            self.scp.stop()

    def poll_once(self) -> int:
        """Run every harvest the hub has for this site (those interrupted here first); how many ended."""
        try:
            requests = {r["id"]: r for r in self.hub.requests()}
        except (HubUnreachable, HubRefused) as e:
            log.error("%s", e)
            return 0
        ended = 0
        for record in self.journal.unfinished():
            if record["id"] in requests:
                ended += self.run(requests.pop(record["id"]))
            else:  # ended at the hub while this edge was away (delivered before a crash, or refused there)
                self.journal.set_harvest(record["id"], state="abandoned")
        for request in requests.values():
            ended += self.run(request)
        return ended

    def run(self, request: dict[str, Any]) -> bool:
        """Run one harvest; True when it ended (delivered, refused or failed), False when it
        waits for the PACS or the hub and is tried again at the next poll."""
        harvest_id = request["id"]
        self.journal.start(request)
        try:
            refusal = self.refusal(request)
            if refusal:
                self.hub.progress(harvest_id, HarvestState.REFUSED, self.journal.counts(harvest_id), refusal)
                self.journal.set_harvest(harvest_id, state="refused", message=refusal)
                log.info("harvest %s refused: %s", harvest_id, refusal)
                return True
            if request["state"] == HarvestState.PENDING:
                self.hub.progress(harvest_id, HarvestState.RUNNING, self.journal.counts(harvest_id), "started")
            self.harvest(request)
            return True
        except PacsUnreachable as e:
            self._report(harvest_id, f"waiting for the PACS: {e}")
            return False
        except (HubUnreachable, HubRefused) as e:
            log.error("harvest %s: %s; trying again at the next poll", harvest_id, e)
            return False
        except EdgeError as e:
            self._fail(harvest_id, str(e))
            return True

    def refusal(self, request: dict[str, Any]) -> str | None:
        """Why the site's rules refuse ``request`` (None: they allow it)."""
        rules = self.settings.rules
        if request["policy"] not in rules.policies:
            return f"this site does not deliver {request['policy']} data (it delivers: {', '.join(rules.policies)})"
        query = request["query"]
        modality = query.get("Modality")
        if modality and modality not in rules.modalities:
            return f"this site does not deliver {modality} (it delivers: {', '.join(rules.modalities)})"
        if rules.earliest or rules.latest:
            dates = query.get("StudyDate", "")
            low, _, high = dates.partition("-") if "-" in dates else (dates, "", dates)
            if not low or not high or (rules.earliest and low < rules.earliest) or (rules.latest and high > rules.latest):
                return (f"this site delivers studies from {rules.earliest or 'any date'} to {rules.latest or 'today'}; "
                        "ask with a StudyDate range inside that")
        return None

    # -- one harvest ----------------------------------------------------------------------------

    def harvest(self, request: dict[str, Any]) -> None:
        harvest_id, source = request["id"], Source(request["source"])
        self.receive(harvest_id, source, request["query"])
        qc_report = self.check(harvest_id, request["on_qc_failure"])
        rows = self.journal.instances(harvest_id, "received")
        self.processor.run(harvest_id, Policy(request["policy"]), rows, self.inbox_of(rows))
        self.hub.progress(harvest_id, HarvestState.RUNNING, self.journal.counts(harvest_id), "processed; uploading",
                          self.journal.reasons(harvest_id, "quarantined"))
        self.deliver(harvest_id, qc_report)

    def inbox_of(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return self.journal.inbox([r["sop"] for r in rows])

    def find(self, source: Source, query: dict[str, str]) -> list[Found]:
        if source == Source.PACS:
            return Pacs(self.settings, self.inbox).find(query)
        if source == Source.DICOMWEB:
            return DicomWeb(self.settings, self.inbox).find(query)
        keys = {"PatientID": "patient", "StudyInstanceUID": "study", "SeriesInstanceUID": "series",
                "AccessionNumber": "accession", "Modality": "modality"}
        return [Found(r["sop"], r["study"], r["series"], r["modality"]) for r in self.journal.inbox().values()
                if all(r[keys[k]] == v for k, v in query.items() if k in keys)
                and _in_range(r["study_date"], query.get("StudyDate", "-"))]

    def receive(self, harvest_id: str, source: Source, query: dict[str, str]) -> None:
        """Find the harvest's instances and bring them into the inbox, until its studies are quiet."""
        allowed = set(self.settings.rules.modalities)
        while True:
            found = self.find(source, query)
            known = {r["sop"] for r in self.journal.instances(harvest_id)}
            fresh = [f for f in found if f.sop not in known]
            self.journal.found(harvest_id, [(f.sop, f.study, f.series, f.modality) for f in fresh])
            self.journal.set(harvest_id, [f.sop for f in fresh if f.modality not in allowed], "failed",
                             "this site does not deliver this modality")
            wanted = [f for f in found if f.modality in allowed]
            here = self.journal.inbox([f.sop for f in wanted])
            missing = [f for f in wanted if f.sop not in here]
            if missing and source == Source.PACS:
                totals = Pacs(self.settings, self.inbox).retrieve(sorted({(f.study, f.series) for f in missing}))
                log.info("harvest %s: retrieved %s", harvest_id, totals)
            elif missing and source == Source.DICOMWEB:
                DicomWeb(self.settings, self.inbox).retrieve(missing)
            here = self.journal.inbox([f.sop for f in wanted])
            todo = {r["sop"] for r in self.journal.instances(harvest_id, "found")}
            self.journal.set(harvest_id, [sop for sop in here if sop in todo], "received")
            self._report(harvest_id, "receiving")
            quiet = self.journal.last_arrival({f.study for f in found}) + self.settings.quiet_seconds - time.time()
            if quiet > 0:  # a study still arriving is never delivered half
                time.sleep(quiet)
                continue
            if fresh and source != Source.INBOX:  # ask again: the study may still be arriving at the PACS
                time.sleep(self.settings.quiet_seconds)
                if {f.sop for f in self.find(source, query)} - {f.sop for f in found}:
                    continue
            break
        lost = [r["sop"] for r in self.journal.instances(harvest_id, "found")]
        self.journal.set(harvest_id, lost, "failed", f"not received from the {source} source")

    def check(self, harvest_id: str, on_failure: str) -> dict[str, Any]:
        """QC of every series received; a failing series is held back (quarantined at the site) or flagged."""
        rows = self.journal.instances(harvest_id, "received", "processed", "uploaded", "delivered")
        inbox = self.inbox_of(rows)
        by_series: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_series[row["series"]].append(row)
        reports = []
        for index, (series, members) in enumerate(sorted(by_series.items())):
            report = qc.check_series(f"series-{index + 1}", [Path(inbox[r["sop"]]["path"]) for r in members],
                                     self.settings.rules.modalities, self.settings.qc.spacing_tolerance,
                                     self.settings.qc.decode_pixels)
            reports.append(report)
            if not report.passed and on_failure == "hold":
                held = [r["sop"] for r in members if r["state"] == "received"]
                self.journal.set(harvest_id, held, "quarantined", "held back by QC: " + "; ".join(report.problems))
        return qc.report(reports, on_failure)

    def deliver(self, harvest_id: str, qc_report: dict[str, Any]) -> None:
        """Upload every output not yet uploaded, then publish them as a version."""
        rows = self.journal.instances(harvest_id, "processed", "uploaded")
        outbox = self.processor.outbox(harvest_id)
        outputs: dict[str, str] = {}
        for row in rows:
            outputs.setdefault(row["output"], row["sha256"])
        pending = {(r["output"], r["sha256"]) for r in rows if r["state"] == "processed"}
        for output, digest in sorted(pending):
            self.hub.upload(harvest_id, outbox / output, digest)
            self.journal.set(harvest_id, [r["sop"] for r in rows if r["output"] == output], "uploaded")
        record = self.journal.harvest(harvest_id)
        delivery = record["delivery"] or uuid.uuid4().hex
        self.journal.set_harvest(harvest_id, delivery=delivery)
        request = record["request"]
        counts = self.journal.counts(harvest_id)
        counts["delivered"] = counts["processed"]
        provenance = {"site": self.settings.site, "policy": request["policy"], "software": software_versions(),
                      "anonymize_options": list(self.settings.anonymize_options),
                      "key_fingerprint": self.key.fingerprint if request["policy"] != Policy.IDENTIFIABLE else None}
        if outputs:
            harvest = self.hub.deliver(harvest_id, delivery, [{"path": p, "sha256": d} for p, d in sorted(outputs.items())],
                                       qc_report, provenance, counts)
            version = harvest["version"]
        else:
            self.hub.progress(harvest_id, HarvestState.FAILED, counts, "nothing to deliver: see the counts",
                              self.journal.reasons(harvest_id, "quarantined"))
            version = None
        self.journal.set(harvest_id, [r["sop"] for r in self.journal.instances(harvest_id, "uploaded")], "delivered")
        self.journal.set_harvest(harvest_id, state="delivered" if version else "failed", version=version)
        log.info("harvest %s: %s", harvest_id, f"delivered as {version}" if version else "nothing delivered")

    # -- reporting ----------------------------------------------------------------------------------

    def _report(self, harvest_id: str, message: str) -> None:
        self.hub.progress(harvest_id, HarvestState.RUNNING, self.journal.counts(harvest_id), message)

    def _fail(self, harvest_id: str, message: str) -> None:
        log.error("harvest %s failed: %s", harvest_id, message)
        self.hub.progress(harvest_id, HarvestState.FAILED, self.journal.counts(harvest_id), message,
                          self.journal.reasons(harvest_id, "quarantined"))
        self.journal.set_harvest(harvest_id, state="failed", message=message)
