"""PostgreSQL storage of a validator: schema and migrations, the writer on the consensus path
(blocks, records, the durable consensus log for crash recovery) and the reader that serves
clients from a pool of its own. No consensus logic lives here."""

from consortium.storage.reads import LedgerReader
from consortium.storage.rows import (
    BlockRejected,
    StoreCorrupted,
    StoredBlock,
    StoredRecord,
    StoreError,
    StoreUnavailable,
    WrongDatabase,
)
from consortium.storage.schema import LATEST_VERSION, SchemaError, migrate
from consortium.storage.store import LedgerStore

__all__ = [
    "LATEST_VERSION",
    "BlockRejected",
    "LedgerReader",
    "LedgerStore",
    "SchemaError",
    "StoreCorrupted",
    "StoreError",
    "StoreUnavailable",
    "StoredBlock",
    "StoredRecord",
    "WrongDatabase",
    "migrate",
]
