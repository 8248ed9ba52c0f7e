"""The fault schedule: a pure function of the seed that never exceeds the fault budget."""

from __future__ import annotations

import pytest

from consortium.chaos import schedule
from consortium.chaos.schedule import Kind


def test_same_seed_same_schedule_other_seed_another() -> None:
    a = schedule.generate(5, 600, 4)
    assert a == schedule.generate(5, 600, 4)
    assert a != schedule.generate(6, 600, 4)


@pytest.mark.parametrize("validators", [4, 7, 10])
@pytest.mark.parametrize("seed", range(1, 41))
def test_never_more_node_faults_at_once_than_f(seed: int, validators: int) -> None:
    faults = schedule.generate(seed, 900, validators)
    f = schedule.budget(validators)
    assert schedule.max_concurrent_node_faults(faults) <= f
    for fault in faults:
        if fault.deliberate_unavailability:
            others = [g for g in schedule.concurrent_node_faults(faults, fault.at_s)
                      if g is not fault]
            assert others == [], f"split at {fault.at_s} overlaps {others}"
            overlapping = [g for g in faults if g.node_fault and g is not fault
                           and g.at_s < fault.end_s + schedule.SETTLE_S
                           and fault.at_s < g.end_s]
            assert overlapping == [], "nothing fails while the quorum is deliberately gone"


def test_budget_is_checked_by_the_checker_itself() -> None:
    """The budget check sees overlap (else the test above would prove nothing)."""
    overlapping = [schedule.Fault(0, Kind.KILL9, 10, 5, "v1"),
                   schedule.Fault(1, Kind.PG_STOP, 12, 5, "v2")]
    assert schedule.max_concurrent_node_faults(overlapping) == 2
    settled = [schedule.Fault(0, Kind.KILL9, 10, 5, "v1"),
               schedule.Fault(1, Kind.PG_STOP, 15 + schedule.SETTLE_S, 5, "v2")]
    assert schedule.max_concurrent_node_faults(settled) == 1


@pytest.mark.parametrize("seed", range(1, 21))
def test_every_fault_heals_within_the_duration_after_a_warmup(seed: int) -> None:
    faults = schedule.generate(seed, 120, 4)
    assert faults
    assert all(f.at_s >= schedule.WARMUP_S and f.end_s <= 120 for f in faults)
    assert [f.index for f in faults] == list(range(len(faults)))
    assert faults == sorted(faults, key=lambda f: f.at_s)


def test_a_long_campaign_injects_every_kind_and_at_least_200_faults() -> None:
    faults = schedule.generate(1, 1200, 4)
    assert len(faults) >= 200
    assert {f.kind for f in faults} == set(Kind)


def test_splits_divide_the_validators_in_halves_and_not_late() -> None:
    splits = [f for seed in range(1, 30) for f in schedule.generate(seed, 600, 4)
              if f.kind == Kind.SPLIT]
    assert splits
    for f in splits:
        a, b = (set(side.split(",")) for side in f.target.split("|"))
        assert len(a) == len(b) == 2 and not a & b
        assert f.at_s <= 600 * schedule.SPLIT_NOT_AFTER


def test_too_few_validators_or_too_short_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 4 validators"):
        schedule.generate(1, 120, 3)
    with pytest.raises(ValueError, match="lasts at least"):
        schedule.generate(1, 5, 4)
