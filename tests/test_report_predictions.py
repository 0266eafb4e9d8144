"""The report's predictions section, and a TorchScript model's report (issue 25).

Oracles: torch's arg-max and ``log_softmax`` of the model's own logits; the sections that need no
hooks (predictions, occlusion, saliency) are shown for a TorchScript model, the others say why not.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from convlens.render.report import build_report, report_context
from convlens.subjects import open_subject


def _photos(folder: Path, n: int = 12) -> list[Path]:
    """`n` crops of scikit-learn's two sample photos, saved as JPEG files."""
    from sklearn.datasets import load_sample_images

    folder.mkdir()
    photos = load_sample_images().images  # two (427, 640, 3) uint8
    paths = []
    for i in range(n):
        a = photos[i % 2][(i * 17) % 200 :][:200, (i * 31) % 300 :][:, :220]
        p = folder / f"photo{i:02d}.jpg"
        Image.fromarray(np.ascontiguousarray(a)).save(p, quality=90)
        paths.append(p)
    return paths


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.fc = nn.Linear(16, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3))) * 40  # large logits: float32 softmax saturates


def test_report_of_a_torchscript_model_over_photos(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    scripted = torch.jit.trace(net, torch.zeros(1, 3, 64, 64))
    model_file = tmp_path / "net.pt"
    scripted.save(str(model_file))
    _photos(tmp_path / "photos")

    sub = open_subject(str(model_file), images=tmp_path / "photos")
    report = build_report(report_context(sub))
    status = {s.id: s.status for s in report.sections}

    # Predictions: one row per photo, the arg-max of the logits first, as text.
    pred = report.outcome("predictions")
    assert pred.status == "ok"
    assert sub.images is not None
    with torch.inference_mode():
        logits = net(sub.normalize(sub.images.images)).double()  # (N, 7)
    expected = logits.argmax(1)
    probs = logits.log_softmax(1).exp()
    view = pred.views["predictions"]
    assert view.predicted.tolist() == expected.tolist()
    np.testing.assert_allclose(view.probs[:, 0].numpy(), probs.max(1).values.numpy(), rtol=1e-6)
    text = re.sub(r"<[^>]+>", " ", pred.body)
    for i in range(len(sub.images)):
        assert f"photo{i:02d}.jpg" in text
    assert text.count(f"{sub.class_name(int(expected[0]))} (") >= 1

    # Sections that need no hooks run; the others give the TorchScript reason.
    assert status["attribution"] == "ok", report.outcome("attribution").reason
    assert "No Grad-CAM" in report.outcome("attribution").body
    for sid in ("filters", "activations", "top-patches", "erf"):
        assert status[sid] == "skipped", sid
        assert "TorchScript" in report.outcome(sid).reason, (sid, report.outcome(sid).reason)
