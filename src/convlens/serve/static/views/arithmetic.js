// Arithmetic view: the conv layer calculator of `convlens explain`. The counts come from the server
// (the summary of a real Conv2d and explain_conv's text); the animation slides filter 0 over the
// padded input, one output position per step (step, play, pause), with numbers in the cells when
// they fit: a small example input (whole numbers 0-9), the kernel (-1, 0, 1) and each output as the
// sum of the products. Input pixels no window ever covers (the stride skips them) are hatched red.
import { getJSON, el, fmt } from "../api.js";

// [key, label, min, max, start]: ranges take AlexNet's first layer (227, 11, 4).
const FIELDS = [
  ["size", "input size H = W", 1, 512, 7], ["depth", "input channels C", 1, 64, 3],
  ["kernel", "kernel K", 1, 64, 3], ["stride", "stride S", 1, 64, 2],
  ["padding", "padding P", 0, 64, 1], ["filters", "filters F", 1, 512, 2],
];

const inputAt = (d, i, j) => (i * 7 + j * 13 + d * 5) % 10;           // the example input
const weightAt = (d, i, j) => ((i * 3 + j * 5 + d * 2) % 3) - 1;       // filter 0's example weights

export async function render(root) {
  const values = {}, inputs = {};
  const form = el("div", { class: "sliders" });
  for (const [key, text, min, max, start] of FIELDS) {
    values[key] = start;
    const range = el("input", { type: "range", min, max, value: start, name: key, "aria-label": text });
    const box = el("input", { type: "number", min, max, value: start, name: `${key}-number`, "aria-label": `${text} (number)` });
    const set = (v) => {
      const x = Math.max(min, Math.min(max, Math.round(+v)));
      if (!Number.isFinite(x)) return;
      values[key] = x; range.value = x; box.value = x;
      update();
    };
    range.addEventListener("input", (e) => set(e.target.value));
    box.addEventListener("change", (e) => set(e.target.value));
    inputs[key] = { range, box, set };
    form.append(el("label", {}, el("span", {}, text), range, box));
  }
  form.append(el("button", { type: "button", id: "alexnet", onclick: () => {
    for (const [k, v] of Object.entries({ size: 227, depth: 3, kernel: 11, stride: 4, padding: 0, filters: 96 })) {
      values[k] = v; inputs[k].range.value = v; inputs[k].box.value = v;
    }
    update();
  } }, "AlexNet's conv1 (227, 11, 4)"));
  const numbers = el("div", { class: "numbers" });
  const stepBtn = el("button", { type: "button", id: "step", onclick: () => { playing = false; sync(); clearTimeout(timer); advance(); } }, "step");
  const playBtn = el("button", { type: "button", id: "play", onclick: () => { playing = !playing; sync(); clearTimeout(timer); if (playing) loop(); } }, "pause");
  const resetBtn = el("button", { type: "button", id: "reset", onclick: () => { step = 0; paint(); } }, "start over");
  const where = el("div", { class: "where", id: "where" });
  const canvas = el("canvas", { width: 900, height: 360, class: "slide", id: "slide" });
  const lines = el("pre", { class: "explain" });
  const legend = el("p", { class: "note" }, "Grey: padding (zeros). Orange frame: the window of the current output. ",
    el("span", { class: "unseen-key" }, "Red hatching"), ": input pixels no window covers, so this layer never sees them.");
  root.append(el("h2", {}, "Convolution arithmetic"), el("p", { class: "note" }, "Shapes are C×H×W."),
    el("div", { class: "arith" }, form, numbers),
    el("div", { class: "controls" }, stepBtn, playBtn, resetBtn, where), canvas, legend, lines);
  let request = 0, result = null, step = 0, playing = true;
  const sync = () => { playBtn.textContent = playing ? "pause" : "play"; };

  async function update() {
    const mine = ++request;
    try {
      const r = await getJSON(`/api/explain/conv?${new URLSearchParams(values)}`);
      if (mine !== request) return;
      result = r;
      step = 0;
      const [f, oh, ow] = r.output_shape;
      numbers.replaceChildren(
        el("div", {}, el("b", { id: "out-size" }, `${f}×${oh}×${ow}`), " output volume (C×H×W)"),
        el("div", {}, el("b", { id: "neurons" }, fmt(r.neurons)), " neurons"),
        el("div", {}, el("b", { id: "params" }, fmt(r.params)), " parameters with sharing"),
        el("div", {}, el("b", { id: "params-unshared" }, fmt(r.params_unshared)), " without sharing"),
        el("div", {}, el("b", { id: "macs" }, fmt(r.macs)), " multiply-adds"));
      // The explanation follows the notes, which write volumes W×H×D; say so in this page's C×H×W.
      const d = values.depth, w = values.size;
      lines.textContent = `The notes write a volume as W×H×D: their input ${w}x${w}x${d} is ${d}×${w}×${w} ` +
        `(C×H×W, the order of every other shape here), their output ${ow}x${oh}x${f} is ${f}×${oh}×${ow}.\n\n` +
        (r.lines || []).join("\n");
      paint();
    } catch (e) {
      if (mine !== request) return;
      result = null;
      numbers.replaceChildren(el("div", { class: "bad", id: "arith-error" }, e.message));
      lines.textContent = "";
      paint();
    }
  }

  // Which padded rows (and, the same, columns) some window covers.
  function covered(n, k, s, o) {
    const seen = new Uint8Array(n);
    for (let q = 0; q < o; q++) for (let t = q * s; t < Math.min(n, q * s + k); t++) seen[t] = 1;
    return seen;
  }

  function paint() {
    const width = Math.max(640, Math.min(1200, (canvas.parentElement?.clientWidth || 900)));
    if (canvas.width !== width) canvas.width = width;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (!result) { where.textContent = ""; return; }
    const { size, padding, kernel, stride, depth } = values;
    const n = size + 2 * padding, [, oh, ow] = result.output_shape;
    const slices = Math.min(depth, 3);  // at most 3 slices drawn behind each other
    const room = (canvas.width - 120) / 2.6;
    const cell = Math.max(1, Math.min(30, Math.floor(Math.min(300, room) / (n + slices))));
    const showNums = cell >= 16;
    const height = Math.max(360, 70 + (n + slices) * cell);
    if (canvas.height !== height) canvas.height = height;
    const total = oh * ow, pos = step % total, oi = Math.floor(pos / ow), oj = pos % ow;
    const seenRows = covered(n, kernel, stride, oh), seenCols = covered(n, kernel, stride, ow);
    g.font = `${Math.max(8, Math.floor(cell * 0.5))}px system-ui, sans-serif`;
    g.textAlign = "center";
    g.textBaseline = "middle";
    const off = cell * 0.6;
    for (let d = slices - 1; d >= 0; d--) {  // the channel slices, back to front
      const ox = 20 + d * off, oy = 40 + (slices - 1 - d) * off;
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
        const pad = i < padding || j < padding || i >= n - padding || j >= n - padding;
        const unseen = !pad && (!seenRows[i] || !seenCols[j]);
        g.fillStyle = pad ? "#e6e8ec" : d === 0 ? "#cfe0f5" : "#b5cbe6";
        g.fillRect(ox + j * cell, oy + i * cell, Math.max(1, cell - 1), Math.max(1, cell - 1));
        if (unseen && d === 0) {
          g.fillStyle = "rgba(201, 42, 42, 0.55)";
          g.fillRect(ox + j * cell, oy + i * cell, Math.max(1, cell - 1), Math.max(1, cell - 1));
        }
        if (showNums && d === 0) {
          g.fillStyle = "#1d2430";
          g.fillText(pad ? "0" : String(inputAt(0, i - padding, j - padding)), ox + j * cell + cell / 2, oy + i * cell + cell / 2);
        }
      }
      g.strokeStyle = "#d9480f";
      g.lineWidth = 2;
      g.strokeRect(ox + oj * stride * cell, oy + oi * stride * cell, kernel * cell - 1, kernel * cell - 1);
    }
    // The kernel (filter 0, channel 0) when numbers fit, then the output map.
    let ox = 50 + (n + slices) * cell;
    if (showNums) {
      g.fillStyle = "#333";
      g.textAlign = "left";
      g.fillText("kernel (filter 0, channel 0)", ox, 22);
      g.textAlign = "center";
      for (let i = 0; i < kernel; i++) for (let j = 0; j < kernel; j++) {
        g.fillStyle = "#fde6d8";
        g.fillRect(ox + j * cell, 40 + i * cell, cell - 1, cell - 1);
        g.fillStyle = "#1d2430";
        g.fillText(String(weightAt(0, i, j)), ox + j * cell + cell / 2, 40 + i * cell + cell / 2);
      }
      ox += Math.max(kernel * cell, g.measureText("kernel (filter 0, channel 0)").width) + 40;
    }
    const value = (a, b) => {  // output (a, b) of filter 0 on the example input, over all channels
      let s = 0;
      for (let d = 0; d < depth; d++) for (let i = 0; i < kernel; i++) for (let j = 0; j < kernel; j++) {
        const y = a * stride + i - padding, x = b * stride + j - padding;
        if (y >= 0 && x >= 0 && y < size && x < size) s += inputAt(d, y, x) * weightAt(d, i, j);
      }
      return s;
    };
    for (let i = 0; i < oh; i++) for (let j = 0; j < ow; j++) {
      const done = i * ow + j <= pos;
      g.fillStyle = i === oi && j === oj ? "#d9480f" : done ? "#f4b183" : "#eef0f3";
      g.fillRect(ox + j * cell, 40 + i * cell, Math.max(1, cell - 1), Math.max(1, cell - 1));
      if (showNums && done && oh * ow <= 400) {
        g.fillStyle = i === oi && j === oj ? "#fff" : "#1d2430";
        g.fillText(String(value(i, j)), ox + j * cell + cell / 2, 40 + i * cell + cell / 2);
      }
    }
    g.fillStyle = "#333";
    g.textAlign = "left";
    g.font = "13px system-ui, sans-serif";
    g.fillText(`input ${depth}×${size}×${size}, padded to ${depth}×${n}×${n}`, 20, 22);
    g.fillText(`output map ${oh}×${ow} (1 of ${values.filters})`, ox, 22);
    const unseenCount = Array.from({ length: n }, (_, i) => i).filter((i) => i >= padding && i < n - padding && !seenRows[i]).length;
    const cost = depth * kernel * kernel;
    where.textContent = `output ${pos + 1} of ${total}: row ${oi}, column ${oj} = Σ of ${cost} products` +
      (depth * kernel * kernel <= 4096 ? ` = ${value(oi, oj)}` : "") +
      (unseenCount ? ` · ${unseenCount} input row${unseenCount === 1 ? "" : "s"} (and columns) never seen` : "");
    where.dataset.position = String(pos);
  }

  function advance() { step += 1; paint(); }
  let timer = null;
  function loop() {  // one output position per tick, until paused or the view is left
    clearTimeout(timer);
    if (!canvas.isConnected || !playing) return;
    advance();
    timer = setTimeout(() => requestAnimationFrame(loop), 600);
  }
  window.addEventListener("resize", () => { if (canvas.isConnected) paint(); });
  await update();
  timer = setTimeout(loop, 600);
}
