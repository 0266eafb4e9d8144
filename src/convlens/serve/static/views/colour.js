// Colour maps and colour bars. A map that is never negative is drawn in a sequential map (viridis);
// one with negative values in a diverging map whose white is exactly zero (blue below, red above),
// so the sign of every unit can be read. Each bar marks its min, its max and, when inside, zero.
import { el, num } from "../api.js";

const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
const DIVERGING = [[5, 48, 97], [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240],
  [247, 247, 247], [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43], [103, 0, 31]];

function lut(stops) {
  const out = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (stops.length - 1), k = Math.min(stops.length - 2, Math.floor(t)), f = t - k;
    for (let c = 0; c < 3; c++) out[i * 3 + c] = stops[k][c] * (1 - f) + stops[k + 1][c] * f;
  }
  return out;
}
const SEQ = lut(VIRIDIS), DIV = lut(DIVERGING);

export const isDiverging = (min, max) => typeof min === "number" && min < 0 && max > 0;

// The position in [0, 1] of value v on the bar of [min, max].
function position(v, min, max) {
  if (isDiverging(min, max)) {
    const m = Math.max(-min, max);
    return 0.5 + 0.5 * (v / m);
  }
  return max > min ? (v - min) / (max - min) : 0;
}

// Recolour a greyscale image whose grey g stands for min + g/255 * (max - min), in place.
export function colourise(imageData, min, max) {
  const d = imageData.data, div = isDiverging(min, max), table = div ? DIV : SEQ;
  const m = Math.max(Math.abs(min), Math.abs(max)) || 1;
  const map = new Uint8Array(256);
  for (let g = 0; g < 256; g++) {
    const v = min + (g / 255) * (max - min);
    const t = div ? 0.5 + 0.5 * (v / m) : g / 255;
    map[g] = Math.max(0, Math.min(255, Math.round(t * 255)));
  }
  for (let i = 0; i < d.length; i += 4) {
    const k = map[d[i]] * 3;
    d[i] = table[k]; d[i + 1] = table[k + 1]; d[i + 2] = table[k + 2];
  }
  return imageData;
}

// A horizontal bar with the map's colours, labelled with its min, max and zero. `kind` "heat" draws
// the attribution overlays' inferno-like ramp instead (their colours come from the server).
export function colourBar(min, max, { width = 180, kind = "auto", label = "" } = {}) {
  const known = typeof min === "number" && typeof max === "number" && Number.isFinite(min) && Number.isFinite(max);
  const bar = el("div", { class: "colourbar", "data-min": known ? min : null, "data-max": known ? max : null });
  const cv = el("canvas", { width, height: 10 });
  const g = cv.getContext("2d");
  const div = known && kind === "auto" && isDiverging(min, max);
  const grad = g.createLinearGradient(0, 0, width, 0);
  if (kind === "heat") {
    [[0, "#000004"], [0.25, "#57106e"], [0.5, "#bc3754"], [0.75, "#f98e09"], [1, "#fcffa4"]]
      .forEach(([t, c]) => grad.addColorStop(t, c));
  } else {
    const table = div ? DIV : SEQ;
    for (let i = 0; i <= 16; i++) {
      const t = i / 16, k = Math.round(t * 255) * 3;
      // With a diverging map the bar shows only the part of the range the values use.
      const u = div ? position(min + t * (max - min), min, max) : t;
      const kk = div ? Math.round(u * 255) * 3 : k;
      grad.addColorStop(t, `rgb(${table[kk]},${table[kk + 1]},${table[kk + 2]})`);
    }
  }
  g.fillStyle = grad;
  g.fillRect(0, 0, width, 10);
  const ticks = el("div", { class: "ticks", style: `width:${width}px` });
  if (known) {
    ticks.append(el("span", { class: "min", style: "left:0" }, `min ${num(min)}`),
      el("span", { class: "max", style: "right:0" }, `max ${num(max)}`));
    if (min < 0 && max > 0) {
      const z = ((0 - min) / (max - min)) * width;
      ticks.append(el("span", { class: "zero", style: `left:${z}px` }, "0"));
      g.fillStyle = "#000";
      g.fillRect(Math.round(z) - 1, 0, 2, 10);
    } else if (min === 0 || max === 0) {
      bar.classList.add("zero-at-end");
    }
  } else {
    ticks.append(el("span", { class: "min", style: "left:0" }, "low"), el("span", { class: "max", style: "right:0" }, "high"));
  }
  bar.append(label ? el("small", { class: "what" }, label) : "", cv, ticks);
  return bar;
}
