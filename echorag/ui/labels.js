// Korean words for the learning loop's states, events, filters and triggers.

export const STATUS_LABEL = {
  idle: "대기", training: "학습 중", succeeded: "완료", failed: "실패", rejected: "미적용(게이트 탈락)",
};
export const VERSION_LABEL = {
  base: "기본 모델", active: "적용 중", candidate: "후보", rejected: "미적용", archived: "이전 버전",
};
export const EVENT_LABEL = {
  training_started: "학습 시작", training_succeeded: "학습 완료", training_rejected: "학습 결과 미적용",
  training_failed: "학습 실패", training_queued: "학습 예약", training_skipped: "학습 건너뜀",
  training_interrupted: "학습 중단", adapter_promoted: "어댑터 적용", adapter_rolled_back: "롤백",
  adapter_backed_up: "어댑터 백업", activation_failed: "적용 실패", settings_updated: "설정 변경",
  conversations_cleared: "대화 삭제", dataset_exported: "데이터 내보내기", cleanup: "정리",
  turn_corrected: "답변 수정", selector_promoted: "답변 선택기 적용", selector_rejected: "답변 선택기 보류",
  selector_rolled_back: "답변 선택기 롤백", user_added: "사용자 추가", user_key_issued: "사용자 키 발급", user_revoked: "사용자 키 폐기", data_erased: "데이터 삭제",
};
export const SELECTOR_LABEL = { promoted: "적용됨", rejected: "미적용(게이트 탈락)", candidate: "후보" };
export const FILTER_LABEL = {
  empty: "빈 대화", too_short: "너무 짧음", duplicate: "중복", pii_scrubbed: "개인정보 가림", erased: "삭제 요청",
};
export const TRIGGER_LABEL = {
  auto: "자동", manual: "수동", pending: "후속", retry: "재시도", settings: "설정 변경", resume: "재개",
};
