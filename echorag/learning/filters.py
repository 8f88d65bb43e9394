"""What the collector keeps: PII scrubbing and turn screening, before anything is stored.

``scrub_pii`` replaces Korean resident registration numbers, phone numbers, e-mail
addresses and card numbers with Korean placeholders. ``TurnFilter`` drops empty and
too short turns, scrubs the rest and fingerprints them; the store turns equal
fingerprints into ``duplicate`` (a UNIQUE column, so restarts still dedupe).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from echorag.types import Turn

PLACEHOLDERS: dict[str, str] = {
    "email": "[이메일]",
    "card": "[카드번호]",
    "rrn": "[주민등록번호]",
    "phone": "[전화번호]",
}

_SEP = r"[ .\-]"
# Seoul 02, the provinces 031–064 and 070 (VoIP numbers are personal too).
_AREA = r"(?:2|3[1-3]|4[1-4]|5[1-5]|6[1-4]|70)"


def _luhn(match: re.Match) -> bool:
    digits = [int(c) for c in match.group() if c.isdigit()]
    checksum = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    return checksum % 10 == 0


def _birth_date(match: re.Match) -> bool:
    # YYMMDD must be a date: this is what makes a bare 13-digit number unambiguous.
    digits = [int(c) for c in match.group() if c.isdigit()]
    month, day = 10 * digits[2] + digits[3], 10 * digits[4] + digits[5]
    return 1 <= month <= 12 and 1 <= day <= 31


def _always(match: re.Match) -> bool:
    return True


# Order matters: e-mail first (local parts may hold digits), then the longest digit runs.
# The (?<!\d) ... (?!\d) guards keep a pattern from matching inside a longer number.
_PATTERNS: list[tuple[str, re.Pattern[str], Callable[[re.Match], bool]]] = [
    ("email", re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"), _always),
    ("card", re.compile(r"(?<!\d)\d{4}(?:[ \-]?\d{4}){3}(?!\d)"), _luhn),
    ("rrn", re.compile(r"(?<!\d)\d{6}\s?-?\s?[1-8]\d{6}(?!\d)"), _birth_date),
    # Mobile: 010-1234-5678, 01012345678, +82 10-1234-5678.
    ("phone", re.compile(rf"(?<!\d)(?:\+82{_SEP}?0?|0)1[016789]{_SEP}?\d{{3,4}}{_SEP}?\d{{4}}(?!\d)"), _always),
    # Landline: separators required (a bare 9-10 digit run is too ambiguous).
    (
        "phone",
        re.compile(
            rf"(?:(?<!\d)(?:\+82{_SEP}?|0){_AREA}{_SEP}|\(0{_AREA}\)\s?)\d{{3,4}}{_SEP}\d{{4}}(?!\d)"
        ),
        _always,
    ),
]


def scrub_pii(text: str) -> tuple[str, list[str]]:
    """Replace personal data with placeholders; returns the text and the kinds found
    (one entry per replacement, e.g. ``["phone", "email"]``)."""
    found: list[str] = []
    for kind, pattern, valid in _PATTERNS:

        def replace(match: re.Match, kind: str = kind, valid=valid) -> str:
            if not valid(match):
                return match.group()
            found.append(kind)
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text, found


def normalize_for_dedupe(text: str) -> str:
    """NFC, case and whitespace do not make a turn new."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def fingerprint(user: str, assistant: str) -> str:
    joined = normalize_for_dedupe(user) + "\x1f" + normalize_for_dedupe(assistant)
    return hashlib.sha256(joined.encode()).hexdigest()


@dataclass(frozen=True)
class Screened:
    """A turn after screening: the text as it may be stored, or why it may not."""

    user: str
    assistant: str
    user_id: str
    session_id: str
    fingerprint: str
    pii: tuple[str, ...] = ()
    reason: str | None = None  # "empty" | "too_short"; duplicates are decided by the store
    prompt: list[dict[str, str]] | None = None  # the served messages, scrubbed, otherwise verbatim

    @property
    def accepted(self) -> bool:
        return self.reason is None


def pseudonym(value: str) -> str:
    """An id that contains PII (say an e-mail as user id) becomes a stable pseudonym."""
    _, kinds = scrub_pii(value)
    return f"anon-{hashlib.sha256(value.encode()).hexdigest()[:16]}" if kinds else value


def clean(text: str | None) -> tuple[str, list[str]]:
    """Stored text as every stored text is: NFC, stripped, personal data scrubbed."""
    return scrub_pii(unicodedata.normalize("NFC", text or "").strip())


class TurnFilter:
    def __init__(self, min_chars: int = 2) -> None:
        self.min_chars = min_chars

    def screen(self, turn: Turn) -> Screened:
        user, user_pii = clean(turn.user)
        assistant, assistant_pii = clean(turn.assistant)
        if not user or not assistant:
            reason = "empty"
        elif min(len(user), len(assistant)) < self.min_chars:
            reason = "too_short"
        else:
            reason = None
        prompt = None
        if turn.prompt is not None:  # the question and remembered turns in it
            prompt = [{**m, "content": scrub_pii(m.get("content") or "")[0]} for m in turn.prompt]
        return Screened(
            user=user,
            assistant=assistant,
            user_id=pseudonym(turn.user_id),
            session_id=pseudonym(turn.session_id),
            fingerprint=fingerprint(user, assistant),
            pii=tuple(user_pii + assistant_pii),  # the prompt repeats the question: not counted twice
            reason=reason,
            prompt=prompt,
        )
