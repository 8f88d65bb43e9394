// The chat page: streamed answers with their sources, feedback, session kept across
// reloads, keyboard shortcuts. The admin panel lives in admin.js.

import { ApiError, errorInfo, request, streamChat } from "./api.js";
import { initAdmin } from "./admin.js";
import { COLLECTION_LABEL, exportJson, exportMarkdown } from "./export.js";
import { initIdentity, keyRefused, resetSession, session, whenReady } from "./identity.js";
import {
  $, anyDialogOpen, clearError, fmtTime, h, openDialog, showError, toast,
} from "./dom.js";

const HISTORY_KEY = "echorag.history";
const HISTORY_MAX = 300; // entries kept in localStorage

const STAGES = [
  ["memory", "기억"], ["embedding", "임베딩"], ["retrieval", "검색"],
  ["generation", "생성"], ["collection", "수집"],
];

// -- history (localStorage; the session is identity.js's) -------------------------------

function loadJson(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value ?? fallback;
  } catch {
    return fallback;
  }
}

let history = loadJson(HISTORY_KEY, []);
if (!Array.isArray(history)) history = [];

function saveHistory() {
  history = history.slice(-HISTORY_MAX);
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(history));
  } catch {
    toast("브라우저 저장 공간이 부족해 대화 기록을 저장하지 못했습니다.");
  }
}

// -- rendering -------------------------------------------------------------------------

const messages = $("messages");
const input = $("chat-input");

function ms(seconds) {
  return seconds >= 1 ? `${seconds.toFixed(2)}초` : `${Math.round(seconds * 1000)}ms`;
}

function renderSources(results) {
  if (!results || !results.length) return h("p", { class: "muted small" }, "참고한 문서가 없습니다.");
  const items = results.map((r) => {
    const title = (r.metadata && (r.metadata.title || r.metadata.doc_id)) || r.id;
    return h("li", { class: "source", dataset: { collection: r.collection, id: r.id } },
      h("div", { class: "source-head" },
        h("span", { class: `tag tag-${r.collection}` }, COLLECTION_LABEL[r.collection] || r.collection),
        h("strong", {}, title),
        h("span", { class: "score", title: "검색 점수" }, `점수 ${Number(r.score).toFixed(3)}`)),
      h("p", { class: "source-text" }, r.text));
  });
  return h("details", { class: "sources" },
    h("summary", {}, `근거 ${results.length}개 보기`),
    h("ol", {}, items));
}

function renderTiming(timing) {
  if (!timing) return null;
  const parts = STAGES.filter(([k]) => timing[k] !== undefined).map(([k, label]) => `${label} ${ms(timing[k])}`);
  return h("p", { class: "timing", title: "단계별 처리 시간" }, `처리 시간 ${ms(timing.total || 0)} — ${parts.join(" · ")}`);
}

function renderFeedback(entry) {
  const canRate = Boolean(entry.turn_id && entry.collected);
  const why = canRate ? undefined : "수집되지 않은 답변(중복, 필터, 수집 꺼짐)은 평가할 수 없습니다";
  const button = (value, emoji, label) => h("button", {
    type: "button", class: "fb", "aria-label": label, title: why || label,
    "aria-pressed": String(entry.feedback === value), disabled: !canRate,
    dataset: { rating: String(value) },
    onclick: () => sendFeedback(entry, value),
  }, emoji, h("span", { class: "fb-label" }, label));
  return h("div", { class: "feedback", role: "group", "aria-label": "답변 평가" },
    button(1, "👍", "좋아요"), button(-1, "👎", "싫어요"));
}

function renderEntry(entry) {
  if (entry.role === "system") {
    return h("p", { class: "msg-system", dataset: { role: "system" } }, entry.text);
  }
  if (entry.role === "user") {
    return h("article", { class: "msg msg-user", dataset: { role: "user" }, "aria-label": "내 메시지" },
      h("div", { class: "msg-body" }, entry.text));
  }
  const node = h("article", {
    class: "msg msg-assistant", "aria-label": "EchoRAG 답변",
    dataset: { role: "assistant", state: entry.state || "done", turnId: entry.turn_id || "", tokens: String(entry.tokens || 0) },
  });
  fillAssistant(node, entry);
  return node;
}

function fillAssistant(node, entry) {
  const meta = [entry.adapter_version && `어댑터 ${entry.adapter_version}`, entry.at && fmtTime(entry.at)]
    .filter(Boolean).join(" · ");
  // A reply to a greeting or thanks: no documents, no turn to rate, nothing to time.
  const smallTalk = entry.state === "done" && !entry.turn_id && !entry.error && !(entry.sources || []).length;
  node.replaceChildren(...[
    h("div", { class: "msg-head" }, h("span", { class: "who" }, "EchoRAG"), meta && h("span", { class: "muted" }, meta)),
    h("div", { class: "msg-body" }, entry.text || ""),
    entry.error && h("p", { class: "msg-error", role: "alert" }, entry.error),
    !smallTalk && entry.sources && renderSources(entry.sources),
    !smallTalk && entry.state !== "streaming" && renderTiming(entry.timing),
    !smallTalk && entry.state === "done" && renderFeedback(entry),
  ].filter(Boolean));
  node.dataset.state = entry.state || "done";
  node.dataset.turnId = entry.turn_id || "";
  node.dataset.tokens = String(entry.tokens || 0);
  node.setAttribute("aria-busy", String(entry.state === "streaming"));
}

