"""GS1's EPCIS 2.0 artefacts in ../shared/epcis (see its README): tests that need them skip,
saying why, when the folder is not beside the checkout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "epcis"
needs_shared = pytest.mark.skipif(
    not (SHARED / "EPCIS-JSON-Schema.json").is_file(),
    reason=f"GS1's EPCIS 2.0 schema and examples are not at {SHARED} (../shared/epcis beside "
           "the checkout)")


def examples() -> list[Path]:
    return sorted((SHARED / "examples").glob("*.jsonld")) if SHARED.is_dir() else []


def schema_validator() -> Any:
    import jsonschema

    schema = json.loads((SHARED / "EPCIS-JSON-Schema.json").read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator
                                      .FORMAT_CHECKER)


def gs1_hashes(doc: dict[str, Any], tmp: Path) -> list[str]:
    """GS1's reference event hash (epcis-event-hash-generator) of every event of a document."""
    from epcis_event_hash_generator.__main__ import epcis_hash_from_file

    path = tmp / "doc.jsonld"
    path.write_text(json.dumps(doc))
    hashes, _ = epcis_hash_from_file(str(path))
    return list(hashes)
