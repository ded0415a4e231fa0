"""Shared fixtures: offline environment, small generated shard sets and tokenizers."""

from __future__ import annotations

import io
import os
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CAPTIONS = {
    "en": "a red circle",
    "zh": "一个红色的圆形",
    "fr": "un cercle rouge",
    "ar": "دائرة حمراء",
    "hi": "एक लाल वृत्त",
}


def jpeg_bytes(seed: int, size: int = 48) -> bytes:
    """A small random JPEG, different for every seed."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shard_set(out: Path, n: int, per_shard: int, langs_of=None, extra_fields=None) -> Path:
    """Write ``n`` samples into shards of ``per_shard`` with captions in a few languages."""
    from dcclip.data.shards import ShardSetWriter

    with ShardSetWriter(out, max_count=per_shard) as writer:
        for i in range(n):
            langs = langs_of(i) if langs_of else list(CAPTIONS)
            captions = {lang: f"{CAPTIONS[lang]} {i}" for lang in langs}
            fields = {"jpg": jpeg_bytes(i)}
            if extra_fields:
                fields.update(extra_fields(i))
            writer.add(f"s{i:05d}", fields, {"captions": captions, "source_lang": "en"})
    return out


@contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads, restoring the previous count after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared CPU run fastest on one torch thread (no OpenMP spin-waiting, no fight for cores).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def restore_pil_pixel_limit():
    """create_app sets PIL's process-wide bomb limit; a module that builds apps opts in (``pytestmark``) so the other
    modules see the value they started with."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = before


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory) -> Path:
    """40 samples in 8 shards of 5, every sample with captions in five scripts."""
    return write_shard_set(tmp_path_factory.mktemp("shards"), n=40, per_shard=5)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A small multilingual tokenizer trained on the fixture captions (byte fallback covers the rest)."""
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer

    texts = [f"{text} {i}" for i in range(50) for text in CAPTIONS.values()]
    path = train_tokenizer(texts, 300, tmp_path_factory.mktemp("tok"))
    return TextTokenizer.from_path(path)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> Path:
    """A small toy world (training shards + eval sets) shared by the training and evaluation tests."""
    from dcclip.data.world import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, train_samples=160, seed=1, eval_samples=90, image_size=64, shard_size=40)
    return root


@pytest.fixture(scope="session")
def world_tokenizer_path(toy_world, tmp_path_factory) -> Path:
    """A tokenizer trained on the toy world's captions (all ten languages)."""
    from dcclip.data.shards import iter_captions
    from dcclip.models.tokenizers import train_tokenizer

    return train_tokenizer(iter_captions(toy_world / "train"), 1200, tmp_path_factory.mktemp("world_tok"))


@pytest.fixture(scope="session")
def saved_teacher_spec(tmp_path_factory) -> str:
    """A tiny open_clip ViT teacher with fixed random weights, saved like a user's checkpoint."""
    import open_clip
    import torch

    from dcclip.models.registry import get_model_config

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**get_model_config("test-vit", "teacher"))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(model.state_dict(), path)
    return f"openclip:{path}#test-vit"
