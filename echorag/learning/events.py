"""Events: every step of the learning loop, as stored and as told to humans.

An ``Event`` is a row of the ``events`` table, an item of ``GET /mlops/events``
and the body of a webhook. The builders below hold the Korean wording in one place.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field


class Event(BaseModel):
    id: int | None = Field(None, description="Assigned by the store.")
    type: str = Field(..., description="e.g. training_started, training_succeeded, adapter_rolled_back")
    message: str = Field("", description="One line for humans (Korean).")
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)


def _loss(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def training_started(run_id: int, from_seq: int, to_seq: int, attempt: int = 1) -> Event:
    retry = f", 재시도 {attempt}회차" if attempt > 1 else ""
    return Event(
        type="training_started",
        message=f"🚀 미세조정 시작: 대화 {to_seq - from_seq}건 (seq {from_seq + 1}–{to_seq}{retry})",
        data={"run_id": run_id, "from_seq": from_seq, "to_seq": to_seq, "attempt": attempt},
    )


def _scores(active_loss: float | None, candidate_loss: float | None, agreement: tuple | None, pool: int | None) -> str:
    """"평가 풀 N건: loss a → b, 일치도 x → y" (what the gate compared)."""
    text = f"loss {_loss(active_loss)} → {_loss(candidate_loss)}"
    if agreement and agreement[1] is not None:
        before = "?" if agreement[0] is None else f"{agreement[0]:.2f}"
        text += f", 일치도 {before} → {agreement[1]:.2f}"
    return f"평가 풀 {pool}건: {text}" if pool is not None else text


def training_succeeded(version: str, active_loss: float | None, candidate_loss: float | None,
                       agreement: tuple | None = None, pool: int | None = None, **data: Any) -> Event:
    return Event(
        type="training_succeeded",
        message=f"✅ 미세조정 완료: {version} ({_scores(active_loss, candidate_loss, agreement, pool)})",
        data={"version": version, "active_loss": active_loss, "candidate_loss": candidate_loss,
              "agreement": list(agreement) if agreement else None, "pool": pool, **data},
    )


def training_rejected(version: str, active_loss: float | None, candidate_loss: float | None, reason: str,
                      agreement: tuple | None = None, pool: int | None = None) -> Event:
    return Event(
        type="training_rejected",
        message=(
            f"⚠️ 미세조정 결과 미적용: {version} ({_scores(active_loss, candidate_loss, agreement, pool)}, "
            f"기존 버전 유지) — {reason}"
        ),
        data={"version": version, "active_loss": active_loss, "candidate_loss": candidate_loss,
              "agreement": list(agreement) if agreement else None, "pool": pool, "reason": reason},
    )


def training_failed(error: str, attempt: int, max_attempts: int, retry_in: float | None) -> Event:
    if retry_in is None:
        next_step = "자동 재시도 중단, 수동 실행 필요"
    else:
        next_step = f"{retry_in:.0f}초 후 재시도"
    return Event(
        type="training_failed",
        message=f"❌ 미세조정 실패: {_short(error)} (시도 {attempt}/{max_attempts}, {next_step})",
        data={"error": _short(error, 2000), "attempt": attempt, "max_attempts": max_attempts, "retry_in": retry_in},
    )


def adapter_promoted(version: str, previous: str) -> Event:
    return Event(
        type="adapter_promoted",
        message=f"⬆️ 어댑터 적용: {version} (이전 {previous})",
        data={"version": version, "previous": previous},
    )


def traffic_shifted(version: str, share: float, previous: float, trigger: str) -> Event:
    """The student's share of sessions changed (by an admin, or graduation)."""
    why = "졸업: 게이트 일치도가 기준에 도달" if trigger == "graduation" else "관리자"
    return Event(
        type="traffic_shifted",
        message=f"🔀 학생 모델 트래픽: {previous:.0%} → {share:.0%} ({version}, {why})",
        data={"version": version, "student_share": share, "previous_share": previous, "trigger": trigger},
    )


def adapter_rolled_back(from_version: str, to_version: str) -> Event:
    return Event(
        type="adapter_rolled_back",
        message=f"↩️ 어댑터 롤백: {from_version} → {to_version}",
        data={"from": from_version, "to": to_version},
    )


def adapter_refused(version: str, error: str) -> Event:
    """A version that is missing or damaged on disk was asked to serve and was not loaded."""
    return Event(
        type="adapter_refused",
        message=f"🚫 어댑터 거부: {version} (손상되었거나 없음)",
        data={"version": version, "error": _short(error, 2000)},
    )


def selector_judged(version: str, promoted: bool, reason: str, parent: str, trained_on: int) -> Event:
    """A run fitted an answer selector version (echorag.learning.selector_learning)."""
    if promoted:
        message = f"🎯 답변 선택기 {version} 배포: 피드백 {trained_on}건으로 학습, {parent}보다 좋음 ({_short(reason, 200)})"
    else:
        message = f"⏸️ 답변 선택기 {version} 보류: {_short(reason, 200)}"
    return Event(type="selector_promoted" if promoted else "selector_rejected", message=message,
                 data={"version": version, "promoted": promoted, "reason": reason, "parent": parent,
                       "trained_on": trained_on})


def selector_rolled_back(from_version: str, to_version: str) -> Event:
    return Event(type="selector_rolled_back", message=f"↩️ 답변 선택기 롤백: {from_version} → {to_version}",
                 data={"from_version": from_version, "to_version": to_version})
