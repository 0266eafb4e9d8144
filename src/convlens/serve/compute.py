"""What each view asks of the Python API, and its answer as JSON.

Each function validates its arguments against the subject, calls the public API
(:mod:`convlens.inspect`, :mod:`convlens.anatomy`) and encodes the tensors for the browser. For the
quick ones the caller holds the subject's lock; the long ones (layer grids, t-SNE, occlusion) take it
around each model computation themselves, so that a prediction can run between two of their steps.
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

from convlens import inspect
from convlens.anatomy import effective_receptive_field, summary
from convlens.anatomy.explain import Volume, explain_conv
from convlens.inspect.filters import first_conv
from convlens.serve.catalog import Served
from convlens.serve.encode import atlas, data_url, heat_png, image_png, scaled_png, unit_png
from convlens.serve.errors import RequestError

Report = Callable[[int, int, str], None]  # (done, total, message)
METHODS = ("gradcam", "guided_gradcam", "saliency", "occlusion")


def subject_info(served: Served) -> dict[str, Any]:
    """Name, model, classes and image count of a subject (no model computation)."""
    s = served.subject
    return {
        "name": served.name,
        "model": s.info.get("model", type(s.model).__name__),
        "data": s.info.get("data"),
        "classes": s.classes,
        "input": list(s.image_shape),
        "images": len(s.images) if s.images is not None else 0,
    }


def network(served: Served) -> dict[str, Any]:
    """The summary's rows and totals, and which layer feeds which."""
    return {**served.summary.to_dict(), "graph": served.graph}


