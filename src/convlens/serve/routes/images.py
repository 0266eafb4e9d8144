"""Endpoints about one image: its pixels, uploads, predictions and attributions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from convlens.serve import compute
from convlens.serve.encode import image_png as encode_png
from convlens.serve.errors import RequestError
from convlens.serve.routes.deps import ServedSubject, State
from convlens.serve.uploads import decode_image

router = APIRouter(prefix="/api/subjects/{name}", tags=["images"])


class ImageRequest(BaseModel):
    """An image to look at: ``test:INDEX`` or ``upload:ID``."""

    image: str = Field(max_length=64)


class AttributionRequest(ImageRequest):
    """An attribution of one image (occlusion is a job: ``POST .../jobs/occlusion``)."""

    method: str = Field(max_length=32)
    target: int | None = None
    layer: str | None = Field(default=None, max_length=256)


@router.get("/images/{index}.png")
def image_png(served: ServedSubject, index: int) -> Response:
    """Test image `index` as a PNG."""
    return Response(
        encode_png(served.image(index)),
        media_type="image/png",
        headers={"Cache-Control": "max-age=3600"},
    )


@router.post("/uploads")
async def upload(served: ServedSubject, state: State, file: UploadFile) -> dict[str, Any]:
    """An uploaded image, prepared as the subject's image files are (resize and centre crop)."""
    data = await file.read(state.max_upload_bytes + 1)
    pre = served.subject.preprocess
    # Decoding is CPU work: off the event loop.
    image = await run_in_threadpool(decode_image, data, pre, max_bytes=state.max_upload_bytes)
    return {
        "image": "upload:" + state.uploads.add(served.name, data, image),
        "shape": list(image.shape),
    }


@router.post("/predict")
def predict(served: ServedSubject, state: State, req: ImageRequest) -> dict[str, Any]:
    """Top-5 classes and every layer's activations for one image."""
    image = state.image(served, req.image)
    index = state.test_index(req.image)  # a test image has a label
    with served.lock:
        return {"image": req.image, **compute.predict(served, image, image_index=index)}


@router.post("/attribution")
def attribution(served: ServedSubject, state: State, req: AttributionRequest) -> dict[str, Any]:
    """Grad-CAM, guided Grad-CAM or saliency of one image."""
    image = state.image(served, req.image)
    compute.check_target(served, req.target)
    layer = compute.conv_layer(served, req.layer)
    if req.method not in compute.METHODS or req.method == "occlusion":
        raise RequestError(
            f"there is no method {req.method!r} here; choose gradcam, guided_gradcam or "
            "saliency (occlusion is a job: POST .../jobs/occlusion)"
        )
    with served.lock:
        return {
            "image": req.image,
            "target": req.target,
            **compute.attribution(served, image, req.method, req.target, layer),
        }
