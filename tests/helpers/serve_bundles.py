"""Bundles for the HTTP tests: a tiny one built without torch in well under a second, and a real student export.

Exporting a test student takes 20-40 s of CPU (torch import, dynamo export, parity checks); the page and search
tests only need a bundle the runtime loads through its normal, verified path. So the two towers are written directly
with ``onnx.helper``: the image tower averages 8x8 pixel blocks and projects them, the text tower sums token
embeddings under the attention mask; both L2-normalise their output like an exported student. The manifest is
sealed with the runtime's own ``seal_manifest`` and every file carries its sha256, so ``verify_bundle`` passes.
Not a test module: pytest never collects it (the name does not start with ``test_``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcclip import __version__
from dcclip.runtime.bundle import (
    BUNDLE_FORMAT,
    FORMAT_VERSION,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    MANIFEST_FILE,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    TOKENIZER_FILE,
    seal_manifest,
    sha256_file,
)

LANGS = ["en", "fr", "zh"]
IMAGE_SIZE = 32
BLOCK = 8  # the image tower pools 8x8 blocks: 4x4 cells of 3 colours = 48 features
TEXT_MAX_LENGTH = 16
WORDS = [
    "a red circle", "un cercle rouge", "一个红色的圆形", "a blue square", "un carré bleu", "蓝色方块",
    "a green triangle", "un triangle vert", "绿色三角形", "a photo of a", "une photo de", "的照片",
]  # fmt: skip


def _tokenizer(out: Path) -> int:
    """A byte-level BPE tokenizer (any script encodes) with <pad> at id 0, saved as tokenizer.json; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([f"{text} {i}" for i in range(8) for text in WORDS], trainer)
    tokenizer.save(str(out))
    return tokenizer.get_vocab_size()


def _image_graph(dim: int, rng: np.random.Generator):
    """pixel_values [N,3,S,S] -> block means -> linear -> L2-normalised image_embeds [N,dim]."""
    from onnx import TensorProto, helper, numpy_helper

    cells = 3 * (IMAGE_SIZE // BLOCK) ** 2
    weight = numpy_helper.from_array(rng.standard_normal((cells, dim)).astype(np.float32), "proj")
    nodes = [
        helper.make_node("AveragePool", [IMAGE_INPUT], ["pooled"], kernel_shape=[BLOCK, BLOCK], strides=[BLOCK, BLOCK]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], [IMAGE_OUTPUT], axis=1, p=2),
    ]
    inputs = [helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])]
    outputs = [helper.make_tensor_value_info(IMAGE_OUTPUT, TensorProto.FLOAT, ["N", dim])]
    return helper.make_graph(nodes, "image", inputs, outputs, [weight])


def _text_graph(dim: int, vocab: int, rng: np.random.Generator):
    """input_ids, attention_mask [N,L] -> masked sum of token embeddings -> L2-normalised text_embeds [N,dim]."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "table")
    last = numpy_helper.from_array(np.array([-1], dtype=np.int64), "last")
    seq = numpy_helper.from_array(np.array([1], dtype=np.int64), "seq")
    ids, mask = TEXT_INPUTS
    nodes = [
        helper.make_node("Gather", ["table", ids], ["tokens"]),
        helper.make_node("Cast", [mask], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask_3d"]),
        helper.make_node("Mul", ["tokens", "mask_3d"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "seq"], ["summed"], keepdims=0),
        helper.make_node("LpNormalization", ["summed"], [TEXT_OUTPUT], axis=1, p=2),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["N", "L"]) for name in TEXT_INPUTS]
    outputs = [helper.make_tensor_value_info(TEXT_OUTPUT, TensorProto.FLOAT, ["N", dim])]
    return helper.make_graph(nodes, "text", inputs, outputs, [table, last, seq])


def _save_model(graph, path: Path) -> None:
    """Write a checked opset-18 model."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_bundle(out: Path, dim: int = 16, seed: int = 0, langs: list[str] | None = None) -> Path:
    """Write a complete, sealed fp32 bundle to ``out`` and return it (``seed`` changes the weights and the digest)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = _tokenizer(out / TOKENIZER_FILE)
    _save_model(_image_graph(dim, rng), out / "image.onnx")
    _save_model(_text_graph(dim, vocab, rng), out / "text.onnx")
    roles = {"image.onnx": ("image", "fp32"), "text.onnx": ("text", "fp32"), TOKENIZER_FILE: ("tokenizer", None)}
    files = {
        name: {"role": role, "precision": precision, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        for name, (role, precision) in roles.items()
        for path in [out / name]
    }
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "dcclip_version": __version__,
        "embed_dim": dim,
        "logit_scale": 50.0,
        "image_preprocess": {"image_size": IMAGE_SIZE, "mean": [0.5] * 3, "std": [0.25] * 3},
        "text_max_length": TEXT_MAX_LENGTH,
        "pad_id": 0,
        "languages": list(LANGS if langs is None else langs),
        "precisions": ["fp32"],
        "io": {
            "image": {"inputs": [IMAGE_INPUT], "output": IMAGE_OUTPUT, "normalized": True},
            "text": {"inputs": list(TEXT_INPUTS), "output": TEXT_OUTPUT, "normalized": True},
        },
        "files": files,
        "source": {"student": "onnx-helper-test-bundle", "seed": seed},
    }
    (out / MANIFEST_FILE).write_text(json.dumps(seal_manifest(manifest), indent=2, ensure_ascii=False), "utf-8")
    return out


def student_bundle(root: Path, langs: list[str] | None = None) -> Path:
    """A real export of the random-weight test student (tokenizer, checkpoint, fp32 bundle) under ``root``; ~20-40 s.

    For the browser tests, which show what ``dcclip export`` really writes; it needs the train extra (torch).
    """
    import torch

    from dcclip.export.bundle import export_bundle
    from dcclip.models.students import build_student, save_student_checkpoint
    from dcclip.models.tokenizers import TextTokenizer, train_tokenizer

    tok_path = train_tokenizer([f"{text} {i}" for i in range(40) for text in WORDS], 300, root / "tokenizer")
    tok = TextTokenizer.from_path(tok_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared CPU: avoid OpenMP spin-waiting
    try:
        torch.manual_seed(0)
        student = build_student("test-student", embed_dim=32, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
        checkpoint = save_student_checkpoint(root / "run", 1, student, tok_path, LANGS if langs is None else langs)
        export_bundle(checkpoint, root / "bundle", precision="fp32")
    finally:
        torch.set_num_threads(threads)
    return root / "bundle"
