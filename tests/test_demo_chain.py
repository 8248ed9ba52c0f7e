"""./scripts/demo's supply chain (scripts/demo_chain.py), judged by the admission rules as the
service judges it: every event of the clean part raises no flag, and the deliberately bad one
(recalled stock shipped on) is flagged lot.recalled, certain."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from consortium import localnet
from consortium.admission.model import ProvenanceEvent, RecordContext, Registry
from consortium.admission.rules import check_provenance
from consortium.client.formats import epcis_record
from consortium.formats import epcis
from consortium.formats.directory import Gs1Directory

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_chain.py"


def test_demo_chain_is_clean_but_for_the_bad_event(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("demo_chain", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    directory = Gs1Directory(localnet.local_gs1(f"org{i}", i) for i in range(4))
    registry = Registry(frozenset(f"org{i}" for i in range(4)))
    history: list[ProvenanceEvent] = []
    flags: list[dict[str, str]] = []
    for n, line in enumerate((tmp_path / "plan.txt").read_text().split("\n")):
        if not line:
            continue
        org, path = line.split(" ", 1)
        for k, event in enumerate(epcis.parse_document(Path(path).read_bytes(),
                                                       prefix_length=directory.prefix_length)):
            rec = epcis_record(event)  # what the SDK puts on the ledger
            e = ProvenanceEvent.from_public_json(f"r{n}.{k}", org, event.event_time_ms,
                                                 rec.document)
            found = check_provenance(e, RecordContext(history=tuple(history),
                                                      registry=registry,
                                                      now_ms=event.event_time_ms,
                                                      directory=directory))
            flags.append({f.rule: f.severity.value for f in found})
            history.append(e)
    assert flags[:-1] == [{}] * (len(flags) - 1), json.dumps(flags)
    assert flags[-1] == {"lot.recalled": "certain"}
