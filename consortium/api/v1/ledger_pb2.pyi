from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListMembersRequest(_message.Message):
    __slots__ = ("auth",)
    AUTH_FIELD_NUMBER: _ClassVar[int]
    auth: ReadAuth
    def __init__(self, auth: _Optional[_Union[ReadAuth, _Mapping]] = ...) -> None: ...

class MemberVoteInfo(_message.Message):
    __slots__ = ("epoch", "replica_id", "approve")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    replica_id: int
    approve: bool
    def __init__(self, epoch: _Optional[int] = ..., replica_id: _Optional[int] = ..., approve: _Optional[bool] = ...) -> None: ...

class ProposalInfo(_message.Message):
    __slots__ = ("proposal_id", "kind", "replica_id", "org", "name", "peer_address", "client_address", "statement", "reason", "status", "height", "decided_height", "validator_key", "client_key", "encryption_key", "verdicts", "votes", "sponsor", "expires_ms", "gs1")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VALIDATOR_KEY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    SPONSOR_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    GS1_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    kind: str
    replica_id: int
    org: str
    name: str
    peer_address: str
    client_address: str
    statement: str
    reason: str
    status: str
    height: int
    decided_height: int
    validator_key: bytes
    client_key: bytes
    encryption_key: bytes
    verdicts: _containers.RepeatedCompositeFieldContainer[VerdictInfo]
    votes: _containers.RepeatedCompositeFieldContainer[MemberVoteInfo]
    sponsor: str
    expires_ms: int
    gs1: str
    def __init__(self, proposal_id: _Optional[str] = ..., kind: _Optional[str] = ..., replica_id: _Optional[int] = ..., org: _Optional[str] = ..., name: _Optional[str] = ..., peer_address: _Optional[str] = ..., client_address: _Optional[str] = ..., statement: _Optional[str] = ..., reason: _Optional[str] = ..., status: _Optional[str] = ..., height: _Optional[int] = ..., decided_height: _Optional[int] = ..., validator_key: _Optional[bytes] = ..., client_key: _Optional[bytes] = ..., encryption_key: _Optional[bytes] = ..., verdicts: _Optional[_Iterable[_Union[VerdictInfo, _Mapping]]] = ..., votes: _Optional[_Iterable[_Union[MemberVoteInfo, _Mapping]]] = ..., sponsor: _Optional[str] = ..., expires_ms: _Optional[int] = ..., gs1: _Optional[str] = ...) -> None: ...

class MemberInfo(_message.Message):
    __slots__ = ("replica_id", "org", "public_key", "peer_address", "client_address")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    org: str
    public_key: bytes
    peer_address: str
    client_address: str
    def __init__(self, replica_id: _Optional[int] = ..., org: _Optional[str] = ..., public_key: _Optional[bytes] = ..., peer_address: _Optional[str] = ..., client_address: _Optional[str] = ...) -> None: ...

class MembersReply(_message.Message):
    __slots__ = ("proposals", "validators", "epoch", "quorum")
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    VALIDATORS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedCompositeFieldContainer[ProposalInfo]
    validators: _containers.RepeatedCompositeFieldContainer[MemberInfo]
    epoch: int
    quorum: int
    def __init__(self, proposals: _Optional[_Iterable[_Union[ProposalInfo, _Mapping]]] = ..., validators: _Optional[_Iterable[_Union[MemberInfo, _Mapping]]] = ..., epoch: _Optional[int] = ..., quorum: _Optional[int] = ...) -> None: ...

class GetEpochsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EpochsReply(_message.Message):
    __slots__ = ("epochs",)
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    epochs: bytes
    def __init__(self, epochs: _Optional[bytes] = ...) -> None: ...

class ListScreeningRequest(_message.Message):
    __slots__ = ("screening", "after_height", "limit", "auth", "after_index")
    SCREENING_FIELD_NUMBER: _ClassVar[int]
    AFTER_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    screening: str
    after_height: int
    limit: int
    auth: ReadAuth
    after_index: int
    def __init__(self, screening: _Optional[str] = ..., after_height: _Optional[int] = ..., limit: _Optional[int] = ..., auth: _Optional[_Union[ReadAuth, _Mapping]] = ..., after_index: _Optional[int] = ...) -> None: ...