def predict(served: Served, image: torch.Tensor, top: int = 5) -> dict[str, Any]:
    """Top-`top` classes and the activations of every conv and pooling layer for one image."""
    s = served.subject
    x = s.normalize(image[None])  # (1, C, H, W)
    with torch.inference_mode():
        probs = s.model(x).softmax(dim=1)[0]  # (K,)
    acts = inspect.activations(s.model, x, max_layers=10_000)  # {layer: (1, C, H, W)}
    p, idx = probs.topk(min(top, probs.numel()))
    return {
        "input": data_url(image_png(image)),
        "top": [
            {"index": int(i), "name": s.class_name(int(i)), "p": float(v)}
            for v, i in zip(p.tolist(), idx.tolist(), strict=True)
        ],
        "layers": [
            {"name": name, "shape": list(a.shape[1:]), **atlas(a[0])} for name, a in acts.items()
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


def attribution(
    served: Served, image: torch.Tensor, method: str, target: int | None, layer: str | None
) -> dict[str, Any]:
    """Grad-CAM, guided Grad-CAM or saliency of one image for class `target` (default: predicted)."""
    s = served.subject
    x = s.normalize(image[None])
    if method == "gradcam":
        heat = inspect.grad_cam(s.model, x, target, layer)[0]  # (H, W)
    elif method == "guided_gradcam":
        g = inspect.guided_grad_cam(s.model, x, target, layer)[0]  # (C, H, W)
        return {
            "method": method,
            "overlay": data_url(scaled_png(g.abs() / g.abs().max().clamp_min(1e-12))),
        }
    elif method == "saliency":
        heat = inspect.saliency(s.model, x, target)[0]  # (H, W)
    else:
        raise RequestError(f"no method {method!r}; choose one of: {', '.join(METHODS)}")
    return {"method": method, "overlay": data_url(heat_png(heat.detach()))}


def occlusion(
    served: Served, image: torch.Tensor, target: int | None, window: int, stride: int
) -> dict[str, Any]:
    """The occlusion map (logit drop per pixel) of one image."""
    s = served.subject
    with served.lock:
        x = s.normalize(image[None])
        res = inspect.occlusion(s.model, x, target, window=window, stride=stride)
    return {
        "method": "occlusion",
        "target": int(res.target[0]),
        "overlay": data_url(heat_png(res.attribution[0].mean(0).clamp_min(0))),
    }


def evenly(n: int, limit: int | None) -> torch.Tensor:
    """`limit` indices spread evenly over ``range(n)`` (all of them when `limit` is None or >= n)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, max(limit, 1)).round().long()


def layer_grid(
    served: Served,
    layer: str,
    start: int,
    count: int,
    steps: int,
    patches: int,
    limit: int,
    report: Report,
) -> dict[str, Any]:
    """Per channel: the filter (first layer), the activation-maximisation image, top patches."""
    s = served.subject
    channels = list(range(start, start + count))
    chunk = 16
    total = 1 + -(-len(channels) // chunk)
    report(0, total, f"top patches over {limit} images" if s.images is not None else "starting")
    out: dict[int, dict[str, Any]] = {c: {"channel": c} for c in channels}
    if s.images is not None:
        images = s.images.images[evenly(len(s.images), limit)]
        with served.lock:
            top = inspect.top_patches(
                s.model,
                layer,
                images,
                channels,
                n=patches,
                mean=s.preprocess.mean,
                std=s.preprocess.std,
            )
        crops = inspect.crop_patches(images, top)  # (K, n, C, h, w)
        for k, c in enumerate(top.channels):
            strip = torch.cat(list(crops[k]), dim=2)  # (C, h, n*w), the patches side by side
            out[c]["patches"] = data_url(image_png(strip))
            out[c]["top_value"] = float(top.values[k, 0])
    if layer == first_conv(s.model):
        w = inspect.filters(s.model, layer)  # (C_out, C_in, kh, kw)
        for c in channels:
            f = w[c] if w.shape[1] in (1, 3) else w[c].mean(0, keepdim=True)
            out[c]["filter"] = data_url(scaled_png(f))
    size = min(s.preprocess.size)
    for i in range(0, len(channels), chunk):
        part = channels[i : i + chunk]
        report(1 + i // chunk, total, f"activation maximisation, channels {part[0]}-{part[-1]}")
        with served.lock:
            res = inspect.activation_maximization(
                s.model,
                layer,
                part,
                size=size,
                steps=steps,
                mean=s.preprocess.mean,
                std=s.preprocess.std,
                in_channels=s.preprocess.channels,
            )
        for k, c in enumerate(part):
            out[c]["actmax"] = data_url(unit_png(res.images[k].numpy()))
            out[c]["actmax_value"] = float(res.values[k])
    report(total, total, "done")
    rf = served.layer(layer).rf
    return {"layer": layer, "rf": rf.to_dict() if rf else None, "channels": list(out.values())}


def embedding(served: Served, limit: int | None, report: Report) -> dict[str, Any]:
    """t-SNE of the penultimate features of the subject's images, with their labels."""
    s = served.subject
    if s.images is None:
        raise RequestError(
            f"{served.name} has no images to embed; start the server with --images", 409
        )
    idx = evenly(len(s.images), limit)
    report(0, 2, f"features of {len(idx)} images")
    with served.lock:
        feats = features(served, idx)
    report(1, 2, f"t-SNE of {len(idx)} points")
    m = inspect.tsne(feats)
    report(2, 2, "done")
    coords = np.round(m.coords.astype(np.float32), 3)
    return {
        "indices": idx.tolist(),
        "x": coords[:, 0].tolist(),
        "y": coords[:, 1].tolist(),
        "labels": s.images.labels[idx].tolist(),
        "classes": s.classes,
    }


def features(served: Served, idx: torch.Tensor) -> torch.Tensor:
    """Penultimate features ``(N, D)`` of the subject's images at `idx`."""
    s = served.subject
    assert s.images is not None
    return inspect.extract_features(
        s.model, s.images.images[idx], mean=s.preprocess.mean, std=s.preprocess.std
    )


def neighbours(served: Served, index: int, k: int) -> dict[str, Any]:
    """The `k` nearest images of image `index` in feature space and in pixel space."""
    s = served.subject
    query = served.image(index)[None]
    assert s.images is not None
    nb = inspect.neighbors(
        s.model,
        query,
        s.images.images,
        k=min(k + 1, len(s.images)),
        mean=s.preprocess.mean,
        std=s.preprocess.std,
    )

    def others(indices: torch.Tensor) -> list[int]:
        return [i for i in indices[0].tolist() if i != index][:k]

    return {
        "index": index,
        "feature": others(nb.feature_indices),
        "pixel": others(nb.pixel_indices),
    }


def unit_fields(served: Served, layer: str, row: int, col: int) -> dict[str, Any]:
    """The theoretical receptive field of unit (row, col) of `layer` and the layer's effective one."""
    r = served.layer(layer)
    shape = r.output_shape
    oh, ow = (shape[-2], shape[-1]) if len(shape) == 3 else (1, 1)
    if not (0 <= row < oh and 0 <= col < ow):
        raise RequestError(f"layer {layer!r} has a {oh} x {ow} map; no unit ({row}, {col})", 404)
    if r.rf is None:
        raise RequestError(f"layer {layer!r} has no receptive field on the input (flat output)")
    s = served.subject
    erf = effective_receptive_field(s.model, layer, s.image_shape, n=16)
    # The effective field of the centre unit, moved to the clicked unit (the layers are convolutions:
    # shifting the input by one jump shifts the field by one jump, away from the borders).
    cy, cx = r.rf.center(row, col)
    return {
        "layer": layer,
        "unit": [row, col],
        "box": list(r.rf.box(row, col)),
        "rf": r.rf.to_dict(),
        "erf": {
            "map": data_url(heat_png(erf.map**0.5, cmap="viridis")),
            "radius": erf.radius,
            "shift": [cy - erf.center[0], cx - erf.center[1]],
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
    idx = evenly(len(s.images), limit)
    feats = features(served, idx).numpy()
    names = [s.class_name(int(y)) for y in s.images.labels[idx]]
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
