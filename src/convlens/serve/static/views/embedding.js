// Embedding view: the t-SNE map of the penultimate features of the test images, drawn on a canvas
// (points written into one pixel buffer per frame, so 50,000 points pan and zoom smoothly), coloured
// by true class, prediction or correctness. Hover shows the image (the tooltip stays on its point
// while zooming); zoomed in far enough, the points become thumbnails. Click (or search "#index")
// picks a query: it and its nearest neighbours are ringed on the map and listed with class and
// distance. Searching a class name highlights that class.
import { getJSON, runJob, progressBar, el, num, Cancelled } from "../api.js";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"];
const colour = (k) => PALETTE[((k % PALETTE.length) + PALETTE.length) % PALETTE.length];
const RIGHT = "#2f9e44", WRONG = "#e03131";

// A uniform grid over the map's coordinates: the points near the cursor without scanning them all.
function gridIndex(xs, ys, cells = 128) {
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  xs.forEach((x, p) => {  // a loop, not Math.min(...xs): spreading 100,000 arguments overflows
    minX = Math.min(minX, x); maxX = Math.max(maxX, x);
    minY = Math.min(minY, ys[p]); maxY = Math.max(maxY, ys[p]);
  });
  const sx = cells / (maxX - minX || 1), sy = cells / (maxY - minY || 1);
  const buckets = new Map();
  const key = (i, j) => i * (cells + 1) + j;
  xs.forEach((x, p) => {
    const k = key(Math.floor((x - minX) * sx), Math.floor((ys[p] - minY) * sy));
    if (!buckets.has(k)) buckets.set(k, []);
    buckets.get(k).push(p);
  });
  return { minX, maxX, minY, maxY, near(x, y, r) {
    const out = [];
    const i0 = Math.floor((x - r - minX) * sx), i1 = Math.floor((x + r - minX) * sx);
    const j0 = Math.floor((y - r - minY) * sy), j1 = Math.floor((y + r - minY) * sy);
    for (let i = i0; i <= i1; i++) for (let j = j0; j <= j1; j++) out.push(...(buckets.get(key(i, j)) || []));
    return out;
  } };
}

const rgbaWord = (hex, alpha = 255) => {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return ((alpha << 24) | (b << 16) | (g << 8) | r) >>> 0;  // little-endian RGBA
};

// A neighbour as {index, distance, label} whether the server sends numbers or objects.
function asNeighbours(list, distances, names) {
  return (list || []).map((n, k) => (typeof n === "number"
    ? { index: n, distance: distances?.[k], label_name: names?.[k] ?? undefined }
    : { index: n.index ?? n.image_index, distance: n.distance, label: n.label, label_name: n.label_name }));
}

