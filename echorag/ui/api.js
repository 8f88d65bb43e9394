// HTTP helpers: JSON calls, the SSE stream of /chat/stream, Korean error messages.
// Paths are relative so the page also works under a route prefix.

export class ApiError extends Error {
  constructor(message, status = 0, body = null) {
    super(message);
    this.status = status; // 0: the server could not be reached
    this.body = body;
  }
}

const UNREACHABLE = "서버에 연결할 수 없습니다. 서버가 실행 중인지, 네트워크가 연결되어 있는지 확인해 주세요.";

// The user key (api_keys mode), sent with every call that names no other token.
let userKey = null;
export function setUserKey(key) {
  userKey = key || null;
}

// What a refusal asks the client to do: {auth: "user_key"} (a key), {session: "unknown"} (a new session).
export function errorInfo(err) {
  return (err && err.body && typeof err.body.detail === "object" && err.body.detail) || {};
}

// One Korean sentence per failure, with the server's own reason where it helps.
export function describeError(status, body, headers) {
  const reason = body && typeof body.error === "string" ? body.error : "";
  switch (status) {
    case 401: return body && body.detail && body.detail.auth ? reason : "관리자 토큰이 없거나 올바르지 않습니다.";
    case 403: return "이 작업을 할 권한이 없습니다.";
    case 404: return `찾을 수 없습니다${reason ? ` (${reason})` : ""}.`;
    case 409: return "이미 학습이 진행 중입니다. 지금 학습이 끝나면 새 데이터로 한 번 더 학습합니다.";
    case 413: return `메시지가 너무 깁니다. 더 짧게 나눠서 보내 주세요${reason ? ` (${reason})` : ""}.`;
    case 422: return `요청 내용이 올바르지 않습니다${reason ? `: ${reason}` : "."}`;
    case 429: {
      const wait = headers && headers.get("Retry-After");
      return `요청이 너무 많습니다. ${wait ? `${wait}초 후에` : "잠시 후"} 다시 시도해 주세요.`;
    }
    case 503: return "서버가 일시적으로 요청을 받을 수 없습니다(과부하 또는 준비 중). 잠시 후 다시 시도해 주세요.";
    case 504: return "서버 응답 시간이 초과되었습니다. 잠시 후 다시 시도해 주세요.";
    default:
      if (status >= 500) return `서버 오류가 발생했습니다 (${status}). 잠시 후 다시 시도해 주세요.`;
      return `요청이 거절되었습니다 (${status})${reason ? `: ${reason}` : "."}`;
  }
}

async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: keep the status only */ }
  return new ApiError(describeError(response.status, body, response.headers), response.status, body);
}

export async function request(path, { method = "GET", body, token, signal } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token || userKey) headers["Authorization"] = `Bearer ${token || userKey}`;
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(UNREACHABLE, 0);
  }
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST /chat/stream and call onEvent(name, payload) per server-sent event.
// EventSource cannot POST, so the stream is read from fetch's ReadableStream.
export async function streamChat(body, onEvent, signal) {
  let response;
  try {
    response = await fetch("chat/stream", {
      method: "POST", signal, cache: "no-store",
      headers: {
        "Content-Type": "application/json", "Accept": "text/event-stream",
        ...(userKey ? { Authorization: `Bearer ${userKey}` } : {}),
      },
      body: JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(UNREACHABLE, 0);
  }
  if (!response.ok) throw await failure(response);

  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let finished = false; // a done or error event ends an answer
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("응답을 받는 중 연결이 끊겼습니다. 다시 시도해 주세요.", 0);
    }
    if (chunk.done) break;
    buffer += chunk.value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (!event) continue;
      if (event.name === "done" || event.name === "error") finished = true;
      onEvent(event.name, event.data);
    }
  }
  if (!finished) throw new ApiError("응답이 중간에 끊겼습니다. 다시 시도해 주세요.", 0);
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return null;
  try {
    return { name, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}
