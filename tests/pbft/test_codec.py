"""The v2 wire format: a PRE-PREPARE signs a header; its batch travels beside it, unsigned.

    wire = version | sender | len | body | signature | attachment
    attachment (PRE-PREPARE only) = count:u32 | request{count}, count equal to the header's

Decoding must reject every attachment the header does not account for, and nested PRE-PREPAREs
(in VIEW-CHANGE and NEW-VIEW) must be headers only, so a view change's size never depends on
what the batches hold.
"""

from __future__ import annotations

import pytest

from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.state import batch_root
from tests.pbft.harness import (
    CHAIN_ID,
    header_of,
    pre_prepare,
    prepare,
    prepared_proof,
    request,
    sign,
    view_change,
    wire_of,
)


def _reqs(k: int) -> list[m.Request]:
    return [request("alice", i) for i in range(1, k + 1)]


def test_header_only_pre_prepare_round_trips() -> None:
    pp = header_of(pre_prepare(0, 3, _reqs(2)))
    assert pp.batch is None
    back = codec.decode_signed(pp.wire, CHAIN_ID)
    assert back == pp and back.wire == pp.wire and back.batch is None
    body = back.body
    assert isinstance(body, m.PrePrepare)
    assert (body.seq, body.root, body.count) == (3, batch_root(_reqs(2)), 2)
    assert body.digest == m.proposal_digest(body.root, body.count, body.timestamp_ms)


def test_pre_prepare_with_its_batch_round_trips_and_wire_stays_the_signed_part() -> None:
    reqs = _reqs(3)
    pp = pre_prepare(0, 1, reqs, timestamp_ms=1234)
    data = wire_of(pp)
    back = codec.decode_signed(data, CHAIN_ID)
    assert back.batch == tuple(reqs)
    assert back.wire == header_of(pp).wire and len(data) > len(back.wire)
    assert codec.wire_with_batch(back, codec.encode_batch(tuple(reqs))) == data


def test_empty_batch_attachment_round_trips() -> None:
    pp = pre_prepare(0, 1, [])
    back = codec.decode_signed(wire_of(pp), CHAIN_ID)
    assert back.batch == ()
    assert isinstance(back.body, m.PrePrepare) and back.body.digest == m.NULL_DIGEST


@pytest.mark.parametrize("attached", [1, 3, 0])
def test_decode_rejects_a_batch_whose_count_differs_from_the_header(attached: int) -> None:
    header = header_of(pre_prepare(0, 1, _reqs(2)))
    data = codec.wire_with_batch(header, codec.encode_batch(tuple(_reqs(attached))))
    with pytest.raises(codec.DecodeError, match="size"):
        codec.decode_signed(data, CHAIN_ID)


def test_decode_rejects_an_attachment_on_another_message_type() -> None:
    vote = prepare(1, 0, 1, b"\x01" * 32)
    with pytest.raises(TypeError):
        codec.wire_with_batch(vote, codec.encode_batch(()))
    with pytest.raises(codec.DecodeError, match="attachment"):
        codec.decode_signed(vote.wire + codec.encode_batch(tuple(_reqs(1))), CHAIN_ID)


def test_decode_rejects_a_malformed_attachment() -> None:
    header = header_of(pre_prepare(0, 1, _reqs(1)))
    good = codec.encode_batch(tuple(_reqs(1)))
    for bad in (good[:-1], good + b"\x00", b"\x00\x00"):
        with pytest.raises(codec.DecodeError):
            codec.decode_signed(header.wire + bad, CHAIN_ID)


def _nest_with_batch(pp: m.SignedMessage) -> bytes:
    """A VIEW-CHANGE whose prepared proof nests the PRE-PREPARE *with* its batch attached
    (only a forger builds this: the encoder nests `wire`, the signed part alone)."""
    proof = prepared_proof(pp, (1, 2))
    forged = m.SignedMessage(pp.sender, pp.body, pp.signature, pp.body_bytes, wire_of(pp))
    vc = view_change(3, 1, [m.PreparedProof(forged, proof.votes)])
    return vc.wire


def test_decode_rejects_a_nested_pre_prepare_carrying_a_batch() -> None:
    pp = pre_prepare(0, 1, _reqs(2))
    honest = view_change(3, 1, [prepared_proof(pp, (1, 2))])
    back = codec.decode_signed(honest.wire, CHAIN_ID)
    assert isinstance(back.body, m.ViewChange)
    assert back.body.prepared[0].pre_prepare.batch is None
    with pytest.raises(codec.DecodeError, match="nested PRE-PREPARE carries no batch"):
        codec.decode_signed(_nest_with_batch(pp), CHAIN_ID)


def test_encoding_nests_the_header_even_from_a_message_holding_its_batch() -> None:
    """A replica's own proofs keep the PRE-PREPARE it received (batch in memory); what it signs
    and sends nests the header only."""
    pp = pre_prepare(0, 1, _reqs(2))
    assert pp.batch is not None
    nv_body = m.NewView(0, 1, (), (pp,))
    nv = sign(1, nv_body)
    back = codec.decode_signed(nv.wire, CHAIN_ID)
    assert isinstance(back.body, m.NewView)
    assert back.body.pre_prepares[0].wire == header_of(pp).wire
    assert _reqs(2)[0].payload not in nv.wire


def test_batch_request_round_trips() -> None:
    msg = sign(2, m.BatchRequest(0, 7, m.NULL_DIGEST))
    assert codec.decode_signed(msg.wire, CHAIN_ID) == msg
    with pytest.raises(ValueError):
        m.BatchRequest(0, 7, b"short")
