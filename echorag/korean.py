"""Korean text: normalisation, Kiwi morphemes, sentence splitting and chunking."""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable

from kiwipiepy import Kiwi

# Invisible characters that break matching (copy-paste from the web, Word, BOMs).
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")

# Content morphemes kept as BM25 terms: nouns, numerals, foreign words, numbers, Hanja,
# roots, verb/adjective lemmas ('먹다'), adverbs, and Kiwi's URL/e-mail/hashtag/serial tokens.
# Pronouns (NP) hurt; measured in bench/results/kiwi_tags.json (python bench/kiwi_tags.py).
BM25_TAGS: frozenset[str] = frozenset(
    {"NNG", "NNP", "NR", "SL", "SN", "SH", "XR", "VV", "VA", "MAG",
     "W_URL", "W_EMAIL", "W_HASHTAG", "W_SERIAL"}
)
# Verbs and adjectives are indexed as lemmas ('먹' -> '먹다'), so they never collide with nouns.
_LEMMA_TAGS = frozenset({"VV", "VA"})


def normalize(text: str) -> str:
    """NFC (macOS writes NFD Hangul) without zero-width characters."""
    return unicodedata.normalize("NFC", _ZERO_WIDTH.sub("", text))


_kiwi: Kiwi | None = None
_kiwi_lock = threading.Lock()


def get_kiwi() -> Kiwi:
    """The process-wide Kiwi (loading the model takes about a second, so do it once)."""
    global _kiwi
    if _kiwi is None:
        with _kiwi_lock:
            if _kiwi is None:
                kiwi = Kiwi()
                kiwi.tokenize("")  # Kiwi initialises lazily; finish it here, under the lock
                _kiwi = kiwi
    return _kiwi


def _terms(tokens: Iterable, tags: frozenset[str], lemmatize: bool) -> list[str]:
    terms = []
    for token in tokens:
        tag = token.tag.partition("-")[0]  # 'VV-I' (irregular) -> 'VV'
        if tag not in tags:
            continue
        term = token.lemma if lemmatize and tag in _LEMMA_TAGS else token.form
        terms.append(term.lower())
    return terms


def morphemes(text: str, tags: Iterable[str] = BM25_TAGS, *, lemmatize: bool = True, **kiwi_options) -> list[str]:
    """Index terms of one text: '서울에서 먹었다' -> ['서울', '먹다']."""
    return morphemes_many([text], tags, lemmatize=lemmatize, **kiwi_options)[0]


def morphemes_many(
    texts: list[str], tags: Iterable[str] = BM25_TAGS, *, lemmatize: bool = True, **kiwi_options
) -> list[list[str]]:
    """Index terms of many texts, analysed in one (multi-threaded) Kiwi batch.

    `lemmatize` indexes verbs and adjectives as '먹다' rather than the bare stem '먹';
    `kiwi_options` go to `Kiwi.tokenize` (e.g. split_complex=True, saisiot=True).
    Terms are the kept morphemes' forms, lowercased.
    """
    tags = frozenset(tags)
    analysed = get_kiwi().tokenize([normalize(t) for t in texts], **kiwi_options)
    return [_terms(tokens, tags, lemmatize) for tokens in analysed]


def split_sentences(text: str) -> list[str]:
    """Sentences as they are written in the (normalised) text."""
    text = normalize(text)
    return [text[start:end] for start, end, _ in _sentences(text)]


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def _sentences(text: str) -> list[tuple[int, int, int]]:
    """(start, end, paragraph number) of each sentence; none crosses a blank line."""
    paragraphs = _paragraph_spans(text)
    results = get_kiwi().split_into_sents([text[s:e] for s, e in paragraphs], return_sub_sents=False)
    return [
        (offset + sentence.start, offset + sentence.end, number)
        for number, ((offset, _), sentences) in enumerate(zip(paragraphs, results))
        for sentence in sentences
        if sentence.text.strip()
    ]


def chunk_text(text: str, size: int = 500, overlap: int = 100) -> list[str]:
    """Pack whole sentences into chunks of at most `size` characters.

    A chunk that would end mid-paragraph ends at its last paragraph break instead,
    if it stays at least half full. Consecutive chunks within one paragraph share up
    to `overlap` characters of whole sentences; a new paragraph starts afresh. A
    sentence longer than `size` is a chunk of its own. Chunks are verbatim slices of
    the normalised text.
    """
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need size > 0 and 0 <= overlap < size")
    text = normalize(text)
    sentences = _sentences(text)
    spans = [(start, end) for start, end, _ in sentences]
    paragraph_of = [paragraph for _, _, paragraph in sentences]

    def length(first: int, last: int) -> int:  # characters of sentences first..last
        return spans[last][1] - spans[first][0]

    chunks, first = [], 0
    while first < len(spans):
        # Greedy: as many whole sentences as fit (at least one).
        last = first
        while last + 1 < len(spans) and length(first, last + 1) <= size:
            last += 1
        # Ending mid-paragraph: prefer the last paragraph break if the chunk stays half full.
        if last + 1 < len(spans) and paragraph_of[last] == paragraph_of[last + 1]:
            for end in range(last - 1, first - 1, -1):
                if paragraph_of[end] != paragraph_of[end + 1]:
                    if length(first, end) >= size // 2:
                        last = end
                    break
        chunks.append(text[spans[first][0] : spans[last][1]])
        if last + 1 == len(spans):
            break
        # The next chunk repeats trailing sentences of this one: same paragraph only,
        # within `overlap`, and leaving room for at least one new sentence.
        following = last + 1
        start = following
        while (
            start - 1 > first
            and paragraph_of[start - 1] == paragraph_of[following]
            and length(start - 1, last) <= overlap
            and length(start - 1, following) <= size
        ):
            start -= 1
        first = start
    return chunks
