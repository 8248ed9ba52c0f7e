"""The command line's pure parts: the records file of `consortium submit --file` and the primary
`consortium status` names. tests/e2e/test_cli.py runs both against a real consortium."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apps.records_file import BadLine, bad_lines_message, parse_line, parse_lines
from consortium.process import primary_of


def line(**doc: Any) -> str:
    return json.dumps(doc)


def test_a_provenance_line_maps_to_the_sdk_arguments() -> None:
    r = parse_line(3, line(kind="provenance", product="lot-7", event="shipped",
                           location="Basel", quantity=12, documents=["ab" * 32],
                           details={"temp": 4}, readers=["org1"], **{"from": "org0",
                                                                     "to": "org1"}))
    assert (r.line, r.kind, r.subject, r.event) == (3, "provenance", "lot-7", "shipped")
    assert r.args == {"location": "Basel", "custodian_from": "org0", "custodian_to": "org1",
                      "quantity": 12, "documents": ["ab" * 32], "details": {"temp": 4},
                      "readers": ["org1"]}


def test_a_patient_line_carries_its_payload_as_canonical_json() -> None:
    r = parse_line(1, line(patient="P-1", type="lab-result", payload={"z": 1, "a": [2]},
                           readers=["org2"]))
    assert (r.kind, r.subject, r.event, r.readers) == ("patient", "P-1", "lab-result", ["org2"])
    assert r.args["payload"] == b'{"a":[2],"z":1}'
    assert parse_line(1, line(patient="P-1", type="encounter", payload=None)).args[
        "payload"] == b"null"


@pytest.mark.parametrize(("text", "reason"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (line(product="p", patient="q"), 'say "kind"'),
    (line(event="shipped"), 'say "kind"'),
    (line(kind="invoice", product="p"), '"kind" is "provenance" or "patient", not \'invoice\''),
    (line(product="p"), "missing field 'event'"),
    (line(product="p", event="teleported"), "event 'teleported' is not one of"),
    (line(product="", event="shipped"), "'product' must be a non-empty string"),
    (line(product="p", event="shipped", quantity=-1), "'quantity' must be a whole number"),
    (line(product="p", event="shipped", quantity=1.5), "'quantity' must be a whole number"),
    (line(product="p", event="shipped", quantity=True), "'quantity' must be a whole number"),
    (line(product="p", event="shipped", readers="org1"), "'readers' must be a list"),
    (line(product="p", event="shipped", details=[1]), "'details' must be a JSON object"),
    (line(product="p", event="shipped", quantiy=3), "unknown field 'quantiy'"),
    (line(patient="P", type="lab-result", payload={}, product_=1, x=2),
     "unknown fields 'product_', 'x' for a patient record"),
    (line(patient="P", type="x-ray", payload={}), "type 'x-ray' is not one of"),
    (line(patient="P", type="lab-result"), "missing field 'payload'"),
])
def test_bad_lines_say_why(text: str, reason: str) -> None:
    with pytest.raises(BadLine) as info:
        parse_line(1, text)
    assert reason in str(info.value)


def test_parse_lines_numbers_from_one_and_skips_blank_lines() -> None:
    text = [line(product="a", event="shipped"), "\n", "oops\n",
            line(patient="P", type="imaging", payload=1), line(product="b")]
    records, bad = parse_lines(text)
    assert [r.line for r in records] == [1, 4]
    assert [n for n, _ in bad] == [3, 5]


def test_the_bad_lines_message_is_one_line_naming_the_first_few() -> None:
    bad = [(n, f"reason {n}") for n in range(1, 9)]
    msg = bad_lines_message("records.jsonl", bad, 100)
    assert "\n" not in msg
    assert msg.startswith("records.jsonl: 8 of 100 lines are not records, nothing submitted")
    assert "line 5: reason 5" in msg and "line 6" not in msg and "and 3 more" in msg


def row(i: int, view: int | None, primary: int | None) -> dict[str, Any]:
    return {"id": i, "view": view, "primary": primary,
            "primary_address": None if primary is None else f"127.0.0.1:{7200 + primary}"}


def test_the_primary_is_the_one_most_validators_in_the_highest_view_name() -> None:
    rows = [row(0, 1, 1), row(1, 1, 1), row(2, 0, 0), row(3, None, None)]
    assert primary_of(rows) == {"id": 1, "address": "127.0.0.1:7201", "view": 1,
                                "agreeing": 2, "answered": 3}
    # One validator claiming another primary in the same view is outvoted.
    liar = primary_of([row(0, 2, 2), row(1, 2, 2), row(2, 2, 0)])
    assert liar is not None and liar["id"] == 2 and liar["agreeing"] == 2
    assert primary_of([row(0, None, None)]) is None
