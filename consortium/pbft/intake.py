"""Client-request intake: admitting requests, and timing them at backups (paper 4.1, 4.4).

This part owns the signature cache (`_verified_requests`) and the REQUEST timer's bookkeeping:
which request is timed (`timed_request`, which the core clears when the primary changes), and the
relay and patience state of that timer. It reads the replica's configuration, view, client table
and tick; it adds requests to and drops them from the replica's `pool`; and it emits rejections,
REQUEST-FORWARDs, the REQUEST timer, and, when a request waited too long, the start of a view
change. It never orders or executes anything: the primary proposes through `Batcher.maybe_propose`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.state import NonceStatus

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica


class RequestIntake:
    """Client requests and the backup's request timer for one replica."""

    def __init__(self, replica: Replica) -> None:
        self._rep = replica
        self._verified_requests: dict[bytes, None] = {}
        self.timed_request: tuple[str, int] | None = None
        """The pending request the REQUEST timer is timing (client id, nonce)."""
        self._request_relayed = False
        self._request_patience_used = 0
        self._request_progress_mark = 0
        """last_executed when the request timer was last armed: progress since then earns
        patience (see ProtocolParams.request_patience)."""

    def verify_request(self, r: m.Request) -> ev.RejectReason | None:
        """Why a request must be refused (size, unknown client, bad signature), if it must;
        valid signatures are remembered, so a request is checked once however often it comes."""
        rep = self._rep
        if r.size_bytes > rep.params.request_bytes_max:
            return ev.RejectReason.TOO_LARGE
        cache_key = r.digest + r.signature
        if cache_key in self._verified_requests:
            return None
        keys = rep._clients.client_keys(r.client_id)
        if not keys:
            return ev.RejectReason.UNKNOWN_CLIENT
        signed = m.request_signing_bytes(rep.chain_id, r.digest)
        if not any(rep._verifier.verify(key, signed, r.signature) for key in keys):
            return ev.RejectReason.BAD_SIGNATURE
        self._verified_requests[cache_key] = None
        if len(self._verified_requests) > 4 * rep.params.pending_requests_max:
            del self._verified_requests[next(iter(self._verified_requests))]
        return None

    def on_client_request(self, r: m.Request, *, forwarded: bool, retry: bool = False) -> None:
        """A request from a client, or `forwarded` inside a peer's REQUEST-FORWARD."""
        rep = self._rep
        if not rep.is_member:
            return
        reason = self.verify_request(r)
        if reason is not None:
            if forwarded:
                rep._fault(None, f"forwarded request rejected: {reason.value}")
            else:
                rep._out.append(ev.RejectRequest(r, reason))
            return
        status, seq = rep._client_table.check(r.client_id, r.nonce)
        if status is NonceStatus.EXECUTED:
            if not forwarded:
                rep._out.append(ev.AlreadyExecuted(r, seq))
            return
        if status is NonceStatus.STALE:
            if not forwarded:
                rep._out.append(ev.RejectRequest(r, ev.RejectReason.STALE))
            return
        primary = rep.is_primary and rep.view_active
        if not primary and not forwarded and not retry and rep.view_active:
            # Clients send to the primary (paper 4.1); a first submission here is redirected,
            # not relayed: a backup signs no forward per request on the normal path.
            rep._out.append(ev.RejectRequest(r, ev.RejectReason.NOT_PRIMARY, rep.primary))
            return
        known = r.key in rep.pool
        if not known and not rep.pool.add(r, rep._tick):
            if not forwarded:
                rep._out.append(ev.RejectRequest(r, ev.RejectReason.OVERLOADED))
            return
        if primary:
            if r.key not in rep.pool.in_flight:
                rep.pool.queue.put(r)
            rep._batcher.maybe_propose()
        elif not forwarded and rep.view_active:
            # A client retrying at a backup suspects the primary: relay the request to it, and
            # on a second retry to everyone, so every backup starts timing it (paper 4.1).
            body = m.RequestForward((r,))
            if known:
                rep._broadcast(rep._sign(body))
            else:
                rep._send(rep.primary, rep._sign(body))
        self.arm_request_timer()

    def arm_request_timer(self) -> None:
        """Backups time the oldest pending request (paper 4.4): if it does not execute in time,
        the primary is suspected, even if it keeps executing other clients' requests."""
        rep = self._rep
        if rep.is_primary or not rep.view_active or not rep.is_member:
            return
        self.drop_stale_pending()
        oldest = rep.pool.oldest()
        if oldest is None:
            self.timed_request = None
            rep._cancel_timer(ev.TimerKind.REQUEST)
            return
        if self.timed_request != oldest or not rep._timer_armed(ev.TimerKind.REQUEST):
            if self.timed_request != oldest:
                self._request_relayed = False
                self._request_patience_used = 0
            self.timed_request = oldest
            self._request_progress_mark = rep.last_executed
            rep._set_timer(ev.TimerKind.REQUEST, rep.params.request_timeout_ms)

    def drop_stale_pending(self) -> None:
        """Requests whose nonce fell out of their client's window (it executed newer ones)
        can never execute: drop them from the front of the waiting list, telling their
        client, instead of timing them and suspecting an honest primary."""
        rep = self._rep
        while True:
            key = rep.pool.oldest()
            if key is None or rep._client_table.check(*key)[0] is not NonceStatus.STALE:
                return
            r = rep.pool.remove(key)
            assert r is not None
            rep._out.append(ev.RejectRequest(r, ev.RejectReason.STALE))

    def forward_pending(self, *, waited_only: bool) -> None:
        """Relay pending requests to the primary; with `waited_only`, only those that have
        already waited a full status tick (their first forward may have been lost). One
        forward carries at most a batch's worth (count and bytes)."""
        rep = self._rep
        if not rep.is_member or rep.is_primary:
            return
        batch: list[m.Request] = []
        size = 0
        for key, r, tick in rep.pool.items():
            if key in rep.pool.in_flight or (waited_only and tick >= rep._tick - 1):
                continue
            if len(batch) >= rep.params.batch_requests_max or \
                    size + r.size_bytes > rep.params.batch_bytes_max:
                break
            batch.append(r)
            size += r.size_bytes
        if batch:
            rep._send(rep.primary, rep._sign(m.RequestForward(tuple(batch))))

    def on_request_timer(self) -> None:
        """The oldest pending request waited a full timeout: give a progressing primary more
        time, else relay the waiting requests once, else vote for a view change."""
        rep = self._rep
        timed = self.timed_request
        if timed is not None and rep._client_table.check(*timed)[0] is NonceStatus.STALE:
            self.arm_request_timer()  # it can never execute: time the next one
        elif timed in rep.pool and rep.view_active:
            if (rep.last_executed > self._request_progress_mark
                    and self._request_patience_used < rep.params.request_patience):
                # The primary is executing batches: a deep queue drains, give it time
                # (and do not flood peers with relays of requests it is getting to).
                self._request_patience_used += 1
                self._request_progress_mark = rep.last_executed
                rep._set_timer(ev.TimerKind.REQUEST, rep.params.request_timeout_ms)
            elif not self._request_relayed:
                # First expiry without progress: the other backups may never have seen
                # these requests (a client reaches one validator). Relay them to everyone,
                # as the paper's client retransmission does, so that all backups time
                # them; vote for a view change only if they still wait one more period. A
                # replica that is merely slow thus does not leave the group alone.
                self._request_relayed = True
                waiting: list[m.Request] = []
                size = 0
                for _key, r, _tick in rep.pool.items():
                    if len(waiting) >= rep.params.batch_requests_max or \
                            size + r.size_bytes > rep.params.batch_bytes_max:
                        break
                    waiting.append(r)
                    size += r.size_bytes
                rep._broadcast(rep._sign(m.RequestForward(tuple(waiting))))
                self._request_progress_mark = rep.last_executed
                rep._set_timer(ev.TimerKind.REQUEST, rep.params.request_timeout_ms)
            else:
                rep._views.start_view_change(rep.view + 1)
