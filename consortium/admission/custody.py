"""Custody rules on EPCIS events: who possesses how much of what, replayed from history.

The admission service judges a provenance record against the earlier records that share an
identifier with it (a lot, an item, the pallet it was packed on). It replays them in ledger
order into a book of holdings, then applies the new event with checks. One code path does both
(`_Book.apply`, with or without a findings list), so the replay and the judgement cannot
disagree about what an event means.

The model (EPCIS semantics):
- **Possession decides custody.** Quantities are kept per identifier and per possessor. A
  party is a member (resolved through the GS1 directory: PGLN, SGLN or company prefix) or,
  for non-members, its identifier; the submitter is a member org.
- **Who acts.** The sender of a shipment is the source possessing party, else the source
  owning party, else the submitter; the receiver is the destination possessing party, else
  the destination owning party (a shipment without destination is open: any receipt matches
  it). A receipt arrives at the destination possessing/owning party, else the submitter.
  Whoever else reports a shipment is a carrier acting for the owner: normal (info finding).
  Destroying, dispensing, packing and transforming are done by the source possessing party,
  else the submitter.
- **Quantities per holder.** A class (lot, GTIN) carries quantities; an instance (serialised
  item, SSCC) is one unit. A shipment takes its quantity (all the sender holds when the event
  gives none) from the sender into transit; a receipt takes it from the matching shipment in
  transit (same quantity preferred, else the first with enough). So a lot of 50,000 shipped
  as 20,000 + 20,000 + 10,000, or 400 then 300 of 1,200 received, is normal, while shipping
  more than one holds is not.
- **Ownership** is recorded (owning parties of commissioning and receipts) and gives the right
  to recall along with being the originator.
- **Aggregation.** Packing moves the children's quantities from the packer into the parent
  (an SSCC); they travel with it and come out at whoever unpacks it, who must hold it.
- **Recalls** (disposition recalled) stop the lot: afterwards only observation (inspection,
  holding), destruction, packing and returns (a shipment to the originator or a recalling
  party, or one that itself says disposition recalled, e.g. to a destruction contractor) are
  normal. **Destruction** without a quantity ends the whole lot; with one, what remains
  stays. After a lot is destroyed or wholly dispensed, any event on it is flagged.

Severities, and why. Certain (always a vote, no model can clear it): what the ledger's own
history contradicts: shipping more than one holds or something one never held, a receipt
with no shipment in transit to the receiver (a lot appearing where its possessor never sent
it), the wrong receiver or sender, a receipt of more than was shipped or before it was
shipped, quantities that exceed what exists, a second commissioning of the same lot or item,
events on destroyed or recalled lots, a future date. Suspect (a vote with the rules alone; a
model weighs it): what is unusual but has innocent explanations: a lot first seen mid-chain,
destruction or a recall by someone the history does not show holding or owning it, dates out
of order (late capture), unknown sites and parties. Normal, and so without any finding
(a trace lists every finding as a flag): a carrier reporting a shipment for the owner, a
shipment without destination, a short receipt (breakage), goods first seen arriving from a
party outside the consortium (or from nobody named).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from consortium.admission.model import Finding, ProvenanceEvent, RecordContext, Severity
from consortium.formats.directory import Gs1Directory
from consortium.formats.epcis import Event, EventType, format_time_ms
from consortium.formats.errors import FormatError
from consortium.formats.private_ids import PRIVATE_PREFIX, parse_private

CERTAIN, SUSPECT = Severity.CERTAIN, Severity.SUSPECT
CLOCK_SKEW_MS = 5 * 60 * 1000
"""Event times this far ahead of the service's clock are still accepted (clock drift)."""

_INSIDE = "\x00inside:"
"""Holder key of goods packed inside a parent: the prefix cannot start a real identifier."""
_OBSERVING_STEPS = frozenset({"inspecting", "holding", "storing", "stock_taking",
                              "cycle_counting", "sampling", "sensor_reporting", "other"})

Qty = int | float | None
"""A quantity; None means unknown (an event that gave none)."""


@dataclass
class _Shipment:
    sender: str
    receiver: str | None
    quantity: Qty
    time_ms: int


