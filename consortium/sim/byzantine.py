"""Byzantine behaviours: transforms of a replica's outgoing actions.

A Byzantine node runs the honest replica code and then lies on the way out: it holds its own
private key, so everything it sends is validly signed. Honest replicas must stay safe anyway.
"""

from __future__ import annotations

from dataclasses import replace

from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.payload import encode_envelope, split_envelope
from consortium.pbft.replica import Replica
from consortium.pbft.state import batch_root
from consortium.sim.cluster import CHAIN_ID, Behaviour, SimNode, Simulation


def _decode(data: bytes) -> m.SignedMessage | None:
    try:
        return codec.decode_signed(data, CHAIN_ID)
    except codec.DecodeError:
        return None


def _sign(node: SimNode, body: m.Body) -> bytes:
    return codec.sign_message(node.signer, CHAIN_ID, node.replica_id, body).wire


def _proposal(node: SimNode, pp: m.PrePrepare, requests: tuple[m.Request, ...]) -> bytes:
    """A validly signed PRE-PREPARE for `requests` (header recomputed) with the batch attached."""
    header = replace(pp, root=batch_root(requests), count=len(requests))
    msg = codec.sign_message(node.signer, CHAIN_ID, node.replica_id, header)
    return codec.wire_with_batch(msg, codec.encode_batch(requests))


def _sends(actions: list[ev.Action]) -> list[ev.Action]:
    return [a for a in actions if not isinstance(a, ev.Send)]


def equivocating_primary(sim: Simulation) -> Behaviour:
    """As primary, send different batches for the same sequence number to different backups."""

    def behave(node: SimNode, actions: list[ev.Action]) -> list[ev.Action]:
        out: list[ev.Action] = []
        for a in actions:
            msg = _decode(a.data) if isinstance(a, ev.Send) else None
            if isinstance(a, ev.Send) and msg is not None and isinstance(msg.body, m.PrePrepare) \
                    and msg.sender == node.replica_id and len(a.to) > 1:
                pp = msg.body
                batch = msg.batch or ()
                alt_requests = tuple(reversed(batch)) if len(batch) > 1 else ()
                alt = replace(pp, root=batch_root(alt_requests), count=len(alt_requests))
                half = len(a.to) // 2
                out.append(ev.Send(a.to[:half], a.data))
                out.append(ev.Send(a.to[half:], _proposal(node, pp, alt_requests)))
                # ... and vote for both in the prepare/commit phases
                for body in (m.Commit(alt.epoch, alt.view, alt.seq, alt.digest),):
                    out.append(ev.Send(a.to, _sign(node, body)))
            else:
                out.append(a)
        return out

    return behave


def forging_primary(sim: Simulation) -> Behaviour:
    """As primary, put altered client envelopes into validly signed PRE-PREPAREs: one item's
    bytes changed, or the envelope split (items dropped) under the client's signature. Every
    honest backup must refuse to prepare (the client's signature no longer verifies)."""

    def tamper(r: m.Request) -> m.Request:
        items = split_envelope(r.payload)
        if items is None:
            return r
        if len(items) > 1 and sim.rng.random() < 0.5:  # split: keep a prefix of the items
            items = items[: sim.rng.randrange(1, len(items))]
        else:  # alter one item
            i = sim.rng.randrange(len(items))
            changed = bytearray(items[i] or b"\x00")
            changed[sim.rng.randrange(len(changed))] ^= 0x01
            items[i] = bytes(changed)
        return m.Request(r.client_id, r.nonce, r.kind, encode_envelope(items), r.signature)

    def behave(node: SimNode, actions: list[ev.Action]) -> list[ev.Action]:
        out: list[ev.Action] = []
        for a in actions:
            msg = _decode(a.data) if isinstance(a, ev.Send) else None
            if (isinstance(a, ev.Send) and msg is not None and msg.batch
                    and isinstance(msg.body, m.PrePrepare) and msg.sender == node.replica_id):
                forged = tuple(tamper(r) for r in msg.batch)
                out.append(ev.Send(a.to, _proposal(node, msg.body, forged)))
            else:
                out.append(a)
        return out

    return behave


def lying_status(sim: Simulation, silent_from_ms: int) -> Behaviour:
    """Claim an absurd stable checkpoint in every STATUS (validly signed), otherwise follow the
    protocol; from `silent_from_ms` on, send nothing at all. A replica catching up must not
    wait for the liar (f+1 claims, or a proof, decide), and once the liar is silent the honest
    replicas, the one that caught up included, must go on."""
    lie = 1 << 62

    def behave(node: SimNode, actions: list[ev.Action]) -> list[ev.Action]:
        if sim.now_ms >= silent_from_ms:
            return _sends(actions)
        out: list[ev.Action] = []
        for a in actions:
            msg = _decode(a.data) if isinstance(a, ev.Send) else None
            if isinstance(a, ev.Send) and msg is not None and isinstance(msg.body, m.Status):
                out.append(ev.Send(a.to, _sign(node, replace(msg.body, last_executed=lie,
                                                             stable_seq=lie))))
            elif isinstance(a, ev.Send) and msg is not None and isinstance(msg.body,
                                                                           m.StateResponse):
                continue  # it never helps anyone catch up
            else:
                out.append(a)
        return out

    return behave


