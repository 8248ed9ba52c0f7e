"""PostgreSQL schema of one validator, as ordered migrations.

Each migration is (version, SQL). `migrate` applies the ones a database lacks, in order, each in
its own transaction together with its row in `schema_migrations`, under an advisory lock so that
two processes opening the same database cannot both apply one. Applied migrations are never
edited: a schema change is a new, higher version.

Integer widths: heights, views, sequence numbers and timestamps are u64 in the protocol but stay
far below 2**63 in practice (bigint); a client nonce is any u64 the client chooses, so it is
numeric(20). PostgreSQL `text` and `jsonb` cannot hold U+0000; store.py stores such strings with
U+FFFD in place of NUL and reads the exact value back from the signed request bytes.
"""

from __future__ import annotations

import psycopg
from psycopg import AsyncConnection

from consortium.storage.rows import StoreError, WrongDatabase

MIGRATION_LOCK_KEY = 0x636F6E736F7274  # "consort": pg_advisory_xact_lock key for migrations

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE blocks (
    height        bigint  PRIMARY KEY CHECK (height >= 1),
    hash          bytea   NOT NULL UNIQUE CHECK (length(hash) = 32),
    prev_hash     bytea   NOT NULL CHECK (length(prev_hash) = 32),
    epoch         bigint  NOT NULL CHECK (epoch >= 0),
    view          bigint  NOT NULL CHECK (view >= 0),
    merkle_root   bytea   NOT NULL CHECK (length(merkle_root) = 32),
    state_digest  bytea   NOT NULL CHECK (length(state_digest) = 32),
    entry_count   bigint  NOT NULL CHECK (entry_count >= 0),
    timestamp_ms  bigint  NOT NULL CHECK (timestamp_ms >= 0),
    header        bytea   NOT NULL,
    pre_prepare   bytea   NOT NULL,
    certificate   bytea[] NOT NULL
);
CREATE INDEX blocks_timestamp_ms_idx ON blocks (timestamp_ms);

CREATE TABLE entries (
    height     bigint        NOT NULL REFERENCES blocks (height),
    idx        integer       NOT NULL CHECK (idx >= 0),
    record_id  text          NOT NULL,
    client_id  text          NOT NULL,
    nonce      numeric(20,0) NOT NULL CHECK (nonce >= 0),
    status     text          NOT NULL
               CHECK (status IN ('recorded', 'duplicate', 'invalid', 'governance')),
    reason     text          NOT NULL DEFAULT '',
    request    bytea         NOT NULL,
    PRIMARY KEY (height, idx)
);
CREATE INDEX entries_record_id_idx ON entries (record_id);
CREATE INDEX entries_client_nonce_idx ON entries (client_id, nonce);

CREATE TABLE records (
    record_id        text   PRIMARY KEY,
    height           bigint NOT NULL,
    idx              integer NOT NULL,
    kind             text   NOT NULL,
    subject_id       text   NOT NULL,
    event_type       text   NOT NULL,
    submitter_org    text   NOT NULL,
    submitted_at_ms  bigint NOT NULL,
    metadata         jsonb  NOT NULL,
    ciphertext       bytea  NOT NULL,
    content_hash     bytea  NOT NULL CHECK (length(content_hash) = 32),
    FOREIGN KEY (height, idx) REFERENCES entries (height, idx)
);
CREATE INDEX records_kind_subject_idx ON records (kind, subject_id, height, idx);
CREATE INDEX records_submitter_org_idx ON records (submitter_org);
CREATE UNIQUE INDEX records_position_idx ON records (height, idx);

CREATE TABLE wrapped_keys (
    record_id    text  NOT NULL REFERENCES records (record_id),
    org          text  NOT NULL,
    wrapped_key  bytea NOT NULL,
    PRIMARY KEY (record_id, org)
);
CREATE INDEX wrapped_keys_org_idx ON wrapped_keys (org);

