"""The slow-primary monitor: replace a primary whose STATUS messages arrive late or not at all
(see ProtocolParams.slow_primary_lag_ms; docs/consensus.md, slow primary).

This part owns the arrival samples (`_lags`, `_heard_ms`) and the count of slow ticks. It reads
the replica's clock, parameters, configuration and view; it emits a fault naming the primary and
starts a view change (`ViewChanger.start_view_change`). It never sends anything itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consortium.pbft import messages as m

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica

LAG_SAMPLES = 64
"""STATUS arrival lags remembered per member (about half a minute of ticks): the fastest is its
baseline in the slow-primary monitor."""
LAG_RECENT = 8
"""The slow-primary monitor judges the median of a member's last this-many lags."""


class SlowPrimaryMonitor:
    """When each peer's STATUS messages arrive, and whether the primary is slow."""

    def __init__(self, replica: Replica) -> None:
        self._rep = replica
        self._lags: dict[int, list[int]] = {}
        """Each peer's last few STATUS arrival lags (our clock minus its stamp), for the
        slow-primary monitor."""
        self._heard_ms: dict[int, int] = {}
        """When each peer's last STATUS arrived (our clock): a primary that stops sending them
        (stopped, cut off) is slow by the length of its silence."""
        self._slow_ticks = 0

    def heard(self, sender: int, b: m.Status) -> None:
        """A member's STATUS arrived: when, and how late against its own stamp."""
        rep = self._rep
        if rep._clock is not None:
            self._heard_ms[sender] = rep._clock.now_ms()
        if b.sent_ms and rep._clock is not None:
            lags = self._lags.setdefault(sender, [])
            lags.append(rep._clock.now_ms() - b.sent_ms)
            del lags[:-LAG_SAMPLES]

    def leader_changed(self) -> None:
        """A new primary starts with a clean record; its silence counts from now."""
        rep = self._rep
        self._slow_ticks = 0
        if rep._clock is not None:  # its silence counts from now
            self._heard_ms[rep.primary] = rep._clock.now_ms()

    def watch_primary(self) -> None:
        """The slow-primary monitor (see ProtocolParams.slow_primary_lag_ms).

        A member's delay is how much later than its fastest STATUS of the last `LAG_SAMPLES`
        its recent STATUS messages arrive: measured against its own best, a constant clock
        offset between it and us cancels out (clocks may differ by up to `clock_skew_ms_max`;
        an offset must not make an honest primary look slow). A primary that falls silent (it
        sends a STATUS every tick, busy or idle) is as late as its silence is long, so a stopped
        or cut-off primary is replaced in a few ticks, without waiting for a client's request to
        time out."""
        rep = self._rep
        limit = rep.params.slow_primary_lag_ms
        if (limit == 0 or rep._clock is None or rep.is_primary or not rep.view_active
                or not rep.is_member):
            self._slow_ticks = 0
            return
        now = rep._clock.now_ms()

        def delay(peer: int) -> int | None:
            lags = self._lags.get(peer, [])
            heard = self._heard_ms.get(peer)
            silence = 0 if heard is None else now - heard - rep.params.status_interval_ms
            if len(lags) < 3:
                return silence if silence > 0 else None
            recent = sorted(lags[-LAG_RECENT:])
            return max(recent[len(recent) // 2] - min(lags), silence)
        lag = delay(rep.primary)
        others = [d for p in rep.config.replica_ids
                  if p not in (rep.primary, rep.id) and (d := delay(p)) is not None]
        if lag is None or not others:
            self._slow_ticks = 0
            return
        usual = sorted(others)[len(others) // 2]
        if lag >= limit and lag >= 4 * max(usual, 0) + 100:
            self._slow_ticks += 1
        else:
            self._slow_ticks = 0
        if self._slow_ticks >= rep.params.slow_primary_ticks:
            rep._fault(rep.primary, f"primary {rep.primary} is slow: its STATUS arrives "
                                    f"{lag} ms later than its best, the others' {usual} ms")
            self._slow_ticks = 0
            self._lags.pop(rep.primary, None)
            rep._views.start_view_change(rep.view + 1)
