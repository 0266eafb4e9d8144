// Image view: pick a test image (or drop a photo); its true label, the top-5 predictions and a
// "wrong" flag; the activations of every layer (convolutions, pooling, block outputs, the classifier)
// in colour with a bar marking min, max and zero; Grad-CAM, guided Grad-CAM, saliency and occlusion
// overlays. Clicking a unit draws its receptive field on the input (clipped to the image) and, on a
// convolution, opens the computation that made it, in real numbers (GET .../unit).
import { getJSON, postJSON, upload, runJob, progressBar, el, num, shape, Cancelled } from "../api.js";
import { colourise, colourBar } from "./colour.js";
import { renderUnit } from "./unit.js";

const STAGE = 300;  // displayed input size in CSS pixels
const METHODS = [["gradcam", "Grad-CAM"], ["guided_gradcam", "guided Grad-CAM"],
  ["saliency", "saliency"], ["occlusion", "occlusion"]];
const GAP = 4;

const className = (info, i) => {
  const name = info.classes?.[i];
  return name === undefined || String(name) === String(i) ? `class ${i}` : String(name);
};

export async function render(root, ctx) {
  const base = `/api/subjects/${encodeURIComponent(ctx.subject)}`;
  const { info, params, signal } = ctx;
  const net = await ctx.network();
  if (!ctx.alive()) return;
  const rows = Object.fromEntries(net.layers.map((r) => [r.name, r]));
  const isConv = (name) => (rows[name]?.type || "").startsWith("Conv");
  const convs = net.layers.filter((r) => r.type.startsWith("Conv") && r.call === 1);
  const [channelsIn, ih, iw] = info.input || net.input || [1, 1, 1];
  const scale = STAGE / Math.max(ih, iw);
  const images = info.images || 0;

  // Choosing an image: thumbnails spread over the test set, an index box, or an upload.
  const thumbs = el("div", { class: "thumbs", id: "thumbs" });
  const n = Math.min(images, 16);
  for (let k = 0; k < n; k++) {
    const index = Math.floor((k * images) / n);
    thumbs.append(el("img", { src: `${base}/images/${index}.png`, alt: `test image ${index}`, title: `test image ${index}`,
      tabindex: 0, "data-image": `test:${index}`, onclick: () => choose(`test:${index}`),
      onkeydown: (e) => { if (e.key === "Enter") choose(`test:${index}`); } }));
  }
  const indexBox = el("input", { type: "number", min: 0, max: Math.max(0, images - 1), value: 0, id: "image-index",
    "aria-label": "test image index", onchange: (e) => choose(`test:${Math.max(0, Math.min(images - 1, +e.target.value || 0))}`) });
  const file = el("input", { type: "file", accept: "image/*", id: "upload",
    onchange: (e) => e.target.files[0] && send(e.target.files[0]) });
  const pre = info.preprocess || {};
  const resize = pre.resize ?? info.resize;
  const how = typeof resize === "number"
    ? `its shorter side resized to ${resize} pixels, then the centre ${ih}×${iw} cropped`
    : "resize" in pre ? `resized straight to ${ih}×${iw} (the aspect ratio is not kept)`
      : `resized and cropped to ${ih}×${iw} as this subject's preprocessing says`;
  const drop = el("label", { class: "drop", for: "upload" }, "Drop a photo here, or click to choose one", file,
    el("small", { class: "prep", id: "upload-note" },
      `A photo is prepared exactly as the report prepares a file: ${how}${channelsIn === 1 ? ", in greyscale" : ""}.`));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
  });

  // The input with its overlays.
  const input = el("img", { class: "input", alt: "input" });
  const overlay = el("img", { class: "overlay", alt: "" });
  const erf = el("img", { class: "erf", alt: "" });
  const box = el("div", { class: "rfbox", id: "rf-box" });
  for (const e of [overlay, erf, box]) e.hidden = true;
  const stage = el("div", { class: "stage", id: "stage" }, input, overlay, erf, box);
  stage.style.width = `${iw * scale}px`;
  stage.style.height = `${ih * scale}px`;
  const truth = el("p", { class: "truth", id: "truth" });
  const rfNote = el("p", { class: "note", id: "rf-note" });
  const top5 = el("ol", { class: "top5", id: "top5" });
  const target = el("select", { "aria-label": "class", id: "target", onchange: () => explain() });
  (info.classes || []).forEach((_, i) => target.append(new Option(`${i}: ${className(info, i)}`, i)));
  const layerPick = el("select", { "aria-label": "layer", id: "cam-layer", onchange: () => explain() });
  for (const r of convs) layerPick.append(new Option(r.name, r.name));
  const camDefault = info.defaults?.gradcam_layer ?? info.defaults?.cam_layer ?? ctx.defaultLayer(info, net);
  if (camDefault && convs.some((r) => r.name === camDefault)) layerPick.value = camDefault;
  const buttons = el("div", { class: "methods" });
  let method = null;
  for (const [key, text] of METHODS) {
    buttons.append(el("button", { type: "button", "data-method": key, onclick: () => { method = key; explain(); } }, text));
  }
  let jobAbort = null;
  const bar = progressBar(() => jobAbort && jobAbort.abort());
  bar.hidden = true;
  const attrBar = el("div", { id: "attr-bar" });
  const acts = el("div", { class: "acts", id: "activations" });
  const unitPanel = el("section", { class: "unitpanel", id: "unit-panel" });
  unitPanel.hidden = true;

  const look = el("div", { class: "look" });
  if (images === 0) {
    look.append(el("p", { class: "note empty", id: "no-images" },
      `${ctx.subject} has no test images here (its data set is not on this machine, or the server was started ` +
      "without them). Upload a photo to look at it."));
  }
  look.append(stage, truth, rfNote, top5,
    el("div", { class: "controls" }, el("label", {}, "class ", target), el("label", {}, "layer ", layerPick)),
    buttons, bar, attrBar, drop);
  if (images > 0) {
    look.append(el("div", { class: "pick" }, el("label", {}, "test image ", indexBox), el("small", {}, ` of ${images}`)), thumbs);
  }
  stage.hidden = images === 0;
  root.append(el("div", { class: "imageview" }, look,
    el("div", { class: "actscol" }, unitPanel,
      el("h3", {}, "Activations of every layer"),
      el("p", { class: "note" }, "Click a unit to see its receptive field on the input; on a convolution, also the " +
        "arithmetic that made its value. Colours: dark to yellow from the layer's min to its max; where a layer " +
        "has negative values, blue below zero, white at zero, red above. + and − zoom a layer."),
      acts)));

  let current = null, token = 0, lastLayers = null, selected = null;
  const zoom = {};  // per layer: CSS pixels per unit

  function choose(image) {
    ctx.setParams({ image, layer: undefined, channel: undefined, row: undefined, col: undefined });
    show(image).catch(fail);
  }
  function fail(e) { if (!(e instanceof Cancelled)) ctx.showError(e.message); }

  async function send(f) {
    try {
      const r = await upload(`${base}/uploads`, f, signal);
      ctx.setParams({ image: r.image, layer: undefined, channel: undefined, row: undefined, col: undefined });
      await show(r.image);
    } catch (e) { fail(e); }
  }

  async function show(image, unitToOpen = null) {
    const mine = ++token;
    ctx.showError("");
    const r = await postJSON(`${base}/predict`, { image }, signal);
    if (mine !== token || !ctx.alive()) return;
    current = image;
    stage.hidden = false;
    root.querySelector("#no-images")?.setAttribute("hidden", "");
    for (const t of thumbs.children) {
      const on = t.dataset.image === image;
      t.classList.toggle("selected", on);
      t.setAttribute("aria-pressed", on ? "true" : "false");
    }
    const m = /^test:(\d+)$/.exec(image);
    if (m) indexBox.value = m[1];
    input.src = r.input;
    overlay.hidden = erf.hidden = box.hidden = true;
    attrBar.replaceChildren();
    rfNote.textContent = "";
    const top = r.top || [];
    const predicted = top[0];
    truth.replaceChildren();
    truth.classList.remove("wrong", "right");
    if (r.label !== undefined && r.label !== null) {
      const name = r.label_name ?? className(info, r.label);
      truth.append(el("span", {}, "true label: "), el("b", { id: "true-label" }, name));
      if (r.wrong === true) {
        truth.classList.add("wrong");
        truth.append(el("span", { class: "flag wrong", id: "wrong-flag" }, `wrong: predicted ${predicted ? className(info, predicted.index) : "?"}`));
      } else if (r.wrong === false) {
        truth.classList.add("right");
        truth.append(el("span", { class: "flag right" }, "predicted correctly"));
      }
    } else {
      truth.append(el("span", { class: "muted" }, m ? "no true label" : "an uploaded photo: no true label"));
    }
    top5.replaceChildren(...top.map((t) => {
      const p = t.p ?? t.probability ?? 0;
      const isTrue = r.label !== undefined && r.label !== null && t.index === r.label;
      return el("li", { class: isTrue ? "true" : null },
        el("span", { class: "bar", style: `width:${Math.round(p * 100)}%` }),
        el("span", {}, `${className(info, t.index)} ${(p * 100).toFixed(1)} %${isTrue ? " (true)" : ""}`));
    }));
    if (predicted) target.value = predicted.index;
    lastLayers = r.layers || [];
    drawActivations(lastLayers);
    unitPanel.hidden = true;
    if (unitToOpen) selectUnit(unitToOpen.layer, unitToOpen.channel, unitToOpen.row, unitToOpen.col, false);
    if (method) explain();
  }

  async function explain() {
    if (!current || !method) return;
    for (const b of buttons.children) b.classList.toggle("active", b.dataset.method === method);
    const body = { image: current, target: +target.value };
    try {
      let r;
      if (method === "occlusion") {
        if (jobAbort) jobAbort.abort();
        jobAbort = new AbortController();
        signal.addEventListener("abort", () => jobAbort?.abort(), { once: true });
        bar.hidden = false;
        const d = info.defaults || {};
        const window = d.occlusion?.window ?? d.occlusion_window, stride = d.occlusion?.stride ?? d.occlusion_stride;
        const extra = {};
        if (window) extra.window = window;
        if (stride) extra.stride = stride;
        r = await runJob(`${base}/jobs/occlusion`, { ...body, ...extra }, bar.update, jobAbort.signal);
        bar.hidden = true;
      } else {
        r = await postJSON(`${base}/attribution`, { ...body, method, layer: layerPick.value || null }, signal);
      }
      if (!ctx.alive()) return;
      erf.hidden = box.hidden = true;  // one picture at a time: the attribution, or a unit's fields
      rfNote.textContent = "";
      overlay.src = r.overlay;
      overlay.dataset.method = method;
      overlay.classList.toggle("opaque", method === "guided_gradcam");
      overlay.hidden = false;
      attrBar.replaceChildren(colourBar(r.min, r.max, { kind: "heat",
        label: `${METHODS.find(([k]) => k === method)[1]} for ${className(info, +target.value)}` }));
    } catch (e) {
      bar.hidden = true;
      if (e instanceof Cancelled) { if (ctx.alive()) rfNote.textContent = "occlusion cancelled"; return; }
      fail(e);
    }
  }

  // One canvas per layer with its channels as tiles (a deep network has thousands of channels: one
  // element each would make the page crawl), recoloured from the server's greyscale atlas with the
  // layer's min and max. A click is turned back into (channel, row, col).
  function unitPx(L) {
    const [, h, w] = L.shape;
    if (zoom[L.name]) return zoom[L.name];
    const width = Math.max(280, acts.clientWidth || 700);
    // Large enough to click (LeNet's maps: >= 6 px a unit), small enough that a deep layer's
    // hundreds of channels stay a screenful: the tile shrinks as the channels grow; + zooms.
    const [c] = L.shape;
    const tile = Math.min(width / 3, c <= 8 ? 168 : c <= 16 ? 112 : c <= 64 ? 72 : 48);
    return Math.max(2, Math.min(16, Math.floor(tile / Math.max(w, h))));
  }

  function drawActivations(layers) {
    acts.replaceChildren();
    const width = Math.max(280, acts.clientWidth || 700);
    for (const L of layers) {
      const row = rows[L.name];
      const kind = row ? row.type : "";
      const head = el("h4", {}, `${L.name}`, el("span", { class: "muted" }, `  ${kind}  ${shape(L.shape)}`));
      const section = el("section", { class: "actlayer", "data-layer": L.name });
      if (L.shape.length !== 3) {
        section.append(head, flatLayer(L), colourBar(L.min, L.max, { label: "" }));
        acts.append(section);
        continue;
      }
      const [c, h, w] = L.shape;
      const px = unitPx(L);
      const tw = w * px, th = h * px;
      const cols = Math.max(1, Math.min(c, Math.floor((width + GAP) / (tw + GAP))));
      const nrows = Math.ceil(c / cols);
      const cv = el("canvas", { width: cols * (tw + GAP), height: nrows * (th + GAP),
        "data-layer": L.name, "data-unit": px, title: `${L.name}: ${c} channels of ${h}×${w}` });
      const marker = el("div", { class: "marker" });
      marker.hidden = true;
      const zoomer = el("span", { class: "zoom" },
        el("button", { type: "button", "aria-label": `zoom out ${L.name}`, onclick: () => { zoom[L.name] = Math.max(1, Math.floor(px / 2)); drawActivations(lastLayers); } }, "−"),
        el("button", { type: "button", "aria-label": `zoom in ${L.name}`, onclick: () => { zoom[L.name] = Math.min(48, px * 2); drawActivations(lastLayers); } }, "+"));
      section.append(el("div", { class: "acthead" }, head, zoomer, colourBar(L.min, L.max)),
        el("div", { class: "tiles" }, cv, marker));
      acts.append(section);
      const atlas = new Image();
      atlas.onload = () => {
        // The atlas to an offscreen canvas, recoloured, then tiled at the chosen size.
        const src = document.createElement("canvas");
        src.width = atlas.width; src.height = atlas.height;
        const sg = src.getContext("2d");
        sg.drawImage(atlas, 0, 0);
        if (typeof L.min === "number" && typeof L.max === "number") {
          sg.putImageData(colourise(sg.getImageData(0, 0, src.width, src.height), L.min, L.max), 0, 0);
        }
        const g = cv.getContext("2d");
        g.imageSmoothingEnabled = false;
        const acols = L.cols || Math.ceil(Math.sqrt(c));
        for (let k = 0; k < c; k++) {
          g.drawImage(src, (k % acols) * w, Math.floor(k / acols) * h, w, h,
            (k % cols) * (tw + GAP), Math.floor(k / cols) * (th + GAP), tw, th);
        }
      };
      atlas.src = L.png;
      const place = (channel, r0, c0) => {
        const tx = channel % cols, ty = Math.floor(channel / cols);
        Object.assign(marker.style, { left: `${tx * (tw + GAP) + c0 * px}px`, top: `${ty * (th + GAP) + r0 * px}px`,
          width: `${px}px`, height: `${px}px` });
        marker.hidden = false;
      };
      cv.place = place;
      if (selected && selected.layer === L.name) place(selected.channel, selected.row, selected.col);
      cv.addEventListener("click", (e) => {
        const tx = Math.floor(e.offsetX / (tw + GAP)), ty = Math.floor(e.offsetY / (th + GAP));
        const dx = e.offsetX - tx * (tw + GAP), dy = e.offsetY - ty * (th + GAP);
        const channel = ty * cols + tx;
        if (dx >= tw || dy >= th || channel >= c) return;  // a gap, or past the last channel
        selectUnit(L.name, channel, Math.floor(dy / px), Math.floor(dx / px), true);
      });
    }
  }

  // A flat layer (the classifier): one bar per output, coloured like the maps.
  function flatLayer(L) {
    const values = L.values || L.logits || null;
    const wrap = el("div", { class: "flat" });
    if (!values) {
      wrap.append(el("img", { src: L.png, alt: L.name, class: "flatimg" }));
      return wrap;
    }
    const lo = Math.min(0, ...values), hi = Math.max(0, ...values);
    values.slice(0, 100).forEach((v, i) => {
      const name = net.layers.at(-1)?.name === L.name ? className(info, i) : String(i);
      const h = hi > lo ? (Math.abs(v) / (hi - lo)) * 60 : 0;
      wrap.append(el("div", { class: "flatbar", title: `${name}: ${num(v)}` },
        el("span", { class: v < 0 ? "neg" : "pos", style: `height:${h}px` }), el("small", {}, name)));
    });
    return wrap;
  }

  async function selectUnit(layer, channel, row, col, push) {
    selected = { layer, channel, row, col };
    for (const m of acts.querySelectorAll(".marker")) m.hidden = true;
    const cv = acts.querySelector(`canvas[data-layer="${CSS.escape(layer)}"]`);
    if (cv && cv.place) cv.place(channel, row, col);
    if (push) ctx.setParams({ layer, channel, row, col });
    await Promise.all([fields(layer, channel, row, col), computation(layer, channel, row, col)]);
  }

  async function fields(layer, channel, row, col) {
    try {
      const r = await getJSON(`${base}/rf?${new URLSearchParams({ layer, row, col })}`, signal);
      if (!ctx.alive()) return;
      const [t, l, b, rr] = r.box;
      // The box clipped to the image (the server's when it sends it): a field larger than the
      // image still shows where it lies.
      const [ct, cl, cb, cr] = r.clipped_box || [Math.max(0, t), Math.max(0, l), Math.min(ih, b), Math.min(iw, rr)];
      const covers = r.covers_image ?? (ct <= 0 && cl <= 0 && cb >= ih && cr >= iw);
      Object.assign(box.style, { top: `${ct * scale}px`, left: `${cl * scale}px`,
        height: `${(cb - ct) * scale}px`, width: `${(cr - cl) * scale}px` });
      box.classList.toggle("covers", covers);
      box.hidden = false;
      overlay.hidden = true;
      attrBar.replaceChildren();
      if (r.erf?.map) {
        erf.src = r.erf.map;
        erf.style.transform = `translate(${r.erf.shift[1] * scale}px, ${r.erf.shift[0] * scale}px)`;
        erf.hidden = false;
      }
      rfNote.replaceChildren(
        `${layer}, channel ${channel}, unit (${row}, ${col}): theoretical field ${b - t}×${rr - l} pixels`,
        covers ? el("b", { class: "covers" }, ", which covers the whole image") :
          ` (box${b - t !== cb - ct || rr - l !== cr - cl ? `, ${cb - ct}×${cr - cl} of them inside the image` : ""})`,
        r.erf?.radius !== undefined ? `; effective field (heat) holds 95 % of its weight within ${num(r.erf.radius)} pixels of its centre.` : ".");
    } catch (err) { fail(err); }
  }

  async function computation(layer, channel, row, col) {
    if (!isConv(layer) || !current) { unitPanel.hidden = true; return; }
    unitPanel.hidden = false;
    unitPanel.replaceChildren(el("p", { class: "note" }, `computing ${layer} channel ${channel} unit (${row}, ${col})…`));
    try {
      const q = new URLSearchParams({ image: current, layer, channel, row, col });
      const u = await getJSON(`${base}/unit?${q}`, signal);
      if (!ctx.alive() || selected?.layer !== layer || selected.channel !== channel || selected.row !== row || selected.col !== col) return;
      unitPanel.replaceChildren(...renderUnit(u, { layer, channel, row, col, close: () => { unitPanel.hidden = true; } }));
    } catch (e) {
      if (e instanceof Cancelled) return;
      unitPanel.replaceChildren(el("p", { class: "note bad" }, `The computation of this unit is not available: ${e.message}`));
    }
  }

  // Redraw on resize (the tiles per row follow the column's width).
  let resizeTimer = null, lastWidth = acts.clientWidth;
  const observer = new ResizeObserver(() => {
    if (!root.isConnected) { observer.disconnect(); return; }
    if (Math.abs(acts.clientWidth - lastWidth) < 8) return;
    lastWidth = acts.clientWidth;
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => lastLayers && drawActivations(lastLayers), 120);
  });
  observer.observe(acts);

  const start = params.image || (images > 0 ? "test:0" : null);
  const unit = params.layer && params.channel !== undefined && params.row !== undefined && params.col !== undefined
    ? { layer: params.layer, channel: +params.channel, row: +params.row, col: +params.col } : null;
  if (start) {
    try {
      await show(start, unit);
    } catch (e) {
      if (e instanceof Cancelled) return;
      // An upload from an earlier visit is gone after a restart: say so, show the first image.
      const said = e.message;
      if (start !== "test:0" && images > 0) await show("test:0").catch(fail);
      ctx.showError(said);
    }
  }
}