CREATE TABLE consensus_log (
    id     bigserial PRIMARY KEY,
    epoch  bigint NOT NULL CHECK (epoch >= 0),
    view   bigint,
    seq    bigint,
    kind   text   NOT NULL CHECK (kind IN ('PRE_PREPARE', 'PREPARE', 'COMMIT', 'CHECKPOINT',
                                            'VIEW_CHANGE', 'NEW_VIEW')),
    data   bytea  NOT NULL
);
CREATE INDEX consensus_log_seq_idx ON consensus_log (seq);

CREATE TABLE checkpoint (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq        bigint  NOT NULL CHECK (seq >= 0),
    snapshot   bytea   NOT NULL,
    proof      bytea[] NOT NULL
);
"""),
    # Access control and erasure (docs/audit.md): record transactions name the record they act
    # on; an erased entry keeps a request view (key material withheld) in `request`; a block
    # whose entry was erased drops its pre-prepare once a stable checkpoint covers it.
    (2, """
ALTER TABLE entries ADD COLUMN target_record_id text;
ALTER TABLE entries ADD COLUMN redacted boolean NOT NULL DEFAULT false;
CREATE INDEX entries_target_record_idx ON entries (target_record_id)
    WHERE target_record_id IS NOT NULL;

ALTER TABLE records ADD COLUMN erased_height bigint;
ALTER TABLE records ADD COLUMN erased_by text;
ALTER TABLE records ADD COLUMN erased_at_ms bigint;
ALTER TABLE records ADD COLUMN erase_reason text;

ALTER TABLE blocks ADD COLUMN redact_pre_prepare boolean NOT NULL DEFAULT false;

CREATE TABLE access_log (
    height     bigint  NOT NULL,
    idx        integer NOT NULL,
    record_id  text    NOT NULL,
    client_id  text    NOT NULL,
    org        text    NOT NULL,
    purpose    text    NOT NULL,
    granted    boolean NOT NULL,
    at_ms      bigint  NOT NULL,
    PRIMARY KEY (height, idx),
    FOREIGN KEY (height, idx) REFERENCES entries (height, idx)
);
CREATE INDEX access_log_record_idx ON access_log (record_id, height);
"""),
    # Screening (docs/admission.md): every record has a screening status; verdicts of the
    # admission service and validators' review votes are kept with the entry that carried them.
    (3, """
ALTER TABLE records ADD COLUMN screening text NOT NULL DEFAULT 'accepted'
    CHECK (screening IN ('pending-screening', 'accepted', 'quarantined', 'rejected'));
CREATE INDEX records_screening_idx ON records (screening, height)
    WHERE screening <> 'accepted';

CREATE TABLE verdicts (
    height      bigint   NOT NULL,
    idx         integer  NOT NULL,
    record_id   text     NOT NULL,
    decision    text     NOT NULL,
    risk_milli  integer  NOT NULL,
    verdict     text     NOT NULL,
    PRIMARY KEY (height, idx),
    FOREIGN KEY (height, idx) REFERENCES entries (height, idx)
);
CREATE INDEX verdicts_record_idx ON verdicts (record_id, height);

CREATE TABLE review_votes (
    record_id   text     NOT NULL,
    replica_id  integer  NOT NULL,
    accept      boolean  NOT NULL,
    height      bigint   NOT NULL,
    idx         integer  NOT NULL,
    PRIMARY KEY (record_id, replica_id),
    FOREIGN KEY (height, idx) REFERENCES entries (height, idx)
);
"""),
    # Membership governance (docs/admission.md): join requests and removal proposals, and the
    # validators' votes on them (an approval carries the voter's signature over the
    # validator-set change, so the change assembles from the stored votes).
    (4, """
CREATE TABLE proposals (
    proposal_id     text     PRIMARY KEY,
    kind            text     NOT NULL CHECK (kind IN ('join', 'remove')),
    replica_id      integer  NOT NULL,
    org             text     NOT NULL,
    name            text     NOT NULL DEFAULT '',
    validator_key   bytea    NOT NULL DEFAULT '',
    client_key      bytea    NOT NULL DEFAULT '',
    encryption_key  bytea    NOT NULL DEFAULT '',
    peer_address    text     NOT NULL DEFAULT '',
    client_address  text     NOT NULL DEFAULT '',
    statement       text     NOT NULL DEFAULT '',
    reason          text     NOT NULL DEFAULT '',
    status          text     NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'approved', 'rejected')),
    height          bigint   NOT NULL,
    idx             integer  NOT NULL,
    decided_height  bigint,
    FOREIGN KEY (height, idx) REFERENCES entries (height, idx)
);

