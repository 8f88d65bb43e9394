// The conversation on this device, downloaded as JSON or Markdown (sources and ratings
// included).

import { download, fmtTime } from "./dom.js";

export const COLLECTION_LABEL = { documents: "문서", memory: "이전 대화" };

function stamp() {
  const d = new Date();
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}`;
}

export function exportJson(history, session) {
  const data = { exported_at: new Date().toISOString(), session_id: session.session_id, user_id: session.user_id, messages: history };
  download(`echorag-chat-${stamp()}.json`, JSON.stringify(data, null, 2), "application/json");
}

export function exportMarkdown(history, session) {
  const lines = ["# EchoRAG 대화 기록", "", `- 세션: ${session.session_id}`, `- 내보낸 시각: ${new Date().toLocaleString("ko-KR")}`, ""];
  for (const e of history) {
    const when = e.at ? ` (${fmtTime(e.at)})` : "";
    if (e.role === "system") { lines.push(`> ${e.text}`, ""); continue; }
    lines.push(`## ${e.role === "user" ? "사용자" : "EchoRAG"}${when}`, "", e.text || "", "");
    if (e.error) lines.push(`> 오류: ${e.error}`, "");
    if (e.role === "assistant" && e.sources && e.sources.length) {
      lines.push("근거:");
      e.sources.forEach((s, i) => {
        const title = (s.metadata && s.metadata.title) || s.id;
        lines.push(`${i + 1}. [${COLLECTION_LABEL[s.collection] || s.collection}] ${title} (점수 ${Number(s.score).toFixed(3)})`);
      });
      lines.push("");
    }
    if (e.feedback) lines.push(`평가: ${e.feedback > 0 ? "👍" : "👎"}`, "");
  }
  download(`echorag-chat-${stamp()}.md`, lines.join("\n"), "text/markdown");
}
