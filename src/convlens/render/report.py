"""The self-contained HTML report of a subject: one page that shows what a network learned.

The subject is a run directory written by `convlens train` or any model with the user's images
(:func:`convlens.subjects.open_subject`). The report is a list of sections
(:mod:`convlens.render.report_sections` and :mod:`convlens.render.report_units`); each calls the
library's own APIs and returns HTML with its pictures embedded as base64 ``data:`` URIs. A section
that cannot apply (no training history, no conv layer, no labels) says why instead, and a section
that raises is shown as failed; the rest of the report is rendered either way. A run is loaded with
:func:`convlens.load_run`: missing, corrupt or mismatched weights are an error, not a report.

The page is self-contained: no script, no web font, no remote image; a Content-Security-Policy in the
page forbids any request except ``data:`` images, so it opens offline in any browser and prints cleanly.

Work is bounded (:class:`ReportOptions`): t-SNE on at most `tsne_images` images, a few gradient-ascent
steps, a handful of examples.

Example::

    from convlens.render.report import write_report
    path, report = write_report("runs/demo")  # runs/demo/report.html
"""

from __future__ import annotations

import datetime as _dt
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from convlens.errors import ConvlensError
from convlens.fileio import atomic_write_text
from convlens.render.report_base import (
    REPORT_FILE,
    ProgressFn,
    Report,
    ReportOptions,
    Section,
    SectionOutcome,
    SectionSpec,
    Skipped,
    Unavailable,
)
from convlens.render.report_context import ReportContext
from convlens.render.report_sections import SECTIONS
from convlens.subjects import Subject, open_subject
from convlens.views import ImageIndex

__all__ = [
    "REPORT_FILE",
    "Report",
    "ReportContext",
    "ReportOptions",
    "Section",
    "SectionOutcome",
    "SectionSpec",
    "Skipped",
    "build_report",
    "report_context",
    "write_report",
]


def default_sections() -> list[SectionSpec]:
    """The report's sections in page order."""
    return list(SECTIONS)


def report_context(
    subject: Subject, *, options: ReportOptions | None = None, index: ImageIndex | None = None
) -> ReportContext:
    """The context sections read, with the notes a reader should see first.

    `index`: the index of the subject's images (:func:`convlens.index.find_index`); top patches,
    the t-SNE map and the predictions are then read from it instead of computed.
    """
    ctx = ReportContext(subject=subject, options=options or ReportOptions(), index=index)
    run = subject.run
    if run is not None:
        if run.status != "complete":
            ctx.problems.append(
                f"The run's status is {run.status!r}, not 'complete': training was interrupted or "
                "is still going; `convlens train ... --resume` finishes it."
            )
        if not run.history:
            ctx.problems.append("metrics.jsonl is missing or empty: no training curves.")
    ctx.problems.extend(str(n) for n in subject.info.get("notices", []))
    return ctx


