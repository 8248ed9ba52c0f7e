from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitRecordRequest(_message.Message):
    __slots__ = ("request", "wait_ms")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    request: bytes
    wait_ms: int
    def __init__(self, request: _Optional[bytes] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("record_id", "height", "block_header", "certificate", "proof", "request", "status", "reason")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HEADER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    height: int
    block_header: bytes
    certificate: _containers.RepeatedScalarFieldContainer[bytes]
    proof: InclusionProof
    request: bytes
    status: str
    reason: str
    def __init__(self, record_id: _Optional[str] = ..., height: _Optional[int] = ..., block_header: _Optional[bytes] = ..., certificate: _Optional[_Iterable[bytes]] = ..., proof: _Optional[_Union[InclusionProof, _Mapping]] = ..., request: _Optional[bytes] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WrappedKey(_message.Message):
    __slots__ = ("org", "wrapped_key")
    ORG_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    org: str
    wrapped_key: bytes
    def __init__(self, org: _Optional[str] = ..., wrapped_key: _Optional[bytes] = ...) -> None: ...

class RecordReply(_message.Message):
    __slots__ = ("record_id", "height", "kind", "subject_id", "event_type", "submitter_org", "submitted_at_ms", "metadata", "ciphertext", "wrapped_keys", "request", "status")
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
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
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
    request: bytes
    status: str
    def __init__(self, record_id: _Optional[str] = ..., height: _Optional[int] = ..., kind: _Optional[str] = ..., subject_id: _Optional[str] = ..., event_type: _Optional[str] = ..., submitter_org: _Optional[str] = ..., submitted_at_ms: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., ciphertext: _Optional[bytes] = ..., wrapped_keys: _Optional[_Iterable[_Union[WrappedKey, _Mapping]]] = ..., request: _Optional[bytes] = ..., status: _Optional[str] = ...) -> None: ...

class GetBlockRequest(_message.Message):
    __slots__ = ("height",)
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    height: int
    def __init__(self, height: _Optional[int] = ...) -> None: ...

class StreamBlocksRequest(_message.Message):
    __slots__ = ("from_height",)
    FROM_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    from_height: int
    def __init__(self, from_height: _Optional[int] = ...) -> None: ...

class Block(_message.Message):
    __slots__ = ("header", "requests", "statuses", "pre_prepare", "certificate")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PRE_PREPARE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    header: bytes
    requests: _containers.RepeatedScalarFieldContainer[bytes]
    statuses: _containers.RepeatedScalarFieldContainer[str]
    pre_prepare: bytes
    certificate: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, header: _Optional[bytes] = ..., requests: _Optional[_Iterable[bytes]] = ..., statuses: _Optional[_Iterable[str]] = ..., pre_prepare: _Optional[bytes] = ..., certificate: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("replica_id", "org", "height", "view", "epoch", "view_active", "last_block_hash", "stable_checkpoint", "primary")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VIEW_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    STABLE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    org: str
    height: int
    view: int
    epoch: int
    view_active: bool
    last_block_hash: bytes
    stable_checkpoint: int
    primary: int
    def __init__(self, replica_id: _Optional[int] = ..., org: _Optional[str] = ..., height: _Optional[int] = ..., view: _Optional[int] = ..., epoch: _Optional[int] = ..., view_active: _Optional[bool] = ..., last_block_hash: _Optional[bytes] = ..., stable_checkpoint: _Optional[int] = ..., primary: _Optional[int] = ...) -> None: ...

class PeerMessage(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

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
