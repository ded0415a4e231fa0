"""Shared builders for the export and runtime tests: a tiny real student checkpoint and its bundle, built once.

The bundle is cached under pytest's base temporary directory so that test_export.py and test_runtime.py share one
export per session.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.data import CAPTIONS, write_shard_set
from helpers.images import encode

TEST_LANGS = list(CAPTIONS)


def make_checkpoint(root: Path, name: str = "test-student", langs: list[str] | None = None, seed: int = 0) -> Path:
    """Train a tokenizer, build a real student with random weights and save it as a checkpoint under ``root``."""
    import torch

    from dcclip.models.students import build_student, save_student_checkpoint
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer

    texts = [f"{text} {i}" for i in range(50) for text in CAPTIONS.values()]
    tok_path = train_tokenizer(texts, 300, root / "tokenizer")
    tok = TextTokenizer.from_path(tok_path)
    torch.manual_seed(seed)
    student = build_student(name, embed_dim=32, fmap_channels=None, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    return save_student_checkpoint(root / "run", 1, student, tok_path, TEST_LANGS if langs is None else langs)


def shared_bundle(base: Path) -> tuple[Path, Path, Path]:
    """(bundle, checkpoint, shards) of the tiny test student at fp32 + int8, exported once per session.

    Its int8 towers ship whatever their agreement (``min_agreement=0``): random weights leave near-ties that int8
    breaks either way, and the tests of this bundle are about the int8 graphs themselves.
    """
    root = base / "shared-tiny-bundle"
    bundle, checkpoint_file = root / "bundle", root / "checkpoint.txt"
    if not (bundle / "manifest.json").is_file():
        from dcclip.export.bundle import export_bundle

        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        shards = write_shard_set(root / "shards", n=40, per_shard=10)
        checkpoint = make_checkpoint(root)
        export_bundle(checkpoint, bundle, "both", str(shards), None, min_agreement=0.0)
        checkpoint_file.write_text(str(checkpoint))
    return bundle, Path(checkpoint_file.read_text()), root / "shards"


def write_eval_set(root: Path, n: int = 12) -> Path:
    """A clip_benchmark-layout zero-shot set: classnames/templates JSON in three languages and one shard of jpg+cls."""
    names = {"en": ["red", "green", "blue"], "fr": ["rouge", "vert", "bleu"], "zh": ["红色", "绿色", "蓝色"]}
    templates = {"en": ["a {c} image", "{c}"], "fr": ["une image {c}"], "zh": ["{c}的图片"]}
    (root / "test").mkdir(parents=True)
    (root / "classnames.json").write_text(json.dumps(names, ensure_ascii=False), "utf-8")
    (root / "templates.json").write_text(json.dumps(templates, ensure_ascii=False), "utf-8")
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for i in range(n):
            colour = np.zeros((40, 40, 3), np.uint8)
            colour[..., i % 3] = 200
            for ext, data in (("cls", str(i % 3).encode()), ("jpg", encode(Image.fromarray(colour), "JPEG"))):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root
