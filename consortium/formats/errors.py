"""The one exception family of the record formats.

Every bad input surfaces as a `FormatError` whose message is one line, names the field, and says
what was expected, so the CLI, the SDK and the validators can print it as is (and validators
can store it as the reason a record was refused).
"""

from __future__ import annotations


class FormatError(ValueError):
    """Bad input to a record format: the message is one line and names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class Gs1Error(FormatError):
    """A GS1 identifier that is malformed (check digit, length split, characters, form)."""


class VocabularyError(FormatError):
    """A CBV value that is unknown, or contradicts another field of the event."""


class EpcisError(FormatError):
    """An EPCIS document or event that does not validate."""


class FhirError(FormatError):
    """A FHIR payload that is not FHIR R4, or breaks the consortium's patient rules."""
