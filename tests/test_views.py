"""The views: one computation behind the CLI, the report and the web app.

Oracles: torch's arg-max of the logits and a float64 log-sum-exp written out with ``math`` (predictions
where a float32 softmax underflows or ties), a plain forward pass of the layer (top patches),
pytorch-grad-cam (Grad-CAM), the module's own hyper-parameters and the receptive-field arithmetic
worked by hand (network and unit fields). The three faces are then asked for the same subject, images
and options, and must agree with each other and with those oracles.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens import views
from convlens.subjects import subject


class FixedLogits(nn.Module):
    """A conv net whose logits are `logits` whatever the input (the conv's output is multiplied by 0)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.register_buffer("logits", torch.tensor([logits], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1) + 0 * self.conv(x).mean((1, 2, 3))[:, None]


def _oracle_probs(logits: list[float]) -> list[float]:
    """Softmax in float64 through log-sum-exp, written with ``math`` (no torch)."""
    m = max(logits)
    lse = m + math.log(sum(math.exp(v - m) for v in logits))
    return [math.exp(v - lse) for v in logits]


def test_predictions_come_from_the_logits_where_float32_softmax_underflows() -> None:
    logits = [-1000.0, -340.0, -250.0, -200.0, -200.5]  # every logit far below 0
    s = subject(FixedLogits(logits), input_size=(1, 8, 8))
    p = views.prediction_view(s, torch.zeros(1, 8, 8, dtype=torch.uint8), label=0)
    oracle = _oracle_probs(logits)
    order = sorted(range(5), key=lambda i: -logits[i])
    assert [c.index for c in p.top] == order
    assert p.predicted == int(torch.tensor(logits).argmax())
    np.testing.assert_allclose(
        [c.probability for c in p.top], [oracle[i] for i in order], rtol=1e-12
    )
    # Class 1, e^-140 below the best: float32's softmax rounds it to 0, float64 keeps every digit.
    assert float(torch.softmax(torch.tensor([logits]), 1)[0, 1]) == 0.0 < oracle[1]
    assert p.top[3].index == 1 and p.top[3].probability == pytest.approx(oracle[1], rel=1e-12)
    assert p.label == 0 and p.label_name == "0" and p.wrong is True


def test_predicted_class_is_the_argmax_of_the_logits_when_float32_softmax_ties() -> None:
    logits = [0.0, 2e-8, -1.0]
    assert torch.softmax(torch.tensor([logits]), 1).argmax(1).item() == 0  # the bug: a tie
    s = subject(FixedLogits(logits), input_size=(1, 8, 8))
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    batch = views.predictions_view(s, images)
    assert batch.predicted.tolist() == [int(torch.tensor(logits).argmax())] * 3 == [1, 1, 1]
    a = views.attribution_view(s, images[0], "saliency")
    assert a.targets.tolist() == [1]  # attributions explain the same class


def test_network_view_rows_blocks_and_unit_fields(resnet20_bn: nn.Module) -> None:
    from convlens import models

    lenet = subject(models.create("lenet5", num_classes=10, in_channels=1), input_size=(1, 28, 28))
    net = views.network_view(lenet)
    rows = {r["name"]: r for r in net.rows}
    conv1 = lenet.model.get_submodule("conv1")
    assert rows["conv1"]["kernel"] == list(conv1.kernel_size) == [5, 5]
    assert rows["conv1"]["padding"] == [2, 2] and rows["conv1"]["groups"] == 1
    assert net.default_layer == "conv2" and net.defaults["layer"] == "conv2"
    # conv1 5x5 padding 2, pool 2 stride 2, conv2 5x5: unit (r, c) sees rows 2r - 2 .. 2r + 11.
    u = views.unit_fields_view(lenet, "conv2", 0, 3, erf=False)
    assert u.box == (-2, 4, 12, 18) and u.clipped_box == (0, 4, 12, 18) and not u.covers_image
    res = views.network_view(subject(resnet20_bn, input_size=(3, 32, 32)))
    blocks = {b.name: b for b in res.blocks}
    assert blocks["layer1.0"].type == "BasicBlock"
    assert {"layer1.0.conv1", "layer1.0.conv2"} <= set(blocks["layer1.0"].layers)
    assert set(blocks["layer1.0"].layers) <= set(blocks["layer1"].layers)
    deep = views.unit_fields_view(
        subject(resnet20_bn, input_size=(3, 32, 32)), None, 4, 4, erf=False
    )
    assert deep.layer == "layer3.2.conv2" and deep.covers_image  # an 81-pixel field on 32 x 32


# --------------------------------------------------------------------------------------------------
# The three faces on one subject
# --------------------------------------------------------------------------------------------------

N_IMAGES = 12
N_EXPLAINED = 4  # the CLI explains the first four images by default


@pytest.fixture(scope="module")
def image_folder(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first test images of the run, as grey 28 x 28 PNG files in one (unlabelled) folder."""
    from convlens import load_run

    data = load_run(trained_run).load_data("test")
    folder = tmp_path_factory.mktemp("images")
    for i in range(N_IMAGES):
        Image.fromarray(data.images[i, 0].numpy(), mode="L").save(folder / f"img_{i:02d}.png")
    return folder


def _decode(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


@pytest.mark.slow
def test_cli_report_and_web_app_agree(
    trained_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from convlens.cli.main import main
    from convlens.render.report import ReportOptions, build_report, report_context
    from convlens.render.report_sections import SECTIONS
    from convlens.serve import create_app, from_subject
    from convlens.subjects import open_subject

    sub = open_subject(str(trained_run), images=image_folder)
    images = sub.data().images  # (12, 1, 28, 28) uint8, the folder's files in order
    model = sub.model

    # Oracles, from torch and pytorch-grad-cam, not from convlens.
    with torch.inference_mode():
        logits = model(sub.normalize(images))
    argmax = logits.argmax(1)
    acts: list[torch.Tensor] = []
    hook = model.get_submodule("conv2").register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.inference_mode():
        model(sub.normalize(images))
    hook.remove()
    best = acts[0].amax((2, 3))  # (12, 16) each image's maximum per channel
    with GradCAM(model=model, target_layers=[model.get_submodule("conv2")]) as cam:
        x = sub.normalize(images[:N_EXPLAINED])
        targets = [ClassifierOutputTarget(int(t)) for t in argmax[:N_EXPLAINED]]
        grad_cam = torch.from_numpy(cam(x, targets=targets))  # (4, 28, 28)

    # CLI: JSON beside the figures.
    t0 = time.perf_counter()
    out = tmp_path / "cli"
    common = ["--images", str(image_folder), "--save-data", "--out", str(out)]
    assert main(["visualize", str(trained_run), "gradcam", *common]) == 0
    assert (
        main(["visualize", str(trained_run), "top-patches", "--count", "2", "--k", "3", *common])
        == 0
    )
    cli_cam = json.loads((out / "gradcam.json").read_text())
    cli_maps = torch.from_numpy(np.load(out / "gradcam.npy"))
    cli_top = json.loads((out / "top_patches_conv2.json").read_text())

    # Report: the views each section drew.
    options = ReportOptions(attribution_images=N_EXPLAINED, top_channels=2, top_images=3)
    wanted = [s for s in SECTIONS if s.id in ("attribution", "top-patches")]
    rep = build_report(report_context(sub, options=options), sections=wanted, strict=True)
    rep_attr = rep.outcome("attribution").views
    rep_cam = rep_attr["The first images"]["gradcam"]
    rep_top = rep.outcome("top-patches").views["layer"]

    # Web app: JSON over HTTP.
    app = create_app([from_subject(sub, name="s")], cache_dir=tmp_path / "cache")
    with TestClient(app, raise_server_exceptions=False) as client:
        info = client.get("/api/subjects/s").json()
        web_pred = [
            client.post("/api/subjects/s/predict", json={"image": f"test:{i}"}).json()
            for i in range(N_EXPLAINED)
        ]
        web_cam = [
            client.post(
                "/api/subjects/s/attribution", json={"image": f"test:{i}", "method": "gradcam"}
            ).json()
            for i in range(N_EXPLAINED)
        ]
        layer = info["defaults"]["layer"]
        job = client.post(
            "/api/subjects/s/jobs/layer",
            json={"layer": layer, "count": 2, "patches": 3, "steps": 1},
        ).json()
        for _ in range(600):
            job = client.get(f"/api/jobs/{job['id']}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert job["status"] == "done", job.get("error")
        web_top = job["result"]
    print(f"three faces in {time.perf_counter() - t0:.1f} s")

    # The layer: LeNet-5's default (C3, conv2) everywhere.
    assert cli_cam["layer"] == rep_cam.layer == layer == web_cam[0]["layer"] == "conv2"
    assert cli_top["layer"] == rep_top.layer == web_top["layer"] == "conv2"

    # Predictions: torch's arg-max of the logits, everywhere.
    expect = argmax[:N_EXPLAINED].tolist()
    assert [im["predicted"] for im in cli_cam["images"]] == expect
    assert [im["target"] for im in cli_cam["images"]] == expect
    assert rep_attr["predictions"].predicted[:N_EXPLAINED].tolist() == expect
    assert rep_cam.targets.tolist() == expect
    assert [p["predicted"] for p in web_pred] == [p["top"][0]["index"] for p in web_pred] == expect
    assert [a["target"] for a in web_cam] == expect
    probs = torch.log_softmax(logits.double(), 1).exp()
    for i in range(N_EXPLAINED):
        p = float(probs[i, expect[i]])  # a batch of 12 and of 1 round float32 differently
        assert cli_cam["images"][i]["top"][0]["p"] == pytest.approx(p, rel=1e-6)
        assert web_pred[i]["top"][0]["p"] == pytest.approx(p, rel=1e-6)
        assert float(rep_attr["predictions"].confidence[i]) == pytest.approx(p, rel=1e-6)
        assert cli_cam["images"][i]["top"] == web_pred[i]["top"]  # one image, one forward

    # Top patches: channels 0 and 1 of conv2 over the 12 images, against a plain forward pass.
    for c in range(2):
        top = best[:, c].topk(3)
        np.testing.assert_allclose(cli_top["values"][c], top.values.numpy(), rtol=1e-5)
        assert cli_top["indices"][c] == top.indices.tolist()
        assert [p.image_index for p in rep_top.patches[c]] == top.indices.tolist()
        np.testing.assert_allclose(rep_top.values[c].numpy(), top.values.numpy(), rtol=1e-5)
        web_patches = web_top["channels"][c]["patches"]
        assert [p["image_index"] for p in web_patches] == top.indices.tolist()
        np.testing.assert_allclose([p["value"] for p in web_patches], top.values.numpy(), rtol=1e-5)
        assert [p["box"] for p in web_patches] == cli_top["clipped_boxes"][c]

    # Attribution: the same Grad-CAM maps, equal to pytorch-grad-cam's.
    np.testing.assert_allclose(cli_maps.numpy(), rep_cam.maps.numpy(), atol=1e-6)
    for i in range(N_EXPLAINED):
        m = cli_maps[i].numpy()
        scaled = (m - m.min()) / max(m.max() - m.min(), 1e-12)  # pytorch-grad-cam's min-max scale
        np.testing.assert_allclose(scaled, grad_cam[i].numpy(), atol=1e-3)
        alpha = _decode(web_cam[i]["overlay"])[..., 3].astype(np.float64)
        web = (alpha / 255 - 0.15) / 0.7  # the overlay's alpha carries the normalised map
        np.testing.assert_allclose(web, scaled, atol=0.03)


def test_an_upload_is_resized_and_cropped_as_a_file_is(tmp_path: Path) -> None:
    """One resize-and-crop rule: the web app's upload path equals `load_image` on the same file,
    and both equal torchvision's Resize(20) + CenterCrop(16) of the decoded picture."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from torchvision.transforms import v2

    from convlens.serve import create_app, from_subject
    from convlens.subjects import Preprocess, load_image

    pre = Preprocess(channels=3, size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, resize=20)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    s = subject(net, preprocess=pre)
    path = tmp_path / "wide.png"
    pixels = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    from_file, _ = load_image(path, pre)  # (3, 16, 16)
    crop = v2.Compose([v2.Resize(20, antialias=True), v2.CenterCrop(16)])
    tv = crop(torch.from_numpy(pixels).permute(2, 0, 1))
    assert (from_file.int() - tv.int()).abs().max() <= 1  # Pillow's and torchvision's rounding
    app = create_app([from_subject(s, name="s")], cache_dir=tmp_path / "cache")
    with TestClient(app, raise_server_exceptions=False) as client:
        up = client.post("/api/subjects/s/uploads", files={"file": ("w.png", path.read_bytes())})
        assert up.status_code == 200, up.text
        r = client.post("/api/subjects/s/predict", json={"image": up.json()["image"]}).json()
    np.testing.assert_array_equal(_decode(r["input"]), from_file.permute(1, 2, 0).numpy())
    assert r["top"] == views.prediction_view(s, from_file).to_dict()["top"]
    assert r["label"] is None and r["wrong"] is None


class BruteForceIndex:
    """What :class:`convlens.index.Index` answers, computed by brute force with plain torch/NumPy."""

    def __init__(self, s: Any, layer: str, k: int) -> None:
        ds = s.data()
        self.n, self.layers, self._images = len(ds), [layer], ds.images
        labelled = ds.extra.get("labelled", True)  # an index marks unlabelled images -1
        self.labels = (ds.labels if labelled else torch.full_like(ds.labels, -1)).numpy()
        out: list[torch.Tensor] = []
        hook = s.model.get_submodule(layer).register_forward_hook(lambda m, i, o: out.append(o))
        with torch.inference_mode():
            logits = s.model(s.normalize(ds.images))
        hook.remove()
        order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :5]
        self.top_classes = order.numpy()
        self.top_probs = logits.softmax(1).gather(1, order).numpy()
        a = out[0]  # (N, C, H, W)
        self._map = tuple(a.shape[2:])
        flat = a.flatten(2)  # (N, C, HW)
        best, arg = flat.max(2)  # (N, C)
        v, i = best.T.topk(k, dim=1)  # (C, k)
        pos = arg.T.gather(1, i)  # (C, k) flat positions
        w = self._map[1]
        self._units = (v.numpy(), i.numpy(), torch.stack([pos // w, pos % w], -1).numpy())

    def map_size(self, layer: str) -> tuple[int, int]:
        return self._map  # type: ignore[return-value]

    def units(self, layer: str) -> Any:
        values, images, positions = self._units
        return type("U", (), {"values": values, "images": images, "positions": positions})()

    def neighbours(self, query: Any, k: int = 10, metric: str = "cosine") -> Any:
        raise NotImplementedError

    def embedding(self, limit: int = 50_000, seed: int = 0) -> Any:
        raise NotImplementedError

    def image(self, i: int) -> torch.Tensor:
        return self._images[i]


def test_layer_and_predictions_read_from_an_index(trained_run: Path, image_folder: Path) -> None:
    from convlens.subjects import open_subject

    sub = open_subject(str(trained_run), images=image_folder)
    index = BruteForceIndex(sub, "conv2", k=4)
    from_index = views.layer_view(
        sub, "conv2", channels=[0, 5], patches=3, parts=["patches"], index=index
    )
    computed = views.layer_view(sub, "conv2", channels=[0, 5], patches=3, parts=["patches"])
    assert from_index.source == "index" and computed.source == "images"
    assert from_index.patches == computed.patches  # same images, values, positions and boxes
    assert torch.equal(from_index.crops, computed.crops)
    p = views.prediction_view(sub, sub.data().images[2], image_index=2, index=index)
    assert p.source == "index" and p.predicted == int(index.top_classes[2, 0])


def test_views_read_the_real_index_as_they_compute(
    trained_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    """A :class:`convlens.index.Index` built over the folder gives the views the patches, the
    predictions and the neighbours that they compute from the images themselves."""
    from convlens.index import build_index
    from convlens.render.report import ReportOptions, build_report, report_context
    from convlens.render.report_sections import SECTIONS
    from convlens.subjects import open_subject

    sub = open_subject(str(trained_run), images=image_folder)
    index = build_index(sub, layers=["conv2"], k=4, cache_dir=tmp_path, progress=False)
    kw: dict[str, Any] = {"channels": [1, 7], "patches": 3, "parts": ["patches"]}
    from_index = views.layer_view(sub, "conv2", index=index, **kw)
    computed = views.layer_view(sub, "conv2", **kw)
    assert from_index.source == "index" and from_index.patches == computed.patches
    images = sub.data().images
    preds = views.predictions_view(
        sub, images, image_indices=torch.arange(len(images)), index=index
    )
    with torch.inference_mode():
        argmax = sub.model(sub.normalize(images)).argmax(1)
    assert torch.equal(preds.predicted, argmax)
    nb_index = views.neighbours_view(sub, 5, k=3, index=index)
    nb = views.neighbours_view(sub, 5, k=3)
    assert nb_index.source == "index"
    assert [n.image_index for n in nb_index.feature[0]] == [n.image_index for n in nb.feature[0]]
    options = ReportOptions(top_channels=2, top_images=3)
    wanted = [s for s in SECTIONS if s.id == "top-patches"]
    rep = build_report(report_context(sub, options=options, index=index), sections=wanted)
    assert rep.outcome("top-patches").views["layer"].source == "index"
    assert "(the index)" in rep.outcome("top-patches").body
