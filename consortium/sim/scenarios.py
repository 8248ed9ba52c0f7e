"""The scenario catalogue: each builds a seeded `Simulation` with its faults.

Network and crash scenarios have no Byzantine replica; Byzantine scenarios make `byzantine`
replicas (at most f) misbehave in the named way; `swarm` mixes random faults of every kind.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from consortium.crypto.signing import Ed25519Signer
from consortium.node.driver import Driver
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import Member
from consortium.pbft.quorum import faults_tolerated
from consortium.pbft.replica import Replica
from consortium.pbft.state import batch_root
from consortium.sim import byzantine as byz
from consortium.sim.cluster import (
    CHAIN_ID,
    TWIN_KEY_OFFSET,
    Behaviour,
    NetworkFaults,
    SimConfig,
    Simulation,
    derive_seed,
    sign_request,
)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    byzantine: bool
    build: Callable[[Simulation, random.Random, int], None]
    """(sim, rng, number of Byzantine replicas) -> configure faults and roles."""
    config: Callable[[SimConfig, random.Random, int], SimConfig] = lambda c, _r, _n: c


def _pick(rng: random.Random, n: int, count: int, *, include: int | None = None) -> list[int]:
    ids = list(range(n))
    chosen = [] if include is None else [include]
    rest = [i for i in ids if i not in chosen]
    rng.shuffle(rest)
    return (chosen + rest)[:count]


def _no_build(sim: Simulation, rng: random.Random, b: int) -> None:
    return None


# ---------------------------------------------------------------------------------- network

def _lossy(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    return replace(cfg, faults=NetworkFaults(delay_ms_max=30, drop_rate=rng.uniform(0.05, 0.2),
                                             duplicate_rate=0.05, reorder_rate=0.2))


def _partition(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    n = cfg.validators
    parts = []
    t = rng.randint(100, 600)
    for _ in range(rng.randint(1, 3)):
        length = rng.randint(200, 900)
        if rng.random() < 0.5:  # isolate a minority of up to f replicas
            minority = set(_pick(rng, n, rng.randint(1, faults_tolerated(n))))
        else:  # split in two halves: no side has a quorum
            minority = set(_pick(rng, n, n // 2))
        parts.append((t, min(t + length, cfg.faults_end_ms),
                      [minority, set(range(n + cfg.extra_nodes)) - minority]))
        t += length + rng.randint(50, 300)
        if t >= cfg.faults_end_ms:
            break
    return replace(cfg, faults=NetworkFaults(delay_ms_max=20, partitions=parts))


def _crash_schedule(sim: Simulation, rng: random.Random, victims: list[int]) -> None:
    end = sim.cfg.faults_end_ms
    for v in victims:
        t = rng.randint(50, end // 2)
        while t < end - 200:
            down = rng.randint(100, 800)
            sim.hooks.append((t, functools.partial(Simulation.crash, i=v)))
            sim.hooks.append((min(t + down, end - 100), functools.partial(Simulation.restart, i=v)))
            t += down + rng.randint(200, 900)


def _crash_restart(sim: Simulation, rng: random.Random, b: int) -> None:
    n = sim.cfg.validators
    _crash_schedule(sim, rng, _pick(rng, n, rng.randint(1, faults_tolerated(n))))


def _crash_points(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    """Any validator may die just before or just after any durable write of its driver (a
    block, the consensus log, a checkpoint, fetched blocks) and restart from what it wrote:
    the crash points between persisting and sending that durability-before-speech is for."""
    return replace(cfg, crash_point_rate=rng.uniform(0.01, 0.04),
                   faults=NetworkFaults(delay_ms_max=20, reorder_rate=0.1))


def _twins(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    """Twins (Bano et al., "Twins: BFT systems made robust"): validator v runs twice, the
    original and a twin with the same key, both honest code, in different partitions that
    change every few hundred milliseconds: each copy forms quorums with some honest validators
    and may propose or vote for what the other copy contradicts. Safety rests on quorum
    intersection in honest validators alone. After the faults the twin stops."""
    n = cfg.validators
    v = rng.randrange(n)
    twin = TWIN_KEY_OFFSET + v
    others = [i for i in range(n) if i != v]
    parts = []
    t = rng.randint(0, 200)
    while t < cfg.faults_end_ms - 100:
        end = min(t + rng.randint(200, 600), cfg.faults_end_ms)
        rng.shuffle(others)
        cut = rng.randint(1, len(others) - 1)
        parts.append((t, end, [{v, *others[:cut]}, {twin, *others[cut:]}]))
        t = end
    return replace(cfg, faults=NetworkFaults(delay_ms_max=15, partitions=parts),
                   notes={"twin_of": v})


def _twins_build(sim: Simulation, rng: random.Random, b: int) -> None:
    twin = sim.add_twin(sim.cfg.notes["twin_of"])
    sim.hooks.append((sim.cfg.faults_end_ms, functools.partial(Simulation.crash, i=twin)))


def _commit_loss(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    """COMMITs reach only one backup (the "lucky" one) for longer than the request timeout: it
    alone executes, the others only prepared and start a view change; the lucky one crashes
    meanwhile. The new view must re-propose what was prepared (paper 4.4), or the lucky replica
    and the rest diverge when it comes back."""
    lucky = rng.randrange(1, cfg.validators)
    start = rng.randint(100, 400)
    end = start + rng.randint(700, 1200)

    def drop(src: int, dst: int, data: bytes, now_ms: int) -> bool:
        if not start <= now_ms < end or dst == lucky:
            return False
        return len(data) > 7 and data[7] == codec.MsgType.COMMIT

    return replace(cfg, faults=NetworkFaults(delay_ms_max=10, drop_filter=drop),
                   faults_end_ms=end + 1500, notes={"lucky": lucky, "crash_at_ms": end - 1})


def _commit_loss_build(sim: Simulation, rng: random.Random, b: int) -> None:
    lucky, crash_at = sim.cfg.notes["lucky"], sim.cfg.notes["crash_at_ms"]
    sim.hooks.append((crash_at, functools.partial(Simulation.crash, i=lucky)))
    sim.hooks.append((sim.cfg.faults_end_ms - 100, functools.partial(Simulation.restart,
                                                                     i=lucky)))


def _big_batches(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    """Envelopes and batches at the size limits (about 60 KiB per envelope, 4 per batch at a
    256 KiB batch limit), and the primary cut off for a while: the view change must stay small
    (headers only, checked on every send) and the batches it re-proposes are fetched."""
    params = replace(cfg.params, request_bytes_max=64 << 10, batch_bytes_max=256 << 10)
    pause_from = rng.randint(200, 800)
    pause_to = pause_from + rng.randint(1800, 2600)
    faults = NetworkFaults(delay_ms_max=20, drop_rate=rng.choice([0.0, 0.05]),
                           partitions=[(pause_from, pause_to,
                                        [{0}, set(range(1, cfg.validators))])])
    return replace(cfg, params=params, faults=faults, item_bytes=(14 << 10, 15 << 10),
                   items_per_envelope=(3, 4), faults_end_ms=pause_to + 1000,
                   notes={"restart_at_ms": pause_to + 300})


def _big_batches_build(sim: Simulation, rng: random.Random, b: int) -> None:
    victim = rng.randrange(1, sim.cfg.validators)
    at = sim.cfg.notes["restart_at_ms"]
    sim.hooks.append((at, functools.partial(Simulation.crash, i=victim)))
    sim.hooks.append((at + rng.randint(100, 400), functools.partial(Simulation.restart,
                                                                     i=victim)))


def _lagging_config(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    """One honest replica cut off while the others order enough to pass several stable
    checkpoints (so it must catch up by state transfer)."""
    lagging = cfg.validators - 1
    cut_to = rng.randint(1800, 2300)
    return replace(cfg, requests_per_client=16, faults=NetworkFaults(
        delay_ms_max=15, partitions=[(50, cut_to, [{lagging},
                                                   set(range(cfg.validators - 1))])]),
        faults_end_ms=4000, notes={"lagging": lagging, "silent_from_ms": cut_to + 2000})


def _lying_status(sim: Simulation, rng: random.Random, b: int) -> None:
    """Byzantine members claim stable checkpoint 2^62 in every STATUS while an honest replica
    catches up, then fall silent: the lagging replica must not be steered to the liars, and
    the honest replicas must go on without them (attack campaign, finding 2)."""
    lagging = sim.cfg.notes["lagging"]
    liars = _pick(rng, lagging, b)
    silent_from = sim.cfg.notes["silent_from_ms"]
    _assign(sim, liars, lambda s: byz.lying_status(s, silent_from))


def _slow_primary(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    """The primary stays up but every message to or from it takes 600-900 ms more (a slow
    but alive primary, which request timeouts alone do not replace): the slow-primary monitor
    must hand the view to another replica, safely."""
    start = rng.randint(100, 400)
    extra = rng.randint(600, 900)

    def delay(src: int, dst: int, now_ms: int) -> int:
        return extra if now_ms >= start and 0 in (src, dst) else 0

    return replace(cfg, faults=NetworkFaults(delay_ms_max=10, extra_delay=delay),
                   faults_end_ms=6000, submit_window_ms=5000, requests_per_client=12)


def _primary_crash(sim: Simulation, rng: random.Random, b: int) -> None:
    sim.hooks.append((rng.randint(100, 800), functools.partial(Simulation.crash, i=0)))
    sim.hooks.append((sim.cfg.faults_end_ms - 200, functools.partial(Simulation.restart, i=0)))


# -------------------------------------------------------------------------------- byzantine

def _assign(sim: Simulation, ids: list[int], make: Callable[[Simulation], Behaviour]) -> None:
    for i in ids:
        sim.nodes[i].byzantine = True
        sim.nodes[i].behaviour = make(sim)


def _equivocating(sim: Simulation, rng: random.Random, b: int) -> None:
    ids = _pick(rng, sim.cfg.validators, b, include=0)
    _assign(sim, ids, byz.equivocating_primary)


def _forging(sim: Simulation, rng: random.Random, b: int) -> None:
    ids = _pick(rng, sim.cfg.validators, b, include=0)
    _assign(sim, ids, byz.forging_primary)


def _silent(sim: Simulation, rng: random.Random, b: int) -> None:
    _assign(sim, _pick(rng, sim.cfg.validators, b, include=0), byz.silent_primary)


def _conflicting(sim: Simulation, rng: random.Random, b: int) -> None:
    _assign(sim, _pick(rng, sim.cfg.validators, b), byz.conflicting_votes)


def _forged(sim: Simulation, rng: random.Random, b: int) -> None:
    _assign(sim, _pick(rng, sim.cfg.validators, b), byz.forger)


def _replay(sim: Simulation, rng: random.Random, b: int) -> None:
    ids = _pick(rng, sim.cfg.validators, b, include=0)
    _assign(sim, ids[:1], lambda s: byz.silent_then_replay(s, rng.randint(300, 1200)))
    _assign(sim, ids[1:], byz.replayer)


def _censoring(sim: Simulation, rng: random.Random, b: int) -> None:
    ids = _pick(rng, sim.cfg.validators, b, include=0)
    for i in ids:
        sim.nodes[i].byzantine = True
        sim.nodes[i].replica_class = byz.CensoringReplica


def _non_member(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    return replace(cfg, extra_nodes=1)


def _non_member_build(sim: Simulation, rng: random.Random, b: int) -> None:
    """A node outside the consortium (valid key, not in genesis) floods well-formed, validly
    signed protocol messages, some impersonating members."""
    outsider = sim.cfg.validators
    node = sim.nodes[outsider]
    node.byzantine = True
    signer = node.signer

    def flood(s: Simulation) -> None:
        if s.now_ms >= s.cfg.faults_end_ms:
            return
        seq = rng.randint(1, 12)
        view = rng.randint(0, 2)
        pp = m.PrePrepare(0, view, seq, batch_root(()), 0, 0)
        digest = pp.digest
        bodies: list[m.Body] = [
            pp, m.Prepare(0, view, seq, digest),
            m.Commit(0, view, seq, digest), m.Checkpoint(0, 4, rng.randbytes(32)),
            m.ViewChange(0, view + 1, 0, (), ()), m.Status(0, view + 5, True, 100, 96)]
        for body in bodies:
            sender = outsider if rng.random() < 0.5 else rng.randrange(s.cfg.validators)
            wire = codec.sign_message(signer, CHAIN_ID, sender, body).wire
            for dst in range(s.cfg.validators):
                s.send(outsider, dst, wire)
        s.at(s.now_ms + 40, flood)

    sim.hooks.append((10, flood))


# ------------------------------------------------------------------------------ reconfigure

def _reconfig_config(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    return replace(cfg, extra_nodes=1, faults=NetworkFaults(delay_ms_max=20, drop_rate=0.02),
                   requests_per_client=10, submit_window_ms=2500)


def reconfiguration_request(sim: Simulation, from_epoch: int, members: tuple[Member, ...],
                            approvers: list[int], nonce: int) -> m.Request:
    signed = m.reconfiguration_signing_bytes(CHAIN_ID, from_epoch, members)
    approvals = tuple((i, sim.signers[i].sign(signed)) for i in approvers)
    payload = codec.encode_reconfiguration(m.Reconfiguration(from_epoch, members, approvals))
    governor: Ed25519Signer = sim.governor
    return sign_request(governor, "governor", nonce, m.RequestKind.RECONFIGURATION, payload)


def _reconfig_build(sim: Simulation, rng: random.Random, b: int) -> None:
    """Grow n -> n+1 (a new replica joins by state transfer), then shrink back to n."""
    n = sim.cfg.validators
    joiner = n
    grown = (*sim.genesis.members, Member(joiner, sim.signers[joiner].public_key))
    done = {"grow": False, "shrink": False}

    def epoch_reached(s: Simulation, epoch: int) -> bool:
        reps = s.live_honest_members()
        return bool(reps) and all(r.config.epoch >= epoch for r in reps)

    def joiner_synced(s: Simulation) -> bool:
        joined = s.nodes[joiner].replica
        return joined is not None and joined.is_member and joined.last_executed > 0

    def driver(s: Simulation) -> None:
        if not done["grow"]:
            done["grow"] = True
            s.submit_request(reconfiguration_request(s, 0, grown, list(range(n)), 1))
        elif not done["shrink"] and epoch_reached(s, 1) and joiner_synced(s):
            # as an operator would: remove it again only once it has caught up
            done["shrink"] = True
            s.submit_request(reconfiguration_request(s, 1, sim.genesis.members,
                                                     list(range(n + 1)), 2))
        if not done["shrink"]:
            s.at(s.now_ms + 50, driver)

    sim.hooks.append((rng.randint(100, 600), driver))

    def joined_and_left(s: Simulation) -> bool:
        joined = s.nodes[joiner].replica
        return (done["shrink"] and epoch_reached(s, 2) and joined is not None
                and joined.last_executed > 0)

    sim.liveness_condition = joined_and_left


# ------------------------------------------------------------------------------ key rotation

def _key_rotation_config(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    return replace(cfg, faults=NetworkFaults(delay_ms_max=20, drop_rate=0.02),
                   requests_per_client=10, submit_window_ms=2500)


def _key_rotation_build(sim: Simulation, rng: random.Random, b: int) -> None:
    """Validators' keys change at an epoch boundary (same members, new keys, approved by all):
    an honest one holds its new key ahead of the switch, as a validator loads
    signing.key.next, and signs with it from the new epoch on; the Byzantine ones never hold
    theirs and keep signing with the old key after the switch. Honest replicas must refuse
    those messages (and stay live without them: with b = f the quorum needs every honest
    replica, the rotated one under its new key)."""
    n = sim.cfg.validators
    bad = _pick(rng, n, b)
    for i in bad:
        sim.nodes[i].byzantine = True
    honest = next(i for i in rng.sample(range(n), n) if i not in bad)
    rotated = {i: Ed25519Signer(derive_seed("rotated", sim.seed, i)) for i in (*bad, honest)}
    sim.nodes[honest].next_signers.append(rotated[honest])
    members = tuple(Member(mem.replica_id, rotated[mem.replica_id].public_key)
                    if mem.replica_id in rotated else mem for mem in sim.genesis.members)

    def rotate(s: Simulation) -> None:
        node = s.nodes[honest]
        if node.replica is not None:
            node.replica.add_signer(rotated[honest])
        s.submit_request(reconfiguration_request(s, 0, members, list(range(n)), 1))

    sim.hooks.append((rng.randint(100, 600), rotate))

    def switched_and_refused(s: Simulation) -> bool:
        reps = s.live_honest_members()
        return bool(reps) and all(r.config.epoch >= 1 for r in reps) and all(
            s.faults_by[(i, 1)] > 0 for i in bad)

    sim.liveness_condition = switched_and_refused


# ------------------------------------------------------------------------------------ swarm

SWARM_BEHAVIOURS = (byz.equivocating_primary, byz.silent_primary, byz.conflicting_votes,
                    byz.forger, byz.replayer, byz.forging_primary)


def _swarm_config(cfg: SimConfig, rng: random.Random, b: int) -> SimConfig:
    return replace(cfg, faults=NetworkFaults(
        delay_ms_max=rng.choice([5, 20, 60]), drop_rate=rng.choice([0.0, 0.05, 0.15]),
        duplicate_rate=rng.choice([0.0, 0.05]), reorder_rate=rng.choice([0.0, 0.2])))


def _swarm(sim: Simulation, rng: random.Random, b: int) -> None:
    n = sim.cfg.validators
    bad = _pick(rng, n, b)
    for i in bad:
        _assign(sim, [i], rng.choice(SWARM_BEHAVIOURS))
    honest = [i for i in range(n) if i not in bad]
    if rng.random() < 0.5 and faults_tolerated(n) > len(bad):
        _crash_schedule(sim, rng, _pick(rng, len(honest), 1))


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("normal", "no faults: steady ordering, checkpoints, garbage collection", False,
             _no_build),
    Scenario("lossy-network", "drops, duplicates, reordering and delay", False, _no_build,
             _lossy),
    Scenario("partition", "partitions that isolate a minority or split the group, then heal",
             False, _no_build, _partition),
    Scenario("crash-restart", "up to f replicas crash and restart from durable state", False,
             _crash_restart),
    Scenario("primary-crash", "the primary crashes: view change, then it rejoins", False,
             _primary_crash),
    Scenario("crash-points", "validators die just before or after any durable write and "
             "restart from what they wrote", False, _no_build, _crash_points),
    Scenario("slow-primary", "the primary's links are 600-900 ms slow: it is replaced",
             False, _no_build, _slow_primary),
    Scenario("commit-loss", "COMMITs reach one backup only; it crashes; the rest change view",
             False,
             _commit_loss_build, _commit_loss),
    Scenario("reconfiguration", "a replica joins (n -> n+1) by state transfer, then leaves",
             False, _reconfig_build, _reconfig_config),
    Scenario("key-rotation", "validators' keys change at an epoch boundary; Byzantine ones "
             "keep signing with their old keys after the switch and are refused", True,
             _key_rotation_build, _key_rotation_config),
    Scenario("big-batches", "batches at the size limits and a primary cut off: bounded view "
             "change, batches fetched", False, _big_batches_build, _big_batches),
    Scenario("twins", "one validator runs twice (same key, honest code) in shifting "
             "partitions", True, _twins_build, _twins),
    Scenario("equivocating-primary", "primary sends different batches for one sequence", True,
             _equivocating),
    Scenario("forging-primary", "primary alters or splits client envelopes in signed "
             "proposals", True, _forging),
    Scenario("silent-primary", "primary sends nothing: view change", True, _silent),
    Scenario("conflicting-votes", "replicas send conflicting PREPAREs and COMMITs", True,
             _conflicting),
    Scenario("forged-signatures", "bad signatures, impersonation and garbage bytes", True,
             _forged),
    Scenario("non-member", "a node outside the consortium floods signed messages", False,
             _non_member_build, _non_member),
    Scenario("replay-old-view", "primary goes silent, then replays old-view messages", True,
             _replay),
    Scenario("censoring-primary", "primary never proposes one client's requests", True,
             _censoring),
    Scenario("lying-status", "members claim a stable checkpoint of 2^62 while a replica "
             "catches up, then go silent", True, _lying_status, _lagging_config),
    Scenario("swarm", "random network faults, crashes and Byzantine behaviours together", True,
             _swarm, _swarm_config),
]}


def build(name: str, seed: int, validators: int, byzantine: int, *, trace: bool = False,
          replica_factory: type[Replica] = Replica,
          driver_factory: type[Driver] = Driver) -> Simulation:
    scenario = SCENARIOS[name]
    if byzantine > faults_tolerated(validators):
        raise ValueError(f"{byzantine} Byzantine replicas exceed f = "
                         f"{faults_tolerated(validators)} for n = {validators}")
    rng = random.Random(int.from_bytes(derive_seed("scenario", name, seed)[:8], "big"))
    b = byzantine if scenario.byzantine else 0
    cfg = scenario.config(SimConfig(validators=validators), rng, b)
    sim = Simulation(seed, cfg, trace=trace, replica_factory=replica_factory,
                     driver_factory=driver_factory)
    scenario.build(sim, rng, b)
    sim.boot_all()
    return sim
