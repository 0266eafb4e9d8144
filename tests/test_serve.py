"""`convlens serve`'s HTTP API on a trained LeNet-5 run, with FastAPI's TestClient.

Oracles: the run's own weights and torch (predictions, the first layer's filters and maxima), the
receptive-field arithmetic worked by hand, a NumPy brute-force nearest-neighbour search in pixels,
pytorch-grad-cam's Grad-CAM, the conv arithmetic formula of the notes, Pillow's own decoding.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from convlens import load_run
from convlens.serve import create_app, from_run_dir

NAME = "lenet5-sample"


@pytest.fixture(scope="module")
def served_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run under the folder name the tests use (a folder of runs with one run)."""
    folder = tmp_path_factory.mktemp("runs")
    (folder / NAME).symlink_to(trained_run, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def client(served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(
        [from_run_dir(served_run / NAME)],
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_upload_bytes=200_000,
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def run(trained_run: Path) -> Any:
    r = load_run(trained_run)
    return r, r.load_data("test")


def api(path: str) -> str:
    return f"/api/subjects/{NAME}{path}"


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def png_bytes(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[0].numpy()).save(buf, format="PNG")
    return buf.getvalue()


def wait(client: TestClient, job: dict[str, Any]) -> dict[str, Any]:
    """Follow a job's server-sent events to the end; return the finished job with its result."""
    if job["status"] not in ("done", "error"):
        with client.stream("GET", f"/api/jobs/{job['id']}/events") as s:
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1]["status"] in ("done", "error")
        done = [e["done"] for e in events]
        assert done == sorted(done)  # progress only moves forward
    return dict(client.get(f"/api/jobs/{job['id']}").json())


# --------------------------------------------------------------------------------------------------
# What the views ask for
# --------------------------------------------------------------------------------------------------


def test_subjects_and_network(client: TestClient) -> None:
    (info,) = client.get("/api/subjects").json()
    assert info["name"] == NAME and info["model"] == "lenet5" and info["input"] == [1, 28, 28]
    net = client.get(api("/network")).json()
    rows = {r["name"]: r for r in net["layers"]}
    # LeNet-5's C1: 6 filters of 5x5 on one channel, 6 x (25 + 1) = 156 parameters (LeCun et al.),
    # every one of the 6 x 28 x 28 neurons with its own 26 without sharing.
    assert rows["conv1"]["params"] == 156
    assert rows["conv1"]["params_unshared"] == 6 * 28 * 28 * 26
    assert rows["conv2"]["rf"]["size"] == [14, 14]


def test_predict_matches_the_model(client: TestClient, run: Any) -> None:
    model, data = run
    r = client.post(api("/predict"), json={"image": "test:7"}).json()
    with torch.inference_mode():
        probs = model.model(model.normalize(data.images[7:8])).softmax(1)[0]
    p, i = probs.topk(5)
    assert [t["index"] for t in r["top"]] == i.tolist()
    np.testing.assert_allclose([t["p"] for t in r["top"]], p.numpy(), rtol=1e-5, atol=1e-6)
    assert [t["name"] for t in r["top"]] == [data.classes[k] for k in i.tolist()]
    assert r["predicted"] == int(i[0]) and r["label"] == int(data.labels[7])
    assert r["wrong"] == (int(i[0]) != int(data.labels[7]))
    layers = {layer["name"]: layer for layer in r["layers"]}
    assert list(layers) == ["conv1", "pool1", "conv2", "pool2", "conv3", "output"]
    with torch.inference_mode():
        c1 = model.model.conv1(model.normalize(data.images[7:8]))[0]
    assert layers["conv1"]["min"] == pytest.approx(float(c1.min()), abs=1e-5)
    assert layers["conv1"]["max"] == pytest.approx(float(c1.max()), abs=1e-5)
    conv1 = layers["conv1"]
    atlas = decode(conv1["png"])  # 6 channels of 28 x 28 tiled 3 x 2
    assert atlas.shape == (conv1["rows"] * 28, conv1["cols"] * 28)
    np.testing.assert_array_equal(decode(r["input"]), data.images[7, 0].numpy())


def test_upload_then_predict_equals_the_test_image(client: TestClient, run: Any) -> None:
    _, data = run
    up = client.post(api("/uploads"), files={"file": ("x.png", png_bytes(data.images[3]))})
    assert up.status_code == 200, up.text
    image = up.json()["image"]
    assert image.startswith("upload:")
    a = client.post(api("/predict"), json={"image": image}).json()
    b = client.post(api("/predict"), json={"image": "test:3"}).json()
    assert a["top"] == b["top"]


def test_upload_of_a_large_rgba_photo_is_converted(client: TestClient) -> None:
    rgba = Image.new("RGBA", (300, 200), (255, 255, 255, 0))
    rgba.paste((255, 255, 255, 255), (100, 50, 200, 150))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    up = client.post(api("/uploads"), files={"file": ("p.png", buf.getvalue())}).json()
    assert up["shape"] == [1, 28, 28]
    r = client.post(api("/predict"), json={"image": up["image"]}).json()
    img = decode(r["input"])
    assert img[0, 0] == 0 and img[14, 14] == 255  # transparent -> black, the square white


def test_grad_cam_matches_pytorch_grad_cam(client: TestClient, run: Any) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, data = run
    r = client.post(
        api("/attribution"),
        json={"image": "test:5", "method": "gradcam", "target": 2, "layer": "conv2"},
    ).json()
    rgba = decode(r["overlay"]).astype(np.float64)
    assert rgba.shape == (28, 28, 4)
    ours = (rgba[..., 3] / 255 - 0.15) / 0.7  # the overlay's alpha carries the normalised map
    with GradCAM(model=model.model, target_layers=[model.model.conv2]) as cam:
        theirs = cam(model.normalize(data.images[5:6]), targets=[ClassifierOutputTarget(2)])[0]
    np.testing.assert_allclose(ours, theirs, atol=0.03)


@pytest.mark.parametrize("method", ["guided_gradcam", "saliency"])
def test_other_attributions_answer_an_overlay(client: TestClient, method: str) -> None:
    r = client.post(api("/attribution"), json={"image": "test:1", "method": method})
    assert r.status_code == 200, r.text
    assert decode(r.json()["overlay"]).shape[:2] == (28, 28)


def test_unit_receptive_field_by_hand(client: TestClient) -> None:
    # conv1 5x5 padding 2, pool 2x2 stride 2, conv2 5x5: 14 x 14 pixels, jump 2, unit (0, 0)'s
    # unit (r, c) sees rows 2r - 2 .. 2r + 11 and columns 2c - 2 .. 2c + 11.
    r = client.get(api("/rf"), params={"layer": "conv2", "row": 4, "col": 1}).json()
    assert r["box"] == [2 * 4 - 2, 2 * 1 - 2, 2 * 4 + 12, 2 * 1 + 12]
    erf = decode(r["erf"]["map"])
    assert erf.shape == (28, 28, 4)
    assert 0 < r["erf"]["radius"] <= 14


def test_layer_grid_job_progress_cache_and_values(client: TestClient, run: Any) -> None:
    model, data = run
    params = {"layer": "conv1", "steps": 8, "patches": 3, "limit": 200}
    job = client.post(api("/jobs/layer"), json=params).json()
    done = wait(client, job)
    assert done["status"] == "done", done["error"]
    channels = done["result"]["channels"]
    assert [c["channel"] for c in channels] == list(range(6))
    weights = model.model.conv1.weight.detach()
    for c in channels:
        w = weights[c["channel"], 0].numpy()
        expect = np.round((w - w.min()) / (w.max() - w.min()) * 255)
        np.testing.assert_allclose(decode(c["filter"]), expect, atol=1)
        assert decode(c["actmax"]).shape == (28, 28)
        assert len(c["patches"]) == 3
        for p in c["patches"]:  # one 5 x 5 PNG per patch, with its image, label and box
            assert decode(p["png"]).shape == (5, 5)
            assert p["label_name"] == data.classes[int(data.labels[p["image_index"]])]
            t, left, b, r = p["box"]
            assert 0 <= t < b <= 28 and 0 <= left < r <= 28
    # The best patch's value is the channel's maximum over the 200 images, by a plain forward pass.
    idx = torch.linspace(0, len(data) - 1, 200).round().long()
    with torch.inference_mode():
        maxima = model.model.conv1(model.normalize(data.images[idx])).amax(dim=(0, 2, 3))
    np.testing.assert_allclose([c["top_value"] for c in channels], maxima.numpy(), rtol=1e-4)
    again = client.post(api("/jobs/layer"), json=params).json()
    assert again["status"] == "done" and again["message"] == "cached"
    assert client.get(f"/api/jobs/{again['id']}").json()["result"] == done["result"]


def test_occlusion_job(client: TestClient) -> None:
    job = client.post(api("/jobs/occlusion"), json={"image": "test:2", "window": 6, "stride": 3})
    done = wait(client, job.json())
    assert done["status"] == "done", done["error"]
    assert decode(done["result"]["overlay"]).shape == (28, 28, 4)


def test_embedding_neighbours_and_projector(client: TestClient, run: Any) -> None:
    model, data = run
    done = wait(client, client.post(api("/jobs/embedding"), json={"limit": 120}).json())
    assert done["status"] == "done", done["error"]
    m = done["result"]
    assert len(m["x"]) == len(m["y"]) == len(m["indices"]) == 120
    assert m["labels"] == data.labels[m["indices"]].tolist()
    assert np.isfinite(m["x"]).all()

    nb = client.get(api("/neighbors"), params={"index": 11, "k": 4}).json()
    pixels = data.images.reshape(len(data), -1).double()
    dist = ((pixels - pixels[11]) ** 2).sum(1)
    dist[11] = float("inf")
    assert nb["pixel"] == dist.argsort()[:4].tolist()  # brute force in pixel space
    assert len(nb["feature"]) == 4 and 11 not in nb["feature"]
    np.testing.assert_allclose(
        nb["pixel_distances"], (dist.sqrt() / 255)[nb["pixel"]].numpy(), rtol=1e-5
    )
    assert nb["pixel_labels"] == [data.classes[int(data.labels[i])] for i in nb["pixel"]]

    z = zipfile.ZipFile(io.BytesIO(client.get(api("/projector.zip"), params={"limit": 50}).content))
    tensors = np.loadtxt(io.StringIO(z.read("tensors.tsv").decode()), delimiter="\t")
    meta = z.read("metadata.tsv").decode().splitlines()
    idx = torch.linspace(0, len(data) - 1, 50).round().long()
    with torch.inference_mode():
        feats = model.model.forward_features(model.normalize(data.images[idx]))
    np.testing.assert_allclose(tensors, feats.numpy(), rtol=1e-4, atol=1e-5)
    assert meta == [data.classes[int(y)] for y in data.labels[idx]]
    assert json.loads(z.read("projector_config.json"))["embeddings"][0]["tensorShape"] == [50, 84]


@pytest.mark.parametrize(
    ("w", "k", "s", "p", "f", "d"),
    [(7, 3, 2, 1, 2, 3), (227, 11, 4, 0, 96, 3), (32, 5, 1, 2, 6, 1)],
)
def test_arithmetic_matches_the_formula(
    client: TestClient, w: int, k: int, s: int, p: int, f: int, d: int
) -> None:
    r = client.get(
        "/api/explain/conv",
        params={"size": w, "kernel": k, "stride": s, "padding": p, "filters": f, "depth": d},
    ).json()
    out = (w - k + 2 * p) // s + 1
    assert r["output_shape"] == [f, out, out]
    assert r["neurons"] == f * out * out
    assert r["params"] == f * (k * k * d + 1)
    assert r["params_unshared"] == f * out * out * (k * k * d + 1)
    assert any("Output size" in line for line in r["lines"])


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    for path in ["/static/app.js", "/static/views/image.js", "/static/style.css"]:
        assert client.get(path).status_code == 200, path
    assert "http://" not in client.get("/static/style.css").text  # no external font or CDN


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def test_cli_prints_the_loopback_url_and_opens_nothing(
    served_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import webbrowser

    import uvicorn

    from convlens.cli.main import main

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: calls.append((host, port)))
    monkeypatch.setattr(webbrowser, "open", lambda url: pytest.fail(f"opened {url}"))
    code = main(["serve", str(served_run), "--port", "8123", "--cache-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code in (0, None)
    assert "http://127.0.0.1:8123/" in out
    assert "warning" not in err
    assert calls == [("127.0.0.1", 8123)]

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    main(
        [
            "serve",
            str(served_run / NAME),
            "--host",
            "0.0.0.0",
            "--open",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    out, err = capsys.readouterr()
    assert "warning" in err and "0.0.0.0" in err
    assert opened == ["http://127.0.0.1:8000/"]


@pytest.mark.parametrize("args", [["serve"], ["serve", "/no/such/folder"], ["serve", "."]])
def test_cli_errors_are_one_line(
    args: list[str], capsys: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from convlens.cli.main import main

    monkeypatch.chdir(tmp_path)
    code = main(args)
    _, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in err and err.strip().count("\n") <= 1, err


# --------------------------------------------------------------------------------------------------
# The data flow the network view draws its branches from
# --------------------------------------------------------------------------------------------------


def test_layer_graph_of_torchvision_resnet18_and_googlenet() -> None:
    import torchvision

    import convlens
    from convlens.anatomy.graph import layer_graph

    g = layer_graph(torchvision.models.resnet18())
    assert g is not None
    # torchvision's BasicBlock: out = bn2(...) + identity, identity the block's input (or downsample).
    assert g["add"] == ["layer1.0.bn2", "maxpool"]
    assert g["add_1"] == ["layer1.1.bn2", "layer1.0.relu (2)"]  # the shared ReLU's second call
    assert g["add_2"] == ["layer2.0.bn2", "layer2.0.downsample.1"]
    assert g["layer2.0.downsample.0"] == ["layer1.1.relu (2)"]
    assert g["fc"] == ["avgpool"]  # torch.flatten is passed through
    rows = convlens.summary(torchvision.models.resnet18(), (3, 64, 64)).layers
    summary_labels = {row.label for row in rows}
    assert {k for k in g if k != "input" and not k.startswith("add")} <= summary_labels

    g = layer_graph(torchvision.models.googlenet(init_weights=False, aux_logits=False))
    assert g is not None
    # Inception 3a: four branches from maxpool2, concatenated.
    assert g["cat"] == [
        "inception3a.branch1.bn",
        "inception3a.branch2.1.bn",
        "inception3a.branch3.1.bn",
        "inception3a.branch4.1.bn",
    ]


def test_layer_graph_of_an_untraceable_model_is_none() -> None:
    from convlens import models
    from convlens.anatomy.graph import layer_graph

    assert layer_graph(models.create("lenet5")) is None  # checks its input size with an `if`


def test_cli_model_option_goes_through_open_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import uvicorn

    from convlens import models, subjects
    from convlens.cli.main import main

    seen: dict[str, Any] = {}

    def fake_open_subject(spec: str, **options: Any) -> Any:
        seen.update(spec=spec, **options)
        return subjects.subject(
            models.create("lenet5", in_channels=1), input_size=(1, 28, 28), name=spec
        )

    apps: list[Any] = []
    monkeypatch.setattr(subjects, "open_subject", fake_open_subject, raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    code = main(
        [
            "serve",
            "--model",
            "my_net.py:build",
            "--weights",
            "w.safetensors",
            "--images",
            "photos",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    assert code in (0, None), capsys.readouterr().err
    assert seen == {
        "spec": "my_net.py:build",
        "weights": "w.safetensors",
        "images": "photos",
        "classes": None,
        "data_dir": None,
    }
    with TestClient(apps[0]) as c:
        (info,) = c.get("/api/subjects").json()
        assert info["name"] == "my_net.py:build" and info["images"] == 0
        assert c.get(f"/api/subjects/{info['name']}/network").status_code == 200
