"""Teacher ONNX export: tiny open_clip teachers (ViT and timm towers) saved as local-dir checkpoints, ONNX == torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from dcclip.demo.teacher import save_open_clip_dir  # noqa: E402
from dcclip.export.errors import ExportError  # noqa: E402
from dcclip.export.onnx import graph_io_shapes  # noqa: E402
from dcclip.export.teacher_onnx import RECORD_FILE, TEXT_INPUT, export_teacher_onnx  # noqa: E402
from dcclip.models.registry import get_model_config  # noqa: E402
from dcclip.models.teachers import load_teacher  # noqa: E402

TIMM_VISION = {"timm_model_name": "test_resnet", "timm_pool": "avg", "image_size": 48}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def saved_teacher(root: Path, vision_cfg: dict | None, seed: int) -> str:
    """A tiny open_clip CLIP with seeded random weights saved as a local-dir checkpoint; returns its spec."""
    cfg = get_model_config("test-vit", "teacher")
    if vision_cfg is not None:
        cfg = {**cfg, "vision_cfg": vision_cfg, "text_cfg": {**cfg["text_cfg"], "width": 128}}
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg).eval()
    root.mkdir(parents=True)
    save_open_clip_dir(model, cfg, root)
    return f"openclip:{root}"


@pytest.mark.slow
@pytest.mark.parametrize("tower", ["vit", "timm"])
def test_teacher_onnx_matches_torch(tmp_path, tower):
    spec = saved_teacher(tmp_path / "teacher", None if tower == "vit" else TIMM_VISION, seed=3)
    teacher = load_teacher(spec)
    result = export_teacher_onnx(spec if tower == "vit" else teacher, tmp_path / "onnx")  # a spec or a teacher
    assert result.spec == spec and result.parity["min_cosine"] >= 0.9999
    for role in ("image", "text"):
        assert result.parity[role]["batch1_cosine"] >= 0.9999 and result.parity[role]["n"] >= 3
    assert result.bytes == sum(Path(r.path).stat().st_size for r in (result.image, result.text))
    assert json.loads((tmp_path / "onnx" / RECORD_FILE).read_text())["parity"] == result.parity

    # the graphs take the teacher's own inputs with a dynamic batch, and are self-contained (no side .data file)
    size, length = teacher.preprocess.image_size, result.context_length
    assert (size, length) == (result.image_size, teacher.model.context_length)
    shapes = graph_io_shapes(onnx.load(result.text.path))
    assert isinstance(shapes[TEXT_INPUT][0], str) and shapes[TEXT_INPUT][1] == length
    assert not list((tmp_path / "onnx").glob("*.data"))
    captions = ["a red circle", "un cercle rouge", "一个红色的圆形", "", "two blue squares"]
    ids = np.asarray(teacher.tokenizer(captions), dtype=np.int64)
    text = ort.InferenceSession(result.text.path).run(None, {TEXT_INPUT: ids})[0]
    expected = teacher.encode_text(captions).numpy()
    assert np.min(np.sum(text * expected, axis=1)) >= 0.9999
    pixels = np.random.default_rng(0).standard_normal((5, 3, size, size)).astype(np.float32)
    image = ort.InferenceSession(result.image.path).run(None, {"pixel_values": pixels})[0]
    expected = teacher.encode_image(torch.from_numpy(pixels))[0].numpy()
    assert np.min(np.sum(image * expected, axis=1)) >= 0.9999


def test_teacher_onnx_export_refuses_teachers_that_are_not_open_clip(tmp_path):
    with pytest.raises(ExportError, match="open_clip teacher"):
        export_teacher_onnx(object(), tmp_path / "other")
