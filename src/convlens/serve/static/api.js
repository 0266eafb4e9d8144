// Talking to the server: JSON in and out, errors as exceptions carrying the server's own sentence,
// long jobs followed over server-sent events and cancelled (DELETE /api/jobs/{id}) when their view
// is left or their cancel button is pressed.

export class ApiError extends Error {}
// A job or request given up on purpose (the view was left, or the user cancelled): never a banner.
export class Cancelled extends Error {}

async function parse(response) {
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    const said = body && typeof body.error === "string" && body.error.trim();
    throw new ApiError(said || `the server answered ${response.status} ${response.statusText || ""}`.trim());
  }
  return body;
}

function request(url, init = {}, signal = undefined) {
  return fetch(url, { ...init, signal }).then(parse, (e) => {
    if (e.name === "AbortError") throw new Cancelled("cancelled");
    throw new ApiError(`cannot reach the server (${e.message})`);
  });
}

export const getJSON = (url, signal) => request(url, {}, signal);

export const postJSON = (url, data, signal) =>
  request(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(data),
  }, signal);

export function upload(url, file, signal) {
  const form = new FormData();
  form.append("file", file);
  return request(url, { method: "POST", body: form }, signal);
}

export function cancelJob(id) {
  // Best effort: a job that already finished answers 404 or 409, which is fine.
  return fetch(`/api/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(() => {});
}

// Start a job (POST), report its progress, resolve with its result. `signal` (an AbortSignal)
// cancels it: the server is told (DELETE) and the promise rejects with Cancelled.
export async function runJob(url, params, onProgress = () => {}, signal = undefined) {
  // The POST itself is not aborted: the server would start the job anyway, and only its id lets
  // the page cancel it.
  const job = await postJSON(url, params);
  if (signal?.aborted && !["done", "error", "cancelled"].includes(job.status)) {
    cancelJob(job.id);
    throw new Cancelled("cancelled");
  }
  onProgress(job);
  const finished = (s) => s === "done" || s === "error" || s === "cancelled";
  if (!finished(job.status)) {
    await new Promise((resolve, reject) => {
      const events = new EventSource(`/api/jobs/${job.id}/events`);
      const stop = () => {
        events.close();
        cancelJob(job.id);
        reject(new Cancelled("cancelled"));
      };
      if (signal) {
        if (signal.aborted) return stop();
        signal.addEventListener("abort", stop, { once: true });
      }
      events.onmessage = (e) => {
        const snap = JSON.parse(e.data);
        onProgress(snap);
        if (finished(snap.status)) { events.close(); resolve(); }
      };
      events.onerror = () => { events.close(); resolve(); };
    });
  }
  const final = await getJSON(`/api/jobs/${job.id}`, signal);
  if (final.status === "cancelled") throw new Cancelled("cancelled");
  if (final.status === "error") throw new ApiError(final.error || "the job failed");
  return final.result;
}

// A progress bar bound to job snapshots, with a cancel button (`onCancel`) while a job runs.
export function progressBar(onCancel = null) {
  const node = document.createElement("div");
  node.className = "progress";
  node.innerHTML = '<div class="bar"><span></span></div><small></small>';
  const small = node.querySelector("small");
  let button = null;
  if (onCancel) {
    button = el("button", { class: "cancel", type: "button", onclick: () => onCancel() }, "cancel");
    node.append(button);
  }
  node.update = (snap) => {
    const frac = snap.total ? snap.done / snap.total : 0;
    node.querySelector("span").style.width = `${Math.round(frac * 100)}%`;
    small.textContent = snap.status === "done" ? "" : (snap.message || "working");
    node.hidden = snap.status === "done";
  };
  return node;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== undefined && c !== null && c !== false) node.append(c);
  return node;
}

export const fmt = (n) => {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)}G` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M`
    : n >= 1e4 ? `${(n / 1e3).toFixed(1)}k` : String(n);
};

// A real number for people: 4 significant digits, no "-0".
export const num = (x) => {
  if (typeof x !== "number" || !Number.isFinite(x)) return "–";
  if (x === 0 || Object.is(x, -0)) return "0";
  const a = Math.abs(x);
  return a >= 1e4 || a < 1e-3 ? x.toExponential(2) : String(+x.toPrecision(4));
};

export const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

// Shapes are written C×H×W everywhere.
export const shape = (s) => (Array.isArray(s) ? s.join("×") : "–");
