// Talking to the clawpen API: the token lives in sessionStorage (gone when the tab closes) and
// travels as `Authorization: Bearer`, never in a URL. Live streams are read with fetch(), not
// EventSource, because EventSource cannot send that header.
const KEY = "clawpen.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.hint = body && body.hint;
  }
}

function headers(extra) {
  return { Authorization: `Bearer ${token.get() || ""}`, ...extra };
}

async function answer(res) {
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  if (!res.ok) {
    if (res.status === 401) window.dispatchEvent(new CustomEvent("clawpen:signedout"));
    throw new ApiError(res.status, body);
  }
  return body;
}

export async function get(path) {
  return answer(await fetch(`/api/v1${path}`, { headers: headers() }));
}

export async function post(path, body) {
  return answer(await fetch(`/api/v1${path}`, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body || {}),
  }));
}

// Optional parts (metrics, alerts, egress log) answer 404 when the daemon lacks them.
export async function optional(path) {
  try { return await get(path); } catch (e) { if (e.status === 404) return null; throw e; }
}

// Server-sent events over fetch: calls onEvent(kind, data) until the signal aborts.
export async function stream(path, onEvent, signal) {
  const res = await fetch(`/api/v1${path}`, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!res.ok) return answer(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
    }
  }
}
