"""The views as JSON: each function asks :mod:`convlens.views` and encodes its result for the browser.

Nothing is computed here (no method of :mod:`convlens.inspect` is called, no default is chosen): the
views resolve every default and record it, and this module turns tensors into PNG data URLs. For the
quick views the caller holds the subject's lock; the long ones (layer grids, t-SNE, occlusion) take
it around each model computation themselves, so that a prediction can run between two of their steps.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens import views
from convlens.anatomy import summary
from convlens.anatomy.explain import Volume, explain_conv
from convlens.errors import ConvlensError
from convlens.serve.catalog import Served
from convlens.serve.encode import atlas, data_url, heat_png, image_png, scaled_png, unit_png
from convlens.serve.errors import RequestError
from convlens.views import defaults

Report = Callable[[int, int, str], None]  # (done, total, message)
METHODS = views.METHODS


def subject_info(served: Served) -> dict[str, Any]:
    """Name, model, classes, image count and every default of the views for a subject."""
    s = served.subject
    try:
        macs: int | None = int(served.summary.totals["macs"])
    except ConvlensError:
        macs = None
    with served.lock:  # the default layer is found by a forward pass
        found = defaults.as_dict(s, macs)
    return {
        "name": served.name,
        "model": s.info.get("model", type(s.model).__name__),
        "data": s.info.get("data"),
        "classes": s.classes,
        "input": list(s.image_shape),
        "images": len(s.images) if s.images is not None else 0,
        "defaults": found,
    }


def network(served: Served) -> dict[str, Any]:
    """The network view: rows (with kernel, stride, padding...), totals, graph, blocks, defaults."""
    summary, graph = served.summary, served.graph
    with served.lock:  # the default layer is found by a forward pass
        return views.network_view(served.subject, summary=summary, graph=graph).to_dict()


def _label(served: Served, image_index: int | None) -> int | None:
    images = served.subject.images
    if image_index is None or images is None or not served.subject.labels_are_outputs(images):
        return None
    return int(images.labels[image_index])


def predict(
    served: Served, image: torch.Tensor, top: int = 5, *, image_index: int | None = None
) -> dict[str, Any]:
    """Top-`top` classes (from the logits), the true label when known, and every layer's maps with
    their minimum and maximum, for one image (`image_index`: its index among the test images)."""
    s = served.subject
    p = views.prediction_view(
        s, image, label=_label(served, image_index), k=top, image_index=image_index,
        index=served.index,
    )  # fmt: skip
    acts = views.activations_view(s, image)
    return {
        "input": data_url(image_png(image)),
        **p.to_dict(),
        "layers": [
            {"name": m.name, "shape": list(m.shape), "min": m.min, "max": m.max, **atlas(m.values)}
            for m in acts.layers
        ],
    }


def check_target(served: Served, target: int | None) -> None:
    """A class index must name one of the subject's outputs."""
    n = len(served.subject.classes)
    if target is not None and not 0 <= target < n:
        raise RequestError(f"no class {target}; {served.name} has {n} classes (0-{n - 1})", 404)


def conv_layer(served: Served, layer: str | None) -> str | None:
    """`layer` when it exists and outputs feature maps (404/400 otherwise); None stays None."""
    if layer is None:
        return None
    row = served.layer(layer)
    if len(row.output_shape) != 3:  # (C, H, W)
        raise RequestError(f"layer {layer!r} outputs {tuple(row.output_shape)}, not feature maps")
    return layer


def _attribution_json(a: views.AttributionView) -> dict[str, Any]:
    if a.maps.dim() == 4:  # (1, C, H, W) shaped like the input: shown as |values|, scaled
        shown = a.maps[0].abs()
        overlay = data_url(scaled_png(shown / shown.max().clamp_min(1e-12)))
    else:
        shown = a.maps[0].clamp_min(0) if a.method == "occlusion" else a.maps[0]
        overlay = data_url(heat_png(shown))
    return {
        # the range the overlay's colours span (its colour bar): the drawn map's min and max
        "min": float(shown.min()),
        "max": float(shown.max()),
        "method": a.method,
        "target": int(a.targets[0]),
        "target_p": float(a.target_probs[0]),
        "predicted": int(a.predicted[0]),
        "layer": a.layer,
        "window": a.window,
        "stride": a.stride,
        "path": a.path,
        "overlay": overlay,
    }


