// Image view: pick a test image or drop a photo. Top-5 predictions; the activations of every conv
// and pooling layer (CNN Explainer's overview); for a chosen class and layer, Grad-CAM, guided
// Grad-CAM, saliency and occlusion overlays. Clicking a unit of a feature map draws its theoretical
// receptive field (the box) and the layer's effective receptive field (the heat) on the input.
import { getJSON, postJSON, upload, runJob, progressBar, el } from "../api.js";

const STAGE = 300;  // displayed input size in CSS pixels
const METHODS = [["gradcam", "Grad-CAM"], ["guided_gradcam", "guided Grad-CAM"],
  ["saliency", "saliency"], ["occlusion", "occlusion"]];

export async function render(root, ctx) {
  const base = `/api/subjects/${encodeURIComponent(ctx.subject)}`;
  const info = ctx.info;
  const net = await getJSON(`${base}/network`);
  const convs = net.layers.filter((r) => r.type.startsWith("Conv") && r.call === 1);
  const [, ih, iw] = info.input;
  const scale = STAGE / Math.max(ih, iw);

  // Left: choose an image.
  const thumbs = el("div", { class: "thumbs" });
  const n = Math.min(info.images, 16);
  for (let k = 0; k < n; k++) {
    const index = Math.floor((k * info.images) / n);
    thumbs.append(el("img", { src: `${base}/images/${index}.png`, alt: `test image ${index}`,
      "data-index": index, onclick: () => show(`test:${index}`) }));
  }
  const file = el("input", { type: "file", accept: "image/*", id: "upload",
    onchange: (e) => e.target.files[0] && send(e.target.files[0]) });
  const drop = el("label", { class: "drop", for: "upload" }, "Drop a photo here, or click to choose one", file);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
  });

  // Middle: the input with its overlays, the predictions and the attribution controls.
  const input = el("img", { class: "input", alt: "input" });
  const overlay = el("img", { class: "overlay", alt: "" });
  const erf = el("img", { class: "erf", alt: "" });
  const box = el("div", { class: "rfbox", id: "rf-box" });
  for (const e of [overlay, erf, box]) e.hidden = true;
  const stage = el("div", { class: "stage" }, input, overlay, erf, box);
  stage.style.width = `${iw * scale}px`;
  stage.style.height = `${ih * scale}px`;
  const rfNote = el("p", { class: "note", id: "rf-note" });
  const top5 = el("ol", { class: "top5", id: "top5" });
  const target = el("select", { "aria-label": "class", onchange: () => explain() });
  info.classes.forEach((c, i) => target.append(new Option(`${i}: ${c}`, i)));
  const layerPick = el("select", { "aria-label": "layer", onchange: () => explain() });
  for (const r of convs) layerPick.append(new Option(r.name, r.name));
  // Grad-CAM's default: the last conv layer whose map still has positions (LeNet's C5 is 1x1).
  const spatial = convs.filter((r) => r.output_shape[1] * r.output_shape[2] > 1);
  layerPick.value = (spatial.length ? spatial : convs).at(-1)?.name ?? "";
  const buttons = el("div", { class: "methods" });
  let method = null;
  for (const [key, text] of METHODS) {
    buttons.append(el("button", { "data-method": key, onclick: () => { method = key; explain(); } }, text));
  }
  const bar = progressBar();
  bar.hidden = true;
  const acts = el("div", { class: "acts", id: "activations" });
  // Left (stays in view while the activations scroll): the input, its overlays, the predictions,
  // the controls and the images to pick from. Right: the activations of every layer.
  root.append(
    el("div", { class: "imageview" },
      el("div", { class: "look" }, stage, rfNote, top5,
        el("div", { class: "controls" }, el("label", {}, "class ", target), el("label", {}, "layer ", layerPick)),
        buttons, bar, drop, thumbs),
      el("div", { class: "actscol" },
        el("h3", {}, "Activations of every layer: click a unit to see its receptive field"), acts)));

  let current = null;

  async function send(f) {
    try {
      const r = await upload(`${base}/uploads`, f);
      await show(r.image);
    } catch (e) { ctx.showError(e.message); }
  }

  async function show(image) {
    ctx.showError("");
    current = image;
    const r = await postJSON(`${base}/predict`, { image });
    if (current !== image) return;
    input.src = r.input;
    overlay.hidden = erf.hidden = box.hidden = true;
    rfNote.textContent = "";
    top5.replaceChildren(...r.top.map((t) => el("li", {},
      el("span", { class: "bar", style: `width:${Math.round(t.p * 100)}%` }),
      el("span", {}, `${t.name} ${(t.p * 100).toFixed(1)} %`))));
    target.value = r.top[0].index;
    drawActivations(r.layers);
    if (method) explain();
  }

  async function explain() {
    if (!current || !method) return;
    for (const b of buttons.children) b.classList.toggle("active", b.dataset.method === method);
    const body = { image: current, target: +target.value };
    try {
      let r;
      if (method === "occlusion") {
        bar.hidden = false;
        r = await runJob(`${base}/jobs/occlusion`, { ...body, window: Math.max(2, Math.round(iw / 8)),
          stride: Math.max(1, Math.round(iw / 16)) }, bar.update);
      } else {
        r = await postJSON(`${base}/attribution`, { ...body, method, layer: layerPick.value || null });
      }
      erf.hidden = box.hidden = true;  // one picture at a time: the attribution, or a unit's fields
      rfNote.textContent = "";
      overlay.src = r.overlay;
      overlay.dataset.method = method;
      overlay.classList.toggle("opaque", method === "guided_gradcam");
      overlay.hidden = false;
    } catch (e) { ctx.showError(e.message); }
  }

  // One canvas per layer with its channels as tiles (a deep network has thousands of channels: one
  // element each would make the page crawl). A click is turned back into (channel, row, col).
  const GAP = 3;
  function drawActivations(layers) {
    acts.replaceChildren();
    const width = Math.max(300, acts.clientWidth || 880);
    for (const L of layers) {
      const [c, h, w] = L.shape;
      const tw = Math.max(36, Math.min(96, w * 3)), th = Math.round((tw * h) / w);
      const cols = Math.max(1, Math.min(c, Math.floor((width + GAP) / (tw + GAP))));
      const rows = Math.ceil(c / cols);
      const cv = el("canvas", { width: cols * (tw + GAP), height: rows * (th + GAP),
        "data-layer": L.name, title: `${L.name}: ${c} channels of ${h}×${w}` });
      const marker = el("div", { class: "marker" });
      marker.hidden = true;
      acts.append(el("section", { class: "actlayer" },
        el("h4", {}, `${L.name}  ${c}×${h}×${w}`), el("div", { class: "tiles" }, cv, marker)));
      const atlas = new Image();
      atlas.onload = () => {
        const g = cv.getContext("2d");
        g.imageSmoothingEnabled = false;
        for (let k = 0; k < c; k++) {
          g.drawImage(atlas, (k % L.cols) * w, Math.floor(k / L.cols) * h, w, h,
            (k % cols) * (tw + GAP), Math.floor(k / cols) * (th + GAP), tw, th);
        }
      };
      atlas.src = L.png;
      cv.addEventListener("click", (e) => {
        const tx = Math.floor(e.offsetX / (tw + GAP)), ty = Math.floor(e.offsetY / (th + GAP));
        const dx = e.offsetX - tx * (tw + GAP), dy = e.offsetY - ty * (th + GAP);
        const channel = ty * cols + tx;
        if (dx >= tw || dy >= th || channel >= c) return;  // a gap, or past the last channel
        const row = Math.floor((dy / th) * h), col = Math.floor((dx / tw) * w);
        for (const m of acts.querySelectorAll(".marker")) m.hidden = true;
        Object.assign(marker.style, { left: `${tx * (tw + GAP) + (col * tw) / w}px`,
          top: `${ty * (th + GAP) + (row * th) / h}px`, width: `${tw / w}px`, height: `${th / h}px` });
        marker.hidden = false;
        unit(L.name, channel, row, col);
      });
    }
  }

  async function unit(layer, channel, row, col) {
    try {
      const r = await getJSON(`${base}/rf?${new URLSearchParams({ layer, row, col })}`);
      const [t, l, b, rr] = r.box;
      Object.assign(box.style, { top: `${t * scale}px`, left: `${l * scale}px`,
        height: `${(b - t) * scale}px`, width: `${(rr - l) * scale}px` });
      box.hidden = false;
      overlay.hidden = true;
      erf.src = r.erf.map;
      erf.style.transform = `translate(${r.erf.shift[1] * scale}px, ${r.erf.shift[0] * scale}px)`;
      erf.hidden = false;
      rfNote.textContent = `${layer}, channel ${channel}, unit (${row}, ${col}): theoretical field ` +
        `${b - t}×${rr - l} pixels (box); effective field (heat) holds 95 % of its weight within ` +
        `${r.erf.radius.toFixed(1)} pixels of its centre.`;
    } catch (err) { ctx.showError(err.message); }
  }

  if (info.images > 0) await show("test:0");
}
