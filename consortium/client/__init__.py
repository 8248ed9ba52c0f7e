"""The Python SDK: build, encrypt, sign and submit records; verify receipts against genesis."""

from consortium.client.sdk import (
    AsyncConsortiumClient,
    ConsortiumClient,
    Identity,
    RecordView,
    SubmitError,
    VerifiedReceipt,
)

__all__ = ["AsyncConsortiumClient", "ConsortiumClient", "Identity", "RecordView", "SubmitError",
           "VerifiedReceipt"]