def attribution(
    served: Served, image: torch.Tensor, method: str, target: int | None, layer: str | None
) -> dict[str, Any]:
    """Grad-CAM, guided Grad-CAM, saliency or guided backprop of one image for class `target`
    (default: predicted), with the layer and target the view resolved."""
    if method not in METHODS or method == "occlusion":
        raise RequestError(f"no method {method!r}; choose one of: {', '.join(METHODS)}")
    return _attribution_json(
        views.attribution_view(served.subject, image, method, target=target, layer=layer)
    )


def occlusion(
    served: Served,
    image: torch.Tensor,
    target: int | None,
    window: int | None = None,
    stride: int | None = None,
) -> dict[str, Any]:
    """The occlusion map (logit drop per pixel) of one image; window and stride default as the view
    resolves them."""
    with served.lock:
        a = views.attribution_view(
            served.subject, image, "occlusion", target=target, window=window, stride=stride
        )
    return _attribution_json(a)


def evenly(n: int, limit: int | None) -> torch.Tensor:
    """`limit` indices spread evenly over ``range(n)`` (all of them when `limit` is None or >= n)."""
    return views.evenly(n, limit)


def layer_grid(
    served: Served,
    layer: str,
    start: int,
    count: int,
    steps: int | None,
    patches: int | None,
    limit: int | None,
    report: Report,
    parts: list[str] | None = None,
    objective: str | None = None,
) -> dict[str, Any]:
    """Per channel: the filter (first layer), the activation-maximisation image, top patches (one
    PNG each, with the image, its label and the clipped receptive-field box).

    `parts` (default all): which of "filters", "actmax", "patches" to compute; the page asks for the
    quick ones first (filters and patches, read from the index) and the synthesised images second.
    """
    s = served.subject
    if parts is not None and s.images is None and s.image_list is None and served.index is None:
        parts = [p for p in parts if p != "patches"]  # no images: no patches to look for
    v = views.layer_view(
        s, layer, channels=list(range(start, start + count)), steps=steps, patches=patches,
        limit=limit, index=served.index, lock=served.lock, report=report, parts=parts,
        objective=objective,
    )  # fmt: skip
    out: list[dict[str, Any]] = []
    for k, c in enumerate(v.channels):
        ch: dict[str, Any] = {"channel": c}
        if v.patches:
            ch["patches"] = [
                {**p.to_dict(), "png": data_url(image_png(v.crops[k, b]))}  # type: ignore[index]
                for b, p in enumerate(v.patches[k])
            ]
            ch["top_value"] = v.patches[k][0].value if v.patches[k] else None
        if v.filters is not None and v.first_layer:  # a deeper layer's filters are not images
            f = v.filters[k]  # (C_in, kh, kw)
            ch["filter"] = data_url(
                scaled_png(f if f.shape[0] in (1, 3) else f.mean(0, keepdim=True))
            )
        if v.actmax is not None and v.actmax_values is not None:
            ch["actmax"] = data_url(unit_png(v.actmax[k].numpy()))
            ch["actmax_value"] = float(v.actmax_values[k])
        out.append(ch)
    rf = served.layer(v.layer).rf
    return {
        "layer": v.layer,
        "rf": rf.to_dict() if rf else None,
        "steps": v.steps,
        "size": v.size,
        "objective": v.objective,
        "limit": v.limit,
        "source": v.source,
        "rf_size": list(v.rf_size) if v.rf_size else None,
        "channels": out,
    }


def embedding(served: Served, limit: int | None, report: Report) -> dict[str, Any]:
    """t-SNE of the penultimate features of the subject's images, with labels and predictions."""
    s = served.subject
    if s.images is None:
        raise RequestError(
            f"{served.name} has no images to embed; start the server with --images", 409
        )
    with served.lock:
        e = views.embedding_view(s, limit=limit, index=served.index, report=report)
    coords = np.round(e.coords.astype(np.float32), 3)
    return {
        "indices": e.indices.tolist(),
        "x": coords[:, 0].tolist(),
        "y": coords[:, 1].tolist(),
        "labels": e.labels.tolist(),
        "predicted": e.predicted.tolist(),
        "correct": e.correct.tolist() if e.correct is not None else None,
        "classes": e.classes,
        "limit": e.limit,
    }