CREATE TABLE member_votes (
    proposal_id  text     NOT NULL REFERENCES proposals (proposal_id),
    epoch        integer  NOT NULL,
    replica_id   integer  NOT NULL,
    approve      boolean  NOT NULL,
    approval     bytea    NOT NULL,
    height       bigint   NOT NULL,
    idx          integer  NOT NULL,
    PRIMARY KEY (proposal_id, epoch, replica_id),
    FOREIGN KEY (height, idx) REFERENCES entries (height, idx)
);
"""),
    # Ciphertext and the messages that carry it do not compress: storing them without TOAST
    # compression saves PostgreSQL the attempt (pglz on a 600 KB pre-prepare per block).
    (5, """
ALTER TABLE blocks ALTER COLUMN pre_prepare SET STORAGE EXTERNAL;
ALTER TABLE consensus_log ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE entries ALTER COLUMN request SET STORAGE EXTERNAL;
ALTER TABLE records ALTER COLUMN ciphertext SET STORAGE EXTERNAL;
"""),
    # Ledger format 2 (docs/validator.md, "Storage"): a request is a client's envelope of items;
    # every byte of it is stored once. `envelopes` keeps one row per request (signature, digest,
    # status), `entries` one row per item of an executed envelope: the item's bytes, and for a
    # record its query columns and current readers (keys are read from the item or the grant
    # that added the reader). Proposals are stored as signed headers. No foreign keys on the
    # write path (the store is the only writer and checks the chain itself). A database that
    # holds a format-1 ledger is refused, never converted silently.
    (6, """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM blocks) THEN
        RAISE EXCEPTION 'this database holds a ledger of an earlier release (format 1): '
            'create a new consortium (consortium init) or use the release that wrote it';
    END IF;
END $$;
DROP TABLE review_votes, verdicts, access_log, member_votes, proposals, wrapped_keys, records,
    entries, blocks, consensus_log, checkpoint;

CREATE TABLE blocks (
    height        bigint  PRIMARY KEY CHECK (height >= 1),
    hash          bytea   NOT NULL CHECK (length(hash) = 32),
    epoch         bigint  NOT NULL CHECK (epoch >= 0),
    timestamp_ms  bigint  NOT NULL CHECK (timestamp_ms >= 0),
    header        bytea   NOT NULL,
    pre_prepare   bytea   NOT NULL,
    certificate   bytea[] NOT NULL
);

CREATE TABLE envelopes (
    height          bigint        NOT NULL,
    idx             integer       NOT NULL CHECK (idx >= 0),
    client_id       text          NOT NULL,
    nonce           numeric(20,0) NOT NULL CHECK (nonce >= 0),
    kind            smallint      NOT NULL,
    signature       bytea         NOT NULL,
    payload_digest  bytea         NOT NULL CHECK (length(payload_digest) = 32),
    status          text          NOT NULL
                    CHECK (status IN ('executed', 'duplicate', 'invalid', 'governance')),
    reason          text          NOT NULL DEFAULT '',
    first_entry     integer       NOT NULL,
    entry_count     integer       NOT NULL,
    raw             bytea,
    PRIMARY KEY (height, idx)
);
CREATE INDEX envelopes_client_nonce_idx ON envelopes (client_id, nonce);

CREATE TABLE entries (
    height            bigint   NOT NULL,
    idx               integer  NOT NULL CHECK (idx >= 0),
    envelope          integer  NOT NULL,
    item_index        integer  NOT NULL,
    record_id         text     NOT NULL,
    status            text     NOT NULL CHECK (status IN ('recorded', 'invalid')),
    reason            text     NOT NULL DEFAULT '',
    tx_type           smallint NOT NULL,
    target_record_id  text,
    item              bytea    NOT NULL,
    redacted          boolean  NOT NULL DEFAULT false,
    kind              text,
    subject_id        text,
    event_type        text,
    submitter_org     text,
    submitted_at_ms   bigint,
    metadata          jsonb,
    readers           text[],
    screening         text CHECK (screening IN ('pending-screening', 'accepted', 'quarantined',
                                                'rejected')),
    erased_height     bigint,
    erased_by         text,
    erased_at_ms      bigint,
    erase_reason      text,
    PRIMARY KEY (height, idx)
);
ALTER TABLE entries ALTER COLUMN item SET STORAGE EXTERNAL;
CREATE UNIQUE INDEX entries_record_id_idx ON entries (record_id);
CREATE INDEX entries_subject_idx ON entries (kind, subject_id, height, idx)
    WHERE kind IS NOT NULL;
