"""Audit events in the forms auditors and SIEMs read: FHIR R4 ``AuditEvent``, DICOM PS3.15
A.5 audit messages (IHE ATNA), and RFC 5424 syslog (the ATNA transport).

The actions map to DICOM's audit event IDs (CID 400) and FHIR's action codes; the outcomes
to the DICOM/FHIR outcome indicators (0 success, 4 minor failure: denied, 8 serious failure).
"""

from __future__ import annotations

import json
import logging
import socket
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlparse

#: action → (DICOM event ID code, its meaning, FHIR/DICOM action code C/R/U/D/E)
EVENT_IDS = {
    "login": ("110114", "User Authentication", "E"),
    "login-failed": ("110114", "User Authentication", "E"),
    "logout": ("110114", "User Authentication", "E"),
    "spawn": ("110100", "Application Activity", "E"),
    "stop": ("110100", "Application Activity", "E"),
    "dataset-open": ("110103", "DICOM Instances Accessed", "R"),
    "dataset-verify": ("110103", "DICOM Instances Accessed", "R"),
    "dataset-mount": ("110103", "DICOM Instances Accessed", "R"),
    "export": ("110106", "Export", "R"),
    "anonymize-run": ("110103", "DICOM Instances Accessed", "C"),
    "reidentify": ("110110", "Patient Record", "R"),
    "train-start": ("110100", "Application Activity", "E"),
    "train-round": ("110100", "Application Activity", "E"),
    "train-end": ("110100", "Application Activity", "E"),
    "job-submit": ("110100", "Application Activity", "E"),
    "job-end": ("110100", "Application Activity", "E"),
    "admin-change": ("110136", "Security Roles Changed", "U"),
    "token-created": ("110137", "User Security Attributes Changed", "C"),
    "harvest-request": ("110100", "Application Activity", "E"),
    "harvest-run": ("110104", "DICOM Instances Transferred", "R"),
    "quarantine": ("110103", "DICOM Instances Accessed", "U"),
    "delivery": ("110107", "Import", "C"),
    "dataset-version": ("110107", "Import", "C"),
    "access-request": ("110100", "Application Activity", "E"),
    "access-withdraw": ("110100", "Application Activity", "E"),
    "access-approve": ("110137", "User Security Attributes Changed", "C"),
    "access-refuse": ("110100", "Application Activity", "E"),
    "access-grant": ("110137", "User Security Attributes Changed", "C"),
    "grant-revoke": ("110137", "User Security Attributes Changed", "D"),
    "grant-expire": ("110137", "User Security Attributes Changed", "D"),
    "grant-enforce": ("110100", "Application Activity", "E"),
    "dataset-delete": ("110105", "DICOM Study Deleted", "D"),
    "dataset-publish": ("110106", "Export", "C"),
    "export-request": ("110100", "Application Activity", "E"),
    "export-review": ("110100", "Application Activity", "E"),
    "export-download": ("110106", "Export", "R"),
    "qa-report": ("110100", "Application Activity", "C"),
}
#: action → DICOM event type code (CID 401/403/...), where one says more
EVENT_TYPES = {
    "login": ("110122", "Login"), "login-failed": ("110122", "Login"), "logout": ("110123", "Logout"),
    "spawn": ("110120", "Application Start"), "stop": ("110121", "Application Stop"),
}
OUTCOME_CODES = {"success": "0", "denied": "4", "failure": "8"}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
log = logging.getLogger("medhub.audit")


def _entities(event: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, id) of each object the event names."""
    return [(k, str(v)) for k, v in sorted(event.get("object", {}).items()) if isinstance(v, (str, int)) and k != "files"]


def fhir_audit_event(event: dict[str, Any]) -> dict[str, Any]:
    code, meaning, action = EVENT_IDS[event["action"]]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": code, "display": meaning},
        "action": action,
        "recorded": event["time"].replace("Z", "+00:00"),
        "outcome": OUTCOME_CODES[event["outcome"]],
        "outcomeDesc": f"medhub {event['action']}: {event['outcome']}",
        "agent": [{
            "who": {"identifier": {"system": "urn:medhub:user", "value": event["actor"]["user"] or "unknown"}},
            "requestor": True,
            "role": [{"text": group} for group in event["actor"].get("groups", [])],
        }],
        "source": {"site": "medhub", "observer": {"display": f"medhub {event['actor']['source']}"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
        "entity": [{"what": {"identifier": {"system": f"urn:medhub:{kind}", "value": value}}}
                   for kind, value in _entities(event)],
    }
    if event["action"] in EVENT_TYPES:
        subtype, display = EVENT_TYPES[event["action"]]
        resource["subtype"] = [{"system": DCM, "code": subtype, "display": display}]
    if "seq" in event:
        resource["id"] = f"medhub-audit-{event['seq']}"
    return resource


def fhir_bundle(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A FHIR R4 ``collection`` Bundle of AuditEvents."""
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": fhir_audit_event(e)} for e in events]}


