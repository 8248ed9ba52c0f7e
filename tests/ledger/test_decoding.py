"""The hand-rolled decoders of a record's public part and key segments accept and refuse
exactly what the generic canonical Reader does (they exist only for speed: every validator
decodes every record once)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.ledger.records import (
    InvalidRecord,
    PublicRecord,
    RecordKind,
    decode_public,
    public_part,
)
from consortium.ledger.transactions import InvalidTransaction, key_segment, parse_key_segment
from consortium.pbft.codec import DecodeError, Reader

texts = st.text(max_size=12)


def reference_public(seg0: bytes) -> PublicRecord:
    """The canonical Reader's reading of the same format."""
    rd = Reader(seg0)
    if rd.u8() != 1:
        raise DecodeError("version")
    kind = RecordKind(rd.text())
    subject_id, event_type, org = rd.text(), rd.text(), rd.text()
    at_ms = rd.u64()
    metadata = rd.items(lambda: (rd.text(), rd.text()))
    also = rd.items(rd.text)
    document = rd.blob()
    rd.end()
    return PublicRecord(kind, subject_id, event_type, org, at_ms, metadata, also, document)


def _same(data: bytes) -> None:
    try:
        expected: PublicRecord | None = reference_public(data)
    except (DecodeError, ValueError):
        expected = None
    if expected is None:
        with pytest.raises(InvalidRecord):
            decode_public(data)
    else:
        assert decode_public(data) == expected


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(list(RecordKind)), subject=texts, event=texts, org=texts,
       at=st.integers(0, 2**64 - 1), meta=st.lists(st.tuples(texts, texts), max_size=3),
       also=st.lists(texts, max_size=3), doc=st.binary(max_size=20),
       cut=st.integers(0, 200), flip=st.integers(0, 200))
def test_public_part_decoders_agree(kind: RecordKind, subject: str, event: str, org: str,
                                    at: int, meta: list[tuple[str, str]], also: list[str],
                                    doc: bytes, cut: int, flip: int) -> None:
    good = public_part(kind, subject, event, org, at, tuple(meta), tuple(also), doc)
    _same(good)
    _same(good[:cut])
    _same(good + b"\x00")
    if flip < len(good):
        _same(good[:flip] + bytes([good[flip] ^ 0xFF]) + good[flip + 1:])


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_public_part_decoders_agree_on_garbage(data: bytes) -> None:
    _same(b"\x01" + data)


@settings(max_examples=300, deadline=None)
@given(org=st.text(alphabet="abcdefgh", min_size=1, max_size=8), key=st.binary(max_size=100),
       cut=st.integers(0, 120))
def test_key_segment_round_trip_and_refusals(org: str, key: bytes, cut: int) -> None:
    seg = key_segment(org, key)
    if len(key) == 80:
        assert parse_key_segment(seg) == (org, key)
    else:
        with pytest.raises(InvalidTransaction):
            parse_key_segment(seg)
    if cut < len(seg):
        with pytest.raises(InvalidTransaction):
            parse_key_segment(seg[:cut])
    with pytest.raises(InvalidTransaction):
        parse_key_segment(seg + b"\x00")
