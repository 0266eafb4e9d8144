"""`convlens datasets` through the real entry point: exit codes, what it prints, no tracebacks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convlens.cli.main import main


@pytest.fixture(autouse=True)
def wide(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line, so the assertions can read it
    monkeypatch.setenv("CONVLENS_CACHE", str(tmp_path / "cache"))


def rows(out: str) -> dict[str, str]:
    """name -> its table row."""
    got = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1]:
            got[cells[1]] = line
    return got


def test_lists_the_four_data_sets_found_in_convlens_data(data_root, capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    r = rows(out)
    for name in ("mnist", "fashion-mnist", "cifar10", "sample"):
        assert name in r and "not found" not in r[name]
    assert (
        str(data_root / "mnist") in r["mnist"]
        and "60,000" in r["mnist"]
        and "1x28x28" in r["mnist"]
    )
    assert "50,000" in r["cifar10"] and "3x32x32" in r["cifar10"] and "airplane" in r["cifar10"]
    assert "8,000" in r["sample"] and "2,000" in r["sample"] and "bundled" in r["sample"]
    assert "T-shirt/top" in r["fashion-mnist"]


def test_not_found_lists_every_place_looked_in(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CONVLENS_DATA", raising=False)
    assert main(["datasets", "mnist", "sample", "--data-dir", str(tmp_path / "mine")]) == 0
    out = capsys.readouterr().out
    assert "not found" in out
    for place in (
        tmp_path / "mine" / "mnist",
        tmp_path / "cache" / "mnist",
        "/usr/share/datasets/mnist",
    ):
        assert str(place) in out
    assert "--data-dir" in out and "CONVLENS_DATA" in out
    assert "8,000" in rows(out)["sample"]


def test_data_dir_is_looked_in_first(monkeypatch, tmp_path, data_root, capsys):
    monkeypatch.delenv("CONVLENS_DATA", raising=False)
    shutil.copytree(data_root / "fashion-mnist", tmp_path / "mine" / "fashion-mnist")
    assert main(["datasets", "fashion-mnist", "--data-dir", str(tmp_path / "mine")]) == 0
    assert (
        str(tmp_path / "mine" / "fashion-mnist") in rows(capsys.readouterr().out)["fashion-mnist"]
    )


def test_a_folder_can_be_described(tmp_path, capsys):
    from PIL import Image

    for c in ("ant", "bee"):
        for i in range(5):
            (tmp_path / "f" / c).mkdir(parents=True, exist_ok=True)
            Image.new("L", (7, 9)).save(tmp_path / "f" / c / f"{i}.png")
    assert main(["datasets", f"folder:{tmp_path / 'f'}"]) == 0
    out = capsys.readouterr().out
    assert "1x9x7" in out and "ant, bee" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["datasets", "mnsit"], "unknown data set 'mnsit'"),
        (["datasets", "--download"], "name the data sets to download"),
    ],
)
def test_bad_input_is_one_line_exit_1(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).parent / "convlens"
    if not exe.exists():
        pytest.skip("console script not installed")
    p = subprocess.run([str(exe), "datasets", "nope"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "unknown data set" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(
        [str(exe), "datasets", "--help"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0 and "--data-dir" in p.stdout


def test_data_notices_print_as_one_note_line_in_the_cli():
    # Inside the CLI a convlens warning is one `note:` line; a library user keeps Python's format.
    code = (
        "import warnings\n"
        "from convlens.cli.main import _warnings_as_notes\n"
        "from convlens.data import DataNotice\n"
        "with _warnings_as_notes():\n"
        "    warnings.warn('skipped 1 non-image file', DataNotice)\n"
        "warnings.warn('outside the CLI', DataNotice)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0
    lines = p.stderr.strip().splitlines()
    assert lines[0] == "note: skipped 1 non-image file"
    assert "DataNotice: outside the CLI" in lines[1]


def test_download_fetches_what_is_missing(monkeypatch, tmp_path, data_root, capsys):
    from convlens.data import download as dl

    monkeypatch.delenv("CONVLENS_DATA", raising=False)
    fetched = []

    def fake_download(name, target=None):  # the torchvision path is tested in test_data_sets.py
        fetched.append(name)
        shutil.copytree(data_root / name, tmp_path / "cache" / name)
        return tmp_path / "cache" / name

    monkeypatch.setattr(dl, "download_dataset", fake_download)
    assert main(["datasets", "mnist", "sample", "--download"]) == 0
    assert fetched == ["mnist"]
    assert str(tmp_path / "cache" / "mnist") in rows(capsys.readouterr().out)["mnist"]
