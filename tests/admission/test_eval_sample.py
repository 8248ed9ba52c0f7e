"""`consortium admission eval --sample N`: which items a subset run judges."""

from __future__ import annotations

from pathlib import Path

from consortium.admission.eval import load_eval_set, sample

SET = Path(__file__).resolve().parents[1] / "data" / "admission"


def _joins(per_task: int) -> list[str]:
    """On the original set (joins.jsonl, records.jsonl), as the documented runs were."""
    original = [i for i in load_eval_set(SET) if not i.id.startswith("u-")]
    return [i.id for i in sample(original, per_task) if i.id.startswith("join")]


def test_a_small_sample_takes_every_step_th_item_as_the_documented_runs_did() -> None:
    assert _joins(8) == ["join-001", "join-010", "join-019", "join-028", "join-037",
                         "join-046", "join-055", "join-064"]


def test_a_sample_of_more_than_half_spreads_over_the_whole_pool() -> None:
    """75 join requests, 40 asked for: not the first 40 (which hold none of the bad ones)."""
    joins = _joins(40)
    assert len(joins) == 40 and len(set(joins)) == 40
    assert joins[0] == "join-001" and joins[-1] >= "join-070"


def test_a_sample_larger_than_the_pool_is_the_pool() -> None:
    assert len(_joins(500)) == 75
