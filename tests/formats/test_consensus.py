"""What validators check at consensus time: deterministic, canonical, fast."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.formats import epcis
from consortium.formats.epcis import EpcisError
from tests.formats.test_epcis import document, event

BLOCK_MS = 1772366400000  # 2026-03-01T12:00:00Z
SKEW_MS = 5 * 60_000


def public(**over: object) -> bytes:
    return epcis.parse_document(document(event(**over)))[0].public_json()


def test_a_valid_event_passes() -> None:
    epcis.check_event_at_consensus(public(), BLOCK_MS, SKEW_MS)


def test_future_beyond_the_skew_is_refused() -> None:
    within = public(eventTime="2026-03-01T12:04:59.999Z")
    epcis.check_event_at_consensus(within, BLOCK_MS, SKEW_MS)
    beyond = public(eventTime="2026-03-01T12:05:00.001Z")
    with pytest.raises(EpcisError, match="^eventTime 2026-03-01T12:05:00.001Z is later than the "
                                         r"block time plus the clock skew \(2026-03-01T12:05:00"):
        epcis.check_event_at_consensus(beyond, BLOCK_MS, SKEW_MS)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: {**d, "bizStep": "shiping"}, "event 0: bizStep: unknown bizStep"),
    (lambda d: {**d, "disposition": "destroyed"}, "contradicts bizStep shipping"),
    (lambda d: {**d, "quantityList": [{"epcClass": "urn:epc:class:lgtin:401234.012345.A",
                                       "quantity": 1}]}, "must have 13 digits together"),
    (lambda d: {**d, "quantityList": [{"epcClass": "https://id.gs1.org/01/04012345123456/10/A",
                                       "quantity": 1}]}, "is a Digital Link; the ledger stores"),
])
def test_bad_public_parts_are_refused(mutate: object, message: str) -> None:
    raw = json.loads(public())
    bad = json.dumps(mutate(raw), sort_keys=True, separators=(",", ":")).encode()  # type: ignore[operator]
    with pytest.raises(EpcisError) as info:
        epcis.check_event_at_consensus(bad, BLOCK_MS, SKEW_MS)
    assert message in str(info.value)


@pytest.mark.parametrize("data", [
    b"not json", b"[]", b"{}", json.dumps(json.loads(public()), indent=1).encode(),
    public().replace(b'"quantity":20000', b'"quantity":20000.0'),
    public()[:-1] + b',"bizStep":"shipping"}',
])
def test_non_canonical_or_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(EpcisError) as info:
        epcis.check_event_at_consensus(data, BLOCK_MS, SKEW_MS)
    assert "\n" not in str(info.value)


def test_oversized_is_refused() -> None:
    with pytest.raises(EpcisError, match="more than 65536"):
        epcis.check_event_at_consensus(b" " * 70_000, BLOCK_MS, SKEW_MS)


def test_same_bytes_same_verdict() -> None:
    bad = public().replace(b"shipping", b"shiping")
    reasons = set()
    for _ in range(3):
        with pytest.raises(EpcisError) as info:
            epcis.check_event_at_consensus(bad, BLOCK_MS, SKEW_MS)
        reasons.add(str(info.value))
    assert len(reasons) == 1


LOTS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!*+,:;=", min_size=1,
               max_size=20)


@settings(max_examples=60, deadline=None)
@given(lot=LOTS, quantity=st.one_of(st.integers(1, 10**9),
                                    st.floats(0.001, 1e6, allow_nan=False)),
       offset_min=st.integers(-14 * 60, 14 * 60), millis=st.integers(0, 10**12))
def test_public_json_is_a_fixed_point(lot: str, quantity: float, offset_min: int,
                                      millis: int) -> None:
    """Whatever valid event goes in, its public part parses back to the same event and the
    same bytes, and passes the consensus check."""
    sign = "+" if offset_min >= 0 else "-"
    offset = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    element: dict[str, object] = {"epcClass": f"urn:epc:class:lgtin:4012345.012345.{lot}",
                                  "quantity": quantity}
    if isinstance(quantity, float):
        element["uom"] = "KGM"
    ev = epcis.parse_document(document(event(
        quantityList=[element], eventTimeZoneOffset=offset,
        eventTime=epcis.format_time_ms(millis))))[0]
    data = ev.public_json()
    again = epcis.event_from_public_json(data)
    assert again == ev and again.public_json() == data
    epcis.check_event_at_consensus(data, millis, 0)