CREATE INDEX entries_target_idx ON entries (target_record_id, height, idx)
    WHERE target_record_id IS NOT NULL;
CREATE INDEX entries_screening_idx ON entries (screening, height, idx)
    WHERE screening IS NOT NULL AND screening <> 'accepted';

CREATE TABLE record_subjects (
    kind        text     NOT NULL,
    subject_id  text     NOT NULL,
    height      bigint   NOT NULL,
    idx         integer  NOT NULL,
    PRIMARY KEY (kind, subject_id, height, idx)
);

CREATE TABLE access_log (
    height     bigint  NOT NULL,
    idx        integer NOT NULL,
    record_id  text    NOT NULL,
    client_id  text    NOT NULL,
    org        text    NOT NULL,
    purpose    text    NOT NULL,
    granted    boolean NOT NULL,
    at_ms      bigint  NOT NULL,
    PRIMARY KEY (height, idx)
);
CREATE INDEX access_log_record_idx ON access_log (record_id, height, idx);

CREATE TABLE verdicts (
    height      bigint   NOT NULL,
    idx         integer  NOT NULL,
    record_id   text     NOT NULL,
    decision    text     NOT NULL,
    risk_milli  integer  NOT NULL,
    verdict     text     NOT NULL,
    PRIMARY KEY (height, idx)
);
CREATE INDEX verdicts_record_idx ON verdicts (record_id, height, idx);

CREATE TABLE review_votes (
    record_id   text     NOT NULL,
    replica_id  integer  NOT NULL,
    accept      boolean  NOT NULL,
    height      bigint   NOT NULL,
    idx         integer  NOT NULL,
    PRIMARY KEY (record_id, replica_id)
);

CREATE TABLE proposals (
    proposal_id     text     PRIMARY KEY,
    kind            text     NOT NULL CHECK (kind IN ('join', 'remove')),
    replica_id      integer  NOT NULL,
    org             text     NOT NULL,
    name            text     NOT NULL DEFAULT '',
    validator_key   bytea    NOT NULL DEFAULT '',
    client_key      bytea    NOT NULL DEFAULT '',
    encryption_key  bytea    NOT NULL DEFAULT '',
    peer_address    text     NOT NULL DEFAULT '',
    client_address  text     NOT NULL DEFAULT '',
    statement       text     NOT NULL DEFAULT '',
    reason          text     NOT NULL DEFAULT '',
    status          text     NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'approved', 'rejected')),
    height          bigint   NOT NULL,
    idx             integer  NOT NULL,
    decided_height  bigint
);

CREATE TABLE member_votes (
    proposal_id  text     NOT NULL REFERENCES proposals (proposal_id),
    epoch        integer  NOT NULL,
    replica_id   integer  NOT NULL,
    approve      boolean  NOT NULL,
    approval     bytea    NOT NULL,
    height       bigint   NOT NULL,
    idx          integer  NOT NULL,
    PRIMARY KEY (proposal_id, epoch, replica_id)
);

CREATE TABLE consensus_log (
    id     bigserial PRIMARY KEY,
    epoch  bigint NOT NULL CHECK (epoch >= 0),
    view   bigint,
    seq    bigint,
    kind   text   NOT NULL CHECK (kind IN ('PRE_PREPARE', 'PREPARE', 'COMMIT', 'VIEW_CHANGE',
                                            'NEW_VIEW')),
    data   bytea  NOT NULL
);
CREATE INDEX consensus_log_seq_idx ON consensus_log (seq);