def _facts(ctx: ReportContext) -> list[tuple[str, str]]:
    sub, run = ctx.subject, ctx.subject.run
    c, h, w = sub.image_shape
    if run is not None:
        opts = ", ".join(f"{k}={v}" for k, v in run.model_options.items())
        facts = [("Model", run.model_name + (f" ({opts})" if opts else ""))]
    else:
        facts = [("Model", str(sub.info.get("model", sub.name)))]
    facts.append(("Input", f"{c}x{h}x{w} (C x H x W), {len(sub.classes)} classes"))
    if sub.images is not None:
        ds = sub.images
        kind = (
            f"labelled, {len(ds.classes)} class folders"
            if ds.extra.get("labelled", True)
            else "unlabelled"
        )
        facts.append(("Images", f"{ds.source}: {len(ds)} images ({kind})"))
    elif run is not None:
        facts.append(("Data", run.data.name))
    if "weights" in sub.info:
        facts.append(("Weights", str(sub.info["weights"])))
    if run is not None:
        facts.append(("Status", run.status))
        h_ = ctx.history
        if h_:
            epochs = run.config.get("epochs")
            facts.append(("Epochs", f"{len(h_)}" + (f" of {epochs}" if epochs else "")))
            if "test_acc" in h_[-1]:
                facts.append(
                    ("Test accuracy", f"{100 * float(h_[-1]['test_acc']):.2f} % (last epoch)")
                )
            secs = sum(float(r.get("seconds", 0.0)) for r in h_)
            if secs:
                facts.append(("Training time", f"{secs:.1f} s"))
        versions: dict[str, Any] = run.raw.get("versions", {})
        if versions:
            facts.append(("Versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return facts


def _title(ctx: ReportContext) -> str:
    sub, run = ctx.subject, ctx.subject.run
    if run is not None and sub.images is None:
        return f"What {run.model_name} learned on {run.data.name}"
    if sub.images is not None:
        return f"Inside {sub.name}, on {Path(sub.images.source).name or sub.images.source}"
    return f"Inside {sub.name}"


def build_report(
    ctx: ReportContext,
    *,
    sections: Sequence[SectionSpec] | None = None,
    progress: ProgressFn | None = None,
    strict: bool = False,
) -> Report:
    """Run every section and render the page.

    Args:
        ctx: from :func:`report_context`.
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
    for i, spec in enumerate(specs):
        if progress:
            progress(i, len(specs), spec.title, None)
        t = time.perf_counter()
        out = SectionOutcome(spec.id, spec.title, spec.intro, "ok")
        try:
            with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
                warnings.simplefilter("always")
                torch.manual_seed(ctx.options.seed)  # each section's randomness, reproducible alone
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
            out.body, out.views = result.body, result.views
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
    seconds = time.perf_counter() - t0
    source = "the run directory" if ctx.is_run else "the model and the images given"
    text = page.render(
        title=_title(ctx),
        lede=(
            "A convlens report: the network's anatomy, how it trained, and what its layers respond to. "
            f"Every picture below was computed from {source}; each section starts by saying how to read it."
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
        source=ctx.subject.name,
        seconds=seconds,
    )
    return Report(html=text, sections=outcomes, problems=list(ctx.problems), seconds=seconds)


def write_report(
    subject: Subject | str | Path,
    out: str | Path | None = None,
    *,
    options: ReportOptions | None = None,
    data_root: str | None = None,
    progress: ProgressFn | None = None,
    strict: bool = False,
    index: ImageIndex | None = None,
) -> tuple[Path, Report]:
    """Build the report of `subject` and write it atomically to `out`.

    Args:
        subject: a :class:`Subject`, or the path of a run directory (opened with its data in
            `data_root` when given).
        out: the HTML file; default RUN_DIR/report.html for a run, else ``report.html`` here.
        options: how much work the sections do (and the device).
        data_root: where a run's data set lives, when not where it was trained.
        progress: called before and after each section.
        strict: re-raise a section's unexpected exception (tests).
        index: the index of the subject's images (see :func:`report_context`).

    Returns:
        The path written and the :class:`Report` (per-section outcomes and timings).

    Raises:
        ConvlensError: not a run directory, unusable weights, or `out` is a folder.
    """
    options = options or ReportOptions()
    if isinstance(subject, Subject):
        default = (
            subject.run.path / REPORT_FILE
            if subject.run is not None and subject.images is None
            else Path(REPORT_FILE)
        )
    else:
        default = Path(subject) / REPORT_FILE
    path = Path(out) if out is not None else default
    if path.is_dir():
        raise ConvlensError(
            f"--out {path} is a folder; give a file name such as {path / REPORT_FILE}"
        )
    if not isinstance(subject, Subject):
        subject = open_subject(str(subject), device=options.device, data_dir=data_root)
    report = build_report(
        report_context(subject, options=options, index=index), progress=progress, strict=strict
    )
    atomic_write_text(path, report.html)
    return path, report