def neighbours(served: Served, index: int, k: int | None = None) -> dict[str, Any]:
    """The `k` nearest images of image `index` in feature space and in pixel space, with distances
    and labels."""
    s = served.subject
    if s.images is None:
        raise RequestError(f"{served.name} has no images; start the server with --images", 404)
    idx = served.index
    nb = views.neighbours_view(
        s, index, k=k, index=idx, pixels=served.pixels if idx is not None else None
    )
    f, p = nb.feature[0], nb.pixel[0]
    return {
        "index": index,
        "k": nb.k,
        "metric": nb.metric,
        "feature": [n.image_index for n in f],
        "feature_distances": [n.distance for n in f],
        "feature_labels": [n.label_name for n in f],
        "pixel": [n.image_index for n in p],
        "pixel_distances": [n.distance for n in p],
        "pixel_labels": [n.label_name for n in p],
    }


def unit_fields(served: Served, layer: str, row: int, col: int) -> dict[str, Any]:
    """The theoretical receptive field of unit (row, col) of `layer` (clipped too) and the layer's
    effective one."""
    r = served.layer(layer)
    shape = r.output_shape
    oh, ow = (shape[-2], shape[-1]) if len(shape) == 3 else (1, 1)
    if not (0 <= row < oh and 0 <= col < ow):
        raise RequestError(f"layer {layer!r} has a {oh} x {ow} map; no unit ({row}, {col})", 404)
    if r.rf is None:
        raise RequestError(f"layer {layer!r} has no receptive field on the input (flat output)")
    u = views.unit_fields_view(served.subject, layer, row, col, samples=16)
    assert u.erf is not None and u.erf_shift is not None
    return {
        **u.to_dict(),
        "erf": {
            "map": data_url(heat_png(u.erf.map**0.5, cmap="viridis")),
            "radius": u.erf.radius,
            "shift": list(u.erf_shift),
        },
    }


def arithmetic(
    size: int, kernel: int, stride: int, padding: int, filters: int, depth: int
) -> dict[str, Any]:
    """One conv layer's arithmetic, from the summary of a real ``nn.Conv2d`` and `explain_conv`."""
    for name, v in {
        "size": size,
        "kernel": kernel,
        "stride": stride,
        "filters": filters,
        "depth": depth,
    }.items():
        if not 1 <= v <= 4096:
            raise RequestError(f"{name} must be between 1 and 4096, not {v}")
    if not 0 <= padding <= 1024:
        raise RequestError(f"padding must be between 0 and 1024, not {padding}")
    if kernel > size + 2 * padding:
        raise RequestError(
            f"a {kernel} x {kernel} kernel does not fit a {size} x {size} input padded by {padding}"
        )
    conv = nn.Conv2d(depth, filters, kernel, stride, padding, device="meta")
    row = summary(conv, (depth, size, size), warn=False).layers[0]
    return {
        **row.to_dict(),
        "lines": explain_conv(Volume(size, size, depth), kernel, stride, padding, filters),
    }


def projector_zip(served: Served, limit: int | None) -> bytes:
    """TensorBoard projector files (tensors.tsv, metadata.tsv, projector_config) as a zip."""
    s = served.subject
    if s.images is None:
        raise RequestError(f"{served.name} has no images to export", 409)
    with served.lock:
        e = views.embedding_view(s, limit=limit if limit is not None else len(s.images), tsne=False)
    assert e.features is not None
    feats = e.features.numpy()
    names = [s.class_name(int(y)) for y in s.images.labels[e.indices]]
    tensors = io.StringIO()
    np.savetxt(tensors, feats, delimiter="\t", fmt="%.6g")
    config = {
        "embeddings": [
            {
                "tensorName": served.name,
                "tensorShape": list(feats.shape),
                "tensorPath": "tensors.tsv",
                "metadataPath": "metadata.tsv",
            }
        ]
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("tensors.tsv", tensors.getvalue())
        z.writestr("metadata.tsv", "\n".join(n.replace("\t", " ") for n in names) + "\n")
        z.writestr("projector_config.json", json.dumps(config, indent=2))
        z.writestr(
            "projector_config.pbtxt",
            'embeddings {\n  tensor_path: "tensors.tsv"\n  metadata_path: "metadata.tsv"\n}\n',
        )
    return buf.getvalue()
