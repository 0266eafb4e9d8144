"""The report's sections about what the network answers: the confusion matrix and the predictions.

Registered in page order after the training curves (see :mod:`convlens.render.report_sections`, which
lists every section in ``SECTIONS``). Predictions come from the views (`ctx.predictions()`: the
arg-max of the logits, probabilities from ``log_softmax``), never from a softmax taken here.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from convlens.render import report_base
from convlens.render.report_base import (
    Section,
    SectionSpec,
    Skipped,
    Unavailable,
    fmt_int,
    img,
    para,
    table,
)
from convlens.render.report_context import ReportContext

SECTIONS: list[SectionSpec] = []
section = functools.partial(report_base.section, SECTIONS)


# --------------------------------------------------------------------------------------------------
# 3. Confusion matrix
# --------------------------------------------------------------------------------------------------


@section(
    "confusion",
    "Confusion matrix and per-class accuracy",
    "Row = true class, column = predicted class, on all the labelled images (a run's whole test "
    "split); the diagonal holds the correct answers. Bright cells off the diagonal are the pairs of "
    "classes the network confuses.",
)
def confusion_section(ctx: ReportContext) -> Section | Skipped:
    ds = ctx.images()
    if not ctx.labelled():
        raise Unavailable(
            "the images carry no labels of the model's classes: put them in one sub-folder per "
            "class, named as the model's classes (or pass --classes naming the outputs)."
        )
    pred = ctx.predictions().predicted
    k = max(len(ctx.classes), int(ds.labels.max()) + 1, int(pred.max()) + 1)
    from convlens.train import confusion_matrix

    y = ds.labels.numpy()
    cm = confusion_matrix(ds.labels, pred, k).numpy()  # (K, K): rows true, columns predicted
    names = [ctx.class_name(i) for i in range(k)]
    if k > 30:  # ImageNet's 1,000 classes: the true classes, and everything else in one column
        shown = np.unique(y)
        other = cm[shown].sum(1) - cm[np.ix_(shown, shown)].sum(1)  # (S,) predictions elsewhere
        cm = np.concatenate([cm[np.ix_(shown, shown)], other[:, None]], axis=1)  # (S, S + 1)
        names = [names[i] for i in shown]
        k = len(shown)
    size = min(8.0, 1.6 + 0.42 * k)  # 5.8 inches for 10 classes: readable beside the table
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.subplots()
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    cols = cm.shape[1]  # k, or k + 1 with the "other" column
    if k <= 20:
        for i in range(k):
            for j in range(cols):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7 if k > 10 else 8,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
        ax.set_xticks(
            range(cols), names + ["other"] * (cols - k), rotation=45, ha="right", fontsize=8
        )
        ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    acc = float(np.trace(cm) / max(cm.sum(), 1))
    rows = []
    for i in range(k):
        n = int(cm[i].sum())
        off = cm[i].copy()
        off[i] = 0
        j = int(off.argmax())
        confused = f"{([*names, 'another class'])[j]} ({off[j]})" if off[j] else "-"
        rows.append([names[i], fmt_int(n), f"{100 * cm[i, i] / n:.1f} %" if n else "-", confused])
    what = "test images" if ctx.is_run else "images"
    per_class = table(
        ["class", what, "accuracy", "most often mistaken for"],
        rows,
        numeric=[False, True, True, False],
    )
    return Section(
        '<div class="row">'
        + img(
            fig,
            "confusion matrix of the labelled images",
            f"{'Test accuracy' if ctx.is_run else 'Accuracy'} {100 * acc:.2f} % on {fmt_int(len(y))} images.",
        )
        + f"<div>{per_class}</div></div>",
        views={"predictions": ctx.predictions()},
    )


# --------------------------------------------------------------------------------------------------
# 3b. Predictions
# --------------------------------------------------------------------------------------------------

MAX_PREDICTION_ROWS = 50  # rows of each predictions table (a run's test split has thousands)


@section(
    "predictions",
    "Predictions",
    "What the network answers for each image: its five most probable classes, with probabilities "
    "computed from its logits (the first one is the largest logit), and, where the images carry the "
    "model's classes as labels, the true class, with a cross where the answer is wrong.",
)
def predictions_section(ctx: ReportContext) -> Section | Skipped:
    ds = ctx.images()
    view = ctx.predictions()
    classes, probs = view.classes.tolist(), view.probs.tolist()  # (N, k) each
    labelled = ctx.labelled()
    n = len(ds)

    def name(i: int) -> str:
        files = ds.extra.get("files")
        if isinstance(files, list) and i < len(files):
            return Path(str(files[i])).name
        return f"image {i}"

    def rows(indices: list[int]) -> list[list[str]]:
        out = []
        for i in indices:
            top = [
                f"{ctx.class_name(c)} ({100 * p:.1f} %)"
                for c, p in zip(classes[i], probs[i], strict=True)
            ]
            row = [str(i), name(i), top[0], ", ".join(top[1:])]
            if labelled:
                truth = int(ds.labels[i])
                row += [ctx.class_name(truth), "" if classes[i][0] == truth else "✗ wrong"]
            out.append(row)
        return out

    headers = ["#", "image", "predicted", "next four"] + (["true class", ""] if labelled else [])
    numeric = [True, False, False, False] + ([False, False] if labelled else [])
    shown = list(range(min(n, MAX_PREDICTION_ROWS)))
    parts = []
    if labelled:
        wrong = [i for i in range(n) if classes[i][0] != int(ds.labels[i])]
        parts.append(
            para(
                f"{fmt_int(n - len(wrong))} of {fmt_int(n)} images right "
                f"({100 * (n - len(wrong)) / max(n, 1):.2f} %), {fmt_int(len(wrong))} wrong."
            )
        )
    parts.append(table(headers, rows(shown), numeric=numeric))
    if n > len(shown):
        parts.append(para(f"The first {len(shown)} of {fmt_int(n)} images.", "note"))
    if labelled and wrong:
        parts.append(f"<h3>Misclassified (the first {min(len(wrong), MAX_PREDICTION_ROWS)})</h3>")
        parts.append(table(headers, rows(wrong[:MAX_PREDICTION_ROWS]), numeric=numeric))
    return Section("".join(parts), views={"predictions": view})
