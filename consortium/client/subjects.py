"""A subject's history as the audit tool shows it: a product's chain of custody (`trace`) and a
patient's records with everything done to them (`patient_history`), every entry proven.

Each entry comes from `ListSubject` (all pages) with its receipt, checked with
`verify.verify_receipt` against the validator set of its block's epoch (the epoch history is
verified from genesis first): item -> envelope -> block -> certificate. What an entry shows
(the record's public fields, the transaction) is decoded from the proven item itself, never
taken from the validator's word; an erased record's item is a view that keeps its digest, so
it still verifies.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from consortium.admission.model import ProvenanceEvent, RecordContext
from consortium.admission.rules import check_provenance
from consortium.client.audit import public_header, view_of
from consortium.client.core import SubmitError
from consortium.formats import gs1
from consortium.formats.directory import Gs1Directory
from consortium.formats.epcis_model import Event
from consortium.formats.private_ids import PrivateRole, private_uri
from consortium.ledger.records import PublicRecord, decode_public
from consortium.ledger.transactions import Access, Erase, InvalidTransaction, Tx, TxType, decode_tx
from consortium.verify import verify_receipt
from consortium.wire import WireError, receipt_from_proto

if TYPE_CHECKING:
    from consortium.client.sdk import ConsortiumClient

VERIFIED = "verified"


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SubjectEntry:
    """One entry of a subject's history: a record, or a transaction that acted on one."""

    record_id: str
    height: int
    request: int
    """The request's (envelope's) index in its block."""
    item: int
    """The item's index in its request."""
    status: str
    reason: str
    proof: str
    """"verified", or why the receipt does not prove the entry."""
    client_id: str
    org: str | None
    """The client's organisation (genesis clients; None for one the genesis file does not
    name)."""
    record: PublicRecord | None = None
    action: Tx | None = None
    problem: str = ""
    """Why the item is neither a record nor a transaction (it still was proven)."""

    @property
    def kind(self) -> str:
        """record | grant | revoke | erase | access | verdict | reviewvote | ... | invalid"""
        if self.record is not None:
            return "record"
        if self.action is not None:
            return type(self.action).__name__.lower()
        return "invalid"

    @property
    def target(self) -> str:
        return "" if self.action is None else str(getattr(self.action, "record_id", ""))


def subject_entries(client: ConsortiumClient, kind: str,
                    subject: str) -> tuple[list[SubjectEntry], list[str]]:
    """A subject's entries in ledger order, each with its proof status, and the receipts that
    do not even decode (one line each). Raises SubmitError when no validator answers."""
    replies, address = client.list_subject(kind, subject)
    chain_id = client.core.chain_id
    org_of = client.core.genesis.client_orgs()
    entries: list[SubjectEntry] = []
    malformed: list[str] = []
    for n, e in enumerate(replies):
        try:
            r = receipt_from_proto(e.receipt, chain_id)
        except WireError as exc:
            malformed.append(f"entry {n} from {address}: malformed receipt: {exc}")
            continue
        config = client.core.epochs.get(r.header.epoch)
        proof = VERIFIED
        if config is None:
            try:  # a block of a later epoch: its history, verified from genesis
                client.refresh_epochs(address)
                config = client.core.epoch_config(r.header.epoch)
            except SubmitError as exc:
                proof = f"epoch {r.header.epoch}: {exc}"
        if config is not None:
            proof = verify_receipt(r, config, client.core.verifier) or VERIFIED
        fields: dict[str, Any] = {}
        seg0 = public_header(r.item)
        try:
            if seg0[:1] == bytes([TxType.RECORD]):
                fields["record"] = decode_public(seg0)
            else:
                fields["action"] = decode_tx(view_of(r.item).present())
        except InvalidTransaction as exc:
            fields["problem"] = str(exc)
        entries.append(SubjectEntry(r.record_id, r.height, r.request_proof.index,
                                    r.item_proof.index, r.status, r.reason, proof, r.client_id,
                                    org_of.get(r.client_id), **fields))
    return entries, malformed


@dataclass(frozen=True)
class Trace:
    product: str
    events: list[dict[str, Any]]
    malformed: list[str]
    epcis_events: list[tuple[Event, dict[str, Any]]] = field(default_factory=list)
    """Each event as EPCIS (a legacy record read as the ObjectEvent its metadata means), with
    its extension fields: consortium:height, consortium:proof, consortium:recordID."""

    @property
    def ok(self) -> bool:
        """Nothing flagged and every event proven."""
        return not self.malformed and all(not e["flags"] and e["proof"] == VERIFIED
                                          for e in self.events)

    def to_json(self) -> dict[str, Any]:
        return {"product": self.product, "events": self.events, "ok": self.ok,
                "malformed": self.malformed}


def product_subjects(product: str, directory: Gs1Directory) -> list[str]:
    """The subject ids a product given by a user is recorded under: a GS1 identifier in any
    form (EPC class or instance URN, GS1 Digital Link, element string) as its canonical EPC
    URN; a plain lot name both as given (legacy records) and as its private lot URI (records
    of the EPCIS shorthand). Raises FormatError for a malformed GS1 identifier."""
    if product.startswith(("urn:epc:", "(")) or gs1.looks_like_digital_link(product):
        return [gs1.parse_identifier(product, directory.prefix_length).urn]
    if "://" in product or product.startswith("urn:"):
        return [product]
    return [product, private_uri(PrivateRole.LOT, product)]


