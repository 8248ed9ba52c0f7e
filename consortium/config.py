"""Typed configuration: the genesis file every member shares, and each validator's own config.

Both are JSON files. Loading validates everything and raises `ConfigError` with a message that
names the file and the field, so that a typo never surfaces as a traceback deep in a validator.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.formats.directory import Gs1Directory, MemberGs1
from consortium.formats.errors import FormatError
from consortium.ledger.blocks import AGE_MS_MAX_DEFAULT, FUTURE_MS_MAX_DEFAULT, Rules
from consortium.ledger.membership import JOIN_PENDING_TTL_MS
from consortium.ledger.membership import validator_client_id as validator_client_id
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.messages import CONTROL_CHARACTERS
from consortium.pbft.params import ProtocolParams

LEDGER_FORMAT = 2
"""The ledger format this release writes and reads (2: envelopes of items, header-only
proposals, certified block time); a genesis of another format is refused, never converted."""


def _gs1(o: Mapping[str, Any], where: str) -> MemberGs1 | None:
    raw = o.get("gs1")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: organisation {o.get('id')}: gs1 must be an object")
    try:
        return MemberGs1.from_dict({"org": str(o["id"]), **raw})
    except FormatError as exc:
        raise ConfigError(f"{where}: organisation {o.get('id')}: gs1: {exc}") from exc


class ConfigError(ValueError):
    """A configuration or genesis file is missing, malformed or inconsistent."""


def _hex(value: Any, where: str, length: int) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} must be hex") from exc
    if len(raw) != length:
        raise ConfigError(f"{where} must be {length} bytes")
    return raw


@dataclass(frozen=True, slots=True)
class ValidatorInfo:
    replica_id: int
    org: str
    public_key: bytes
    peer_address: str
    client_address: str


@dataclass(frozen=True, slots=True)
class OrgInfo:
    org_id: str
    name: str
    encryption_key: bytes
    """X25519 public key: record keys are wrapped for it."""
    gs1: MemberGs1 | None = None
    """The member's GS1 identity (company prefixes, PGLNs, SGLNs), so EPCIS parties and
    locations resolve to members; None: it registered none."""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    client_id: str
    org: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class DataPolicy:
    """Consortium-wide rules for record data, fixed in genesis (every validator applies them
    alike)."""

    erasure_deletes_ciphertext: bool = True
    """An erasure deletes the record's ciphertext as well as every wrapped key."""
    access_ttl_ms: int = 300_000
    """How long a committed Access lets its org fetch a patient record's key."""
    read_clock_skew_ms: int = 300_000
    """How far a signed read request's timestamp may be from the validator's clock."""
    submission_future_ms_max: int = FUTURE_MS_MAX_DEFAULT
    """How far after a block's proposal time (the primary's clock) a record's signed
    submission time may be: a client's clock cannot stamp records in the future."""
    submission_age_ms_max: int = AGE_MS_MAX_DEFAULT
    """How far before it (records prepared offline and sent later)."""
    join_pending_ttl_ms: int = JOIN_PENDING_TTL_MS
    """How long, in block time, a join request waits for the members' decision before it
    expires and frees its slot, organisation id, validator id and keys."""

    def __post_init__(self) -> None:
        if self.access_ttl_ms < 1_000 or self.read_clock_skew_ms < 1_000:
            raise ValueError("access_ttl_ms and read_clock_skew_ms are at least 1000")
        if self.submission_future_ms_max < 1_000 or self.submission_age_ms_max < 60_000:
            raise ValueError("submission_future_ms_max is at least 1000 and "
                             "submission_age_ms_max at least 60000")
        if self.join_pending_ttl_ms < 60_000:
            raise ValueError("join_pending_ttl_ms is at least 60000 (members need time to "
                             "vote)")


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_id: str
    protocol: ProtocolParams
    validators: tuple[ValidatorInfo, ...]
    orgs: tuple[OrgInfo, ...]
    clients: tuple[ClientInfo, ...]
    policy: DataPolicy = DataPolicy()
    admission_client: str | None = None
    """The client id of the admission service (its key and pseudo-organisation are in
    `clients` and `orgs`): the only signer of verdicts. None: records are accepted unscreened."""

    @property
    def chain_id_bytes(self) -> bytes:
        return self.chain_id.encode()

    def rules(self) -> Rules:
        """The ledger rules execution applies (from the data policy)."""
        return Rules(self.policy.submission_future_ms_max, self.policy.submission_age_ms_max,
                     self.policy.join_pending_ttl_ms)

    def epoch0(self) -> EpochConfig:
        return EpochConfig(0, 0, tuple(Member(v.replica_id, v.public_key)
                                       for v in sorted(self.validators,
                                                       key=lambda v: v.replica_id)))

    def validator(self, replica_id: int) -> ValidatorInfo:
        for v in self.validators:
            if v.replica_id == replica_id:
                return v
        raise ConfigError(f"validator {replica_id} is not in the genesis file")

    def org(self, org_id: str) -> OrgInfo:
        for o in self.orgs:
            if o.org_id == org_id:
                return o
        raise ConfigError(f"organisation {org_id!r} is not in the genesis file")

    def client_keys(self) -> dict[str, bytes]:
        """Every request signer: the clients, and each validator as `validator-<id>` (its
        validator key signs its governance votes; requests use their own signature domain)."""
        keys = {c.client_id: c.public_key for c in self.clients}
        keys.update({validator_client_id(v.replica_id): v.public_key for v in self.validators})
        return keys

    def client_orgs(self) -> dict[str, str]:
        orgs = {c.client_id: c.org for c in self.clients}
        orgs.update({validator_client_id(v.replica_id): v.org for v in self.validators})
        return orgs

    @property
    def member_orgs(self) -> tuple[OrgInfo, ...]:
        """The member organisations (the admission service's pseudo-organisation is not one)."""
        return tuple(o for o in self.orgs if o.org_id != self.admission_org)

    @property
    def admission_org(self) -> str | None:
        if self.admission_client is None:
            return None
        return self.client_orgs().get(self.admission_client)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "chain_id": self.chain_id,
            "protocol": dataclasses.asdict(self.protocol),
            "validators": [{"id": v.replica_id, "org": v.org, "public_key": v.public_key.hex(),
                            "peer_address": v.peer_address,
                            "client_address": v.client_address} for v in self.validators],
            "organisations": [{"id": o.org_id, "name": o.name,
                               "encryption_key": o.encryption_key.hex(),
                               **({"gs1": {k: v for k, v in o.gs1.to_dict().items()
                                           if k != "org"}} if o.gs1 else {})}
                              for o in self.orgs],
            "clients": [{"id": c.client_id, "org": c.org, "public_key": c.public_key.hex()}
                        for c in self.clients],
            "policy": dataclasses.asdict(self.policy),
            **({"admission_client": self.admission_client} if self.admission_client else {}),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "genesis") -> Genesis:
        if isinstance(data, dict) and data.get("format", 1) != LEDGER_FORMAT:
            raise ConfigError(f"{where}: a genesis of ledger format {data.get('format', 1)}; "
                              f"this release runs format {LEDGER_FORMAT}: create a new "
                              "consortium (consortium init) or use the release that made it")
        try:
            protocol = ProtocolParams(**data.get("protocol", {}))
            validators = tuple(ValidatorInfo(int(v["id"]), str(v["org"]),
                                             _hex(v["public_key"], f"{where}: validator key", 32),
                                             str(v["peer_address"]), str(v["client_address"]))
                               for v in data["validators"])
            orgs = tuple(OrgInfo(str(o["id"]), str(o.get("name", o["id"])),
                                 _hex(o["encryption_key"], f"{where}: org key", 32),
                                 _gs1(o, where))
                         for o in data["organisations"])
            clients = tuple(ClientInfo(str(c["id"]), str(c["org"]),
                                       _hex(c["public_key"], f"{where}: client key", 32))
                            for c in data["clients"])
            policy = DataPolicy(**data.get("policy", {}))
            admission = data.get("admission_client")
            genesis = cls(str(data["chain_id"]), protocol, validators, orgs, clients, policy,
                          None if admission is None else str(admission))
        except ConfigError:
            raise
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{where}: missing or malformed field: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        org_ids = {o.org_id for o in genesis.orgs}
        for org_id in org_ids:
            if CONTROL_CHARACTERS.search(org_id):
                raise ConfigError(f"{where}: organisation {org_id!r} contains a control character")
        for v in genesis.validators:
            if v.org not in org_ids:
                raise ConfigError(f"{where}: validator {v.replica_id} names unknown org {v.org}")
        for c in genesis.clients:
            if c.org not in org_ids:
                raise ConfigError(f"{where}: client {c.client_id} names unknown org {c.org}")
            if CONTROL_CHARACTERS.search(c.client_id):
                raise ConfigError(f"{where}: client {c.client_id!r} contains a control "
                                  "character")
            if c.client_id.startswith("validator-"):
                raise ConfigError(f"{where}: client ids validator-* are reserved for validators")
        if genesis.admission_client is not None and genesis.admission_client not in {
                c.client_id for c in genesis.clients}:
            raise ConfigError(f"{where}: admission_client {genesis.admission_client!r} is not "
                              "a client")
        try:
            genesis.epoch0()
            genesis.gs1_directory()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        return genesis

    def gs1_directory(self, admitted: Iterable[MemberGs1] = ()) -> Gs1Directory:
        """The members' GS1 identities: genesis', and those of organisations admitted since
        (`admitted`, from their join requests). Raises FormatError when two claim one
        prefix or GLN."""
        return Gs1Directory([*(o.gs1 for o in self.orgs if o.gs1 is not None), *admitted])

    @classmethod
    def load(cls, path: Path) -> Genesis:
        return cls.from_json(_read_json(path), str(path))


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class ValidatorConfig:
    """One validator process. Paths are resolved relative to the config file."""

    replica_id: int
    genesis: Path
    signing_key: Path
    tls: TlsFiles
    listen_peer: str
    listen_client: str
    listen_metrics: str
    dsn: str
    log_file: Path | None = None
    listen_health: str | None = None
    """Optional plaintext port serving only gRPC health (for the kubelet's native `grpc:`
    probes, which cannot speak TLS). It reveals a serving status and nothing else."""
    submit_wait_ms_max: int = 30_000
    drain_ms: int = 5_000
    """How long a SIGTERM waits for in-flight requests before closing."""
    org: str | None = None
    """The organisation of a validator admitted after genesis (genesis names the others')."""

    @classmethod
    def load(cls, path: Path) -> ValidatorConfig:
        data = _read_json(path)
        base = path.parent
        try:
            tls = data["tls"]
            return cls(
                replica_id=int(data["replica_id"]),
                genesis=(base / data["genesis"]).resolve(),
                signing_key=(base / data["signing_key"]).resolve(),
                tls=TlsFiles((base / tls["ca_cert"]).resolve(), (base / tls["cert"]).resolve(),
                             (base / tls["key"]).resolve()),
                listen_peer=str(data["listen_peer"]), listen_client=str(data["listen_client"]),
                listen_metrics=str(data["listen_metrics"]), dsn=str(data["dsn"]),
                log_file=(base / data["log_file"]).resolve() if data.get("log_file") else None,
                listen_health=str(data["listen_health"]) if data.get("listen_health") else None,
                submit_wait_ms_max=int(data.get("submit_wait_ms_max", 30_000)),
                drain_ms=int(data.get("drain_ms", 5_000)),
                org=str(data["org"]) if data.get("org") else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: missing or malformed field: {exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
