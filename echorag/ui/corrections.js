// The admin panel's stored turns: the newest conversations with who answered, whether
// they judge (evaluation pool) or train, and a 수정 action that stores a corrected answer
// beside the original (PUT /mlops/conversations/{id}); the next run trains on it.

import { $, h, openDialog, toast } from "./dom.js";

const ORIGIN_LABEL = { teacher: "교사", self: "자체 답변", corrected: "수정됨" };
const LIMIT = 20;

const short = (text, n = 80) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

export function initCorrections(admin) {
  const dialog = $("correct-dialog");
  let editing = null; // the turn being corrected
  let shown = "";

  async function refresh() {
    const { conversations } = await admin(`mlops/conversations?limit=${LIMIT}`);
    const key = JSON.stringify(conversations.map((t) => [t.id, t.corrected, t.pool, t.feedback]));
    if (key === shown) return;
    shown = key;
    const rows = conversations.map((t) => {
      const origin = t.corrected !== null ? "corrected" : t.label;
      const answer = t.corrected ?? t.assistant;
      return h("li", { dataset: { turnId: t.id, origin } },
        h("p", { class: "turn-question" }, short(t.user)),
        h("p", { class: "turn-answer" }, short(answer, 160)),
        h("div", { class: "row" },
          h("span", { class: `tag tag-origin-${origin}` }, ORIGIN_LABEL[origin] || origin),
          t.pool ? h("span", { class: "tag", title: "평가 풀: 학습하지 않고 새 버전을 평가합니다" }, "평가용") : null,
          t.feedback ? h("span", { class: "tag" }, t.feedback > 0 ? "👍" : "👎") : null,
          h("button", {
            type: "button", class: "small-btn", "aria-label": `대화 ${t.seq}번 답변 수정`,
            onclick: () => edit(t),
          }, "수정")));
    });
    const list = $("turns-list");
    list.replaceChildren(...rows);
    if (!rows.length) list.append(h("li", { class: "muted" }, "저장된 대화가 없습니다."));
  }

  function edit(turn) {
    editing = turn;
    $("correct-question").textContent = turn.user;
    $("correct-original").textContent = turn.assistant;
    $("correct-answer").value = turn.corrected ?? turn.assistant;
    $("correct-error").textContent = "";
    openDialog("correct-dialog");
    $("correct-answer").focus();
  }

  $("correct-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const answer = $("correct-answer").value.trim();
    if (!answer) {
      $("correct-error").textContent = "수정한 답변을 입력하세요.";
      return;
    }
    try {
      await admin(`mlops/conversations/${encodeURIComponent(editing.id)}`, { method: "PUT", body: { answer } });
    } catch (err) {
      $("correct-error").textContent = err.message;
      return;
    }
    dialog.close();
    toast("수정한 답변을 저장했습니다. 다음 학습에 반영됩니다.");
    shown = "";
    await refresh();
  });
  $("correct-cancel").addEventListener("click", () => dialog.close());

  return refresh;
}
