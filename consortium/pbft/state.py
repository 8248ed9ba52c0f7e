"""Replicated consensus-layer state: client replay windows, state digests, snapshots and proofs.

All of it is a deterministic function of the executed batches, so two honest replicas that
executed the same sequence numbers hold equal state and produce equal checkpoint digests.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from consortium.crypto.hashing import tagged_hash
from consortium.crypto.merkle import merkle_root
from consortium.crypto.signing import Verifier
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member

GENESIS_STATE_DIGEST = tagged_hash(b"consortium/genesis-state")


def batch_root(requests: Iterable[m.Request]) -> bytes:
    """Merkle root (RFC 6962 leaves) over the request digests: a PRE-PREPARE's `root` and the
    block's `merkle_root`, so a request's inclusion proof checks against what the COMMITs signed
    (through `messages.proposal_digest`)."""
    return merkle_root([r.digest for r in requests])


def next_state_digest(previous: bytes, seq: int, digest: bytes) -> bytes:
    """Chain one executed batch into the state digest (it pins the whole ordered history)."""
    return tagged_hash(b"consortium/state", previous, seq.to_bytes(8, "big"), digest)


class NonceStatus(enum.Enum):
    FRESH = "fresh"
    EXECUTED = "executed"
    STALE = "stale"


class ClientTable:
    """Per client, the nonces executed inside a sliding window below the highest one.

    A nonce executes at most once; a nonce older than the window is stale. The window lets a
    client keep several requests in flight that may be ordered out of nonce order.
    """

    __slots__ = ("_executed", "_high", "_window")

    def __init__(self, window: int) -> None:
        self._window = window
        self._executed: dict[str, dict[int, int]] = {}
        self._high: dict[str, int] = {}
        """Highest executed nonce per client: checks are O(1), not a scan of the window.
        Nonces at or below high - window are pruned lazily (when a client's map holds twice
        the window), and never observable: `check` calls them stale first, `entries` omits
        them, so every replica's view is the same whenever it prunes."""

    def check(self, client_id: str, nonce: int) -> tuple[NonceStatus, int]:
        """(status, seq where it executed or 0)."""
        done = self._executed.get(client_id)
        if done is None:
            return NonceStatus.FRESH, 0
        if nonce <= self._high[client_id] - self._window:
            return NonceStatus.STALE, 0
        seq = done.get(nonce)
        if seq is not None:
            return NonceStatus.EXECUTED, seq
        return NonceStatus.FRESH, 0

    def record(self, client_id: str, nonce: int, seq: int) -> None:
        done = self._executed.setdefault(client_id, {})
        done[nonce] = seq
        high = max(self._high.get(client_id, nonce), nonce)
        self._high[client_id] = high
        if len(done) > 2 * self._window:
            floor = high - self._window
            for old in [n for n in done if n <= floor]:
                del done[old]

    def entries(self) -> tuple[m.ClientEntry, ...]:
        out = []
        for cid in sorted(self._executed):
            floor = self._high[cid] - self._window
            out.append(m.ClientEntry(cid, tuple(sorted(
                (n, s) for n, s in self._executed[cid].items() if n > floor))))
        return tuple(out)

    @classmethod
    def from_entries(cls, window: int, entries: Iterable[m.ClientEntry]) -> ClientTable:
        table = cls(window)
        for e in entries:
            if e.executed:
                table._executed[e.client_id] = dict(e.executed)
                table._high[e.client_id] = max(n for n, _ in e.executed)
        return table


def clients_digest(entries: Iterable[m.ClientEntry]) -> bytes:
    parts: list[bytes] = []
    for e in entries:
        parts.append(e.client_id.encode())
        parts.append(b"".join(n.to_bytes(8, "big") + s.to_bytes(8, "big") for n, s in e.executed))
    return tagged_hash(b"consortium/clients", *parts)


def _epochs_digest(epochs: Iterable[tuple[int, int, tuple[Member, ...]]]) -> bytes:
    return tagged_hash(b"consortium/epochs", *(
        EpochConfig(e, start, members).digest() for e, start, members in epochs))


def _pending_digest(p: m.PendingReconfiguration | None) -> bytes:
    if p is None:
        return b""
    return EpochConfig(0, p.effective_seq, p.members).digest()


def checkpoint_digest(seq: int, state_digest: bytes, clients: bytes,
                      epochs: Iterable[tuple[int, int, tuple[Member, ...]]],
                      pending: m.PendingReconfiguration | None) -> bytes:
    return tagged_hash(b"consortium/checkpoint", seq.to_bytes(8, "big"), state_digest, clients,
                       _epochs_digest(epochs), _pending_digest(pending))


def snapshot_digest(genesis: EpochConfig, s: m.Snapshot) -> bytes:
    """What CHECKPOINT messages sign. Epoch proofs are not covered (they come later)."""
    epochs = [(genesis.epoch, genesis.start_seq, genesis.members)]
    epochs += [(e.epoch, e.start_seq, e.members) for e in s.epochs]
    return checkpoint_digest(s.seq, s.state_digest, clients_digest(s.clients), epochs, s.pending)


def verify_signed(msg: m.SignedMessage, config: EpochConfig, chain_id: bytes,
                  verifier: Verifier) -> bool:
    key = config.key_of(msg.sender)
    if key is None:
        return False
    return verifier.verify(key, codec.signing_bytes(chain_id, msg.sender, msg.body_bytes),
                           msg.signature)


