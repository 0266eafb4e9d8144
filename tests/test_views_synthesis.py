"""`synthesis_view`: the synthesised images of the CLI (`visualize actmax`), the report and the web
app (the layer grid), computed once.

Oracle for "the view adds nothing": a direct call of `convlens.inspect.activation_maximization` with
the arguments the view says it resolved (the colour matrix from `color_correlation_sqrt` of the
same images): the images must be equal bit for bit, also in the layer grid's chunks of 16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convlens.cli.main import main
from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError
from convlens.inspect import activation_maximization
from convlens.inspect.param import color_correlation_sqrt
from convlens.models import default_layer
from convlens.subjects import Preprocess, Subject, subject
from convlens.views import defaults, layer_view, synthesis_view

PRE = Preprocess(3, (12, 12), (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
CLASSES = ["a", "b", "c", "d", "e"]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 20, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(20, 5),
    )


def _subject(with_images: bool = True) -> Subject:
    g = torch.Generator().manual_seed(1)
    # Colours correlated unlike ImageNet's: red and blue move together, green apart.
    base = torch.randint(0, 256, (40, 1, 12, 12), generator=g)
    noise = torch.randint(0, 60, (40, 3, 12, 12), generator=g)
    images = (torch.cat([base, 255 - base, base], 1) * 0.7 + noise).clamp(0, 255).to(torch.uint8)
    ds = Dataset(
        name="toy", split="test", images=images, labels=torch.arange(40) % 5, classes=CLASSES,
        mean=PRE.mean, std=PRE.std,
    )  # fmt: skip
    return subject(
        _net(), preprocess=PRE, classes=CLASSES, images=ds if with_images else None, name="toy"
    )


def _direct(sub: Subject, layer: str | None, channels: list[int], **kw: object) -> object:
    return activation_maximization(
        sub.model, layer, channels, mean=PRE.mean, std=PRE.std, in_channels=3, **kw
    )  # type: ignore[arg-type]


def test_view_equals_the_method_with_the_data_sets_colours() -> None:
    sub = _subject()
    v = synthesis_view(sub, "2", [0, 3, 7], steps=4, size=10, seed=5)
    cm = color_correlation_sqrt(sub.images.images[: defaults.COLOUR_IMAGES])  # type: ignore[union-attr]
    ref = _direct(sub, "2", [0, 3, 7], size=10, steps=4, seed=5, color_matrix=cm)
    assert torch.equal(v.images, ref.images.float())  # type: ignore[attr-defined]
    assert torch.equal(v.values, ref.values)  # type: ignore[attr-defined]
    assert v.images.dtype == torch.float32 and v.images.shape == (3, 3, 10, 10)
    assert (v.layer, v.channels, v.steps, v.size, v.seed) == ("2", (0, 3, 7), 4, 10, 5)
    assert v.objective == ref.objective == "channel"  # type: ignore[attr-defined]
    assert v.colours == "data" and "40 of the subject's images" in v.colour_note
    assert v.class_names is None
    # ImageNet's matrix (the method's default) gives other images: the colours did reach it.
    other = synthesis_view(sub, "2", [0, 3, 7], steps=4, size=10, seed=5, colours="imagenet")
    assert other.colours == "imagenet" and not torch.equal(other.images, v.images)


def test_defaults_are_resolved_and_recorded() -> None:
    sub = _subject()
    v = synthesis_view(sub, simple=True, steps=None, channels=2)
    assert v.steps == defaults.synthesis_steps(True) == 20
    assert v.layer == default_layer(sub.model, (3, 12, 12)) and v.size == 12
    assert v.channels == (0, 1) and v.colours == "none" and "simple" in v.colour_note
    assert defaults.synthesis_steps(False) == 256
    # The output: class scores, with their names
    out = synthesis_view(sub, objective="logit", channels=[1, 4], steps=2)
    assert out.layer is None and out.objective == "logit" and out.class_names == ("b", "e")
    ref = _direct(sub, None, [1, 4], size=12, steps=2, objective="logit",
                  color_matrix=color_correlation_sqrt(sub.images.images))  # type: ignore[union-attr]  # fmt: skip
    assert torch.equal(out.images, ref.images)  # type: ignore[attr-defined]
    # No images to measure colours on: ImageNet's, and the note says why.
    bare = synthesis_view(_subject(with_images=False), "0", [0], steps=1)
    assert bare.colours == "imagenet" and "ImageNet" in bare.colour_note
    assert bare.objective == "neuron"  # an affine first layer: the method's rule
    assert set(bare.to_dict()) >= {"layer", "objective", "steps", "size", "colours", "values"}


def test_layer_grid_chunks_equal_direct_calls() -> None:
    """layer_view takes its images from synthesis_view in chunks of 16: the same as two direct
    calls of the method (16 + 4 channels) with the method's own (ImageNet) colours."""
    sub = _subject()
    v = layer_view(sub, "2", channels=list(range(20)), steps=3, parts=("actmax",), seed=2)
    a = _direct(sub, "2", list(range(16)), size=12, steps=3, seed=2)
    b = _direct(sub, "2", list(range(16, 20)), size=12, steps=3, seed=2)
    assert v.actmax is not None and v.actmax_values is not None
    assert torch.equal(v.actmax, torch.cat([a.images, b.images]))  # type: ignore[attr-defined]
    assert torch.equal(v.actmax_values, torch.cat([a.values, b.values]).float())  # type: ignore[attr-defined]
    assert (v.steps, v.size, v.objective) == (3, 12, "channel")
    steps = []
    layer_view(
        sub, "2", channels=list(range(20)), steps=1, parts=("actmax",),
        report=lambda d, t, m: steps.append((d, t)),
    )  # fmt: skip
    assert steps == [(1, 3), (2, 3), (3, 3)]  # two chunks, done (as before the view)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objective": "max"}, "objective 'max' is not one of"),
        ({"size": 0}, "size must be a positive number"),
        ({"steps": -1}, "steps must be >= 0"),
        ({"channels": [3, 20]}, "channel 20 is out of range; 2 has 20 channels (0-19)"),
        ({"layer": "nope"}, "no layer named 'nope'"),
        ({"colours": "sepia"}, "colours 'sepia' is not one of data, imagenet"),
        ({"precision": "fp16"}, "unknown precision 'fp16'"),
        ({"objective": "logit", "layer": None, "channels": [9]}, "the output has 5 channels"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs: dict, message: str) -> None:
    kw = {"layer": "2", "steps": 1, **kwargs}
    with pytest.raises(ConvlensError) as e:
        synthesis_view(_subject(), **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_json_is_the_methods_numbers(trained_run: Path, tmp_path: Path) -> None:
    """`visualize actmax --save-data` writes the same keys as before and the method's own images."""
    from convlens.train.run_dir import load_run

    rc = main(["visualize", str(trained_run), "actmax", "--channels", "0-2", "--steps", "3",
               "--seed", "4", "--save-data", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    meta = json.loads((tmp_path / "actmax_conv2_channel.json").read_text())
    assert set(meta) == {"layer", "objective", "simple", "steps", "size", "seed", "channels",
                         "precision", "values"}  # fmt: skip
    assert (meta["layer"], meta["steps"], meta["size"], meta["channels"]) == (
        "conv2",
        3,
        28,
        [0, 1, 2],
    )
    run = load_run(trained_run)
    ref = activation_maximization(
        run.model, "conv2", [0, 1, 2], size=28, steps=3, mean=run.data.mean, std=run.data.std,
        in_channels=1, seed=4,
    )  # fmt: skip
    np.testing.assert_array_equal(
        np.load(tmp_path / "actmax_conv2_channel.npy"), ref.images.numpy()
    )
    assert meta["values"] == [float(x) for x in ref.values]
