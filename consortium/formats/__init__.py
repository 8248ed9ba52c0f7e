"""The record formats: GS1 EPCIS 2.0 for provenance, HL7 FHIR R4 for patient records.

Pure functions, no I/O, no clock: validators run parts of it (epcis.check_event_at_consensus)
while building blocks and must all reach the same result. See docs/records.md.
"""
