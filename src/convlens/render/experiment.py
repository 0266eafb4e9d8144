"""The experiment page and its figures: a claim, the verdicts, the measured tables and the evidence.

Like the run report (:mod:`convlens.render.report`, whose small HTML helpers it uses), the page is
one self-contained file: figures are ``data:`` PNGs, the style sheet is inline, a
Content-Security-Policy forbids every request. Everything here takes plain numbers and arrays (the
experiments compute them); nothing trains or runs a model.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.stats import t as _t

from convlens.render.common import figure_png
from convlens.render.report_base import esc, fmt_int, img, para, table

_CSS = """
:root { --ink:#1d232b; --muted:#5b6573; --line:#d9dee5; --wash:#f4f6f9; --ok:#1f7a3a; --no:#b03030; }
* { box-sizing: border-box; }
body { margin:0; color:var(--ink); line-height:1.5;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; }
h1 { font-size: 1.8rem; margin: 0 0 .3rem; }
h2 { font-size: 1.3rem; margin: 2rem 0 .4rem; padding-top: .5rem; border-top: 1px solid var(--line); }
.claim { font-size: 1.1rem; border-left: 4px solid var(--ink); padding: .3rem .9rem; background: var(--wash); }
.note { color: var(--muted); font-size: .9rem; }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:.15rem 1.25rem; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
ul.verdicts { list-style: none; padding: 0; }
ul.verdicts li { margin: .5rem 0; padding: .4rem .8rem; border-left: 4px solid var(--line); }
ul.verdicts li.held { border-color: var(--ok); } ul.verdicts li.contradicted { border-color: var(--no); }
ul.verdicts li.inconclusive, ul.verdicts li.smoke { border-color: #a07b00; }
.status { font-weight: 700; } li.held .status { color: var(--ok); } li.contradicted .status { color: var(--no); }
li.inconclusive .status, li.smoke .status { color: #8a6a00; }
ul.verdicts dl { display:grid; grid-template-columns:max-content 1fr; gap:.1rem 1rem; margin:.3rem 0 0; font-size:.92rem; }
ul.verdicts dt { color: var(--muted); } ul.verdicts dd { margin: 0; }
.smokebanner { border: 2px solid #a07b00; background: #fff8e0; padding: .5rem .9rem; font-weight: 600; }
figure { margin: .75rem 0 1.25rem; } figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .88rem; max-width: 52rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .88rem; margin: .5rem 0 .4rem; }
th, td { border-bottom: 1px solid var(--line); padding: .22rem .6rem; text-align: left; }
th { background: var(--wash); } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
footer { margin-top: 3rem; border-top: 1px solid var(--line); padding-top: .75rem; color: var(--muted); font-size: .85rem; }
"""


def _cell(v: Any) -> str:
    """A table value as text: integers with separators, floats with 4 significant digits."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:  # NaN
            return "n/a"
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return fmt_int(v)


def _verdict_item(v: Mapping[str, Any]) -> str:
    status = str(v["status"])
    cls = "smoke" if status.startswith("smoke") else status
    rows = [
        ("what the papers predict here", v.get("prediction") or ""),
        ("result", v["evidence"]),
        ("rule", v.get("rule") or ""),
        ("verdict", status),
        ("for a student", v.get("meaning") or ""),
    ]
    return (
        f'<li class="{esc(cls)}"><span class="status">{esc(status)}</span>: {esc(v["claim"])}'
        + "<dl>"
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(x))}</dd>" for k, x in rows if x)
        + "</dl></li>"
    )


def experiment_page(
    *,
    title: str,
    claim: str,
    source: str,
    facts: Sequence[tuple[str, str]],
    budget_note: str,
    verdicts: Sequence[Mapping[str, Any]],
    tables: Sequence[Mapping[str, Any]],
    pictures: Sequence[tuple[bytes, str, str]],
    notes: Sequence[str] = (),
    version: str = "",
) -> str:
    """The self-contained HTML page of one experiment.

    Args:
        title: heading.
        claim: the claim, in the notes' words.
        source: paper and section.
        facts: (label, value) pairs (data, budget, command ...).
        budget_note: what the budget trained (images, epochs); shown under the claim.
        verdicts: ``{"claim", "status", "evidence", "rule", "prediction", "meaning"}`` per claim.
        tables: ``{"title", "headers", "rows", "note"}`` per table.
        pictures: ``(png, caption, alt)`` per figure.
        notes: remarks shown at the end.
        version: convlens's version, for the footer.
    """
    parts = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="claim">{esc(claim)}</p>',
        para(f"Source: {source}.", "note"),
        '<dl class="facts">'
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
        + "</dl>",
        para(budget_note, "note"),
        "<h2>Claims, predictions and verdicts</h2>",
        (
            '<p class="smokebanner">Smoke test: decides nothing. This budget only checks that '
            "the code runs; no claim is decided.</p>"
            if any(v["status"].startswith("smoke") for v in verdicts)
            else ""
        ),
        para(
            "Each claim is decided by a rule fixed before the runs: the 95 % interval of the "
            "paired difference over the seeds (Student t) lies on the claim's side (held), on the "
            "other side (contradicted), or straddles the line (inconclusive: this budget cannot "
            "tell). Claims of 'at least as good' state their margin.",
            "note",
        ),
        '<ul class="verdicts">' + "".join(_verdict_item(v) for v in verdicts) + "</ul>",
        "<h2>Measurements</h2>",
    ]
    for t in tables:
        rows = [[_cell(v) for v in r] for r in t["rows"]]
        numeric = [
            all(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in t["rows"])
            for i in range(len(t["headers"]))
        ]
        parts.append(f"<h3>{esc(t['title'])}</h3>")
        parts.append(table(t["headers"], rows, numeric=numeric))
        if t.get("note"):
            parts.append(para(t["note"], "note"))
    if pictures:
        parts.append("<h2>Figures</h2>")
        parts += [img(png, alt or caption, caption) for png, caption, alt in pictures]
    if notes:
        parts.append("<h2>Notes</h2>")
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    parts.append(f"<footer>convlens {esc(version)}, {esc(created)}</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main>"
        + "\n".join(parts)
        + "</main></body></html>\n"
    )