def certificate_signers(votes: Iterable[m.SignedMessage], config: EpochConfig,
                        expected: tuple[int, int, int, bytes], kind: type[m.Commit | m.Prepare],
                        chain_id: bytes, verifier: Verifier) -> set[int]:
    """The distinct members of `config` whose valid `kind` votes in `votes` match
    (epoch, view, seq, digest) = `expected`. The one place quorum certificates are counted for
    offline checks: block certificates (clients, auditors, state transfer) and the simulator's
    checker call it; a certificate holds when `len(...) >= config.quorum`."""
    signers: set[int] = set()
    for msg in votes:
        b = msg.body
        if (isinstance(b, kind) and (b.epoch, b.view, b.seq, b.digest) == expected
                and msg.sender not in signers and verify_signed(msg, config, chain_id, verifier)):
            signers.add(msg.sender)
    return signers


def verify_checkpoint_proof(proof: tuple[m.SignedMessage, ...], config: EpochConfig, seq: int,
                            digest: bytes, chain_id: bytes, verifier: Verifier) -> bool:
    """A quorum of distinct members of `config` signed CHECKPOINT(config.epoch, seq, digest)."""
    signers: set[int] = set()
    for msg in proof:
        b = msg.body
        if (isinstance(b, m.Checkpoint) and b.epoch == config.epoch and b.seq == seq
                and b.digest == digest and msg.sender not in signers
                and verify_signed(msg, config, chain_id, verifier)):
            signers.add(msg.sender)
    return len(signers) >= config.quorum


def checkpoint_quorum(proof: tuple[m.SignedMessage, ...], config: EpochConfig, seq: int,
                      digest: bytes, chain_id: bytes,
                      verifier: Verifier) -> tuple[m.SignedMessage, ...]:
    """Exactly a quorum of distinct, valid CHECKPOINT(config.epoch, seq, digest) from `proof`,
    sorted by sender (fewer if `proof` holds fewer). A proof received from a peer may carry extra
    or invalid entries that `verify_checkpoint_proof` tolerates; a replica keeps and passes on
    only this, so the proofs its VIEW-CHANGEs carry stay within `view_change_bytes_max`."""
    kept: dict[int, m.SignedMessage] = {}
    for msg in sorted(proof, key=lambda v: v.sender):
        b = msg.body
        if (isinstance(b, m.Checkpoint) and b.epoch == config.epoch and b.seq == seq
                and b.digest == digest and msg.sender not in kept
                and verify_signed(msg, config, chain_id, verifier)):
            kept[msg.sender] = msg
            if len(kept) == config.quorum:
                break
    return tuple(kept.values())


def verify_epoch_history(genesis: EpochConfig, records: tuple[m.EpochRecord, ...],
                         chain_id: bytes, verifier: Verifier) -> list[EpochConfig] | None:
    """Follow the epoch chain from genesis; each epoch is certified by the one before it.

    Returns every epoch's config (genesis first), or None if any link fails to verify.
    """
    configs = [genesis]
    history = [(genesis.epoch, genesis.start_seq, genesis.members)]
    for r in records:
        prev = configs[-1]
        if r.epoch != prev.epoch + 1 or r.start_seq <= prev.start_seq:
            return None
        try:
            config = EpochConfig(r.epoch, r.start_seq, r.members)
        except ValueError:
            return None
        history.append((r.epoch, r.start_seq, r.members))
        digest = checkpoint_digest(r.start_seq, r.state_digest, r.clients_digest, history, None)
        if not verify_checkpoint_proof(r.proof, prev, r.start_seq, digest, chain_id, verifier):
            return None
        configs.append(config)
    return configs


def signing_config(configs: list[EpochConfig], seq: int) -> EpochConfig:
    """The epoch whose members sign the checkpoint at `seq`: the one in force for `seq` (a
    boundary checkpoint is signed by the epoch it closes)."""
    for config in reversed(configs):
        if config.start_seq < seq or config.start_seq == 0:
            return config
    return configs[0]


def approved_reconfiguration(payload: bytes, config: EpochConfig, seq: int,
                             checkpoint_interval: int, chain_id: bytes,
                             verifier: Verifier) -> m.PendingReconfiguration | None:
    """The validator-set change a RECONFIGURATION request executed at `seq` makes: approved by
    a quorum of `config`'s members, it takes effect at the first checkpoint at or after `seq`.
    None for an invalid or unapproved proposal (skipped alike by every honest replica, and by
    auditors replaying the chain)."""
    try:
        proposal = codec.decode_reconfiguration(payload)
        EpochConfig(config.epoch + 1, seq, proposal.members)
    except ValueError:
        return None
    if proposal.from_epoch != config.epoch:
        return None
    signed = m.reconfiguration_signing_bytes(chain_id, proposal.from_epoch, proposal.members)
    approvers = set()
    for rid, sig in proposal.approvals:
        key = config.key_of(rid)
        if key is not None and verifier.verify(key, signed, sig):
            approvers.add(rid)
    if len(approvers) < config.quorum:
        return None
    effective = -(-seq // checkpoint_interval) * checkpoint_interval
    return m.PendingReconfiguration(effective, proposal.members)
