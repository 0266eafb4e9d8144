"""`open_subject`: every way of naming a model, and a user's image files.

Oracles: torchvision's own ``weights.transforms()`` and model on the same photo (scikit-learn's bundled
sample photos); torchvision's functional resize / centre crop for the pixel pipeline; NumPy for alpha
compositing, 16-bit scaling and EXIF rotation; the original module for TorchScript and user code.
No network: torchvision's hub cache is a temporary folder laid out as torch hub lays it out.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_sample_images

from convlens.errors import ConvlensError
from convlens.subjects import Preprocess, load_image, open_subject

PHOTOS = load_sample_images()  # china.jpg, flower.jpg: 640x427 RGB photos
CHINA = Path(PHOTOS.filenames[0])


def fake_hub(root: Path, arch: str, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """Save a random-init torchvision `arch` as its DEFAULT weights' file in a hub cache at `root`."""
    w = torchvision.models.get_model_weights(arch).DEFAULT
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None).eval()
    folder = root / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / Path(w.url).name)  # the file name of the enum's URL
    return model, w


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(root))
    return root


# --------------------------------------------------------------------------------------------------
# torchvision with pretrained weights from the hub cache
# --------------------------------------------------------------------------------------------------


def test_torchvision_default_weights_predict_as_torchvision_does(hub: Path) -> None:
    model, w = fake_hub(hub, "mobilenet_v3_small")
    sub = open_subject("torchvision:mobilenet_v3_small", weights="DEFAULT", images=CHINA.parent)
    assert sub.classes == list(w.meta["categories"]) and len(sub.classes) == 1000
    assert sub.preprocess.size == (224, 224) and sub.preprocess.resize == 256
    assert sub.images is not None and len(sub.images) == 2  # china, flower; README.txt skipped
    files = [Path(f) for f in sub.images.extra["files"]]
    expected_x = torch.stack([w.transforms()(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        expected = model(expected_x)
        ours = sub.model(sub.normalize(sub.images.images))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert torch.equal(ours.argmax(1), expected.argmax(1))


def test_weights_by_enum_name_and_missing_file_message(hub: Path) -> None:
    with pytest.raises(ConvlensError) as e:
        open_subject("torchvision:resnet18", weights="IMAGENET1K_V1")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(hub / "hub" / "checkpoints") in msg
    assert "--download" in msg
    fake_hub(hub, "resnet18")
    sub = open_subject("torchvision:resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    assert sub.info["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    with pytest.raises(ConvlensError, match=r"no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        open_subject("torchvision:resnet18", weights="IMAGENET9K")


def test_truncated_hub_file_is_a_clear_error(hub: Path) -> None:
    fake_hub(hub, "mobilenet_v3_small")
    f = next((hub / "hub" / "checkpoints").iterdir())
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(ConvlensError, match="truncated or corrupt"):
        open_subject("torchvision:mobilenet_v3_small", weights="DEFAULT")


# --------------------------------------------------------------------------------------------------
# Checkpoints, TorchScript, user code
# --------------------------------------------------------------------------------------------------


def test_state_dict_of_another_architecture_names_the_first_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), f)
    with pytest.raises(ConvlensError) as e:
        open_subject("torchvision:resnet34", weights=str(f))
    # ResNet-34 has three blocks in layer1, ResNet-18 two: layer1.2 is the first key it lacks.
    assert "'layer1.2.conv1.weight'" in str(e.value) and "first mismatch" in str(e.value)


def test_checkpoint_for_a_registry_model_reads_its_class_count(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from convlens import models

    torch.manual_seed(1)
    net = models.create("resnet20", num_classes=7, in_channels=1).eval()
    f = tmp_path / "r20.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(f))
    sub = open_subject("resnet20", weights=str(f))
    assert len(sub.classes) == 7 and sub.image_shape == (1, 32, 32)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sub.model(x), net(x))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_weights_file(tmp_path: Path, suffix: str) -> None:
    from safetensors.torch import save_file

    state = torchvision.models.resnet18().state_dict()
    f = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(state, f)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(f))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(ConvlensError, match="truncated or corrupt"):
        open_subject("torchvision:resnet18", weights=str(f))


def test_pickled_full_module_is_refused_with_what_to_do(tmp_path: Path) -> None:
    f = tmp_path / "whole.pt"
    torch.save(torchvision.models.resnet18(), f)
    for spec, weights in (("torchvision:resnet18", str(f)), (str(f), None)):
        with pytest.raises(ConvlensError) as e:
            open_subject(spec, weights=weights)
        msg = str(e.value)
        assert "whole pickled model" in msg and "torchvision.models.resnet.ResNet" in msg
        assert "state_dict()" in msg and "torch.jit.trace" in msg


def test_torchscript_file_is_a_model(tmp_path: Path) -> None:
    from convlens import models

    torch.manual_seed(2)
    net = models.create("resnet20", num_classes=10).eval()
    f = tmp_path / "net.pt"
    torch.jit.trace(net, torch.randn(1, 3, 32, 32)).save(str(f))
    sub = open_subject(str(f))
    assert sub.image_shape[0] == 3 and len(sub.classes) == 10
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sub.model(x), net(x))
    with pytest.raises(ConvlensError, match="TorchScript"):
        open_subject("resnet20", weights=str(f))


USER_CODE = """
import torch
from torch import nn


def build():
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )


def broken():
    raise ValueError("no such layer")
"""


def _user_net(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module]:
    import importlib.util

    from safetensors.torch import save_file

    code = tmp_path / "my_net.py"
    code.write_text(USER_CODE)
    spec = importlib.util.spec_from_file_location("oracle_net", code)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.build().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)  # "trained": differs from what build() returns
    weights = tmp_path / "my_net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    return code, weights, net


