import pytest

from echorag.learning import TurnFilter, scrub_pii
from echorag.types import Turn


@pytest.mark.parametrize(
    ("text", "expected", "kinds"),
    [
        ("주민번호는 900101-1234567입니다", "주민번호는 [주민등록번호]입니다", ["rrn"]),
        ("주민번호 9001012234567 맞나요", "주민번호 [주민등록번호] 맞나요", ["rrn"]),
        ("제 번호 010-1234-5678로 연락주세요", "제 번호 [전화번호]로 연락주세요", ["phone"]),
        ("01012345678로 문자 주세요", "[전화번호]로 문자 주세요", ["phone"]),
        ("해외에서는 +82 10-9876-5432", "해외에서는 [전화번호]", ["phone"]),
        ("사무실 02-123-4567, 지점 031-1234-5678", "사무실 [전화번호], 지점 [전화번호]", ["phone", "phone"]),
        ("대표번호 (02) 1234-5678", "대표번호 [전화번호]", ["phone"]),
        ("메일은 kim.minsu+ko@example.co.kr으로", "메일은 [이메일]으로", ["email"]),
        ("카드 4111 1111 1111 1111 결제", "카드 [카드번호] 결제", ["card"]),
        ("카드 5500-0000-0000-0004 결제", "카드 [카드번호] 결제", ["card"]),
    ],
)
def test_scrubs_korean_personal_data(text, expected, kinds):
    assert scrub_pii(text) == (expected, kinds)


@pytest.mark.parametrize(
    "text",
    [
        "2024년 3월 15일 오후 2시",
        "가격은 15,000원이고 재고는 1234개",
        "주문번호 4111-1111-1111-1112",  # 16 digits that fail the Luhn check
        "코드 1234567890123",  # 13 digits that are not a birth date
        "버전 1.2.3, 포트 8000",
        "2024.02.15 회의",
    ],
)
def test_leaves_ordinary_numbers_alone(text):
    assert scrub_pii(text) == (text, [])


def _turn(user: str, assistant: str, user_id: str = "u1") -> Turn:
    return Turn(id="t", session_id="s", user_id=user_id, user=user, assistant=assistant,
                adapter_version="base", model="tiny")


def test_turn_filter_reasons_and_scrubbing():
    f = TurnFilter(min_chars=2)
    assert f.screen(_turn("", "답변")).reason == "empty"
    assert f.screen(_turn("질문", "  ")).reason == "empty"
    assert f.screen(_turn("?", "네 맞아요")).reason == "too_short"
    screened = f.screen(_turn("연락처 010-1234-5678 저장해줘", "저장했습니다."))
    assert screened.accepted and screened.user == "연락처 [전화번호] 저장해줘" and screened.pii == ("phone",)


def test_fingerprint_ignores_case_spacing_and_unicode_form():
    f = TurnFilter()
    nfd = "\u1100\u1161\u11ab 안내"  # '간 안내' in decomposed Hangul (macOS)
    a = f.screen(_turn("간 안내", "Hello World"))
    b = f.screen(_turn(f"  {nfd} ", "hello   world"))
    c = f.screen(_turn("간 안내", "다른 답변"))
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_ids_holding_pii_become_stable_pseudonyms():
    f = TurnFilter()
    a = f.screen(_turn("질문입니다", "답변입니다", user_id="kim@example.com"))
    b = f.screen(_turn("질문입니다", "답변입니다", user_id="kim@example.com"))
    assert a.user_id == b.user_id and a.user_id.startswith("anon-") and "kim" not in a.user_id
    assert f.screen(_turn("질문입니다", "답변입니다", user_id="user-42")).user_id == "user-42"