# --- figures -------------------------------------------------------------------------------------


def _band(rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``(n_seeds, points)``: mean and half-width of its 95 % Student-t interval.

    (The same interval as :func:`convlens.experiments.stats.mean_band`; render sits below
    experiments, so it computes its own.)
    """
    x = np.asarray(rows, dtype=np.float64)
    x = x[None] if x.ndim == 1 else x
    n = x.shape[0]
    if n < 2:
        return x.mean(0), np.zeros(x.shape[1])
    t = float(_t.ppf(0.975, n - 1))
    return x.mean(0), t * x.std(0, ddof=1) / np.sqrt(n)


_PALETTE = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]


def _colour_groups(labels: Sequence[str]) -> dict[str, str]:
    """Depth-paired colours: ``NAME-DEPTH`` labels (plain-20, resnet-20) share a colour per depth.

    Any other labels (``three 3x3``, ``three 3x3, no ReLU between``) get one colour each.
    """
    keys = [re.fullmatch(r"[A-Za-z]+-(\d+)", label) for label in labels]
    groups = [k.group(1) if k is not None else label for k, label in zip(keys, labels, strict=True)]
    if any(k is None for k in keys) or len(set(groups)) == len(groups):  # one colour per label
        groups = list(labels)
    order = list(dict.fromkeys(groups))
    return {
        label: _PALETTE[order.index(g) % len(_PALETTE)]
        for label, g in zip(labels, groups, strict=True)
    }


def error_curves_figure(
    curves: Mapping[str, Mapping[str, Any]],
    panels: Sequence[tuple[str, str]] = (
        ("train_acc", "training error (%)"),
        ("test_acc", "test error (%)"),
    ),
) -> Figure:
    """Per panel, the mean over seeds against epochs with a 95 % t interval as error bars.

    Args:
        curves: label -> ``{"epoch": [1, 2, ...], key: (n_seeds, epochs) array, ...}``. Labels
            that share a number (plain-20, resnet-20) share a colour; those starting with "plain"
            are dashed.
        panels: ``(key, y label)`` per panel.
    """
    fig = Figure(figsize=(5 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = _colour_groups(list(curves))
    for label, c in curves.items():
        style = "--" if label.lower().startswith("plain") else "-"
        epochs = list(c["epoch"])
        for ax, (key, _) in zip(axes, panels, strict=True):
            mean, half = _band(c[key])
            n = np.asarray(c[key]).reshape(-1, len(epochs)).shape[0]
            ax.errorbar(
                epochs, mean, yerr=half, fmt=style, marker=".", capsize=3,
                color=colours[label], label=f"{label} (n = {n})",
            )  # fmt: skip
    last_epoch = max((max(c["epoch"]) for c in curves.values() if len(c["epoch"])), default=1)
    for ax, (_, what) in zip(axes, panels, strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        if last_epoch <= 20:  # every epoch a tick, integers only
            ax.set_xticks(range(1, int(last_epoch) + 1))
            ax.set_xlim(0.5, last_epoch + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def noise_figure(
    levels: Sequence[float],
    accuracy: Mapping[str, Any],
    *,
    xlabel: str = "noise standard deviation",
    ylabel: str = "test accuracy (%)",
    full_axis: bool = True,
) -> Figure:
    """A measure (%) against noise, one line per arm: the mean over seeds and its 95 % t interval.

    Args:
        levels: the noise levels (x).
        accuracy: label -> ``(n_seeds, len(levels))`` values in [0, 1] (drawn as percent).
        full_axis: draw y from 0 to 100 (no exaggerated differences).
    """
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for label, acc in accuracy.items():
        mean, half = _band(100 * np.asarray(acc, dtype=np.float64))
        ax.errorbar(levels, mean, yerr=half, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if full_axis:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def intervals_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "") -> Figure:
    """The claims' paired differences with their 95 % intervals (a forest plot).

    Args:
        rows: ``{"label", "mean", "lo", "hi", "margin" (or None), "unit"}`` per claim; the line at 0
            and, for non-inferiority claims, at -margin are drawn.
    """
    fig = Figure(figsize=(7.5, 0.55 * len(rows) + 1.3))
    ax = fig.subplots()
    for y, r in enumerate(rows):
        lo, hi = r["lo"], r["hi"]
        if lo is None or hi is None:
            ax.plot([r["mean"]], [y], "o", color="tab:grey")
        else:
            ax.errorbar([r["mean"]], [y], xerr=[[r["mean"] - lo], [hi - r["mean"]]], fmt="o",
                        capsize=4, color="k")  # fmt: skip
        if r.get("margin") is not None:
            ax.plot([-r["margin"]] * 2, [y - 0.35, y + 0.35], color="tab:red", ls=":", lw=1.5)
    ax.axvline(0, color="tab:grey", lw=1)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference, positive favours the claim (95 % t interval; red: −margin)")
    ax.grid(alpha=0.3, axis="x")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def bars_figure(
    values: Mapping[str, Mapping[str, Any]], *, ylabel: str, full_axis: bool = False
) -> Figure:
    """Grouped bars: per group (x) and arm (colour), the mean over seeds with its 95 % interval.

    Args:
        values: group -> arm label -> ``(n_seeds,)`` values.
        full_axis: y from 0 to 100.
    """
    groups = list(values)
    arms = list(dict.fromkeys(a for g in groups for a in values[g]))
    fig = Figure(figsize=(max(5.0, 1.6 * len(groups) * max(len(arms), 1) / 2 + 2), 3.8))
    ax = fig.subplots()
    width = 0.8 / max(len(arms), 1)
    for k, arm in enumerate(arms):
        xs, means, halves = [], [], []
        for i, g in enumerate(groups):
            if arm in values[g]:
                m, h = _band(np.asarray(values[g][arm], dtype=np.float64)[:, None])
                xs.append(i + (k - (len(arms) - 1) / 2) * width)
                means.append(float(m[0]))
                halves.append(float(h[0]))
        ax.bar(xs, means, width * 0.9, yerr=halves, capsize=3, label=arm,
               color=_PALETTE[k % len(_PALETTE)])  # fmt: skip
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if full_axis:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def filter_rows_figure(
    rows: Sequence[tuple[str, np.ndarray]], *, max_filters: int = 16, title: str = ""
) -> Figure:
    """Rows of filters ``(F, C, k, k)``, one row per label, each row on its own symmetric scale.

    Three-channel filters are drawn in colour as ``0.5 + 0.5 w / max|w|`` (mid-grey is zero, opposing
    colours show as such); one-channel filters with a diverging map (blue negative, red positive).
    """
    n = max(min(len(w), max_filters) for _, w in rows)
    fig = Figure(figsize=(2.4 + 0.62 * n, 0.7 * len(rows) + 0.5))
    axes = fig.subplots(len(rows), n + 1, squeeze=False, width_ratios=[4.0] + [1] * n)
    for r, (label, w) in enumerate(rows):
        w = np.asarray(w, dtype=np.float32)[:max_filters]
        m = float(np.abs(w).max()) or 1.0
        axes[r, 0].text(1.0, 0.5, label, ha="right", va="center", fontsize=8)
        for c in range(n + 1):
            axes[r, c].set_axis_off()
        for i, f in enumerate(w):
            ax = axes[r, i + 1]
            if f.shape[0] == 3:
                ax.imshow(0.5 + 0.5 * f.transpose(1, 2, 0) / m, interpolation="nearest")
            else:
                ax.imshow(f[0], cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def position_map_figure(values: np.ndarray, label: str) -> Figure:
    """A ``(H, W)`` map of one value per output position, with a colour bar."""
    fig = Figure(figsize=(4.6, 3.8))
    ax = fig.subplots()
    im = ax.imshow(values, cmap="viridis", interpolation="nearest")
    ax.set_xlabel("output column")
    ax.set_ylabel("output row")
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)
    fig.tight_layout()
    return fig


def measure_strips_figure(
    values: Mapping[str, Mapping[str, np.ndarray]],
    measures: Sequence[str],
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
) -> Figure:
    """One panel per measure: each filter's value as a dot, trained and untrained per network.

    Args:
        values: group label (``"lenet5 trained"``) -> measure name -> ``(F,)`` values.
        measures: which measures, in panel order.
        thresholds: group label -> measure -> a value drawn as a short bar (e.g. untrained 95th pct).
    """
    fig = Figure(figsize=(5 * len(measures), 0.45 * len(values) + 1.2))
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    labels = list(values)
    rng = np.random.default_rng(0)  # vertical jitter only, to separate the dots
    for ax, measure in zip(axes, measures, strict=True):
        for y, label in enumerate(labels):
            v = np.asarray(values[label][measure])
            colour = "tab:grey" if ("untrained" in label or "null" in label) else "tab:blue"
            ax.scatter(v, y + rng.uniform(-0.15, 0.15, len(v)), s=9, color=colour, alpha=0.7)
            ax.plot([np.median(v)] * 2, [y - 0.3, y + 0.3], color="k", lw=1.5)
            t = (thresholds or {}).get(label, {}).get(measure)
            if t is not None:
                ax.plot([t] * 2, [y - 0.35, y + 0.35], color="tab:red", lw=1, ls=":")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel(measure)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (closed)."""
    return figure_png(fig, dpi=dpi)


def maps_figure(maps: Mapping[str, np.ndarray], *, label: str = "") -> Figure:
    """A row of ``(H, W)`` maps, one per title, each on its own colour scale."""
    fig = Figure(figsize=(3.4 * len(maps), 3.4))
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (title, m) in zip(axes, maps.items(), strict=True):
        im = ax.imshow(np.asarray(m), cmap="viridis", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    fig.tight_layout()
    return fig
