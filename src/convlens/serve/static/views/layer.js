// Layer view ("microscope"): for every channel of a layer, the filter (first layer only), the image
// synthesised to excite it most (activation maximisation) and the test-set patches that excite it
// most, each cropped to the unit's receptive field, with its activation value and class label. A
// click enlarges a picture. Computed on demand as a job (progress, cancel), cached on disk.
import { runJob, progressBar, el, num, shape, plural, Cancelled } from "../api.js";

export async function render(root, ctx) {
  const base = `/api/subjects/${encodeURIComponent(ctx.subject)}`;
  const { info, params, signal } = ctx;
  const net = await ctx.network();
  if (!ctx.alive()) return;
  const maps = net.layers.filter((r) => r.output_shape.length === 3 && r.call === 1);
  const name = params.layer || ctx.defaultLayer(info, net) || (maps.find((r) => r.type.startsWith("Conv")) || maps[0])?.name;
  const row = maps.find((r) => r.name === name);
  const picker = el("select", { "aria-label": "layer", id: "layer-pick",
    onchange: (e) => ctx.go("layer", { layer: e.target.value }) });
  for (const r of maps) picker.append(new Option(`${r.name} (${r.type}, ${shape(r.output_shape)})`, r.name));
  picker.value = name;
  root.append(el("h2", {}, "Layer ", picker));
  if (!row) throw new Error(`${name} has no feature maps to show; choose a layer above`);
  if (!params.layer) ctx.setParams({ layer: name }, { push: false });
  const channels = row.output_shape[0];
  const d = info.defaults || {};
  const PAGE = d.channels_per_page ?? 64;  // channels per job; "more" fetches the next ones
  // The objective of the synthesised images, only when the server says it takes one.
  const objectives = d.objectives ?? null;
  // None chosen: the server's rule for the layer (the centre neuron of a linear first layer, whose
  // channel mean would give a flat square; the whole channel elsewhere).
  let objective = params.objective || d.objective || null;
  const head = el("div", { class: "controls" });
  if (Array.isArray(objectives) && objectives.length > 1) {
    const pick = el("select", { "aria-label": "objective", id: "objective",
      onchange: (e) => { objective = e.target.value || null; restart(); } });
    pick.append(new Option("as suits the layer", ""));
    for (const o of objectives) pick.append(new Option(o === "neuron" ? "centre neuron" : o === "channel" ? "whole channel (mean)" : o, o));
    pick.value = objective ?? "";
    head.append(el("label", {}, "synthesise for ", pick));
  }
  root.append(el("p", { class: "note" },
    `${plural(channels, "channel")} of ${row.output_shape[1]}×${row.output_shape[2]} units` +
    (row.rf ? `, each seeing ${row.rf.size[0]}×${row.rf.size[1]} input pixels` : "") +
    ". Per channel: the filter (first layer), the image that excites it most, and the test images' patches " +
    "that excite it most, with the activation value and the image's class. Click a picture to enlarge it."),
  el("p", { class: "legend-grey", id: "grey-legend" }, el("i", { class: "swatch grey" }),
    "Grey in a patch: the part of the unit's receptive field outside the image (the network sees padding there)."),
  head);
  const cancel = new AbortController();
  signal.addEventListener("abort", () => cancel.abort(), { once: true });
  let jobAbort = null;
  const bar = progressBar(() => jobAbort && jobAbort.abort());
  const grid = el("div", { class: "grid", id: "channel-grid" });
  const more = el("button", { type: "button", class: "more" }, "");
  more.hidden = true;
  const status = el("p", { class: "note", id: "layer-status" });
  root.append(bar, status, grid, more);
  const wanted = params.channel !== undefined ? +params.channel : null;

  const dialog = el("dialog", { class: "enlarge", id: "enlarge" });
  root.append(dialog);
  function enlarge(src, caption) {
    dialog.replaceChildren(el("img", { src, alt: caption }), el("p", {}, caption),
      el("button", { type: "button", onclick: () => dialog.close() }, "close"));
    dialog.showModal();
  }
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });

  function select(card, c, push = true) {
    for (const f of grid.querySelectorAll("figure.channel.selected")) f.classList.remove("selected");
    card.classList.add("selected");
    if (push) ctx.setParams({ channel: c });
  }

  function picture(src, cls, caption, alt) {
    return el("button", { type: "button", class: `pic ${cls}`, title: caption, onclick: () => enlarge(src, caption) },
      el("img", { src, alt, class: cls }));
  }

  function actmaxPicture(c) {
    return picture(c.actmax, "actmax", `${name} channel ${c.channel}: the image synthesised to excite it most` +
      (c.actmax_value !== undefined ? ` (activation ${num(c.actmax_value)})` : ""), `actmax ${c.channel}`);
  }

  function card(c) {
    const fig = el("figure", { class: "channel", "data-channel": c.channel, tabindex: 0 },
      el("figcaption", {}, `channel ${c.channel}`,
        c.top_value !== undefined ? el("small", {}, ` · top activation ${num(c.top_value)}`) : ""));
    fig.addEventListener("click", () => select(fig, c.channel));
    fig.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.target === fig) select(fig, c.channel); });
    if (c.filter) fig.append(picture(c.filter, "filter", `${name} channel ${c.channel}: its filter`, `filter ${c.channel}`));
    if (c.actmax) fig.append(actmaxPicture(c));
    if (Array.isArray(c.patches)) {
      const strip = el("div", { class: "patchlist" });
      for (const p of c.patches) {
        const label = p.label_name ?? (p.label !== undefined && p.label !== null ? info.classes?.[p.label] ?? p.label : null);
        const caption = `image ${p.image_index}` + (label !== null && label !== undefined ? `, ${label}` : "") +
          (p.value !== undefined ? `: activation ${num(p.value)}` : "");
        strip.append(el("figure", { class: "patch", "data-image": p.image_index },
          picture(p.png, "patchimg", `${name} channel ${c.channel}, ${caption}`, `patch of image ${p.image_index}`),
          el("figcaption", {}, el("b", {}, num(p.value)), label !== null && label !== undefined ? el("span", {}, String(label)) : "")));
      }
      fig.append(strip);
    } else if (typeof c.patches === "string") {
      fig.append(picture(c.patches, "patches", `${name} channel ${c.channel}: the test patches that excite it most`, `patches ${c.channel}`));
    } else if (!info.images) {
      fig.append(el("small", { class: "muted" }, "no test images: no patches"));
    }
    return fig;
  }

  async function load(start) {
    more.hidden = true;
    jobAbort = new AbortController();
    cancel.signal.addEventListener("abort", () => jobAbort.abort(), { once: true });
    const count = Math.min(PAGE, channels - start);
    const body = { layer: name, start, count };
    if (objective && Array.isArray(objectives)) body.objective = objective;
    status.textContent = "";
    try {
      // The quick parts first (filters, and top patches read from the subject's index), then the
      // synthesised images, which take gradient ascent: the page is useful while they are computed.
      const quick = await runJob(`${base}/jobs/layer`, { ...body, parts: ["filters", "patches"] }, bar.update, jobAbort.signal);
      if (!ctx.alive()) return;
      const figs = new Map();
      for (const c of quick.channels) {
        const fig = card(c);
        figs.set(c.channel, fig);
        grid.append(fig);
        if (c.channel === wanted) { select(fig, c.channel, false); fig.scrollIntoView({ block: "center" }); }
      }
      const slow = await runJob(`${base}/jobs/layer`, { ...body, parts: ["actmax"] }, bar.update, jobAbort.signal);
      if (!ctx.alive()) return;
      for (const c of slow.channels) {
        const fig = figs.get(c.channel);
        if (!fig || !c.actmax) continue;
        const after = fig.querySelector("button.pic.filter") ?? fig.querySelector("figcaption");
        after.after(actmaxPicture(c));
      }
    } catch (e) {
      bar.hidden = true;
      if (e instanceof Cancelled) {
        if (ctx.alive()) {
          status.textContent = "cancelled";
          more.textContent = `compute channels ${start}-${start + count - 1}`;
          more.onclick = () => load(start).catch((err) => ctx.showError(err.message));
          more.hidden = false;
        }
        return;
      }
      throw e;
    }
    const next = start + count;
    if (next < channels) {
      more.textContent = `channels ${next}-${Math.min(next + PAGE, channels) - 1} of ${channels}`;
      more.onclick = () => load(next).catch((e) => ctx.showError(e.message));
      more.hidden = false;
      if (wanted !== null && wanted >= next) more.click();
    }
  }
  function restart() {
    grid.replaceChildren();
    ctx.setParams({ objective }, { push: false });
    load(0).catch((e) => ctx.showError(e.message));
  }
  await load(0);
}
