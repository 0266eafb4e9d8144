"""Occlusion: the incremental engine against Captum's `Occlusion` (the oracle), plus conventions.

Captum re-runs the whole network for each window position; our engine recomputes only the changed
regions. Equality to 1e-4 (relative to the largest attribution) on LeNet-5, VGG-16, ResNet-18,
ResNet-50 and GoogLeNet (random weights, eval mode) is the proof that the engine is exact; the plain
path is held to Captum too, and the two paths to each other (the contract in the module's doc).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from torch import nn

from convlens import models
from convlens.errors import ConvlensError
from convlens.inspect.occlusion import choose_method, occlusion, occlusion_positions, tf32_off
from convlens.inspect.occlusion.incremental import IncrementalOcclusion


def _captum(
    model: nn.Module,
    x: torch.Tensor,
    window: int,
    stride: int,
    baseline: object,
    target: torch.Tensor,
) -> torch.Tensor:
    C = x.shape[1]
    return Occlusion(model).attribute(
        x, sliding_window_shapes=(C, window, window), strides=(C, stride, stride),
        baselines=baseline, target=target, perturbations_per_eval=16,
    )  # fmt: skip


def _assert_matches_captum(
    model: nn.Module,
    x: torch.Tensor,
    window: int,
    stride: int,
    baseline: float | torch.Tensor = 0.0,
) -> None:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # these models must run fully incrementally, without fallbacks
        res = occlusion(
            model, x, window=window, stride=stride, baseline=baseline, method="incremental"
        )
    assert res.method == "incremental"
    ref = _captum(model, x, window, stride, baseline, res.target)
    scale = float(ref.abs().max())
    assert scale > 1e-6, "degenerate test: the model ignores occlusion"
    torch.testing.assert_close(res.attribution, ref, rtol=1e-4, atol=1e-4 * scale)


def _lively(model: nn.Module) -> nn.Module:
    """Random weights that keep activations alive through deep nets (GoogLeNet's default init is tiny)."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.05)
        elif isinstance(m, nn.BatchNorm2d):  # non-trivial eval-mode statistics
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def test_lenet5_matches_captum_batch_targets_baseline() -> None:
    torch.manual_seed(0)
    m = _lively(models.create("lenet5", in_channels=1))
    x = torch.randn(3, 1, 28, 28)
    # window 5 with stride 3 leaves a cut-off last window (23 is not a multiple of 3)
    for window, stride, baseline in [(4, 1, 0.0), (5, 3, 0.5), (7, 7, -1.0)]:
        _assert_matches_captum(m, x, window, stride, baseline)
    res = occlusion(
        m, x, target=[1, 2, 3], window=4, stride=2, baseline=torch.full((1, 28, 28), 0.3)
    )
    ref = _captum(m, x, 4, 2, 0.3, torch.tensor([1, 2, 3]))
    torch.testing.assert_close(res.attribution, ref, rtol=1e-4, atol=1e-6)


def test_resnet18_and_vgg16_match_captum() -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 64)
    _assert_matches_captum(_lively(models.create("resnet18", num_classes=10)), x, 16, 12)
    _assert_matches_captum(_lively(models.create("vgg16", num_classes=10)), x, 16, 16)


def test_resnet50_and_googlenet_match_captum() -> None:
    torch.manual_seed(2)
    x = torch.randn(1, 3, 64, 64)
    _assert_matches_captum(_lively(models.create("resnet50", num_classes=10)), x, 24, 20)
    _assert_matches_captum(
        _lively(models.create("googlenet", num_classes=10)), torch.randn(1, 3, 96, 96), 24, 24
    )


@pytest.mark.slow
def test_resnet18_224_matches_captum() -> None:
    torch.manual_seed(3)
    x = torch.randn(1, 3, 224, 224)
    _assert_matches_captum(_lively(models.create("resnet18", num_classes=10)), x, 64, 56)


def test_torchvision_models_trace_and_match() -> None:
    """Any nn.Module: torchvision's own ResNet (in-place ReLUs, `out += identity`)."""
    import torchvision

    torch.manual_seed(4)
    _assert_matches_captum(
        _lively(torchvision.models.resnet18(num_classes=5)), torch.randn(1, 3, 48, 48), 12, 12
    )