@dataclass
class _State:
    """What the replay knows about one identifier."""

    origin: str | None = None
    held: dict[str, Qty] = field(default_factory=dict)
    ever_held: set[str] = field(default_factory=set)
    pending: list[_Shipment] = field(default_factory=list)
    owners: set[str] = field(default_factory=set)
    recallers: set[str] = field(default_factory=set)
    status: str = "active"
    contents: dict[str, Qty] = field(default_factory=dict)
    """For a parent (SSCC): child identifier -> quantity packed in it."""
    events: int = 0

    def total(self) -> Qty:
        """All that exists: held, packed or in transit (None when any part is unknown)."""
        parts = [*self.held.values(), *(s.quantity for s in self.pending)]
        if any(p is None for p in parts):
            return None
        return sum(p for p in parts if p is not None)

    def give(self, holder: str, qty: Qty) -> None:
        before = self.held.get(holder, 0)
        self.held[holder] = None if before is None or qty is None else before + qty
        self.ever_held.add(holder)

    def take(self, holder: str, qty: Qty) -> Qty:
        """Remove qty (all when None) from holder; returns what was taken."""
        have = self.held.get(holder, 0)
        taken = have if qty is None else qty
        if have is None or taken is None:
            rest: Qty = None if qty is not None else 0
        else:
            rest = max(have - taken, 0)
        if rest == 0:
            self.held.pop(holder, None)
        else:
            self.held[holder] = rest
        return taken


def _n(q: Qty) -> str:
    if q is None:
        return "an unknown quantity"
    return str(int(q)) if float(q).is_integer() else str(q)


def _kind(e: Event) -> str:
    if e.type is EventType.AGGREGATION:
        return {"ADD": "pack", "DELETE": "unpack"}.get(e.action or "", "observe")
    if e.type is EventType.TRANSFORMATION:
        return "transform"
    step, disp = e.biz_step, e.disposition
    if step == "commissioning" or e.action == "ADD":
        return "create"
    if e.action == "DELETE" or step in ("destroying", "decommissioning") \
            or disp in ("destroyed", "disposed"):
        return "destroy"
    if step in ("dispensing", "retail_selling") or disp in ("dispensed", "retail_sold"):
        return "consume"
    if step == "shipping":
        return "ship"
    if step in ("receiving", "accepting"):
        return "receive"
    return "observe"


def _is_recall(e: Event) -> bool:
    return e.disposition == "recalled" or "recalled" in e.persistent_disposition_set


def _objects(e: Event) -> list[tuple[str, Qty]]:
    """The moving objects of an ObjectEvent or the children of an AggregationEvent."""
    ids = e.epc_list if e.type is EventType.OBJECT else e.child_epcs
    quantities = e.quantity_list if e.type is EventType.OBJECT else e.child_quantity_list
    return [*((x, 1) for x in ids), *((q.epc_class, q.quantity) for q in quantities)]


