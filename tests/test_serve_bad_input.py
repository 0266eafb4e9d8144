"""Bad requests to `convlens serve`: each answers a JSON error with a message and a 4xx status, the
file system is never reached through a request's path, and the server keeps serving."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from convlens import load_run
from convlens.serve import create_app, from_run_dir
from convlens.serve.uploads import MAX_UPLOAD_BYTES

NAME = "lenet5-sample"
LIMIT = 50_000  # bytes, small so that the test sends little


@pytest.fixture(scope="module")
def client(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("runs")
    (folder / NAME).symlink_to(trained_run, target_is_directory=True)
    app = create_app(
        [from_run_dir(folder / NAME)],
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_upload_bytes=LIMIT,
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def api(path: str) -> str:
    return f"/api/subjects/{NAME}{path}"


def unit(layer: str, image: str = "test:1", channel: Any = 0, row: Any = 0, col: Any = 0) -> str:
    return api(f"/unit?image={image}&{layer}&channel={channel}&row={row}&col={col}")


def expect_error(r: Any, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    assert "Traceback" not in body["error"]
    for w in words:
        assert w in body["error"], body["error"]


def test_the_default_upload_limit_is_20_mb() -> None:
    assert MAX_UPLOAD_BYTES == 20 * 1024 * 1024


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("get", "/api/subjects/nope/network", None, 404, ["no subject 'nope'", NAME]),
        ("get", api("/rf?layer=conv9&row=0&col=0"), None, 404, ["no layer 'conv9'", "conv1"]),
        ("get", api("/rf?layer=conv2&row=10&col=0"), None, 404, ["10 x 10", "(10, 0)"]),
        ("get", api("/rf?layer=conv2&row=x&col=0"), None, 422, ["row"]),
        ("get", api("/images/2000.png"), None, 404, ["no image 2000"]),
        ("get", api("/images/-1.png"), None, 404, ["no image -1"]),
        ("get", api("/neighbors?index=5&k=0"), None, 422, ["k must be greater", "not 0"]),
        (
            "post",
            api("/jobs/layer"),
            {"layer": "conv1", "start": 6},
            404,
            ["6 channels", "no channel 6"],
        ),
        ("post", api("/jobs/layer"), {"layer": "fc1"}, 400, ["not feature maps"]),
        ("post", api("/jobs/layer"), {"layer": "nope"}, 404, ["no layer 'nope'"]),
        ("post", api("/jobs/layer"), {"layer": "conv1", "count": 0}, 422, ["count"]),
        ("post", api("/predict"), {"image": "test:99999"}, 404, ["no image 99999"]),
        ("post", api("/predict"), {"image": "../../etc/passwd"}, 400, ["test:INDEX"]),
        ("post", api("/predict"), {"image": "upload:" + "0" * 32}, 404, ["no upload"]),
        ("post", api("/predict"), {}, 422, ["image"]),
        (
            "post",
            api("/attribution"),
            {"image": "test:1", "method": "gradcam", "target": 10},
            404,
            ["no class 10", "10 classes"],
        ),
        ("post", api("/attribution"), {"image": "test:1", "method": "magic"}, 400, ["magic"]),
        (
            "post",
            api("/attribution"),
            {"image": "test:1", "method": "gradcam", "layer": "fc1"},
            400,
            ["not feature maps"],
        ),
        (
            "post",
            api("/jobs/occlusion"),
            {"image": "test:1", "window": 2, "stride": 4},
            400,
            ["stride"],
        ),
        ("post", api("/jobs/occlusion"), {"image": "test:1", "target": -1}, 404, ["no class -1"]),
        ("get", "/api/explain/conv?size=5&kernel=9", None, 400, ["does not fit"]),
        ("get", "/api/explain/conv?size=0", None, 422, ["size must be"]),
        (
            "get",
            "/api/explain/conv?size=513",
            None,
            422,
            ["size must be less than or equal to 512"],
        ),
        ("get", "/api/explain/conv?kernel=65", None, 422, ["kernel must be"]),
        ("get", "/api/explain/conv?stride=65", None, 422, ["stride must be"]),
        ("get", "/api/explain/conv?padding=65", None, 422, ["padding must be"]),
        ("get", "/api/explain/conv?padding=-1", None, 422, ["padding must be", "not -1"]),
        ("get", "/api/jobs/123-nope", None, 404, ["no job"]),
        ("delete", "/api/jobs/123-nope", None, 404, ["no job"]),
        ("get", unit("layer=pool1"), None, 400, ["pool1", "not a convolution"]),
        ("get", unit("layer=conv9"), None, 404, ["no layer 'conv9'", "conv1"]),
        ("get", unit("layer=conv1", channel=6), None, 404, ["6 channels", "no channel 6"]),
        ("get", unit("layer=conv1", row=28), None, 404, ["28 x 28", "(28, 0)"]),
        ("get", unit("layer=conv1", image="x:1"), None, 400, ["test:INDEX"]),
        ("get", unit("layer=conv1", image="test:99999"), None, 404, ["no image 99999"]),
        ("get", unit("layer=conv1", channel=-1), None, 422, ["channel must be", "not -1"]),
        ("get", unit("layer=conv1", row="x"), None, 422, ["row must be a valid integer"]),
        ("get", api("/unit?image=test:1&channel=0&row=0&col=0"), None, 422, ["layer is required"]),
        ("get", "/api/nothing/here", None, 404, ["no endpoint"]),
        ("delete", api("/network"), None, 405, []),
    ],
)
def test_bad_requests_answer_json_4xx(
    client: TestClient, method: str, path: str, body: Any, status: int, words: list[str]
) -> None:
    r = client.request(method.upper(), path, json=body)
    expect_error(r, status, *words)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2", b'{"image": 5}', b'{"image": "test:1", "method": ["gradcam"]}', b""],
)
def test_malformed_json(client: TestClient, body: bytes) -> None:
    r = client.post(api("/attribution"), content=body, headers={"Content-Type": "application/json"})
    expect_error(r, 422, "invalid request")


def _png(size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, ["empty"]),
        (b"just some text, not an image\n" * 10, 400, ["not an image"]),
        (_png()[:60], 400, ["truncated or corrupt"]),  # a truncated PNG
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (LIMIT + 10), 413, ["limit"]),
    ],
)
def test_bad_uploads(client: TestClient, data: bytes, status: int, words: list[str]) -> None:
    r = client.post(api("/uploads"), files={"file": ("x.png", data, "image/png")})
    expect_error(r, status, *words)
    # A sentence a person can read: no Python object's repr (`<_io.BytesIO object at 0x...>`).
    assert "object at 0x" not in r.json()["error"] and "<" not in r.json()["error"]


def test_upload_needs_a_file_field(client: TestClient) -> None:
    expect_error(client.post(api("/uploads"), data={"other": "x"}), 422, "file")


def test_a_decompression_bomb_is_refused_before_decoding(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")  # 100 M pixels in a few kB
    assert len(buf.getvalue()) < LIMIT
    expect_error(
        client.post(api("/uploads"), files={"file": ("b.png", buf.getvalue())}), 400, "pixels"
    )


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../pyproject.toml",
        "/static/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/static/..%2f..%2f..%2fpyproject.toml",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/api/subjects/..%2F..%2Fetc%2Fpasswd/network",
        "/api/subjects/%2Fetc%2Fpasswd/network",
        "/api/subjects/..%2Flenet5-sample/network",
        f"/api/subjects/{NAME}/images/..%2F..%2Frun.json",
        "/etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_path_traversal_reaches_no_file(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert "root:" not in r.text and "[project]" not in r.text
    assert r.headers["content-type"].startswith("application/json")


def test_the_server_keeps_serving_after_bad_requests(client: TestClient) -> None:
    for body in [b"{", b"null", b'{"image": "test:-5"}']:
        client.post(api("/predict"), content=body, headers={"Content-Type": "application/json"})
    assert client.get(api("/network")).status_code == 200


def test_100_concurrent_requests_no_5xx_and_no_mixed_up_results(
    client: TestClient, trained_run: Path
) -> None:
    run = load_run(trained_run)
    data = run.load_data("test")
    with torch.inference_mode():
        expected = run.model(run.normalize(data.images[:20])).argmax(1).tolist()

    def one(i: int) -> tuple[int, str, Any]:
        kind = i % 5
        if kind == 0:
            r = client.post(api("/predict"), json={"image": f"test:{i % 20}"})
            return r.status_code, "predict", (i % 20, r.json())
        if kind == 1:
            return client.get(api("/network")).status_code, "read", None
        if kind == 2:
            r = client.post(
                api("/attribution"), json={"image": f"test:{i % 20}", "method": "saliency"}
            )
            return r.status_code, "attr", None
        if kind == 3:
            job = {"layer": "conv2" if i % 2 else "conv1", "steps": 4, "patches": 2, "limit": 100}
            return client.post(api("/jobs/layer"), json=job).status_code, "job", None
        r = client.get(api(f"/images/{5000 + i}.png"))  # a bad one among the good
        return r.status_code, "bad", None

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(100)))
    assert all(status < 500 for status, _, _ in results), results
    for status, kind, payload in results:
        if kind == "bad":
            assert status == 404
        else:
            assert status == 200, (kind, status)
        if kind == "predict":
            index, body = payload
            assert body["image"] == f"test:{index}"
            assert body["top"][0]["index"] == expected[index]
    assert client.get(api("/network")).status_code == 200
