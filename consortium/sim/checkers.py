"""Invariant checkers that watch every execution of every honest replica.

Safety (checked at each step):
- agreement: no two honest replicas execute different batches at the same sequence number;
- validity: every executed request is one a client submitted (same digest);
- at-most-once: a (client, nonce) executes at one sequence number only, everywhere;
- no equivocation: an honest replica never signs two different PRE-PREPAREs, PREPAREs or
  COMMITs for the same (epoch, view, seq), restarts included;
- certificate: each executed batch carries 2f+1 COMMITs for it, validly signed by distinct
  members of the epoch it executed in (what an auditor checks offline).
Liveness is judged by the simulation (every request executed everywhere after faults heal).
"""

from __future__ import annotations

from consortium.crypto.signing import Verifier
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import batch_root, certificate_signers


class SafetyChecker:
    def __init__(self, chain_id: bytes, verifier: Verifier) -> None:
        self.chain_id = chain_id
        self.verifier = verifier
        self.decided: dict[int, tuple[bytes, int]] = {}
        """seq -> (digest, first replica that executed it)."""
        self.executed_at: dict[tuple[str, int], int] = {}
        self.per_replica: dict[int, set[tuple[str, int]]] = {}
        self.signed: dict[tuple[int, str, int, int, int], bytes] = {}
        self.violations: list[str] = []

    def _violate(self, text: str) -> None:
        self.violations.append(text)

    def on_send(self, replica_id: int, msg: m.SignedMessage) -> None:
        """Watch what an honest replica signs itself (relayed messages are someone else's)."""
        b = msg.body
        if msg.sender != replica_id or not isinstance(b, (m.PrePrepare, m.Prepare, m.Commit)):
            return
        key = (replica_id, type(b).__name__, b.epoch, b.view, b.seq)
        first = self.signed.setdefault(key, b.digest)
        if first != b.digest:
            self._violate(f"equivocation: replica {replica_id} signed two {key[1]}s for epoch "
                          f"{b.epoch} view {b.view} seq {b.seq}")

    def forget(self, replica_id: int, keys: list[tuple[str, int]]) -> None:
        """A replica lost executions that were not yet on disk (a crash): it will execute
        those requests again, at the same sequence numbers (`executed_at` still holds them)."""
        self.per_replica.get(replica_id, set()).difference_update(keys)

    def on_execute(self, replica_id: int, a: ev.Execute,
                   submitted: dict[tuple[str, int], bytes], config: EpochConfig) -> None:
        """`config` is the validator set of the epoch the batch executed in."""
        first = self.decided.get(a.seq)
        if first is None:
            self.decided[a.seq] = (a.digest, replica_id)
        elif first[0] != a.digest:
            self._violate(f"agreement: replica {replica_id} executed digest {a.digest.hex()[:12]} "
                          f"at seq {a.seq}, replica {first[1]} executed "
                          f"{first[0].hex()[:12]}")
        pp = a.pre_prepare.body
        if not isinstance(pp, m.PrePrepare) or pp.digest != a.digest or (
                pp.root, pp.count) != (batch_root(a.requests), len(a.requests)):
            self._violate(f"validity: replica {replica_id} executed at seq {a.seq} a batch that "
                          "does not match its proposal header")
        signers = certificate_signers(a.certificate, config,
                                      (config.epoch, a.view, a.seq, a.digest), m.Commit,
                                      self.chain_id, self.verifier)
        if len(signers) < config.quorum:
            self._violate(f"certificate: replica {replica_id} executed seq {a.seq} with only "
                          f"{len(signers)} matching commits")
        mine = self.per_replica.setdefault(replica_id, set())
        for r in a.executed:
            if submitted.get(r.key) != r.digest:
                self._violate(f"validity: replica {replica_id} executed {r.key} at seq {a.seq}, "
                              "which no client submitted")
            if r.key in mine:
                self._violate(f"at-most-once: replica {replica_id} executed {r.key} twice")
            mine.add(r.key)
            seq = self.executed_at.setdefault(r.key, a.seq)
            if seq != a.seq:
                self._violate(f"at-most-once: {r.key} executed at seq {seq} and at seq {a.seq}")
