"""Issue 25's wrong answers and subjects, each checked against an independent oracle: torchvision's
own transforms, a state dict compared key by key, timm loading the same file itself, Captum.

- images of all different sizes and a model that does not say its input size -> 224x224 resized and
  centre-cropped as torchvision's ``Resize(256) + CenterCrop(224)``, with a note;
- a wrong file in the torchvision hub cache names the first differing key;
- timm pretrained weights from a (fake) Hugging Face cache with the network blocked; folders named
  by the first of timm's comma-separated class names are labels;
- TorchScript: methods that need hooks refuse in one line; saliency and occlusion answer;
- occlusion on a vision transformer falls back to the plain path and equals Captum's Occlusion;
- one input check for every method (wrong channels, uint8, NaN, a NumPy array), float64 and
  float16 images cast to the model's type;
- cuDNN benchmark and TF32 are restored after training.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convlens.errors import ConvlensError, InputError, InputTypeError

# ---- images of all different sizes --------------------------------------------------------------


def _build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


def test_mixed_sizes_with_an_unknown_size_model_resize_and_crop_to_224(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.transforms import v2

    from convlens.subjects import open_subject

    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, 3))\n"
    )
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = [(300, 200), (256, 256), (180, 400), (500, 333)]  # (H, W), all different
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    sub = open_subject("net.py:build", images=folder)
    assert sub.preprocess.size == (224, 224)
    assert any("different sizes" in n and "224x224" in n for n in sub.info["notices"])
    assert sub.images is not None
    oracle = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    for i in range(len(sizes)):
        with Image.open(folder / f"{i}.png") as im:
            expected = v2.functional.pil_to_tensor(oracle(im.convert("RGB")))
        torch.testing.assert_close(sub.images.images[i], expected)


def test_images_most_of_which_share_a_size_keep_it(tmp_path: Path) -> None:
    from convlens.subjects.open import _guess_preprocess

    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(40, 30), (40, 30), (40, 30), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    notices: list[str] = []
    pre = _guess_preprocess(_build(), tmp_path, notices)
    assert (pre.size, pre.resize, notices) == ((40, 30), None, [])


def test_an_image_already_at_the_resize_size_is_only_cropped(tmp_path: Path) -> None:
    from convlens.subjects.core import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from convlens.subjects.images import load_image

    Image.new("RGB", (256, 256)).save(tmp_path / "a.png")
    pre = Preprocess(3, (224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256)
    _, notices = load_image(tmp_path / "a.png", pre)
    assert notices == ["a.png: centre 224x224 of 256x256 cropped"]


# ---- torchvision's hub cache ---------------------------------------------------------------------


def test_a_wrong_hub_file_names_the_first_differing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    from convlens.subjects import open_subject
    from convlens.subjects.hub import hub_file, torchvision_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    w = torchvision_weights("resnet18", "DEFAULT")
    path = hub_file(w)
    path.parent.mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()  # the oracle: the model's own keys
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)  # one tensor of another shape
    del state["fc.bias"]  # and one missing: the first in the model's order is named
    torch.save(state, path)
    with pytest.raises(InputError) as err:
        open_subject("torchvision:resnet18", weights="DEFAULT")
    message = str(err.value)
    assert "'layer2.0.conv1.weight' is [128, 64, 5, 5] in the file but [128, 64, 3, 3]" in message
    assert "1 missing" in message and "Error(s) in loading" not in message


# ---- timm: the Hugging Face cache, no network ------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every name look-up and socket connection attempt is recorded and refused."""
    tried: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        tried.append(address)
        raise OSError("network blocked by the test")

    def no_lookup(host: object, *args: object, **kwargs: object) -> list[object]:
        tried.append(host)
        raise socket.gaierror("name look-up blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    return tried


def test_timm_weights_in_the_hf_cache_open_with_no_network_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    timm = pytest.importorskip("timm")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    from safetensors.torch import save_file

    from convlens.subjects import open_subject

    arch, repo = "test_resnet", "timm/test_resnet.r160_in1k"
    torch.manual_seed(3)
    source = timm.create_model(arch, pretrained=False).eval()
    cache = tmp_path / "hub"
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0123abcd")
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, snap / "model.safetensors"
    )
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))

    # Folders named by the first of timm's class names: "tench, Tinca tinca" and "goldfish, ...".
    rng = np.random.default_rng(0)
    for name in ("tench", "Goldfish"):
        (tmp_path / "fish" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "fish" / name / f"{i}.png"
            )
    sub = open_subject(f"timm:{arch}", weights="DEFAULT", images=tmp_path / "fish")
    assert no_network == []
    loaded = sub.model.state_dict()
    for k, v in source.state_dict().items():  # the oracle: the tensors written to the cache
        torch.testing.assert_close(loaded[k], v)
    assert sub.images is not None
    assert sub.images.labels.tolist() == [1, 1, 0, 0]  # goldfish (output 1), tench (output 0)
    assert sub.classes[0].startswith("tench")
    assert not any("not the model's class names" in n for n in sub.info["notices"])


