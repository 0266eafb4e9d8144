"""The README's bring-your-own-model examples, through the real command line (`convlens.cli.main`).

No network: torchvision's weights come from a temporary hub cache (`TORCH_HOME`), as in
tests/test_subjects_open.py. Oracles: accuracy from a plain forward pass and scikit-learn; the page's
sections checked for what applies to a model without training history.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score

from convlens.cli.main import main
from test_subjects_open import CHINA, _user_net, fake_hub, photo_folder


def flat(text: str) -> str:
    return " ".join(text.split())


def statuses(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([\w-]+)" class="report-section status-(\w+)"', html))


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "torch-home"


def test_visualize_gradcam_of_torchvision_resnet50(hub: Path, tmp_path: Path) -> None:
    """`convlens visualize --model torchvision:resnet50 --weights DEFAULT gradcam --image cat.jpg`"""
    fake_hub(hub, "resnet50")
    cat = tmp_path / "cat.jpg"
    cat.write_bytes(CHINA.read_bytes())
    argv = ["visualize", "--model", "torchvision:resnet50", "--weights", "DEFAULT", "gradcam"]
    assert main([*argv, "--image", "cat.jpg", "--out", "vis", "--save-data"]) == 0
    with Image.open(tmp_path / "vis" / "gradcam.png") as im:
        assert im.width > 100
    cam = np.load(tmp_path / "vis" / "gradcam.npy")
    assert cam.shape[-2:] == (224, 224)


def test_user_code_report_and_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`convlens report --model my_net.py:build --weights my_net.safetensors --images data/val/`"""
    monkeypatch.chdir(tmp_path)
    _, _, net = _user_net(tmp_path)
    val = photo_folder(tmp_path / "data" / "val", ["china", "flower"], per_class=8)
    spec = ["--model", "my_net.py:build", "--weights", "my_net.safetensors"]
    assert main(["report", *spec, "--images", "data/val/", "--out", "r.html"]) == 0
    html = (tmp_path / "r.html").read_text()
    s = statuses(html)
    assert s["training"] == "skipped" and "without training history" in flat(html)
    assert {k for k, v in s.items() if v != "ok"} == {"training"}, s

    # the accuracy on the page and from `evaluate`, against a plain forward pass + scikit-learn
    from convlens.subjects import load_image_set, subject

    sub = subject(net, input_size=(3, 64, 64))
    ds = load_image_set(val, sub.preprocess)
    with torch.no_grad():
        pred = net(sub.normalize(ds.images)).argmax(1).numpy()
    acc = accuracy_score(ds.labels.numpy(), pred)
    assert f"Accuracy {100 * acc:.2f} % on 16 images" in html
    capsys.readouterr()
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))  # evaluate keeps an index
    assert main(["evaluate", *spec, "--images", "data/val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 16 and abs(result["accuracy"] - acc) < 1e-9


@pytest.mark.slow
def test_report_of_torchvision_alexnet_on_a_photo_folder(hub: Path, tmp_path: Path) -> None:
    """`convlens report --model torchvision:alexnet --weights DEFAULT --images photos/`"""
    fake_hub(hub, "alexnet")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, f in enumerate(sorted(photo_folder(tmp_path / "src", ["a", "b"]).rglob("*.png"))):
        Image.open(f).convert("RGB").resize((224, 224)).save(photos / f"{i:02d}.jpg")
    argv = ["report", "--model", "torchvision:alexnet", "--weights", "DEFAULT"]
    assert main([*argv, "--images", "photos/"]) == 0
    html = (tmp_path / "report.html").read_text()
    s = statuses(html)
    assert s["training"] == s["confusion"] == "skipped"
    for sid in ("filters", "activations", "neighbors", "tsne", "top-patches", "actmax"):
        assert s[sid] == "ok", sid
    assert s["attribution"] == s["erf"] == s["summary"] == "ok"


def test_neither_or_both_is_one_clear_line(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report"]) == 2
    assert "Missing argument 'RUN_DIR'" in flat(capsys.readouterr().err)
    assert main(["report", str(tmp_path), "--model", "resnet20"]) == 2
    assert "not both" in flat(capsys.readouterr().err)
    assert main(["visualize", "gradcam"]) == 2
    assert "name the model before gradcam" in flat(capsys.readouterr().err)
    assert main(["visualize", "--model", "resnet20"]) == 2
    assert "Missing argument 'METHOD'" in flat(capsys.readouterr().err)
    assert main(["evaluate", "--model", "resnet20"]) == 1
    assert "--images" in flat(capsys.readouterr().err)
    assert main(["report", "--model", "torchvision:resnet18", "--weights", "DEFAULT"]) == 1
    err = flat(capsys.readouterr().err)
    assert "resnet18-f37072fd.pth" in err and "--download" in err and "Traceback" not in err
