// Embedding view: the t-SNE map of the penultimate features of the test images, drawn on a canvas
// (points written into one pixel buffer per frame, so 50,000 points pan and zoom smoothly), coloured by
// class. Hover shows the image; click shows its nearest neighbours in feature space and in pixels.
import { getJSON, runJob, progressBar, el } from "../api.js";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"];
const colour = (k) => PALETTE[k % PALETTE.length];

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

export async function render(root, ctx) {
  const base = `/api/subjects/${encodeURIComponent(ctx.subject)}`;
  const bar = progressBar();
  const canvas = el("canvas", { class: "tsne", id: "tsne", width: 900, height: 620 });
  const tip = el("div", { class: "tip", id: "tsne-tip" });
  tip.hidden = true;
  const legend = el("div", { class: "legend" });
  const near = el("div", { class: "neighbours", id: "neighbours" });
  root.append(el("h2", {}, "Embedding"),
    el("p", { class: "note" }, "t-SNE of the penultimate features of the test images. Drag to pan, " +
      "scroll to zoom, hover for the image, click for its nearest neighbours. ",
      el("a", { href: `${base}/projector.zip`, download: "" }, "Export for the TensorBoard projector")),
    bar, el("div", { class: "mapbox" }, canvas, tip), legend, near);
  const limit = new URLSearchParams(location.search).get("limit");
  const map = await runJob(`${base}/jobs/embedding`, limit ? { limit: +limit } : {}, bar.update);
  const { x: xs, y: ys, labels, indices, classes } = map;
  map.classes.forEach((c, k) => legend.append(el("span", {}, el("i", { style: `background:${colour(k)}` }), c)));
  const index = gridIndex(xs, ys);
  const byClass = classes.map((_, k) => labels.flatMap((l, p) => (l === k ? [p] : [])));
  const W = canvas.width, H = canvas.height;
  const fit = Math.min(W / (index.maxX - index.minX || 1), H / (index.maxY - index.minY || 1)) * 0.92;
  let view = { k: fit, tx: W / 2 - ((index.minX + index.maxX) / 2) * fit, ty: H / 2 - ((index.minY + index.maxY) / 2) * fit };
  let hover = -1, pending = false;
  const toScreen = (p) => [xs[p] * view.k + view.tx, ys[p] * view.k + view.ty];

  // Points are written straight into a pixel buffer (one 32-bit word per pixel, then one
  // putImageData): about ten times faster than a fillRect per point on a software canvas.
  const rgba = classes.map((_, k) => {
    const hex = colour(k);
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;  // little-endian RGBA
  });
  const ctx2d = canvas.getContext("2d");
  const pixels = ctx2d.createImageData(W, H);
  const words = new Uint32Array(pixels.data.buffer);

  function draw() {
    pending = false;
    words.fill(0);
    const s = xs.length > 20000 ? 2 : 3;
    byClass.forEach((points, k) => {
      const c = rgba[k];
      for (const p of points) {
        const sx = Math.round(xs[p] * view.k + view.tx - s / 2);
        const sy = Math.round(ys[p] * view.k + view.ty - s / 2);
        if (sx < 0 || sy < 0 || sx > W - s || sy > H - s) continue;
        for (let dy = 0; dy < s; dy++) words.fill(c, (sy + dy) * W + sx, (sy + dy) * W + sx + s);
      }
    });
    ctx2d.putImageData(pixels, 0, 0);
    if (hover >= 0) {
      const [hx, hy] = toScreen(hover);
      ctx2d.strokeStyle = "#000";
      ctx2d.lineWidth = 2;
      ctx2d.strokeRect(hx - 5, hy - 5, 10, 10);
    }
  }
  const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(draw); } };

  function pointAt(mx, my) {
    const x = (mx - view.tx) / view.k, y = (my - view.ty) / view.k, r = 6 / view.k;
    let best = -1, bestD = r * r;
    for (const p of index.near(x, y, r)) {
      const d = (xs[p] - x) ** 2 + (ys[p] - y) ** 2;
      if (d <= bestD) { best = p; bestD = d; }
    }
    return best;
  }

  let drag = null;
  canvas.addEventListener("mousedown", (e) => { drag = { x: e.offsetX, y: e.offsetY, moved: false }; });
  window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
  canvas.addEventListener("mousemove", (e) => {
    if (drag && (e.buttons & 1)) {
      view.tx += e.offsetX - drag.x;
      view.ty += e.offsetY - drag.y;
      drag.moved = drag.moved || Math.abs(e.offsetX - drag.x) + Math.abs(e.offsetY - drag.y) > 0;
      drag.x = e.offsetX;
      drag.y = e.offsetY;
      tip.hidden = true;
      return redraw();
    }
    const p = pointAt(e.offsetX, e.offsetY);
    if (p !== hover) {
      hover = p;
      redraw();
      if (p < 0) { tip.hidden = true; return; }
      tip.replaceChildren(el("img", { src: `${base}/images/${indices[p]}.png`, alt: `image ${indices[p]}` }),
        el("div", {}, `#${indices[p]} ${classes[labels[p]]}`));
      const [hx, hy] = toScreen(p);
      Object.assign(tip.style, { left: `${hx + 12}px`, top: `${hy + 12}px` });
      tip.hidden = false;
    }
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const f = Math.exp(-e.deltaY * 0.0015);
    view.tx = e.offsetX - (e.offsetX - view.tx) * f;
    view.ty = e.offsetY - (e.offsetY - view.ty) * f;
    view.k *= f;
    redraw();
  }, { passive: false });
  canvas.addEventListener("click", async (e) => {
    if (drag && drag.moved) return;
    const p = pointAt(e.offsetX, e.offsetY);
    if (p < 0) return;
    near.replaceChildren(el("p", {}, "finding neighbours..."));
    try {
      const r = await getJSON(`${base}/neighbors?index=${indices[p]}&k=8`);
      const strip = (title, list) => el("div", { class: "strip" }, el("h4", {}, title),
        ...list.map((i) => el("img", { src: `${base}/images/${i}.png`, alt: `image ${i}`, title: `#${i}` })));
      near.replaceChildren(
        el("div", { class: "strip" }, el("h4", {}, "query"), el("img", { src: `${base}/images/${r.index}.png`, alt: "query" })),
        strip("nearest in feature space", r.feature), strip("nearest in pixel space", r.pixel));
    } catch (err) { ctx.showError(err.message); }
  });
  draw();
}