function nearBottom() {
  return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 120;
}

function scrollDown(force = false) {
  if (force || nearBottom()) messages.scrollTop = messages.scrollHeight;
}

function append(entry) {
  $("empty-hint").hidden = true;
  const node = renderEntry(entry);
  messages.append(node);
  scrollDown(true);
  return node;
}

function renderHistory() {
  for (const entry of history) {
    // A reload in the middle of an answer: keep what arrived, say it stopped.
    if (entry.state === "streaming") {
      entry.state = "error";
      entry.error = entry.error || "페이지를 새로 고쳐 답변이 중단되었습니다.";
    }
    append(entry);
  }
}

// -- sending ---------------------------------------------------------------------------

let streaming = null; // {controller} while an answer streams

function setStreaming(on) {
  $("send-button").hidden = on;
  $("stop-button").hidden = !on;
  input.setAttribute("aria-busy", String(on));
}

async function send() {
  const text = input.value.trim();
  if (!text || streaming) return;
  clearError();
  input.value = "";
  const userEntry = { role: "user", text, at: Date.now() / 1000 };
  history.push(userEntry);
  append(userEntry);

  const entry = { role: "assistant", text: "", state: "streaming", tokens: 0, at: Date.now() / 1000 };
  history.push(entry);
  const node = append(entry);
  const controller = new AbortController();
  streaming = { controller };
  setStreaming(true);

  const onEvent = (name, data) => {
    if (name === "sources") {
      entry.sources = data.search_results;
      entry.adapter_version = data.adapter_version;
      entry.model = data.model;
      fillAssistant(node, entry);
    } else if (name === "token") {
      entry.text += data.text;
      entry.tokens += 1;
      node.dataset.tokens = String(entry.tokens);
      node.querySelector(".msg-body").textContent = entry.text;
      scrollDown();
    } else if (name === "done") {
      const r = data.response;
      Object.assign(entry, {
        text: r.response, sources: r.search_results, timing: r.timing, turn_id: r.turn_id, session_id: r.session_id,
        collected: r.mlops_info.collected, adapter_version: r.adapter_version, model: r.model, state: "done",
      });
      if (r.mlops_info.training_queued) toast("새 대화가 쌓여 모델 학습이 예약되었습니다.");
    } else if (name === "error") {
      entry.state = "error";
      entry.error = data.error || "답변을 생성하지 못했습니다.";
    }
  };

  try {
    await chatInSession(text, onEvent, controller.signal);
    if (entry.state === "error") showError(entry.error);
  } catch (err) {
    entry.state = "error";
    if (err.name === "AbortError") {
      entry.error = "답변 생성을 중지했습니다.";
    } else {
      entry.error = err instanceof ApiError ? err.message : "알 수 없는 오류가 발생했습니다.";
      showError(entry.error);
    }
  } finally {
    streaming = null;
    setStreaming(false);
    fillAssistant(node, entry);
    saveHistory();
    scrollDown();
    input.focus();
  }
}

// One answer in this page's session: a session the server no longer knows is replaced
// once; a refused user key asks for a new one.
async function chatInSession(text, onEvent, signal) {
  await whenReady();
  const body = () => ({ message: text, session_id: session.session_id });
  try {
    await streamChat(body(), onEvent, signal);
  } catch (err) {
    const info = errorInfo(err);
    if (info.session === "unknown") {
      await resetSession();
      return streamChat(body(), onEvent, signal);
    }
    if (info.auth === "user_key") keyRefused(err.message);
    throw err;
  }
}

// Another user's conversation is never shown: the page forgets it.
function forgetConversation() {
  history = [];
  saveHistory();
  for (const node of messages.querySelectorAll("[data-role]")) node.remove();
  $("empty-hint").hidden = false;
}

function stop() {
  if (streaming) streaming.controller.abort();
}

async function sendFeedback(entry, value) {
  const rating = entry.feedback === value ? 0 : value; // pressing again clears it
  try {
    const body = { turn_id: entry.turn_id, rating, session_id: entry.session_id || session.session_id };
    const result = await request("feedback", { method: "POST", body });
    entry.feedback = result.rating;
    saveHistory();
    const node = messages.querySelector(`[data-turn-id="${CSS.escape(entry.turn_id)}"]`);
    if (node) {
      for (const b of node.querySelectorAll(".fb")) b.setAttribute("aria-pressed", String(Number(b.dataset.rating) === entry.feedback));
    }
    toast(entry.feedback === 1 ? "👍 평가를 저장했습니다." : entry.feedback === -1 ? "👎 평가를 저장했습니다. 이 답변은 학습에서 빠집니다." : "평가를 취소했습니다.");
  } catch (err) {
    showError(`평가를 저장하지 못했습니다: ${err.message}`);
  }
}

