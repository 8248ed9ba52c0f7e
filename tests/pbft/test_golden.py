"""Golden interaction transcripts of the PBFT core, in the manner of etcd-raft's datadriven
tests: a few scripted scenarios on four real replicas, every delivered message and every
action written down, and the transcript checked in under tests/pbft/golden/. A change to the
protocol shows up as a diff of these files, which is reviewed like code; read top to bottom,
each file documents one path through the protocol (docs/consensus.md names the sections).

Regenerate after a deliberate change with `CONSORTIUM_UPDATE_GOLDEN=1 pytest
tests/pbft/test_golden.py`, then read the diff.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from tests.pbft.harness import (
    CHAIN_ID,
    CLIENT_SIGNERS,
    GENESIS,
    SIGNERS,
    Cluster,
    params,
    request,
)

GOLDEN = Path(__file__).with_name("golden")
P = params(checkpoint_interval=2, log_window=4)


class Transcript:
    """Drives a `Cluster` like its own `run`, writing down each step."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.lines: list[str] = []
        self.lost: Callable[[m.SignedMessage], bool] = lambda msg: False
        """Messages the network loses (written down as lost)."""

    def note(self, text: str) -> None:
        self.lines.append(f"\n# {text}")

    def submit(self, to: int, r: m.Request) -> None:
        self.lines.append(f"client {r.client_id} nonce {r.nonce} -> r{to}")
        actions = self.cluster.nodes[to].submit(r)
        self._actions(to, actions)
        self.cluster._enqueue(to, actions)

    def fire(self, i: int, kind: ev.TimerKind) -> None:
        self.lines.append(f"r{i} timer {kind.value} fires")
        actions = self.cluster.nodes[i].fire(kind)
        self._actions(i, actions)
        self.cluster._enqueue(i, actions)

    def run(self) -> None:
        c = self.cluster
        while c._queue:
            src, dst, data = c._queue.pop(0)
            if src in c.isolated or dst in c.isolated or dst not in c.nodes:
                continue
            if self.lost(codec.decode_signed(data, CHAIN_ID)):
                self.lines.append(f"r{src} -> r{dst} {_describe(data)}  LOST")
                continue
            self.lines.append(f"r{src} -> r{dst} {_describe(data)}")
            actions = c.nodes[dst].deliver_bytes(data)
            self._actions(dst, actions)
            c._enqueue(dst, actions)

    def _actions(self, i: int, actions: list[ev.Action]) -> None:
        for a in actions:
            text = _action(a)
            if text:
                self.lines.append(f"    r{i}: {text}")

    def text(self) -> str:
        return "\n".join(self.lines).lstrip("\n") + "\n"


def _describe(data: bytes) -> str:
    msg = codec.decode_signed(data, CHAIN_ID)
    b = msg.body
    fields = [f"{k}={getattr(b, k)}" for k in ("view", "new_view", "seq", "last_executed",
                                                "stable_seq", "after_seq", "count")
              if hasattr(b, k)]
    if hasattr(b, "digest"):
        fields.append(f"digest={b.digest.hex()[:8]}")
    if msg.batch is not None:
        fields.append(f"+batch of {len(msg.batch)}")
    if isinstance(b, m.ViewChange):
        fields.append(f"prepared={[p.pre_prepare.body.seq for p in b.prepared]}")
    if isinstance(b, m.NewView):
        fields.append(f"pre_prepares={[p.body.seq for p in b.pre_prepares]}")
    return f"{type(b).__name__}({', '.join(fields)})"


def _action(a: ev.Action) -> str:
    if isinstance(a, ev.Send):
        return ""  # the deliveries say what travelled
    if isinstance(a, ev.Persist):
        parts = [type(x.body).__name__ + ("+batch" if x.batch else "") for x in a.messages]
        return f"persist {', '.join(parts)}"
    if isinstance(a, ev.Execute):
        return (f"EXECUTE seq={a.seq} view={a.view} digest={a.digest.hex()[:8]} "
                f"requests={[r.key for r in a.executed]}")
    if isinstance(a, ev.PersistSnapshot):
        return f"persist checkpoint seq={a.snapshot.seq} (proof of {len(a.proof)})"
    if isinstance(a, ev.InstallSnapshot):
        return f"INSTALL checkpoint seq={a.snapshot.seq}"
    if isinstance(a, ev.SetTimer):
        return f"timer {a.kind.value} {a.delay_ms}ms"
    if isinstance(a, ev.CancelTimer):
        return f"cancel timer {a.kind.value}"
    if isinstance(a, ev.ViewEntered):
        return f"VIEW {a.view} (primary r{a.primary})"
    if isinstance(a, ev.PeerFault):
        return f"fault: {a.reason}"
    if isinstance(a, ev.EpochEntered):
        return f"EPOCH {a.config.epoch} members {list(a.config.replica_ids)}"
    if isinstance(a, ev.RejectRequest):
        return f"reject {a.request.key}: {a.reason.value}"
    return type(a).__name__