def dicom_message(event: dict[str, Any]) -> ET.Element:
    """One DICOM PS3.15 A.5 ``AuditMessage``."""
    code, meaning, action = EVENT_IDS[event["action"]]
    message = ET.Element("AuditMessage")
    ident = ET.SubElement(message, "EventIdentification", EventActionCode=action, EventDateTime=event["time"],
                          EventOutcomeIndicator=OUTCOME_CODES[event["outcome"]])
    ET.SubElement(ident, "EventID", {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning})
    if event["action"] in EVENT_TYPES:
        subtype, display = EVENT_TYPES[event["action"]]
        ET.SubElement(ident, "EventTypeCode", {"csd-code": subtype, "codeSystemName": "DCM", "originalText": display})
    ET.SubElement(message, "ActiveParticipant", UserID=event["actor"]["user"] or "unknown", UserIsRequestor="true",
                  AlternativeUserID=",".join(event["actor"].get("groups", [])))
    ET.SubElement(message, "AuditSourceIdentification", AuditSourceID=f"medhub-{event['actor']['source']}")
    for kind, value in _entities(event):
        obj = ET.SubElement(message, "ParticipantObjectIdentification", ParticipantObjectID=value,
                            ParticipantObjectTypeCode="2", ParticipantObjectTypeCodeRole="3")
        ET.SubElement(obj, "ParticipantObjectIDTypeCode", {"csd-code": kind, "codeSystemName": "medhub",
                                                           "originalText": f"medhub {kind} id"})
    return message


def dicom_messages(events: list[dict[str, Any]]) -> str:
    """DICOM audit messages, one ``AuditMessage`` each, in an ``AuditMessages`` document."""
    root = ET.Element("AuditMessages")
    root.extend(dicom_message(e) for e in events)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def syslog_line(event: dict[str, Any], hostname: str | None = None) -> bytes:
    """An RFC 5424 message carrying the DICOM audit message (facility authpriv, notice/warning)."""
    severity = 5 if event["outcome"] == "success" else 4
    body = ET.tostring(dicom_message(event), encoding="unicode")
    return (f"<{10 * 8 + severity}>1 {event['time']} {hostname or socket.gethostname()} medhub - "
            f"{event['action']} - \ufeff{body}").encode()


class SyslogForwarder:
    """Send each event to a syslog collector: ``udp://host:port`` (RFC 5426) or ``tcp://host:port``
    (RFC 6587 octet counting). Forwarding failures are logged, never fatal: the log on disk is
    the record."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        if parsed.scheme not in ("udp", "tcp") or not parsed.hostname or not parsed.port:
            raise ValueError(f"syslog target {url!r} must be udp://host:port or tcp://host:port")
        self.scheme, self.address = parsed.scheme, (parsed.hostname, parsed.port)
        self._socket: socket.socket | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        self.send(syslog_line(event))

    def checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Anchor an audit checkpoint at the collector (:mod:`medhub.audit.log`)."""
        body = json.dumps(checkpoint, sort_keys=True)
        self.send(f"<{10 * 8 + 5}>1 {checkpoint['time']} {socket.gethostname()} medhub - audit-checkpoint - "
                  f"\ufeff{body}".encode())

    def send(self, line: bytes) -> None:
        try:
            if self.scheme == "udp":
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._socket.sendto(line, self.address)
            else:
                if self._socket is None:
                    self._socket = socket.create_connection(self.address, timeout=2)
                self._socket.sendall(f"{len(line)} ".encode() + line)
        except OSError as e:
            log.warning("syslog forwarding to %s failed: %s", self.address, e)
            if self._socket is not None:
                self._socket.close()
            self._socket = None
