"""The checker on synthetic ledgers: it must see a fork, a lost record and a rewritten
receipt, and pass a clean run."""

from __future__ import annotations

import json
from pathlib import Path

from consortium.chaos import checker
from consortium.chaos.checker import Ack, Ledger


def _h(label: str) -> bytes:
    return label.encode().ljust(32, b".")


CHAIN = [_h("b1"), _h("b2"), _h("b3")]
ACKS = [Ack("r1", 1, _h("b1").hex(), 100.0), Ack("r2", 3, _h("b3").hex(), 101.0)]


def test_a_clean_run_passes() -> None:
    ledgers = {i: Ledger(CHAIN, frozenset({"r1", "r2"})) for i in range(4)}
    verdict = checker.check(ACKS, ledgers)
    assert verdict.lost_count == 0 and verdict.chains.identical and not verdict.mismatches
    assert verdict.to_json()["chains_identical"] is True


def test_a_lagging_validator_is_compared_up_to_the_lowest_head() -> None:
    ledgers = {0: Ledger(CHAIN, frozenset({"r1", "r2"})),
               1: Ledger(CHAIN[:2], frozenset({"r1"}))}
    verdict = checker.check(ACKS, ledgers)
    assert verdict.chains.identical and verdict.chains.common_height == 2
    assert verdict.lost == {0: [], 1: ["r2"]}
    assert verdict.to_json()["lost"] == 1


def test_a_fork_is_found_at_its_first_height() -> None:
    forked = [CHAIN[0], _h("other2"), _h("other3")]
    ledgers = {0: Ledger(CHAIN, frozenset({"r1", "r2"})),
               2: Ledger(forked, frozenset({"r1", "r2"}))}
    verdict = checker.check(ACKS, ledgers)
    assert not verdict.chains.identical
    assert verdict.chains.divergence == {"height": 2, "hashes": {"v0": CHAIN[1].hex(),
                                                                 "v2": _h("other2").hex()}}
    assert verdict.to_json()["chains_identical"] is False
    # the receipt of r2 names block b3, which v2 does not hold at height 3
    assert [m["validator"] for m in verdict.mismatches] == ["v2"]


def test_a_receipt_whose_block_was_replaced_everywhere_is_a_mismatch() -> None:
    replaced = [CHAIN[0], CHAIN[1], _h("rewritten")]
    ledgers = {i: Ledger(replaced, frozenset({"r1", "r2"})) for i in range(3)}
    verdict = checker.check(ACKS, ledgers)
    assert verdict.chains.identical  # they agree with each other...
    assert len(verdict.mismatches) == 3  # ...on a chain without the acknowledged block
    assert verdict.to_json()["chains_identical"] is False


def test_longest_gap_skips_deliberate_unavailability() -> None:
    times = [1.0, 2.0, 10.0, 11.0, 14.0]
    assert checker.longest_gap(times, 0.0, 15.0) == (8.0, 2.0)
    assert checker.longest_gap(times, 0.0, 15.0, [(3.0, 9.0)]) == (3.0, 11.0)


def test_events_file_round_trip_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"event": "ack", "record_id": "r1", "height": 1,
                         "block_hash": "aa", "t": 1.5}),
             json.dumps({"event": "error", "t": 2.0}),
             json.dumps({"event": "unknown", "t": 3.0}),
             '{"event": "ack", "record_id": "r2", "hei']
    path.write_text("\n".join(lines))
    events = checker.read_events(path)
    assert [a.record_id for a in events.acks] == ["r1"]
    assert (events.errors, events.unknown) == (1, 1)
    tail = checker.EventTail(path)
    tail.poll()
    assert (tail.acknowledged, tail.errors, tail.last_ack_t) == (1, 1, 1.5)
