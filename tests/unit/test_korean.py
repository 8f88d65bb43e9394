import threading
import unicodedata

import pytest

from echorag.korean import BM25_TAGS, chunk_text, get_kiwi, morphemes, morphemes_many, normalize, split_sentences

PARAGRAPH = (
    "서울은 대한민국의 수도이다. 한강이 도시를 가로질러 흐른다! "
    "인구는 약 940만 명이다. 서울에는 경복궁 같은 궁궐이 많을까? 그렇다."
)
LONG_TEXT = " ".join(f"{i}번째 문장은 검색 시스템을 설명합니다." for i in range(40))


def test_normalize_turns_macos_nfd_into_nfc():
    nfd = unicodedata.normalize("NFD", "한국어 검색")
    assert nfd != "한국어 검색"
    assert normalize(nfd) == "한국어 검색"


def test_normalize_drops_zero_width_characters():
    assert normalize("\ufeff서\u200b울\u200d역\u2060") == "서울역"
    assert normalize("plain text") == "plain text"


def test_get_kiwi_is_one_instance_across_threads():
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(get_kiwi())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(kiwi is seen[0] for kiwi in seen)


def test_morphemes_drop_particles_and_endings():
    assert morphemes("서울에서") == ["서울"]
    terms = morphemes("서울에서 맛있는 냉면을 먹었다.")
    assert "서울" in terms and "냉면" in terms
    assert not {"에서", "을", "었", "다", "."} & set(terms)


def test_morphemes_lemmatise_verbs_so_conjugations_match():
    assert "먹다" in morphemes("먹었다")
    assert "먹다" in morphemes("먹을 수 있나요?")
    assert "걷다" in morphemes("걸어서 갔다")  # irregular verb (ㄷ -> ㄹ)


def test_morphemes_keep_latin_lowercased_numbers_and_normalise_input():
    terms = morphemes("Kiwi 3.5 버전")
    assert "kiwi" in terms and "3.5" in terms and "버전" in terms
    assert morphemes(unicodedata.normalize("NFD", "한국어를")) == ["한국어"]


def test_morphemes_tags_choose_what_is_kept():
    assert morphemes("서울에서 냉면을 먹었다", tags={"NNP"}) == ["서울"]
    assert "먹" in morphemes("먹었다", tags={"VV"}, lemmatize=False)
    assert "MAG" in BM25_TAGS and "NP" not in BM25_TAGS


def test_morphemes_many_matches_one_by_one():
    texts = ["서울에서 만나요", "", "부산으로 가는 기차"]
    assert morphemes_many(texts) == [morphemes(t) for t in texts]
    assert morphemes_many([]) == []


def test_split_sentences_of_a_korean_paragraph():
    assert split_sentences(PARAGRAPH) == [
        "서울은 대한민국의 수도이다.",
        "한강이 도시를 가로질러 흐른다!",
        "인구는 약 940만 명이다.",
        "서울에는 경복궁 같은 궁궐이 많을까?",
        "그렇다.",
    ]


def test_split_sentences_keeps_text_and_skips_blanks():
    assert split_sentences("") == []
    assert split_sentences("  \n\n ") == []
    sentences = split_sentences("첫 문단입니다.\n\n둘째 문단 😀 이모지도 있어요. 끝.")
    assert sentences == ["첫 문단입니다.", "둘째 문단 😀 이모지도 있어요.", "끝."]


def test_short_text_is_one_chunk():
    assert chunk_text(PARAGRAPH) == [PARAGRAPH]
    assert chunk_text("") == []
    assert chunk_text("  ") == []


def test_chunks_never_cut_a_sentence_and_respect_size():
    text = LONG_TEXT
    sentences = split_sentences(text)
    chunks = chunk_text(text, size=120, overlap=40)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(chunk) <= 120
        assert chunk in text
        # Each chunk is a run of whole sentences.
        assert set(split_sentences(chunk)) <= set(sentences)
    # Every sentence is somewhere; the first and last are where they belong.
    assert set().union(*(split_sentences(c) for c in chunks)) == set(sentences)
    assert chunks[0].startswith(sentences[0]) and chunks[-1].endswith(sentences[-1])


def test_consecutive_chunks_overlap_by_whole_sentences_within_the_limit():
    chunks = chunk_text(LONG_TEXT, size=120, overlap=40)
    for previous, current in zip(chunks, chunks[1:]):
        shared = [s for s in split_sentences(current) if s in split_sentences(previous)]
        assert shared, "neighbouring chunks share a sentence"
        assert previous.endswith(" ".join(shared)) and current.startswith(" ".join(shared))
        assert len(" ".join(shared)) <= 40


def test_zero_overlap_shares_nothing():
    chunks = chunk_text(LONG_TEXT, size=120, overlap=0)
    for previous, current in zip(chunks, chunks[1:]):
        assert not set(split_sentences(previous)) & set(split_sentences(current))


def test_a_sentence_longer_than_size_is_its_own_chunk():
    long_sentence = "아주 " * 80 + "긴 문장입니다."
    text = f"짧은 문장입니다. {long_sentence} 다음 문장입니다."
    chunks = chunk_text(text, size=100, overlap=20)
    assert long_sentence in chunks
    assert "".join(chunks).count("긴 문장입니다.") == 1


def test_chunks_prefer_paragraph_breaks():
    first = "첫째 문단의 문장입니다. " * 3
    second = "둘째 문단의 문장입니다. " * 3
    text = first.strip() + "\n\n" + second.strip()
    chunks = chunk_text(text, size=len(first) + 20, overlap=30)
    assert chunks == [first.strip(), second.strip()]


def test_chunk_text_rejects_bad_sizes():
    with pytest.raises(ValueError):
        chunk_text("문장.", size=100, overlap=100)
    with pytest.raises(ValueError):
        chunk_text("문장.", size=0, overlap=0)
