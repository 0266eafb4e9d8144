// The page: a subject picker and five views, one module per view, each exporting `render(root, ctx)`.
// Everything a person chose lives in the URL's hash, `#VIEW?subject=S&layer=L&channel=C&image=I`,
// so links name a unit, a reload keeps the subject and back/forward walk through the choices.
// Navigation is guarded by a generation number: each render gets its own root, attached only while
// it is the newest, and an AbortSignal that cancels its requests and jobs when it is left.
import { getJSON, el, Cancelled } from "./api.js";
import * as network from "./views/network.js";
import * as layer from "./views/layer.js";
import * as image from "./views/image.js";
import * as embedding from "./views/embedding.js";
import * as arithmetic from "./views/arithmetic.js";

const VIEWS = { network, layer, image, embedding, arithmetic };
const KEYS = ["subject", "layer", "channel", "image", "row", "col", "objective", "colour"];
const picker = document.getElementById("subject");
const pickerNote = document.getElementById("subject-note");
const root = document.getElementById("view");
const errorBox = document.getElementById("error");

export function showError(message) {
  const text = typeof message === "string" ? message : message?.message || "";
  errorBox.replaceChildren();
  if (text) {
    errorBox.append(el("span", {}, text),
      el("button", { type: "button", class: "close", "aria-label": "dismiss", onclick: () => showError("") }, "×"));
  }
  errorBox.hidden = !text;
}

// The hash as {view, params}; the old form `#layer/NAME` still opens that layer.
export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#/, "");
  const [head, query = ""] = raw.split("?");
  const [view, ...rest] = head.split("/");
  const params = Object.fromEntries(new URLSearchParams(query));
  if (rest.length && !params.layer) params.layer = decodeURIComponent(rest.join("/"));
  return { view: VIEWS[view] ? view : "network", params };
}

export function hashOf(view, params) {
  const q = new URLSearchParams();
  for (const k of KEYS) if (params[k] !== undefined && params[k] !== null && params[k] !== "") q.set(k, params[k]);
  const s = q.toString();
  return `#${view}${s ? `?${s}` : ""}`;
}

let subjects = [];
const infoCache = new Map(), netCache = new Map();
let generation = 0, controller = null, rendered = null;

const usable = (s) => (s.status ?? "ok") === "ok";

async function subjectInfo(name) {
  if (!infoCache.has(name)) {
    infoCache.set(name, getJSON(`/api/subjects/${encodeURIComponent(name)}`).catch((e) => {
      infoCache.delete(name);
      throw e;
    }));
  }
  const listed = subjects.find((s) => s.name === name) || {};
  return { ...listed, ...(await infoCache.get(name)) };
}

function subjectNetwork(name) {
  if (!netCache.has(name)) {
    netCache.set(name, getJSON(`/api/subjects/${encodeURIComponent(name)}/network`).catch((e) => {
      netCache.delete(name);
      throw e;
    }));
  }
  return netCache.get(name);
}

// The default layer is the server's (GET /api/subjects/{name} -> defaults); never re-derived here.
export function defaultLayer(info, net) {
  const d = info?.defaults || {};
  return d.layer ?? d.default_layer ?? net?.default_layer ?? null;
}

function navigate(view, params, { push = true } = {}) {
  const hash = hashOf(view, params);
  if (hash !== location.hash) history[push ? "pushState" : "replaceState"](null, "", hash);
  route();
}

// A view records a choice (an image, a unit) in the URL without rendering again.
function setParams(view, changes, { push = true } = {}) {
  const { params } = parseHash();
  const next = { ...params, ...changes };
  for (const [k, v] of Object.entries(changes)) if (v === undefined || v === null) delete next[k];
  const hash = hashOf(view, next);
  if (hash === location.hash) return;
  history[push ? "pushState" : "replaceState"](null, "", hash);
  rendered = location.hash;
}