def trace(client: ConsortiumClient, product: str) -> Trace:
    """A product's recorded provenance events in ledger order, each with its proof status and
    the chain-of-custody findings of `admission.rules.check_provenance` against the events
    before it (received before shipped, custody gaps, events after a recall or destruction,
    quantities that grow...). An EPCIS record is read from its public event; a legacy one as
    the ObjectEvent its metadata means. Raises FormatError for a malformed GS1 `product`."""
    directory = client.aio.directory
    entries: list[SubjectEntry] = []
    malformed: list[str] = []
    for subject in product_subjects(product, directory):
        found, bad = subject_entries(client, "provenance", subject)
        entries.extend(found)
        malformed.extend(bad)
    entries.sort(key=lambda e: (e.height, e.request, e.item))
    history: list[ProvenanceEvent] = []
    rows = []
    exported: list[tuple[Event, dict[str, Any]]] = []
    for e in entries:
        p = e.record
        if p is None or e.status != "recorded":
            continue
        meta = dict(p.metadata)
        if p.document:
            event = ProvenanceEvent.from_public_json(e.record_id, p.submitter_org,
                                                     p.submitted_at_ms, p.document)
        else:
            event = ProvenanceEvent.from_metadata(e.record_id, p.subject_id, p.event_type,
                                                  p.submitter_org, p.submitted_at_ms, meta,
                                                  directory)
        findings = check_provenance(event, RecordContext(history=tuple(history),
                                                         directory=directory))
        history.append(event)
        ev = event.event
        row = {"height": e.height, "request": e.request, "item": e.item,
               "record_id": e.record_id, "time": iso(p.submitted_at_ms),
               "event": p.event_type, "submitter": p.submitter_org,
               "location": meta.get("location", ""), "from": meta.get("custodian_from", ""),
               "to": meta.get("custodian_to", ""), "quantity": meta.get("quantity", ""),
               "proof": e.proof, "flags": [f"{f.rule}: {f.message}" for f in findings]}
        if p.document and ev is not None:
            row.update(_epcis_columns(ev))
        rows.append(row)
        if ev is not None:
            exported.append((ev, {"consortium:height": e.height, "consortium:proof": e.proof,
                                  "consortium:recordID": e.record_id}))
    return Trace(product, rows, malformed, exported)


def _epcis_columns(ev: Event) -> dict[str, Any]:
    """The trace table's columns of an EPCIS event: time, bizStep, where, who, how much."""
    quantities = [q.quantity for q in (*ev.quantity_list, *ev.child_quantity_list,
                                       *ev.output_quantity_list) if q.quantity is not None]
    count = len(ev.epc_list) + len(ev.child_epcs) + len(ev.output_epc_list)
    total = sum(quantities) + count if quantities or count else ""
    return {"time": iso(ev.event_time_ms), "event": ev.biz_step or ev.type.value,
            "location": ev.biz_location or ev.read_point or "",
            "from": ev.party("source", "owning_party") or
            ev.party("source", "possessing_party") or "",
            "to": ev.party("destination", "owning_party") or
            ev.party("destination", "possessing_party") or "",
            "quantity": str(total), "disposition": ev.disposition or ""}


def patient_history(client: ConsortiumClient, patient: str) -> dict[str, Any]:
    """A patient's records and what happened to them: who was granted or revoked access, who
    read the keys (the access log on the ledger: every attempt, refused ones marked), the
    erasure (when, by whom, why); every item with its proof status."""
    entries, malformed = subject_entries(client, "patient", patient)
    records: dict[str, dict[str, Any]] = {}
    for e in entries:
        p = e.record
        if p is not None:
            records[e.record_id] = {
                "record_id": e.record_id, "height": e.height, "type": p.event_type,
                "submitter_org": p.submitter_org, "submitted_at": iso(p.submitted_at_ms),
                "submitted_at_ms": p.submitted_at_ms, "metadata": dict(p.metadata),
                "status": e.status, "proof": e.proof, "erased": None, "access_log": [],
                "readers_changes": []}
    for e in entries:
        rec = records.get(e.target)
        a = e.action
        if rec is None or a is None or e.status != "recorded":
            continue
        item = {"height": e.height, "by_org": e.org, "proof": e.proof}
        if isinstance(a, Access):
            rec["access_log"].append({**item, "at": iso(a.requested_at_ms),
                                      "at_ms": a.requested_at_ms, "client_id": e.client_id,
                                      "purpose": a.purpose, "granted": e.reason == ""})
        elif isinstance(a, Erase):
            rec["erased"] = {**item, "reason": a.reason}
        elif e.kind in ("grant", "revoke"):
            rec["readers_changes"].append({**item, "change": e.kind,
                                           "org": getattr(a, "org", "")})
    return {"patient": patient, "records": list(records.values()), "malformed": malformed}
