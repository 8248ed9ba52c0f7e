"""The Python SDK: build, encrypt, sign and submit records; verify receipts against genesis."""

from consortium.client.sdk import (
    AsyncConsortiumClient,
    Identity,
    RecordView,
    SubmitError,
    VerifiedReceipt,
)
from consortium.client.sync import ConsortiumClient

__all__ = ["AsyncConsortiumClient", "ConsortiumClient", "Identity", "RecordView", "SubmitError",
           "VerifiedReceipt"]
