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
from convlens.serve import create_app, from_run_dir, run_dirs

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
        assert events[-1]["status"] in ("done", "error", "cancelled")
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


def test_attribution_colour_bar_range_is_captums_saliency(client: TestClient, run: Any) -> None:
    """The saliency overlay's colour bar spans the map's min and max: |gradient| max over channels,
    as Captum's Saliency computes it for the predicted class."""
    from captum.attr import Saliency

    model, data = run
    r = client.post(api("/attribution"), json={"image": "test:3", "method": "saliency"}).json()
    x = model.normalize(data.images[3:4]).requires_grad_()
    target = int(model.model(x).argmax())
    theirs = Saliency(model.model).attribute(x, target=target, abs=True).amax(1)[0]  # (H, W)
    assert r["target"] == target
    np.testing.assert_allclose([r["min"], r["max"]], [theirs.min(), theirs.max()], rtol=1e-5)


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


def test_layer_grid_in_two_parts_equals_the_whole(client: TestClient) -> None:
    """The page asks for filters and patches first, then the synthesised images: together they are
    the whole grid, and a deeper layer never sends its filters as pictures."""
    base = {"layer": "conv1", "steps": 8, "patches": 3, "limit": 200}
    whole = wait(client, client.post(api("/jobs/layer"), json=base).json())["result"]
    quick = wait(
        client,
        client.post(api("/jobs/layer"), json={**base, "parts": ["filters", "patches"]}).json(),
    )
    slow = wait(client, client.post(api("/jobs/layer"), json={**base, "parts": ["actmax"]}).json())
    for w, q, s in zip(
        whole["channels"], quick["result"]["channels"], slow["result"]["channels"], strict=True
    ):
        assert "actmax" not in q and "patches" not in s and "filter" not in s
        assert q["filter"] == w["filter"] and q["patches"] == w["patches"]
        assert s["actmax"] == w["actmax"]
    deep = wait(
        client,
        client.post(
            api("/jobs/layer"),
            json={"layer": "conv2", "count": 2, "parts": ["filters", "patches"], "limit": 50},
        ).json(),
    )
    assert all("filter" not in c and len(c["patches"]) > 0 for c in deep["result"]["channels"])
    bad = client.post(api("/jobs/layer"), json={**base, "parts": ["pixels"]})
    assert bad.status_code == 422


def test_layer_grid_objective(client: TestClient, run: Any) -> None:
    """The layer page's objective choice reaches the synthesis; left out, the method's rule picks the
    centre neuron of the affine first layer. The value reported is the network's own on the image."""
    model, _ = run
    base = {"count": 2, "steps": 4, "parts": ["actmax"]}
    auto = wait(client, client.post(api("/jobs/layer"), json={**base, "layer": "conv1"}).json())
    assert auto["result"]["objective"] == "neuron"
    for objective in ("channel", "neuron"):
        job = client.post(
            api("/jobs/layer"), json={**base, "layer": "conv2", "objective": objective}
        )
        res = wait(client, job.json())["result"]
        assert res["objective"] == objective
        for c in res["channels"]:
            img = torch.from_numpy(decode(c["actmax"]).astype(np.uint8))[
                None, None
            ]  # (1, 1, 28, 28)
            net = model.model
            with torch.inference_mode():
                a = net.conv2(net.pool1(net.act1(net.conv1(model.normalize(img)))))
            a = a[0, c["channel"]]  # (h, w)
            value = a.mean() if objective == "channel" else a[a.shape[0] // 2, a.shape[1] // 2]
            # the PNG rounds the image to 8 bits: the value agrees to that precision
            assert abs(float(value) - c["actmax_value"]) < 0.05 * (1 + abs(c["actmax_value"]))
    bad = client.post(api("/jobs/layer"), json={**base, "layer": "conv2", "objective": "pixel"})
    assert bad.status_code == 422


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


def _no_server(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, int]]:
    """Stop `convlens serve` at the point it would start uvicorn; record (app, bound port)."""
    from convlens.cli import serve_cmds

    calls: list[tuple[Any, int]] = []
    monkeypatch.setattr(
        serve_cmds, "run_server", lambda app, sock: calls.append((app, sock.getsockname()[1]))
    )
    return calls


