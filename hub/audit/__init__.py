"""The tamper-evident audit log: one event schema, a chained log, the service that writes it,
the hub's own events, and exports for auditors (FHIR AuditEvent, DICOM audit messages, syslog).
"""
