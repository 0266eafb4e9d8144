// Network view: the architecture as a vertical diagram, one box per layer (output shape C×H×W,
// kernel, stride, padding, dilation and groups, parameters, MACs, receptive field). Where the server
// sends the data flow (`graph`), parallel paths get their own lanes: a residual block's shortcut runs
// beside its main path, an inception block's branches side by side. Blocks the server names
// (`blocks`: a ResNet stage, an inception module) collapse into one box and expand again; the
// diagram zooms. Every box is reachable with the keyboard (Tab, then Enter).
import { el, fmt, plural, shape } from "../api.js";

const BOX_MIN_W = 300, LINE = 16, PAD = 8, JOIN = 14, GAP_X = 24, GAP_Y = 22;
const SVG = "http://www.w3.org/2000/svg";
const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

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

// Collapse blocks: each collapsed block's members become one node; a join whose inputs all come from
// one block (a residual add inside it) goes with it.
export function contract(order, inputs, blocks, collapsed, isJoin = () => false) {
  // The outermost collapsed block owns a layer (blocks nest: a ResNet stage holds its blocks).
  const owner = {};
  const outerFirst = [...blocks].sort((a, b) => b.members.length - a.members.length);
  for (const b of outerFirst) {
    if (!collapsed.has(b.name)) continue;
    for (const m of b.members) if (!(m in owner)) owner[m] = `block:${b.name}`;
  }
  const consumers = {};
  for (const n of order) for (const i of inputs[n]) (consumers[i] = consumers[i] || []).push(n);
  const outOrder = [], outInputs = {}, placed = {};
  const mapped = (n) => owner[n] ?? n;
  for (const n of order) {
    const ins = [...new Set(inputs[n].map(mapped))];
    // A join (a residual add) goes inside a collapsed block when it reads from the block and feeds
    // it, or reads only from it.
    if (!owner[n] && isJoin(n)) {
      const feeds = new Set((consumers[n] || []).map(mapped));
      const home = ins.find((i) => i.startsWith("block:") && (feeds.has(i) || ins.every((j) => j === i)));
      if (home) owner[n] = home;
    }
    const me = mapped(n);
    if (!(me in outInputs)) { placed[me] = outOrder.length; outOrder.push(me); outInputs[me] = []; }
    // Only inputs placed before this node: a block's own join feeding one of its members stays inside.
    for (const i of ins) if (i !== me && placed[i] < placed[me] && !outInputs[me].includes(i)) outInputs[me].push(i);
  }
  return { order: outOrder, inputs: outInputs, owner };
}

const label = (r) => (r.call > 1 ? `${r.name} (${r.call})` : r.name);
const pair = (v) => (Array.isArray(v) ? (v.every((x) => x === v[0]) ? String(v[0]) : v.join("×")) : String(v));
const square = (v) => (Array.isArray(v) ? v.join("×") : `${v}×${v}`);

function boxText(r) {
  const conv = r.type.startsWith("Conv");
  const lines = [`${label(r)}  ·  ${r.type}`];
  const out = shape(r.output_shape);
  if (conv && r.output_shape.length === 3) {
    const k = r.kernel !== undefined && r.kernel !== null ? ` of ${square(r.kernel)}` : "";
    lines.push(`${plural(r.output_shape[0], "filter")}${k}  →  ${out}`);
  } else {
    lines.push(`${out}  ·  ${fmt(r.neurons)} neurons`);
  }
  const geo = [];
  if (r.kernel !== undefined && r.kernel !== null) geo.push(`kernel ${square(r.kernel)}`);
  if (r.stride !== undefined && r.stride !== null) geo.push(`stride ${pair(r.stride)}`);
  if (r.padding !== undefined && r.padding !== null) geo.push(`padding ${pair(r.padding)}`);
  if (r.dilation !== undefined && r.dilation !== null) geo.push(`dilation ${pair(r.dilation)}`);
  if (r.groups !== undefined && r.groups !== null) geo.push(`groups ${r.groups}`);
  if (geo.length) lines.push(geo.join(" · "));
  const rf = r.rf ? `RF ${r.rf.size[0]}×${r.rf.size[1]}` : "";
  const params = r.params ? `params ${fmt(r.params)} (${fmt(r.params_unshared)} unshared)` : "";
  const rest = [params, r.macs ? `MACs ${fmt(r.macs)}` : "", rf].filter(Boolean).join(" · ");
  if (rest) lines.push(rest);
  return lines;
}

let measurer = null;
function textWidth(s) {
  measurer = measurer || document.createElement("canvas").getContext("2d");
  measurer.font = FONT;
  return measurer.measureText(s).width;
}