def test_cli_prints_the_loopback_url_and_opens_nothing(
    served_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import webbrowser

    from convlens.cli.main import main

    calls = _no_server(monkeypatch)
    monkeypatch.setattr(webbrowser, "open", lambda url: pytest.fail(f"opened {url}"))
    # --port 0: the system picks a free port, and the URL names that port, not 0.
    code = main(["serve", str(served_run), "--port", "0", "--cache-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code in (0, None)
    assert len(calls) == 1 and calls[0][1] > 0
    assert f"http://127.0.0.1:{calls[0][1]}/" in out
    assert "warning" not in err

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    main(
        [
            "serve",
            str(served_run / NAME),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--open",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    out, err = capsys.readouterr()
    assert "warning" in err and "0.0.0.0" in err
    assert opened == [f"http://127.0.0.1:{calls[1][1]}/"]


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
    from convlens import models, subjects
    from convlens.cli.main import main

    seen: dict[str, Any] = {}

    def fake_open_subject(spec: str, **options: Any) -> Any:
        seen.update(spec=spec, **options)
        return subjects.subject(
            models.create("lenet5", in_channels=1), input_size=(1, 28, 28), name=spec
        )

    calls = _no_server(monkeypatch)
    monkeypatch.setattr(subjects, "open_subject", fake_open_subject, raising=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    code = main(
        [
            "serve",
            "--port",
            "0",
            "--model",
            "my_net.py:build",
            "--weights",
            "w.safetensors",
            "--images",
            str(photos),
            "--cache-dir",
            str(tmp_path),
        ]
    )
    assert code in (0, None), capsys.readouterr().err
    assert seen == {
        "spec": "my_net.py:build",
        "weights": "w.safetensors",
        "images": str(photos),
        "classes": None,
        "data_dir": None,
    }
    with TestClient(calls[0][0]) as c:
        (info,) = c.get("/api/subjects").json()
        assert info["name"] == "my_net.py:build" and info["images"] == 0
        assert c.get(f"/api/subjects/{info['name']}/network").status_code == 200


# --------------------------------------------------------------------------------------------------
# Serving that never hides a good subject; the defaults; cancelling jobs
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_runs(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of runs: one good, one still training, one with a corrupt run.json, one with
    truncated weights, one whose run.json names a model that does not exist."""
    folder = tmp_path_factory.mktemp("mixed")
    (folder / "good").symlink_to(trained_run, target_is_directory=True)
    raw = json.loads((trained_run / "run.json").read_text())
    weights = (trained_run / "model.safetensors").read_bytes()
    for name in ("unfinished", "badjson", "truncated", "nosuchnet"):
        (folder / name).mkdir()
    (folder / "unfinished" / "run.json").write_text(json.dumps({**raw, "status": "running"}))
    (folder / "badjson" / "run.json").write_text('{"format": 1, "model": ')
    (folder / "truncated" / "run.json").write_text(json.dumps(raw))
    (folder / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    other = {**raw, "model": {"name": "nosuchnet", "options": {}}}
    (folder / "nosuchnet" / "run.json").write_text(json.dumps(other))
    (folder / "nosuchnet" / "model.safetensors").write_bytes(weights)
    return folder


def test_bad_runs_are_listed_with_their_reason_and_the_good_one_opens(
    mixed_runs: Path, tmp_path: Path
) -> None:
    app = create_app([from_run_dir(p) for p in run_dirs(mixed_runs)], cache_dir=tmp_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/api/subjects")
        assert r.status_code == 200, r.text
        listed = {s["name"]: s for s in r.json()}
        assert set(listed) == {"good", "unfinished", "badjson", "truncated", "nosuchnet"}
        assert listed["good"]["status"] == "ok" and listed["good"]["reason"] is None
        assert listed["good"]["model"] == "lenet5" and listed["good"]["input"] == [1, 28, 28]
        assert listed["good"]["images"] is None  # the listing loads nothing (from run.json)
        expect = {
            "unfinished": ("unfinished", "has not finished"),
            "badjson": ("broken", "corrupt"),
            "truncated": ("broken", "truncated"),
        }
        for name, (status, words) in expect.items():
            assert listed[name]["status"] == status and words in listed[name]["reason"], name
            e = c.get(f"/api/subjects/{name}/network")
            assert e.status_code == 409 and set(e.json()) == {"error"}
            assert e.json()["error"].startswith(f"{name} cannot be opened: ")
        assert c.get("/api/subjects/good/network").status_code == 200
        assert c.post("/api/subjects/good/predict", json={"image": "test:0"}).status_code == 200
        # Found broken only when loaded: listed ok, then one readable 409, then listed broken.
        assert listed["nosuchnet"]["status"] == "ok"
        e = c.get("/api/subjects/nosuchnet")
        assert e.status_code == 409 and "nosuchnet" in e.json()["error"]
        again = {s["name"]: s for s in c.get("/api/subjects").json()}
        assert again["nosuchnet"]["status"] == "broken"
        assert again["good"]["status"] == "ok" and again["good"]["images"] > 0  # now loaded


def test_subject_info_carries_the_defaults(client: TestClient, run: Any) -> None:
    _, data = run
    r = client.get(api(""))
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["status"] == "ok" and info["images"] == len(data)
    d = info["defaults"]
    # LeNet-5 on 28 x 28: C5 (conv3) has a 1 x 1 map, so the default is C3 (conv2).
    assert d["layer"] == "conv2"
    assert d["conv_layers"] == ["conv1", "conv2", "conv3"]
    # A seventh of 28 px, the stride half of it (as `convlens visualize occlusion` chooses).
    assert d["occlusion_window"] == 4 and d["occlusion_stride"] == 2
    assert d["actmax_size"] == 28 and d["actmax_steps"] >= 1
    assert d["patches"] >= 1 and d["k"] >= 1 and d["images_limit"] >= 1


def test_unit_computation_equals_the_network(client: TestClient, run: Any) -> None:
    model, data = run
    m = model.model
    x = model.normalize(data.images[3:4])
    with torch.no_grad():  # the oracle: LeNet-5's own layers, called one after the other
        c1 = m.conv1(x)
        c3 = m.conv2(m.pool1(m.act1(c1)))
    for layer, out, units in [
        ("conv1", c1, [(0, 0, 0), (5, 13, 20), (2, 27, 1)]),
        ("conv2", c3, [(0, 0, 0), (15, 9, 4)]),
    ]:
        for ch, row, col in units:
            params = {"image": "test:3", "layer": layer, "channel": ch, "row": row, "col": col}
            r = client.get(api("/unit"), params=params)
            assert r.status_code == 200, r.text
            u = r.json()
            want = float(out[0, ch, row, col])
            products = np.array(u["products"])
            scale = max(float(np.abs(products).sum()), 1e-6)
            assert u["network_value"] == pytest.approx(want, rel=1e-6, abs=1e-7)
            assert abs(u["pre_activation"] - want) <= 1e-5 * scale
            assert u["equal"] is True and u["truncated"] is False
            np.testing.assert_allclose(products, np.array(u["patch"]) * np.array(u["kernel"]))
            assert float(products.sum()) + u["bias"] == pytest.approx(u["pre_activation"])
            assert u["activation"] == max(0.0, u["pre_activation"])
            assert u["steps"][-1]["kind"] == "ReLU"
    # conv1 pads by 2: the corner unit's first two rows and columns are padding, and zero.
    u = client.get(
        api("/unit"), params={"image": "test:3", "layer": "conv1", "channel": 0, "row": 0, "col": 0}
    ).json()
    padded = np.array(u["padded"])
    assert padded[:2].all() and padded[:, :2].all() and not padded[2:, 2:].any()
    assert (np.array(u["patch"])[0][padded] == 0).all()
    assert u["first_layer"] is True and u["in_channels"] == [0]


def test_cancel_a_job(client: TestClient) -> None:
    params = {"layer": "conv2", "steps": 1024, "patches": 32, "limit": 100_000}
    job = client.post(api("/jobs/layer"), json=params).json()
    r = client.delete(f"/api/jobs/{job['id']}")
    assert r.status_code == 200, r.text
    done = wait(client, job)
    assert done["status"] == "cancelled" and done["result"] is None
    # Asking again starts a new computation (the cancelled one is not reused); cancel it too.
    again = client.post(api("/jobs/layer"), json=params).json()
    assert again["id"] != job["id"]
    client.delete(f"/api/jobs/{again['id']}")
    assert wait(client, again)["status"] == "cancelled"
    expect = client.delete("/api/jobs/1-nope")
    assert expect.status_code == 404 and "no job" in expect.json()["error"]


def test_job_pool_cancel_is_cooperative_and_skips_queued_jobs() -> None:
    import threading
    import time

    from convlens.serve.jobs import JobPool

    pool = JobPool(workers=1)
    started, steps = threading.Event(), []

    def slow(job: Any) -> str:
        for i in range(500):
            job.report(i, 500, f"step {i}")
            steps.append(i)
            started.set()
            time.sleep(0.01)
        return "finished"

    running = pool.submit("a", "test", slow)
    queued = pool.submit("b", "test", lambda job: pytest.fail("a cancelled queued job ran"))
    assert started.wait(30)
    pool.cancel(queued.id)
    pool.cancel(running.id)
    deadline = time.monotonic() + 30
    while not (running.finished and queued.finished) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.status == "cancelled" and running.result is None and len(steps) < 500
    assert queued.status == "cancelled"
    assert pool.submit("a", "test", lambda job: 1) is not running
    pool.shutdown()


def test_a_job_is_cancelled_when_its_page_goes_away(trained_run: Path, tmp_path: Path) -> None:
    """A real server: the browser's event stream closes, the job it followed stops."""
    import threading
    import time

    import httpx
    import uvicorn

    from convlens.cli.serve_cmds import bind

    app = create_app([from_run_dir(trained_run)], cache_dir=tmp_path)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)

        def slow(job: Any) -> None:
            for i in range(3000):
                job.report(i, 3000, "working")
                time.sleep(0.01)

        job = app.state.serve.pool.submit("slow", "test", slow)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/jobs/{job.id}/events"
        with httpx.stream("GET", url, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # one event seen; the page goes away
        while not job.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.status == "cancelled"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


# --------------------------------------------------------------------------------------------------
# `convlens serve` start-up: checked before the "serving" line, one line each
# --------------------------------------------------------------------------------------------------


def test_cli_images_option_is_used(
    served_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, run: Any
) -> None:
    from convlens.cli.main import main

    _, data = run
    photos = tmp_path / "photos" / data.classes[0]
    photos.mkdir(parents=True)
    for i in range(3):
        (photos / f"{i}.png").write_bytes(png_bytes(data.images[i]))
    calls = _no_server(monkeypatch)
    args = ["serve", str(served_run), "--images", str(tmp_path / "photos"), "--port", "0"]
    code = main([*args, "--cache-dir", str(tmp_path / "cache")])
    assert code in (0, None), capsys.readouterr().err
    with TestClient(calls[0][0]) as c:
        assert c.get(api("")).json()["images"] == 3
        for i in range(3):
            png = c.get(api(f"/images/{i}.png")).content
            np.testing.assert_array_equal(
                np.asarray(Image.open(io.BytesIO(png))), data.images[i, 0]
            )


def _cli_error(args: list[str], capsys: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    from convlens.cli.main import main

    calls = _no_server(monkeypatch)
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert not calls and "serving" not in err and "open http" not in out
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


def test_cli_refuses_a_cache_dir_that_is_a_file(
    served_run: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "a_file"
    f.write_text("x")
    err = _cli_error(["serve", str(served_run), "--cache-dir", str(f)], capsys, monkeypatch)
    assert "is a file" in err


def test_cli_refuses_a_port_in_use_and_an_unknown_host(
    served_run: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = str(busy.getsockname()[1])
    cache = ["--cache-dir", str(tmp_path)]
    try:
        err = _cli_error(["serve", str(served_run), "--port", port, *cache], capsys, monkeypatch)
        assert f"port {port}" in err and "in use" in err
    finally:
        busy.close()
    err = _cli_error(
        ["serve", str(served_run), "--host", "no-such-host.invalid", *cache], capsys, monkeypatch
    )
    assert "unknown --host 'no-such-host.invalid'" in err


def test_cli_with_truncated_weights(
    mixed_runs: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convlens.cli.main import main

    cache = ["--cache-dir", str(tmp_path)]
    # The only subject: refused, with the reason.
    err = _cli_error(["serve", str(mixed_runs / "truncated"), *cache], capsys, monkeypatch)
    assert "truncated cannot be served" in err and "truncated:" in err
    # Among good ones: served, and each bad one named with its reason before "serving".
    calls = _no_server(monkeypatch)
    assert main(["serve", str(mixed_runs), "--port", "0", *cache]) in (0, None)
    _, err = capsys.readouterr()
    assert "truncated is broken" in err and "unfinished is unfinished" in err
    serving = next(line for line in err.splitlines() if line.startswith("serving"))
    assert "good" in serving and "truncated" not in serving
    assert len(calls) == 1


def test_cli_refuses_options_that_do_not_apply(
    served_run: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ["--cache-dir", str(tmp_path)]
    err = _cli_error(["serve", str(served_run), "--classes", "c.txt", *cache], capsys, monkeypatch)
    assert "--classes is for --model" in err
    err = _cli_error(
        ["serve", str(served_run), "--images", str(tmp_path / "nope"), *cache], capsys, monkeypatch
    )
    assert "no such file or folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    err = _cli_error(
        ["serve", str(served_run), "--images", str(empty), *cache], capsys, monkeypatch
    )
    assert "image" in err and str(empty) in err


def test_cli_ctrl_c_while_starting_up_is_one_line_and_130(
    served_run: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convlens.cli.main import main
    from convlens.serve import catalog

    def interrupted(path: Path) -> Any:
        raise KeyboardInterrupt  # Ctrl-C while the runs are being looked at

    monkeypatch.setattr(catalog, "check_run", interrupted)
    calls = _no_server(monkeypatch)
    code = main(["serve", str(served_run), "--port", "0", "--cache-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 130 and not calls
    assert "Traceback" not in err and err.strip().count("\n") == 0, err


def test_ctrl_c_on_a_starting_server_exits_130_without_a_traceback(
    served_run: Path, tmp_path: Path
) -> None:
    """A real process: SIGINT as soon as the URL is printed (uvicorn is starting up)."""
    import os
    import signal
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    cmd = [sys.executable, "-m", "convlens.cli.main", "serve", str(served_run), "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--cache-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "convlens serve: open http://127.0.0.1:PORT/ ..."
    assert "open http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.stderr else "")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "CancelledError" not in err, err


def test_uvicorn_report_of_a_lifespan_cancelled_at_exit_is_dropped() -> None:
    """Ctrl-C twice: uvicorn exits without the lifespan's shutdown, Starlette's lifespan is
    cancelled and sends its traceback as text, which uvicorn logs as an error: dropped, and only
    that."""
    import logging

    from convlens.cli.serve_cmds import _CancelledLifespan

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, msg, None, None)

    cancelled = (
        'Traceback (most recent call last):\n  File "x.py"\nasyncio.exceptions.CancelledError\n'
    )
    assert not _CancelledLifespan().filter(record(cancelled))
    assert _CancelledLifespan().filter(record("Traceback (most recent call last):\nValueError: x"))
    assert _CancelledLifespan().filter(record("Application startup failed. Exiting."))


def test_an_indexed_subject_answers_from_its_index(
    served_run: Path, run: Any, tmp_path: Path
) -> None:
    """`convlens index build` then `serve`: the server finds the cached index once and its feature
    neighbours equal a brute-force cosine search over the model's own penultimate features."""
    from convlens.index import build_index
    from convlens.subjects import from_run

    r, data = run
    build_index(from_run(r, images=data), cache_dir=tmp_path, progress=False)
    served = from_run_dir(served_run / NAME)
    served.index_dir = tmp_path
    app = create_app([served], cache_dir=tmp_path / "results")
    with TestClient(app, raise_server_exceptions=False) as c:
        nb = c.get(api("/neighbors"), params={"index": 7, "k": 5}).json()
    assert served.index is not None and served.index.n == len(data)
    with torch.inference_mode():
        feats = r.model.forward_features(r.normalize(data.images)).double()  # (N, D)
    feats = feats / feats.norm(dim=1, keepdim=True)
    sim = feats @ feats[7]
    sim[7] = -float("inf")
    expected = sim.argsort(descending=True)[:5].tolist()
    assert nb["feature"] == expected
    pixels = data.images.flatten(1).double()
    dist = ((pixels - pixels[7]) ** 2).sum(1)
    dist[7] = float("inf")
    assert nb["pixel"] == dist.argsort(stable=True)[:5].tolist()  # brute force in pixel space
