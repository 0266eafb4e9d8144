// Arithmetic view: the conv layer calculator of `convlens explain` as sliders. The numbers come from
// the server (the summary of a real Conv2d and explain_conv's text); the animation slides the filter
// over the padded input volume, one output position per step, filling the output map.
import { getJSON, el, fmt } from "../api.js";

const SLIDERS = [
  ["size", "input size W", 1, 32, 7], ["depth", "input depth D", 1, 8, 3],
  ["kernel", "kernel K", 1, 11, 3], ["stride", "stride S", 1, 6, 2],
  ["padding", "padding P", 0, 6, 1], ["filters", "filters", 1, 16, 2],
];

export async function render(root) {
  const values = {}, inputs = {};
  const form = el("div", { class: "sliders" });
  for (const [key, text, min, max, start] of SLIDERS) {
    values[key] = start;
    const out = el("output", {}, String(start));
    inputs[key] = el("input", { type: "range", min, max, value: start, name: key,
      oninput: (e) => { values[key] = +e.target.value; out.textContent = e.target.value; update(); } });
    form.append(el("label", {}, el("span", {}, text), inputs[key], out));
  }
  const numbers = el("div", { class: "numbers" });
  const lines = el("pre", { class: "explain" });
  const canvas = el("canvas", { width: 640, height: 300, class: "slide" });
  root.append(el("h2", {}, "Convolution arithmetic"), el("div", { class: "arith" }, form, numbers), canvas, lines);
  let request = 0, result = null, step = 0;

  async function update() {
    const mine = ++request;
    try {
      const r = await getJSON(`/api/explain/conv?${new URLSearchParams(values)}`);
      if (mine !== request) return;
      result = r;
      step = 0;
      const [f, oh, ow] = r.output_shape;
      numbers.replaceChildren(
        el("div", {}, el("b", { id: "out-size" }, `${ow}×${oh}×${f}`), " output volume"),
        el("div", {}, el("b", { id: "neurons" }, fmt(r.neurons)), " neurons"),
        el("div", {}, el("b", { id: "params" }, fmt(r.params)), " parameters with sharing"),
        el("div", {}, el("b", { id: "params-unshared" }, fmt(r.params_unshared)), " without sharing"),
        el("div", {}, el("b", {}, fmt(r.macs)), " multiply-adds"));
      lines.textContent = r.lines.join("\n");
      paint();
    } catch (e) {
      if (mine !== request) return;
      result = null;
      numbers.replaceChildren(el("div", { class: "bad" }, e.message));
      lines.textContent = "";
    }
  }

  function paint() {
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (result) {
      const { size, padding, kernel, stride, depth } = values;
      const n = size + 2 * padding, [, oh, ow] = result.output_shape;
      const cell = Math.max(3, Math.min(22, Math.floor(240 / (n + depth))));
      const pos = step % (oh * ow), oi = Math.floor(pos / ow), oj = pos % ow;
      for (let d = depth - 1; d >= 0; d--) {  // the depth slices, back to front
        const ox = 20 + d * cell * 0.6, oy = 30 + (depth - 1 - d) * cell * 0.6;
        for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
          const pad = i < padding || j < padding || i >= n - padding || j >= n - padding;
          g.fillStyle = pad ? "#eef0f3" : d === 0 ? "#cfe0f5" : "#b5cbe6";
          g.fillRect(ox + j * cell, oy + i * cell, cell - 1, cell - 1);
        }
        g.strokeStyle = "#d9480f";
        g.lineWidth = 2;
        g.strokeRect(ox + oj * stride * cell, oy + oi * stride * cell, kernel * cell - 1, kernel * cell - 1);
      }
      const ox = 60 + (n + depth) * cell, oy = 30;
      for (let i = 0; i < oh; i++) for (let j = 0; j < ow; j++) {
        const done = i * ow + j <= pos;
        g.fillStyle = i === oi && j === oj ? "#d9480f" : done ? "#f4b183" : "#eef0f3";
        g.fillRect(ox + j * cell, oy + i * cell, cell - 1, cell - 1);
      }
      g.fillStyle = "#333";
      g.font = "13px sans-serif";
      g.fillText(`input ${size}×${size}×${depth}, padded to ${n}×${n}`, 20, 18);
      g.fillText(`output map ${ow}×${oh} (one of ${values.filters})`, ox, 18);
    }
  }

  function tick() {  // one output position per tick, until the view is left
    if (!canvas.isConnected) return;
    paint();
    step += 1;
    setTimeout(() => requestAnimationFrame(tick), 450);
  }
  await update();
  tick();
}