CREATE TABLE checkpoint (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq        bigint  NOT NULL CHECK (seq >= 0),
    snapshot   bytea   NOT NULL,
    proof      bytea[] NOT NULL
);
"""),
    # Sponsored, expiring join requests (docs/admission.md, "Membership"): a join request names
    # the member that sponsors it and expires after the genesis policy's join_pending_ttl_ms of
    # block time, counted from the block that recorded it. Join requests stored before carry
    # no sponsorship and are in an encoding this release no longer reads: such a database is
    # refused, never converted silently. A removal's recording time is its block's.
    (7, """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM proposals WHERE kind = 'join') THEN
        RAISE EXCEPTION 'this database holds join requests of an earlier development release '
            '(unsponsored): create a new consortium (consortium init)';
    END IF;
END $$;
ALTER TABLE proposals ADD COLUMN sponsor text NOT NULL DEFAULT '';
ALTER TABLE proposals ADD COLUMN recorded_ms bigint NOT NULL DEFAULT 0
    CHECK (recorded_ms >= 0);
UPDATE proposals p SET recorded_ms = b.timestamp_ms FROM blocks b WHERE b.height = p.height;
"""),
    # 8: a table that is only ever written in a transaction that rolls back: a validator
    # recovering from an outage proves the database takes writes again (a full disk answers
    # reads) before it says SERVING. No compression, so the probe's bytes reach the disk.
    (8, """
CREATE TABLE write_probe (data text NOT NULL);
ALTER TABLE write_probe ALTER COLUMN data SET STORAGE EXTERNAL;
"""),
    # 9: a proposal is persisted with its batch before the replica's PREPARE leaves (a prepared
    # batch must survive a restart of every replica that holds it); the batch is dropped from
    # the log once its block is stored, where its bytes live from then on.
    (9, """
ALTER TABLE consensus_log ADD COLUMN batch bytea;
ALTER TABLE consensus_log ALTER COLUMN batch SET STORAGE EXTERNAL;
"""),
    # 10: key revocations and rotations are proposals too. Kind 'client-key': name is the
    # client id, validator_key the key it acts on, client_key the new key ('' revokes); one
    # signed by the client's own organisation is stored approved at once. Kind
    # 'validator-key': validator_key is the validator's new key, client_key its old one. Kind
    # 'ca': name is 'add' or 'retire', validator_key the certificate's SHA-256 fingerprint,
    # statement the certificate (PEM).
    (10, """
ALTER TABLE proposals DROP CONSTRAINT proposals_kind_check;
ALTER TABLE proposals ADD CONSTRAINT proposals_kind_check
    CHECK (kind IN ('join', 'remove', 'client-key', 'validator-key', 'ca'));
"""),
)

LATEST_VERSION = MIGRATIONS[-1][0]


class SchemaError(StoreError):
    """The database schema is newer than this code, or the migration list is malformed."""


def _check_migrations() -> None:
    versions = [v for v, _ in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"migration versions must be 1..n in order, got {versions}")


async def current_version(conn: AsyncConnection) -> int:
    """The highest applied migration (0 for an empty database)."""
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def migrate(conn: AsyncConnection) -> int:
    """Bring the schema up to `LATEST_VERSION`; returns it. Idempotent. The connection must be
    in autocommit mode (each migration is its own transaction). Raises WrongDatabase when a
    migration refuses what the database holds (a format-1 ledger); nothing is changed then."""
    _check_migrations()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
    for version, sql in MIGRATIONS:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            cur = await conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s",
                                     (version,))
            if await cur.fetchone() is not None:
                continue
            try:
                await conn.execute(sql.encode())
            except psycopg.errors.RaiseException as exc:
                # A migration that refuses the database (migration 6 on a format-1 ledger)
                # says why in its RAISE: the validator reports it as a wrong database, in one
                # line, instead of an internal error with a PL/pgSQL traceback.
                raise WrongDatabase(exc.diag.message_primary or str(exc)) from exc
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)",
                               (version,))
    version = await current_version(conn)
    if version > LATEST_VERSION:
        raise SchemaError(f"database schema is version {version}, newer than this code "
                          f"({LATEST_VERSION}): upgrade the validator")
    return version
