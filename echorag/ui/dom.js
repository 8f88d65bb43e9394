// DOM helpers shared by the chat and the admin panel. Server text is only ever set as
// textContent, never parsed as HTML.

export const $ = (id) => document.getElementById(id);

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

let toastTimer = null;
export function toast(message) {
  const box = $("toast");
  box.textContent = message;
  box.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => box.classList.remove("show"), 4000);
}

export function showError(message) {
  $("error-text").textContent = message;
  $("error-banner").hidden = false;
}

export function clearError() {
  $("error-banner").hidden = true;
  $("error-text").textContent = "";
}

// A modal yes/no question; resolves true only on an explicit "확인".
export function confirmDialog(title, text, okLabel = "확인") {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "cancel";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

export function openDialog(id) {
  const dialog = $(id);
  if (!dialog.open) dialog.showModal();
  return dialog;
}

export function anyDialogOpen() {
  return Boolean(document.querySelector("dialog[open]"));
}

export const fmtTime = (ts) => new Date(ts * 1000).toLocaleString("ko-KR", { hour12: false });
export const fmtShort = (ts) => new Date(ts * 1000).toLocaleString("ko-KR", {
  month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit", hour12: false,
});
export const fmtClock = (ts) => new Date(ts * 1000).toLocaleTimeString("ko-KR", { hour12: false });

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds}초`;
  const m = Math.floor(seconds / 60), s = seconds % 60;
  if (m < 60) return `${m}분 ${s}초`;
  return `${Math.floor(m / 60)}시간 ${m % 60}분`;
}

// Download text as a file (Blob + object URL: works offline, no server round trip).
export function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = h("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// A stat's value (data-value, for tests) and its text; a progress bar's fraction.
export function setStat(id, value, text = String(value)) {
  const node = $(id);
  node.dataset.value = String(value);
  node.textContent = text;
}

export function setBar(id, fraction) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  const bar = $(id);
  bar.setAttribute("aria-valuenow", String(pct));
  bar.setAttribute("aria-valuetext", `${pct}%`);
  bar.firstElementChild.style.width = `${pct}%`;
}