class ReviewVoteInfo(_message.Message):
    __slots__ = ("replica_id", "accept")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    accept: bool
    def __init__(self, replica_id: _Optional[int] = ..., accept: _Optional[bool] = ...) -> None: ...

class VerdictInfo(_message.Message):
    __slots__ = ("decision", "risk_milli", "verdict_json")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RISK_MILLI_FIELD_NUMBER: _ClassVar[int]
    VERDICT_JSON_FIELD_NUMBER: _ClassVar[int]
    decision: str
    risk_milli: int
    verdict_json: str
    def __init__(self, decision: _Optional[str] = ..., risk_milli: _Optional[int] = ..., verdict_json: _Optional[str] = ...) -> None: ...

class ScreeningEntry(_message.Message):
    __slots__ = ("record_id", "height", "kind", "subject_id", "event_type", "submitter_org", "screening", "verdicts", "votes")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_ORG_FIELD_NUMBER: _ClassVar[int]
    SCREENING_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    height: int
    kind: str
    subject_id: str
    event_type: str
    submitter_org: str
    screening: str
    verdicts: _containers.RepeatedCompositeFieldContainer[VerdictInfo]
    votes: _containers.RepeatedCompositeFieldContainer[ReviewVoteInfo]
    def __init__(self, record_id: _Optional[str] = ..., height: _Optional[int] = ..., kind: _Optional[str] = ..., subject_id: _Optional[str] = ..., event_type: _Optional[str] = ..., submitter_org: _Optional[str] = ..., screening: _Optional[str] = ..., verdicts: _Optional[_Iterable[_Union[VerdictInfo, _Mapping]]] = ..., votes: _Optional[_Iterable[_Union[ReviewVoteInfo, _Mapping]]] = ...) -> None: ...

class ScreeningReply(_message.Message):
    __slots__ = ("records", "quorum", "more", "next_height", "next_index")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ScreeningEntry]
    quorum: int
    more: bool
    next_height: int
    next_index: int
    def __init__(self, records: _Optional[_Iterable[_Union[ScreeningEntry, _Mapping]]] = ..., quorum: _Optional[int] = ..., more: _Optional[bool] = ..., next_height: _Optional[int] = ..., next_index: _Optional[int] = ...) -> None: ...