export async function render(root, ctx) {
  const base = `/api/subjects/${encodeURIComponent(ctx.subject)}`;
  const { info, params, signal } = ctx;
  root.append(el("h2", {}, "Embedding"));
  if (!info.images) {
    root.append(el("p", { class: "note empty", id: "no-images" },
      `${ctx.subject} has no test images here, so there is nothing to embed (the data set is not on this machine, ` +
      "or the server was started without images)."));
    return;
  }
  let jobAbort = new AbortController();
  signal.addEventListener("abort", () => jobAbort.abort(), { once: true });
  const bar = progressBar(() => jobAbort.abort());
  const canvas = el("canvas", { class: "tsne", id: "tsne", width: 900, height: 620 });
  const tip = el("div", { class: "tip", id: "tsne-tip" });
  tip.hidden = true;
  const legend = el("div", { class: "legend", id: "legend" });
  const near = el("div", { class: "neighbours", id: "neighbours" });
  const mode = el("select", { id: "colour-by", "aria-label": "colour by" },
    new Option("true class", "class"), new Option("prediction", "prediction"), new Option("correctness", "correct"));
  const search = el("input", { type: "search", id: "search", placeholder: "class name or #index", "aria-label": "search by class or index" });
  const found = el("small", { id: "search-result", class: "muted" });
  const limit = new URLSearchParams(location.search).get("limit");
  root.append(
    el("p", { class: "note" }, "t-SNE of the penultimate features of the test images: images the network finds " +
      "alike lie close. Drag to pan, scroll to zoom (zoomed in, points become thumbnails), hover for the image, click " +
      "for its nearest neighbours. ",
    el("a", { href: `${base}/projector.zip${limit ? `?limit=${limit}` : ""}`, download: "", id: "projector" },
      "Export for the TensorBoard projector (with a sprite sheet)")),
    el("div", { class: "controls" }, el("label", {}, "colour by ", mode), el("label", {}, "find ", search), found),
    bar, el("div", { class: "mapbox" }, canvas, tip), legend, near);
  let map;
  try {
    map = await runJob(`${base}/jobs/embedding`, limit ? { limit: +limit } : {}, bar.update, jobAbort.signal);
  } catch (e) {
    if (e instanceof Cancelled && ctx.alive()) {
      bar.hidden = true;
      root.append(el("p", { class: "note" }, "The map was cancelled. ",
        el("button", { type: "button", onclick: () => ctx.go("embedding", {}) }, "compute it")));
      return;
    }
    throw e;
  }
  if (!ctx.alive()) return;
  const { x: xs, y: ys, labels, indices, classes } = map;
  const predictions = map.predictions ?? map.predicted ?? null;
  const correct = map.correct ?? (predictions ? predictions.map((p, k) => p === labels[k]) : null);
  if (!predictions) for (const o of mode.options) if (o.value !== "class") o.disabled = true;
  mode.value = params.colour && !(params.colour !== "class" && !predictions) ? params.colour : "class";
  const slot = new Map(indices.map((i, p) => [i, p]));  // image index -> point
  const index = gridIndex(xs, ys);
  const byColour = () => {  // point lists per colour word
    const groups = new Map();
    const add = (word, p) => { if (!groups.has(word)) groups.set(word, []); groups.get(word).push(p); };
    for (let p = 0; p < xs.length; p++) {
      let hex;
      if (mode.value === "prediction") hex = colour(predictions[p]);
      else if (mode.value === "correct") hex = correct[p] ? RIGHT : WRONG;
      else hex = colour(labels[p]);
      const dim = highlight !== null && labels[p] !== highlight;
      add(rgbaWord(hex, dim ? 40 : 255), p);
    }
    return groups;
  };
  let highlight = null, groups = null;
  function drawLegend() {
    legend.replaceChildren();
    if (mode.value === "correct") {
      legend.append(el("span", {}, el("i", { style: `background:${RIGHT}` }), "predicted correctly"),
        el("span", {}, el("i", { style: `background:${WRONG}` }), "wrong"));
    } else {
      classes.forEach((c, k) => legend.append(el("button", { type: "button", class: `key${highlight === k ? " on" : ""}`,
        onclick: () => { highlight = highlight === k ? null : k; refresh(); } },
      el("i", { style: `background:${colour(k)}` }), String(c))));
    }
  }
  const refresh = () => { groups = byColour(); drawLegend(); redraw(); };

  let W = canvas.width, H = canvas.height;
  const fit = () => Math.min(W / (index.maxX - index.minX || 1), H / (index.maxY - index.minY || 1)) * 0.92;
  let view = null;
  const home = () => { const k = fit(); view = { k, tx: W / 2 - ((index.minX + index.maxX) / 2) * k, ty: H / 2 - ((index.minY + index.maxY) / 2) * k }; };
  let hover = -1, pending = false, query = -1, neighbours = [];
  const toScreen = (p) => [xs[p] * view.k + view.tx, ys[p] * view.k + view.ty];
  const ctx2d = canvas.getContext("2d");
  let pixels = null, words = null;
  const thumbs = new Map();
  function thumb(p) {
    const i = indices[p];
    if (!thumbs.has(i)) {
      const img = new Image();
      img.onload = () => redraw();
      img.src = `${base}/images/${i}.png`;
      thumbs.set(i, img);
    }
    return thumbs.get(i);
  }

  function size() {
    const w = Math.max(320, Math.min(1400, Math.floor(root.clientWidth || 900)));
    const h = Math.max(320, Math.min(700, Math.round(w * 0.62)));
    if (w === W && h === H && pixels) return false;
    const centre = view ? [(W / 2 - view.tx) / view.k, (H / 2 - view.ty) / view.k] : null;
    canvas.width = W = w; canvas.height = H = h;
    pixels = ctx2d.createImageData(W, H);
    words = new Uint32Array(pixels.data.buffer);
    if (!view) home();
    else { view.tx = W / 2 - centre[0] * view.k; view.ty = H / 2 - centre[1] * view.k; }
    return true;
  }

  function draw() {
    pending = false;
    words.fill(0);
    const s = xs.length > 20000 ? 2 : 3;
    const visible = [];
    for (const [word, points] of groups) {
      for (const p of points) {
        const sx = Math.round(xs[p] * view.k + view.tx - s / 2);
        const sy = Math.round(ys[p] * view.k + view.ty - s / 2);
        if (sx < 0 || sy < 0 || sx > W - s || sy > H - s) continue;
        if (visible.length <= 200) visible.push(p);
        for (let dy = 0; dy < s; dy++) words.fill(word, (sy + dy) * W + sx, (sy + dy) * W + sx + s);
      }
    }
    ctx2d.putImageData(pixels, 0, 0);
    // Zoomed in (at most 200 points in view): each point drawn as its image, framed in its colour.
    const zoomed = visible.length <= 200 && view.k > fit() * 2.5;
    let drawn = 0;
    if (zoomed) {
      const t = 28;
      ctx2d.imageSmoothingEnabled = false;
      for (const p of visible) {
        const img = thumb(p);
        const [px, py] = toScreen(p);
        if (img.complete && img.naturalWidth) { ctx2d.drawImage(img, px - t / 2, py - t / 2, t, t); drawn += 1; }
        ctx2d.strokeStyle = mode.value === "correct" ? (correct[p] ? RIGHT : WRONG) : colour(mode.value === "prediction" ? predictions[p] : labels[p]);
        ctx2d.lineWidth = 2;
        ctx2d.strokeRect(px - t / 2, py - t / 2, t, t);
      }
    }
    canvas.dataset.thumbnails = String(drawn);
    const ring = (p, r, style, w) => {
      const [hx, hy] = toScreen(p);
      ctx2d.beginPath();
      ctx2d.arc(hx, hy, r, 0, 2 * Math.PI);
      ctx2d.strokeStyle = style;
      ctx2d.lineWidth = w;
      ctx2d.stroke();
    };
    for (const nb of neighbours) if (nb.point >= 0) ring(nb.point, 7, "#000", 2);
    if (query >= 0) { ring(query, 11, "#fff", 5); ring(query, 11, "#d9480f", 3); }
    if (hover >= 0) {
      const [hx, hy] = toScreen(hover);
      ctx2d.strokeStyle = "#000";
      ctx2d.lineWidth = 2;
      ctx2d.strokeRect(hx - 5, hy - 5, 10, 10);
      placeTip();
    }
  }
  const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(draw); } };

  function placeTip() {
    if (hover < 0) { tip.hidden = true; return; }
    const [hx, hy] = toScreen(hover);
    if (hx < 0 || hy < 0 || hx > W || hy > H) { tip.hidden = true; return; }
    Object.assign(tip.style, { left: `${Math.min(hx + 12, W - 90)}px`, top: `${Math.min(hy + 12, H - 110)}px` });
    tip.hidden = false;
  }

  function pointAt(mx, my) {
    const x = (mx - view.tx) / view.k, y = (my - view.ty) / view.k, r = 6 / view.k;
    let best = -1, bestD = r * r;
    for (const p of index.near(x, y, r)) {
      const d = (xs[p] - x) ** 2 + (ys[p] - y) ** 2;
      if (d <= bestD) { best = p; bestD = d; }
    }
    return best;
  }

  function describe(p) {
    const bits = [`#${indices[p]}`, String(classes[labels[p]])];
    if (predictions) bits.push(correct[p] ? "predicted correctly" : `predicted ${classes[predictions[p]]}`);
    return bits.join(" · ");
  }

  let drag = null;
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.offsetX, y: e.offsetY, moved: false }; });
  const up = () => { setTimeout(() => { drag = null; }, 0); };
  window.addEventListener("mouseup", up);
  canvas.addEventListener("mousemove", (e) => {
    if (drag && (e.buttons & 1)) {
      view.tx += e.offsetX - drag.x;
      view.ty += e.offsetY - drag.y;
      drag.moved = drag.moved || Math.abs(e.offsetX - drag.x) + Math.abs(e.offsetY - drag.y) > 0;
      drag.x = e.offsetX;
      drag.y = e.offsetY;
      return redraw();
    }
    const p = pointAt(e.offsetX, e.offsetY);
    if (p !== hover) {
      hover = p;
      redraw();
      if (p < 0) { tip.hidden = true; return; }
      tip.replaceChildren(el("img", { src: `${base}/images/${indices[p]}.png`, alt: `image ${indices[p]}` }),
        el("div", {}, describe(p)));
      placeTip();
    }
  });
  canvas.addEventListener("mouseleave", () => { hover = -1; tip.hidden = true; redraw(); });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const f = Math.exp(-e.deltaY * 0.0015);
    view.tx = e.offsetX - (e.offsetX - view.tx) * f;
    view.ty = e.offsetY - (e.offsetY - view.ty) * f;
    view.k *= f;
    redraw();
  }, { passive: false });
  canvas.addEventListener("click", (e) => {
    if (drag && drag.moved) return;
    const p = pointAt(e.offsetX, e.offsetY);
    if (p >= 0) ask(p, true);
  });

  async function ask(p, push) {
    query = p;
    neighbours = [];
    redraw();
    if (push) ctx.setParams({ image: `test:${indices[p]}` });
    near.replaceChildren(el("p", {}, "finding neighbours..."));
    try {
      const k = info.defaults?.k ?? 8;
      const r = await getJSON(`${base}/neighbors?index=${indices[p]}&k=${k}`, signal);
      if (!ctx.alive() || query !== p) return;
      const feature = asNeighbours(r.feature, r.feature_distances, r.feature_labels);
      const pixel = asNeighbours(r.pixel, r.pixel_distances, r.pixel_labels);
      neighbours = feature.map((n) => ({ ...n, point: slot.get(n.index) ?? -1 }));
      const card = (n, what) => {
        const label = n.label_name ?? (n.label !== undefined ? classes[n.label] : classes[labels[slot.get(n.index)]]);
        return el("figure", { class: "nb", "data-image": n.index },
          el("img", { src: `${base}/images/${n.index}.png`, alt: `image ${n.index}`, title: `#${n.index}` }),
          el("figcaption", {}, label !== undefined ? el("span", { class: "cls" }, String(label)) : "",
            n.distance !== undefined ? el("span", { class: "dist" }, `${what}${num(n.distance)}`) : el("span", { class: "dist" }, `#${n.index}`)));
      };
      const strip = (title, list, what) => el("div", { class: "strip" }, el("h4", {}, title), el("div", { class: "cards" }, ...list.map((n) => card(n, what))));
      near.replaceChildren(
        el("div", { class: "strip" }, el("h4", {}, "query"),
          el("div", { class: "cards" }, card({ index: r.index ?? indices[p], label: labels[p] }, ""))),
        strip(`nearest in feature space (${r.metric ?? "cosine"} distance d; ringed on the map)`, feature, "d "),
        strip("nearest in pixel space (distance d)", pixel, "d "));
      redraw();
    } catch (err) { if (!(err instanceof Cancelled)) ctx.showError(err.message); }
  }

  function centreOn(p) {
    const k = Math.max(view.k, fit() * 4);
    view = { k, tx: W / 2 - xs[p] * k, ty: H / 2 - ys[p] * k };
  }

  search.addEventListener("change", () => {
    const q = search.value.trim();
    found.textContent = "";
    if (!q) { highlight = null; refresh(); return; }
    const m = /^#?(\d+)$/.exec(q);
    if (m) {
      const p = slot.get(+m[1]);
      if (p === undefined) { found.textContent = `image ${m[1]} is not on this map (${indices.length} images are)`; return; }
      centreOn(p);
      ask(p, true);
      found.textContent = describe(p);
      return;
    }
    const k = classes.findIndex((c) => String(c).toLowerCase() === q.toLowerCase());
    const k2 = k >= 0 ? k : classes.findIndex((c) => String(c).toLowerCase().includes(q.toLowerCase()));
    if (k2 < 0) { found.textContent = `no class or image called ${q}`; return; }
    highlight = k2;
    found.textContent = `${labels.filter((l) => l === k2).length} images of ${classes[k2]}`;
    refresh();
  });
  mode.addEventListener("change", () => { ctx.setParams({ colour: mode.value }, { push: false }); refresh(); });

  const observer = new ResizeObserver(() => {
    if (!root.isConnected) { observer.disconnect(); window.removeEventListener("mouseup", up); return; }
    if (size()) redraw();
  });
  size();
  groups = byColour();
  drawLegend();
  draw();
  observer.observe(root);
  const start = /^test:(\d+)$/.exec(params.image || "");
  if (start && slot.has(+start[1])) { const p = slot.get(+start[1]); ask(p, false); }
}