# ----------------------------------------------------------------------------- scenarios

def normal_case(t: Transcript) -> None:
    """Section 4: a request reaches the primary; PRE-PREPARE with the batch, PREPAREs,
    COMMITs; every replica persists before it speaks and executes seq 1."""
    t.note("alice's request reaches the primary r0")
    t.submit(0, request("alice", 1))
    t.run()


def view_change_with_a_prepared_batch(t: Transcript) -> None:
    """Section 7: seq 1 prepares everywhere but every COMMIT of view 0 is lost, and then the
    primary is cut off; the backups' request timers fire (first they relay the request, then
    they vote), their VIEW-CHANGEs carry the prepared certificate, and the new primary r1
    re-proposes the same batch in view 1, where it executes."""
    t.lost = lambda msg: isinstance(msg.body, m.Commit) and msg.body.view == 0
    t.note("r0 proposes seq 1; everyone prepares; view 0's COMMITs are lost")
    t.submit(0, request("alice", 1))
    t.run()
    t.cluster.isolated = {0}
    t.note("r0 is cut off; the backups' request timers fire: they relay the request")
    for i in (1, 2, 3):
        t.fire(i, ev.TimerKind.REQUEST)
    t.run()
    t.note("they fire again: the backups vote for view 1")
    for i in (1, 2, 3):
        t.fire(i, ev.TimerKind.REQUEST)
    t.run()


def checkpoint_and_garbage_collection(t: Transcript) -> None:
    """Section 6: with K = 2, two executed batches make checkpoint 2 stable (2f+1 matching
    CHECKPOINTs): each replica persists the snapshot and discards the log below it."""
    for nonce in (1, 2):
        t.note(f"alice's request {nonce}")
        t.submit(0, request("alice", nonce))
        t.run()


def state_transfer(t: Transcript) -> None:
    """Section 6.3: r3 is cut off while the others pass checkpoint 2; reconnected, it hears
    f+1 members claim the checkpoint, asks for it, installs it, and executes seq 3 from
    retransmitted messages."""
    c = t.cluster
    c.isolated = {3}
    for nonce in (1, 2, 3):
        t.note(f"alice's request {nonce} while r3 is cut off")
        t.submit(0, request("alice", nonce))
        t.run()
    c.isolated = set()
    t.note("r3 is back: r0 and r1 tell it their stable checkpoint (f+1 claims)")
    t.fire(0, ev.TimerKind.STATUS)
    t.run()
    t.fire(1, ev.TimerKind.STATUS)
    t.run()
    t.note("r3's status tick: it asks for the checkpoint and installs it")
    t.fire(3, ev.TimerKind.STATUS)
    t.run()
    t.note("r3's next tick: peers retransmit seq 3")
    t.fire(3, ev.TimerKind.STATUS)
    t.run()


def epoch_change(t: Transcript) -> None:
    """Section 9: a quorum-approved reconfiguration (replica 3 leaves) is ordered like any
    request; it takes effect at the next stable checkpoint, where the three remaining replicas
    enter epoch 1 together and order the next request among themselves."""
    members = tuple(mm for mm in GENESIS.members if mm.replica_id != 3)
    signing = m.reconfiguration_signing_bytes(CHAIN_ID, 0, members)
    payload = codec.encode_reconfiguration(m.Reconfiguration(
        0, members, tuple((i, SIGNERS[i].sign(signing)) for i in (0, 1, 2))))
    t.note("alice submits the reconfiguration approved by r0, r1 and r2")
    kind = m.RequestKind.RECONFIGURATION
    digest = m.request_digest("alice", 1, kind, payload)
    t.submit(0, m.Request("alice", 1, kind, payload, CLIENT_SIGNERS["alice"].sign(
        m.request_signing_bytes(CHAIN_ID, digest))))
    t.run()
    t.note("the next request reaches checkpoint 2: epoch 1 begins there")
    t.submit(0, request("alice", 2))
    t.run()
    t.note("a request in epoch 1")
    t.submit(0, request("alice", 3))
    t.run()


SCENARIOS: dict[str, Callable[[Transcript], None]] = {
    "normal_case": normal_case,
    "view_change_with_a_prepared_batch": view_change_with_a_prepared_batch,
    "checkpoint_and_garbage_collection": checkpoint_and_garbage_collection,
    "state_transfer": state_transfer,
    "epoch_change": epoch_change,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_transcript_matches_the_golden_file(name: str) -> None:
    scenario = SCENARIOS[name]
    t = Transcript(Cluster(P))
    t.lines.append(f"# {name}: " + " ".join((scenario.__doc__ or "").split()))
    scenario(t)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("CONSORTIUM_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(t.text())
    assert path.exists(), f"no golden file {path}: run with CONSORTIUM_UPDATE_GOLDEN=1"
    assert t.text() == path.read_text(), (
        f"{path.name} changed: if the protocol change is deliberate, regenerate with "
        "CONSORTIUM_UPDATE_GOLDEN=1 and review the diff")