export async function render(root, ctx) {
  const net = await ctx.network();
  if (!ctx.alive()) return;
  const t = net.totals || {};
  const rows = Object.fromEntries(net.layers.map((r) => [label(r), r]));
  const isJoin = (n) => n !== "input" && rows[n] === undefined;
  const { order, inputs } = net.graph ? { order: Object.keys(net.graph), inputs: net.graph } : chain(net.layers);
  // Blocks with the labels of their members (a layer called twice appears as "name (2)").
  const blocks = (net.blocks || []).map((b) => {
    const names = new Set(b.layers || []);
    const members = order.filter((n) => names.has(n) || names.has(rows[n]?.name));
    return { name: b.name, members };
  }).filter((b) => b.members.length > 1);
  const collapsed = new Set(blocks.length && net.layers.length > 30 ? blocks.map((b) => b.name) : []);
  let zoom = 1;

  const controls = el("div", { class: "controls netcontrols" },
    el("button", { type: "button", id: "zoom-out", "aria-label": "zoom out", onclick: () => setZoom(zoom / 1.25) }, "−"),
    el("button", { type: "button", id: "zoom-fit", onclick: () => setZoom(1) }, "100 %"),
    el("button", { type: "button", id: "zoom-in", "aria-label": "zoom in", onclick: () => setZoom(zoom * 1.25) }, "+"));
  if (blocks.length) {
    controls.append(
      el("button", { type: "button", id: "collapse-all", onclick: () => { blocks.forEach((b) => collapsed.add(b.name)); draw(); } }, "collapse all blocks"),
      el("button", { type: "button", id: "expand-all", onclick: () => { collapsed.clear(); draw(); } }, "expand all blocks"));
  }
  const scroll = el("div", { class: "scroll", id: "network-scroll" });
  root.append(el("h2", {}, `${ctx.subject}: ${ctx.info.model ?? ""}`),
    el("p", { class: "note" },
      `input ${shape(net.input)} → output ${shape(net.output)} (shapes are C×H×W) · ${fmt(t.params)} parameters ` +
      `(${fmt(t.params_unshared)} without sharing) · ${fmt(t.macs)} MACs · ${plural(t.layers ?? net.layers.length, "layer")}. ` +
      "Click a layer (or Tab to it and press Enter) to open it" + (blocks.length ? "; click a block to expand or collapse it." : "."),
    ), controls, scroll);

  let svg = null, baseW = 0, baseH = 0;
  function setZoom(z) {
    zoom = Math.max(0.2, Math.min(3, z));
    controls.querySelector("#zoom-fit").textContent = `${Math.round(zoom * 100)} %`;
    if (svg) { svg.setAttribute("width", baseW * zoom); svg.setAttribute("height", baseH * zoom); }
  }
  scroll.addEventListener("wheel", (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    setZoom(zoom * Math.exp(-e.deltaY * 0.002));
  }, { passive: false });

  function node(tag, attrs = {}) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    return n;
  }
  function text(x, y, s, cls = null) {
    const tx = node("text", { x, y });
    if (cls) tx.classList.add(cls);
    tx.textContent = s;
    return tx;
  }
  const activate = (g, action) => {
    g.setAttribute("tabindex", "0");
    g.setAttribute("role", "button");
    g.addEventListener("click", action);
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); action(); } });
  };

  function draw() {
    const c = contract(order, inputs, blocks, collapsed, isJoin);
    const byBlock = Object.fromEntries(blocks.map((b) => [`block:${b.name}`, b]));
    const texts = {};
    for (const n of c.order) {
      if (byBlock[n]) {
        const b = byBlock[n];
        const lastRow = [...b.members].reverse().map((m) => rows[m]).find(Boolean);
        const params = b.members.reduce((a, m) => a + (rows[m]?.params || 0), 0);
        texts[n] = [`▸ ${b.name}  ·  block of ${plural(b.members.filter((m) => rows[m]).length, "layer")}`,
          `output ${shape(lastRow?.output_shape)}`, `params ${fmt(params)} · click to expand`];
      } else if (rows[n]) texts[n] = boxText(rows[n]);
      else if (n === "input") texts[n] = [`input  ·  ${shape(net.input)}`];
    }
    const widest = Math.max(0, ...Object.values(texts).flat().map((s) => textWidth(s) + (s.startsWith("▸") ? 4 : 0)));
    const BOX_W = Math.max(BOX_MIN_W, Math.ceil(widest + 2 * PAD));
    const maxLines = Math.max(1, ...Object.values(texts).map((l) => l.length));
    const BOX_H = 8 + maxLines * LINE;
    const { lane, row } = layout(c.order, c.inputs);
    const laneCount = Math.max(...Object.values(lane)) + 1;
    const rowCount = Math.max(...Object.values(row)) + 1;
    // Room on the left for the frames of expanded blocks, one tab width per level of nesting.
    const sets = blocks.map((b) => new Set(b.members));
    const depth = Object.fromEntries(blocks.map((b) => [b.name, blocks.filter((o, k) =>
      o.members.length > b.members.length && b.members.every((m) => sets[k].has(m))).length]));
    const TAB = 22, FRAME = TAB * (1 + Math.max(0, ...Object.values(depth))) + 4;
    const x = (n) => FRAME + 10 + lane[n] * (BOX_W + GAP_X);
    const y = (n) => 10 + row[n] * (BOX_H + GAP_Y);
    baseW = FRAME + 20 + laneCount * (BOX_W + GAP_X);
    baseH = 20 + rowCount * (BOX_H + GAP_Y);
    svg = node("svg", { viewBox: `0 0 ${baseW} ${baseH}`, id: "network-svg" });
    svg.classList.add("network");
    const isBox = (n) => texts[n] !== undefined;
    const centreX = (n) => x(n) + BOX_W / 2;

    // Frames behind expanded blocks, with a header that collapses them.
    for (const b of blocks) {
      if (collapsed.has(b.name)) continue;
      const inside = new Set(b.members);
      const shown = c.order.filter((n) => (byBlock[n] ? byBlock[n].members : [n]).some((m) => inside.has(m)));
      // An expanded block inside a collapsed one is not drawn at all.
      const hiddenIn = byBlock[c.owner[b.members[0]]];
      if (hiddenIn && hiddenIn.members.length > b.members.length) continue;
      if (!shown.length) continue;
      const level = depth[b.name];
      const x0 = Math.min(...shown.map(x)) - FRAME + 2 + level * TAB, x1 = Math.max(...shown.map(x)) + BOX_W + 6 - level * 3;
      const y0 = Math.min(...shown.map(y)) - 6 + level * 2;
      const y1 = Math.max(...shown.map((m) => y(m) + (isBox(m) ? BOX_H : 2 * JOIN))) + 6 - level * 2;
      const g = node("g", { "data-block": b.name, "aria-label": `collapse block ${b.name}` });
      g.classList.add("blockframe");
      g.append(node("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 8 }));
      // The frame's tab (filled, so it takes clicks) collapses the block again.
      const tab = node("rect", { x: x0, y: y0, width: TAB - 4, height: 22, rx: 4 });
      tab.classList.add("tab");
      const tx = text(x0 + (TAB - 4) / 2, y0 + 16, "▾");
      tx.setAttribute("text-anchor", "middle");
      tx.classList.add("toggle");
      g.append(tab);
      const name = node("title");
      name.textContent = `${b.name}: click to collapse`;
      g.append(tx, name);
      activate(g, () => { collapsed.add(b.name); draw(); });
      svg.append(g);
    }
    for (const n of c.order) {
      for (const i of c.inputs[n]) {
        const x1 = centreX(i), y1 = y(i) + (isBox(i) ? BOX_H : JOIN * 2);
        const x2 = centreX(n), y2 = y(n);
        const mid = (y1 + y2) / 2;
        const path = node("path", { d: `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}` });
        path.classList.add("edge");
        svg.append(path);
      }
    }
    for (const n of c.order) {
      const g = node("g");
      const left = isBox(n) ? x(n) : centreX(n) - JOIN;  // a join sits on its lane's axis
      g.setAttribute("transform", `translate(${left},${y(n)})`);
      if (isBox(n)) {
        const r = rows[n];
        g.append(node("rect", { width: BOX_W, height: BOX_H, rx: 6 }));
        texts[n].forEach((s, k) => g.append(text(PAD, 17 + k * LINE, s, k === 0 ? "title" : null)));
        if (byBlock[n]) {
          const b = byBlock[n];
          g.classList.add("layer", "block");
          g.dataset.block = b.name;
          g.setAttribute("aria-label", `expand block ${b.name}`);
          activate(g, () => { collapsed.delete(b.name); draw(); });
        } else {
          g.classList.add("layer", r ? r.type.toLowerCase() : "input");
          if (r && r.output_shape.length === 3) {
            g.classList.add("clickable");
            g.dataset.layer = r.name;
            g.setAttribute("aria-label", `open layer ${r.name}`);
            activate(g, () => ctx.go("layer", { layer: r.name }));
          }
        }
      } else {  // a join: + for add, ∥ for concatenation
        const circle = node("circle", { cx: JOIN, cy: JOIN, r: JOIN });
        const tx = text(JOIN, JOIN + 5, n.startsWith("cat") ? "∥" : n.startsWith("mul") ? "×" : "+");
        tx.setAttribute("text-anchor", "middle");
        const title = node("title");
        title.textContent = n;
        g.append(circle, tx, title);
        g.classList.add("join");
      }
      svg.append(g);
    }
    scroll.replaceChildren(svg);
    setZoom(zoom);
  }
  draw();
}
