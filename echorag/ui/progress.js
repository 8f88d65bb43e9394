// The training run as the admin panel shows it: a summary, step, loss, ETA, a progress
// bar and the loss curve (redrawn only when it changed: ``rendered.loss``).

import { lineChart } from "./charts.js";
import { $, fmtClock, fmtDuration, setBar, setStat } from "./dom.js";
import { TRIGGER_LABEL } from "./labels.js";

export function renderProgress(p, rendered) {
  const total = p.total_steps;
  let summary;
  if (p.status === "training") {
    summary = `학습 중 — 실행 #${p.run_id} (${TRIGGER_LABEL[p.trigger] || p.trigger || "?"})` +
      (p.samples ? `, 학습 예제 ${p.samples}개` : "") + (p.epoch != null ? `, 에폭 ${p.epoch + 1}` : "");
  } else if (p.status === "idle") {
    summary = "진행 중인 학습이 없습니다.";
  } else if (p.status === "succeeded") {
    const took = p.started_at && p.ended_at ? p.ended_at - p.started_at : p.elapsed_s;
    summary = `마지막 학습 완료: ${p.version || "?"} (실행 #${p.run_id}, ${fmtDuration(took)} 소요)`;
  } else if (p.status === "rejected") {
    summary = `마지막 학습 결과 미적용: ${p.version || "?"} — 기존 버전이 더 낫습니다.`;
  } else {
    summary = `마지막 학습 실패: ${p.error || p.message || "알 수 없는 오류"}`;
  }
  if (p.pending) summary += " · 후속 학습 1회 대기";
  if (p.retry_at) summary += ` · ${fmtClock(p.retry_at)}에 재시도`;
  const summaryNode = $("train-summary");
  if (summaryNode.textContent !== summary) summaryNode.textContent = summary;
  summaryNode.dataset.status = p.status;
  summaryNode.dataset.version = p.version || "";

  setStat("train-step", p.step, total ? `${p.step} / ${total}` : String(p.step || "–"));
  $("train-step").dataset.total = String(total || "");
  setStat("train-loss", p.loss ?? "", p.loss == null ? "–" : p.loss.toFixed(4));
  setStat("train-eta", p.eta_s ?? "", p.status === "training" ? fmtDuration(p.eta_s) : "–");
  setBar("train-bar", p.progress ?? (total ? p.step / total : 0));
  $("train-bar").classList.toggle("active", p.status === "training");

  const key = JSON.stringify([p.run_id, p.losses.length, p.step]);
  if (rendered.loss !== key) {
    rendered.loss = key;
    // The server thins long curves: spread the points over the steps done.
    const scale = p.losses.length && p.step ? p.step / p.losses.length : 1;
    lineChart($("loss-chart"), p.losses.map((y, i) => ({ x: Math.round((i + 1) * scale), y })), {
      label: "손실 곡선", formatX: (v) => `${Math.round(v)}단계`, formatY: (v) => v.toFixed(3),
      empty: "아직 학습 기록이 없습니다",
    });
  }
}
