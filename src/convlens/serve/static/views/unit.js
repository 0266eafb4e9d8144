// The computation of one convolution unit, in the numbers the network used (GET .../unit): per input
// channel the input patch (zeros where it overhangs the padding), the kernel and their elementwise
// products; the products summed, the bias added, the activation applied, and the value the network
// itself computed beside it. Large layers show a few input channels and a button for the rest.
import { el, num } from "../api.js";

const SHOWN = 3;  // input channels drawn at first

const pick = (u, ...names) => { for (const n of names) if (u[n] !== undefined && u[n] !== null) return u[n]; return undefined; };
const is3d = (a) => Array.isArray(a) && Array.isArray(a[0]) && Array.isArray(a[0][0]);

function matrix(m, cls, caption, padMask = null) {
  const t = el("table", { class: `mat ${cls}` });
  m.forEach((row, i) => t.append(el("tr", {}, ...row.map((v, j) =>
    el("td", { class: padMask?.[i]?.[j] ? "pad" : null, title: num(v) }, num(v))))));
  return el("figure", { class: "matfig" }, t, el("figcaption", {}, caption));
}

export function renderUnit(u, { layer, channel, row, col, close }) {
  const patch = pick(u, "patch", "input", "inputs");
  const kernel = pick(u, "kernel", "weight", "weights");
  let products = pick(u, "products");
  const pad = pick(u, "padding_mask", "pad");
  const ins = pick(u, "in_channels", "input_channels");
  const head = el("div", { class: "unithead" },
    el("h3", {}, `How ${layer}, channel ${channel}, unit (${row}, ${col}) is computed`),
    el("button", { type: "button", class: "close", "aria-label": "close the computation", onclick: close }, "×"));
  if (!is3d(patch) || !is3d(kernel)) {
    return [head, el("p", { class: "note bad" }, "The server did not send the input patch and the kernel of this unit.")];
  }
  if (!is3d(products)) {
    products = patch.map((p, c) => p.map((r, i) => r.map((v, j) => v * kernel[c][i][j])));
  }
  const sums = products.map((p) => p.flat().reduce((a, b) => a + b, 0));
  const channels = el("div", { class: "unitchannels" });
  const drawChannel = (c) => {
    const label = ins ? ins[c] : c;
    channels.append(el("div", { class: "unitchannel", "data-in": label },
      el("h4", {}, `input channel ${label}`),
      el("div", { class: "mats" },
        matrix(patch[c], "patch", "input patch", pad && (is3d(pad) ? pad[c] : pad)),
        el("span", { class: "op" }, "×"),
        matrix(kernel[c], "kernel", "kernel"),
        el("span", { class: "op" }, "="),
        matrix(products[c], "products", "products"),
        el("span", { class: "op" }, "→ Σ"),
        el("b", { class: "chsum" }, num(sums[c])))));
  };
  const first = Math.min(SHOWN, patch.length);
  for (let c = 0; c < first; c++) drawChannel(c);
  const rest = patch.length - first;
  const more = rest > 0 ? el("button", { type: "button", class: "more", onclick: () => {
    for (let c = first; c < patch.length; c++) drawChannel(c);
    more.remove();
  } }, `show the other ${rest} input channel${rest === 1 ? "" : "s"}`) : "";

  const sum = pick(u, "sum", "products_sum") ?? sums.reduce((a, b) => a + b, 0);
  const bias = pick(u, "bias");
  const pre = pick(u, "pre_activation", "preactivation", "z");
  const act = pick(u, "activation", "post_activation");
  const actName = pick(u, "activation_name", "activation_layer") || "ReLU";
  const value = pick(u, "network_value", "value", "hooked");
  const equal = pick(u, "equal", "matches");
  const steps = el("ol", { class: "unitsteps", id: "unit-steps" },
    el("li", {}, `sum of all ${patch.length * patch[0].length * patch[0][0].length} products: `, el("b", { class: "sum" }, num(sum))),
    bias !== undefined ? el("li", {}, "plus the bias ", el("b", {}, num(bias)), " = ", el("b", { class: "pre" }, num(pre ?? sum + bias))) :
      el("li", {}, "no bias: the pre-activation is the sum ", el("b", { class: "pre" }, num(pre ?? sum))));
  if (act !== undefined) steps.append(el("li", {}, `after ${actName}: `, el("b", { class: "act" }, num(act))));
  if (value !== undefined) {
    const ok = equal ?? null;
    steps.append(el("li", { class: ok === false ? "bad" : "good", id: "unit-equal" }, "the network computed ",
      el("b", { class: "netvalue" }, num(value)),
      ok === true ? ": equal ✓" : ok === false ? ": NOT equal" : ""));
  }
  const note = pick(u, "note");
  return [head,
    el("p", { class: "note" }, "Each number of the input patch is multiplied by the kernel weight over it (zeros in grey: " +
      "the padding, outside the image); the products of every input channel are summed, the bias added, then the activation applied."),
    channels, more, steps, note ? el("p", { class: "note" }, note) : ""];
}