def test_timm_weights_not_cached_say_so_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[object]
) -> None:
    pytest.importorskip("timm")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    from convlens.subjects import open_subject

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="pass --download"):
        open_subject("timm:test_resnet", weights="DEFAULT")
    assert no_network == []


# ---- TorchScript ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted() -> tuple[nn.Module, nn.Module]:
    """An eager CNN and its TorchScript trace."""
    import warnings

    net = _build().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return net, torch.jit.trace(net, torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize(
    "method", ["grad_cam", "guided_grad_cam", "guided_backprop", "activations", "extract_features"]
)
def test_torchscript_methods_that_need_hooks_refuse_in_one_line(
    scripted: tuple[nn.Module, nn.Module], method: str
) -> None:
    from convlens import inspect
    from convlens.models.hooks import HooksUnsupported

    _, ts = scripted
    with pytest.raises(HooksUnsupported, match="TorchScript") as err:
        getattr(inspect, method)(ts, torch.randn(1, 3, 16, 16))
    assert "\n" not in str(err.value)


def test_torchscript_saliency_and_occlusion_equal_captum_on_the_eager_model(
    scripted: tuple[nn.Module, nn.Module],
) -> None:
    captum = pytest.importorskip("captum.attr")
    from convlens.inspect import occlusion, saliency

    net, ts = scripted
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target = net(x).argmax(1)
    ref = captum.Saliency(net).attribute(x, target=target, abs=True).amax(1)
    torch.testing.assert_close(saliency(ts, x), ref)
    occ = occlusion(ts, x, window=4, stride=4)
    ref_occ = captum.Occlusion(net).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), target=target, baselines=0.0
    )
    torch.testing.assert_close(occ.attribution, ref_occ, atol=1e-5, rtol=1e-4)


def test_torchscript_without_images_says_the_size_was_a_guess(tmp_path: Path) -> None:
    import warnings

    from convlens import models
    from convlens.subjects import open_subject

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(
            models.create("lenet5", in_channels=1).eval(), torch.zeros(1, 1, 28, 28)
        )
    ts.save(str(tmp_path / "lenet.pt"))
    with pytest.raises(InputError, match=r"1x224x224 was a guess \(no --images\); pass --images"):
        open_subject(str(tmp_path / "lenet.pt"))


# ---- occlusion on a vision transformer ---------------------------------------------------------------


def test_occlusion_on_a_vit_falls_back_to_the_plain_path_and_equals_captum() -> None:
    captum = pytest.importorskip("captum.attr")
    from torchvision.models.vision_transformer import VisionTransformer

    from convlens.inspect import occlusion

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
        num_classes=5,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    with pytest.warns(UserWarning, match="computed in full"):
        res = occlusion(vit, x, window=4, stride=4, method="incremental")
    assert res.method == "plain"
    ref = captum.Occlusion(vit).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), target=res.target, baselines=0.0
    )
    torch.testing.assert_close(res.attribution, ref, atol=1e-5, rtol=1e-4)


