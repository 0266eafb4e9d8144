// Talking to the server: JSON in and out, errors as exceptions with the server's message,
// long jobs followed over server-sent events.

export class ApiError extends Error {}

async function parse(response) {
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new ApiError(body.error || `HTTP ${response.status}`);
  return body;
}

export const getJSON = (url) => fetch(url).then(parse);

export const postJSON = (url, data) =>
  fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(data),
  }).then(parse);

export function upload(url, file) {
  const form = new FormData();
  form.append("file", file);
  return fetch(url, { method: "POST", body: form }).then(parse);
}

// Start a job (POST), report its progress, resolve with its result.
export async function runJob(url, params, onProgress = () => {}) {
  const job = await postJSON(url, params);
  onProgress(job);
  if (job.status !== "done" && job.status !== "error") {
    await new Promise((resolve) => {
      const events = new EventSource(`/api/jobs/${job.id}/events`);
      events.onmessage = (e) => {
        const snap = JSON.parse(e.data);
        onProgress(snap);
        if (snap.status === "done" || snap.status === "error") { events.close(); resolve(); }
      };
      events.onerror = () => { events.close(); resolve(); };
    });
  }
  const final = await getJSON(`/api/jobs/${job.id}`);
  if (final.status === "error") throw new ApiError(final.error);
  return final.result;
}

// A progress bar element bound to job snapshots.
export function progressBar() {
  const el = document.createElement("div");
  el.className = "progress";
  el.innerHTML = '<div class="bar"><span></span></div><small></small>';
  el.update = (snap) => {
    const frac = snap.total ? snap.done / snap.total : 0;
    el.querySelector("span").style.width = `${Math.round(frac * 100)}%`;
    el.querySelector("small").textContent = snap.status === "done" ? "" : snap.message;
    el.hidden = snap.status === "done";
  };
  return el;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

export const fmt = (n) =>
  n >= 1e9 ? `${(n / 1e9).toFixed(2)}G` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M`
    : n >= 1e4 ? `${(n / 1e3).toFixed(1)}k` : String(n);
