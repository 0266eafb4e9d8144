// Network view: the architecture as a vertical diagram, one box per layer (output shape, neurons,
// parameters shared / unshared, MACs, receptive field). Where the server sends the data flow
// (`graph`), parallel paths get their own lanes: a residual block's shortcut runs beside its main
// path, an inception block's branches side by side. Clicking a box opens the layer view.
import { getJSON, el, fmt } from "../api.js";

const BOX_W = 320, BOX_H = 58, JOIN = 14, GAP_X = 24, GAP_Y = 22;
const SVG = "http://www.w3.org/2000/svg";

// Lanes: a node takes the lane of an input it is the last reader of; else the lowest free lane.
// A lane stays taken while its node still has readers to come, so a shortcut runs down an empty lane.
export function layout(order, inputs) {
  const readers = {};
  for (const n of order) for (const i of inputs[n]) readers[i] = (readers[i] || 0) + 1;
  const lanes = [], lane = {}, row = {}, bottom = [];
  for (const n of order) {
    const last = [];
    for (const i of inputs[n]) if (--readers[i] === 0) last.push(i);
    let l = last.length ? Math.min(...last.map((i) => lane[i])) : lanes.indexOf(null);
    if (l < 0) l = lanes.length;
    for (const i of last) if (lane[i] !== l) lanes[lane[i]] = null;
    lanes[l] = readers[n] === undefined ? null : n;
    lane[n] = l;
    const below = Math.max(-1, ...inputs[n].map((i) => row[i]));
    row[n] = Math.max(below + 1, (bottom[l] ?? -1) + 1);
    bottom[l] = row[n];
  }
  return { lane, row };
}

function chain(rows) {
  const order = ["input", ...rows.map((r) => label(r))];
  const inputs = { input: [] };
  order.slice(1).forEach((n, k) => { inputs[n] = [order[k]]; });
  return { order, inputs };
}

const label = (r) => (r.call > 1 ? `${r.name} (${r.call})` : r.name);

function boxText(r) {
  const shape = r.output_shape.join("×");
  const rf = r.rf ? `RF ${r.rf.size[0]}×${r.rf.size[1]}` : "";
  const params = r.params ? `params ${fmt(r.params)} / ${fmt(r.params_unshared)} unshared` : "";
  return [
    `${label(r)}  ·  ${r.type}`,
    `${shape}  ·  ${fmt(r.neurons)} neurons  ${rf}`,
    [params, r.macs ? `MACs ${fmt(r.macs)}` : ""].filter(Boolean).join("  ·  "),
  ];
}

export async function render(root, ctx) {
  const net = await getJSON(`/api/subjects/${encodeURIComponent(ctx.subject)}/network`);
  const t = net.totals;
  root.append(el("h2", {}, `${ctx.subject}: ${ctx.info.model}`),
    el("p", { class: "note" },
      `input ${net.input.join("×")} → output ${net.output.join("×")} · ${fmt(t.params)} parameters ` +
      `(${fmt(t.params_unshared)} without sharing) · ${fmt(t.macs)} MACs · ${t.layers} layers. ` +
      "Click a layer to open it."));
  const rows = Object.fromEntries(net.layers.map((r) => [label(r), r]));
  const { order, inputs } = net.graph
    ? { order: Object.keys(net.graph), inputs: net.graph }
    : chain(net.layers);
  const { lane, row } = layout(order, inputs);
  const laneCount = Math.max(...Object.values(lane)) + 1;
  const rowCount = Math.max(...Object.values(row)) + 1;
  const x = (n) => 10 + lane[n] * (BOX_W + GAP_X);
  const y = (n) => 10 + row[n] * (BOX_H + GAP_Y);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", 20 + laneCount * (BOX_W + GAP_X));
  svg.setAttribute("height", 20 + rowCount * (BOX_H + GAP_Y));
  svg.classList.add("network");
  const isBox = (n) => n === "input" || rows[n] !== undefined;
  const centreX = (n) => x(n) + BOX_W / 2;
  for (const n of order) {
    for (const i of inputs[n]) {
      const x1 = centreX(i), y1 = y(i) + (isBox(i) ? BOX_H : JOIN * 2);
      const x2 = centreX(n), y2 = y(n);
      const path = document.createElementNS(SVG, "path");
      const mid = (y1 + y2) / 2;
      path.setAttribute("d", `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`);
      path.classList.add("edge");
      svg.append(path);
    }
  }
  for (const n of order) {
    const g = document.createElementNS(SVG, "g");
    const left = isBox(n) ? x(n) : centreX(n) - JOIN;  // a join sits on its lane's axis
    g.setAttribute("transform", `translate(${left},${y(n)})`);
    if (isBox(n)) {
      const r = rows[n];
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("width", BOX_W);
      rect.setAttribute("height", BOX_H);
      rect.setAttribute("rx", 6);
      g.append(rect);
      const lines = r ? boxText(r) : [`input  ·  ${net.input.join("×")}`];
      lines.forEach((text, k) => {
        const tx = document.createElementNS(SVG, "text");
        tx.setAttribute("x", 8);
        tx.setAttribute("y", 17 + k * 16);
        if (k === 0) tx.classList.add("title");
        tx.textContent = text;
        g.append(tx);
      });
      g.classList.add("layer", r ? r.type.toLowerCase() : "input");
      if (r && r.output_shape.length === 3) {
        g.classList.add("clickable");
        g.dataset.layer = r.name;
        g.addEventListener("click", () => { location.hash = `#layer/${encodeURIComponent(r.name)}`; });
      }
    } else {  // a join: + for add, ∥ for concatenation
      const c = document.createElementNS(SVG, "circle");
      c.setAttribute("cx", JOIN);
      c.setAttribute("cy", JOIN);
      c.setAttribute("r", JOIN);
      const tx = document.createElementNS(SVG, "text");
      tx.setAttribute("x", JOIN);
      tx.setAttribute("y", JOIN + 5);
      tx.setAttribute("text-anchor", "middle");
      tx.textContent = n.startsWith("cat") ? "∥" : n.startsWith("mul") ? "×" : "+";
      const title = document.createElementNS(SVG, "title");
      title.textContent = n;
      g.append(c, tx, title);
      g.classList.add("join");
    }
    svg.append(g);
  }
  root.append(el("div", { class: "scroll" }, svg));
}
