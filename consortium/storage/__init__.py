"""PostgreSQL storage of a validator: schema and migrations, blocks and records, the durable
consensus log for crash recovery. No consensus logic lives here."""

from consortium.storage.schema import LATEST_VERSION, SchemaError, migrate
from consortium.storage.store import (
    BlockRejected,
    LedgerStore,
    StoreCorrupted,
    StoredBlock,
    StoredRecord,
    StoreError,
    WrongDatabase,
)

__all__ = [
    "LATEST_VERSION",
    "BlockRejected",
    "LedgerStore",
    "SchemaError",
    "StoreCorrupted",
    "StoreError",
    "StoredBlock",
    "StoredRecord",
    "WrongDatabase",
    "migrate",
]