async function route() {
  const mine = ++generation;
  if (controller) controller.abort();  // the view being left: its requests and jobs stop
  controller = new AbortController();
  const signal = controller.signal;
  const { view, params } = parseHash();
  const alive = () => mine === generation;
  for (const a of document.querySelectorAll("#tabs a")) {
    a.classList.toggle("active", a.dataset.view === view);
    a.setAttribute("aria-current", a.dataset.view === view ? "page" : "false");
  }
  showError("");
  const mount = el("div", { class: "viewroot", "data-view": view });
  root.replaceChildren(mount);
  rendered = location.hash;

  // The subject: the URL's when it is a good one, else the first good one.
  const good = subjects.filter(usable);
  let subject = params.subject;
  const named = subjects.find((s) => s.name === subject);
  if (subject && !named) showError(`no subject called ${subject}; showing ${good[0]?.name ?? "nothing"}`);
  else if (named && !usable(named)) showError(`${subject} cannot be opened: ${named.reason || named.status}`);
  if (!named || !usable(named)) subject = good[0]?.name;
  if (subject && subject !== params.subject) {
    params.subject = subject;
    history.replaceState(null, "", hashOf(view, params));
    rendered = location.hash;
  }
  picker.value = subject ?? "";
  for (const a of document.querySelectorAll("#tabs a")) {
    a.href = hashOf(a.dataset.view, { subject });
  }

  const ctx = {
    subject, params, signal, alive, showError: (m) => { if (alive()) showError(m); },
    view,
    setParams: (changes, opts) => { if (alive()) setParams(view, changes, opts); },
    go: (v, p) => navigate(v, { subject, ...p }),
    network: () => subjectNetwork(subject),
    defaultLayer,
  };
  try {
    if (view !== "arithmetic") {
      if (!subject) {
        mount.append(el("p", { class: "note empty" }, subjects.length
          ? "None of the subjects can be opened; the list above says why."
          : "No subjects are served."));
        return;
      }
      ctx.info = await subjectInfo(subject);
      if (!alive()) return;
      // The layer kept valid across subjects: one this subject lacks falls back to its default.
      if (params.layer) {
        const net = await ctx.network();
        if (!alive()) return;
        if (!net.layers.some((r) => r.name === params.layer)) {
          const fallback = defaultLayer(ctx.info, net);
          const note = `${subject} has no layer ${params.layer}` + (fallback ? `; showing ${fallback}` : "");
          delete params.channel; delete params.row; delete params.col;
          if (fallback) params.layer = fallback; else delete params.layer;
          history.replaceState(null, "", hashOf(view, params));
          rendered = location.hash;
          showError(note);
        }
      }
    }
    await VIEWS[view].render(mount, ctx);
  } catch (e) {
    if (e instanceof Cancelled || !alive()) return;
    showError(e.message || String(e));
  }
}

function fillPicker() {
  picker.replaceChildren();
  for (const s of subjects) {
    const ok = usable(s);
    const what = s.model ? ` (${s.model})` : "";
    const text = ok ? `${s.name}${what}` : `${s.name}: ${s.status || "broken"}${s.reason ? `: ${s.reason}` : ""}`;
    const opt = new Option(text, s.name);
    opt.disabled = !ok;
    opt.className = ok ? "ok" : "unusable";
    if (!ok) opt.title = s.reason || s.status;
    picker.append(opt);
  }
  const bad = subjects.filter((s) => !usable(s));
  pickerNote.replaceChildren();
  if (bad.length) {
    const list = el("ul", { class: "unusable-list" }, ...bad.map((s) =>
      el("li", { "data-subject": s.name }, el("b", {}, s.name), ` ${s.status || "broken"}: ${s.reason || "no reason given"}`)));
    pickerNote.append(el("details", {}, el("summary", {}, `${bad.length} cannot be opened`), list));
  }
}

try {
  const list = await getJSON("/api/subjects");
  subjects = Array.isArray(list) ? list.filter((s) => s && typeof s.name === "string") : [];
} catch (e) {
  showError(`cannot list the subjects: ${e.message}`);
}
fillPicker();
picker.addEventListener("change", () => {
  const { view, params } = parseHash();
  // The layer, channel and unit travel with the subject when it has them (route checks the layer).
  const { image: _image, ...rest } = params;
  navigate(view, { ...rest, subject: picker.value });
});
// Back/forward (popstate) and typed or clicked hashes (hashchange): render when the URL changed.
const onUrl = () => { if (location.hash !== rendered) route(); };
window.addEventListener("popstate", onUrl);
window.addEventListener("hashchange", onUrl);
window.addEventListener("unhandledrejection", (e) => {
  if (e.reason instanceof Cancelled) { e.preventDefault(); return; }
  showError(e.reason?.message || String(e.reason));
});
window.convlens = { route, parseHash, generation: () => generation };
route();