class ReadAuth(_message.Message):
    __slots__ = ("client_id", "timestamp_ms", "signature")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    timestamp_ms: int
    signature: bytes
    def __init__(self, client_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitRecordRequest(_message.Message):
    __slots__ = ("request", "wait_ms", "retry")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    request: bytes
    wait_ms: int
    retry: bool
    def __init__(self, request: _Optional[bytes] = ..., wait_ms: _Optional[int] = ..., retry: _Optional[bool] = ...) -> None: ...

class EnvelopeResult(_message.Message):
    __slots__ = ("client_id", "nonce", "request_index", "request_path", "status", "reason", "item_statuses", "item_reasons")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ITEM_STATUSES_FIELD_NUMBER: _ClassVar[int]
    ITEM_REASONS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    nonce: int
    request_index: int
    request_path: _containers.RepeatedScalarFieldContainer[bytes]
    status: str
    reason: str
    item_statuses: _containers.RepeatedScalarFieldContainer[str]
    item_reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, client_id: _Optional[str] = ..., nonce: _Optional[int] = ..., request_index: _Optional[int] = ..., request_path: _Optional[_Iterable[bytes]] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., item_statuses: _Optional[_Iterable[str]] = ..., item_reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class BlockReceipts(_message.Message):
    __slots__ = ("height", "block_header", "certificate", "envelopes")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HEADER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    height: int
    block_header: bytes
    certificate: _containers.RepeatedScalarFieldContainer[bytes]
    envelopes: _containers.RepeatedCompositeFieldContainer[EnvelopeResult]
    def __init__(self, height: _Optional[int] = ..., block_header: _Optional[bytes] = ..., certificate: _Optional[_Iterable[bytes]] = ..., envelopes: _Optional[_Iterable[_Union[EnvelopeResult, _Mapping]]] = ...) -> None: ...

class SubmitError(_message.Message):
    __slots__ = ("client_id", "nonce", "code", "message", "original", "redirect", "primary")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    nonce: int
    code: int
    message: str
    original: BlockReceipts
    redirect: bool
    primary: int
    def __init__(self, client_id: _Optional[str] = ..., nonce: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., original: _Optional[_Union[BlockReceipts, _Mapping]] = ..., redirect: _Optional[bool] = ..., primary: _Optional[int] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("receipts", "error")
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    receipts: BlockReceipts
    error: SubmitError
    def __init__(self, receipts: _Optional[_Union[BlockReceipts, _Mapping]] = ..., error: _Optional[_Union[SubmitError, _Mapping]] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("record_id", "auth", "access_id", "min_height")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    ACCESS_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    auth: ReadAuth
    access_id: str
    min_height: int
    def __init__(self, record_id: _Optional[str] = ..., auth: _Optional[_Union[ReadAuth, _Mapping]] = ..., access_id: _Optional[str] = ..., min_height: _Optional[int] = ...) -> None: ...

class ListSubjectRequest(_message.Message):
    __slots__ = ("kind", "subject_id", "auth", "after_height", "after_index", "limit")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    AFTER_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    subject_id: str
    auth: ReadAuth
    after_height: int
    after_index: int
    limit: int
    def __init__(self, kind: _Optional[str] = ..., subject_id: _Optional[str] = ..., auth: _Optional[_Union[ReadAuth, _Mapping]] = ..., after_height: _Optional[int] = ..., after_index: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class SubjectEntry(_message.Message):
    __slots__ = ("receipt", "target_record_id")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    receipt: Receipt
    target_record_id: str
    def __init__(self, receipt: _Optional[_Union[Receipt, _Mapping]] = ..., target_record_id: _Optional[str] = ...) -> None: ...

class SubjectReply(_message.Message):
    __slots__ = ("entries", "more", "next_height", "next_index")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[SubjectEntry]
    more: bool
    next_height: int
    next_index: int
    def __init__(self, entries: _Optional[_Iterable[_Union[SubjectEntry, _Mapping]]] = ..., more: _Optional[bool] = ..., next_height: _Optional[int] = ..., next_index: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("index", "size", "path")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    index: int
    size: int
    path: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., size: _Optional[int] = ..., path: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("record_id", "height", "block_header", "certificate", "request_proof", "client_id", "nonce", "kind", "signature", "item_proof", "item", "item_view", "status", "reason")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HEADER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PROOF_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ITEM_PROOF_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ITEM_VIEW_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    height: int
    block_header: bytes
    certificate: _containers.RepeatedScalarFieldContainer[bytes]
    request_proof: InclusionProof
    client_id: str
    nonce: int
    kind: int
    signature: bytes
    item_proof: InclusionProof
    item: bytes
    item_view: bytes
    status: str
    reason: str
    def __init__(self, record_id: _Optional[str] = ..., height: _Optional[int] = ..., block_header: _Optional[bytes] = ..., certificate: _Optional[_Iterable[bytes]] = ..., request_proof: _Optional[_Union[InclusionProof, _Mapping]] = ..., client_id: _Optional[str] = ..., nonce: _Optional[int] = ..., kind: _Optional[int] = ..., signature: _Optional[bytes] = ..., item_proof: _Optional[_Union[InclusionProof, _Mapping]] = ..., item: _Optional[bytes] = ..., item_view: _Optional[bytes] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WrappedKey(_message.Message):
    __slots__ = ("org", "wrapped_key")
    ORG_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    org: str
    wrapped_key: bytes
    def __init__(self, org: _Optional[str] = ..., wrapped_key: _Optional[bytes] = ...) -> None: ...

class RecordReply(_message.Message):
    __slots__ = ("record_id", "height", "kind", "subject_id", "event_type", "submitter_org", "submitted_at_ms", "metadata", "ciphertext", "wrapped_keys", "status", "item_view", "erasure", "receipt", "key_withheld", "screening", "also", "document")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_ORG_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEYS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ITEM_VIEW_FIELD_NUMBER: _ClassVar[int]
    ERASURE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    KEY_WITHHELD_FIELD_NUMBER: _ClassVar[int]
    SCREENING_FIELD_NUMBER: _ClassVar[int]
    ALSO_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    height: int
    kind: str
    subject_id: str
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: _containers.ScalarMap[str, str]
    ciphertext: bytes
    wrapped_keys: _containers.RepeatedCompositeFieldContainer[WrappedKey]
    status: str
    item_view: bytes
    erasure: Erasure
    receipt: Receipt
    key_withheld: str
    screening: str
    also: _containers.RepeatedScalarFieldContainer[str]
    document: bytes
    def __init__(self, record_id: _Optional[str] = ..., height: _Optional[int] = ..., kind: _Optional[str] = ..., subject_id: _Optional[str] = ..., event_type: _Optional[str] = ..., submitter_org: _Optional[str] = ..., submitted_at_ms: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., ciphertext: _Optional[bytes] = ..., wrapped_keys: _Optional[_Iterable[_Union[WrappedKey, _Mapping]]] = ..., status: _Optional[str] = ..., item_view: _Optional[bytes] = ..., erasure: _Optional[_Union[Erasure, _Mapping]] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., key_withheld: _Optional[str] = ..., screening: _Optional[str] = ..., also: _Optional[_Iterable[str]] = ..., document: _Optional[bytes] = ...) -> None: ...

class Erasure(_message.Message):
    __slots__ = ("height", "by_org", "at_ms", "reason")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BY_ORG_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    height: int
    by_org: str
    at_ms: int
    reason: str
    def __init__(self, height: _Optional[int] = ..., by_org: _Optional[str] = ..., at_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GetBlockRequest(_message.Message):
    __slots__ = ("height", "auth", "audit")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    height: int
    auth: ReadAuth
    audit: bool
    def __init__(self, height: _Optional[int] = ..., auth: _Optional[_Union[ReadAuth, _Mapping]] = ..., audit: _Optional[bool] = ...) -> None: ...

class StreamBlocksRequest(_message.Message):
    __slots__ = ("from_height", "auth", "audit", "to_height")
    FROM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    TO_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    from_height: int
    auth: ReadAuth
    audit: bool
    to_height: int
    def __init__(self, from_height: _Optional[int] = ..., auth: _Optional[_Union[ReadAuth, _Mapping]] = ..., audit: _Optional[bool] = ..., to_height: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("client_id", "nonce", "kind", "signature", "payload_digest", "status", "reason", "entry_count", "raw")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    nonce: int
    kind: int
    signature: bytes
    payload_digest: bytes
    status: str
    reason: str
    entry_count: int
    raw: bytes
    def __init__(self, client_id: _Optional[str] = ..., nonce: _Optional[int] = ..., kind: _Optional[int] = ..., signature: _Optional[bytes] = ..., payload_digest: _Optional[bytes] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., entry_count: _Optional[int] = ..., raw: _Optional[bytes] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("header", "envelopes", "items", "views", "statuses", "reasons", "pre_prepare", "certificate", "stored_hash", "records")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PRE_PREPARE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    STORED_HASH_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    header: bytes
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    items: _containers.RepeatedScalarFieldContainer[bytes]
    views: _containers.RepeatedScalarFieldContainer[int]
    statuses: _containers.RepeatedScalarFieldContainer[str]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    pre_prepare: bytes
    certificate: _containers.RepeatedScalarFieldContainer[bytes]
    stored_hash: bytes
    records: _containers.RepeatedCompositeFieldContainer[RecordColumns]
    def __init__(self, header: _Optional[bytes] = ..., envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ..., items: _Optional[_Iterable[bytes]] = ..., views: _Optional[_Iterable[int]] = ..., statuses: _Optional[_Iterable[str]] = ..., reasons: _Optional[_Iterable[str]] = ..., pre_prepare: _Optional[bytes] = ..., certificate: _Optional[_Iterable[bytes]] = ..., stored_hash: _Optional[bytes] = ..., records: _Optional[_Iterable[_Union[RecordColumns, _Mapping]]] = ...) -> None: ...

class RecordColumns(_message.Message):
    __slots__ = ("index", "record_id", "kind", "subject_id", "event_type", "submitter_org", "submitted_at_ms", "metadata", "readers", "erased_height")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_ORG_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    READERS_FIELD_NUMBER: _ClassVar[int]
    ERASED_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    index: int
    record_id: str
    kind: str
    subject_id: str
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: _containers.ScalarMap[str, str]
    readers: _containers.RepeatedScalarFieldContainer[str]
    erased_height: int
    def __init__(self, index: _Optional[int] = ..., record_id: _Optional[str] = ..., kind: _Optional[str] = ..., subject_id: _Optional[str] = ..., event_type: _Optional[str] = ..., submitter_org: _Optional[str] = ..., submitted_at_ms: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., readers: _Optional[_Iterable[str]] = ..., erased_height: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("replica_id", "org", "height", "view", "epoch", "view_active", "last_block_hash", "stable_checkpoint", "primary", "primary_client_address", "serving", "problem")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VIEW_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    STABLE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    org: str
    height: int
    view: int
    epoch: int
    view_active: bool
    last_block_hash: bytes
    stable_checkpoint: int
    primary: int
    primary_client_address: str
    serving: bool
    problem: str
    def __init__(self, replica_id: _Optional[int] = ..., org: _Optional[str] = ..., height: _Optional[int] = ..., view: _Optional[int] = ..., epoch: _Optional[int] = ..., view_active: _Optional[bool] = ..., last_block_hash: _Optional[bytes] = ..., stable_checkpoint: _Optional[int] = ..., primary: _Optional[int] = ..., primary_client_address: _Optional[str] = ..., serving: _Optional[bool] = ..., problem: _Optional[str] = ...) -> None: ...

class PeerMessage(_message.Message):
    __slots__ = ("data", "batch")
    DATA_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    batch: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, data: _Optional[bytes] = ..., batch: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PeerAck(_message.Message):
    __slots__ = ("received",)
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    received: int
    def __init__(self, received: _Optional[int] = ...) -> None: ...

class FetchCheckpointRequest(_message.Message):
    __slots__ = ("min_seq",)
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    min_seq: int
    def __init__(self, min_seq: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("snapshot", "proof")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    snapshot: bytes
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, snapshot: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FetchBlocksRequest(_message.Message):
    __slots__ = ("from_height", "to_height")
    FROM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TO_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    from_height: int
    to_height: int
    def __init__(self, from_height: _Optional[int] = ..., to_height: _Optional[int] = ...) -> None: ...

class ReviewJoinRequest(_message.Message):
    __slots__ = ("request_id", "org", "endpoint", "statement", "auth")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    org: str
    endpoint: str
    statement: str
    auth: ReadAuth
    def __init__(self, request_id: _Optional[str] = ..., org: _Optional[str] = ..., endpoint: _Optional[str] = ..., statement: _Optional[str] = ..., auth: _Optional[_Union[ReadAuth, _Mapping]] = ...) -> None: ...

class ScreenRecordRequest(_message.Message):
    __slots__ = ("record_id", "auth")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    auth: ReadAuth
    def __init__(self, record_id: _Optional[str] = ..., auth: _Optional[_Union[ReadAuth, _Mapping]] = ...) -> None: ...

class VerdictReply(_message.Message):
    __slots__ = ("verdict_json", "decision", "risk")
    VERDICT_JSON_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    verdict_json: str
    decision: str
    risk: float
    def __init__(self, verdict_json: _Optional[str] = ..., decision: _Optional[str] = ..., risk: _Optional[float] = ...) -> None: ...

class GetBacklogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BacklogReply(_message.Message):
    __slots__ = ("pending", "verdicts_posted", "errors", "backend", "model", "last_error", "model_sha256", "latency_p50_ms", "latency_p95_ms", "model_reviews", "model_busy", "model_per_poll")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_POSTED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_REVIEWS_FIELD_NUMBER: _ClassVar[int]
    MODEL_BUSY_FIELD_NUMBER: _ClassVar[int]
    MODEL_PER_POLL_FIELD_NUMBER: _ClassVar[int]
    pending: int
    verdicts_posted: int
    errors: int
    backend: str
    model: str
    last_error: str
    model_sha256: str
    latency_p50_ms: int
    latency_p95_ms: int
    model_reviews: int
    model_busy: int
    model_per_poll: int
    def __init__(self, pending: _Optional[int] = ..., verdicts_posted: _Optional[int] = ..., errors: _Optional[int] = ..., backend: _Optional[str] = ..., model: _Optional[str] = ..., last_error: _Optional[str] = ..., model_sha256: _Optional[str] = ..., latency_p50_ms: _Optional[int] = ..., latency_p95_ms: _Optional[int] = ..., model_reviews: _Optional[int] = ..., model_busy: _Optional[int] = ..., model_per_poll: _Optional[int] = ...) -> None: ...
