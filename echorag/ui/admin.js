// The admin panel: learning-loop status, live training progress, charts, versions,
// settings, manual runs, data reset and the event log. Everything is polled; nothing
// needs a reload.

import { ApiError, request } from "./api.js";
import { initCorrections } from "./corrections.js";
import { CollectionHistory } from "./collection.js";
import { renderProgress } from "./progress.js";
import {
  $, confirmDialog, fmtShort, fmtTime, h, setBar, setStat, showError, toast,
} from "./dom.js";
import {
  EVENT_LABEL, FILTER_LABEL, SELECTOR_LABEL, STATUS_LABEL, VERSION_LABEL,
} from "./labels.js";

const TOKEN_KEY = "echorag.adminToken";

export function initAdmin({ onVersionChange }) {
  const panel = $("admin-panel");
  const toggleButton = $("admin-toggle");
  let token = sessionStorage.getItem(TOKEN_KEY);
  let timer = null;
  let tick = 0;
  let training = false;
  let settingsDirty = false;
  let lastVersion = null;
  let lastRunKey = null;
  let runs = [];
  const rendered = {}; // JSON of what each section last showed: redraw only on change

  const isOpen = () => !panel.hidden;

  function admin(path, options = {}) {
    return request(path, { ...options, token });
  }

  const refreshTurns = initCorrections(admin);
  const collection = new CollectionHistory(admin);

  // -- open, close, token ------------------------------------------------------------------

  function toggle(open = !isOpen(), { focusBack = true } = {}) {
    panel.hidden = !open;
    document.body.classList.toggle("admin-open", open);
    toggleButton.setAttribute("aria-expanded", String(open));
    if (open) {
      showLoginOrBody();
    } else {
      stopPolling();
      if (focusBack) toggleButton.focus();
    }
  }

  function showLoginOrBody() {
    const authed = Boolean(token);
    $("admin-login").hidden = authed;
    $("admin-body").hidden = !authed;
    $("admin-logout").hidden = !authed;
    if (authed) {
      $("admin-title").focus();
      startPolling();
    } else {
      stopPolling();
      $("admin-token").focus();
    }
  }

  function forgetToken(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    collection.backfilled = false;
    $("admin-login-error").textContent = message || "";
    if (isOpen()) showLoginOrBody();
  }

  $("admin-login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const candidate = $("admin-token").value.trim();
    if (!candidate) return;
    $("admin-login-error").textContent = "확인 중…";
    try {
      // /mlops/events is admin-only and cheap: a valid token reads it.
      await request("mlops/events?limit=1", { token: candidate });
    } catch (err) {
      $("admin-login-error").textContent = err.status === 401
        ? "토큰이 올바르지 않습니다. 다시 입력해 주세요." : err.message;
      $("admin-token").select();
      return;
    }
    token = candidate;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("admin-token").value = "";
    $("admin-login-error").textContent = "";
    showLoginOrBody();
  });

  toggleButton.addEventListener("click", () => toggle());
  $("admin-close").addEventListener("click", () => toggle(false));
  $("admin-logout").addEventListener("click", () => forgetToken("토큰을 지웠습니다."));
  panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !document.querySelector("dialog[open]")) toggle(false);
  });

  // -- polling -----------------------------------------------------------------------------

  function startPolling() {
    stopPolling();
    tick = 0;
    poll();
  }

  function stopPolling() {
    clearTimeout(timer);
    timer = null;
  }

  function schedule() {
    stopPolling();
    if (isOpen() && token) timer = setTimeout(poll, training ? 1000 : 2500);
  }

  async function poll() {
    if (document.hidden) return schedule(); // no requests from a background tab
    try {
      const [status, progress] = await Promise.all([request("mlops/status"), request("mlops/training-progress")]);
      renderStatus(status);
      renderProgress(progress, rendered);
      const runKey = `${progress.run_id}:${progress.status}`;
      const versionChanged = status.models_info.current_version !== lastVersion;
      const every = (n) => tick % n === 0;
      const jobs = [];
      if (versionChanged || runKey !== lastRunKey || every(4)) jobs.push(refreshModels());
      if (runKey !== lastRunKey || every(10)) jobs.push(refreshRuns());
      if (every(2)) jobs.push(refreshEvents());
      if (every(4)) jobs.push(refreshTurns());
      if (!collection.backfilled) jobs.push(collection.backfill(status.collector_stats.total_collected));
      await Promise.all(jobs);
      if (versionChanged && lastVersion !== null) onVersionChange();
      lastVersion = status.models_info.current_version;
      lastRunKey = runKey;
      collection.draw(runs);
      $("admin-live").classList.remove("off");
      $("admin-live").textContent = "실시간";
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        forgetToken("토큰이 더 이상 유효하지 않습니다. 다시 입력해 주세요.");
        return;
      }
      $("admin-live").classList.add("off");
      $("admin-live").textContent = "연결 끊김";
    }
    tick += 1;
    schedule();
  }

  function refreshNow() {
    if (isOpen() && token) startPolling();
  }

  // -- sections ----------------------------------------------------------------------------

  function renderStatus(s) {
    const c = s.collector_stats, t = s.training_status, settings = s.settings;
    training = t.is_training;
    setStat("stat-total", c.total_collected, `${c.total_collected.toLocaleString("ko-KR")}건`);
    setStat("stat-new", c.new_data_count, `${c.new_data_count.toLocaleString("ko-KR")}건`);
    let label = STATUS_LABEL[t.status] || t.status;
    if (t.pending) label += " (후속 학습 대기)";
    if (t.retry_scheduled) label += " (재시도 예정)";
    if (t.stalled) label += " (자동 재시도 중단)";
    setStat("stat-status", t.status, label);
    setStat("stat-version", s.models_info.current_version);
    setStat("stat-batch", settings.batch_size, `${settings.batch_size}건`);
    const remaining = Math.max(settings.batch_size - c.new_data_count, 0);
    const auto = settings.auto_trigger && settings.finetune_enabled;
    setStat("stat-next", remaining, auto ? `${remaining}건` : `${remaining}건 (자동 학습 꺼짐)`);
    setBar("batch-bar", c.new_data_count / settings.batch_size);
    const filtered = Object.entries(c.filtered || {}).map(([k, v]) => `${FILTER_LABEL[k] || k} ${v}`).join(", ");
    $("stat-extra").textContent =
      `👍 좋아요 ${c.liked} · 👎 싫어요 ${c.disliked} · 최근 24시간 ${s.performance_metrics.collected_last_24h}건` +
      (filtered ? ` · 필터: ${filtered}` : "") + (c.collection_enabled ? "" : " · 수집 꺼짐") +
      (s.events_summary.last_error ? ` · 최근 오류: ${s.events_summary.last_error}` : "");

    if (!settingsDirty) {
      $("set-batch").value = settings.batch_size;
      $("set-epochs").value = settings.epochs;
      $("set-auto").checked = settings.auto_trigger;
      $("set-collect").checked = settings.collection_enabled;
    }
    collection.add(Date.now() / 1000, c.total_collected);
    updateEventTypes(Object.keys(s.events_summary.by_type || {}));
  }

  async function refreshRuns() {
    runs = (await request("mlops/training-history?limit=100")).runs;
  }

  async function refreshModels() {
    const models = await request("mlops/models");
    const key = JSON.stringify(models);
    if (rendered.models === key) return;
    rendered.models = key;
    const body = $("versions-body");
    const rows = models.versions.slice().reverse().map((v) => {
      const m = v.metrics || {};
      const loss = (x) => (typeof x === "number" ? x.toFixed(4) : "–");
      const share = (x) => (typeof x === "number" ? x.toFixed(2) : "–");
      let gate = m.candidate_loss !== undefined || m.active_loss !== undefined
        ? `${loss(m.active_loss)} → ${loss(m.candidate_loss)}` : "–";
      if (typeof m.candidate_agreement === "number") {
        gate += ` · ${share(m.active_agreement)} → ${share(m.candidate_agreement)}`;
      }
      const action = v.active ? h("span", { class: "muted" }, "서빙 중")
        : h("button", {
          type: "button", class: "small-btn", "aria-label": `${v.version}(으)로 전환`,
          onclick: () => promote(v.version),
        }, "전환");
      return h("tr", { dataset: { version: v.version, status: v.status }, class: v.active ? "active-row" : "" },
        h("th", { scope: "row" }, v.version, v.active ? h("span", { class: "tag tag-active" }, "현재") : null),
        h("td", {}, VERSION_LABEL[v.status] || v.status),
        h("td", { class: "num", title: m.gate_reason || "" }, gate),
        h("td", { class: "num" }, v.version === "base" ? "–" : String(v.samples)),
        h("td", { class: "col-created" }, v.created_at ? fmtShort(v.created_at) : "–"),
        h("td", {}, action));
    });
    // Keep keyboard focus on the same row's button across a redraw.
    const focused = document.activeElement && body.contains(document.activeElement)
      ? document.activeElement.closest("tr")?.dataset.version : null;
    body.replaceChildren(...rows);
    if (focused) body.querySelector(`tr[data-version="${CSS.escape(focused)}"] button`)?.focus();
    renderSelectors(models.selectors || []);
  }

  function renderSelectors(selectors) {
    const pct = (x) => (typeof x === "number" ? x.toFixed(2) : "–");
    $("selectors-body").replaceChildren(...selectors.slice().reverse().map((s) => {
      const m = s.metrics || {};
      const gate = m.candidate
        ? `${pct(m.active?.hits)} → ${pct(m.candidate.hits)} · ${pct(m.active?.unanswerable_declined)} → ${pct(m.candidate.unanswerable_declined)}`
        : "–";
      const action = s.active ? h("span", { class: "muted" }, "서빙 중")
        : h("button", {
          type: "button", class: "small-btn", "aria-label": `답변 선택기 ${s.version}(으)로 전환`,
          onclick: () => promoteSelector(s.version),
        }, "전환");
      return h("tr", { dataset: { selector: s.version, status: s.status }, class: s.active ? "active-row" : "" },
        h("th", { scope: "row" }, s.version, s.active ? h("span", { class: "tag tag-active" }, "현재") : null),
        h("td", {}, SELECTOR_LABEL[s.status] || s.status),
        h("td", { class: "num", title: m.reason || "" }, gate),
        h("td", { class: "num" }, s.version === "base" ? "–" : String(s.fitted_on?.feedback_questions ?? "–")),
        h("td", { class: "col-created" }, s.created_at ? fmtShort(s.created_at) : "–"),
        h("td", {}, action));
    }));
  }

  function promoteSelector(version) {
    return act(async () => {
      const r = await admin("mlops/selector/promote", { method: "POST", body: { version } });
      toast(`답변 선택기를 ${r.selector}(으)로 전환했습니다.`);
      rendered.models = null;
      await refreshModels();
    }, `답변 선택기 ${version}(으)로 전환하지 못했습니다`);
  }

  async function refreshEvents() {
    const type = $("event-filter").value;
    const query = `mlops/events?limit=100${type ? `&event_type=${encodeURIComponent(type)}` : ""}`;
    const { events } = await admin(query);
    if ($("event-filter").value !== type) return; // the filter changed meanwhile: a newer call draws
    const key = JSON.stringify([type, events.map((e) => e.id)]);
    if (rendered.events === key) return;
    rendered.events = key;
    updateEventTypes(events.map((e) => e.type));
    const list = $("events-list");
    list.replaceChildren(...events.map((e) => h("li", { dataset: { type: e.type } },
      h("time", { datetime: new Date(e.created_at * 1000).toISOString() }, fmtTime(e.created_at)),
      h("span", { class: `tag tag-event tag-${e.type}` }, EVENT_LABEL[e.type] || e.type),
      h("span", { class: "event-message" }, e.message))));
    if (!events.length) list.append(h("li", { class: "muted" }, "이벤트가 없습니다."));
  }

  function updateEventTypes(types) {
    const select = $("event-filter");
    const known = new Set(Array.from(select.options, (o) => o.value));
    for (const type of [...Object.keys(EVENT_LABEL), ...types]) {
      if (known.has(type)) continue;
      known.add(type);
      select.append(h("option", { value: type }, `${EVENT_LABEL[type] || type} (${type})`));
    }
  }

  $("event-filter").addEventListener("change", async () => {
    try {
      await refreshEvents();
    } catch (err) {
      showError(`이벤트를 불러오지 못했습니다: ${err.message}`);
    }
  });

  // -- actions -----------------------------------------------------------------------------

  async function act(work, failurePrefix) {
    try {
      await work();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) forgetToken("토큰이 더 이상 유효하지 않습니다. 다시 입력해 주세요.");
      showError(`${failurePrefix}: ${err.message}`);
    }
    refreshNow();
  }

  $("settings-form").addEventListener("input", () => { settingsDirty = true; });
  $("settings-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const update = {
      batch_size: Number($("set-batch").value),
      epochs: Number($("set-epochs").value),
      auto_trigger: $("set-auto").checked,
      collection_enabled: $("set-collect").checked,
    };
    act(async () => {
      const saved = await admin("mlops/settings", { method: "POST", body: update });
      settingsDirty = false;
      toast(`설정을 저장했습니다: 배치 크기 ${saved.batch_size}, 에폭 ${saved.epochs}, 자동 학습 ${saved.auto_trigger ? "켜짐" : "꺼짐"}, 수집 ${saved.collection_enabled ? "켜짐" : "꺼짐"}`);
    }, "설정을 저장하지 못했습니다");
  });

  function requireToken() {
    if (token) return true;
    toggle(true);
    toast("관리자 토큰을 먼저 입력해 주세요.");
    return false;
  }

  function finetune() {
    if (!requireToken()) return;
    if (!isOpen()) toggle(true);
    const body = { force: $("ft-force").checked, backup_existing: $("ft-backup").checked };
    return act(async () => {
      try {
        const r = await admin("mlops/finetune", { method: "POST", body });
        toast(r.started
          ? `미세조정을 시작했습니다: 실행 #${r.run_id}, 대화 ${r.to_seq - r.from_seq}건`
          : `미세조정을 시작하지 않았습니다: 학습할 새 데이터가 없거나 배치 크기에 못 미칩니다 (${r.message}).`);
      } catch (err) {
        if (err.status === 409) { toast(err.message); return; } // a follow-up run is queued: not a failure
        throw err;
      }
    }, "미세조정을 시작하지 못했습니다");
  }

  async function resetData() {
    if (!requireToken()) return;
    const total = $("stat-total").dataset.value;
    const ok = await confirmDialog(
      "대화 데이터 초기화",
      `수집된 대화${total ? ` ${total}건` : ""}을 서버의 backups/ 폴더에 백업한 뒤 모두 삭제합니다. 아직 학습하지 않은 대화도 사라집니다. 계속할까요?`,
      "백업 후 삭제");
    if (!ok) { toast("초기화를 취소했습니다."); return; }
    await act(async () => {
      const r = await admin("mlops/conversations?backup=true", { method: "DELETE" });
      collection.reset();
      toast(`대화 ${r.deleted}건을 삭제했습니다.${r.backup_path ? ` 백업: ${r.backup_path}` : ""}`);
    }, "대화 데이터를 초기화하지 못했습니다");
  }

  function promote(version) {
    return act(async () => {
      const r = await admin("mlops/promote", { method: "POST", body: { version } });
      toast(`${r.active}(으)로 전환했습니다 (이전: ${r.previous}).`);
      onVersionChange();
    }, `${version}(으)로 전환하지 못했습니다`);
  }

  $("rollback-button").addEventListener("click", () => act(async () => {
    const r = await admin("mlops/rollback", { method: "POST", body: {} });
    toast(`롤백했습니다: ${r.previous} → ${r.active}`);
    onVersionChange();
  }, "롤백하지 못했습니다"));
  $("finetune-button").addEventListener("click", finetune);
  $("reset-button").addEventListener("click", resetData);

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshNow(); });

  return { toggle: (open) => toggle(open, { focusBack: false }), finetune, resetData, isOpen };
}
