"""The admission service's judgement: rule checks, prompts, verdicts and model backends.

An LLM reviews every join request and screens every record; what it flags goes to a vote of the
validators. The model advises, only votes decide. See docs/admission.md.

The integrator's entry points are `Reviewer.review_join` and `Reviewer.screen_record`.
"""

from consortium.admission.backends import (
    DEFAULT_MODEL,
    MODELS,
    Backend,
    BackendError,
    EmbeddedBackend,
    ModelIntegrityError,
    ModelUnavailable,
    OpenAIBackend,
    OpenAIConfig,
    RulesBackend,
)
from consortium.admission.model import (
    Finding,
    JoinContext,
    JoinRequest,
    PatientRecordInput,
    ProvenanceEvent,
    RecentSubmission,
    RecordContext,
    Registry,
    Severity,
    Task,
    Verdict,
)
from consortium.admission.payload import read_patient_payload
from consortium.admission.review import Reviewer

__all__ = [
    "DEFAULT_MODEL", "MODELS", "Backend", "BackendError", "EmbeddedBackend", "Finding",
    "JoinContext", "JoinRequest", "ModelIntegrityError", "ModelUnavailable", "OpenAIBackend",
    "OpenAIConfig", "PatientRecordInput", "ProvenanceEvent", "RecentSubmission",
    "RecordContext", "Registry", "Reviewer", "RulesBackend", "Severity", "Task", "Verdict",
    "read_patient_payload",
]
