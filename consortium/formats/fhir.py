"""HL7 FHIR R4 patient records: the one module the SDK, CLI and admission service import.

    validate_patient_payload(data, patient_id) -> FhirSummary
    FhirSummary.public_metadata() -> {"fhir_resource_type", "fhir_resource_types",
                                      "fhir_code_systems"}
    bundle(resources, bundle_type="collection"|"searchset", access_log=[AccessLogEntry...],
           timestamp_ms=None, bundle_id=None) -> dict

See docs/records.md, fhir_validate.py (what is checked, why R4B models) and fhir_bundle.py.
"""

from consortium.formats.errors import FhirError
from consortium.formats.fhir_bundle import AccessLogEntry, audit_event, bundle
from consortium.formats.fhir_validate import (
    ACCEPTED_TYPES,
    LOINC,
    UCUM,
    FhirSummary,
    check_loinc,
    load_payload,
    validate_patient_payload,
)

__all__ = ["ACCEPTED_TYPES", "LOINC", "UCUM", "AccessLogEntry", "FhirError", "FhirSummary",
           "audit_event", "bundle", "check_loinc", "load_payload", "validate_patient_payload"]