def test_unknown_module_falls_back_and_warns_once() -> None:
    class Odd(nn.Module):  # not a known op: a spatial flip
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.flip(x, dims=[3])

    torch.manual_seed(5)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), Odd(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = occlusion(m, x, window=4, stride=2)
    msgs = [str(w.message) for w in caught if "occlusion" in str(w.message)]
    assert len(msgs) == 1 and "flip" in msgs[0]
    torch.testing.assert_close(
        res.attribution, _captum(m, x, 4, 2, 0.0, res.target), rtol=1e-4, atol=1e-6
    )


def test_untraceable_model_still_exact() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 10 * 10, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if float(y.mean()) > 1e9:  # data-dependent control flow: fx cannot trace this
                y = -y
            return self.fc(y.flatten(1))

    torch.manual_seed(6)
    m = Branchy().eval()
    x = torch.randn(1, 1, 12, 12)
    with pytest.warns(UserWarning, match="could not trace"):
        res = occlusion(m, x, window=3, stride=2)
    assert res.method == "plain"  # the engine needs a graph: the plain path ran
    torch.testing.assert_close(
        res.attribution, _captum(m, x, 3, 2, 0.0, res.target), rtol=1e-4, atol=1e-6
    )


def test_engine_recomputes_only_the_projective_field() -> None:
    """Textbook arithmetic: a 4x4 patch through conv5 (pad 2) grows to 8x8, a 2x2 max-pool halves it."""
    m = models.create("lenet5", in_channels=1).eval()
    rows = occlusion_positions(28, 4, 4)
    eng = IncrementalOcclusion(m, (1, 28, 28), rows, rows)
    with torch.inference_mode():
        eng.clean_pass(torch.randn(1, 1, 28, 28))
    geo = {n.name: eng.plan.geom[n] for n in eng.plan.geom}
    assert (geo["conv1"].h, geo["conv1"].w) == (8, 8)
    assert (geo["pool1"].h, geo["pool1"].w) == (4, 4)
    # patch rows [8, 12) -> conv1 rows [6, 14) (each output reads 5 rows, 2 of padding)
    assert geo["conv1"].row_start[2] == 6


def test_grid_and_probability_drop_against_a_plain_loop() -> None:
    """The Zeiler-Fergus grid, checked by occluding each window by hand and re-running the model."""
    torch.manual_seed(7)
    m = _lively(models.create("lenet5", in_channels=1))
    x = torch.randn(1, 1, 28, 28)
    res = occlusion(m, x, target=4, window=9, stride=6, baseline=0.25)
    rows = occlusion_positions(28, 9, 6)
    assert rows.tolist() == [[0, 9], [6, 15], [12, 21], [18, 27], [24, 28]]  # last window cut off
    with torch.no_grad():
        p0 = m(x).softmax(1)[0, 4]
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(rows):
                xo = x.clone()
                xo[..., r0:r1, c0:c1] = 0.25
                out = m(xo)
                assert res.prob_drop[0, i, j] == pytest.approx(
                    float(p0 - out.softmax(1)[0, 4]), abs=1e-6
                )
                assert res.logit_drop[0, i, j] == pytest.approx(
                    float(m(x)[0, 4] - out[0, 4]), abs=1e-5
                )


def test_model_left_as_it_was_and_errors() -> None:
    m = _lively(models.create("lenet5", in_channels=1)).train()
    x = torch.randn(1, 1, 28, 28)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    layout = [(n, type(mod)) for n, mod in m.named_modules()]
    occlusion(m, x, window=7, stride=7)  # traced with the shape-aware tracer, BN-free
    assert m.training and all(mod.training for mod in m.modules())
    assert [(n, type(mod)) for n, mod in m.named_modules()] == layout
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous()
    with pytest.raises(ConvlensError, match="larger than the window"):
        occlusion(m, x, window=4, stride=5)
    with pytest.raises(ConvlensError, match="larger than the image"):
        occlusion(m, x, window=30, stride=2)
    with pytest.raises(ConvlensError, match="out of range"):
        occlusion(m, x, target=10, window=7, stride=7)
    assert np.array_equal(occlusion_positions(10, 10, 3), [[0, 10]])


def test_batchnorm_statistics_and_weight_layout_untouched() -> None:
    """Folding BN and channels-last copies are private: the model's tensors stay as they were."""
    import torchvision

    m = torchvision.models.resnet18(num_classes=3).train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    occlusion(m, torch.randn(1, 3, 32, 32), window=16, stride=16)
    assert m.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous(), k


# ---- the two paths behind one door ---------------------------------------------------------------


def _assert_paths_agree(model: nn.Module, x: torch.Tensor, window: int, stride: int) -> None:
    """The contract: the engine equals the plain batched path to 1e-4 of the largest attribution,
    and the plain path itself equals Captum (so the reference is not our own code alone)."""
    plain = occlusion(model, x, window=window, stride=stride, method="plain")
    fast = occlusion(model, x, window=window, stride=stride, method="incremental")
    assert (plain.method, fast.method) == ("plain", "incremental")
    scale = float(plain.attribution.abs().max())
    assert scale > 1e-6, "degenerate test: the model ignores occlusion"
    torch.testing.assert_close(fast.attribution, plain.attribution, rtol=0, atol=1e-4 * scale)
    torch.testing.assert_close(fast.logit_drop, plain.logit_drop, rtol=0, atol=1e-4 * scale)
    ref = _captum(model, x, window, stride, 0.0, plain.target)
    torch.testing.assert_close(plain.attribution, ref, rtol=1e-4, atol=1e-4 * scale)


def test_engine_equals_plain_path_lenet5_resnet18_vgg16() -> None:
    torch.manual_seed(8)
    _assert_paths_agree(
        _lively(models.create("lenet5", in_channels=1)), torch.randn(2, 1, 28, 28), 5, 3
    )
    x = torch.randn(1, 3, 64, 64)
    _assert_paths_agree(_lively(models.create("resnet18", num_classes=10)), x, 16, 12)
    _assert_paths_agree(_lively(models.create("vgg16", num_classes=10)), x, 16, 16)


def test_cost_rule() -> None:
    """On CUDA always plain (the engine measured slower than Captum there); on CPU the engine for
    windows of at most a quarter of the image."""
    assert choose_method("cuda", (224, 224), (16, 16)) == "plain"
    assert choose_method(torch.device("cuda", 1), (28, 28), (4, 4)) == "plain"
    assert choose_method("cpu", (224, 224), (16, 16)) == "incremental"
    assert choose_method("cpu", (28, 28), (14, 14)) == "incremental"  # exactly a quarter
    assert choose_method("cpu", (28, 28), (15, 14)) == "plain"


def test_method_forces_a_path_and_auto_reports_its_choice() -> None:
    torch.manual_seed(9)
    m = _lively(models.create("lenet5", in_channels=1))
    x = torch.randn(1, 1, 28, 28)
    assert occlusion(m, x, window=4, stride=2).method == "incremental"  # auto on CPU, small window
    assert occlusion(m, x, window=20, stride=8).method == "plain"  # auto on CPU, large window
    assert occlusion(m, x, window=20, stride=8, method="incremental").method == "incremental"
    assert occlusion(m, x, window=4, stride=2, method="plain").method == "plain"
    with pytest.raises(ConvlensError, match="method must be"):
        occlusion(m, x, method="fast")  # type: ignore[arg-type]


def test_tf32_off_restores_the_flags() -> None:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for flags in ((True, True), (False, True)):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
            with pytest.raises(RuntimeError), tf32_off():
                assert not torch.backends.cuda.matmul.allow_tf32
                assert not torch.backends.cudnn.allow_tf32
                raise RuntimeError  # restored on the way out of an error too
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_paths_agree_with_tf32_off_and_auto_is_plain() -> None:
    """On CUDA both paths (and Captum) run with TF32 off and agree to 1e-3 of the largest
    attribution: float32 GPU kernels sum in other orders than the CPU's."""
    torch.manual_seed(10)
    m = _lively(models.create("resnet18", num_classes=10)).cuda()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    torch.backends.cudnn.allow_tf32 = True  # the user's setting, restored after each call
    auto = occlusion(m, x, window=16, stride=8)
    assert auto.method == "plain" and torch.backends.cudnn.allow_tf32
    fast = occlusion(m, x, window=16, stride=8, method="incremental")
    scale = float(auto.attribution.abs().max())
    torch.testing.assert_close(fast.attribution, auto.attribution, rtol=0, atol=1e-3 * scale)
    with tf32_off():
        ref = _captum(m, x, 16, 8, 0.0, auto.target)
    torch.testing.assert_close(auto.attribution, ref, rtol=0, atol=1e-3 * scale)