# ---- one input check for every method ------------------------------------------------------------------


def _methods() -> dict[str, Callable[[nn.Module, object], object]]:
    from convlens import inspect

    return {
        "saliency": inspect.saliency,
        "guided_backprop": inspect.guided_backprop,
        "grad_cam": inspect.grad_cam,
        "guided_grad_cam": inspect.guided_grad_cam,
        "occlusion": lambda m, x: inspect.occlusion(m, x, window=4, stride=4),  # type: ignore[arg-type]
        "activations": inspect.activations,
    }


@pytest.mark.parametrize("method", list(_methods()))
@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (torch.randn(1, 1, 16, 16), InputError, "have 1 channels but the model takes 3"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), InputError, "must be float"),
        (torch.full((1, 3, 16, 16), float("nan")), InputError, "NaN"),
        (np.zeros((1, 3, 16, 16), np.float32), InputTypeError, "must be a torch.Tensor"),
        (torch.randn(3, 16, 16), InputError, "unsqueeze(0)"),
    ],
    ids=["channels", "uint8", "nan", "numpy", "unbatched"],
)
def test_every_method_checks_its_input_the_same_way(
    method: str, bad: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as err:
        _methods()[method](_build().eval(), bad)
    assert message in str(err.value)
    assert isinstance(err.value, ConvlensError)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_float64_and_float16_images_are_cast_to_the_models_type(dtype: torch.dtype) -> None:
    captum = pytest.importorskip("captum.attr")
    from convlens.inspect import saliency

    net = _build().eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    x32 = x.float()
    ref = captum.Saliency(net).attribute(x32, target=net(x32).argmax(1), abs=True).amax(1)
    out = saliency(net, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# ---- global switches restored after training ---------------------------------------------------------


def test_cuda_kernel_switches_are_restored_also_when_training_raises() -> None:
    from convlens.train.runtime import fast_cuda_kernels

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32)
    try:
        cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = False, False, True
        with pytest.raises(RuntimeError, match="mid-fit"), fast_cuda_kernels():
            assert (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32) == (True, True, True)
            raise RuntimeError("mid-fit")
        assert (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32) == (False, False, True)
    finally:
        cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_leaves_tf32_and_benchmark_as_they_were(tmp_path: Path) -> None:
    from convlens.train import fit, recipe

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32)
    cfg = recipe("lenet5", "sample", device="cuda").replace(
        epochs=1, limit_train=256, limit_test=64
    )
    fit("lenet5", "sample", out=tmp_path / "run", config=cfg, progress=False)
    assert (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32) == before


# ---- the report's predictions: the arg-max of the logits ------------------------------------------


def test_report_predictions_are_the_argmax_of_the_logits() -> None:
    """1,000 classes, one logit 2e-8 above the rest: float32's softmax ties them all at 1/1000
    (its arg-max says class 0); the report must name the class with the largest logit."""
    from convlens.data.dataset import Dataset
    from convlens.render.report_context import ReportContext
    from convlens.subjects import subject

    class Fixed(nn.Module):
        def __init__(self, best: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)
            logits = torch.zeros(1, 1000)
            logits[0, best] = 2e-8  # exp(2e-8) == 1 in float32
            self.register_buffer("logits", logits)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits.expand(len(x), -1) + 0 * self.conv(x).mean((1, 2, 3))[:, None]

    net = Fixed(best=7).eval()
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    assert torch.softmax(net(images.float()), 1).argmax(1).tolist() == [0, 0]  # the old answer
    ds = Dataset(name="zeros", split="test", images=images, labels=torch.zeros(2, dtype=torch.int64),
                 classes=["unlabelled"], mean=(0.5,), std=(0.5,))  # fmt: skip
    ds.extra["labelled"] = False
    sub = subject(net, input_size=(1, 8, 8), images=ds)
    oracle = net(images.float()).double().argmax(1)  # the logits' own arg-max
    assert ReportContext(sub).predictions().predicted.tolist() == oracle.tolist() == [7, 7]
