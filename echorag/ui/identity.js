// Who the page chats as. The session is issued by the server (POST /sessions) and kept in
// localStorage with the user it belongs to; when the server runs with api_keys, the user
// key is asked for once and kept for this tab only (sessionStorage), like the admin token.
// A different user (another key) never sees the previous one's conversation on the page.

import { ApiError, request, setUserKey } from "./api.js";
import { $ } from "./dom.js";

const SESSION_KEY = "echorag.session";
const USER_KEY = "echorag.userKey";

function load() {
  try {
    const value = JSON.parse(localStorage.getItem(SESSION_KEY));
    return value && typeof value.session_id === "string" ? value : null;
  } catch {
    return null;
  }
}

// {session_id, user_id}: user_id is the session's owner (null in open mode).
export const session = load() || { session_id: null, user_id: null };
let me = null;
let onForeign = () => {};

function save() {
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

// -- the user key (api_keys mode) ---------------------------------------------------------

function askForKey(message = "") {
  const dialog = $("key-dialog");
  $("user-key-error").textContent = message;
  if (!dialog.open) dialog.showModal();
  $("user-key").focus();
  return new Promise((resolve) => {
    const form = $("key-form");
    const submit = async (e) => {
      e.preventDefault();
      const candidate = $("user-key").value.trim();
      if (!candidate) return;
      $("user-key-error").textContent = "확인 중…";
      let who;
      try {
        who = await request("me", { token: candidate });
      } catch (err) {
        $("user-key-error").textContent = err.status === 401 ? "사용자 키가 올바르지 않습니다. 다시 입력해 주세요." : err.message;
        $("user-key").select();
        return;
      }
      form.removeEventListener("submit", submit);
      sessionStorage.setItem(USER_KEY, candidate);
      setUserKey(candidate);
      $("user-key").value = "";
      $("user-key-error").textContent = "";
      dialog.close();
      resolve(who);
    };
    form.addEventListener("submit", submit);
  });
}

// The dialog stays until a valid key is given (Esc does not dismiss it).
$("key-dialog").addEventListener("cancel", (e) => e.preventDefault());

// -- the session ----------------------------------------------------------------------------

async function newSession() {
  const issued = await request("sessions", { method: "POST" });
  session.session_id = issued.session_id;
  session.user_id = issued.user_id;
  save();
}

// Forget the session (the server no longer knows it, or it is someone else's).
export async function resetSession() {
  session.session_id = null;
  await newSession();
}

async function establish() {
  const stored = sessionStorage.getItem(USER_KEY);
  setUserKey(stored);
  try {
    me = await request("me");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
    sessionStorage.removeItem(USER_KEY);
    setUserKey(null);
    me = await request("me");
  }
  if (me.key_required && !me.user_id) {
    me = await askForKey(stored ? "저장된 사용자 키가 더 이상 유효하지 않습니다. 새 키를 입력해 주세요." : "");
  }
  const legacy = session.session_id && !session.session_id.startsWith("s-"); // chosen by an older page
  if (session.session_id && !legacy && session.user_id !== (me.user_id || null)) {
    onForeign(); // another user's conversation: not shown to this one
  }
  if (!session.session_id || legacy || session.user_id !== (me.user_id || null)) await newSession();
  return me;
}

let ready = null;

// Resolves once the page knows who it is and holds a session. ``foreign`` clears what the
// page shows when the stored conversation belongs to another user.
export function initIdentity({ foreign }) {
  onForeign = foreign;
  ready = establish().catch((err) => {
    ready = null; // try again on the next message
    throw err;
  });
  return ready;
}

export function whenReady() {
  return ready || initIdentity({ foreign: onForeign });
}

// The key was refused mid-conversation (revoked): ask for a new one.
export async function keyRefused(message) {
  sessionStorage.removeItem(USER_KEY);
  setUserKey(null);
  me = await askForKey(message);
  if (session.user_id !== me.user_id) {
    onForeign();
    await newSession();
  }
}
