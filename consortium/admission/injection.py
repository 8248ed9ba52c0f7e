"""Text addressed to the screener instead of describing the subject (prompt injection).

Deterministic patterns, matched after folding the usual disguises (full-width letters,
zero-width characters, odd spacing, case): certain for direct attempts ("ignore previous
instructions", fake tags, a verdict in JSON), suspect for attempts to pre-empt the review
("pre-approved", "do not flag").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from consortium.admission.model import Finding, Severity

CERTAIN, SUSPECT = Severity.CERTAIN, Severity.SUSPECT

_INJECTION_CERTAIN = [re.compile(p) for p in (
    r"\b(ignore|disregard|forget|override|bypass)\b.{0,40}\b(previous|prior|above|earlier|"
    r"preceding|all|any|your|the)\b.{0,30}\b(instructions?|rules?|prompts?|guidelines?|"
    r"checks?|directions?|policy|policies)\b",
    r"\b(system|developer)\s+(prompt|message|instructions?|override)\b",
    r"\byou\s+are\s+(now\s+)?(an?\s+|the\s+)?(ai|assistant|model|language model|llm|reviewer|"
    r"screener|chatgpt|gpt)\b",
    r"\b(note|message|instruction)s?\s+(to|for)\s+(the\s+)?(ai|model|assistant|reviewer|"
    r"screener|llm|automated\s+\w+|admission\s+\w+)\b",
    r"\b(respond|answer|reply|output|return|classify|mark|label|rate|set)\b.{0,25}"
    r"[\"'`]?\b(approve|approved|ok)\b[\"'`]?\s*(with|and|,|\.|$|risk)",
    r"[\"']?decision[\"']?\s*[:=]\s*[\"']?(approve|ok|review|reject|flag)",
    r"\brisk\s*(score|level)?\s*(=|:|to|of)\s*0(\.0+)?\b",
    r"</?\s*(data|findings|record|request|system|user|assistant)\s*>",
    r"<\|?\s*(im_start|im_end|system|endoftext)\s*\|?>",
    r"\[/?inst\]|###\s*(instruction|system|response)",
    r"\bnew\s+instructions?\b",
    # Text telling the reviewer what the outcome is, or that the review already happened:
    # an applicant or a record has no reason to speak about its own screening.
    r"\b(correct|proper|agreed)\s+(screening\s+|review\s+)?(outcome|decision|verdict)\b",
    r"\bexpected\s+(screening|review)\s+(outcome|decision|verdict|result)\b",
    r"\b(agreed|discussed|settled|arranged|cleared)\b.{0,40}\bwith\s+the\s+(consortium|"
    r"validators?|chair|reviewers?|screeners?|board)\b",
    r"\bnothing\s+(further\s+|else\s+|here\s+|more\s+)?(to\s+(look\s+at|check|review)|"
    r"(needs|requires)\s+(attention|review|checking|a\s+look))\b",
    r"\b(go|goes|pass|passes)\s+straight\s+through\b",
    r"\breviewers?\s+(have|has)\s+already\b",
)]
_INJECTION_SUSPECT = [re.compile(p) for p in (
    r"\bpre-?(approved|cleared|verified)\b",
    r"\b(do\s+not|don't|no\s+need\s+to)\s+(flag|reject|review|check|verify|escalate)\b",
    r"\b(must|should)\s+be\s+(approved|accepted|cleared|marked\s+ok)\b",
    r"\bauto-?approv",
)]
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


def normalise_text(text: str) -> str:
    """Fold the usual disguises (full-width letters, zero-width joiners, odd spacing, case)."""
    folded = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).casefold()
    return " ".join(folded.split())


def injection_findings(fields: Mapping[str, str | None], rule: str) -> list[Finding]:
    """Text addressed to the screener instead of describing the subject."""
    out: list[Finding] = []
    for name, value in sorted(fields.items()):
        if not value:
            continue
        t = normalise_text(value)
        if any(p.search(t) for p in _INJECTION_CERTAIN):
            out.append(Finding(rule, CERTAIN, f"{name} contains instructions addressed to the "
                                              "reviewer (prompt injection)"))
        elif any(p.search(t) for p in _INJECTION_SUSPECT):
            out.append(Finding(rule, SUSPECT, f"{name} tries to pre-empt the review "
                                              "(claims approval or asks not to be checked)"))
    return out


