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
  const pad = pick(u, "padded", "padding_mask", "pad");
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
  const sums = Array.isArray(u.channel_sums) ? u.channel_sums : products.map((p) => p.flat().reduce((a, b) => a + b, 0));
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
  // Channels read but not detailed (a layer with hundreds of inputs): their sums only.
  const hidden = sums.length > patch.length ? el("p", { class: "note", id: "unit-hidden" },
    `The unit reads ${sums.length} input channels; the first ${patch.length} are detailed. The sums of the others: `,
    el("span", { class: "sums" }, sums.slice(patch.length).map((v, k) => `${ins ? ins[patch.length + k] : patch.length + k}: ${num(v)}`).join(", "))) : "";

  const taps = sums.length * patch[0].length * patch[0][0].length;
  const sum = pick(u, "total", "sum", "products_sum") ?? sums.reduce((a, b) => a + b, 0);
  const bias = pick(u, "bias");
  const pre = pick(u, "pre_activation", "preactivation", "z");
  const value = pick(u, "network_value", "value", "hooked");
  const equal = pick(u, "equal", "matches");
  const steps = el("ol", { class: "unitsteps", id: "unit-steps" },
    el("li", {}, `the sum of all ${taps} products: `, el("b", { class: "sum" }, num(sum))),
    el("li", {}, "plus the bias ", el("b", {}, num(bias ?? 0)), " = ", el("b", { class: "pre" }, num(pre ?? sum + (bias ?? 0)))));
  if (value !== undefined) {
    steps.append(el("li", { class: equal === false ? "bad" : "good", id: "unit-equal" }, `the network computed ${layer} = `,
      el("b", { class: "netvalue" }, num(value)),
      equal === true ? ": equal ✓" : equal === false ? ": NOT equal" : ""));
  }
  for (const st of Array.isArray(u.steps) ? u.steps : []) {
    const same = typeof st.value === "number" && typeof st.network_value === "number" &&
      Math.abs(st.value - st.network_value) <= 1e-5 * Math.max(1, Math.abs(st.network_value));
    steps.append(el("li", { class: "then" }, `then ${st.kind}${st.layer ? ` (${st.layer})` : ""}: `,
      el("b", {}, num(st.value)), st.network_value !== undefined ? ` (the network: ${num(st.network_value)}${same ? " ✓" : ""})` : ""));
  }
  const act = pick(u, "activation", "post_activation");
  if (act !== undefined && !(Array.isArray(u.steps) && u.steps.length)) steps.append(el("li", {}, "after the activation: ", el("b", { class: "act" }, num(act))));
  const note = pick(u, "note");
  return [head,
    el("p", { class: "note" }, "Each number of the input patch is multiplied by the kernel weight over it (zeros in grey: " +
      "the padding, outside the image); the products of every input channel are summed, the bias added, then the activation applied."),
    channels, more, hidden, steps, note ? el("p", { class: "note" }, note) : ""];
}