def photo_folder(root: Path, classes: list[str], per_class: int = 6, size: int = 64) -> Path:
    """Class folders of crops of the two sample photos (china for the first class, flower next)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        photo = PHOTOS.images[c % 2]
        for i in range(per_class):
            s = int(rng.integers(120, 400))
            y, x = int(rng.integers(0, 427 - s)), int(rng.integers(0, 640 - s))
            Image.fromarray(photo[y : y + s, x : x + s]).resize((size, size)).save(
                root / name / f"{i}.png"
            )
    return root


def test_user_factory_file_with_weights_and_class_folders(tmp_path: Path) -> None:
    code, weights, net = _user_net(tmp_path)
    val = photo_folder(tmp_path / "val", ["china", "flower"])
    sub = open_subject(f"{code}:build", weights=str(weights), images=val)
    # no input size from the model: the images' common size; class names from the folders
    assert sub.image_shape == (3, 64, 64) and sub.classes == ["china", "flower"]
    assert sub.images is not None and sub.labels_are_outputs(sub.images)
    assert sub.images.labels.tolist() == [0] * 6 + [1] * 6
    with torch.no_grad():
        torch.testing.assert_close(
            sub.model(sub.normalize(sub.images.images)),
            net(sub.normalize(sub.images.images)),
        )
    with pytest.raises(ConvlensError, match=r"ValueError: no such layer \(my_net.py:\d+\)"):
        open_subject(f"{code}:broken")
    with pytest.raises(ConvlensError, match=r"no function 'buidl'.*build"):
        open_subject(f"{code}:buidl")


def test_module_path_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "nets.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sub = open_subject("userpkg.nets:build")
    assert len(sub.classes) == 2 and sub.image_shape == (3, 224, 224)


def test_class_folders_named_as_imagenet_classes_label_its_outputs(
    hub: Path, tmp_path: Path
) -> None:
    fake_hub(hub, "mobilenet_v3_small")
    val = photo_folder(tmp_path / "val", ["goldfish", "tench"], per_class=2)
    sub = open_subject("torchvision:mobilenet_v3_small", weights="DEFAULT", images=val)
    assert sub.images is not None and sub.labels_are_outputs(sub.images)
    assert sub.images.labels.tolist() == [1, 1, 0, 0]  # goldfish is output 1, tench output 0
    other = photo_folder(tmp_path / "mine", ["cats", "dogs"], per_class=2)
    sub = open_subject("torchvision:mobilenet_v3_small", weights="DEFAULT", images=other)
    assert sub.images is not None and not sub.labels_are_outputs(sub.images)
    assert any("not the model's class names" in n for n in sub.info["notices"])


@pytest.mark.parametrize("form", ["lines", "json"])
def test_classes_file(tmp_path: Path, form: str) -> None:
    names = [f"kind {i}" for i in range(10)]
    f = tmp_path / "classes.txt"
    f.write_text(json.dumps(names) if form == "json" else "\n".join(names) + "\n\n")
    assert open_subject("resnet20", classes=f).classes == names
    f.write_text("a\nb\n")  # a registry model with random weights is built with that many outputs
    assert len(open_subject("resnet20", classes=f).classes) == 2
    code, _, _ = _user_net(tmp_path)  # two outputs, as built by the user's code
    f.write_text("a\nb\nc\n")
    with pytest.raises(ConvlensError, match="names 3 classes but the model has 2 outputs"):
        open_subject(f"{code}:build", classes=f)


def test_neither_a_model_nor_a_file() -> None:
    with pytest.raises(ConvlensError, match="resnet20"):
        open_subject("resnet2O")
    with pytest.raises(ConvlensError, match=r"timm is not installed|Hugging Face cache"):
        open_subject("timm:resnet18", weights="DEFAULT")


# --------------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------------

IMAGENET = Preprocess(3, (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize=256)


def _same_size(img: Image.Image, channels: int = 3) -> Preprocess:
    mean = (0.5,) * channels
    return Preprocess(channels, (img.height, img.width), mean, mean)


def test_pixels_equal_torchvision_resize_and_centre_crop() -> None:
    from torchvision.transforms.v2 import functional as F

    ours, _ = load_image(CHINA, IMAGENET)
    expected = F.pil_to_tensor(F.center_crop(F.resize(Image.open(CHINA), [256]), [224]))
    assert torch.equal(ours, expected)


def test_cmyk_jpeg_is_converted_as_pillow_converts_it(tmp_path: Path) -> None:
    from torchvision.transforms.v2 import functional as F

    f = tmp_path / "cmyk.jpg"
    Image.fromarray(PHOTOS.images[1]).convert("CMYK").save(f, quality=95)
    assert Image.open(f).mode == "CMYK"
    ours, notices = load_image(f, IMAGENET)
    rgb = Image.open(f).convert("RGB")
    expected = F.pil_to_tensor(F.center_crop(F.resize(rgb, [256]), [224]))
    assert torch.equal(ours, expected)
    assert any("CMYK" in n for n in notices)


def test_rgba_png_is_composited_on_black(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    f = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(f)
    ours, _ = load_image(f, _same_size(Image.open(f)))
    expected = rgba[..., :3].astype(np.float64) * rgba[..., 3:] / 255.0  # over black
    assert np.abs(ours.numpy().transpose(1, 2, 0) - expected).max() <= 1.0


def test_16_bit_png_keeps_its_top_8_bits(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey16 = rng.integers(0, 65536, (16, 24), dtype=np.uint16)
    f = tmp_path / "g16.png"
    Image.fromarray(grey16).save(f)
    assert Image.open(f).mode.startswith("I")
    ours, _ = load_image(f, _same_size(Image.open(f), channels=1))
    assert np.array_equal(ours[0].numpy(), (grey16 >> 8).astype(np.uint8))
    rgb, _ = load_image(f, _same_size(Image.open(f)))  # grey into a colour model: three copies
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[0], ours[0])


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (10, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    f = tmp_path / "turned.png"
    Image.fromarray(arr).save(f, exif=exif)
    pre = Preprocess(3, (16, 10), (0.5,) * 3, (0.5,) * 3)  # (H, W) as displayed
    ours, _ = load_image(f, pre)
    assert np.array_equal(ours.numpy().transpose(1, 2, 0), np.rot90(arr, k=-1))


def test_one_pixel_image(tmp_path: Path) -> None:
    f = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 200, 30)).save(f)
    ours, _ = load_image(f, IMAGENET)
    assert ours.shape == (3, 224, 224)
    assert ours[:, 0, 0].tolist() == [10, 200, 30] and bool((ours == ours[:, :1, :1]).all())


def test_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    f = tmp_path / "cat.jpg"
    f.write_text("not a picture")
    with pytest.raises(ConvlensError, match="not an image"):
        load_image(f, IMAGENET)
    with pytest.raises(ConvlensError, match="no image file"):
        load_image(tmp_path / "missing.png", IMAGENET)


def test_giant_jpeg_is_decoded_at_reduced_scale_without_a_raw_warning(tmp_path: Path) -> None:
    f = tmp_path / "giant.jpg"
    Image.new("RGB", (12_000, 12_000), (90, 120, 200)).save(f, quality=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, notices = load_image(f, IMAGENET)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert ours.shape == (3, 224, 224)
    assert (ours.float().mean((1, 2)) - torch.tensor([90.0, 120.0, 200.0])).abs().max() < 3
    assert any("144 megapixels" in n and "reduced scale (1500x1500)" in n for n in notices)


def test_giant_png_is_refused_before_decoding(tmp_path: Path) -> None:
    """A PNG whose header says 12,000 x 12,000: refused from the header, no pixel decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    f = tmp_path / "giant.png"
    f.write_bytes(png + chunk(b"IEND", b""))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConvlensError, match=r"144 megapixels.*limit of 50 megapixels"):
            load_image(f, IMAGENET)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_flat_folder_is_unlabelled_and_skips_other_files(tmp_path: Path) -> None:
    from convlens.subjects import load_image_set

    for i in range(3):
        Image.fromarray(PHOTOS.images[i % 2]).save(tmp_path / f"{i}.webp")
    (tmp_path / "notes.txt").write_text("x")
    ds = load_image_set(tmp_path, IMAGENET)
    assert len(ds) == 3 and ds.extra["labelled"] is False
    assert any("skipped 1 non-image" in n for n in ds.extra["notices"])  # type: ignore[union-attr]
    buf = io.BytesIO()
    Image.fromarray(PHOTOS.images[0]).save(buf, "WEBP")
    assert ds.images.shape == (3, 3, 224, 224)


def test_a_model_without_weights_is_the_same_random_network_every_time() -> None:
    """Seeded (so an index built by one command is found by the next), leaving the caller's
    random state alone; the oracle for "seed 0" is torchvision's own constructor under that seed."""
    before = torch.random.get_rng_state()
    a = open_subject("torchvision:resnet18").model.state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    b = open_subject("torchvision:resnet18").model.state_dict()
    torch.manual_seed(0)
    ref = torchvision.models.resnet18().state_dict()
    for name, t in ref.items():
        assert torch.equal(a[name], t) and torch.equal(b[name], t), name
    one = open_subject("resnet20").model.state_dict()
    two = open_subject("resnet20").model.state_dict()
    assert all(torch.equal(one[n], two[n]) for n in one)
