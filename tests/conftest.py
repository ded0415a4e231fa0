"""Shared fixtures: offline environment, small generated shard sets and tokenizers (helpers live in helpers/)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# train.threads=auto reads the machine's load; an OMP_NUM_THREADS value wins over it (engine/threads.py), so pinning it
# to torch's own default keeps two runs compared within one test on the same thread count whatever the load
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))

from pathlib import Path

import pytest
from helpers.data import CAPTIONS, write_shard_set
from helpers.threads import one_torch_thread  # noqa: F401 - a fixture: pytest finds fixtures by name here


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
