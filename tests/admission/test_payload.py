"""Reading patient payloads as the admission service: only when shared, always audited."""

from __future__ import annotations

import json

from consortium.admission.payload import read_patient_payload
from consortium.crypto import envelope

AAD = b"public metadata"


def sealed(payload: bytes, readers: dict[str, envelope.OrgKeyPair]) -> envelope.Sealed:
    return envelope.seal(payload, AAD, {o: k.public_key for o, k in readers.items()})


def test_shared_payload_is_read_and_audited() -> None:
    clinic, service = envelope.OrgKeyPair.generate(), envelope.OrgKeyPair.generate()
    s = sealed(json.dumps({"age_years": 40}).encode(), {"clinic": clinic, "admission": service})
    seen: list[tuple[str, str, str]] = []
    out = read_patient_payload("rec-1", "clinic", s.ciphertext, AAD, s.wrapped_keys,
                               "admission", service, lambda *a: seen.append(a))
    assert out == {"age_years": 40}
    assert seen == [("rec-1", "clinic", "read")]


def test_unshared_or_altered_payload_is_not_read() -> None:
    clinic, service = envelope.OrgKeyPair.generate(), envelope.OrgKeyPair.generate()
    s = sealed(b'{"age_years": 40}', {"clinic": clinic})
    seen: list[tuple[str, str, str]] = []
    assert read_patient_payload("rec-1", "clinic", s.ciphertext, AAD, s.wrapped_keys,
                                "admission", service, lambda *a: seen.append(a)) is None
    s2 = sealed(b'{"age_years": 40}', {"clinic": clinic, "admission": service})
    assert read_patient_payload("rec-2", "clinic", s2.ciphertext, b"other metadata",
                                s2.wrapped_keys, "admission", service,
                                lambda *a: seen.append(a)) is None
    assert seen[0][2] == "not-shared" and seen[1][2].startswith("undecryptable")


def test_non_json_payload_is_marked_for_the_schema_rule() -> None:
    service = envelope.OrgKeyPair.generate()
    s = sealed(b"\xff not json", {"admission": service})
    out = read_patient_payload("rec-1", "clinic", s.ciphertext, AAD, s.wrapped_keys,
                               "admission", service)
    assert out == {"_invalid_payload": "not JSON"}
