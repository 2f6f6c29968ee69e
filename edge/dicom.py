"""The edge's DICOM peers: its C-STORE SCP, the PACS's query/retrieve, and DICOMweb.

Every instance that reaches the edge, by C-MOVE, C-GET, push, DICOMweb or upload, goes
through :meth:`Inbox.store`: written under its SOP Instance UID, atomically, into the inbox,
and entered in the journal. What is not a DICOM instance, or lacks the UIDs that name it,
goes to the quarantine folder with its reason instead.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)

from .errors import EdgeError, PacsUnreachable
from .journal import Journal
from .settings import EdgeSettings

log = logging.getLogger("medhub.edge")
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Header keywords the inbox indexes, with the journal column of each.
INDEXED = {"SOPInstanceUID": "sop", "StudyInstanceUID": "study", "SeriesInstanceUID": "series",
           "PatientID": "patient", "Modality": "modality", "StudyDate": "study_date", "AccessionNumber": "accession"}
SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC210, 0xA700


@dataclass(frozen=True)
class FoundSeries:
    """A series a query found at the PACS, with how many instances it holds."""

    study: str
    series: str
    modality: str
    instances: int


@dataclass(frozen=True)
class Found:
    """An instance a query found."""

    sop: str
    study: str
    series: str
    modality: str


class Inbox:
    """The edge's inbox folder and its quarantine of what could not be taken in."""

    def __init__(self, state_dir: Path, journal: Journal):
        self.folder, self.quarantine = state_dir / "inbox", state_dir / "quarantine" / "received"
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.quarantine.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.journal = journal

    def store(self, data: bytes, caller: str, header: Dataset | None = None) -> tuple[str | None, str | None]:
        """Take in one instance (a Part 10 file's bytes). Returns (SOP Instance UID, None), or
        (None, the reason it was quarantined)."""
        try:
            ds = header if header is not None else pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
            values = {column: str(ds.get(keyword, "") or "") for keyword, column in INDEXED.items()}
        except (InvalidDicomError, ValueError, TypeError, AttributeError, EOFError) as e:
            return None, self._quarantine(data, f"not a DICOM instance ({e})")
        missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not UID.match(
            values[INDEXED[k]])]
        if missing:
            return None, self._quarantine(data, f"no valid {', '.join(missing)}")
        target = self.folder / f"{values['sop']}.dcm"
        write_atomically(target, data)
        self.journal.arrived(**values, path=str(target), caller=caller)
        return values["sop"], None

    def _quarantine(self, data: bytes, reason: str) -> str:
        name = f"{time.time_ns()}-{os.getpid()}"
        write_atomically(self.quarantine / f"{name}.bin", data)
        (self.quarantine / f"{name}.reason.txt").write_text(reason + "\n")
        log.warning("quarantined a received object: %s", reason)
        return reason


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` under a temporary name, then rename: never a half file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)


def part10(event: Any) -> bytes:
    """A C-STORE request's dataset as a Part 10 file."""
    return bytes(event.encoded_dataset(include_meta=True))


class StorageSCP:
    """The edge's C-STORE SCP: the destination of its C-MOVEs and of pushes from the PACS and
    modalities (only the AE titles of ``[scp] allowed_callers`` and the PACS)."""

    def __init__(self, settings: EdgeSettings, inbox: Inbox):
        self.settings, self.inbox = settings, inbox
        self.server = None
        self.received = 0

    def handle_store(self, event: Any) -> int:
        caller = event.assoc.requestor.ae_title
        try:
            data = part10(event)
        except Exception as e:  # a dataset pynetdicom cannot encode back: nothing to keep
            log.warning("a C-STORE from %s could not be read: %s", caller, e)
            return CANNOT_UNDERSTAND
        try:
            sop, reason = self.inbox.store(data, caller)
        except OSError as e:
            log.error("the inbox cannot take an instance from %s: %s", caller, e)
            return OUT_OF_RESOURCES
        self.received += 1
        return SUCCESS if sop else CANNOT_UNDERSTAND

    def start(self) -> None:
        ae = AE(ae_title=self.settings.scp.aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.require_calling_aet = sorted({*self.settings.scp.allowed_callers, self.settings.pacs.aet})
        ae.maximum_pdu_size = 0
        self.server = ae.start_server((self.settings.scp.bind, self.settings.scp.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.handle_store)])
        log.info("C-STORE SCP %s on %s:%d; callers: %s", self.settings.scp.aet, self.settings.scp.bind,
                 self.settings.scp.port, ", ".join(ae.require_calling_aet))

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def query_dataset(level: str, query: dict[str, str], *returned: str) -> Dataset:
    """A C-FIND identifier at ``level`` matching ``query``, asking for ``returned`` keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    keys = {"STUDY": ("StudyInstanceUID",), "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality"),
            "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality")}[level]
    for keyword in (*keys, *returned):
        setattr(ds, keyword, "")
    for keyword, value in query.items():
        setattr(ds, keyword, value)
    return ds


class Pacs:
    """The hospital's PACS, over DIMSE: C-FIND, then C-MOVE to the edge or C-GET."""

    def __init__(self, settings: EdgeSettings, inbox: Inbox, sleep: Callable[[float], None] = time.sleep):
        self.settings, self.inbox, self.sleep = settings, inbox, sleep

    def _associate(self, model: str, with_storage: bool = False):
        pacs = self.settings.pacs
        ae = AE(ae_title=self.settings.scp.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = pacs.timeout
        ae.add_requested_context(model)
        handlers, roles = [], []
        if with_storage:  # C-GET: the PACS stores to us on this association
            for context in StoragePresentationContexts:  # 120: with the C-GET context, within 128
                ae.add_requested_context(context.abstract_syntax)
                roles.append(build_role(context.abstract_syntax, scp_role=True))
            scp = StorageSCP(self.settings, self.inbox)
            handlers = [(evt.EVT_C_STORE, scp.handle_store)]
        reason = "no answer"
        for attempt in range(pacs.retries):
            assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.aet, ext_neg=roles or None,
                                 evt_handlers=handlers or None)
            if assoc.is_established:
                return assoc
            reason = "the association was rejected (is the edge's AE title known to the PACS?)" \
                if assoc.is_rejected else "no answer (is the PACS up, and its host and port right?)"
            if assoc.is_rejected:
                break
            wait = min(60.0, 2.0 ** attempt)
            log.warning("PACS %s at %s:%d: %s; trying again in %.0f s", pacs.aet, pacs.host, pacs.port, reason, wait)
            self.sleep(wait)
        raise PacsUnreachable(f"PACS {pacs.aet} at {pacs.host}:{pacs.port}: {reason}")

    def find_series(self, query: dict[str, str]) -> tuple[list[FoundSeries], dict[str, int]]:
        """The series matching ``query`` with their sizes, and the sizes of their studies:
        C-FIND by study, then by series within each (the hierarchical query every PACS answers)."""
        study_keys = {k: v for k, v in query.items() if k in ("PatientID", "StudyDate", "AccessionNumber",
                                                                "StudyInstanceUID")}
        series_keys = {k: v for k, v in query.items() if k in ("SeriesInstanceUID", "Modality")}
        assoc = self._associate(StudyRootQueryRetrieveInformationModelFind)
        try:
            studies = self._find(assoc, query_dataset("STUDY", study_keys, "NumberOfStudyRelatedInstances"))
            found = []
            for study in studies:
                uid = str(study.StudyInstanceUID)
                for s in self._find(assoc, query_dataset("SERIES", {"StudyInstanceUID": uid, **series_keys},
                                                         "NumberOfSeriesRelatedInstances")):
                    found.append(FoundSeries(uid, str(s.SeriesInstanceUID), str(s.get("Modality", "")),
                                             int(s.get("NumberOfSeriesRelatedInstances") or 0)))
            return found, {str(s.StudyInstanceUID): int(s.get("NumberOfStudyRelatedInstances") or 0) for s in studies}
        finally:
            assoc.release()

    def instances_of(self, study: str, series: str) -> list[Found]:
        """Every instance of one series (C-FIND at the instance level)."""
        assoc = self._associate(StudyRootQueryRetrieveInformationModelFind)
        try:
            images = self._find(assoc, query_dataset("IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series}))
        finally:
            assoc.release()
        return [Found(str(i.SOPInstanceUID), study, series, str(i.get("Modality", ""))) for i in images]

    def study_sizes(self, studies: Iterable[str]) -> dict[str, int]:
        """Instances the PACS holds of each study (one C-FIND at the study level): how an edge
        sees that a study is still arriving, without listing its instances again."""
        uids = sorted(studies)
        if not uids:
            return {}
        assoc = self._associate(StudyRootQueryRetrieveInformationModelFind)
        try:
            answers = self._find(assoc, query_dataset("STUDY", {"StudyInstanceUID": "\\".join(uids)},
                                                      "NumberOfStudyRelatedInstances"))
        finally:
            assoc.release()
        return {str(a.StudyInstanceUID): int(a.get("NumberOfStudyRelatedInstances") or 0) for a in answers}

    def _find(self, assoc, identifier: Dataset) -> list[Dataset]:
        answers = []
        for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if status is None:
                raise PacsUnreachable("the PACS stopped answering a C-FIND")
            if status.Status in (0xFF00, 0xFF01) and ds is not None:
                answers.append(ds)
            elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                raise EdgeError(f"the PACS refused a C-FIND (status 0x{status.Status:04X})")
        return answers

    def retrieve(self, series: Iterable[tuple[str, str]],
                 done: Callable[[str, str], None] | None = None) -> dict[str, int]:
        """Bring each (study, series) into the inbox, calling ``done(study, series)`` after each;
        the sub-operations' counts."""
        get = self.settings.pacs.retrieve == "get"
        model = StudyRootQueryRetrieveInformationModelGet if get else StudyRootQueryRetrieveInformationModelMove
        totals = {"completed": 0, "failed": 0, "warning": 0}
        assoc = self._associate(model, with_storage=get)
        try:
            for study, uid in series:
                ds = Dataset()
                ds.QueryRetrieveLevel, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SERIES", study, uid
                responses = assoc.send_c_get(ds, model) if get else \
                    assoc.send_c_move(ds, self.settings.scp.aet, model)
                last = None
                for status, _ in responses:
                    if status is None:
                        raise PacsUnreachable("the PACS stopped answering a retrieve")
                    last = status
                if last is not None:
                    totals["completed"] += int(last.get("NumberOfCompletedSuboperations", 0) or 0)
                    totals["failed"] += int(last.get("NumberOfFailedSuboperations", 0) or 0)
                    totals["warning"] += int(last.get("NumberOfWarningSuboperations", 0) or 0)
                    if last.Status == 0xA801:
                        raise EdgeError(f"the PACS does not know the move destination {self.settings.scp.aet}: add "
                                        "it to the PACS's DICOM nodes with this edge's host and port")
                if done is not None:
                    done(study, uid)
            return totals
        finally:
            assoc.release()


class DicomWeb:
    """The PACS over DICOMweb: QIDO-RS to find, WADO-RS to fetch."""

    def __init__(self, settings: EdgeSettings, inbox: Inbox):
        if not settings.pacs.dicomweb_url:
            raise EdgeError("this harvest asks for DICOMweb, and the edge has no [pacs] dicomweb_url")
        from dicomweb_client.api import DICOMwebClient

        self.client = DICOMwebClient(url=settings.pacs.dicomweb_url)
        self.inbox = inbox

    def find(self, query: dict[str, str]) -> list[Found]:
        found = []
        for s in self.client.search_for_series(search_filters=dict(query), get_remaining=True):
            series = Dataset.from_json(s)
            for i in self.client.search_for_instances(series.StudyInstanceUID, series.SeriesInstanceUID,
                                                      get_remaining=True):
                found.append(Found(str(Dataset.from_json(i).SOPInstanceUID), str(series.StudyInstanceUID),
                                   str(series.SeriesInstanceUID), str(series.get("Modality", ""))))
        return found

    def retrieve(self, instances: Iterable[Found], whole_series: bool = False) -> dict[str, int]:
        """Fetch ``instances`` (WADO-RS) into the inbox; with ``whole_series`` (they are all of one
        series), in one streamed request for the series instead of one per instance."""
        instances = list(instances)
        totals = {"completed": 0, "failed": 0, "warning": 0}
        if whole_series and instances:
            try:
                for ds in self.client.iter_series(instances[0].study, instances[0].series):
                    self._store(ds, totals)
                return totals
            except Exception as e:  # noqa: BLE001 - fall back to one instance at a time, which counts each failure
                log.warning("WADO-RS of series %s failed (%s); fetching instance by instance", instances[0].series, e)
                here = set(self.inbox.journal.inbox([f.sop for f in instances]))
                instances = [f for f in instances if f.sop not in here]
        for item in instances:
            try:
                ds = self.client.retrieve_instance(item.study, item.series, item.sop)
            except Exception as e:  # noqa: BLE001 - an HTTP error of one instance: counted, the rest go on
                log.warning("WADO-RS of %s failed: %s", item.sop, e)
                totals["failed"] += 1
                continue
            self._store(ds, totals)
        return totals

    def _store(self, ds: Dataset, totals: dict[str, int]) -> None:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        sop, _ = self.inbox.store(buffer.getvalue(), "DICOMWEB", header=ds)
        totals["completed" if sop else "failed"] += 1
