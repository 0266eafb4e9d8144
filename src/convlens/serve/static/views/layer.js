// Layer view ("microscope"): for every channel of a layer, the filter (first layer only), the image
// synthesised to excite it most (activation maximisation) and the test-set patches that excite it
// most, cropped to the unit's receptive field. Computed on demand with progress, cached on disk.
import { getJSON, runJob, progressBar, el } from "../api.js";

export async function render(root, ctx) {
  const base = `/api/subjects/${encodeURIComponent(ctx.subject)}`;
  const net = await getJSON(`${base}/network`);
  const maps = net.layers.filter((r) => r.output_shape.length === 3 && r.call === 1);
  const convs = maps.filter((r) => r.type.startsWith("Conv"));
  const name = ctx.arg || (convs[0] || maps[0]).name;
  const row = maps.find((r) => r.name === name);
  const picker = el("select", { "aria-label": "layer",
    onchange: (e) => { location.hash = `#layer/${encodeURIComponent(e.target.value)}`; } });
  for (const r of maps) picker.append(new Option(`${r.name} (${r.type}, ${r.output_shape.join("×")})`, r.name));
  picker.value = name;
  root.append(el("h2", {}, "Layer ", picker));
  if (!row) throw new Error(`no layer ${name} with feature maps in ${ctx.subject}`);
  const channels = row.output_shape[0];
  const PAGE = 64;  // channels per job; "more" fetches the next ones (VGG's layers have 512)
  root.append(el("p", { class: "note" },
    `${channels} channels of ${row.output_shape[1]}×${row.output_shape[2]} units` +
    (row.rf ? `, each seeing ${row.rf.size[0]}×${row.rf.size[1]} input pixels` : "") +
    ". Per channel: the filter (first layer), the image that excites it most, and the test patches that excite it most."));
  const bar = progressBar();
  const grid = el("div", { class: "grid", id: "channel-grid" });
  const more = el("button", { class: "more" }, "");
  more.hidden = true;
  root.append(bar, grid, more);

  async function load(start) {
    more.hidden = true;
    const count = Math.min(PAGE, channels - start);
    const result = await runJob(`${base}/jobs/layer`, { layer: name, start, count }, bar.update);
    for (const c of result.channels) {
      const card = el("figure", { class: "channel", "data-channel": c.channel },
        el("figcaption", {}, `channel ${c.channel}`));
      if (c.filter) card.append(el("img", { src: c.filter, class: "filter", alt: `filter ${c.channel}`, title: "filter" }));
      if (c.actmax) card.append(el("img", { src: c.actmax, class: "actmax", alt: `actmax ${c.channel}`, title: "activation maximisation" }));
      for (const p of c.patches || []) {  // one PNG per patch (the views' layer grid)
        card.append(el("img", { src: p.png, class: "patches", alt: `patch ${c.channel}`, title: `top-activating patch: ${p.value}` }));
      }
      grid.append(card);
    }
    const next = start + count;
    if (next < channels) {
      more.textContent = `channels ${next}-${Math.min(next + PAGE, channels) - 1} of ${channels}`;
      more.onclick = () => load(next).catch((e) => ctx.showError(e.message));
      more.hidden = false;
    }
  }
  await load(0);
}
