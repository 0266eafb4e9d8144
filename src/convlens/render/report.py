"""The self-contained HTML report of a run directory: one page that shows what a network learned.

The report is a list of sections. Each section is a small function `(ctx) -> Section | Skipped` that
calls the library's own APIs (`convlens.anatomy`, `convlens.inspect`, the figure functions of
`convlens.render`) and returns HTML with its pictures embedded as base64 ``data:`` URIs. A section that
cannot apply (no conv layer, no test data, no weights) returns :class:`Skipped` with a sentence saying
why, and a section that raises is shown as failed; the rest of the report is rendered either way.

The page is self-contained: no script, no web font, no remote image; a Content-Security-Policy in the
page forbids any request except ``data:`` images, so it opens offline in any browser and prints cleanly.

Work is bounded so the report of the demo run takes well under a minute on a 2-core CPU: t-SNE on
`ReportOptions.tsne_images` test images, top patches on the test split, a few gradient-ascent steps.

Example::

    from convlens.render.report import write_report
    path, report = write_report("runs/demo")  # runs/demo/report.html
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.fileio import atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from convlens.data.dataset import Dataset
    from convlens.train.run_dir import Run

REPORT_FILE = "report.html"


# --------------------------------------------------------------------------------------------------
# What a section returns
# --------------------------------------------------------------------------------------------------


@dataclass
class Section:
    """A rendered section body: trusted HTML built with :func:`esc`, :func:`img`, :func:`table`."""

    body: str


@dataclass
class Skipped:
    """A section that does not apply to this run, with the reason shown in its place."""

    reason: str


class Unavailable(Exception):
    """Raised by context helpers when something a section needs is not there; becomes :class:`Skipped`."""


@dataclass(frozen=True)
class SectionSpec:
    """One report section: anchor id, heading, the sentences that lead it, and its builder."""

    id: str
    title: str
    intro: str
    build: Callable[[ReportContext], Section | Skipped]


@dataclass
class SectionOutcome:
    """What happened to one section: `status` is "ok", "skipped" or "failed"."""

    id: str
    title: str
    intro: str
    status: str
    body: str = ""
    reason: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The rendered page and what happened to each section."""

    html: str
    sections: list[SectionOutcome]
    problems: list[str]
    seconds: float

    def outcome(self, section_id: str) -> SectionOutcome:
        """The outcome of the section with this id."""
        for s in self.sections:
            if s.id == section_id:
                return s
        raise KeyError(section_id)


@dataclass
class ReportOptions:
    """How much work each section does; the defaults keep the demo report under a minute on 2 cores."""

    device: str = "cpu"
    seed: int = 0
    batch_size: int = 500  # inference batch
    activation_images: int = 2  # test images whose activations are drawn
    max_channels: int = 16  # channels drawn per layer in the activation grids
    neighbor_queries: int = 4  # query images for the neighbour comparison
    neighbors_k: int = 6
    neighbor_pool: int = 10_000  # training images searched (first N)
    tsne_images: int = 2_000  # test images embedded by t-SNE
    top_channels: int = 8  # channels of the top-patches grid
    top_images: int = 6  # patches per channel
    actmax_channels: int = 16
    actmax_steps: int = 64
    attribution_images: int = 3  # correct and, separately, wrong test images explained
    erf_samples: int = 32


ProgressFn = Callable[[int, int, str, "SectionOutcome | None"], None]
"""`progress(index, total, title, outcome)`: called with outcome None before a section, then after."""


# --------------------------------------------------------------------------------------------------
# HTML helpers (everything that reaches the page from data goes through `esc`)
# --------------------------------------------------------------------------------------------------


def esc(text: object) -> str:
    """HTML-escape `text`."""
    return html.escape(str(text), quote=True)


