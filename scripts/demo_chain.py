"""Write the demo's supply chain as EPCIS 2.0 documents, one per submission, in ledger order.

Usage: demo_chain.py OUT_DIR  -> OUT_DIR/NN-ORG.jsonld files and OUT_DIR/plan.txt, whose
lines read "ORG FILE" in the order the demo submits them (each organisation reports what it
saw). The organisations' GS1 identities are those `consortium init` gives a local consortium:
org0 the manufacturer (company prefix 4012345), org1 the carrier (4013345), org2 the
distributor (4014345), org3 the pharmacy (4015345); party n.00000, site n.00001.0.

The chain (times relative to now, so nothing is in the future): the maker commissions two
lots (LOT-A1 x 500, LOT-B2 x 300); the carrier reports the shipments to the distributor on
the maker's behalf (source and destination owning parties: the maker and the distributor;
the reporter is the carrier); the distributor
receives both lots and inspects LOT-A1 (conformant); it ships 200 of LOT-A1 to the pharmacy,
which receives them; the maker recalls LOT-A1; the distributor returns the other 300 and the
maker receives them back; the pharmacy destroys its 200; LOT-B2 (not recalled) goes on to the
pharmacy. None of this raises a flag. The last file is the deliberately bad event: the maker
ships recalled LOT-A1 to the pharmacy (rule lot.recalled, certain: it goes to a vote).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
PREFIX = {"org0": "4012345", "org1": "4013345", "org2": "4014345", "org3": "4015345"}
MAKER, CARRIER, DIST, PHARMACY = "org0", "org1", "org2", "org3"
LOT_A = "urn:epc:class:lgtin:4012345.012345.LOT-A1"
LOT_B = "urn:epc:class:lgtin:4012345.012345.LOT-B2"
HOUR_MS = 3_600_000


def party(org: str) -> str:
    return f"urn:epc:id:pgln:{PREFIX[org]}.00000"


def site(org: str) -> str:
    return f"urn:epc:id:sgln:{PREFIX[org]}.00001.0"


def at(hours: float, start_ms: int) -> str:
    t = time.gmtime((start_ms + hours * HOUR_MS) / 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", t)


def event(by: str, hours: float, step: str, disposition: str | None, lot: str,
          qty: int | None, start_ms: int, *, action: str = "OBSERVE",
          src: str | None = None, dst: str | None = None, **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"type": "ObjectEvent", "action": action, "bizStep": step,
                         "eventTime": at(hours, start_ms), "eventTimeZoneOffset": "+01:00",
                         "quantityList": [{"epcClass": lot,
                                           **({"quantity": qty} if qty else {})}],
                         "bizLocation": {"id": site(by)}}
    if disposition:
        e["disposition"] = disposition
    if src:
        e["sourceList"] = [{"type": "owning_party", "source": party(src)}]
    if dst:
        e["destinationList"] = [{"type": "owning_party", "destination": party(dst)}]
    e.update(extra)
    return e


def chain(start_ms: int) -> list[tuple[str, list[dict[str, Any]]]]:
    def ev(*a: Any, **k: Any) -> dict[str, Any]:
        return event(*a, start_ms=start_ms, **k)

    return [
        (MAKER, [ev(MAKER, 0, "commissioning", "active", LOT_A, 500, action="ADD"),
                 ev(MAKER, 0.5, "commissioning", "active", LOT_B, 300, action="ADD")]),
        # the carrier reports the shipments it carries for the maker (the owner)
        (CARRIER, [ev(CARRIER, 1, "shipping", "in_transit", LOT_A, 500, src=MAKER, dst=DIST),
                   ev(CARRIER, 1, "shipping", "in_transit", LOT_B, 300, src=MAKER,
                      dst=DIST)]),
        (DIST, [ev(DIST, 6, "receiving", "in_progress", LOT_A, 500, src=MAKER, dst=DIST),
                ev(DIST, 6, "receiving", "in_progress", LOT_B, 300, src=MAKER, dst=DIST),
                ev(DIST, 7, "inspecting", "conformant", LOT_A, 500),
                ev(DIST, 8, "shipping", "in_transit", LOT_A, 200, src=DIST, dst=PHARMACY)]),
        (PHARMACY, [ev(PHARMACY, 10, "receiving", "in_progress", LOT_A, 200, src=DIST,
                       dst=PHARMACY)]),
        (MAKER, [ev(MAKER, 20, "holding", "recalled", LOT_A, None,
                    **{"consortium:note": "supplier recall: labelling error"})]),
        (DIST, [ev(DIST, 21, "shipping", "in_transit", LOT_A, 300, src=DIST, dst=MAKER)]),
        (MAKER, [ev(MAKER, 24, "receiving", "returned", LOT_A, 300, src=DIST, dst=MAKER)]),
        (PHARMACY, [ev(PHARMACY, 25, "destroying", "destroyed", LOT_A, 200,
                       action="DELETE")]),
        (DIST, [ev(DIST, 26, "shipping", "in_transit", LOT_B, 300, src=DIST, dst=PHARMACY)]),
        (PHARMACY, [ev(PHARMACY, 28, "receiving", "in_progress", LOT_B, 300, src=DIST,
                       dst=PHARMACY)]),
        # the deliberately bad event: recalled stock sold on
        (MAKER, [ev(MAKER, 30, "shipping", "in_transit", LOT_A, 300, src=MAKER,
                    dst=PHARMACY)]),
    ]


def document(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@context": [CONTEXT, {"consortium": "urn:consortium:epcis:"}],
            "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": at(0, int(time.time() * 1000)),
            "epcisBody": {"eventList": events}}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    start_ms = int(time.time() * 1000) - 32 * HOUR_MS
    plan = []
    for n, (org, events) in enumerate(chain(start_ms)):
        path = out / f"{n:02d}-{org}.jsonld"
        path.write_text(json.dumps(document(events), indent=1) + "\n")
        plan.append(f"{org} {path}")
    (out / "plan.txt").write_text("\n".join(plan) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: demo_chain.py OUT_DIR")
    main(Path(sys.argv[1]))
