"""Endpoints about a subject as a whole: the listing, its info and defaults, the network, receptive
fields, neighbours, the projector export, and one conv unit's computation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from convlens.errors import InputError
from convlens.models import conv_layers
from convlens.serve import compute
from convlens.serve.catalog import Served
from convlens.serve.errors import RequestError
from convlens.serve.routes.deps import ServedSubject, ServeState, State
from convlens.views.unit import UnitView, unit_view

router = APIRouter(prefix="/api/subjects", tags=["subjects"])


def listing(served: Served) -> dict[str, Any]:
    """What the subject picker shows: name, status and reason, and what is known without loading
    (a run's model, data, classes and input from its run.json; the image count once loaded)."""
    out: dict[str, Any] = {"name": served.name, "status": served.status, "reason": served.reason}
    meta = {k: served.meta.get(k) for k in ("model", "data", "classes", "input")}
    if served.loaded and served.ok:
        s = served.subject
        return {
            **out,
            "model": s.info.get("model", type(s.model).__name__),
            "data": s.info.get("data"),
            "classes": s.classes,
            "input": list(s.image_shape),
            "images": len(s.images) if s.images is not None else 0,
        }
    return {**out, **meta, "images": None}


def subject_defaults(served: Served) -> dict[str, Any]:
    """Every default the page uses for this subject (so that it never derives one itself).

    The views' own (:func:`convlens.views.defaults.as_dict`, through the subject's info: layer,
    occlusion window and stride, actmax steps and size, channels, patches, images searched, k...)
    and the names of the conv layers.
    """
    return {
        **compute.subject_info(served)["defaults"],
        "conv_layers": list(conv_layers(served.subject.model)),
    }


def defaults_of(served: Served, state: ServeState) -> dict[str, Any]:
    """:func:`subject_defaults`, computed once per subject (it runs the model once)."""
    found = state.defaults.get(served.name)
    if found is None:
        with served.lock:
            found = state.defaults[served.name] = subject_defaults(served)
    return dict(found)


@router.get("")
def subjects_list(state: State) -> list[dict[str, Any]]:
    """Every subject with its status (``ok``, ``unfinished``, ``broken``) and the reason."""
    return [listing(s) for s in state.catalog]


@router.get("/{name}")
def subject_info(served: ServedSubject, state: State) -> dict[str, Any]:
    """The subject's info, how its images are prepared, and the defaults the page uses."""
    pre = served.subject.preprocess
    prepared = {
        "channels": pre.channels,
        "size": list(pre.size),
        "resize": pre.resize,  # None: resized straight to `size`; else shorter side, centre crop
        "interpolation": pre.interpolation,
    }
    return {**listing(served), "preprocess": prepared, "defaults": defaults_of(served, state)}


@router.get("/{name}/network")
def network(served: ServedSubject) -> dict[str, Any]:
    """The summary's rows and totals, which layer feeds which, blocks and the default layer."""
    with served.lock:  # the view runs the model (the default layer): not while another request does
        return compute.network(served)


@router.get("/{name}/rf")
def receptive_field(
    served: ServedSubject,
    state: State,
    layer: Annotated[str, Query(max_length=256)],
    row: Annotated[int, Query(ge=0, le=100_000)],
    col: Annotated[int, Query(ge=0, le=100_000)],
) -> dict[str, Any]:
    """The theoretical and effective receptive fields of unit (row, col) of `layer`."""
    params = {"layer": layer, "row": row, "col": col}
    served.layer(layer)
    hit = state.cache.get(served.key, "rf", params)
    if hit is not None:
        return dict(hit)
    with served.lock:
        result = compute.unit_fields(served, layer, row, col)
    state.cache.put(served.key, "rf", params, result)
    return result


@router.get("/{name}/neighbors")
def neighbors(
    served: ServedSubject,
    state: State,
    index: Annotated[int, Query(ge=0)],
    k: Annotated[int | None, Query(ge=1, le=64)] = None,
) -> dict[str, Any]:
    """The `k` nearest images of image `index` in feature space and in pixel space."""
    served.image(index)
    params = {"index": index, "k": k}
    hit = state.cache.get(served.key, "neighbors", params)
    if hit is not None:
        return dict(hit)
    with served.lock:
        result = compute.neighbours(served, index, k)
    state.cache.put(served.key, "neighbors", params, result)
    return result


@router.get("/{name}/projector.zip")
def projector(
    served: ServedSubject, limit: Annotated[int | None, Query(ge=10, le=200_000)] = None
) -> Response:
    """TensorBoard projector files of the subject's images as a zip."""
    with served.lock:
        data = compute.projector_zip(served, limit)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{served.name}-projector.zip"'},
    )


@router.get("/{name}/unit")
def unit(
    served: ServedSubject,
    state: State,
    image: Annotated[str, Query(max_length=64)],
    layer: Annotated[str, Query(max_length=256)],
    channel: Annotated[int, Query(ge=0, le=1_000_000)],
    row: Annotated[int, Query(ge=0, le=100_000)],
    col: Annotated[int, Query(ge=0, le=100_000)],
) -> dict[str, Any]:
    """How unit (channel, row, col) of conv `layer` was computed for `image`, with real numbers."""
    pixels = state.image(served, image)
    served.layer(layer)  # 404 listing the layers
    try:
        with served.lock:
            view = unit_view(served.subject, pixels, layer, channel, row, col)
    except InputError as e:  # a channel or position outside the layer's output
        raise RequestError(str(e), 404) from None
    return {"image": image, **unit_json(view)}


def unit_json(view: UnitView) -> dict[str, Any]:
    """A :class:`~convlens.views.unit.UnitView` as JSON (arrays as nested lists, float64)."""
    c = view.computation
    return {
        "layer": view.layer,
        "channel": view.channel,
        "row": view.row,
        "col": view.col,
        "first_layer": view.first_layer,
        "output_shape": list(c.output_shape),
        "kernel_size": list(c.kernel_size),
        "stride": list(c.stride),
        "dilation": list(c.dilation),
        "padding": list(c.padding),
        "padding_mode": c.padding_mode,
        "groups": c.groups,
        "in_channels": c.in_channels,
        "shown_channels": c.shown_channels,
        "truncated": c.truncated,
        "rows": c.rows,
        "cols": c.cols,
        "padded": c.padded.tolist(),
        "patch": c.patch.tolist(),
        "kernel": c.kernel.tolist(),
        "products": c.products.tolist(),
        "channel_sums": c.channel_sums.tolist(),
        "total": c.total,
        "bias": c.bias,
        "pre_activation": c.pre_activation,
        "network_value": c.network_value,
        "equal": c.equal,
        "steps": [
            {"kind": kind, "layer": name, "value": value, "network_value": net}
            for kind, name, value, net in c.steps
        ],
        "activation": c.activation,
    }