// -- memory, export --------------------------------------------------------------------

const memoryPath = () => `memory?session_id=${encodeURIComponent(session.session_id)}`;

async function clearMemory() {
  try {
    await whenReady();
    await request(memoryPath(), { method: "DELETE" });
  } catch (err) {
    showError(`기억을 지우지 못했습니다: ${err.message}`);
    return;
  }
  const entry = { role: "system", text: "— 이 세션의 대화 기억을 지웠습니다. 이후 답변은 앞의 대화를 참고하지 않습니다. —", at: Date.now() / 1000 };
  history.push(entry);
  append(entry);
  saveHistory();
  toast("대화 기억을 지웠습니다.");
  if ($("memory-dialog").open) showMemory();
}

async function showMemory() {
  let memory;
  try {
    await whenReady();
    memory = await request(memoryPath());
  } catch (err) {
    showError(`기억 상태를 불러오지 못했습니다: ${err.message}`);
    return;
  }
  $("memory-summary").textContent =
    `세션 ${memory.session_id}: 최근 대화 ${memory.turns.length}개를 기억하고 있습니다 (최대 ${memory.max_turns}개).`;
  $("memory-list").replaceChildren(...memory.turns.map((t) =>
    h("li", {}, h("p", {}, h("strong", {}, "사용자: "), t.user), h("p", {}, h("strong", {}, "EchoRAG: "), t.assistant))));
  openDialog("memory-dialog");
}

// -- health ----------------------------------------------------------------------------

let healthFailed = false;

async function refreshHealth() {
  const badge = $("model-badge");
  try {
    const health = await request("health");
    badge.textContent = `${health.model} · 어댑터 ${health.adapter_version}`;
    badge.classList.toggle("warn", health.status !== "ok");
    if (health.status !== "ok") badge.textContent += " · 검색 저장소 점검 필요";
    $("demo-banner").hidden = !health.demo_model;
    $("extractive-banner").hidden = health.model_kind !== "extractive";
    if (healthFailed) clearError();
    healthFailed = false;
  } catch (err) {
    badge.textContent = "서버 연결 안 됨";
    badge.classList.add("warn");
    if (!healthFailed) showError(err.message);
    healthFailed = true;
  }
}

// -- keyboard --------------------------------------------------------------------------

const admin = initAdmin({ onVersionChange: refreshHealth });

function isEditable(node) {
  return node && (node.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(node.tagName));
}

input.addEventListener("keydown", (e) => {
  // Enter sends; Shift+Enter is a new line; never while a Korean IME is composing.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    send();
  }
});

document.addEventListener("keydown", (e) => {
  if (e.isComposing) return;
  if (anyDialogOpen()) return; // dialogs handle their own keys (Esc closes)
  const ctrl = e.ctrlKey || e.metaKey;
  const code = e.code; // layout-independent: works with the Korean keyboard layout too
  let action = null;

  if (e.key === "Escape" && streaming) action = stop;
  else if (e.key === "?" && !ctrl && !e.altKey && !isEditable(e.target)) action = () => openDialog("help-dialog");
  else if (ctrl && !e.altKey && !e.shiftKey) {
    if (code === "KeyK") action = clearMemory;
    else if (code === "KeyM") action = showMemory;
    else if (code === "KeyE") action = () => openDialog("export-dialog");
    else if (code === "KeyD") action = admin.resetData;
    else if (code === "KeyT") action = admin.finetune; // only where the browser lets a page have it
    else if (code === "KeyA") {
      // Select-all stays where there is text to select.
      const t = e.target;
      const hasText = isEditable(t) && (t !== input || input.value.length > 0);
      if (!hasText) action = () => { admin.toggle(); if (!admin.isOpen()) input.focus(); };
    }
  } else if ((ctrl && e.shiftKey && !e.altKey && code === "KeyF") || (e.altKey && !ctrl && !e.shiftKey && code === "KeyT")) {
    action = admin.finetune; // Chromium keeps Ctrl+T for a new tab
  }
  if (action) {
    e.preventDefault();
    action();
  }
});

// -- wiring ----------------------------------------------------------------------------

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("stop-button").addEventListener("click", stop);
$("error-close").addEventListener("click", clearError);
$("help-button").addEventListener("click", () => openDialog("help-dialog"));
$("export-button").addEventListener("click", () => openDialog("export-dialog"));
$("export-json").addEventListener("click", () => exportJson(history, session));
$("export-md").addEventListener("click", () => exportMarkdown(history, session));
$("memory-clear").addEventListener("click", clearMemory);

// The stored conversation is shown once the page knows it is this user's.
initIdentity({ foreign: forgetConversation })
  .then(renderHistory, (err) => {
    if (!session.user_id) renderHistory(); // open mode: this browser's own
    showError(err.message);
  });
refreshHealth();
setInterval(refreshHealth, 30000);
input.focus();
