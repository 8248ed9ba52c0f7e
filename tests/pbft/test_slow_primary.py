"""The slow-primary monitor (docs/consensus.md 7.1): a backup votes for a view change when the
primary's STATUS messages arrive much later than its own best and than the other members', or
stop arriving, for `slow_primary_ticks` ticks in a row; a clock offset or the backup's own load
(which delays everyone alike) never counts."""

from __future__ import annotations

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from tests.pbft.harness import FakeClock, Node, make_node, params, sent_bodies, sign

NOW = 1_800_000_000_000
TICK_MS = 500
TICKS = 6
LAG_TICKS = 8 + TICKS
"""Enough ticks for the recent median to move past the threshold, then the monitor's ticks."""


def _node(clock: FakeClock) -> Node:
    return make_node(2, params(status_interval_ms=TICK_MS, slow_primary_lag_ms=400,
                               slow_primary_ticks=TICKS), clock=clock)


def _status(sender: int, sent_ms: int) -> m.SignedMessage:
    return sign(sender, m.Status(0, 0, True, 0, 0, sent_ms))


def _tick(node: Node, clock: FakeClock, delays_ms: dict[int, int | None]) -> list[ev.Action]:
    """One status interval: each peer's STATUS, sent at the tick and arriving `delay` ms later
    (None: it sends nothing), then our STATUS timer."""
    out: list[ev.Action] = []
    sent_at = clock.ms
    for peer, delay in sorted(delays_ms.items(), key=lambda kv: kv[1] or 0):
        if delay is None:
            continue
        clock.ms = sent_at + delay
        out += node.deliver(_status(peer, sent_at))
    clock.ms = sent_at + TICK_MS
    out += node.fire(ev.TimerKind.STATUS)
    return out


def _view_changes(actions: list[ev.Action]) -> list[m.ViewChange]:
    return sent_bodies(actions, m.ViewChange)


def _run(node: Node, clock: FakeClock, delays_ms: dict[int, int | None],
         ticks: int) -> list[m.ViewChange]:
    out: list[ev.Action] = []
    for _ in range(ticks):
        out += _tick(node, clock, delays_ms)
    return _view_changes(out)


def test_a_silent_primary_is_replaced_in_a_few_ticks() -> None:
    """A stopped primary sends no STATUS: its silence is its delay, so the backup votes for
    view 1 within the monitor's ticks, with no client request waiting."""
    clock = FakeClock(NOW)
    node = _node(clock)
    assert not _run(node, clock, {0: 5, 1: 5, 3: 5}, 8)
    votes = _run(node, clock, {0: None, 1: 5, 3: 5}, TICKS + 3)
    assert {v.new_view for v in votes} == {1}


def test_a_late_primary_is_replaced() -> None:
    clock = FakeClock(NOW)
    node = _node(clock)
    assert not _run(node, clock, {0: 5, 1: 5, 3: 5}, 8)
    votes = _run(node, clock, {0: 450, 1: 5, 3: 5}, LAG_TICKS)
    assert {v.new_view for v in votes} == {1}


def test_a_primary_with_a_skewed_clock_is_not_suspected() -> None:
    """Its stamps are 5 s behind ours: every STATUS seems 5 s late, but no later than its own
    best, so it is not slow."""
    clock = FakeClock(NOW)
    node = _node(clock)
    out: list[ev.Action] = []
    for _ in range(40):
        sent_at = clock.ms
        clock.ms = sent_at + 5
        out += node.deliver(_status(0, sent_at - 5_000), _status(1, sent_at),
                            _status(3, sent_at))
        clock.ms = sent_at + TICK_MS
        out += node.fire(ev.TimerKind.STATUS)
    assert not _view_changes(out)


def test_our_own_load_delays_everyone_and_suspects_no_one() -> None:
    """Everyone's STATUS arrives 450 ms late (the backup itself is the slow one)."""
    clock = FakeClock(NOW)
    node = _node(clock)
    assert not _run(node, clock, {0: 5, 1: 5, 3: 5}, 8)
    assert not _run(node, clock, {0: 450, 1: 450, 3: 450}, LAG_TICKS + 10)


def test_a_short_hiccup_is_forgiven() -> None:
    """Fewer than `slow_primary_ticks` slow ticks in a row do not count."""
    clock = FakeClock(NOW)
    node = _node(clock)
    assert not _run(node, clock, {0: 5, 1: 5, 3: 5}, 8)
    assert not _run(node, clock, {0: None, 1: 5, 3: 5}, 3)
    assert not _run(node, clock, {0: 5, 1: 5, 3: 5}, 20)


def test_zero_disables_the_monitor() -> None:
    clock = FakeClock(NOW)
    node = make_node(2, params(status_interval_ms=TICK_MS, slow_primary_lag_ms=0), clock=clock)
    assert not _run(node, clock, {0: 5, 1: 5, 3: 5}, 8)
    assert not _run(node, clock, {0: None, 1: 5, 3: 5}, 40)
