"""What a report is made of: sections and their outcomes, the work options, and the HTML helpers.

A section is a small function `(ctx) -> Section | Skipped` (see :mod:`convlens.render.report_context`
for `ctx`) registered with :func:`section` in page order. It returns HTML built with :func:`esc`,
:func:`img`, :func:`table` and :func:`para`, with its pictures embedded as base64 ``data:`` URIs, or
:class:`Skipped` with a sentence saying why it does not apply; anything a section needs and cannot get
raises :class:`Unavailable`, which becomes :class:`Skipped`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.html"


@dataclass
class Section:
    """A rendered section body: trusted HTML built with :func:`esc`, :func:`img`, :func:`table`.

    `views`: the :mod:`convlens.views` results the section drew, by name (kept on the report's
    :class:`SectionOutcome`, so a program can read the numbers behind the pictures).
    """

    body: str
    views: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """A section that does not apply to this subject, with the reason shown in its place."""

    reason: str


class Unavailable(Exception):
    """Raised when something a section needs is not there; becomes :class:`Skipped`."""


@dataclass(frozen=True)
class SectionSpec:
    """One report section: anchor id, heading, the sentences that lead it, and its builder."""

    id: str
    title: str
    intro: str
    build: Callable[[Any], Section | Skipped]


SectionFn = Callable[[Any], Section | Skipped]


def section(
    registry: list[SectionSpec], id: str, title: str, intro: str
) -> Callable[[SectionFn], SectionFn]:
    """Register a section builder in `registry` under `id` (unique there), in page order."""

    def register(fn: SectionFn) -> SectionFn:
        if any(s.id == id for s in registry):
            raise ValueError(f"duplicate report section {id!r}")
        registry.append(SectionSpec(id, title, intro, fn))
        return fn

    return register


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
    views: dict[str, Any] = field(default_factory=dict)  # the views the section drew, by name


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
    activation_images: int = 2  # images whose activations are drawn
    max_channels: int = 16  # channels drawn per layer in the activation grids
    neighbor_queries: int = 4  # query images for the neighbour comparison
    neighbors_k: int = 6
    neighbor_pool: int = 10_000  # images searched (first N of the training split)
    tsne_images: int = 2_000  # images embedded by t-SNE
    top_channels: int = 8  # channels of the top-patches grid
    top_images: int = 6  # patches per channel
    actmax_channels: int | None = None  # None: the views' default (16; 8 for a big network)
    actmax_steps: int | None = None  # None: the views' default (64; 16 for a big network)
    attribution_images: int = 3  # correct and, separately, wrong images explained
    erf_samples: int = 32


ProgressFn = Callable[[int, int, str, "SectionOutcome | None"], None]
"""`progress(index, total, title, outcome)`: called with outcome None before a section, then after."""


# Everything that reaches the page from data goes through `esc`.


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
