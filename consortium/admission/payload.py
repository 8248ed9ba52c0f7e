"""Reading a patient payload as the admission service: only when shared, always logged.

The service holds an organisation key pair like any reader. It can open a payload only if the
submitter wrapped the record key for it; every successful read (and every refused one) is
logged with the record id, so the members can audit what the service saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from consortium.crypto import envelope

log = structlog.get_logger("consortium.admission.payload")

AuditHook = Callable[[str, str, str], None]
"""(record_id, submitter_org, outcome) -> None: e.g. append to an audit table."""


def read_patient_payload(record_id: str, submitter_org: str, ciphertext: bytes,
                         associated_data: bytes, wrapped_keys: Mapping[str, bytes],
                         service_org: str, keys: envelope.OrgKeyPair,
                         audit: AuditHook | None = None) -> dict[str, Any] | None:
    """The decrypted payload as a JSON object, or None when it was not shared with the
    service (or does not decrypt). A payload that is not a JSON object comes back as
    ``{"_invalid_payload": why}``, which the schema rule flags."""
    wrapped = wrapped_keys.get(service_org)
    if wrapped is None:
        _record(audit, record_id, submitter_org, "not-shared")
        return None
    try:
        raw = envelope.open_sealed(ciphertext, associated_data, wrapped, keys)
    except envelope.DecryptionError as exc:
        _record(audit, record_id, submitter_org, f"undecryptable: {exc}")
        return None
    _record(audit, record_id, submitter_org, "read")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return {"_invalid_payload": "not JSON"}
    if not isinstance(data, dict):
        return {"_invalid_payload": "not a JSON object"}
    return data


def _record(audit: AuditHook | None, record_id: str, submitter_org: str, outcome: str) -> None:
    log.info("admission.payload_access", record_id=record_id, submitter=submitter_org,
             outcome=outcome)
    if audit is not None:
        audit(record_id, submitter_org, outcome)
