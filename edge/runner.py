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
import shutil
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from medlib.anonymize import SiteKey
from medlib.anonymize.free_text import load_keep_text
from medlib.contract import HarvestState, Policy, Source

from . import qc
from .dicom import DicomWeb, Found, Inbox, Pacs, StorageSCP
from .errors import EdgeError, PacsUnreachable
from .hub import HubClient, HubRefused, HubUnreachable
from .journal import Journal
from .policy import Processor
from .settings import EdgeSettings

log = logging.getLogger("medhub.edge")
UPLOADS = 4  # files uploaded at once
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


class SeriesPipeline:
    """Each series of a harvest, checked, processed and uploaded as soon as it is received, in a
    thread of its own, while the next series transfers. A features harvest waits for all of them
    (a segmentation and the series it segments are needed together). Leaving the ``with`` block
    waits for all of it, and raises what failed."""

    def __init__(self, edge: Edge, harvest_id: str, policy: Policy, on_failure: str):
        self.edge, self.harvest_id, self.policy, self.on_failure = edge, harvest_id, policy, on_failure
        self.reports: dict[str, qc.SeriesReport] = {}
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="edge-series")
        self.uploader = ThreadPoolExecutor(1, thread_name_prefix="edge-upload")  # series in order, files at once
        self.pending: list[Future] = []

    def __enter__(self) -> SeriesPipeline:
        return self

    def received(self, series: str) -> None:
        """``series`` has new instances in the inbox."""
        self.pending.append(self.worker.submit(self.check, series))
        if self.policy != Policy.FEATURES:
            self.pending.append(self.worker.submit(self.process, [series]))

    def __exit__(self, kind, error, trace) -> None:
        if kind is None and self.policy == Policy.FEATURES:
            self.pending.append(self.worker.submit(self.process, sorted(self.reports)))
        try:
            done = 0
            while done < len(self.pending):  # uploads are added while the series' work ends
                self.pending[done].result()  # the first failure is raised here
                done += 1
        finally:
            self.worker.shutdown(wait=True, cancel_futures=True)
            self.uploader.shutdown(wait=True, cancel_futures=True)

    def check(self, series: str) -> None:
        """QC of the series (again, when more of it came); a failing series is held back at the
        site (quarantined) or delivered flagged."""
        journal, settings = self.edge.journal, self.edge.settings
        rows = [r for r in journal.instances(self.harvest_id) if r["series"] == series]
        inbox = journal.inbox([r["sop"] for r in rows])
        members = [r for r in rows if r["sop"] in inbox and r["state"] != "failed"]
        facts = self.edge.processor.facts([Path(inbox[r["sop"]]["path"]) for r in members], settings.qc.decode_pixels)
        report = qc.check_facts(series, facts, settings.rules.modalities, settings.qc.spacing_tolerance)
        self.reports[series] = report
        if not report.passed and self.on_failure == "hold":
            held = [r["sop"] for r in members if r["state"] == "received"]
            journal.set(self.harvest_id, held, "quarantined", "held back by QC: " + "; ".join(report.problems))

    def process(self, series: list[str]) -> None:
        """Make the outputs of the series' received instances; their upload starts meanwhile."""
        journal = self.edge.journal
        rows = [r for r in journal.instances(self.harvest_id, "received") if r["series"] in set(series)]
        self.edge.processor.run(self.harvest_id, self.policy, rows, journal.inbox([r["sop"] for r in rows]))
        done = {r["sop"] for r in rows}
        made = [r for r in journal.instances(self.harvest_id, "processed") if r["sop"] in done or
                self.policy == Policy.FEATURES]
        self.pending.append(self.uploader.submit(self.edge.upload, self.harvest_id, made))

    def qc_report(self) -> dict[str, Any]:
        """The delivered QC report; series named by their order, not by their UIDs."""
        reports = []
        for index, uid in enumerate(sorted(self.reports)):
            report = self.reports[uid]
            reports.append(qc.SeriesReport(f"series-{index + 1}", report.modality, report.instances, report.problems))
        return qc.report(reports, self.on_failure)


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
        self.processor = Processor(state, self.journal, self.key, settings.anonymize_options,
                                   pixels=settings.pixels.policy,
                                   keep_text=load_keep_text(settings.anonymize_keep_text)
                                   if settings.anonymize_keep_text else frozenset())
        self.hub = hub or HubClient(settings.hub_url, settings.token, int(settings.chunk_mb * (1 << 20)))
        self.stopping = threading.Event()

    # -- the loop -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Take pushes, and run the harvests the hub has for this site, until stopped."""
        self.scp.start()
        self.processor.start()
        try:
            while not self.stopping.is_set():
                self.poll_once()
                self.stopping.wait(self.settings.poll_seconds)
        finally:
            self.scp.stop()
            self.processor.close()

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
        pipeline = SeriesPipeline(self, harvest_id, Policy(request["policy"]), request["on_qc_failure"])
        with pipeline:
            self.receive(harvest_id, source, request["query"], pipeline.received)
        self.hub.progress(harvest_id, HarvestState.RUNNING, self.journal.counts(harvest_id), "processed; delivering",
                          self.journal.reasons(harvest_id, "quarantined"))
        self.deliver(harvest_id, pipeline.qc_report())

    def inbox_of(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return self.journal.inbox([r["sop"] for r in rows])

    def find(self, source: Source, query: dict[str, str]) -> list[Found]:
        """The instances of a DICOMweb or inbox harvest."""
        if source == Source.DICOMWEB:
            return DicomWeb(self.settings, self.inbox).find(query)
        keys = {"PatientID": "patient", "StudyInstanceUID": "study", "SeriesInstanceUID": "series",
                "AccessionNumber": "accession", "Modality": "modality"}
        return [Found(r["sop"], r["study"], r["series"], r["modality"]) for r in self.journal.inbox().values()
                if all(r[keys[k]] == v for k, v in query.items() if k in keys)
                and ("StudyDate" not in query or _in_range(r["study_date"], query["StudyDate"]))]

    def receive(self, harvest_id: str, source: Source, query: dict[str, str],
                on_series: Callable[[str], None]) -> None:
        """Bring the harvest's instances into the inbox, until its studies are quiet (nothing new
        for ``quiet_seconds``: a study still arriving is never delivered half). ``on_series`` gets
        each series once its instances are in: from the PACS as each series' retrieve ends (the
        next one transfers meanwhile), from the inbox once its studies are quiet."""
        while True:
            if source == Source.PACS:
                studies = self.receive_from_pacs(harvest_id, query, on_series)
            else:
                studies = self.receive_found(harvest_id, source, query, on_series)
            self._report(harvest_id, "receiving")
            last = self.journal.last_arrival(set(studies))
            quiet = last + self.settings.quiet_seconds - time.time()
            if quiet > 0:
                time.sleep(quiet)
            if source == Source.PACS:
                if Pacs(self.settings, self.inbox).study_sizes(studies) != studies:
                    continue  # the PACS got more of them meanwhile
            elif source == Source.INBOX:
                if self.journal.last_arrival(set(studies)) > last:
                    continue  # more was pushed meanwhile
            elif quiet > 0:
                continue
            break
        lost = [r["sop"] for r in self.journal.instances(harvest_id, "found")]
        self.journal.set(harvest_id, lost, "failed", f"not received from the {source} source")
        if source == Source.INBOX:
            for series in sorted({r["series"] for r in self.journal.instances(harvest_id, "received")}):
                on_series(series)

    def receive_from_pacs(self, harvest_id: str, query: dict[str, str],
                          on_series: Callable[[str], None]) -> dict[str, int]:
        """Find the series by C-FIND, C-MOVE (or C-GET) those not all here, one after the other;
        list instance by instance only a series that came short, or that the site does not
        deliver. Returns the sizes of the studies found."""
        pacs = Pacs(self.settings, self.inbox)
        series, sizes = pacs.find_series(query)
        allowed = set(self.settings.rules.modalities)
        refused = [s for s in series if s.modality not in allowed]
        for s in refused:
            found = pacs.instances_of(s.study, s.series)
            self.journal.found(harvest_id, [(f.sop, f.study, f.series, f.modality) for f in found])
            self.journal.set(harvest_id, [f.sop for f in found], "failed", "this site does not deliver this modality")

        def arrived(study: str, uid: str) -> None:
            item = next(s for s in series if s.series == uid)
            here = self.journal.inbox_series(uid)
            if len(here) < item.instances:  # came short: which ones are missing
                found = pacs.instances_of(study, uid)
                self.journal.found(harvest_id, [(f.sop, f.study, f.series, f.modality) for f in found])
            self.journal.found(harvest_id, [(r["sop"], study, uid, r["modality"]) for r in here])
            waiting = {r["sop"] for r in self.journal.instances(harvest_id, "found") if r["series"] == uid}
            newly = [r["sop"] for r in here if r["sop"] in waiting]
            self.journal.set(harvest_id, newly, "received")
            if newly:
                on_series(uid)

        wanted = [s for s in series if s.modality in allowed]
        short = [(s.study, s.series) for s in wanted if len(self.journal.inbox_series(s.series)) < s.instances]
        if short:
            totals = pacs.retrieve(short, arrived)
            log.info("harvest %s: retrieved %s", harvest_id, totals)
        for s in wanted:
            arrived(s.study, s.series)  # those here before (pushed, or an earlier run's)
        return sizes

    def receive_found(self, harvest_id: str, source: Source, query: dict[str, str],
                      on_series: Callable[[str], None]) -> dict[str, int]:
        """Find the instances (QIDO-RS, or the inbox), fetch those not here (WADO-RS). Returns the
        studies found (with their instances found)."""
        allowed = set(self.settings.rules.modalities)
        found = self.find(source, query)
        known = {r["sop"] for r in self.journal.instances(harvest_id)}
        fresh = [f for f in found if f.sop not in known]
        self.journal.found(harvest_id, [(f.sop, f.study, f.series, f.modality) for f in fresh])
        self.journal.set(harvest_id, [f.sop for f in fresh if f.modality not in allowed], "failed",
                         "this site does not deliver this modality")
        by_series: dict[str, list[Found]] = defaultdict(list)
        for f in found:
            if f.modality in allowed:
                by_series[f.series].append(f)
        client = DicomWeb(self.settings, self.inbox) if source == Source.DICOMWEB else None
        for uid, members in by_series.items():
            here = self.journal.inbox([f.sop for f in members])
            if client is not None and len(here) < len(members):
                client.retrieve([f for f in members if f.sop not in here], whole_series=not here)
                here = self.journal.inbox([f.sop for f in members])
            waiting = {r["sop"] for r in self.journal.instances(harvest_id, "found")}
            newly = [sop for sop in here if sop in waiting]
            self.journal.set(harvest_id, newly, "received")
            if newly and client is not None:
                on_series(uid)
        studies: dict[str, int] = defaultdict(int)
        for f in found:
            studies[f.study] += 1
        return dict(studies)

    def upload(self, harvest_id: str, rows: list[dict[str, Any]]) -> None:
        """Upload the outputs of ``rows`` (processed instances) that are not uploaded yet."""
        outbox = self.processor.outbox(harvest_id)
        sops: dict[tuple[str, str], list[str]] = defaultdict(list)  # an output, and the instances it came of
        for r in rows:
            if r["state"] == "processed":
                sops[(r["output"], r["sha256"])].append(r["sop"])
        outputs = sorted(sops)
        with ThreadPoolExecutor(UPLOADS) as pool:
            for output, _ in zip(outputs, pool.map(lambda o: self.hub.upload(harvest_id, outbox / o[0], o[1]),
                                                   outputs)):
                self.journal.set(harvest_id, sops[output], "uploaded")

    def deliver(self, harvest_id: str, qc_report: dict[str, Any]) -> None:
        """Upload every output not yet uploaded, then publish them as a version."""
        self.upload(harvest_id, self.journal.instances(harvest_id, "processed"))
        outputs = {r["output"]: r["sha256"] for r in self.journal.instances(harvest_id, "uploaded")}
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
            files = [{"path": p, "sha256": d} for p, d in sorted(outputs.items())]
            try:
                harvest = self.hub.deliver(harvest_id, delivery, files, qc_report, provenance, counts)
            except HubRefused as e:
                if e.status != 409 or not e.body.get("missing"):
                    raise
                lost = set(e.body["missing"])  # the hub lost them before publishing (a restart): again
                rows = [r for r in self.journal.instances(harvest_id, "uploaded") if r["sha256"] in lost]
                self.journal.set(harvest_id, [r["sop"] for r in rows], "processed")
                self.upload(harvest_id, self.journal.instances(harvest_id, "processed"))
                harvest = self.hub.deliver(harvest_id, delivery, files, qc_report, provenance, counts)
            version = harvest["version"]
        else:
            self.hub.progress(harvest_id, HarvestState.FAILED, counts, "nothing to deliver: see the counts",
                              self.journal.reasons(harvest_id, "quarantined"))
            version = None
        self.journal.set(harvest_id, [r["sop"] for r in self.journal.instances(harvest_id, "uploaded")], "delivered")
        self.journal.set_harvest(harvest_id, state="delivered" if version else "failed", version=version)
        for folder in (self.processor.outbox(harvest_id), self.settings.state_dir / "work" / harvest_id):
            shutil.rmtree(folder, ignore_errors=True)  # delivered (the journal keeps names and digests)
        log.info("harvest %s: %s", harvest_id, f"delivered as {version}" if version else "nothing delivered")

    # -- reporting ----------------------------------------------------------------------------------

    def _report(self, harvest_id: str, message: str) -> None:
        self.hub.progress(harvest_id, HarvestState.RUNNING, self.journal.counts(harvest_id), message)

    def _fail(self, harvest_id: str, message: str) -> None:
        log.error("harvest %s failed: %s", harvest_id, message)
        self.hub.progress(harvest_id, HarvestState.FAILED, self.journal.counts(harvest_id), message,
                          self.journal.reasons(harvest_id, "quarantined"))
        self.journal.set_harvest(harvest_id, state="failed", message=message)