def silent_primary(sim: Simulation) -> Behaviour:
    """Send nothing at all while primary (it still receives)."""

    def behave(node: SimNode, actions: list[ev.Action]) -> list[ev.Action]:
        rep = node.replica
        if rep is not None and rep.is_primary:
            return _sends(actions)
        return actions

    return behave


def conflicting_votes(sim: Simulation) -> Behaviour:
    """Send PREPAREs and COMMITs for a random digest to some peers, the true ones to others."""

    def behave(node: SimNode, actions: list[ev.Action]) -> list[ev.Action]:
        out: list[ev.Action] = []
        for a in actions:
            msg = _decode(a.data) if isinstance(a, ev.Send) else None
            if isinstance(a, ev.Send) and msg is not None and isinstance(
                    msg.body, (m.Prepare, m.Commit)) and len(a.to) > 1:
                fake = replace(msg.body, digest=sim.rng.randbytes(32))
                half = len(a.to) // 2
                out.append(ev.Send(a.to[:half], a.data))
                out.append(ev.Send(a.to[half:], _sign(node, fake)))
            else:
                out.append(a)
        return out

    return behave


def forger(sim: Simulation) -> Behaviour:
    """Corrupt signatures, impersonate other replicas, and send garbage bytes."""

    def behave(node: SimNode, actions: list[ev.Action]) -> list[ev.Action]:
        out: list[ev.Action] = []
        for a in actions:
            if not isinstance(a, ev.Send):
                out.append(a)
                continue
            msg = _decode(a.data)
            roll = sim.rng.random()
            if msg is None or roll < 0.3:
                out.append(a)
            elif roll < 0.5:  # flip a signature bit
                flipped = bytearray(msg.signature)
                flipped[sim.rng.randrange(64)] ^= 1
                out.append(ev.Send(a.to, codec.resign_message(msg.sender, msg.body,
                                                              bytes(flipped)).wire))
            elif roll < 0.7:  # claim to be another replica, signed with our own key
                victim = sim.rng.randrange(sim.cfg.validators)
                body_bytes = codec.encode_body(msg.body)
                sig = node.signer.sign(codec.signing_bytes(CHAIN_ID, victim, body_bytes))
                out.append(ev.Send(a.to, codec.resign_message(victim, msg.body, sig).wire))
            elif roll < 0.85:  # truncated or bit-flipped bytes
                data = bytearray(a.data)
                if sim.rng.random() < 0.5:
                    data = data[: sim.rng.randrange(len(data))]
                else:
                    data[sim.rng.randrange(len(data))] ^= 0xFF
                out.append(ev.Send(a.to, bytes(data)))
            else:
                out.append(ev.Send(a.to, sim.rng.randbytes(sim.rng.randint(0, 300))))
        return out

    return behave


def replayer(sim: Simulation, every_ms: int = 20) -> Behaviour:
    """Remember every message sent, then replay old ones (old views included), a few at a time
    at most every `every_ms`: a flood is bounded by the transport's rate limits in production."""

    def behave(node: SimNode, actions: list[ev.Action]) -> list[ev.Action]:
        seen: list[bytes] = node.state.setdefault("seen", [])
        out = list(actions)
        for a in actions:
            if isinstance(a, ev.Send):
                seen.append(a.data)
                if len(seen) > 2000:
                    del seen[:1000]
        if seen and sim.now_ms >= node.state.get("next_replay_ms", 0):
            node.state["next_replay_ms"] = sim.now_ms + every_ms
            for _ in range(3):
                old = seen[sim.rng.randrange(len(seen))]
                out.append(ev.Send(tuple(range(sim.cfg.validators)), old))
        return out

    return behave


def silent_then_replay(sim: Simulation, quiet_from_ms: int = 600) -> Behaviour:
    """Primary of view 0 that goes silent after a while (forcing a view change), then replays
    the messages it saw and sent in the old view into the new one."""
    silent = silent_primary(sim)
    replay = replayer(sim)

    def behave(node: SimNode, actions: list[ev.Action]) -> list[ev.Action]:
        rep = node.replica
        if sim.now_ms >= quiet_from_ms and rep is not None and rep.view == 0:
            node.state.setdefault("seen", []).extend(
                a.data for a in actions if isinstance(a, ev.Send))
            return silent(node, actions)
        return replay(node, actions)

    return behave


class CensoringReplica(Replica):
    """A primary that never proposes one client's requests; otherwise it follows the protocol,
    so only the view change (triggered by the backups' request timers) can rescue them."""

    victim = "client-0"

    def _propose(self, batch: tuple[m.Request, ...]) -> None:
        kept = tuple(r for r in batch if r.client_id != self.victim)
        for r in batch:
            if r.client_id == self.victim:
                self.pool.mark_in_flight(r)  # pretend it is ordered: never propose it
        if kept:
            super()._propose(kept)