class _Book:
    def __init__(self, directory: Gs1Directory) -> None:
        self.directory = directory
        self.states: dict[str, _State] = {}
        self.last_time_ms: int | None = None

    def key(self, uri: str | None) -> str | None:
        """A party as a holder key: the member's org, a private org's name, else the URI."""
        if uri is None:
            return None
        org = self.directory.org_of(uri)
        if org is not None:
            return org
        if uri.startswith(PRIVATE_PREFIX):
            try:
                return parse_private(uri)[1]
            except FormatError:
                return uri
        return uri

    def state(self, ident: str) -> _State:
        return self.states.setdefault(ident, _State())

    def apply(self, pe: ProvenanceEvent, f: list[Finding] | None) -> None:
        """Apply one event; with a findings list, also judge it (the new record)."""
        e = pe.event
        assert e is not None
        kind = _kind(e)
        submitter = pe.submitter_org
        actor = self.key(e.party("source", "possessing_party")) or submitter
        if f is not None:
            self._status_checks(e, kind, f)
        if kind == "create":
            holder = self.key(e.party("destination", "possessing_party")
                              or e.party("destination", "owning_party")) or submitter
            self._create(_objects(e), holder, f)
        elif kind == "ship":
            self._ship(e, submitter, f)
        elif kind == "receive":
            self._receive(e, submitter, f)
        elif kind in ("destroy", "consume"):
            self._remove(e, kind, actor, f)
        elif kind == "pack":
            self._pack(e, actor, f)
        elif kind == "unpack":
            self._unpack(e, actor, f)
        elif kind == "transform":
            self._remove(e, "transform", actor, f)
            outputs = [*((x, 1) for x in e.output_epc_list),
                       *((q.epc_class, q.quantity) for q in e.output_quantity_list)]
            self._create(outputs, actor, f)
        else:
            self._observe(e, f)
        if _is_recall(e):
            self._recall(e, submitter, f)
        owner = self.key(e.party("destination", "owning_party"))
        for ident in e.identifiers():
            st = self.state(ident)
            if owner is not None and kind in ("create", "receive"):
                st.owners.add(owner)
            st.events += 1
        self.last_time_ms = e.event_time_ms if self.last_time_ms is None else max(
            self.last_time_ms, e.event_time_ms)

    # --- checks and state changes by kind ---------------------------------------------------

    def _status_checks(self, e: Event, kind: str, f: list[Finding]) -> None:
        for ident in e.identifiers():
            st = self.states.get(ident)
            if st is None:
                continue
            if st.status in ("destroyed", "dispensed"):
                f.append(Finding("lot.destroyed", CERTAIN,
                                 f"{ident} was {st.status}: no event can follow"))
                return
            if st.status == "recalled" and not self._allowed_after_recall(e, kind, st):
                f.append(Finding("lot.recalled", CERTAIN,
                                 f"{e.biz_step} of recalled {ident}: after a recall only "
                                 "inspection, holding, destruction or a return to "
                                 f"{self._names(st.recallers | {st.origin or '?'})}"))
                return

    def _allowed_after_recall(self, e: Event, kind: str, st: _State) -> bool:
        if kind in ("destroy", "pack", "unpack") or _is_recall(e):
            return True
        if kind == "observe":
            return e.biz_step in _OBSERVING_STEPS or e.type is EventType.AGGREGATION
        returns_to = st.recallers | ({st.origin} if st.origin else set())
        if kind == "ship":
            receiver = self.key(e.party("destination", "possessing_party")
                                or e.party("destination", "owning_party"))
            return receiver in returns_to
        if kind == "receive":
            receiver = self.key(e.party("destination", "possessing_party")
                                or e.party("destination", "owning_party"))
            return (receiver in returns_to) or any(
                p.receiver in returns_to for p in st.pending)
        return False

    def _create(self, objects: Iterable[tuple[str, Qty]], holder: str,
                f: list[Finding] | None) -> None:
        for ident, qty in objects:
            st = self.state(ident)
            if f is not None and st.events and not ident.startswith("urn:epc:idpat:"):
                f.append(Finding("lot.manufactured-twice", CERTAIN,
                                 f"{ident} already has a history: commissioned again"))
            st.origin = st.origin or holder
            st.give(holder, qty)

    def _holding_checks(self, ident: str, st: _State, who: str, qty: Qty, verb: str,
                        rule: str, never_rule: str, f: list[Finding]) -> None:
        """Does `who` hold `qty` of `ident`? (first sighting: suspect, no origin)."""
        if not st.events:
            f.append(Finding("custody.no-origin", SUSPECT,
                             f"{ident} was never commissioned or received on the ledger "
                             "before this event"))
            return
        have = st.held.get(who, 0)
        if have == 0:
            if who not in st.ever_held:
                f.append(Finding(never_rule, CERTAIN, f"{who} {verb} {ident} but never held it"))
            else:
                f.append(Finding(rule, CERTAIN, f"{who} {verb} {ident} but no longer holds it "
                                                f"({self._holders(st)})"))
        elif qty is not None and have is not None and qty > have:
            f.append(Finding(rule, CERTAIN, f"{who} {verb} {_n(qty)} of {ident} but holds "
                                            f"{_n(have)}"))
        total = st.total()
        if qty is not None and total is not None and qty > total:
            f.append(Finding("quantity.grew", CERTAIN,
                             f"{_n(qty)} of {ident}: more than the {_n(total)} that exist"))

    def _ship(self, e: Event, submitter: str, f: list[Finding] | None) -> None:
        sender = self.key(e.party("source", "possessing_party")
                          or e.party("source", "owning_party")) or submitter
        receiver = self.key(e.party("destination", "possessing_party")
                            or e.party("destination", "owning_party"))
        if f is not None and receiver == sender:
            f.append(Finding("custody.self-shipment", SUSPECT, f"{sender} ships to itself"))
        for ident, qty in _objects(e):
            st = self.state(ident)
            if f is not None:
                self._holding_checks(ident, st, sender, qty, "ships",
                                     "custody.shipper-not-holder", "custody.shipper-never-held", f)
            taken = st.take(sender, qty)
            st.pending.append(_Shipment(sender, receiver, taken, e.event_time_ms))

    def _receive(self, e: Event, submitter: str, f: list[Finding] | None) -> None:
        receiver = self.key(e.party("destination", "possessing_party")
                            or e.party("destination", "owning_party")) or submitter
        sender = self.key(e.party("source", "possessing_party")
                          or e.party("source", "owning_party"))
        if f is not None and receiver != submitter:
            f.append(Finding("custody.receiver-not-submitter", SUSPECT,
                             f"{submitter} reports a receipt by {receiver}"))
        for ident, qty in _objects(e):
            st = self.state(ident)
            match = self._match(st, receiver, sender, qty)
            if f is not None:
                self._receipt_checks(e, ident, st, receiver, sender, qty, match, f)
            if match is not None:
                st.pending.remove(match)
                st.give(receiver, qty if qty is not None else match.quantity)
            else:
                if sender is not None and st.held.get(sender):
                    st.take(sender, qty)
                st.give(receiver, qty)

    def _match(self, st: _State, receiver: str, sender: str | None,
               qty: Qty) -> _Shipment | None:
        """The shipment in transit this receipt closes: to the receiver (or open, or to the
        named sender, a carrier passing it on), from the named sender when given; the same
        quantity preferred, else the first with enough."""
        to_me = [p for p in st.pending if p.receiver in (receiver, None)
                 or (sender is not None and p.receiver == sender)]
        if sender is not None:
            to_me = [p for p in to_me if sender in (p.sender, p.receiver)] or []
        if not to_me:
            return None
        for p in to_me:
            if p.quantity == qty:
                return p
        for p in to_me:
            if qty is None or p.quantity is None or p.quantity >= qty:
                return p
        return to_me[0]

    def _receipt_checks(self, e: Event, ident: str, st: _State, receiver: str,
                        sender: str | None, qty: Qty, match: _Shipment | None,
                        f: list[Finding]) -> None:
        if not st.events:
            if sender is not None and self.directory.member(sender) is not None:
                f.append(Finding("custody.no-origin", SUSPECT,
                                 f"{ident} was never commissioned or shipped on the ledger"))
            return
        if match is None:
            towards = sorted({p.receiver or "anyone" for p in st.pending})
            if not towards:
                f.append(Finding("custody.received-without-shipment", CERTAIN,
                                 f"{receiver} received {ident}, but no shipment of it is in "
                                 "transit"))
            elif sender is not None and not any(p.receiver in (receiver, None, sender)
                                                for p in st.pending):
                f.append(Finding("custody.wrong-receiver", CERTAIN,
                                 f"the shipment in transit goes to {', '.join(towards)}, not "
                                 f"{receiver}"))
            elif sender is not None:
                senders = sorted({p.sender for p in st.pending})
                f.append(Finding("custody.wrong-sender", CERTAIN,
                                 f"received from {sender}, but {', '.join(senders)} shipped "
                                 "it"))
            else:
                f.append(Finding("custody.wrong-receiver", CERTAIN,
                                 f"the shipment in transit goes to {', '.join(towards)}, not "
                                 f"{receiver}"))
            total = st.total()
            if qty is not None and total is not None and qty > total:
                f.append(Finding("quantity.grew", CERTAIN,
                                 f"{receiver} receives {_n(qty)} of {ident}: more than the "
                                 f"{_n(total)} that exist"))
            return
        if qty is not None and match.quantity is not None and qty > match.quantity:
            f.append(Finding("quantity.grew", CERTAIN,
                             f"{receiver} receives {_n(qty)} of {ident} but "
                             f"{_n(match.quantity)} were shipped"))
        if e.event_time_ms < match.time_ms:
            f.append(Finding("time.before-shipment", CERTAIN,
                             f"received at {format_time_ms(e.event_time_ms)}, before it was "
                             f"shipped ({format_time_ms(match.time_ms)})"))

    def _remove(self, e: Event, kind: str, actor: str, f: list[Finding] | None) -> None:
        if kind == "transform":
            objects = [*((x, 1) for x in e.input_epc_list),
                       *((q.epc_class, q.quantity) for q in e.input_quantity_list)]
        else:
            objects = _objects(e)
        verb = {"destroy": "destroys", "consume": "dispenses or sells",
                "transform": "transforms"}[kind]
        for ident, qty in objects:
            st = self.state(ident)
            if f is not None:
                if not st.events:
                    f.append(Finding("custody.no-origin", SUSPECT,
                                     f"{ident} was never commissioned or received on the "
                                     "ledger before this event"))
                elif not st.held.get(actor):
                    rule, sev = ("custody.input-not-held", CERTAIN) if kind == "transform" \
                        else ("custody.not-holder", SUSPECT)
                    f.append(Finding(rule, sev, f"{actor} {verb} {ident} but does not hold it "
                                                f"({self._holders(st)})"))
                else:
                    have = st.held[actor]
                    if qty is not None and have is not None and qty > have:
                        f.append(Finding("quantity.exceeds-holding", CERTAIN,
                                         f"{actor} {verb} {_n(qty)} of {ident} but holds "
                                         f"{_n(have)}"))
            if kind == "destroy" and qty is None:
                st.held.clear()
                st.pending.clear()
            else:
                st.take(actor, qty)
            if kind != "transform" and not st.held and not st.pending:
                st.status = "destroyed" if kind == "destroy" else "dispensed"

    def _pack(self, e: Event, packer: str, f: list[Finding] | None) -> None:
        parent = e.parent_id
        if parent is None:
            return
        pst = self.state(parent)
        if not pst.held and not pst.pending:
            pst.origin = pst.origin or packer
            pst.give(packer, 1)
        elif f is not None and not pst.held.get(packer):
            f.append(Finding("custody.packer-not-holder", CERTAIN,
                             f"{packer} packs into {parent} but does not hold it"))
        for ident, qty in _objects(e):
            st = self.state(ident)
            if f is not None:
                self._holding_checks(ident, st, packer, qty, "packs",
                                     "custody.packer-not-holder", "custody.packer-not-holder", f)
            taken = st.take(packer, qty)
            st.give(_INSIDE + parent, taken)
            before = pst.contents.get(ident, 0)
            pst.contents[ident] = None if before is None or taken is None else before + taken

    def _unpack(self, e: Event, unpacker: str, f: list[Finding] | None) -> None:
        parent = e.parent_id
        if parent is None:
            return
        pst = self.state(parent)
        if f is not None and pst.events and not pst.held.get(unpacker):
            f.append(Finding("custody.unpacker-not-holder", CERTAIN,
                             f"{unpacker} unpacks {parent} but does not hold it "
                             f"({self._holders(pst)})"))
        listed = _objects(e) or list(pst.contents.items())
        for ident, qty in listed:
            st = self.state(ident)
            taken = st.take(_INSIDE + parent, qty)
            st.give(unpacker, taken)
            pst.contents.pop(ident, None)

    def _observe(self, e: Event, f: list[Finding] | None) -> None:
        if f is None:
            return
        for ident, qty in _objects(e):
            st = self.states.get(ident)
            if st is None or not st.events:
                f.append(Finding("custody.no-origin", SUSPECT,
                                 f"{ident} was never commissioned or received on the ledger "
                                 "before this event"))
                continue
            total = st.total()
            if qty is not None and total is not None and qty > total:
                f.append(Finding("quantity.grew", CERTAIN,
                                 f"{_n(qty)} of {ident} observed, more than the {_n(total)} "
                                 "that exist"))

    def _recall(self, e: Event, submitter: str, f: list[Finding] | None) -> None:
        for ident in e.identifiers():
            st = self.state(ident)
            if f is not None and st.events and submitter != st.origin \
                    and submitter not in st.owners:
                f.append(Finding("custody.recall-by-other", SUSPECT,
                                 f"{submitter} recalls {ident}, which "
                                 f"{st.origin or 'someone else'} made"))
            if st.status == "active":
                st.status = "recalled"
            st.recallers.add(submitter)

    def _holders(self, st: _State) -> str:
        if not st.held:
            return "nobody holds it now" if not st.pending else "it is in transit"
        return "held by " + ", ".join(
            f"{_n(q)} {'packed in ' + h[len(_INSIDE):] if h.startswith(_INSIDE) else h}"
            for h, q in sorted(st.held.items()))

    def _names(self, names: set[str]) -> str:
        return " or ".join(sorted(n for n in names if n))


def check_custody(e: ProvenanceEvent, ctx: RecordContext) -> list[Finding]:
    """Findings of the custody model on the new event (history replayed first)."""
    assert e.event is not None
    f: list[Finding] = []
    book = _Book(ctx.directory)
    for h in ctx.history:
        if h.event is not None:
            book.apply(h, None)
    ev = e.event
    if ctx.now_ms and ev.event_time_ms > ctx.now_ms + CLOCK_SKEW_MS:
        f.append(Finding("time.future", CERTAIN,
                         f"eventTime {format_time_ms(ev.event_time_ms)} is in the future"))
    if book.last_time_ms is not None and ev.event_time_ms < book.last_time_ms:
        f.append(Finding("time.out-of-order", SUSPECT,
                         "dated before an earlier event of the same goods (late capture, or "
                         "a date that cannot be right)"))
    book.apply(e, f)
    return f