def png_data_uri(png: bytes) -> str:
    """PNG bytes -> a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(fig_or_png: Figure | bytes, alt: str, caption: str | None = None, *, dpi: int = 100) -> str:
    """A ``<figure>`` with the figure (closed after rendering) or PNG embedded, and an optional caption."""
    from convlens.render.common import figure_png

    png = fig_or_png if isinstance(fig_or_png, bytes) else figure_png(fig_or_png, dpi=dpi)
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(png)}" alt="{esc(alt)}">{cap}</figure>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    numeric: Sequence[bool] | None = None,
    total: Sequence[object] | None = None,
) -> str:
    """An HTML table; `numeric[i]` right-aligns column i; `total` is a bold last row."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)

    def cells(tag: str, values: Sequence[object]) -> str:
        return "".join(
            f"<{tag}{' class=num' if numeric[i] else ''}>{esc(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    foot = f'<tr class="total">{cells("td", total)}</tr>' if total is not None else ""
    return f'<div class="scroll"><table><thead><tr>{cells("th", headers)}</tr></thead><tbody>{body}{foot}</tbody></table></div>'


def para(text: str, cls: str | None = None) -> str:
    """A paragraph of escaped text."""
    return f"<p{f' class={cls}' if cls else ''}>{esc(text)}</p>"


def fmt_int(n: object) -> str:
    """1234567 -> '1,234,567' (other values as given)."""
    return f"{n:,}" if isinstance(n, int | np.integer) else str(n)


# --------------------------------------------------------------------------------------------------
# The context: the run directory, loaded as far as it goes, and results shared between sections
# --------------------------------------------------------------------------------------------------


@dataclass
class ReportContext:
    """Everything sections read: the run directory, what is missing from it, and shared caches.

    Build it with :func:`open_run_dir`. Sections ask for what they need through the methods here, which
    raise :class:`Unavailable` (a reason a reader can act on) when it is not there.
    """

    run_dir: Path
    raw: dict[str, Any]
    history: list[dict[str, Any]]
    run: Run | None = None
    weights_note: str | None = None
    problems: list[str] = field(default_factory=list)
    options: ReportOptions = field(default_factory=ReportOptions)
    data_root: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    # -- the model ----------------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The trained model in eval mode (raises :class:`Unavailable` when no weights could be read)."""
        if self.run is None:
            raise Unavailable(
                self._cache.get("no_model_reason", "the run directory holds no readable weights.")
            )
        return self.run.model

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of the model's input."""
        return tuple(int(v) for v in self.raw["data"]["image_shape"])  # type: ignore[return-value]

    @property
    def classes(self) -> list[str]:
        """Class names, index = label."""
        return [str(c) for c in self.raw["data"].get("classes", [])]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(N, C, H, W)` -> the model's normalised float input, on the report's device."""
        from convlens.data.dataset import normalize

        d = self.raw["data"]
        return normalize(images.to(self.options.device), tuple(d["mean"]), tuple(d["std"]))

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """The model's conv layers in forward order (raises :class:`Unavailable` when there is none)."""
        if "conv_layers" not in self._cache:
            from convlens import models

            self._cache["conv_layers"] = dict(models.conv_layers(self.model))
        convs: dict[str, nn.Conv2d] = self._cache["conv_layers"]
        if not convs:
            raise Unavailable(
                f"{type(self.model).__name__} has no convolutional layer, so there are no filters, "
                "feature maps or receptive fields to show."
            )
        return convs

    def first_conv(self) -> str:
        """Name of the first conv layer."""
        return next(iter(self.conv_layers()))

    def spatial_conv(self) -> str:
        """The default layer of every method: :func:`convlens.models.default_layer` (the last conv
        layer whose output is a map larger than 1x1; LeNet-5's C5 is 1x1)."""
        if "spatial_conv" not in self._cache:
            from convlens import models

            self._cache["spatial_conv"] = models.default_layer(self.model, self.input_shape)
        return str(self._cache["spatial_conv"])

    # -- data ---------------------------------------------------------------------------------------

    def dataset(self, split: str) -> Dataset:
        """The run's data set split, loaded once (raises :class:`Unavailable` when it cannot be found)."""
        key = f"data:{split}"
        if key not in self._cache:
            from convlens.data import load

            name = self.raw["data"]["name"]
            try:
                self._cache[key] = load(
                    name, split=split, root=self.data_root or self.raw["data"].get("root")
                )
            except ConvlensError as e:
                self._cache[key] = Unavailable(
                    f"the {split} split of {name!r} could not be loaded: {e}"
                )
        value = self._cache[key]
        if isinstance(value, Unavailable):
            raise value
        return value

    def predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities `(N, K)` and predicted labels `(N,)` on the whole test split (cached)."""
        if "predictions" not in self._cache:
            ds = self.dataset("test")
            model = self.model
            probs = []
            with torch.inference_mode():
                for i in range(0, len(ds), self.options.batch_size):
                    x = self.normalize(ds.images[i : i + self.options.batch_size])  # (B, C, H, W)
                    probs.append(torch.softmax(model(x).float(), dim=1).cpu())
            p = torch.cat(probs)  # (N, K)
            self._cache["predictions"] = (p, p.argmax(1))
        return self._cache["predictions"]

    def example_indices(self) -> tuple[list[int], list[int]]:
        """Indices of test images to explain: the first correctly and the first wrongly classified ones,
        one per class where possible so the examples are varied."""
        ds = self.dataset("test")
        _, pred = self.predictions()
        right = (pred == ds.labels).numpy()
        n = self.options.attribution_images
        labels = ds.labels.numpy()

        def pick(mask: np.ndarray) -> list[int]:
            chosen: list[int] = []
            seen: set[int] = set()
            for i in np.flatnonzero(mask):
                if labels[i] not in seen:
                    chosen.append(int(i))
                    seen.add(int(labels[i]))
                if len(chosen) == n:
                    break
            return chosen

        return pick(right), pick(~right)

    def class_name(self, label: int) -> str:
        """The name of class `label` (its number when the run has no names)."""
        c = self.classes
        return c[label] if 0 <= label < len(c) else str(label)


def _load_checkpoint_weights(
    run_dir: Path, raw: dict[str, Any]
) -> tuple[nn.Module, str, list[dict[str, Any]]] | None:
    """The model with the weights of an interrupted run's resumable checkpoint, a note saying where
    the weights come from, and the checkpoint's history; None when there is no readable checkpoint."""
    from convlens import models
    from convlens.train.checkpoint import load_checkpoint
    from convlens.train.run_dir import CHECKPOINT

    f = run_dir / CHECKPOINT
    if not f.is_file():
        return None
    try:
        state = load_checkpoint(f)
        m = raw["model"]
        model = models.create(m["name"], **m.get("options", {}))
        model.load_state_dict(state["model"], strict=True)
    except (ConvlensError, RuntimeError, KeyError, TypeError, ValueError):
        return None  # torn, foreign or another model's: reported as missing, never a crash
    epoch, batch = state.get("epoch"), state.get("batch", 0)
    if isinstance(epoch, int):
        where = f"{CHECKPOINT}, saved after {epoch} finished epoch{'s' if epoch != 1 else ''}"
        where += f" and {batch} batches of the next" if batch else ""
    else:
        where = CHECKPOINT
    history = state.get("history")
    return model.eval(), where, list(history) if isinstance(history, list) else []


def open_run_dir(
    run_dir: str | Path,
    *,
    options: ReportOptions | None = None,
    data_root: str | None = None,
    run: Run | None = None,
) -> ReportContext:
    """Load a run directory as far as it goes and note what is missing.

    Only a directory without a readable `run.json` is an error: with no description of the model there
    is nothing to report. Missing weights (an interrupted run) fall back to the resumable checkpoint;
    missing metrics or data only remove the sections that need them.

    Args:
        run_dir: the run directory.
        options: how much work the sections do.
        data_root: where the data set lives, when not where the run was trained (like `--data-dir`).
        run: an already loaded run (tests, or a model that is not in the registry).

    Raises:
        ConvlensError: no directory, or no readable `run.json`.
    """
    from convlens.train.run_dir import (
        CHECKPOINT,
        METRICS,
        WEIGHTS,
        DataInfo,
        Run,
        read_metrics,
        read_run_json,
    )
    from convlens.train.run_dir import load_run as _load_run

    run_dir = Path(run_dir)
    raw = run.raw if run is not None and run.raw else read_run_json(run_dir)
    if "image_shape" not in raw.get("data", {}):
        raise ConvlensError(
            f"{run_dir / 'run.json'} does not say the input shape (data.image_shape)"
        )
    ctx = ReportContext(
        run_dir=run_dir,
        raw=raw,
        history=read_metrics(run_dir),
        options=options or ReportOptions(),
        data_root=data_root,
        run=run,
    )
    status = str(raw.get("status", "unknown"))
    if status != "complete":
        ctx.problems.append(
            f"The run's status is {status!r}, not 'complete': training was interrupted or is still going; "
            "`convlens train ... --resume` finishes it."
        )
    if not (run_dir / METRICS).is_file():
        ctx.problems.append(f"{METRICS} is missing: no training curves.")
    if run is not None:
        ctx.history = run.history or ctx.history
        return ctx
    try:
        ctx.run = _load_run(run_dir, device=ctx.options.device)
    except ConvlensError as e:
        # Only missing weights fall back to the checkpoint: corrupt or mismatched ones are reported.
        has_weights = (run_dir / WEIGHTS).is_file()
        fallback = None if has_weights else _load_checkpoint_weights(run_dir, raw)
        if fallback is None:
            reason = f"no usable weights: {e}"
            has_ckpt = (run_dir / CHECKPOINT).is_file()
            if has_weights:
                ctx.problems.append(f"{WEIGHTS} could not be used ({e}).")
            elif has_ckpt:
                ctx.problems.append(f"{WEIGHTS} is missing and {CHECKPOINT} could not be read.")
            else:
                reason = f"no weights yet: neither {WEIGHTS} nor {CHECKPOINT} is in {run_dir}."
                ctx.problems.append(
                    f"Neither {WEIGHTS} nor {CHECKPOINT} exists: training stopped before its first "
                    "checkpoint, or the run directory is incomplete."
                )
            ctx._cache["no_model_reason"] = reason
            ctx.problems.append("Every section that needs the trained model is left out.")
            return ctx
        model, note, history = fallback
        ctx.weights_note = note
        ctx.problems.append(f"{WEIGHTS} is missing: the pictures use the weights of {note}.")
        if not ctx.history and history:
            ctx.history = history
            ctx.problems = [
                f"{METRICS} is missing: the training curves come from the history kept in {CHECKPOINT}."
                if p.startswith(f"{METRICS} is missing")
                else p
                for p in ctx.problems
            ]
        d = raw["data"]
        ctx.run = Run(
            path=run_dir,
            model=model.to(ctx.options.device),
            model_name=raw["model"]["name"],
            model_options=dict(raw["model"].get("options", {})),
            data=DataInfo(
                name=d["name"],
                classes=list(d.get("classes", [])),
                mean=tuple(d["mean"]),
                std=tuple(d["std"]),
                image_shape=tuple(d["image_shape"]),
                root=d.get("root"),
            ),
            config=dict(raw.get("train", {})),
            history=ctx.history,
            status=status,
            raw=raw,
        )
    return ctx


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def default_sections() -> list[SectionSpec]:
    """The report's sections in order (defined in :mod:`convlens.render.report_sections`)."""
    from convlens.render.report_sections import SECTIONS

    return list(SECTIONS)


# --------------------------------------------------------------------------------------------------
# Building the page
# --------------------------------------------------------------------------------------------------


def _facts(ctx: ReportContext) -> list[tuple[str, str]]:
    raw = ctx.raw
    d = raw["data"]
    m = raw["model"]
    facts = [
        (
            "Model",
            f"{m['name']}"
            + (f" ({_options_text(m.get('options', {}))})" if m.get("options") else ""),
        ),
        (
            "Data",
            f"{d['name']}: {len(ctx.classes)} classes, input {'x'.join(str(v) for v in d['image_shape'])} (C x H x W)",
        ),
        ("Status", str(raw.get("status", "unknown"))),
    ]
    if ctx.history:
        last = ctx.history[-1]
        epochs = raw.get("train", {}).get("epochs")
        facts.append(("Epochs", f"{len(ctx.history)}" + (f" of {epochs}" if epochs else "")))
        if "test_acc" in last:
            facts.append(("Test accuracy", f"{100 * float(last['test_acc']):.2f} % (last epoch)"))
        secs = sum(float(r.get("seconds", 0.0)) for r in ctx.history)
        if secs:
            facts.append(("Training time", f"{secs:.1f} s"))
    if ctx.weights_note:
        facts.append(("Weights", ctx.weights_note))
    v = raw.get("versions", {})
    if v:
        facts.append(("Versions", ", ".join(f"{k} {val}" for k, val in v.items())))
    return facts


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def build_report(
    ctx: ReportContext,
    *,
    sections: Sequence[SectionSpec] | None = None,
    progress: ProgressFn | None = None,
    strict: bool = False,
) -> Report:
    """Run every section and render the page.

    Args:
        ctx: from :func:`open_run_dir`.
        sections: which sections, in order (default: :func:`default_sections`).
        progress: called before and after each section (for a progress display).
        strict: re-raise a section's unexpected exception instead of showing it as failed (tests).
    """
    import jinja2
    from markupsafe import Markup

    from convlens import __version__

    t0 = time.perf_counter()
    specs = default_sections() if sections is None else list(sections)
    outcomes: list[SectionOutcome] = []
    # Sections that draw random numbers are seeded; the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.options.seed)
        for i, spec in enumerate(specs):
            if progress:
                progress(i, len(specs), spec.title, None)
            t = time.perf_counter()
            out = SectionOutcome(spec.id, spec.title, spec.intro, "ok")
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result = spec.build(ctx)
                # convlens's own warnings (e.g. occlusion falling back to full recomputation) become notes
                # under the section; anything else (a library's deprecation) is left to the filters.
                for w in caught:
                    if "convlens" in str(w.filename) and issubclass(w.category, UserWarning):
                        note = str(w.message)
                        if note not in out.notes:
                            out.notes.append(note)
                    else:
                        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            except Unavailable as e:
                result = Skipped(str(e))
            except ConvlensError as e:
                result = Skipped(str(e))
            except Exception as e:
                if strict:
                    raise
                out.status, out.reason = "failed", f"{type(e).__name__}: {e}"
                result = None
            if isinstance(result, Skipped):
                out.status, out.reason = "skipped", result.reason
            elif isinstance(result, Section):
                out.body = result.body
            out.seconds = time.perf_counter() - t
            outcomes.append(out)
            if progress:
                progress(i, len(specs), spec.title, out)

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("convlens.render", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    page = env.get_template("report.html.j2")
    m, d = ctx.raw["model"], ctx.raw["data"]
    seconds = time.perf_counter() - t0
    text = page.render(
        title=f"What {m['name']} learned on {d['name']}",
        lede=(
            "A convlens report: the network's anatomy, how it trained, and what its layers respond to. "
            "Every picture below was computed from the run directory; each section starts by saying how to read it."
        ),
        facts=_facts(ctx),
        problems=ctx.problems,
        sections=[
            {
                "id": o.id,
                "title": o.title,
                "intro": o.intro,
                "status": o.status,
                "body": Markup(o.body),
                "reason": o.reason,
                "notes": o.notes,
            }
            for o in outcomes
        ],
        version=__version__,
        created=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M"),
        run_dir=str(ctx.run_dir),
        seconds=seconds,
    )
    return Report(html=text, sections=outcomes, problems=list(ctx.problems), seconds=seconds)


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    options: ReportOptions | None = None,
    data_root: str | None = None,
    progress: ProgressFn | None = None,
    strict: bool = False,
) -> tuple[Path, Report]:
    """Build the report of `run_dir` and write it atomically to `out` (default RUN_DIR/report.html).

    Returns:
        The path written and the :class:`Report` (per-section outcomes and timings).

    Raises:
        ConvlensError: `run_dir` is not a run directory (no readable `run.json`), or `out` is a folder.
    """
    run_dir = Path(run_dir)
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    if path.is_dir():
        raise ConvlensError(
            f"--out {path} is a folder; give a file name such as {path / REPORT_FILE}"
        )
    ctx = open_run_dir(run_dir, options=options, data_root=data_root)
    report = build_report(ctx, progress=progress, strict=strict)
    atomic_write_text(path, report.html)
    return path, report
